"""Selfie data for the example: a procedural selfie generator, the post's popularity labeller,
and parsers for real data folders.

The generator draws photo-like selfies with Pillow, deterministic from a seed, with the
attributes the post's findings are about, and simulates the social network around them
(users, followers, tags, likes). The labeller then labels them exactly as the post did:

    sort selfies by their user's audience (followers, plus a small bonus per tag),
    walk the sorted list in groups of 100, and within each group sort by likes:
    the top 50 are "good", the bottom 50 "bad".

The same labeller serves ``--posts CSV`` for real posts. Because the generator knows each
image's noise-free quality, the example can report the labels' own ceiling: the accuracy of
ranking each group by that true quality.

THE DEFAULT DATA IS SYNTHETIC. It exists so the whole pipeline runs on a machine with no
download; what the net learns from it is the generator's hidden rules, not real taste.
"""
import csv
import json
import math
import os
import shutil
import tempfile
from concurrent.futures import ProcessPoolExecutor

import numpy as np
from PIL import Image, ImageDraw, ImageEnhance, ImageFilter, ImageOps

from convlib.data import list_images
from convlib.progress import Progress

GENERATOR_VERSION = 1
SKIN = [(255, 224, 196), (241, 194, 160), (224, 172, 132), (198, 134, 94), (141, 85, 54), (96, 60, 38)]
HAIR = [(20, 16, 14), (60, 40, 25), (110, 75, 40), (200, 160, 90), (150, 60, 30), (90, 90, 90)]
ATTRIBUTE_FIELDS = ["image", "n_faces", "face_frac", "cx", "cy", "forehead_cut", "tilt", "skin",
                    "long_hair", "eyewear", "brightness", "saturation", "filter", "border", "quality"]
POST_FIELDS = ["image", "user", "followers", "likes", "tags", "age_days"]


# ---------------------------------------------------------------- the hidden quality
def true_quality(a):
    """Noise-free quality of a selfie from the post's do/don't rules (higher is better)."""
    q = 1.2 * math.exp(-((a["face_frac"] - 0.33) / 0.1) ** 2)      # face about 1/3 of the frame
    q -= 2.0 * max(0.0, a["face_frac"] - 0.55)                       # head framed too large
    q -= 2.0 * abs(a["cx"] - 0.5)                                    # centred
    q += 0.4 * (a["cy"] < 0.4)                                       # near the top
    q += 0.5 * a["forehead_cut"]                                     # forehead cut off
    q += 0.5 * a["long_hair"]                                        # long hair showing
    q += 0.5 * (a["saturation"] > 1.4)                               # oversaturated
    q += 0.6 * (a["filter"] != "none")                               # black-and-white or faded
    q += 0.7 * a["border"]                                           # white border
    q -= 1.2 * (a["brightness"] < 0.5)                               # low light
    q -= 1.2 * (a["n_faces"] > 1)                                    # group shot
    return q


# ---------------------------------------------------------------- drawing
def _random_attributes(rng):
    group = rng.random() < 0.2
    face_frac = float(rng.uniform(0.15, 0.3) if group else rng.uniform(0.15, 0.85))
    cy = float(rng.uniform(0.15, 0.7))
    return dict(
        n_faces=int(rng.integers(2, 5)) if group else 1, face_frac=face_frac,
        cx=float(rng.uniform(0.2, 0.8)), cy=cy, forehead_cut=bool(cy - 0.5 * face_frac < 0.02),
        tilt=float(rng.uniform(-20, 20)), skin=int(rng.integers(len(SKIN))),
        long_hair=bool(rng.random() < 0.5), hair=int(rng.integers(len(HAIR))),
        eyewear=str(rng.choice(["none", "glasses", "sunglasses"], p=[0.7, 0.15, 0.15])),
        brightness=float(rng.uniform(0.25, 1.25)), saturation=float(rng.uniform(0.5, 2.0)),
        filter=str(rng.choice(["none", "bw", "faded"], p=[0.7, 0.15, 0.15])),
        border=bool(rng.random() < 0.2), smile=bool(rng.random() < 0.6),
        clothes=tuple(int(v) for v in rng.integers(0, 256, 3)))


