"""The face filter: a small convlib net that tells a face from anything else in a 24x24 grey
window, the windows it learns from, and the multi-scale sliding-window search that says whether
a photo holds a face, and where (the post kept only the images in which a ConvNet found a face).

Training windows, all grey and each standardised to zero mean and unit variance:
- real faces and non-faces: scikit-image's ``lfw_subset`` (100 + 100, 25x25), augmented
  (flips, shifts, zooms, small turns); the only real face photographs these machines have;
- backgrounds cut from the selfie generator's drawings (its attributes say where the face is);
- windows of real photographs without a person (scikit-image's clock, gravel, page, ...) and of
  procedural textures, plus, twice, the windows of those images the net finds most face-like
  (hard-negative mining, as classical detectors do). The photographs the checks use
  (astronaut, coffee, rocket, brick, grass, coins, moon) are never trained on.

Cross-validation holds out a fifth of lfw and a fifth of the negative images per fold; the
verdict threshold is set just above the score any held-out negative image got.
"""
import math
import os

import numpy as np
from PIL import Image

import convlib as cl

SIZE = 24                                                           # window side the net sees
NEGATIVE_PHOTOS = ["clock", "gravel", "hubble_deep_field", "immunohistochemistry", "page", "text", "cell",
                   "colorwheel", "checkerboard", "retina", "microaneurysms", "horse", "logo", "chelsea"]
CHECKS = {"astronaut": "face", "coffee": "no face", "rocket": "no face", "brick": "no face",
          "grass": "no face", "coins": "no face", "moon": "no face"}
INSTALL = ('the face filter trains on scikit-image\'s bundled photographs: pip install -e ".[faces]" '
           '(or, for selfie_train.py, skip the filter with --no-face-filter)')


def load_filter(path):
    """(net in eval mode, threshold) of a face model written by selfie_faces.py --train; exits
    saying how to train one if there is none."""
    if not os.path.isfile(path):
        raise SystemExit(f"error: no face model at {path}; train one with: python examples/selfie_faces.py "
                         f"--train --out {os.path.dirname(path) or '.'}")
    net, meta = cl.load(path, with_metadata=True)
    if meta.get("kind") != "face filter":
        raise SystemExit(f"error: {path} is not a face model (its metadata says {meta.get('kind')!r})")
    return net.eval(), float(meta["threshold"])


def skimage_data():
    """scikit-image's ``data`` module, or SystemExit saying how to install it."""
    try:
        from skimage import data
    except ImportError:
        raise SystemExit(f"error: {INSTALL}") from None
    return data


def photo(name):
    """A scikit-image sample photograph as a grey float array (H, W) in [0, 1]."""
    a = np.asarray(getattr(skimage_data(), name)())
    if a.dtype == bool:
        a = a.astype(np.float32)
    a = a.astype(np.float32) / (255 if a.max() > 1 else 1)
    return grey(a)


def grey(a):
    """(H, W), (H, W, 3) or (H, W, 4) array or PIL image -> grey float32 (H, W) in [0, 1]."""
    if isinstance(a, Image.Image):
        return np.asarray(a.convert("L"), np.float32) / 255
    if a.ndim == 3:
        a = a[..., :3] @ np.array([0.299, 0.587, 0.114], np.float32)
    return a.astype(np.float32)


def standardise(w):
    """Windows (N, S, S) -> (N, 1, S, S) float32, each with zero mean and unit variance (a flat
    window stays flat), so that brightness and contrast do not matter."""
    w = np.asarray(w, np.float32)
    mean = w.mean(axis=(1, 2), keepdims=True)
    std = w.std(axis=(1, 2), keepdims=True)                         # below 0.04: mostly noise, kept small
    return ((w - mean) / np.maximum(std, 0.04))[:, None]            # (N, 1, S, S)


def resize(a, side):
    """Grey (H, W) float -> (side, side) float32, bilinear."""
    return np.asarray(Image.fromarray(a).resize((side, side), Image.BILINEAR), np.float32)


def build_net():
    """Three conv blocks on a 24x24 grey window, then FC: logits (N, 2), class 1 = face."""
    return cl.Sequential(cl.Conv2d(1, 16, 3, padding=1), cl.ReLU(), cl.MaxPool2d(2),
                         cl.Conv2d(16, 32, 3, padding=1), cl.ReLU(), cl.MaxPool2d(2),
                         cl.Conv2d(32, 32, 3, padding=1), cl.ReLU(), cl.MaxPool2d(2),
                         cl.Flatten(), cl.Linear(32 * 3 * 3, 32), cl.ReLU(), cl.Linear(32, 2))


