"""What the net looks at: the gradient of P(good) with respect to the input pixels (computed
through net.backward), drawn as a heat map over the selfie.

    python examples/selfie_explain.py IMAGE [--model runs/selfie/model.npz] [--out PNG]
"""

import numpy as np

from convlib.data import image_to_array

from lib import plots
from lib.selfie_model import image_command, prepare, saliency


def main(argv=None):
    args, net, meta, img, out = image_command(__doc__, argv, "explain")
    x = prepare([img], meta)                                         # (1, 3, S, S)
    grad = saliency(net, x)[0]                                       # (3, S, S)
    heat = np.abs(grad).max(axis=0)                                  # (S, S)
    shown = image_to_array(img, meta["size"], meta["fit"])
    big = 256
    pair = plots.side_by_side([plots.to_pil(shown).resize((big, big)),
                               plots.heatmap_overlay(shown, heat).resize((big, big))])
    plots.save_png(pair, out)
    print(f"wrote {out} (red: pixels whose change moves P(good) most)")
    return heat


if __name__ == "__main__":
    main()
