"""Rate selfies with a trained model, like the post's bot: P(good) and a one-line verdict each.

    python examples/selfie_rate.py IMAGE [IMAGE ...] [--model runs/selfie/model.npz]

Images that do not decode are reported and skipped; the exit status is 1 if any failed.
"""
import argparse
import os
import sys

from convlib.data import list_images

from lib.selfie_model import load_model, open_image, p_good, prepare, verdict


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("images", nargs="+", help="image files, or folders (every image directly inside is rated)")
    ap.add_argument("--model", default="runs/selfie/model.npz")
    args = ap.parse_args(argv)
    net, meta = load_model(args.model)
    failed, results = 0, []
    paths = [p for arg in args.images for p in (list_images(arg) if os.path.isdir(arg) else [arg])]
    for path in paths:
        try:
            img = open_image(path)
        except ValueError as e:
            print(f"error: {e}", file=sys.stderr)
            failed += 1
            continue
        p = float(p_good(net, prepare([img], meta))[0])
        results.append((path, p))
        print(f"{path}: P(good) = {p:.3f}  {verdict(p)}")
    if failed:
        sys.exit(1)
    return results


if __name__ == "__main__":
    main()
