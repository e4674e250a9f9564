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


GOOD_GREEN, BAD_RED, GREY = (44, 160, 44), (214, 39, 40), (150, 150, 150)


def header(img, lines, size=16):
    """``img`` with a white band on top holding ``lines`` (a title, then smaller key lines)."""
    lines = [lines] if isinstance(lines, str) else list(lines)
    h = 8 + 22 * (len(lines) > 0) + 16 * max(0, len(lines) - 1)
    out = Image.new("RGB", (img.width, img.height + h), "white")
    d = ImageDraw.Draw(out)
    for i, line in enumerate(lines):
        d.text((6, 6 if i == 0 else 10 + 16 * i), line, fill="black" if i == 0 else (70, 70, 70),
               font=font(size if i == 0 else 12))
    out.paste(img, (0, h))
    return out


def grid(images, cols, captions=None, cell=96, title=None, pad=4, borders=None, caption_colors=None):
    """Images (N, 3, H, W) in [0, 1] as a grid of ``cols`` columns. Optional: ``captions`` (N
    strings) under each image in ``caption_colors`` (N RGB, default black), a coloured frame
    per image (``borders``, N RGB), and ``title`` (a string, or a list: title then key lines)."""
    n = len(images)
    rows = max(1, -(-n // cols))
    cap_h = 16 if captions is not None else 0
    out = Image.new("RGB", (cols * (cell + pad) + pad, rows * (cell + cap_h + pad) + pad), "white")
    d = ImageDraw.Draw(out)
    for i in range(n):
        r, c = divmod(i, cols)
        x0, y0 = pad + c * (cell + pad), pad + r * (cell + cap_h + pad)
        out.paste(to_pil(images[i]).resize((cell, cell), Image.NEAREST if cell > images.shape[-1] * 2 else
                                           Image.BILINEAR), (x0, y0))
        if borders is not None:
            d.rectangle((x0, y0, x0 + cell - 1, y0 + cell - 1), outline=tuple(borders[i]), width=3)
        if captions is not None:
            color = tuple(caption_colors[i]) if caption_colors is not None else "black"
            d.text((x0 + 2, y0 + cell + 1), captions[i], fill=color, font=font(12))
    return header(out, title) if title else out


def nice_ticks(lo, hi, n=5):
    """About ``n`` round values covering [lo, hi]: (ticks, decimals to print them with). The
    step is the largest of 1, 2, 2.5 or 5 x 10^k that gives at least ``n`` - 1 intervals."""
    raw = (hi - lo) / max(1, n - 1)
    k = int(np.floor(np.log10(raw)))
    m = max(m for m in (1, 2, 2.5, 5) if m * 10.0 ** k <= raw)
    step = m * 10.0 ** k
    first = np.ceil(lo / step) * step
    digits = max(0, -k + (m == 2.5))
    return [round(float(v), digits) for v in np.arange(first, hi + step * 1e-9, step)], digits


def line_chart(series, title, xlabel, size=(520, 300), mark=None, xlabels=None):
    """series: {name: list of y} over x = 1..n (or evenly spaced points named by ``xlabels``),
    with round y ticks, a legend, and an optional ``mark`` = (x, label): a dashed vertical line
    at epoch x."""
    W, H = size
    L, R, T, B = 56, 12, 30, 40
    img = Image.new("RGB", size, "white")
    d = ImageDraw.Draw(img)
    ys = [v for s in series.values() for v in s]
    lo, hi = min(ys), max(ys)
    if hi - lo < 1e-9:
        lo, hi = lo - 0.5, hi + 0.5
    lo, hi = lo - 0.05 * (hi - lo), hi + 0.05 * (hi - lo)
    ticks, digits = nice_ticks(lo, hi)
    n = max(len(s) for s in series.values())
    px = lambda i: L + (W - L - R) * (i / max(1, n - 1))
    py = lambda v: T + (H - T - B) * (1 - (v - lo) / (hi - lo))
    d.rectangle((L, T, W - R, H - B), outline="black")
    for v in ticks:
        d.line((L - 4, py(v), L, py(v)), fill="black")
        d.line((L + 1, py(v), W - R - 1, py(v)), fill=(235, 235, 235))
        d.text((4, py(v) - 7), f"{v:.{digits}f}", fill="black", font=font(11))
    every = max(1, -(-n // 12))                                      # at most ~12 x labels
    for i in range(0, n, every):
        label = str(i + 1) if xlabels is None else str(xlabels[i])
        x = min(max(px(i) - 3 * len(label), L - 4), W - 6 * len(label) - 2)   # inside the picture
        d.text((x, H - B + 4), label, fill="black", font=font(11))
    d.text((W // 2 - 20, H - 18), xlabel, fill="black", font=font(12))
    d.text((L, 8), title, fill="black", font=font(14))
    if mark is not None:
        x = px(mark[0] - 1)
        for y in range(T, H - B, 8):
            d.line((x, y, x, min(y + 4, H - B)), fill=GREY, width=2)
        d.text((min(x + 4, W - R - 110), H - B - 18), mark[1], fill=(90, 90, 90), font=font(11))
    colors = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd"]
    for k, (name, s) in enumerate(series.items()):
        pts = [(px(i), py(v)) for i, v in enumerate(s)]
        if len(pts) > 1:
            d.line(pts, fill=colors[k % 4], width=2)
        for p in pts:
            d.ellipse((p[0] - 3, p[1] - 3, p[0] + 3, p[1] + 3), fill=colors[k % 4])
        lx = W - R - 110 * (len(series) - k)                          # legend in the top margin
        d.line((lx, 16, lx + 18, 16), fill=colors[k % 4], width=2)
        d.text((lx + 22, 9), name, fill=colors[k % 4], font=font(12))
    return img


def curves(hist, title=None):
    """Loss and accuracy per epoch, train and validation, side by side (a fit() History), with
    the epoch whose weights fit() kept marked; ``title`` (a line, or lines: a title and key lines)
    above them."""
    best = getattr(hist, "best_epoch", None)
    mark = (best, f"kept: epoch {best}") if best else None
    keep = lambda series: {name: s for name, s in series.items() if len(s)}   # no validation: train only
    img = side_by_side([
        line_chart(keep({"train loss": hist["loss"], "val loss": hist["val_loss"]}), "loss", "epoch", mark=mark),
        line_chart(keep({"train acc": hist["acc"], "val acc": hist["val_acc"]}), "accuracy", "epoch", mark=mark)])
    return header(img, title) if title else img


def side_by_side(images, captions=None):
    """PIL images pasted left to right on white, top-aligned, each with an optional caption
    (one or more lines) under it."""
    lines = [[c] if isinstance(c, str) else list(c) for c in (captions or [[] for _ in images])]
    cap_h = 6 + 16 * max(len(c) for c in lines) if captions else 0
    h = max(im.height for im in images) + cap_h
    out = Image.new("RGB", (sum(im.width for im in images) + 10 * (len(images) - 1), h), "white")
    d = ImageDraw.Draw(out)
    x = 0
    for im, cap in zip(images, lines):
        out.paste(im, (x, 0))
        for i, line in enumerate(cap):
            d.text((x + 2, im.height + 4 + 16 * i), line, fill="black", font=font(13))
        x += im.width + 10
    return out


def bar_chart(rows, title, baseline=0.5, size=(860, None), xlabel=None, columns=None):
    """rows: [(label, value in [0, 1], note, RGB colour)] as horizontal bars from ``baseline``;
    ``columns`` is the header over the notes, ``xlabel`` the axis label under the bars."""
    W = size[0]
    top = 56 if title else 28
    H = top + 22 * len(rows) + 44
    img = Image.new("RGB", (W, H), "white")
    d = ImageDraw.Draw(img)
    if title:
        d.text((8, 8), title, fill="black", font=font(14))
    L, R = 260, 290
    x = lambda v: L + (W - L - R) * v
    if columns:
        d.text((W - R + 8, top - 18), columns, fill=(70, 70, 70), font=font(12))
    d.line((x(baseline), top - 4, x(baseline), H - 40), fill="gray")
    for i, (label, v, note, color) in enumerate(rows):
        y = top + 22 * i
        d.text((8, y), label, fill="black", font=font(12))
        d.rectangle((min(x(v), x(baseline)), y + 2, max(x(v), x(baseline)), y + 15), fill=tuple(color))
        d.text((W - R + 8, y), note, fill="black", font=font(12))
    for v in (0.0, 0.25, 0.5, 0.75, 1.0):
        d.line((x(v), H - 42, x(v), H - 38), fill="black")
        d.text((x(v) - 10, H - 36), f"{v:.2f}", fill="black", font=font(11))
    if xlabel:
        d.text((L, H - 20), xlabel, fill="black", font=font(12))
    return img


def ramp(t):
    """Colours for values t in [0, 1]: red (0) through yellow to green (1); (N,) -> (N, 3) uint8."""
    t = np.clip(np.asarray(t, np.float64), 0, 1)[:, None]
    red, yellow, green = np.array(BAD_RED), np.array((240, 200, 40)), np.array(GOOD_GREEN)
    return np.where(t < 0.5, red + (yellow - red) * 2 * t, yellow + (green - yellow) * (2 * t - 1)).astype(np.uint8)


def color_key(colors, left, right, width=260, height=12):
    """A horizontal colour bar: ``colors(t)`` for t from 0 to 1, labelled at both ends."""
    bar = np.repeat(colors(np.linspace(0, 1, width))[None], height, axis=0)   # (h, w, 3)
    lw = 8 * max(len(left), len(right)) + 8
    out = Image.new("RGB", (width + 2 * lw, height + 4), "white")
    out.paste(Image.fromarray(bar), (lw, 2))
    d = ImageDraw.Draw(out)
    d.text((2, 0), left, fill="black", font=font(11))
    d.text((lw + width + 6, 0), right, fill="black", font=font(11))
    return out


def stack(images):
    """PIL images top to bottom on white, left-aligned."""
    out = Image.new("RGB", (max(im.width for im in images), sum(im.height for im in images)), "white")
    y = 0
    for im in images:
        out.paste(im, (0, y))
        y += im.height
    return out


def grid_layout(xy):
    """Positions (N, 2) -> a full rows x cols grid slot for each point that keeps neighbours
    near: sort by y into rows of ``cols``, then each row by x (a t-SNE map without gaps)."""
    n = len(xy)
    cols = int(np.ceil(np.sqrt(n)))
    slots = np.zeros((n, 2), np.int64)                              # (N, 2) column, row
    by_y = np.argsort(xy[:, 1], kind="stable")
    for r in range(0, n, cols):
        row = by_y[r:r + cols]
        row = row[np.argsort(xy[row, 0], kind="stable")]
        slots[row, 0], slots[row, 1] = np.arange(len(row)), r // cols
    return slots


def mosaic(images, xy, p, cell=40):
    """A t-SNE map as a picture: each image (N, 3, H, W) in the grid slot nearest its 2-D
    position ``xy`` (N, 2), framed in the colour of its P(good) ``p`` (N,)."""
    slots = grid_layout(xy)
    cols, rows = slots[:, 0].max() + 1, slots[:, 1].max() + 1
    out = Image.new("RGB", (cols * cell, rows * cell), "white")
    d = ImageDraw.Draw(out)
    for (c, r), im, color in zip(slots, images, ramp(p)):
        out.paste(to_pil(im).resize((cell, cell), Image.BILINEAR), (c * cell, r * cell))
        d.rectangle((c * cell, r * cell, c * cell + cell - 1, r * cell + cell - 1), outline=tuple(color), width=3)
    key = color_key(ramp, "P(good) 0", "1")
    return stack([header(out, ["t-SNE map of held-out selfies (the net's last hidden layer)",
                               "selfies the net sees as alike lie together; frame: P(good)"]), key])


def filters_image(w, image=None, maps=None, cell=72):
    """First-layer conv weights (F, 3, KH, KW) as colour tiles, each scaled to [0, 1] and drawn
    with square pixels; with ``image`` (3, H, W) and its first-layer activation ``maps``
    (F, H', W'), also the selfie and each filter's response to it (white: strong)."""
    tiles = np.array([(f - f.min()) / max(f.max() - f.min(), 1e-9) for f in w])
    cols = min(8, len(tiles))
    parts = [grid(tiles, cols=cols, cell=cell, captions=[f"filter {i}" for i in range(len(tiles))],
                  title=["first-layer filters", f"each {w.shape[2]}x{w.shape[3]} RGB filter, scaled to its "
                         "own range"])]
    if maps is not None:
        m = np.array([(a - a.min()) / max(a.max() - a.min(), 1e-9) for a in maps])        # (F, H', W')
        rgb = np.repeat(m[:, None], 3, axis=1)                                              # (F, 3, H', W')
        parts.append(grid(np.concatenate([image[None], rgb]), cols=cols + 1, cell=cell,
                          captions=["input"] + [f"filter {i}" for i in range(len(m))],
                          title=["what each filter responds to in one held-out selfie",
                                 "after the first conv layer's ReLU; white: strong response"]))
    return stack(parts)


def heat_colors(t):
    """Colours for heat t in [0, 1]: black (0) through red to yellow (1); (N,) -> (N, 3) uint8."""
    t = np.clip(np.asarray(t, np.float64), 0, 1)
    return (np.stack([np.clip(2 * t, 0, 1), np.clip(2 * t - 1, 0, 1), np.zeros_like(t)], 1) * 255).astype(np.uint8)


def heatmap_overlay(photo, heat):
    """A PIL photo with ``heat`` (h, w) >= 0 laid over it at the photo's size: the photo dimmed
    to grey, the heat from red (some) to yellow (most) blended in where it is strong."""
    heat = heat / max(float(heat.max()), 1e-12)
    big = np.asarray(Image.fromarray((heat * 255).astype(np.uint8)).resize(photo.size, Image.BILINEAR),
                     np.float64) / 255                                # (H, W) in [0, 1]
    grey = np.asarray(photo.convert("L"), np.float64)[..., None] / 255
    colors = heat_colors(big.ravel()).reshape(*big.shape, 3) / 255    # (H, W, 3)
    alpha = np.clip(1.5 * big, 0, 0.85)[..., None]
    rgb = (1 - alpha) * 0.6 * grey + alpha * colors
    return Image.fromarray((rgb * 255).astype(np.uint8))


def confusion_image(cm, names, title="", cell=44):
    """Confusion matrix (K, K) of counts, rows = true class, columns = predicted, shaded by the
    row-normalised rate (blue: correct, red: mistakes), with the counts written in, under a
    title and a one-line key."""
    K = len(names)
    L, T = 110, 150                                                  # left labels; title, key and column labels
    img = Image.new("RGB", (L + K * cell + 10, T + K * cell + 10), "white")
    d = ImageDraw.Draw(img)
    d.text((6, 6), title, fill="black", font=font(14))
    d.text((6, 26), "rows: true class, columns: predicted; shade: share of the row "
           "(blue correct, red mistaken)", fill=(90, 90, 90), font=font(11))
    rates = cm / np.maximum(cm.sum(1, keepdims=True), 1)
    for i in range(K):
        d.text((6, T + i * cell + cell // 2 - 6), names[i][:14], fill="black", font=font(11))
        label = Image.new("RGB", (T - 50, 14), "white")
        ImageDraw.Draw(label).text((0, 0), names[i][:14], fill="black", font=font(11))
        img.paste(label.rotate(90, expand=True), (L + i * cell + cell // 2 - 7, 44))
        for j in range(K):
            v = rates[i, j]
            shade = (int(255 * (1 - v)), int(255 * (1 - 0.6 * v)), 255) if i == j else \
                (255, int(255 * (1 - 3 * v)) if v < 0.33 else 0, int(255 * (1 - 3 * v)) if v < 0.33 else 0)
            x0, y0 = L + j * cell, T + i * cell
            d.rectangle((x0, y0, x0 + cell - 1, y0 + cell - 1), fill=shade, outline=(200, 200, 200))
            d.text((x0 + 4, y0 + cell // 2 - 6), str(int(cm[i, j])), fill="black", font=font(11))
    d.text((6, T - 16), "true \\ predicted", fill="gray", font=font(11))
    return img
