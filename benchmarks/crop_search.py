"""How close the fast crop searches come to the exhaustive one, and at what cost.

    python benchmarks/crop_search.py [--model runs/selfie/model.npz] [--n 200] [--backgrounds scene selfies]

Held-out synthetic selfies (the model's test split) are pasted at random size and place into
larger pictures (640-1024 px a side): ``scene``, a smooth random colour field, or ``selfies``,
another held-out selfie blown up and blurred (faces everywhere: a harder landscape). Each
picture's best square crop is searched three ways:

- exhaustive: every crop of the 9 x 9 x 9 grid scored through the whole net (today's search);
- coarse to fine (``find_crop``, what selfie_crop.py and the web page use): a 3 x 3 x 3 grid, then
  steps to better neighbours, down to a quarter of a grid step; each score a crop's own;
- OverFeat: the trunk run once per scale over the resized picture, the head evaluated at every
  window as a convolution (the first Linear's kernel the trunk's 3 x 3 output), so a window
  sees its neighbours' pixels where a lone crop sees zero padding; the best window is then
  scored as a crop of its own.

A search agrees when its chosen crop's own P(good) is within 0.02 of the exhaustive best.
Prints one table per background: agreement, mean shortfall and images through the net (a crop
and its mirror image are two; benchmarks/load_web.py has the time of a whole answer).
"""
import argparse
import os
import sys

import numpy as np
from PIL import Image, ImageFilter

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "examples"))

from convlib.data import normalise
from lib import selfie_data as sd
from lib import selfie_report as report
from lib.selfie_model import GOOD, find_crop, load_model, p_good, prepare


def held_out_selfies(data="data/selfies", seed=0):
    """Paths of the synthetic selfies in the test split selfie_train.py (seed 0) held out."""
    paths, labels, _ = sd.from_posts_csv(os.path.join(data, "posts.csv"))
    return [paths[i] for i in report.split(labels, seed)[2]]


def pasted(selfie, rng, background="scene", size=(640, 1024), others=(), shape=None):
    """A picture ``size[0]..size[1]`` px a side (or ``shape`` (w, h)) with the PIL image
    ``selfie`` pasted into it at a random size (0.3-0.9 of the short side) and place; the
    background is a smooth random colour field (``scene``) or one of ``others`` blown up and
    blurred (``selfies``). Returns (picture, (left, top, side) of the selfie)."""
    w, h = shape or (int(v) for v in rng.integers(size[0], size[1] + 1, 2))
    if background == "scene":
        pic = Image.fromarray(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)).resize((w, h), Image.BICUBIC)
    else:
        other = others[int(rng.integers(len(others)))]
        pic = other.resize((w, h), Image.BICUBIC).filter(ImageFilter.GaussianBlur(6))
    side = int(rng.uniform(0.3, 0.9) * min(w, h))
    left, top = int(rng.integers(0, w - side + 1)), int(rng.integers(0, h - side + 1))
    pic.paste(selfie.resize((side, side), Image.BICUBIC), (left, top))
    return pic, (left, top, side)


