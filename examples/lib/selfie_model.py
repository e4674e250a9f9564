"""Using a trained selfie model: the network, preprocessing, P(good), saliency and crop search.
Shared by selfie_train.py, selfie_rate.py, selfie_crop.py and selfie_explain.py."""
import argparse
import itertools
import os
import sys

import numpy as np
from PIL import Image, UnidentifiedImageError

import convlib as cl
from convlib.data import fit_image, normalise, square

GOOD = 1                                                            # class index of "good"
SCALES = np.linspace(0.5, 1.0, 9)                                   # crop sides / the short side


def build_net(size, blocks=4, width=(16, 32, 64, 64), hidden=64, batchnorm=False):
    """The reference ConvNet: ``blocks`` x (Conv3x3 -> [BatchNorm] -> ReLU -> MaxPool2), then
    FC-ReLU-FC (batch norm off by default: on these noisy labels it trained slower, measured)."""
    if size % (2 ** blocks):
        raise ValueError(f"image size {size} must be divisible by {2 ** blocks}")
    layers, c = [], 3
    for f in width[:blocks]:
        layers += [cl.Conv2d(c, f, 3, padding=1)] + ([cl.BatchNorm2d(f)] if batchnorm else []) + \
                  [cl.ReLU(), cl.MaxPool2d(2)]
        c = f
    side = size // 2 ** blocks
    return cl.Sequential(*layers, cl.Flatten(), cl.Linear(c * side * side, hidden), cl.ReLU(),
                         cl.Linear(hidden, 2))


def load_model(path, note=True):
    """(net in eval mode, metadata) from a model file written by selfie_train.py; exits with a
    message saying which command trains one if there is no file at ``path``. ``note``: say so
    on stderr when the model was trained on the synthetic selfies."""
    if not os.path.isfile(path):
        sys.exit(f"error: no trained model at {path}; train one first with: python examples/selfie_train.py"
                 + ("" if path == "runs/selfie/model.npz" else f" --out {os.path.dirname(path) or '.'}"))
    net, meta = cl.load(path, with_metadata=True)
    missing = [k for k in ("size", "fit", "mean", "std", "classes") if k not in meta]
    if missing:
        raise ValueError(f"{path}: not a selfie model (metadata lacks {missing})")
    if note and trained_on_synthetic(meta):
        print(f"note: {SYNTHETIC_NOTE}", file=sys.stderr)
    return net, meta


SYNTHETIC_NOTE = ("this model was trained on the built-in synthetic selfies (generated cartoons); on real "
                  "photographs its verdicts mean little. Train on your own photos with: "
                  "python examples/selfie_train.py --data DIR")


def trained_on_synthetic(meta):
    """True for a model trained on the built-in synthetic selfies (recorded in its metadata)."""
    return meta.get("source") == "synthetic"


def prepare(images, meta):
    """PIL images -> normalised float32 (N, 3, S, S) as the model was trained (the values of
    ``image_to_array``, then ``normalise``): the images' pixels stacked first and converted
    together, which for the crop search's batches of tens is several times faster."""
    u = np.stack([np.asarray(fit_image(im, meta["size"], meta["fit"])) for im in images])  # (N, S, S, 3) uint8
    return normalise(u.transpose(0, 3, 1, 2).astype(np.float32) / 255.0, meta["mean"], meta["std"])


def p_good(net, x, batch_size=256):
    """P(good) (N,) for normalised inputs x (N, 3, S, S): the mean over each image and its mirror
    image (the net trains on random flips; averaging the two views is a point more accurate).
    Both views go through the net in one pass: for the crop search's small batches that halves
    the per-layer overhead."""
    n = len(x)
    p = cl.predict_proba(net, np.concatenate([x, x[..., ::-1]]), batch_size)[:, GOOD]   # (2N,)
    return (p[:n] + p[n:]) / 2


def saliency(net, x):
    """d P(good) / d pixels for x (N, 3, S, S), through net.backward -> (N, 3, S, S); P(good) of
    the image as it is (``p_good`` also averages in the mirror image).

    With p = softmax(logits), dp_good/dlogits = p_good * (onehot_good - p).
    """
    net.eval()
    logits = net(x)                                                 # (N, 2)
    p = cl.softmax(logits)
    dlogits = -p[:, GOOD:GOOD + 1] * p                              # (N, 2)
    dlogits[:, GOOD] += p[:, GOOD]
    grads = net.backward(dlogits.astype(x.dtype))
    net.zero_grad()
    return grads


