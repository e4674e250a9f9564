"""Optimizer updates on the CPU: SGD's step in one pass over each parameter, where NumPy's takes
up to seven (g + wd*p, buf*m, buf + g, g + m*buf, lr*g, p - that), each through memory. The
same operations in the same order and type as ``reference.sgd_step`` (no fused multiply-adds),
so a run takes the same steps to the bit. Maths: ``reference.sgd_step``.
"""
from numba import njit

from .. import OPS
from .threads import JIT, parallel_for


@njit(**JIT)
def _sgd(lo, hi, p, g, buf, lr, momentum, weight_decay, nesterov):
    """Over the flat range [lo, hi) of p, g and buf (None without momentum): g' = g + wd * p,
    buf = m * buf + g', p -= lr * (g' + m * buf if nesterov else buf), or lr * g' without
    momentum; lr, m and wd in p's type, as NumPy takes Python floats."""
    p, g = p[lo:hi], g[lo:hi]           # slices: indices from range(n) need no wraparound checks
    lr, m, wd = p.dtype.type(lr), p.dtype.type(momentum), p.dtype.type(weight_decay)
    if buf is None:
        for i in range(p.size):
            d = g[i] + wd * p[i] if weight_decay != 0 else g[i]
            p[i] -= lr * d
        return
    b = buf[lo:hi]
    for i in range(p.size):
        d = g[i] + wd * p[i] if weight_decay != 0 else g[i]
        b[i] = b[i] * m + d
        p[i] -= lr * (d + m * b[i] if nesterov else b[i])


def sgd_step(ps, gs, bufs, lr, momentum, weight_decay, nesterov):
    """For each parameter p (an array updated in place), its gradient g and momentum buffer (bufs
    None without momentum): one pass, a large p's flat range split over the threads. Arrays
    that are not contiguous or not all of p's type, or hyper-parameters that are not Python
    numbers (NumPy would compute in their type), take the reference's passes."""
    plain = all(type(v) in (int, float) for v in (lr, momentum, weight_decay))
    hyper = (float(lr), float(momentum), float(weight_decay), bool(nesterov))
    for i, (p, g) in enumerate(zip(ps, gs)):
        buf = None if bufs is None else bufs[i]
        if not (plain and p.dtype.kind == "f" and _like(p, g) and (buf is None or _like(p, buf))):
            OPS["sgd_step"]([p], [g], None if buf is None else [buf], lr, momentum, weight_decay, nesterov)
            continue
        flat = (p.reshape(-1), g.reshape(-1), None if buf is None else buf.reshape(-1))   # views
        parallel_for(_sgd, p.size, *flat, *hyper, work=p.size // 4)   # split from 131,072 values on,
        # where it pays for the hand-off to a thread (docs/performance.md has the times)


def _like(p, a):
    """Whether a is of p's shape and type, and both are contiguous (their flat views are views)."""
    return a.dtype == p.dtype and a.shape == p.shape and a.flags.c_contiguous and p.flags.c_contiguous
