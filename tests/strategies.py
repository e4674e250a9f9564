"""Hypothesis strategies shared by the test modules: layer geometries and arrays."""
import numpy as np
from hypothesis import strategies as st


@st.composite
def window_geometry(draw, max_batch=2, max_channels=3, max_size=7):
    """A valid sliding-window geometry, non-square H and W allowed.

    Returns dict(N, C, H, W, kernel=(KH, KW), stride=(SH, SW), padding=(PH, PW)) with padding
    at most half the kernel (torch's rule for pools) and an output of at least 1x1.
    """
    KH, KW = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    PH, PW = draw(st.integers(0, KH // 2)), draw(st.integers(0, KW // 2))
    H = draw(st.integers(max(1, KH - 2 * PH), max_size))
    W = draw(st.integers(max(1, KW - 2 * PW), max_size))
    return dict(N=draw(st.integers(1, max_batch)), C=draw(st.integers(1, max_channels)), H=H, W=W,
                kernel=(KH, KW), stride=(draw(st.integers(1, 3)), draw(st.integers(1, 3))),
                padding=(PH, PW))


def distinct_values(rng, shape, dtype=np.float64):
    """Values with no ties and none near 0 (away from the kinks of max and ReLU): a shuffled
    grid of spacing 0.1 starting at +-0.05, scaled to about [-1, 1]."""
    n = int(np.prod(shape))
    vals = (np.arange(n) - n // 2 + 0.5) * 0.1 / max(1, n // 20)
    return rng.permutation(vals).reshape(shape).astype(dtype)


seeds = st.integers(0, 2**32 - 1)