def crop_grid(width, height, scales=SCALES, steps=9):
    """The crop search's candidates as a function of grid coordinates: box(a, b, c) -> square
    (left, top, side) in pixels, side = ``scales[a]`` x the short side, left and top ``b`` and
    ``c`` of ``steps - 1`` steps across the room the box leaves. Fractional coordinates fall
    between the grid's boxes (the scale interpolated linearly): the search's finest steps."""
    short, scales = min(width, height), np.asarray(scales, float)

    def box(a, b, c):
        side = max(1, round(float(np.interp(a, np.arange(len(scales)), scales)) * short))
        dx, dy = ((width - side) / (steps - 1), (height - side) / (steps - 1)) if steps > 1 else (0.0, 0.0)
        return round(float(b) * dx), round(float(c) * dy), side  # b * dx: as np.linspace computes it
    return box


def crop_boxes(width, height, scales=SCALES, steps=9):
    """Square boxes (left, top, side) in pixels: ``scales`` x the short side, each at
    ``steps`` x ``steps`` positions spread evenly over the image (3 bounded parameters)."""
    box = crop_grid(width, height, scales, steps)
    return sorted({box(a, b, c) for a in range(len(scales)) for c in range(steps) for b in range(steps)})


def best_crop(image, score_fn, scales=SCALES, steps=9, batch=64):
    """Global search over square crops of a PIL image. ``score_fn(list of PIL crops) -> (k,)``
    scores a batch. Returns ((left, top, side), best score, all scores)."""
    boxes = crop_boxes(image.width, image.height, scales, steps)
    scores = np.concatenate([
        np.asarray(score_fn([image.crop((x, y, x + s, y + s)) for x, y, s in boxes[i:i + batch]]))
        for i in range(0, len(boxes), batch)])
    k = int(np.argmax(scores))
    return boxes[k], float(scores[k]), scores


def climb(score, shape, keep=(4, 3, 1), finest=0.25, coarse=3, key=None):
    """Coarse to fine over a box of grid coordinates 0 <= t[i] <= shape[i] - 1 (floats allowed):
    score a coarse grid (``coarse`` evenly spaced values per axis, ends included), then, with a
    step h from a quarter of the grid halved each level down to ``finest``, walk from each of
    the best ``keep[level]`` points so far (the last count repeats) to a better neighbour,
    +-h along one axis, while there is one. ``score(list of points) -> (k,)`` is called once
    per round, with the points not scored yet (the walkers of a level move together);
    ``key(point)`` names what a point stands for (points with one key, like two that give the
    same crop, count once among the best). Returns {point: score} of every point scored."""
    seen, key = {}, key or (lambda p: p)

    def look(points):
        new = [p for p in dict.fromkeys(points) if p not in seen
               and all(0 <= v <= n - 1 for v, n in zip(p, shape))]
        if new:
            seen.update(zip(new, (float(s) for s in score(new))))

    look(list(itertools.product(*[np.linspace(0, n - 1, min(n, coarse)).tolist() for n in shape])))
    h, keep = max((n - 1) / 4 for n in shape), [keep] if isinstance(keep, int) else list(keep)
    while h >= finest:
        walkers, k = {}, keep.pop(0) if len(keep) > 1 else keep[0]
        for p in sorted(seen, key=seen.get, reverse=True):
            walkers.setdefault(key(p), p)
            if len(walkers) == k:
                break
        walkers = list(walkers.values())
        while walkers:
            near = {p: [tuple(v + d * h * (i == axis) for i, v in enumerate(p))
                        for axis in range(len(shape)) for d in (-1, 1)] for p in walkers}
            look([q for qs in near.values() for q in qs])
            moves = [max((q for q in near[p] if q in seen), key=seen.get, default=p) for p in walkers]
            walkers = list(dict.fromkeys(q for p, q in zip(walkers, moves) if seen[q] > seen[p]))
        h /= 2
    return seen


def explain(net, meta, image, show=320):
    """What the net looks at in a PIL image: (heat (S, S) = max over colours of |d P(good) /
    d pixel|, P(good), the square the net rates at ``show`` px, that square with the heat over it)."""
    from . import plots
    x = prepare([image], meta)                                       # (1, 3, S, S)
    heat = np.abs(saliency(net, x)[0]).max(axis=0)                   # (S, S)
    photo = square(image.convert("RGB"), meta["fit"]).resize((show, show))
    return heat, float(p_good(net, x)[0]), photo, plots.heatmap_overlay(photo, heat)


