"""Find the best square crop of a selfie: a global search over scale and x/y offset, every
candidate scored by the net in batches. Writes the original and the best crop side by side.

    python examples/selfie_crop.py IMAGE [--model runs/selfie/model.npz] [--out runs/selfie/crop.png]
"""
import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from PIL import ImageDraw                                           # noqa: E402

import plots                                        # noqa: E402
from selfie_model import best_crop, load_model, p_good, prepare     # noqa: E402
from selfie_rate import open_image                                  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("image")
    ap.add_argument("--model", default="runs/selfie/model.npz")
    ap.add_argument("--out", default=None, help="PNG to write (default: runs/selfie/crop_<name>.png)")
    ap.add_argument("--scales", type=int, default=9, help="crop sizes from 0.3 to 1.0 of the short side")
    ap.add_argument("--steps", type=int, default=9, help="positions per axis for each size")
    args = ap.parse_args(argv)
    if args.scales < 1 or args.steps < 1:
        ap.error("--scales and --steps must be >= 1")
    net, meta = load_model(args.model)
    try:
        img = open_image(args.image)
    except ValueError as e:
        sys.exit(f"error: {e}")
    score = lambda crops: p_good(net, prepare(crops, meta))
    (left, top, side), best, scores = best_crop(img, score, np.linspace(0.3, 1.0, args.scales), args.steps)
    whole = float(score([img])[0])
    print(f"searched {len(scores)} square crops; whole image P(good) = {whole:.3f}")
    print(f"best crop: left={left} top={top} side={side} P(good) = {best:.3f}")
    shown = img.copy()
    ImageDraw.Draw(shown).rectangle((left, top, left + side, top + side), outline=(255, 40, 40),
                                    width=max(2, img.width // 150))
    h = 320
    pair = plots.side_by_side([shown.resize((max(1, img.width * h // img.height), h)),
                               img.crop((left, top, left + side, top + side)).resize((h, h))])
    out = args.out or os.path.join(os.path.dirname(args.model),
                                   f"crop_{os.path.splitext(os.path.basename(args.image))[0]}.png")
    plots.save_png(pair, out)
    print(f"wrote {out}")
    return (left, top, side), best


if __name__ == "__main__":
    main()
