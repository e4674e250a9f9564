"""Data helpers: image files to arrays, IDX files, and batch augmentations.

Images become float32 (3, S, S) arrays in [0, 1], NCHW once stacked. Augmentations are
callables ``aug(x, rng) -> x`` on a batch x (N, C, H, W), composable with ``Compose`` and
seedable through the generator that ``convlib.fit`` passes them.
"""
import gzip
import os
import struct
import sys

import numpy as np

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm")


# ---------------------------------------------------------------- images
def square(img, fit="crop"):
    """A PIL image made square: ``"crop"`` takes the centred square (a square image comes
    back as it is), ``"squish"`` resizes the whole image (as the post's bot did)."""
    if fit == "squish":
        s = max(img.size)
        return img.resize((s, s))
    if fit != "crop":
        raise ValueError(f"square: fit must be 'crop' or 'squish', got {fit!r}")
    w, h = img.size
    if w == h:
        return img
    s = min(w, h)
    left, top = (w - s) // 2, (h - s) // 2
    return img.crop((left, top, left + s, top + s))


def fit_image(img, size, fit="crop"):
    """PIL image -> RGB PIL image of size x size: made square by ``fit``, then resized (bilinear;
    from 3x the size or more, reduced by a whole factor first, as PIL's thumbnail does: several
    times faster on a photo, pixels within a few levels of 255 of the single resize)."""
    from PIL import Image
    img = square(img if img.mode == "RGB" else img.convert("RGB"), fit)
    if img.size != (size, size):                                    # (PIL would copy: the crop search's
        img = img.resize((size, size), Image.BILINEAR, reducing_gap=3.0)  # crops come at size already)
    return img


def image_to_array(img, size, fit="crop"):
    """PIL image -> float32 (3, size, size) in [0, 1]."""
    return np.asarray(fit_image(img, size, fit), dtype=np.float32).transpose(2, 0, 1) / 255.0  # (3, S, S)


def load_image(path, size, fit="crop"):
    """Decode one image file to float32 (3, size, size) in [0, 1]; ValueError naming the file
    if it cannot be decoded."""
    from PIL import Image, UnidentifiedImageError
    try:
        with Image.open(path) as img:
            img.load()
            return image_to_array(img, size, fit)
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise ValueError(f"{path}: cannot decode image ({type(e).__name__}: {e})") from None


def list_images(folder):
    """Sorted image files (by extension) directly inside ``folder``."""
    if not os.path.isdir(folder):
        raise ValueError(f"{folder}: not a folder")
    return sorted(os.path.join(folder, f) for f in os.listdir(folder)
                  if f.lower().endswith(IMAGE_EXTENSIONS) and not f.startswith("."))


def load_images(paths, size, fit="crop", progress=True):
    """Decode many files -> (x float32 (N, 3, size, size), kept indices). Files that do not
    decode are skipped and reported in one line on stderr (how many, the first names)."""
    from .progress import Progress
    arrays, kept, bad = [], [], []
    with Progress(len(paths), "loading images", "img", enabled=progress) as bar:
        for i, p in enumerate(paths):
            try:
                arrays.append(load_image(p, size, fit))
                kept.append(i)
            except ValueError:
                bad.append(p)
            bar.update(1)
    if bad:                                                          # a plain line, not a warning
        names = ", ".join(os.path.basename(p) for p in bad[:3]) + (", ..." if len(bad) > 3 else "")
        print(f"skipped {len(bad)} of {len(paths)} images that did not decode: {names}", file=sys.stderr)
    x = np.stack(arrays) if arrays else np.zeros((0, 3, size, size), np.float32)
    return x, np.array(kept, dtype=np.int64)


def channel_stats(x):
    """Per-channel mean and std of x (N, C, H, W) -> two lists of C floats."""
    return x.mean(axis=(0, 2, 3)).tolist(), (x.std(axis=(0, 2, 3)) + 1e-6).tolist()


def normalise(x, mean, std):
    """(x - mean) / std per channel: x (N, C, H, W) -> a new C-ordered float32 array."""
    mean = np.asarray(mean, np.float32)[None, :, None, None]
    std = np.asarray(std, np.float32)[None, :, None, None]
    out = np.subtract(x, mean, order="C")                           # (N, C, H, W); in x's precision,
    out /= std                                                      # like x's layout, took 10x longer
    return out.astype(np.float32, copy=False)


# ---------------------------------------------------------------- IDX files (MNIST family)
_IDX_TYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path):
    """Read an IDX file (``.gz`` or not) into an ndarray; ValueError naming the file if it is
    missing or malformed."""
    hint = " (on Debian: apt-get install dataset-fashion-mnist)" if "mnist" in str(path).lower() else ""
    if not os.path.exists(path):
        raise ValueError(f"{path}: no such IDX file{hint}")
    opener = gzip.open if str(path).endswith(".gz") else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise ValueError(f"{path}: cannot read ({e}){hint}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_TYPES or raw[3] == 0:
        raise ValueError(f"{path}: not an IDX file (bad magic number {raw[:4].hex()})")
    ndim = raw[3]
    if len(raw) < 4 + 4 * ndim:
        raise ValueError(f"{path}: truncated IDX header")
    shape = struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim])
    dtype = np.dtype(_IDX_TYPES[raw[2]])
    want = int(np.prod(shape)) * dtype.itemsize
    body = raw[4 + 4 * ndim:]
    if len(body) != want:
        raise ValueError(f"{path}: IDX header says {shape} ({want} bytes of data) but the file holds "
                         f"{len(body)} bytes")
    return np.frombuffer(body, dtype=dtype).reshape(shape).astype(dtype.newbyteorder("="))


