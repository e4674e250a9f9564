"""The face filter of the post: a small ConvNet that says whether an image holds a face, and where.

    python examples/selfie_faces.py --train              # ~10 min: runs/faces/model.npz, errors.png, checks.png
    python examples/selfie_faces.py IMAGE...             # PATH: P(face) = 0.97 face  box ...
    python examples/selfie_faces.py skimage:astronaut    # scikit-image's sample photographs by name

--train cross-validates on the only real face photographs these machines have, scikit-image's
lfw_subset (100 faces, 100 non-faces): k folds, each trained without its own patches, so the
accuracy it prints is on real faces the net never saw. 200 patches are few: expect a few points
of spread between folds. Each fold also holds out a fifth of the negative images (photographs
without a person, textures); the verdict threshold is set just above the score any of them got
when held out. Then it trains the final model on all of them and checks it on seven
real photographs no one here made (astronaut: face; coffee, rocket, brick, grass, coins, moon:
no face), writing the verdicts and boxes to checks.png. Needs scikit-image: pip install -e ".[faces]".

Rating searches every square window from a tenth of the short side to all of it (an image
pyramid, like the best-crop search); a face must span at least 15% of the short side, and a
window counts by the third-best P(face) among the windows overlapping it (a face is seen from
neighbouring places and scales too). It reports the best such window and its P(face). selfie_train.py uses
this model to drop images without a face from real data (--data, --selfie-dataset, --posts).
"""
import argparse
import json
import os
import sys
import time

import numpy as np
from lib import faces, plots
from lib.selfie_model import open_image
from PIL import ImageDraw

import convlib as cl

DEFAULT_MODEL = "runs/faces/model.npz"


def load(path=DEFAULT_MODEL):
    """(net, threshold) of a face model; exits saying how to train one if there is none."""
    if not os.path.isfile(path):
        sys.exit(f"error: no face model at {path}; train one with: python examples/selfie_faces.py --train"
                 + ("" if path == DEFAULT_MODEL else f" --out {os.path.dirname(path) or '.'}"))
    net, meta = cl.load(path, with_metadata=True)
    if meta.get("kind") != "face filter":
        raise SystemExit(f"error: {path} is not a face model (its metadata says {meta.get('kind')!r})")
    return net.eval(), float(meta["threshold"])


def read(path):
    """A grey array of an image file, or of ``skimage:NAME``; ValueError naming what was wrong."""
    if path.startswith("skimage:"):
        name = path.split(":", 1)[1]
        if not hasattr(faces.skimage_data(), name):
            raise ValueError(f"{path}: scikit-image has no sample photograph {name!r}")
        return faces.photo(name)
    return faces.grey(open_image(path))


def p_text(p):
    """P(face) for people: two decimals, or <0.01 / >0.99 at the ends."""
    return "<0.01" if p < 0.005 else ">0.99" if p > 0.995 else f"{p:.2f}"


