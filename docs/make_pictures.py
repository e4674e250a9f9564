"""Remake the selfie pictures of docs/img/ from a finished default run, as small PNGs.

    python examples/selfie_train.py && python docs/make_pictures.py

Copies the seven pictures selfie_train.py wrote to runs/selfie/, runs selfie_crop.py and
selfie_explain.py on the first generated selfie, and stores each as a 256-colour PNG (a third of
the size; tests/test_docs.py keeps every picture under 400 kB), so a fresh clone shows them.
"""
import os
import sys

from PIL import Image

from convlib.io import atomic_file

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, os.path.join(ROOT, "examples"))

RUN = os.path.join(ROOT, "runs", "selfie")
PHOTO = os.path.join(ROOT, "data", "selfies", "selfie_00001.png")
NAMES = ["curves", "continuum", "best", "worst", "rules", "tsne", "filters"]


def small_png(src, dst, limit=380 * 1024):
    """``src`` as a PNG of 256 colours (fewer if it would pass ``limit`` bytes) at ``dst``,
    written whole, then renamed into place."""
    with Image.open(src) as im, atomic_file(dst, ".png") as tmp:
        for colours in (256, 128, 64):
            q = im.convert("RGB").quantize(colours, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE)
            q.save(tmp, format="PNG", optimize=True)
            if os.path.getsize(tmp) <= limit:
                break
    print(f"wrote {os.path.relpath(dst, ROOT)} ({os.path.getsize(dst) // 1024} kB)")


def main():
    missing = [n for n in NAMES if not os.path.isfile(os.path.join(RUN, f"{n}.png"))]
    if missing or not os.path.isfile(PHOTO):
        sys.exit(f"error: run python examples/selfie_train.py first (missing in runs/selfie/: {missing or PHOTO})")
    import selfie_crop
    import selfie_explain
    model = os.path.join(RUN, "model.npz")
    crop, explain = os.path.join(RUN, "crop_selfie_00001.png"), os.path.join(RUN, "explain_selfie_00001.png")
    selfie_crop.main([PHOTO, "--model", model, "--out", crop])
    selfie_explain.main([PHOTO, "--model", model, "--out", explain])
    out = os.path.join(HERE, "img")
    os.makedirs(out, exist_ok=True)
    for name in NAMES:
        small_png(os.path.join(RUN, f"{name}.png"), os.path.join(out, f"selfie-{name}.png"))
    small_png(crop, os.path.join(out, "selfie-crop.png"))
    small_png(explain, os.path.join(out, "selfie-explain.png"))


if __name__ == "__main__":
    main()