# ---------------------------------------------------------------- training windows
def lfw():
    """(faces (100, 25, 25), non-faces (100, 25, 25)) float in [0, 1]: real photographs."""
    a = np.asarray(skimage_data().lfw_subset(), np.float32)
    return a[:100], a[100:]


def augment(patches, copies, rng):
    """Each patch (N, H, W) ``copies`` times, flipped, shifted, zoomed in (to 80-100% of its
    side) and turned (up to 10 degrees) at random -> (N * copies, SIZE, SIZE)."""
    out = []
    for p in patches:
        im = Image.fromarray(np.asarray(p, np.float32))
        H, W = p.shape
        for _ in range(copies):
            side = rng.uniform(0.8, 1.0) * min(H, W)
            cx = np.clip(W / 2 + rng.uniform(-0.06, 0.06) * W, side / 2, W - side / 2)
            cy = np.clip(H / 2 + rng.uniform(-0.06, 0.06) * H, side / 2, H - side / 2)
            t = im.rotate(float(rng.uniform(-10, 10)), resample=Image.BILINEAR, center=(cx, cy))
            box = (cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2)
            w = np.asarray(t.resize((SIZE, SIZE), Image.BILINEAR, box=box), np.float32)
            out.append(w[:, ::-1] if rng.random() < 0.5 else w)
    return np.stack(out)


def generator_backgrounds(n, seed):
    """(n, SIZE, SIZE): one window away from the face of each of ``n`` drawn selfies (the
    generator's attributes say where the face is). Its drawn faces are not used as positives:
    with them, the net learned "round with two dark dots" and rated the astronaut's mission
    patch above her face (margin 7.8 against 2.5; without them her face is the top window)."""
    from . import selfie_data as sd
    rng = np.random.default_rng(seed)
    backs, size = [], 64
    while len(backs) < n:
        a = sd._random_attributes(rng)
        a["n_faces"] = 1                                            # only the main face's place is known
        g = grey(sd.draw_selfie(a, rng, size))
        fh, fx, fy = a["face_frac"] * size, a["cx"] * size, a["cy"] * size
        for _ in range(10):                                         # left, right or below the person
            s = rng.uniform(8, 40)
            x, y = rng.uniform(0, size - s, 2)
            if x + s < fx - 0.6 * fh or x > fx + 0.6 * fh or y > fy + 2.6 * fh:
                backs.append(crop(g, x, y, s))
                break
    return np.stack(backs)


def crop(g, left, top, side):
    """The square window (left, top, side) of grey array g, resized to SIZE x SIZE."""
    return np.asarray(Image.fromarray(g).resize((SIZE, SIZE), Image.BILINEAR,
                                                box=(left, top, left + side, top + side)), np.float32)


