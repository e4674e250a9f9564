"""What the net looks at: the gradient of P(good) with respect to the input pixels (computed
through net.backward), drawn as a heat map over the selfie at display size.

    python examples/selfie_explain.py IMAGE [--model runs/selfie/model.npz] [--out PNG]
"""

from lib import plots
from lib.selfie_model import explain, image_command, trained_on_synthetic


def main(argv=None):
    args, net, meta, img, out = image_command(__doc__, argv, "explain")
    heat, p, photo, overlay = explain(net, meta, img)
    note = ["model trained on synthetic selfies"] if trained_on_synthetic(meta) else []
    S = meta["size"]
    pair = plots.side_by_side([photo, overlay], [[f"the square the net rates (scaled to {S}x{S})",
                                                  f"P(good) = {p:.3f}"],
                                                 ["where a pixel change moves P(good) most"] + note])
    key = plots.color_key(plots.heat_colors, "influence on P(good): none", "most")
    plots.save_png(plots.stack([pair, key]), out)
    print(f"P(good) = {p:.3f}")
    print(f"wrote {out} (yellow: the pixels whose change moves P(good) most; red: less; dark: none)")
    return heat


if __name__ == "__main__":
    main()
