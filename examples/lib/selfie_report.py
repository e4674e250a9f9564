"""What a selfie run reports: the stratified split, the rules table (mean P(good) per attribute,
next to the post's findings) and the pictures of held-out selfies."""
import json
import os

import numpy as np

from convlib.io import atomic_file

from . import plots
from .tsne import tsne


def split(labels, seed, fractions=(0.7, 0.15)):
    """Stratified train/val/test index arrays: each split keeps the class balance."""
    rng = np.random.default_rng(seed)
    parts = ([], [], [])
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        a = int(round(fractions[0] * len(idx)))
        b = a + int(round(fractions[1] * len(idx)))
        for part, chunk in zip(parts, (idx[:a], idx[a:b], idx[b:])):
            part.extend(chunk.tolist())
    return [np.array(sorted(p), dtype=np.int64) for p in parts]


# ---------------------------------------------------------------- the rules table
def synthetic_rules(attrs):
    """[(name, mask with, mask without, the post's verdict)] over synthetic attribute rows."""
    f = lambda k: np.array([float(a[k]) for a in attrs])
    b = lambda k: np.array([a[k] == "True" for a in attrs])
    face, cx, cy = f("face_frac"), f("cx"), f("cy")
    single = f("n_faces") == 1
    filt = np.array([a["filter"] != "none" for a in attrs])
    wear = np.array([a["eyewear"] for a in attrs])
    return [
        ("white border", b("border"), ~b("border"), "do"),
        ("b&w or faded filter", filt, ~filt, "do"),
        ("face ~1/3 of frame (0.25-0.45)", single & (face >= 0.25) & (face < 0.45),
         single & ((face < 0.25) | (face >= 0.45)), "do"),
        ("head too large (> 0.6)", single & (face > 0.6), single & (face <= 0.6), "don't"),
        ("forehead cut off", b("forehead_cut"), ~b("forehead_cut"), "do"),
        ("long hair", b("long_hair"), ~b("long_hair"), "do"),
        ("oversaturated", f("saturation") > 1.4, f("saturation") <= 1.4, "do"),
        ("centred (|x-0.5| < 0.1)", np.abs(cx - 0.5) < 0.1, np.abs(cx - 0.5) >= 0.1, "do"),
        ("face near the top (y < 0.4)", cy < 0.4, cy >= 0.4, "do"),
        ("low light", f("brightness") < 0.5, f("brightness") >= 0.5, "don't"),
        ("group shot", ~single, single, "don't"),
        ("sunglasses", wear == "sunglasses", wear == "none", ""),
        ("glasses", wear == "glasses", wear == "none", ""),
    ]


def selfie_dataset_rules(codes):
    verdicts = {"dim_lighting": "don't", "harsh_lighting": "don't", "is_female": "do"}
    return [(name, c == 1, c == -1, verdicts.get(name, "")) for name, c in codes.items()]


def rules_table(rules, p):
    """Rows (name, n with, P(good) with, P(good) without, post, agrees) and the text table."""
    rows = []
    for name, yes, no, post in rules:
        if yes.sum() < 5 or no.sum() < 5:
            continue
        pw, pn = float(p[yes].mean()), float(p[no].mean())
        agrees = "" if not post else ("yes" if (pw > pn) == (post == "do") else "NO")
        rows.append((name, int(yes.sum()), pw, pn, post, agrees))
    head = f"{'attribute':32s} {'n':>5s} {'P(good) with':>13s} {'without':>8s}  {'post says':9s} net agrees"
    lines = [head, "-" * len(head)] + [f"{r[0]:32s} {r[1]:5d} {r[2]:13.3f} {r[3]:8.3f}  {r[4]:9s} {r[5]}"
                                       for r in rows]
    return rows, "\n".join(lines)


def _ranked(imgs, p, labels, idx, title, good_word="good"):
    """A grid of images ``idx`` captioned with their rank and true label, green where the net
    (P(good) >= 0.5) agrees with the label, red where it does not."""
    right = (p[idx] >= 0.5) == (labels[idx] == 1)
    names = ["good" if labels[i] == 1 else "bad" for i in idx]
    rank = lambda i: int(np.flatnonzero(np.argsort(-p) == i)[0]) + 1
    return plots.grid(imgs[idx], 8, [f"#{rank(i)} {n}" for i, n in zip(idx, names)], cell=80,
                      caption_colors=[plots.GOOD_GREEN if r else plots.BAD_RED for r in right],
                      title=[title, f"caption: rank by P(good) among {len(p)} held-out selfies, then the "
                             "true label; green: the net agrees with it, red: it does not"])


