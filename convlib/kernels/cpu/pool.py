"""Max and average pooling on the CPU: loops over the images of a share, a 2x2 fast path.
Maths: ``reference.maxpool2d_forward``, ``reference.avgpool2d_forward``."""
import numpy as np
from numba import njit

from ..reference import out_size
from .relu import relu_backward, relu_forward
from .threads import JIT, parallel_for


# ---------------------------------------------------------------- pooling
# Kernels run over the images [lo, hi) of an NCHW batch. The general max-pool keeps, per output,
# the index i*KW + j of its window's first maximum (the 2x2 path finds it again in backward);
# a NaN counts as the maximum (it propagates, as in the reference and torch), and the first NaN wins.
@njit(inline="always")
def _beats(v, best):
    """Does v replace the running maximum best? Larger, or the first NaN. Written without
    branches (| and &, not or and and), so LLVM turns the updates below into selects: 10x faster."""
    return (v > best) | ((v != v) & (best == best))


@njit(**JIT)
def _maxpool_fwd(lo, hi, x, KH, KW, sh, sw, ph, pw, out, arg):
    """out[n, c, oh, ow] = first maximum of its window; arg = its index i*KW + j in the window."""
    C, H, W = x.shape[1:]
    OH, OW = out.shape[2], out.shape[3]
    for n in range(lo, hi):
        for c in range(C):
            for oh in range(OH):
                h0 = oh * sh - ph
                ilo, ihi = max(0, -h0), min(KH, H - h0)   # window rows inside the image
                for ow in range(OW):
                    w0 = ow * sw - pw
                    jlo, jhi = max(0, -w0), min(KW, W - w0)
                    best, k = x[n, c, h0 + ilo, w0 + jlo], ilo * KW + jlo
                    for i in range(ilo, ihi):
                        for j in range(jlo, jhi):
                            v = x[n, c, h0 + i, w0 + j]
                            t = _beats(v, best)
                            best, k = (v, i * KW + j) if t else (best, k)
                    out[n, c, oh, ow] = best
                    arg[n, c, oh, ow] = k


