"""Hypothesis strategies shared by the test modules: layer geometries and arrays."""
import numpy as np
from hypothesis import strategies as st


@st.composite
def window_geometry(draw, max_batch=2, max_channels=3, max_size=7, conv=False, min_batch=1, min_channels=1,
                    min_size=1):
    """A valid sliding-window geometry, non-square H and W allowed.

    Returns dict(N, C, H, W, kernel=(KH, KW), stride=(SH, SW), padding=(PH, PW)) with padding
    at most half the kernel (torch's rule for pools), or with ``conv`` up to the kernel size
    (convolutions allow any padding), and an output of at least 1x1.
    """
    KH, KW = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    PH = draw(st.integers(0, KH if conv else KH // 2))
    PW = draw(st.integers(0, KW if conv else KW // 2))
    H = draw(st.integers(max(min_size, KH - 2 * PH), max(max_size, min_size)))
    W = draw(st.integers(max(min_size, KW - 2 * PW), max(max_size, min_size)))
    return dict(N=draw(st.integers(min_batch, max_batch)), C=draw(st.integers(min_channels, max_channels)),
                H=H, W=W, kernel=(KH, KW), stride=(draw(st.integers(1, 3)), draw(st.integers(1, 3))),
                padding=(PH, PW))


def large_geometry(conv=False):
    """The "large" profile: 4-6 images of 8-12 channels at 32-40 pixels a side, so every CPU
    kernel splits its work over the thread pool (at least 2**15 elements, several images).
    Run it on few examples (``settings(max_examples=...)``): each is slow."""
    return window_geometry(max_batch=6, max_channels=12, max_size=40, conv=conv, min_batch=4, min_channels=8,
                           min_size=32)


def pool_values(rng, shape, nan_rate=0.0):
    """Values with many ties (a few distinct levels) and, at ``nan_rate``, NaNs: the cases where
    max-pool must pick the first maximum, or the first NaN."""
    x = rng.integers(-2, 3, shape).astype(np.float64)
    x[rng.random(shape) < nan_rate] = np.nan
    return x


def distinct_values(rng, shape, dtype=np.float64):
    """Values with no ties and none near 0 (away from the kinks of max and ReLU): a shuffled
    grid of spacing 0.1 starting at +-0.05, scaled to about [-1, 1]."""
    n = int(np.prod(shape))
    vals = (np.arange(n) - n // 2 + 0.5) * 0.1 / max(1, n // 20)
    return rng.permutation(vals).reshape(shape).astype(dtype)


seeds = st.integers(0, 2**32 - 1)
