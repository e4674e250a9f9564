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
import sys

from lib import faces
from lib.faces_report import p_text, train_filter
from lib.selfie_model import open_image


def read(path):
    """A grey array of an image file, or of ``skimage:NAME``; ValueError naming what was wrong."""
    if path.startswith("skimage:"):
        name = path.split(":", 1)[1]
        if not hasattr(faces.skimage_data(), name):
            raise ValueError(f"{path}: scikit-image has no sample photograph {name!r}")
        return faces.photo(name)
    return faces.grey(open_image(path))


def rate_one(net, threshold, path):
    """``find_face`` on one file (or skimage:NAME); ValueError naming the path if it fails."""
    g = read(path)
    try:
        return faces.find_face(net, g, threshold)
    except ValueError as e:
        raise ValueError(f"{path}: {e}") from None


def rate_command(args):
    net, threshold = faces.load_filter(args.model)
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
    ap.add_argument("--model", default="runs/faces/model.npz")
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
    if args.train:
        return train_filter(args.out, args.folds, args.seed, args.epochs, args.threshold, not args.no_progress)
    return rate_command(args)


if __name__ == "__main__":
    main()
