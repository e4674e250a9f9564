"""Training the face filter as selfie_faces.py --train does it, and its pictures: cross-validate,
set the threshold, train the final model, check it on the seven real photographs, write
model.npz, checks.png, errors.png and faces.json (each atomically)."""
import json
import os
import time

import numpy as np
from PIL import ImageDraw

import convlib as cl
from convlib.io import atomic_file

from . import faces, plots


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
        left = min(max(0, x + s // 2 - side // 2), im.width - side)
        top = min(max(0, y + s // 2 - side // 2), im.height - side)
        tile = im.crop((left, top, left + side, top + side)).resize((200, 200))
        tiles.append(np.asarray(tile, np.float32).transpose(2, 0, 1) / 255)
        captions.append(f"{name}: {verdict} ({p_text(p)})")
        colors.append((0, 130, 0) if verdict == expected else (200, 0, 0))
    img = plots.grid(np.stack(tiles), len(tiles), captions, cell=200, caption_colors=colors,
                     title=f"Face filter on real photographs (box: the best-supported window; red = face, "
                           f"blue = below the threshold P(face) {threshold:.4f}); caption green = as expected")
    plots.save_png(img, out)
    return rows


def errors_picture(cv, out):
    """The lfw patches the cross-validation got wrong, captioned with truth and P(face); the
    number of them (no picture when there are none)."""
    wrong = np.flatnonzero((cv["p_face"] >= 0.5) != cv["labels"])
    if len(wrong):
        lfw = np.concatenate(faces.lfw())
        img = plots.grid(np.repeat(lfw[wrong][:, None], 3, axis=1), 10,
                         [f"{'face' if cv['labels'][i] else 'not'}: {cv['p_face'][i]:.2f}" for i in wrong],
                         cell=72, title=f"Held-out lfw patches the filter got wrong ({len(wrong)} of 200); "
                                        f"caption: truth, P(face)")
        plots.save_png(img, out)
    return len(wrong)


def train_filter(out, folds=5, seed=0, epochs=3, threshold=None, progress=True):
    """Cross-validate, set the threshold (``threshold`` overrides), train on everything, check,
    and write the model and pictures to ``out``. Returns {cv_accuracy, threshold, checks, path}."""
    t0 = time.perf_counter()
    os.makedirs(out, exist_ok=True)
    print(f"{folds}-fold cross-validation on lfw_subset (100 real faces, 100 non-faces; a small set, "
          f"so each fold's figure moves by 2.5 points per patch)")
    cv = faces.cross_validate(folds, seed, epochs, progress=progress)
    chosen = threshold or faces.calibrated_threshold(cv["negative_max"])
    over = sorted(n for n, m in cv["negative_max"].items() if m >= 0)
    print(f"held-out negative images scored P(face) >= 0.5: {len(over)} of {len(cv['negative_max'])} "
          f"({', '.join(over[:6]) or 'none'}); verdict threshold P(face) >= {chosen:.4f}"
          + (" (--threshold)" if threshold else " (just above all of them)"))
    acc = float(np.mean((cv["p_face"] >= 0.5) == cv["labels"]))
    n_wrong = errors_picture(cv, os.path.join(out, "errors.png"))
    print(f"cross-validated accuracy on real lfw patches: {100 * acc:.1f}% (folds: "
          + ", ".join(f"{100 * a:.1f}%" for a in cv["fold_accuracy"]) + ")")
    net = faces.train(*cv["data"], seed=seed, epochs=epochs, progress=progress)
    rows = checks_picture(net, chosen, os.path.join(out, "checks.png"))
    path = os.path.join(out, "model.npz")
    cl.save(net, path, metadata=dict(kind="face filter", size=faces.SIZE, threshold=chosen, cv_accuracy=acc,
                                     cv_fold_accuracy=cv["fold_accuracy"], checks=rows,
                                     negative_max=cv["negative_max"]))
    for r in rows:
        mark = "ok" if r["verdict"] == r["expected"] else f"WRONG (expected {r['expected']})"
        print(f"skimage:{r['photo']}: P(face) = {p_text(r['p_face'])} {r['verdict']}  box {tuple(r['box'])}  {mark}")
    with atomic_file(os.path.join(out, "faces.json"), ".json") as tmp, open(tmp, "w") as f:
        json.dump(dict(cv_accuracy=acc, folds=cv["fold_accuracy"], threshold=chosen, checks=rows,
                       held_out_negative_max_margin=cv["negative_max"]), f, indent=1)
    print(f"wrote {out}/: model.npz checks.png" + (" errors.png" if n_wrong else "")
          + f" faces.json ({(time.perf_counter() - t0) / 60:.1f} min)")
    return dict(cv_accuracy=acc, threshold=chosen, checks=rows, path=path)