@njit(**JIT)
def _maxpool_bwd(lo, hi, dout, arg, KW, sh, sw, ph, pw, dx):
    """dx[window position of the max] += dout, for the images [lo, hi)."""
    C, OH, OW = dout.shape[1:]
    for n in range(lo, hi):
        dx[n] = 0
        for c in range(C):
            for oh in range(OH):
                for ow in range(OW):
                    k = arg[n, c, oh, ow]
                    dx[n, c, oh * sh - ph + k // KW, ow * sw - pw + k % KW] += dout[n, c, oh, ow]


@njit(inline="always")
def _max2(a, b):
    """The first maximum of a, b (a on a tie; the first NaN), as a select."""
    return b if _beats(b, a) else a


@njit(**JIT)
def _maxpool2x2_fwd(lo, hi, x, out, relu):
    """The common case, kernel 2, stride 2, no padding: out only (the backward finds each
    window's maximum again from x), max(out, 0) with relu. Each window's pairs in row order, so
    the value is the reference's first maximum, down to the sign of a zero; one select per
    compare, which LLVM vectorises: 3-9x faster than also keeping the index here."""
    zero = x.dtype.type(0)
    for n in range(lo, hi):
        for c in range(x.shape[1]):
            for oh in range(out.shape[2]):
                r0, r1, o = x[n, c, 2 * oh], x[n, c, 2 * oh + 1], out[n, c, oh]
                for ow in range(out.shape[3]):
                    v = _max2(_max2(r0[2 * ow], r0[2 * ow + 1]), _max2(r1[2 * ow], r1[2 * ow + 1]))
                    o[ow] = zero if relu and v <= 0 else v


@njit(**JIT)
def _maxpool2x2_bwd(lo, hi, dout, x, out, relu, dx):
    """Per output row: each window's index k (0-3, row by row) of the first input equal to its
    output out (the first NaN where out is NaN; with relu only windows with out > 0 pass
    dout, and there out is the maximum itself), then the window's two rows of dx zeroed and
    dout written at k (a last odd row or column of dx, outside every window, is zeroed first).
    Selects and a product, not branches, where real data's maxima and signs are unpredictable."""
    C, OH, OW = dout.shape[1:]
    zero = dx.dtype.type(0)
    ks = np.empty(OW, np.int32)
    for n in range(lo, hi):
        if dx.shape[2] % 2 or dx.shape[3] % 2:
            dx[n] = 0
        for c in range(C):
            for oh in range(OH):
                r0, r1, o, g = x[n, c, 2 * oh], x[n, c, 2 * oh + 1], out[n, c, oh], dout[n, c, oh]
                nans = 0
                for ow in range(OW):                            # as if no window held a NaN
                    m = o[ow]
                    k = np.int32(2) if r1[2 * ow] == m else np.int32(3)
                    k = np.int32(1) if r0[2 * ow + 1] == m else k
                    ks[ow] = np.int32(0) if r0[2 * ow] == m else k
                    nans += m != m
                for ow in range(OW if nans else 0):             # rows with a NaN window again:
                    if o[ow] != o[ow]:                          # its first NaN
                        k = np.int32(2) if r1[2 * ow] != r1[2 * ow] else np.int32(3)
                        k = np.int32(1) if r0[2 * ow + 1] != r0[2 * ow + 1] else k
                        ks[ow] = np.int32(0) if r0[2 * ow] != r0[2 * ow] else k
                for w in range(2 * OW):
                    dx[n, c, 2 * oh, w] = zero
                    dx[n, c, 2 * oh + 1, w] = zero
                for ow in range(OW):
                    k = ks[ow]
                    keep = dx.dtype.type((o[ow] > 0) | (not relu))    # 1 or 0, as the reference's
                    dx[n, c, 2 * oh + (k >> 1), 2 * ow + (k & 1)] = g[ow] * keep   # dout * (out > 0)


def _is_2x2(kernel, stride, padding):
    return kernel == stride == (2, 2) and padding == (0, 0)


def maxpool2d_forward(x, kernel, stride, padding, relu=False):
    """x (N, C, H, W) -> out (N, C, OH, OW), cache. Padding counts as -inf; ties go to the first;
    with relu, then max(out, 0) (see the reference). The 2x2 path's cache keeps x itself."""
    (KH, KW), (sh, sw), (ph, pw) = kernel, stride, padding
    N, C, H, W = x.shape
    OH, OW = out_size(H, KH, sh, ph), out_size(W, KW, sw, pw)
    x = np.ascontiguousarray(x)
    out = np.empty((N, C, OH, OW), dtype=x.dtype)
    if _is_2x2(kernel, stride, padding):
        parallel_for(_maxpool2x2_fwd, N, x, out, relu, work=x.size)
        return out, (x, None, kernel, stride, padding, out, relu)
    arg = np.empty((N, C, OH, OW), dtype=np.int32)                  # index of the max inside its window
    parallel_for(_maxpool_fwd, N, x, KH, KW, sh, sw, ph, pw, out, arg, work=x.size)
    if relu:
        out, _ = relu_forward(out)
    return out, (x.shape, arg, kernel, stride, padding, out, relu)


def maxpool2d_backward(dout, cache):
    """dout (N, C, OH, OW) -> dx (N, C, H, W)."""
    held, arg, kernel, (sh, sw), (ph, pw), out, relu = cache        # held: x (2x2 path) or x.shape
    dout = np.ascontiguousarray(dout)
    if arg is None:                                                 # the 2x2 path
        dx = np.empty_like(held, dtype=dout.dtype)
        parallel_for(_maxpool2x2_bwd, held.shape[0], dout, held, out, relu, dx, work=dx.size)
        return dx
    dout = relu_backward(dout, out) if relu else dout
    dx = np.empty(held, dtype=dout.dtype)
    parallel_for(_maxpool_bwd, held[0], dout, arg, kernel[1], sh, sw, ph, pw, dx, work=dx.size)
    return dx


@njit(**JIT)
def _avgpool_fwd(lo, hi, x, KH, KW, sh, sw, ph, pw, out):
    """out (N, C, OH, OW) = window sums of x / (KH*KW), for the images [lo, hi)."""
    C, H, W = x.shape[1:]
    OH, OW = out.shape[2], out.shape[3]
    scale = 1.0 / (KH * KW)
    for n in range(lo, hi):
        for c in range(C):
            for oh in range(OH):
                for ow in range(OW):
                    s = 0.0
                    for i in range(max(0, ph - oh * sh), min(KH, H + ph - oh * sh)):
                        for j in range(max(0, pw - ow * sw), min(KW, W + pw - ow * sw)):
                            s += x[n, c, oh * sh - ph + i, ow * sw - pw + j]
                    out[n, c, oh, ow] = s * scale


@njit(**JIT)
def _avgpool_bwd(lo, hi, dout, KH, KW, sh, sw, ph, pw, dx):
    """dx (N, C, H, W): each window's dout / (KH*KW) added to its inputs, for the images [lo, hi)."""
    C, H, W = dx.shape[1:]
    OH, OW = dout.shape[2], dout.shape[3]
    scale = dx.dtype.type(1.0 / (KH * KW))
    for n in range(lo, hi):
        dx[n] = 0
        for c in range(C):
            for oh in range(OH):
                for ow in range(OW):
                    g = dout[n, c, oh, ow] * scale
                    for i in range(max(0, ph - oh * sh), min(KH, H + ph - oh * sh)):
                        for j in range(max(0, pw - ow * sw), min(KW, W + pw - ow * sw)):
                            dx[n, c, oh * sh - ph + i, ow * sw - pw + j] += g


def avgpool2d_forward(x, kernel, stride, padding):
    """x (N, C, H, W) -> out (N, C, OH, OW); zero padding counts in the divisor KH*KW."""
    (KH, KW), (sh, sw), (ph, pw) = kernel, stride, padding
    N, C, H, W = x.shape
    x = np.ascontiguousarray(x)
    out = np.empty((N, C, out_size(H, KH, sh, ph), out_size(W, KW, sw, pw)), dtype=x.dtype)
    parallel_for(_avgpool_fwd, N, x, KH, KW, sh, sw, ph, pw, out, work=x.size)
    return out, (x.shape, kernel, stride, padding)


def avgpool2d_backward(dout, cache):
    """dout (N, C, OH, OW) -> dx (N, C, H, W)."""
    xshape, (KH, KW), (sh, sw), (ph, pw) = cache
    dx = np.empty(xshape, dtype=dout.dtype)
    parallel_for(_avgpool_bwd, xshape[0], np.ascontiguousarray(dout), KH, KW, sh, sw, ph, pw, dx,
                 work=dx.size)
    return dx
