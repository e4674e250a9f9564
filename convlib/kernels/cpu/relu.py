"""ReLU on the CPU (the most frequent layer): one flat loop per share. Maths: ``reference.relu_forward``."""
import numpy as np
from numba import njit

from .threads import JIT, parallel_for


# ---------------------------------------------------------------- ReLU (the most frequent layer)
@njit(**JIT)
def _relu(lo, hi, x, out):
    """out[i] = max(x[i], 0) over the flat range [lo, hi); NaN stays NaN, as in np.maximum."""
    x, out = x[lo:hi], out[lo:hi]   # indices from range(n) are >= 0: plain vector loads, whereas
    zero = x.dtype.type(0)          # range(lo, hi) would need wraparound checks (gathers, 10x slower)
    for i in range(x.size):
        v = x[i]
        out[i] = zero if v <= 0 else v


@njit(**JIT)
def _relu_bwd(lo, hi, dout, out, dx):
    dout, out, dx = dout[lo:hi], out[lo:hi], dx[lo:hi]
    zero = dout.dtype.type(0)
    for i in range(dx.size):
        dx[i] = dout[i] if out[i] > 0 else zero


def relu_forward(x):
    """x (...) -> max(x, 0), cache (the output)."""
    out = np.empty_like(x)
    parallel_for(_relu, x.size, np.ascontiguousarray(x).reshape(-1), out.reshape(-1), work=x.size)
    return out, out


def relu_backward(dout, out):
    """The gradient passes where the output is positive."""
    dx = np.empty_like(out)
    parallel_for(_relu_bwd, out.size, np.ascontiguousarray(dout).reshape(-1), out.reshape(-1),
                 dx.reshape(-1), work=out.size)
    return dx