def checks_picture(net, threshold, out):
    """The verdict and box on each check photograph, as one captioned grid; returns the rows."""
    rows, tiles, captions, colors = [], [], [], []
    for name, expected in faces.CHECKS.items():
        g = faces.photo(name)
        p, (x, y, s), verdict, n = faces.find_face(net, g, threshold)
        rows.append(dict(photo=name, p_face=p, verdict=verdict, expected=expected, box=[x, y, s], windows=n))
        im = plots.to_pil(np.repeat(g[None], 3, axis=0))
        ImageDraw.Draw(im).rectangle((x, y, x + s, y + s), outline=(255, 40, 40) if verdict == "face"
                                     else (120, 120, 255), width=max(2, im.width // 120))
        side = min(im.size)                                          # the centre square, box included
        left, top = min(max(0, x + s // 2 - side // 2), im.width - side), min(max(0, y + s // 2 - side // 2),
                                                                              im.height - side)
        tile = im.crop((left, top, left + side, top + side)).resize((200, 200))
        tiles.append(np.asarray(tile, np.float32).transpose(2, 0, 1) / 255)
        captions.append(f"{name}: {verdict} ({p_text(p)})")
        colors.append((0, 130, 0) if verdict == expected else (200, 0, 0))
    img = plots.grid(np.stack(tiles), len(tiles), captions, cell=200, caption_colors=colors,
                     title=f"Face filter on real photographs (box: the best-supported window; red = face, "
                           f"blue = below the threshold P(face) {threshold:.4f}); caption green = as expected")
    plots.save_png(img, out)
    return rows


def train_command(args):
    t0 = time.perf_counter()
    os.makedirs(args.out, exist_ok=True)
    print(f"{args.folds}-fold cross-validation on lfw_subset (100 real faces, 100 non-faces; a small set, "
          f"so each fold's figure moves by 2.5 points per patch)")
    cv = faces.cross_validate(args.folds, args.seed, args.epochs, progress=not args.no_progress)
    threshold = args.threshold or faces.calibrated_threshold(cv["negative_max"])
    over = sorted(n for n, m in cv["negative_max"].items() if m >= 0)
    print(f"held-out negative images scored P(face) >= 0.5: {len(over)} of {len(cv['negative_max'])} "
          f"({', '.join(over[:6]) or 'none'}); verdict threshold P(face) >= {threshold:.4f}"
          + (" (--threshold)" if args.threshold else " (just above all of them)"))
    pred = cv["p_face"] >= 0.5
    acc = float(np.mean(pred == cv["labels"]))
    wrong = np.flatnonzero(pred != cv["labels"])
    lfw = np.concatenate(faces.lfw())
    if len(wrong):
        img = plots.grid(np.repeat(lfw[wrong][:, None], 3, axis=1), 10,
                         [f"{'face' if cv['labels'][i] else 'not'}: {cv['p_face'][i]:.2f}" for i in wrong],
                         cell=72, title=f"Held-out lfw patches the filter got wrong ({len(wrong)} of 200); "
                                        f"caption: truth, P(face)")
        plots.save_png(img, os.path.join(args.out, "errors.png"))
    print(f"cross-validated accuracy on real lfw patches: {100 * acc:.1f}% (folds: "
          + ", ".join(f"{100 * a:.1f}%" for a in cv["fold_accuracy"]) + ")")
    net = faces.train(*cv["data"], seed=args.seed, epochs=args.epochs, progress=not args.no_progress)
    path = os.path.join(args.out, "model.npz")
    rows = checks_picture(net, threshold, os.path.join(args.out, "checks.png"))
    cl.save(net, path, metadata=dict(kind="face filter", size=faces.SIZE, threshold=threshold,
                                     cv_accuracy=acc, cv_fold_accuracy=cv["fold_accuracy"], checks=rows,
                                     negative_max=cv["negative_max"]))
    for r in rows:
        mark = "ok" if r["verdict"] == r["expected"] else f"WRONG (expected {r['expected']})"
        print(f"skimage:{r['photo']}: P(face) = {p_text(r['p_face'])} {r['verdict']}  box {tuple(r['box'])}  {mark}")
    with open(os.path.join(args.out, "faces.json"), "w") as f:
        json.dump(dict(cv_accuracy=acc, folds=cv["fold_accuracy"], threshold=threshold, checks=rows,
                       held_out_negative_max_margin=cv["negative_max"]), f, indent=1)
    print(f"wrote {args.out}/: model.npz checks.png" + (" errors.png" if len(wrong) else "")
          + f" faces.json ({(time.perf_counter() - t0) / 60:.1f} min)")
    return dict(cv_accuracy=acc, checks=rows)


def rate_one(net, threshold, path):
    """``find_face`` on one file (or skimage:NAME); ValueError naming the path if it fails."""
    g = read(path)
    try:
        return faces.find_face(net, g, threshold)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None


def rate_command(args):
    net, threshold = load(args.model)
    results, bad = [], 0
    for path in args.images:
        try:
            p, (x, y, s), verdict, n = rate_one(net, threshold, path)
        except ValueError as e:
            print(f"skipped: {e}", file=sys.stderr)
            bad += 1
            continue
        print(f"{path}: P(face) = {p_text(p)} {verdict}  box left={x} top={y} side={s} (best of {n} windows)")
        results.append((path, p, verdict, (x, y, s)))
    if bad:
        print(f"{bad} of {len(args.images)} images could not be read", file=sys.stderr)
    return results


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("images", nargs="*", help="image files, or skimage:NAME for scikit-image's photographs")
    ap.add_argument("--train", action="store_true", help="cross-validate, train and check the face filter")
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--out", default="runs/faces", help="--train: output folder")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--epochs", type=int, default=3, help="first round; each mining round adds a third")
    ap.add_argument("--threshold", type=float, help="--train: P(face) of the best window that means face "
                    "(default: set by cross-validation on held-out negative images)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--no-progress", action="store_true")
    args = ap.parse_args(argv)
    if args.train == bool(args.images):
        ap.error("give either --train or one or more images")
    if args.folds < 2 or args.epochs < 1 or not 0 < (args.threshold or 0.5) < 1:
        ap.error("need --folds >= 2, --epochs >= 1 and 0 < --threshold < 1")
    return train_command(args) if args.train else rate_command(args)


if __name__ == "__main__":
    main()