def _draw_person(d, cx, cy, fh, a, hair_color):
    """One head and shoulders on ImageDraw ``d``, face centre (cx, cy), face height fh pixels."""
    fw = 0.75 * fh
    skin = SKIN[a["skin"]]
    if a["long_hair"]:
        d.ellipse((cx - 0.72 * fw, cy - 0.62 * fh, cx + 0.72 * fw, cy + 1.15 * fh), fill=hair_color)
    d.ellipse((cx - 1.4 * fw, cy + 0.55 * fh, cx + 1.4 * fw, cy + 2.6 * fh), fill=a["clothes"])
    d.rectangle((cx - 0.18 * fw, cy + 0.3 * fh, cx + 0.18 * fw, cy + 0.75 * fh), fill=skin)
    d.ellipse((cx - fw / 2, cy - fh / 2, cx + fw / 2, cy + fh / 2), fill=skin)
    d.chord((cx - 0.55 * fw, cy - 0.62 * fh, cx + 0.55 * fw, cy + 0.1 * fh), 180, 360, fill=hair_color)
    ey, ex, er = cy - 0.03 * fh, 0.2 * fw, 0.075 * fw
    for sx in (-1, 1):
        x = cx + sx * ex
        d.ellipse((x - er * 1.4, ey - er, x + er * 1.4, ey + er), fill=(250, 250, 250))
        d.ellipse((x - er * 0.7, ey - er * 0.7, x + er * 0.7, ey + er * 0.7), fill=(40, 30, 20))
        if a["eyewear"] == "glasses":
            d.ellipse((x - er * 2.2, ey - er * 1.8, x + er * 2.2, ey + er * 1.8), outline=(30, 30, 30),
                      width=max(1, int(fh / 40)))
        elif a["eyewear"] == "sunglasses":
            d.rounded_rectangle((x - er * 2.4, ey - er * 1.6, x + er * 2.4, ey + er * 1.8), radius=er,
                                fill=(15, 15, 20))
    d.line((cx, cy + 0.02 * fh, cx - 0.04 * fw, cy + 0.15 * fh), fill=tuple(int(c * 0.8) for c in skin),
           width=max(1, int(fh / 50)))
    my = cy + 0.28 * fh
    box = (cx - 0.2 * fw, my - 0.08 * fh, cx + 0.2 * fw, my + 0.08 * fh)
    d.arc(box, 10 if a["smile"] else 200, 170 if a["smile"] else 340, fill=(150, 40, 50),
          width=max(1, int(fh / 30)))