def textures(n, rng, side=96):
    """``n`` procedural grey images (side x side) of the kinds of things that are not faces:
    blurred noise at every scale, gratings, scattered shapes and lines, letters, and discs and
    rings with marks inside (coins, badges and buttons are what such a filter mistakes first)."""
    from PIL import ImageDraw, ImageFilter
    out = []
    for i in range(n):
        kind = i % 5
        if kind == 0:                                               # noise, smooth to rough
            k = int(rng.integers(2, 24))
            im = Image.fromarray((rng.random((k, k)) * 255).astype(np.uint8)).resize((side, side), Image.BICUBIC)
        elif kind == 1:                                             # a grating, any angle and frequency
            yy, xx = np.mgrid[:side, :side]
            f, a = rng.uniform(0.05, 0.8), rng.uniform(0, np.pi)
            g = np.sin(f * (np.cos(a) * xx + np.sin(a) * yy) + rng.uniform(0, 6.3))
            im = Image.fromarray(((g * rng.uniform(0.2, 0.5) + 0.5) * 255).astype(np.uint8))
        elif kind == 4:                                             # discs and rings with marks inside
            im = Image.new("L", (side, side), int(rng.integers(0, 256)))
            d = ImageDraw.Draw(im)
            for _ in range(int(rng.integers(1, 6))):
                r, (x, y) = rng.uniform(8, side / 2), rng.uniform(0, side, 2)
                d.ellipse((x - r, y - r, x + r, y + r), fill=int(rng.integers(0, 256)),
                          outline=int(rng.integers(0, 256)), width=int(rng.integers(1, 4)))
                for _ in range(int(rng.integers(0, 5))):            # dots, bars, letters inside
                    u, v = x + rng.uniform(-0.6, 0.6, 2) * r
                    q = rng.uniform(1, r / 3)
                    [d.ellipse, d.rectangle][int(rng.integers(2))]((u - q, v - q / 2, u + q, v + q / 2),
                                                                   fill=int(rng.integers(0, 256)))
            im = im.filter(ImageFilter.GaussianBlur(float(rng.uniform(0, 1.5))))
        else:                                                       # shapes and lines, or letters
            im = Image.new("L", (side, side), int(rng.integers(0, 256)))
            d = ImageDraw.Draw(im)
            for _ in range(int(rng.integers(3, 15))):
                x0, x1 = sorted(rng.integers(-side // 4, side + side // 4, 2))
                y0, y1 = sorted(rng.integers(-side // 4, side + side // 4, 2))
                box, fill = (x0, y0, x1, y1), int(rng.integers(0, 256))
                if kind == 3:
                    d.text((x0, y0), "".join(chr(c) for c in rng.integers(33, 127, 4)), fill=fill)
                else:
                    [d.ellipse, d.rectangle, d.line][int(rng.integers(3))](box, fill=fill)
            im = im.filter(ImageFilter.GaussianBlur(float(rng.uniform(0, 2))))
        out.append(np.asarray(im, np.float32) / 255)
    return out


def photo_windows(images, per_photo, rng):
    """Random square windows (sides 5-60% of the short side) of grey images (or photo names)."""
    out = []
    for g in images:
        g = photo(g) if isinstance(g, str) else g
        H, W = g.shape
        for _ in range(per_photo):
            s = rng.uniform(0.05, 0.6) * min(H, W)
            out.append(crop(g, rng.uniform(0, W - s), rng.uniform(0, H - s), s))
    return np.stack(out)


# ---------------------------------------------------------------- the sliding-window search
def windows(g, smallest=0.1, step=1.25, stride=0.25):
    """Every square window of grey image g (H, W) at sides from ``smallest`` x the short side
    (at least SIZE px) to all of it, growing by ``step``, moved by ``stride`` x its side: an
    image pyramid, each level scaled so that its window is SIZE px.
    Returns (windows (M, SIZE, SIZE), boxes (M, 3) int: left, top, side in g's pixels)."""
    H, W = g.shape
    short = min(H, W)
    side, out, boxes = max(float(SIZE), smallest * short), [], []
    while side <= short * 1.0001:
        f = SIZE / side
        level = np.asarray(Image.fromarray(g).resize((max(SIZE, round(W * f)), max(SIZE, round(H * f))),
                                                     Image.BILINEAR), np.float32)            # (h, w)
        s = max(1, round(stride * SIZE))
        view = np.lib.stride_tricks.sliding_window_view(level, (SIZE, SIZE))[::s, ::s]    # (a, b, S, S)
        ys, xs = np.meshgrid(np.arange(view.shape[0]) * s, np.arange(view.shape[1]) * s, indexing="ij")
        out.append(view.reshape(-1, SIZE, SIZE))
        boxes.append(np.stack([xs.ravel() / f, ys.ravel() / f, np.full(xs.size, side)], 1))
        side *= step
    return np.concatenate(out), np.round(np.concatenate(boxes)).astype(int)


def face_margin(net, w):
    """logit(face) - logit(not) (N,) of grey windows (N, SIZE, SIZE): ranks windows where
    P(face) = sigmoid(margin) has rounded to 1.0."""
    net.eval()
    logits = np.concatenate([net(standardise(w[i:i + 512])) for i in range(0, len(w), 512)])   # (N, 2)
    return (logits[:, 1] - logits[:, 0]).astype(np.float64)


def p_face(net, w):
    """P(face) (N,) of grey windows (N, SIZE, SIZE)."""
    return 1 / (1 + np.exp(-face_margin(net, w)))


SEARCH_SIDE = 240                                                   # images are searched at this short side


def iou(box, boxes):
    """Intersection over union of square ``box`` (left, top, side) with each of ``boxes`` (M, 3)."""
    x0, y0 = np.maximum(box[0], boxes[:, 0]), np.maximum(box[1], boxes[:, 1])
    x1 = np.minimum(box[0] + box[2], boxes[:, 0] + boxes[:, 2])
    y1 = np.minimum(box[1] + box[2], boxes[:, 1] + boxes[:, 2])
    inter = np.clip(x1 - x0, 0, None) * np.clip(y1 - y0, 0, None)
    return inter / (box[2] ** 2 + boxes[:, 2] ** 2 - inter)


def face_score(net, g, min_face=0.15, neighbours=3, candidates=50):
    """The search. Grey image g (H, W) is scaled to a short side of SEARCH_SIDE px and searched
    with ``windows`` (from a tenth of the short side up); a face must span ``min_face`` of the
    short side (a selfie's does; coins' tiny portrait heads do not). A window's score is the
    ``neighbours``-th highest margin among the windows overlapping it (IoU >= 0.4, itself
    included): a face is seen from neighbouring places and scales too, a texture that happens
    to look like one mostly is not (OpenCV's minNeighbors). Returns (score = logit of P(face),
    best box (left, top, side) in g's pixels, number of windows searched)."""
    H, W = g.shape
    if max(H, W) > 8 * min(H, W):
        raise ValueError(f"a {W}x{H} image is too long and thin to search for a face (more than 8:1)")
    f = SEARCH_SIDE / min(H, W)
    small = np.asarray(Image.fromarray(g).resize((max(SIZE, round(W * f)), max(SIZE, round(H * f))),
                                                 Image.BILINEAR), np.float32)                # (h, w)
    w, boxes = windows(small)
    big = boxes[:, 2] >= min_face * SEARCH_SIDE
    w, boxes = w[big], boxes[big]
    m = face_margin(net, w)                                                                  # (M,)
    best, k_best = -np.inf, 0
    for k in np.argsort(-m)[:candidates]:
        near = np.sort(m[iou(boxes[k], boxes) >= 0.4])[::-1]
        s = near[min(neighbours, len(near)) - 1]
        if s > best:
            best, k_best = float(s), int(k)
    return best, tuple(int(round(v / f)) for v in boxes[k_best]), len(m)


def find_face(net, image, threshold=0.5):
    """Is there a face in a PIL image or grey array, and where: (P(face), (left, top, side),
    verdict "face" / "no face", number of windows searched); see ``face_score``."""
    g = image if isinstance(image, np.ndarray) else grey(image)
    score, box, n = face_score(net, g)
    p = float(1 / (1 + np.exp(-score)))
    return p, box, "face" if p >= threshold else "no face", n


# ---------------------------------------------------------------- training
def negative_images(seed=0, n_textures=120):
    """{name: grey image}: scikit-image's photographs without a person (never the checked
    ones) and procedural textures, for negative windows and for mining."""
    images = {name: photo(name) for name in NEGATIVE_PHOTOS}
    images.update((f"texture{i:03d}", t) for i, t in enumerate(textures(n_textures, np.random.default_rng(seed))))
    return images


def training_set(faces, nonfaces, gen_backs, negatives, rng):
    """Windows (N, SIZE, SIZE) and labels (N,): real faces and non-faces (lfw patches,
    augmented), generator backgrounds, and random windows of the negative images (300 of a
    photograph, 40 of a texture). Each face comes 40 times, so that faces are about a third of
    the windows (with 12 copies, a tenth: the astronaut's face scored margin 0.6 instead of 6.9)."""
    pos = augment(faces, 40, rng)
    neg = [augment(nonfaces, 8, rng), gen_backs] + [
        photo_windows([g], 40 if name.startswith("texture") else 300, rng) for name, g in negatives.items()]
    neg = np.concatenate(neg)
    return np.concatenate([pos, neg]), np.r_[np.ones(len(pos), np.int64), np.zeros(len(neg), np.int64)]


def hard_negatives(net, images, per_image=150, min_p=0.1):
    """Of each grey image (none shows a face), the up to ``per_image`` most face-like windows
    with P(face) >= ``min_p``: what the net gets wrong, to learn from next."""
    out = []
    for g in images:
        w, _ = windows(g)
        m = face_margin(net, w)
        top = np.argsort(-m)[:per_image]
        out.append(w[top[m[top] >= np.log(min_p / (1 - min_p))]])
    return np.concatenate(out)


def train(faces, nonfaces, gen_backs, negatives, seed=0, epochs=3, rounds=3, progress=True):
    """Fit a face net on the windows, then ``rounds - 1`` times more, each time with the
    windows of the negative images it found most face-like added (hard-negative mining)."""
    rng = np.random.default_rng(seed)
    cl.manual_seed(seed)
    w, y = training_set(faces, nonfaces, gen_backs, negatives, rng)
    net = build_net()
    opt = cl.optim.Adam(net.parameters(), lr=2e-3)
    for r in range(rounds):
        if r:
            hard = hard_negatives(net, negatives.values())
            w, y = np.concatenate([w, hard]), np.r_[y, np.zeros(len(hard), np.int64)]
            opt.lr = 1e-3
        cl.fit(net, (standardise(w), y), epochs=epochs if r == 0 else max(1, epochs // 3), batch_size=128,
               optimizer=opt, seed=seed + r, progress=progress)
    return net.eval()


def cross_validate(k=5, seed=0, epochs=3, progress=True):
    """k-fold cross-validation. Fold i holds out a k-th of lfw's faces and non-faces and a k-th
    of the negative images, trains on the rest and predicts what it held out: P(face) of each
    lfw patch, and the most face-like window's margin of each negative image (what sets the
    verdict threshold). Returns a dict of those, the per-fold lfw accuracies and the shared data."""
    faces, nonfaces = lfw()
    gen_backs = generator_backgrounds(1000, seed)
    negatives = negative_images(seed)
    names = list(negatives)
    rng = np.random.default_rng(seed)
    folds = [np.array_split(rng.permutation(n), k) for n in (100, 100, len(names))]
    p, neg_max, acc = np.zeros(200), {}, []
    for i in range(k):
        held = [f[i] for f in folds]
        keep = [np.setdiff1d(np.arange(100), h) for h in held[:2]]
        train_negs = {n: negatives[n] for j, n in enumerate(names) if j not in set(held[2])}
        net = train(faces[keep[0]], nonfaces[keep[1]], gen_backs, train_negs, seed + i, epochs, progress=progress)
        patches = np.concatenate([faces[held[0]], nonfaces[held[1]]])
        pi = p_face(net, np.stack([resize(a, SIZE) for a in patches]))
        p[np.r_[held[0], 100 + held[1]]] = pi
        acc.append(float(np.mean((pi >= 0.5) == np.r_[np.ones(len(held[0])), np.zeros(len(held[1]))])))
        for j in held[2]:
            neg_max[names[j]] = face_score(net, negatives[names[j]])[0]
        print(f"fold {i + 1}/{k}: {100 * acc[-1]:.1f}% of {len(patches)} held-out lfw patches right", flush=True)
    return dict(fold_accuracy=acc, p_face=p, labels=np.r_[np.ones(100), np.zeros(100)], negative_max=neg_max,
                data=(faces, nonfaces, gen_backs, negatives))


def calibrated_threshold(negative_max, floor=0.5):
    """The verdict threshold: P(face) just above the most face-like window of every held-out
    negative photograph and texture (none of them would have been called a face), at least
    ``floor``."""
    top = max(negative_max.values())
    return max(floor, math.ceil(1e4 / (1 + math.exp(-top))) / 1e4)


def face_filter(net, threshold, progress=True):
    """A function paths -> bool (N,): True where ``find_face`` finds a face in the image.
    Files that do not decode are kept here: the image loader reports and skips them later."""
    from convlib.progress import Progress

    def keep(paths):
        out = np.ones(len(paths), dtype=bool)
        with Progress(len(paths), "looking for faces", "img", enabled=progress) as bar:
            for i, path in enumerate(paths):
                try:
                    with Image.open(path) as im:
                        im.draft("L", (2 * SEARCH_SIDE, 2 * SEARCH_SIDE))    # JPEGs decode small and fast
                        g = grey(im)
                except (OSError, SyntaxError, ValueError):
                    bar.update(1)
                    continue
                try:
                    out[i] = find_face(net, g, threshold)[2] == "face"
                except ValueError:                                  # too thin to hold a selfie's face
                    out[i] = False
                bar.update(1)
        return out
    return keep