def write_pictures(net, hist, xn, imgs, labels, p, out, seed, cutout=0):
    """curves, continuum, best, worst, t-SNE and filters PNGs for held-out images ``imgs``
    (3, S, S) in [0, 1], normalised ``xn``, true ``labels`` (T,) 0/1 and the net's P(good) ``p`` (T,);
    ``seed`` and ``cutout`` (the training run's) are named on the curves."""
    order = np.argsort(-p)
    aug = f"flips and {cutout} px cutout" if cutout else "flips"
    plots.save_png(plots.curves(hist, [f"selfie net training, seed {seed}: loss and accuracy per epoch",
                                       f"train: the training selfies with {aug}; val: the validation split, "
                                       "its best epoch's weights kept (marked)"]),
                   os.path.join(out, "curves.png"))
    rows, cols = 6, 12
    picks = order[np.linspace(0, len(order) - 1, min(len(order), rows * cols)).astype(int)]
    plots.save_png(plots.grid(imgs[picks], cols, [f"{v:.2f}" for v in p[picks]], cell=64,
                              borders=[plots.GOOD_GREEN if labels[i] == 1 else plots.BAD_RED for i in picks],
                              title=["held-out selfies from best (top left) to worst (bottom right)",
                                     "caption: P(good); frame: the true label, green good, red bad"]),
                   os.path.join(out, "continuum.png"))
    k = min(48, len(order) // 2)                                     # best and worst never overlap
    plots.save_png(_ranked(imgs, p, labels, order[:k], f"the net's best {k} held-out selfies"),
                   os.path.join(out, "best.png"))
    plots.save_png(_ranked(imgs, p, labels, order[::-1][:k], f"the net's worst {k} held-out selfies"),
                   os.path.join(out, "worst.png"))
    m = min(len(p), 900)                                             # a 30 x 30 map at most
    feats = net[:-1](xn[:m])                                         # (m, hidden) last hidden layer
    plots.save_png(plots.mosaic(imgs[:m], tsne(feats, seed=seed), p[:m]), os.path.join(out, "tsne.png"))
    one = int(order[0])                                              # the best selfie: its first-layer maps
    maps = net[:2](xn[one:one + 1])[0]                               # (F, S, S) after conv + ReLU
    plots.save_png(plots.filters_image(net[0].weight.data, imgs[one], maps), os.path.join(out, "filters.png"))


def rule_bars(table_rows):
    """Bars for rules.png: (name, P(good) with, note, colour by agreement with the post)."""
    color = {"yes": plots.GOOD_GREEN, "NO": plots.BAD_RED, "": plots.GREY}
    return [(name, pw, f"{pw:.2f} vs {pn:.2f}   {post or '-':6s} {agrees or '-'}", color[agrees])
            for name, _, pw, pn, post, agrees in table_rows]


def write_rules(rules, p, out):
    """Print the rules table and write rules.png; ``rules`` None (no attributes) skips both."""
    if rules is None:
        print("\n(no attributes in this data source: rules table skipped)")
        return False
    table_rows, table = rules_table(rules, p)
    print("\nmean P(good) on held-out selfies, by attribute (the rules the net learned):\n" + table)
    chart = plots.bar_chart(rule_bars(table_rows), None, xlabel="mean P(good) with the attribute (the line: 0.5)",
                            columns="with vs without   post   net agrees")
    plots.save_png(plots.header(chart, [
        "mean P(good) of held-out selfies with each attribute: the rules the net learned",
        "bar colour: green, the net agrees with the post; red, it does not; grey, the post gives no verdict"]),
        os.path.join(out, "rules.png"))
    return True


def record_run(out, wrote, **about):
    """Write out/run.json listing this run's files; remove the files an earlier run listed there
    that this run did not write (only files a run listed: nothing else in the folder is touched)."""
    manifest = os.path.join(out, "run.json")
    try:
        with open(manifest) as f:
            before = json.load(f).get("files", [])
    except (OSError, ValueError, AttributeError):
        before = []
    for name in set(before) - set(wrote):
        path = os.path.join(out, os.path.basename(str(name)))       # never outside the folder
        if os.path.isfile(path):
            os.remove(path)
    with atomic_file(manifest, ".json") as tmp, open(tmp, "w") as f:
        json.dump({"files": list(wrote), **about}, f, indent=1)