def overfeat(net, meta, image, scales=9):
    """The best window of the OverFeat search: ((left, top, side), its windowed P(good), images'
    worth of pixels through the trunk). Per scale the picture is resized so that a crop of
    that scale is the net's input size S, rounded to S + 16k pixels a side so that the
    windows (stride 16, the trunk's) tile it and mirror onto each other."""
    size, trunk, last = meta["size"], net[:12], net[15:]            # Conv blocks; the final Linear
    w1, b1 = net[13].weight.data, net[13].bias.data                 # (H, C*3*3), (H,)
    short, best, pixels = min(image.size), (None, -1.0), 0
    for s in np.linspace(0.5, 1.0, scales):
        side = max(1, round(float(s) * short))
        f = size / side
        rw, rh = (size + 16 * max(0, round((d * f - size) / 16)) for d in image.size)
        x = normalise(np.asarray(image.resize((rw, rh), Image.BILINEAR), np.float32).transpose(2, 0, 1)[None] / 255,
                      meta["mean"], meta["std"])                   # (1, 3, rh, rw)
        maps = []
        for view in (x, np.ascontiguousarray(x[..., ::-1])):
            feats = trunk(view)[0]                                  # (C, rh/16, rw/16)
            win = np.lib.stride_tricks.sliding_window_view(feats, (3, 3), axis=(1, 2))   # (C, ny, nx, 3, 3)
            ny, nx = win.shape[1:3]
            cols = win.transpose(1, 2, 0, 3, 4).reshape(ny * nx, -1)    # (ny*nx, C*3*3), Flatten's order
            hidden = np.maximum(cols @ w1.T + b1, 0)                # the first Linear as a 3 x 3 conv
            logits = last(hidden)                                   # (ny*nx, 2)
            p = np.exp(logits - logits.max(1, keepdims=True))
            maps.append((p[:, GOOD] / p.sum(1)).reshape(ny, nx))
            pixels += rw * rh
        pm = (maps[0] + maps[1][:, ::-1]) / 2                       # a window and its mirror image
        i, j = np.unravel_index(int(np.argmax(pm)), pm.shape)
        if pm[i, j] > best[1]:
            left = round(float(j) / max(1, pm.shape[1] - 1) * (image.width - side))
            top = round(float(i) / max(1, pm.shape[0] - 1) * (image.height - side))
            best = ((left, top, side), float(pm[i, j]))
    return best[0], best[1], pixels / size ** 2


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="runs/selfie/model.npz")
    ap.add_argument("--data", default="data/selfies", help="the synthetic selfies the model was trained on")
    ap.add_argument("--n", type=int, default=200, help="pictures per background")
    ap.add_argument("--backgrounds", nargs="+", default=["scene", "selfies"], choices=["scene", "selfies"])
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    net, meta = load_model(args.model, note=False)
    if not os.path.isfile(os.path.join(args.data, "posts.csv")):
        sys.exit(f"error: no synthetic selfies in {args.data} (python examples/selfie_train.py makes them)")
    paths = held_out_selfies(args.data)
    print(f"{args.n} held-out selfies of {len(paths)} per background, pasted into 640-1024 px pictures; "
          f"model {args.model}")
    for background in args.backgrounds:
        rng = np.random.default_rng([args.seed, len(background)])
        picks = rng.choice(len(paths), args.n, replace=False)
        others = [Image.open(paths[i]).convert("RGB") for i in rng.choice(len(paths), 50, replace=False)]
        rows = {k: {"ok": [], "gap": [], "images": []} for k in ("exhaustive", "coarse to fine", "OverFeat")}
        approx = []
        for k, i in enumerate(picks):
            pic, _ = pasted(Image.open(paths[i]).convert("RGB"), rng, background, others=others)
            found = {}
            for name, exhaustive in (("exhaustive", True), ("coarse to fine", False)):
                _, best, _, n = find_crop(net, meta, pic, exhaustive=exhaustive)
                found[name] = (best, 2 * n + 4)                         # + the whole image and the crop, mirrored
            box, windowed, images = overfeat(net, meta, pic)
            own = float(p_good(net, prepare([pic.crop((box[0], box[1], box[0] + box[2], box[1] + box[2]))], meta))[0])
            found["OverFeat"] = (own, images + 2)
            approx.append(abs(windowed - own))
            for name, (p, images) in found.items():
                gap = found["exhaustive"][0] - p
                rows[name]["ok"].append(gap <= 0.02)
                rows[name]["gap"].append(max(0.0, gap))
                rows[name]["images"].append(images)
            if (k + 1) % 20 == 0:
                print(f"  {background}: {k + 1} / {args.n}", file=sys.stderr, flush=True)
        print(f"\nbackground: {background} ({args.n} pictures)")
        print("| search | within 0.02 of the exhaustive best | mean shortfall | images through the net (mean, max) |")
        print("|---|---|---|---|")
        for name, r in rows.items():
            print(f"| {name} | {100 * np.mean(r['ok']):.1f}% | {np.mean(r['gap']):.4f} | "
                  f"{np.mean(r['images']):.0f}, {np.max(r['images']):.0f} |")
        print(f"OverFeat: |windowed P(good) - the chosen crop's own| mean {np.mean(approx):.3f}, "
              f"95th percentile {np.percentile(approx, 95):.3f}, max {np.max(approx):.3f}")
    print(f"\nrerun: python benchmarks/crop_search.py --n {args.n} --backgrounds {' '.join(args.backgrounds)}")


if __name__ == "__main__":
    main()