def write_idx(path, array):
    """Write ``array`` (uint8, int8, int16, int32, float32 or float64) as an IDX file."""
    codes = {np.dtype(v).newbyteorder(">").str if np.dtype(v).itemsize > 1 else np.dtype(v).str: k
             for k, v in _IDX_TYPES.items()}
    a = np.asarray(array)
    big = a.astype(a.dtype.newbyteorder(">")) if a.dtype.itemsize > 1 else a
    code = codes[big.dtype.str]
    header = bytes([0, 0, code, a.ndim]) + struct.pack(f">{a.ndim}I", *a.shape)
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "wb") as f:
        f.write(header + big.tobytes())


# ---------------------------------------------------------------- augmentation
class Compose:
    """Apply augmentations in order: ``Compose([RandomFlip(), RandomCrop(4)])(x, rng)``."""

    def __init__(self, augmentations):
        self.augmentations = list(augmentations)

    def __call__(self, x, rng):
        for aug in self.augmentations:
            x = aug(x, rng)
        return x


class RandomFlip:
    """Mirror each image left-right with probability p."""

    def __init__(self, p=0.5):
        if not 0 <= p <= 1:
            raise ValueError(f"RandomFlip: p must be in [0, 1], got {p!r}")
        self.p = p

    def __call__(self, x, rng):
        flip = rng.random(len(x)) < self.p                          # (N,)
        out = x.copy()
        out[flip] = x[flip, :, :, ::-1]
        return out


class RandomCrop:
    """Zero-pad by ``padding`` on each side, then take a random crop of the original size."""

    def __init__(self, padding):
        if not isinstance(padding, int) or isinstance(padding, bool) or padding < 0:
            raise ValueError(f"RandomCrop: padding must be an int >= 0, got {padding!r}")
        self.padding = padding

    def __call__(self, x, rng):
        N, C, H, W = x.shape
        p = self.padding
        xp = np.pad(x, ((0, 0), (0, 0), (p, p), (p, p)))            # (N, C, H+2p, W+2p)
        dy, dx = rng.integers(0, 2 * p + 1, N), rng.integers(0, 2 * p + 1, N)
        rows = dy[:, None] + np.arange(H)                           # (N, H)
        cols = dx[:, None] + np.arange(W)                           # (N, W)
        return xp[np.arange(N)[:, None, None, None], np.arange(C)[None, :, None, None],
                  rows[:, None, :, None], cols[:, None, None, :]]


class Cutout:
    """Zero a ``size`` x ``size`` square at a random centre of each image (clipped at the
    borders) with probability p: DeVries & Taylor 2017. Zero is the mean of normalised data."""

    def __init__(self, size, p=1.0):
        if not isinstance(size, int) or isinstance(size, bool) or size < 1 or not 0 <= p <= 1:
            raise ValueError(f"Cutout: size must be an int >= 1 and p in [0, 1], got {size!r}, {p!r}")
        self.size, self.p = size, p

    def __call__(self, x, rng):
        N, C, H, W = x.shape
        top = rng.integers(0, H, N) - self.size // 2                # (N,) the square's corner
        left = rng.integers(0, W, N) - self.size // 2               # (N,)
        on = rng.random(N) < self.p                                 # (N,)
        rows = (np.arange(H) >= top[:, None]) & (np.arange(H) < top[:, None] + self.size)     # (N, H)
        cols = (np.arange(W) >= left[:, None]) & (np.arange(W) < left[:, None] + self.size)  # (N, W)
        hole = on[:, None, None] & rows[:, :, None] & cols[:, None, :]                          # (N, H, W)
        return np.where(hole[:, None], np.zeros((), x.dtype), x)


class ColorJitter:
    """Scale brightness by U(1-b, 1+b) and contrast about each image's mean by U(1-c, 1+c)."""

    def __init__(self, brightness=0.0, contrast=0.0):
        if not (0 <= brightness < 1 and 0 <= contrast < 1):
            raise ValueError(f"ColorJitter: brightness and contrast must be in [0, 1), "
                             f"got {brightness!r}, {contrast!r}")
        self.brightness, self.contrast = brightness, contrast

    def __call__(self, x, rng):
        N = len(x)
        b = rng.uniform(1 - self.brightness, 1 + self.brightness, N).astype(x.dtype)[:, None, None, None]
        c = rng.uniform(1 - self.contrast, 1 + self.contrast, N).astype(x.dtype)[:, None, None, None]
        mean = x.mean(axis=(1, 2, 3), keepdims=True)
        return ((x - mean) * c + mean) * b
