"""Find the best square crop of a selfie: a search over scale and x/y offset, coarse to fine
(lib/selfie_model.py's find_crop, which the web page uses too; --exhaustive scores every crop of
the grid). Writes the original and the best crop side by side.

    python examples/selfie_crop.py IMAGE [--model runs/selfie/model.npz] [--out runs/selfie/crop_NAME.png]
    python examples/selfie_crop.py IMAGE --exhaustive       # all 9 x 9 x 9 crops (about 20x slower)
"""
import sys

from PIL import ImageDraw

from lib import plots
from lib.selfie_model import find_crop, image_command, trained_on_synthetic


def main(argv=None):
    args, net, meta, img, out = image_command(__doc__, argv, "crop", [
        (("--scales",), {"type": int, "default": 9, "help": "crop sizes from 0.5 to 1.0 of the short side"}),
        (("--steps",), {"type": int, "default": 9, "help": "positions per axis for each size"}),
        (("--exhaustive",), {"action": "store_true", "help": "score every crop of the grid"})])
    if args.scales < 1 or args.steps < 1:
        sys.exit("error: --scales and --steps must be >= 1")
    (left, top, side), best, whole, n = find_crop(net, meta, img, args.scales, args.steps, args.exhaustive)
    print(f"scored {n} square crops; whole image P(good) = {whole:.3f}")
    print(f"best crop: left={left} top={top} side={side} P(good) = {best:.3f}")
    shown = img.copy()
    ImageDraw.Draw(shown).rectangle((left, top, left + side, top + side), outline=(255, 40, 40),
                                    width=max(2, img.width // 150))
    h = 320
    before = [f"whole image: P(good) = {whole:.3f}", "red box: the best crop"]
    after = [f"best crop: P(good) = {best:.3f}", f"left {left}, top {top}, side {side} px"]
    if trained_on_synthetic(meta):
        after.append("model trained on synthetic selfies")
    pair = plots.side_by_side([shown.resize((max(1, img.width * h // img.height), h)),
                               img.crop((left, top, left + side, top + side)).resize((h, h))], [before, after])
    plots.save_png(pair, out)
    print(f"wrote {out}")
    return (left, top, side), best


if __name__ == "__main__":
    main()