def draw_selfie(a, rng, size):
    """Render attributes ``a`` to an RGB PIL image of ``size`` x ``size``."""
    D = 2 * size                                                     # draw at 2x, then downsample
    top, bottom = rng.integers(40, 230, 3), rng.integers(20, 200, 3)
    ramp = np.linspace(0, 1, D)[:, None, None]
    bg = (top * (1 - ramp) + bottom * ramp) * np.ones((1, D, 1))     # (D, D, 3) vertical gradient
    img = Image.fromarray(bg.astype(np.uint8))
    d = ImageDraw.Draw(img)
    for _ in range(int(rng.integers(1, 4))):                         # furniture, doors, windows
        x0, y0 = rng.integers(0, D, 2)
        w, h = rng.integers(D // 8, D // 2, 2)
        d.rectangle((x0, y0, x0 + w, y0 + h), fill=tuple(int(v) for v in rng.integers(30, 220, 3)))
    img = img.filter(ImageFilter.GaussianBlur(D / 60))
    layer = Image.new("RGBA", (D, D), (0, 0, 0, 0))
    people = [(a["cx"], a["cy"], a["face_frac"])]
    for _ in range(a["n_faces"] - 1):                                # group: more, similar-sized faces
        people.append((float(rng.uniform(0.1, 0.9)), float(rng.uniform(0.25, 0.7)),
                       a["face_frac"] * float(rng.uniform(0.8, 1.1))))
    ld = ImageDraw.Draw(layer)
    for i, (cx, cy, ff) in enumerate(people):
        hair = HAIR[a["hair"]] if i == 0 else HAIR[int(rng.integers(len(HAIR)))]
        _draw_person(ld, cx * D, cy * D, ff * D, a, hair)
    layer = layer.rotate(a["tilt"], resample=Image.BILINEAR, center=(a["cx"] * D, a["cy"] * D))
    img.paste(layer, (0, 0), layer)
    img = ImageEnhance.Color(img).enhance(a["saturation"])
    arr = np.asarray(img, np.float32) / 255 * a["brightness"]        # lighting
    arr += rng.normal(0, 0.01 + 0.08 * max(0.0, 1 - a["brightness"]), arr.shape)  # dark means noisy
    if a["filter"] == "bw":
        arr = arr @ np.array([0.299, 0.587, 0.114])[:, None] * np.ones((1, 3))
    elif a["filter"] == "faded":
        arr = 0.55 * arr + 0.3 + np.array([0.04, 0.02, -0.02])
    img = Image.fromarray((np.clip(arr, 0, 1) * 255).astype(np.uint8))
    if a["border"]:
        b = D // 16
        img = ImageOps.expand(img.resize((D - 2 * b, D - 2 * b)), border=b, fill=(250, 250, 250))
    return img.resize((size, size), Image.LANCZOS)


# ---------------------------------------------------------------- the social network
def simulate_posts(attrs, rng, noise=0.45):
    """Users, followers, tags, age and likes for each selfie. Likes grow with the audience
    and with quality; ``noise`` (log-normal) is what makes the labels imperfect."""
    n = len(attrs)
    n_users = max(1, n // 4)
    followers = np.round(np.exp(rng.normal(6.0, 1.5, n_users))).astype(int) + 1
    user = rng.integers(0, n_users, n)
    tags = rng.poisson(2.0, n)
    age = rng.integers(1, 400, n)
    q = np.array([a["quality"] for a in attrs])
    audience = followers[user] * (1 + 0.05 * tags)
    rate = 0.05 * audience ** 0.9 * np.exp(q + rng.normal(0, noise, n)) * np.minimum(1, age / 30)
    likes = rng.poisson(rate)
    return [dict(image=a["image"], user=f"user{user[i]:05d}", followers=int(followers[user[i]]),
                 likes=int(likes[i]), tags=int(tags[i]), age_days=int(age[i])) for i, a in enumerate(attrs)]


def label_posts(posts, min_age_days=30, min_followers=None, max_followers=None, max_tags=None,
                tag_bonus=0.05, group=100):
    """The post's labelling rule, in NumPy (2.7 million posts a second here; benchmarks/README.md).
    ``posts``: a list of dicts, or a dict of equal-length columns, with followers, likes, tags,
    age_days.

    Keeps posts online for more than ``min_age_days`` days and within the follower and tag
    limits, sorts them by audience = followers * (1 + tag_bonus * tags), walks the sorted
    list in groups of ``group`` and labels the top half of each group by likes good (1), the
    bottom half bad (0); ties go to the earlier post. An incomplete last group is dropped.
    Returns (indices into ``posts`` of the labelled ones, labels int (M,), group ids (M,)).
    """
    if group < 2 or group % 2:
        raise ValueError(f"label_posts: group must be an even number >= 2, got {group}")
    names = ("followers", "likes", "tags", "age_days")
    cols = {k: np.asarray(posts[k] if isinstance(posts, dict) else [p[k] for p in posts], dtype=np.int64)
            for k in names}
    ok = cols["age_days"] > min_age_days                             # (P,)
    if min_followers is not None:
        ok &= cols["followers"] >= min_followers
    if max_followers is not None:
        ok &= cols["followers"] <= max_followers
    if max_tags is not None:
        ok &= cols["tags"] <= max_tags
    keep = np.flatnonzero(ok)                                        # (K,) in post order
    audience = cols["followers"][keep] * (1 + tag_bonus * cols["tags"][keep])
    keep = keep[np.lexsort((keep, audience))]                        # by audience, then post order
    n_groups = len(keep) // group
    idx = keep[:n_groups * group]                                    # (M,) = (n_groups * group,)
    groups = np.repeat(np.arange(n_groups, dtype=np.int64), group)   # (M,)
    by_likes = np.lexsort((idx, -cols["likes"][idx], groups))        # each group's posts, most liked first
    labels = np.zeros(len(idx), dtype=np.int64)
    labels[by_likes.reshape(n_groups, group)[:, :group // 2]] = 1     # the top half of each group
    return idx.astype(np.int64), labels, groups


def ideal_labels(quality, groups):
    """The labels a perfect judge of quality would give: each group's top half by true quality."""
    pred = np.zeros(len(quality), dtype=np.int64)
    for g in np.unique(groups):
        m = np.flatnonzero(groups == g)
        pred[m[np.argsort(-quality[m], kind="stable")[:len(m) // 2]]] = 1
    return pred


def label_ceiling(quality, labels, groups):
    """Accuracy of ``ideal_labels`` against the noisy labels: the best any image-only judge can
    expect, since the rest of the labels is like-count noise."""
    return float(np.mean(ideal_labels(quality, groups) == labels))


# ---------------------------------------------------------------- generation with a disk cache
def _write_csv(path, fields, rows):
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)


def read_csv(path, required):
    """Rows of a CSV as dicts; ValueError naming the file and the missing columns."""
    with open(path, newline="") as f:
        r = csv.DictReader(f)
        missing = [c for c in required if c not in (r.fieldnames or [])]
        if missing:
            raise ValueError(f"{path}: missing columns {missing} (found {r.fieldnames})")
        return list(r)


def _make_one(job):
    """Draw and save selfie ``i``; its generator is seeded by (seed, i), so the result does not
    depend on which worker process draws it."""
    seed, i, size, folder = job
    rng = np.random.default_rng([seed, i])
    a = _random_attributes(rng)
    a["image"] = f"selfie_{i:05d}.png"
    a["quality"] = true_quality(a)
    draw_selfie(a, rng, size).save(os.path.join(folder, a["image"]))
    return a


def generate(folder, n=8000, size=64, seed=0, progress=True):
    """Generate (or reuse) ``n`` synthetic selfies in ``folder``: PNG images, ``posts.csv``
    (image, user, followers, likes, tags, age_days) and ``attributes.csv``. The folder is
    built under a temporary name and renamed when complete, so a stopped run leaves nothing
    half-written; a folder made with the same settings is reused."""
    stamp = dict(version=GENERATOR_VERSION, n=n, size=size, seed=seed)
    done = os.path.join(folder, "generator.json")
    if os.path.exists(done):
        with open(done) as f:
            if json.load(f) == stamp:
                return folder
    parent = os.path.dirname(os.path.abspath(folder))
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".selfies-", dir=parent)
    try:
        attrs = []
        jobs = [(seed, i, size, tmp) for i in range(n)]
        with Progress(n, "generating selfies", "img", enabled=progress) as bar, \
                ProcessPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
            for a in pool.map(_make_one, jobs, chunksize=32):
                attrs.append(a)
                bar.update(1)
        posts = simulate_posts(attrs, np.random.default_rng([seed, n]))
        _write_csv(os.path.join(tmp, "attributes.csv"), ATTRIBUTE_FIELDS, attrs)
        _write_csv(os.path.join(tmp, "posts.csv"), POST_FIELDS, posts)
        with open(os.path.join(tmp, "generator.json"), "w") as f:
            json.dump(stamp, f)
        if os.path.exists(folder):
            shutil.rmtree(folder)
        os.replace(tmp, folder)
    finally:
        if os.path.exists(tmp):
            shutil.rmtree(tmp)
    return folder


# ---------------------------------------------------------------- data sources
def _posts_from_rows(rows, path):
    posts = []
    for k, r in enumerate(rows, 2):
        try:
            posts.append(dict(image=r["image"], user=r["user"], followers=int(r["followers"]),
                              likes=int(r["likes"]), tags=int(r["tags"]), age_days=float(r["age_days"])))
        except (TypeError, ValueError) as e:
            raise ValueError(f"{path}: line {k}: {e}") from None
    return posts


def _faces_only(paths, face_filter):
    """(indices of ``paths`` to keep, number dropped): all of them without a ``face_filter``, else
    those it finds a face in (``face_filter(paths) -> bool (N,)``)."""
    if face_filter is None:
        return np.arange(len(paths)), 0
    keep = np.flatnonzero(face_filter(paths))
    return keep, len(paths) - len(keep)


def from_posts_csv(path, face_filter=None, **label_options):
    """``--posts CSV``: (paths, labels, info) labelled by the post's rule; images relative to the
    CSV. With ``face_filter`` the posts whose image shows no face are dropped before labelling
    (their number is ``info["no_face"]``)."""
    rows = read_csv(path, POST_FIELDS)
    posts = _posts_from_rows(rows, path)                            # every line checked, numbered as in the file
    base = os.path.dirname(os.path.abspath(path))
    keep, dropped = _faces_only([os.path.join(base, r["image"]) for r in rows], face_filter)
    n_read = len(rows)
    rows, posts = [rows[i] for i in keep], [posts[i] for i in keep]
    idx, labels, groups = label_posts(posts, **label_options)
    if len(idx) == 0:
        no_face = f", {dropped} without a face" if dropped else ""
        raise ValueError(f"{path}: no complete group of 100 posts is left after the filters "
                         f"({n_read} posts read{no_face})")
    paths = [os.path.join(base, posts[i]["image"]) for i in idx]
    return paths, labels, dict(groups=groups, rows=[rows[i] for i in idx], no_face=dropped)


def synthetic(folder, n, size, seed, progress=True, **label_options):
    """Generated selfies labelled by the post's rule; info carries attributes, true quality and groups."""
    generate(folder, n=n, size=size, seed=seed, progress=progress)
    paths, labels, info = from_posts_csv(os.path.join(folder, "posts.csv"), **label_options)
    attrs = {r["image"]: r for r in read_csv(os.path.join(folder, "attributes.csv"), ATTRIBUTE_FIELDS)}
    info["attrs"] = [attrs[os.path.basename(p)] for p in paths]
    info["quality"] = np.array([float(a["quality"]) for a in info["attrs"]])
    return paths, labels, info


def from_class_folders(root, face_filter=None):
    """``--data DIR`` with ``good/`` and ``bad/`` subfolders -> (paths, labels, info); with
    ``face_filter``, images without a face are dropped (``info["no_face"]`` of them)."""
    paths, labels = [], []
    for label, name in ((0, "bad"), (1, "good")):
        folder = os.path.join(root, name)
        if not os.path.isdir(folder):
            raise ValueError(f"{root}: expected subfolders good/ and bad/; {name}/ is missing")
        files = list_images(folder)
        if not files:
            raise ValueError(f"{folder}: the class folder '{name}' holds no images")
        paths += files
        labels += [label] * len(files)
    keep, dropped = _faces_only(paths, face_filter)
    return [paths[i] for i in keep], np.array(labels, dtype=np.int64)[keep], dict(no_face=dropped)


SELFIE_DATASET_ATTRIBUTES = [
    "partial_faces", "is_female", "baby", "child", "teenager", "youth", "middle_age", "senior",
    "white", "black", "asian", "oval_face", "round_face", "heart_face", "smiling", "mouth_open",
    "frowning", "wearing_glasses", "wearing_sunglasses", "wearing_lipstick", "tongue_out",
    "duck_face", "black_hair", "blond_hair", "brown_hair", "red_hair", "curly_hair",
    "straight_hair", "braid_hair", "showing_cellphone", "using_earphone", "using_mirror",
    "braces", "wearing_hat", "harsh_lighting", "dim_lighting"]


def from_selfie_dataset(root, face_filter=None):
    """``--selfie-dataset DIR``: the public Selfie dataset layout (Kalayeh et al. 2015).

    ``selfie_dataset.txt`` lines: image name, popularity score, 36 attributes in {-1, 0, 1}.
    Images are ``images/NAME.jpg`` (or ``NAME.jpg`` beside the text file). Labels: top half by
    popularity good, bottom half bad. Returns (paths, labels, info with per-attribute codes).
    With ``face_filter``, images without a face are dropped before the halves are drawn.
    """
    txt = os.path.join(root, "selfie_dataset.txt")
    if not os.path.exists(txt):
        raise ValueError(f"{root}: no selfie_dataset.txt (expected the Selfie dataset layout)")
    names, scores, codes = [], [], []
    with open(txt) as f:
        for k, line in enumerate(f, 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 2 + len(SELFIE_DATASET_ATTRIBUTES):
                raise ValueError(f"{txt}: line {k} has {len(parts)} fields, expected "
                                 f"{2 + len(SELFIE_DATASET_ATTRIBUTES)} (name, score, 36 attributes)")
            try:
                scores.append(float(parts[1]))
                codes.append([int(v) for v in parts[2:]])
            except ValueError as e:
                raise ValueError(f"{txt}: line {k}: {e}") from None
            names.append(parts[0])
    if len(names) < 2:
        raise ValueError(f"{txt}: needs at least two images, found {len(names)}")
    folder = os.path.join(root, "images") if os.path.isdir(os.path.join(root, "images")) else root
    paths = [os.path.join(folder, n if os.path.splitext(n)[1] else n + ".jpg") for n in names]
    keep, dropped = _faces_only(paths, face_filter)
    paths, scores, codes = [paths[i] for i in keep], np.array(scores)[keep], np.array(codes)[keep]
    if len(paths) < 2:
        raise ValueError(f"{txt}: {len(paths)} image(s) left after dropping {dropped} without a face")
    order = np.argsort(-scores, kind="stable")
    labels = np.zeros(len(paths), dtype=np.int64)
    labels[order[:len(paths) // 2]] = 1
    return paths, labels, dict(codes={a: codes[:, j] for j, a in enumerate(SELFIE_DATASET_ATTRIBUTES)},
                               popularity=scores, no_face=dropped)
