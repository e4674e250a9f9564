"""Pictures for the examples, drawn with Pillow alone: image grids, line charts, bar charts,
a t-SNE mosaic, filters, heat maps and confusion matrices. Every writer saves atomically."""

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from convlib.io import atomic_file


def font(size=14):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:                                               # Pillow < 10.1: fixed bitmap font
        return ImageFont.load_default()


def save_png(img, path):
    """Write ``img`` to ``path`` atomically (temporary file, then rename)."""
    with atomic_file(path, ".png") as tmp:
        img.save(tmp, format="PNG")
    return path


def to_pil(x):
    """float (3, H, W) in [0, 1] -> PIL RGB."""
    return Image.fromarray((np.clip(x, 0, 1).transpose(1, 2, 0) * 255).astype(np.uint8))


def grid(images, cols, captions=None, cell=96, title=None, pad=4):
    """Images (N, 3, H, W) in [0, 1] as a grid of ``cols`` columns with optional captions."""
    n = len(images)
    rows = max(1, -(-n // cols))
    cap_h = 16 if captions is not None else 0
    top = 28 if title else 0
    out = Image.new("RGB", (cols * (cell + pad) + pad, top + rows * (cell + cap_h + pad) + pad), "white")
    d = ImageDraw.Draw(out)
    if title:
        d.text((pad, 6), title, fill="black", font=font(16))
    for i in range(n):
        r, c = divmod(i, cols)
        x0, y0 = pad + c * (cell + pad), top + pad + r * (cell + cap_h + pad)
        out.paste(to_pil(images[i]).resize((cell, cell), Image.NEAREST if cell > images.shape[-1] * 2 else
                                           Image.BILINEAR), (x0, y0))
        if captions is not None:
            d.text((x0 + 2, y0 + cell + 1), captions[i], fill="black", font=font(12))
    return out


def line_chart(series, title, xlabel, size=(520, 300)):
    """series: {name: list of y} over x = 1..n, drawn with axes, ticks and a legend."""
    W, H = size
    L, R, T, B = 56, 12, 30, 40
    img = Image.new("RGB", size, "white")
    d = ImageDraw.Draw(img)
    ys = [v for s in series.values() for v in s]
    lo, hi = min(ys), max(ys)
    if hi - lo < 1e-9:
        lo, hi = lo - 0.5, hi + 0.5
    lo, hi = lo - 0.05 * (hi - lo), hi + 0.05 * (hi - lo)
    n = max(len(s) for s in series.values())
    px = lambda i: L + (W - L - R) * (i / max(1, n - 1))
    py = lambda v: T + (H - T - B) * (1 - (v - lo) / (hi - lo))
    d.rectangle((L, T, W - R, H - B), outline="black")
    for k in range(5):
        v = lo + (hi - lo) * k / 4
        d.line((L - 4, py(v), L, py(v)), fill="black")
        d.text((4, py(v) - 7), f"{v:.3g}", fill="black", font=font(11))
    for i in range(n):
        d.text((px(i) - 4, H - B + 4), str(i + 1), fill="black", font=font(11))
    d.text((W // 2 - 20, H - 18), xlabel, fill="black", font=font(12))
    d.text((L, 8), title, fill="black", font=font(14))
    colors = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd"]
    for k, (name, s) in enumerate(series.items()):
        pts = [(px(i), py(v)) for i, v in enumerate(s)]
        if len(pts) > 1:
            d.line(pts, fill=colors[k % 4], width=2)
        for p in pts:
            d.ellipse((p[0] - 3, p[1] - 3, p[0] + 3, p[1] + 3), fill=colors[k % 4])
        ly = T + 13 + 14 * k
        d.line((W - R - 150, ly, W - R - 132, ly), fill=colors[k % 4], width=2)    # legend swatch
        d.text((W - R - 126, ly - 7), name, fill=colors[k % 4], font=font(12))
    return img


def curves(hist):
    """Loss and accuracy per epoch, train and validation, side by side (a fit() History)."""
    return side_by_side([
        line_chart({"train loss": hist["loss"], "val loss": hist["val_loss"]}, "loss", "epoch"),
        line_chart({"train acc": hist["acc"], "val acc": hist["val_acc"]}, "accuracy", "epoch")])


def side_by_side(images, width=None):
    """PIL images pasted left to right on white, same height."""
    h = max(im.height for im in images)
    out = Image.new("RGB", (sum(im.width for im in images) + 10 * (len(images) - 1), h), "white")
    x = 0
    for im in images:
        out.paste(im, (x, 0))
        x += im.width + 10
    return out


def bar_chart(rows, title, baseline=0.5, size=(760, None)):
    """rows: [(label, value in [0, 1], note)] as horizontal bars around ``baseline``."""
    W = size[0]
    H = 40 + 22 * len(rows) + 24
    img = Image.new("RGB", (W, H), "white")
    d = ImageDraw.Draw(img)
    d.text((8, 8), title, fill="black", font=font(14))
    L, R = 260, 200
    x = lambda v: L + (W - L - R) * v
    d.line((x(baseline), 32, x(baseline), H - 20), fill="gray")
    for i, (label, v, note) in enumerate(rows):
        y = 36 + 22 * i
        d.text((8, y), label, fill="black", font=font(12))
        color = "#2ca02c" if v >= baseline else "#d62728"
        d.rectangle((min(x(v), x(baseline)), y + 2, max(x(v), x(baseline)), y + 15), fill=color)
        d.text((W - R + 8, y), f"{v:.2f}  {note}", fill="black", font=font(12))
    for v in (0.0, 0.25, 0.5, 0.75, 1.0):
        d.text((x(v) - 8, H - 18), f"{v:.2f}", fill="black", font=font(11))
    return img


def mosaic(images, xy, cells=24, cell=40):
    """Place each image at its 2-D position ``xy`` (N, 2), snapped to a cells x cells grid;
    the first image to claim a cell keeps it (a t-SNE map drawn as a picture)."""
    xy = (xy - xy.min(0)) / np.maximum(xy.max(0) - xy.min(0), 1e-9)
    out = Image.new("RGB", (cells * cell, cells * cell), "white")
    taken = set()
    for i in range(len(images)):
        c = (min(cells - 1, int(xy[i, 0] * cells)), min(cells - 1, int(xy[i, 1] * cells)))
        if c not in taken:
            taken.add(c)
            out.paste(to_pil(images[i]).resize((cell, cell), Image.BILINEAR), (c[0] * cell, c[1] * cell))
    return out


def filters_image(w, cell=48):
    """First-layer conv weights (F, 3, KH, KW) as colour tiles, each scaled to [0, 1]."""
    tiles = []
    for f in w:
        lo, hi = f.min(), f.max()
        tiles.append((f - lo) / max(hi - lo, 1e-9))
    return grid(np.array(tiles), cols=min(8, len(tiles)), cell=cell, title="first-layer filters")


def heatmap_overlay(image, heat):
    """image (3, H, W) in [0, 1], heat (H, W) >= 0 -> PIL: the grey image with heat in red."""
    heat = heat / max(float(heat.max()), 1e-12)
    grey = image.mean(0)
    rgb = np.stack([np.clip(0.5 * grey + heat, 0, 1), 0.5 * grey * (1 - heat), 0.5 * grey * (1 - heat)])
    return to_pil(rgb)


def confusion_image(cm, names, cell=44):
    """Confusion matrix (K, K) of counts, rows = true class, columns = predicted, shaded by the
    row-normalised rate, with the counts written in."""
    K = len(names)
    L, T = 110, 110
    img = Image.new("RGB", (L + K * cell + 10, T + K * cell + 10), "white")
    d = ImageDraw.Draw(img)
    rates = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    for i in range(K):
        d.text((6, T + i * cell + cell // 2 - 6), names[i][:14], fill="black", font=font(11))
        label = Image.new("RGB", (T - 10, 14), "white")
        ImageDraw.Draw(label).text((0, 0), names[i][:14], fill="black", font=font(11))
        img.paste(label.rotate(90, expand=True), (L + i * cell + cell // 2 - 7, 4))
        for j in range(K):
            v = rates[i, j]
            shade = (int(255 * (1 - v)), int(255 * (1 - 0.6 * v)), 255) if i == j else \
                (255, int(255 * (1 - 3 * v)) if v < 0.33 else 0, int(255 * (1 - 3 * v)) if v < 0.33 else 0)
            x0, y0 = L + j * cell, T + i * cell
            d.rectangle((x0, y0, x0 + cell - 1, y0 + cell - 1), fill=shade, outline=(200, 200, 200))
            d.text((x0 + 4, y0 + cell // 2 - 6), str(int(cm[i, j])), fill="black", font=font(11))
    d.text((L, T - 16), "predicted ->", fill="gray", font=font(11))
    return img
