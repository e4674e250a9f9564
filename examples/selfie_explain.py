"""What the net looks at: the gradient of P(good) with respect to the input pixels (computed
through net.backward), drawn as a heat map over the selfie.

    python examples/selfie_explain.py IMAGE [--model runs/selfie/model.npz] [--out PNG]
"""
import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import plots                                        # noqa: E402
from convlib.data import image_to_array                             # noqa: E402
from selfie_model import load_model, prepare, saliency              # noqa: E402
from selfie_rate import open_image                                  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("image")
    ap.add_argument("--model", default="runs/selfie/model.npz")
    ap.add_argument("--out", default=None, help="PNG to write (default: runs/selfie/explain_<name>.png)")
    args = ap.parse_args(argv)
    net, meta = load_model(args.model)
    try:
        img = open_image(args.image)
    except ValueError as e:
        sys.exit(f"error: {e}")
    x = prepare([img], meta)                                         # (1, 3, S, S)
    grad = saliency(net, x)[0]                                       # (3, S, S)
    heat = np.abs(grad).max(axis=0)                                  # (S, S)
    shown = image_to_array(img, meta["size"], meta["fit"])
    big = 256
    pair = plots.side_by_side([plots.to_pil(shown).resize((big, big)),
                               plots.heatmap_overlay(shown, heat).resize((big, big))])
    out = args.out or os.path.join(os.path.dirname(args.model),
                                   f"explain_{os.path.splitext(os.path.basename(args.image))[0]}.png")
    plots.save_png(pair, out)
    print(f"wrote {out} (red: pixels whose change moves P(good) most)")
    return heat


if __name__ == "__main__":
    main()