def find_crop(net, meta, image, scales=9, steps=9, exhaustive=False, keep=(4, 3, 1), finest=0.25, work=3, coarse=3):
    """The best square crop of a PIL image among sides from half the short side to all of it:
    ((left, top, side), P(good) of that crop, P(good) of the whole image, number of crops scored).

    The candidates are ``crop_grid``'s: ``scales`` sizes x ``steps`` x ``steps`` positions.
    ``exhaustive=True`` scores every one of them (657 distinct crops of a landscape photo at
    9 x 9 x 9: 1,314 images through the net with the mirror images); by default ``climb``
    searches coarse to fine (``keep``, ``finest``, ``coarse`` are its settings), scoring crops
    of a copy of the image reduced to about ``work`` x the net's input on its short side (how
    these settings were chosen: docs/web.md). Either way the answer's P(good) is the chosen
    crop's own, as ``p_good(net, prepare([image.crop(box)], meta))`` gives it, and with
    ``fit="crop"`` the whole image (its centred square) is the answer if no crop beats it.
    """
    size, sizes = meta["size"], np.linspace(0.5, 1.0, scales)
    if exhaustive:
        box, _, scores = best_crop(image, lambda crops: p_good(net, prepare(crops, meta)), sizes, steps)
        n = len(scores)
    else:
        grid = crop_grid(image.width, image.height, sizes, steps)
        small = image.reduce(max(1, min(image.size) // (work * size)))
        fx, fy = image.width / small.width, image.height / small.height
        cache = {}

        def score(points):
            boxes = [grid(*p) for p in points]
            new = [b for b in dict.fromkeys(boxes) if b not in cache]
            if new:
                crops = [small.resize((size, size), Image.BILINEAR, box=(x / fx, y / fy, (x + s) / fx, (y + s) / fy),
                                      reducing_gap=1.0) for x, y, s in new]   # halved first where 2x or more
                cache.update(zip(new, p_good(net, prepare(crops, meta))))
            return [cache[b] for b in boxes]

        seen = climb(score, (scales, steps, steps), keep, finest, coarse, key=lambda p: grid(*p))
        box, n = grid(*max(seen, key=seen.get)), len(cache)
    whole, best = (float(p) for p in p_good(net, prepare([image, image.crop(_ltrb(box))], meta)))
    if meta["fit"] == "crop" and whole > best:
        side = min(image.size)
        box, best = ((image.width - side) // 2, (image.height - side) // 2, side), whole
    return box, best, whole, n


def _ltrb(box):
    left, top, side = box
    return left, top, left + side, top + side


def verdict(p):
    """A one-line verdict on P(good), like the post's bot."""
    if p >= 0.75:
        return "great selfie: post it"
    if p >= 0.5:
        return "good selfie"
    if p >= 0.25:
        return "meh: try more light, a tighter crop, or a filter"
    return "bad selfie: the net would not like it"


def percentile(meta, p):
    """Where P(good) ``p`` ranks among the model's held-out selfies (% of them below it), or
    None for a model file that did not record them."""
    held_out = meta.get("held_out_p_good")
    if not held_out:
        return None
    return float(100 * np.mean(np.asarray(held_out) < p))


def open_image(path):
    """A decoded PIL image, or ValueError naming the file and what was wrong."""
    if os.path.isdir(path):
        raise ValueError(f"{path}: is a folder, not an image")
    if not os.path.exists(path):
        raise ValueError(f"{path}: no such file")
    try:
        with Image.open(path) as img:
            img.load()
            return img.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise ValueError(f"{path}: cannot decode image ({type(e).__name__})") from None


def image_command(doc, argv, kind, extra_args=()):
    """The command line shared by selfie_crop.py and selfie_explain.py: IMAGE, --model, --out
    (default: ``<kind>_<image name>.png`` next to the model), plus ``extra_args``, a list of
    (flags, argparse kwargs). Returns (args, net, meta, PIL image, output path); exits with a
    message naming the file if the image does not decode."""
    ap = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    ap.add_argument("image")
    ap.add_argument("--model", default="runs/selfie/model.npz")
    ap.add_argument("--out", default=None, help=f"PNG to write (default: {kind}_<name>.png next to the model)")
    for flags, kwargs in extra_args:
        ap.add_argument(*flags, **kwargs)
    args = ap.parse_args(argv)
    net, meta = load_model(args.model)
    try:
        img = open_image(args.image)
    except ValueError as e:
        sys.exit(f"error: {e}")
    stem = os.path.splitext(os.path.basename(args.image))[0]
    out = args.out or os.path.join(os.path.dirname(args.model), f"{kind}_{stem}.png")
    return args, net, meta, img, out
