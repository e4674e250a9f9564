"""What the net looks at: the gradient of P(good) with respect to the input pixels (computed
through net.backward), drawn as a heat map over the selfie at display size.

    python examples/selfie_explain.py IMAGE [--model runs/selfie/model.npz] [--out PNG]
"""

import numpy as np

from convlib.data import square

from lib import plots
from lib.selfie_model import image_command, p_good, prepare, saliency, trained_on_synthetic

SHOW = 320                                                           # display size of each panel (px)


def main(argv=None):
    args, net, meta, img, out = image_command(__doc__, argv, "explain")
    x = prepare([img], meta)                                         # (1, 3, S, S)
    grad = saliency(net, x)[0]                                       # (3, S, S)
    heat = np.abs(grad).max(axis=0)                                  # (S, S)
    p = float(p_good(net, x)[0])
    photo = square(img, meta["fit"]).resize((SHOW, SHOW))            # what the net sees, at display size
    note = ["model trained on synthetic selfies"] if trained_on_synthetic(meta) else []
    pair = plots.side_by_side([photo, plots.heatmap_overlay(photo, heat)],
                              [[f"what the net sees ({meta['size']}x{meta['size']})", f"P(good) = {p:.3f}"],
                               ["where a pixel change moves P(good) most"] + note])
    key = plots.color_key(plots.heat_colors, "influence on P(good): none", "most")
    plots.save_png(plots.stack([pair, key]), out)
    print(f"P(good) = {p:.3f}")
    print(f"wrote {out} (yellow: the pixels whose change moves P(good) most; red: less; dark: none)")
    return heat


if __name__ == "__main__":
    main()
