"""Max and average pooling on the CPU: loops over the images of a share, a 2x2 fast path.
Maths: ``reference.maxpool2d_forward``, ``reference.avgpool2d_forward``."""
import numpy as np
from numba import njit

from ..reference import out_size
from .relu import relu_backward, relu_forward
from .threads import JIT, parallel_for


# ---------------------------------------------------------------- pooling
# Kernels run over the images [lo, hi) of an NCHW batch. A max-pool keeps, per output, the
# index i*KW + j of its window's first maximum; a NaN counts as the maximum (it propagates, as
# in the reference and torch), and the first NaN wins.
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
def _maxpool2x2_selects(xc, oc, ac):
    """One channel xc (H, W) -> oc, ac (OH, OW), each window's other three compared in turn."""
    for oh in range(oc.shape[0]):
        for ow in range(oc.shape[1]):
            best, k = xc[2 * oh, 2 * ow], 0
            for q in range(1, 4):                         # the window's other three, row by row
                v = xc[2 * oh + q // 2, 2 * ow + q % 2]
                t = _beats(v, best)
                best, k = (v, q) if t else (best, k)
            oc[oh, ow] = best
            ac[oh, ow] = k


@njit(inline="always")
def _maxpool2x2_tournament(xc, oc, ac):
    """The same without a select: each pair's winner, then whether the bottom pair's beats the
    top pair's (from the four cross comparisons), and the value loaded at the winner's index."""
    for oh in range(oc.shape[0]):
        for ow in range(oc.shape[1]):
            a0, a1 = xc[2 * oh, 2 * ow], xc[2 * oh, 2 * ow + 1]
            a2, a3 = xc[2 * oh + 1, 2 * ow], xc[2 * oh + 1, 2 * ow + 1]
            t01, t23 = _beats(a1, a0), _beats(a3, a2)
            t = ((~t23 & ~t01 & _beats(a2, a0)) | (~t23 & t01 & _beats(a2, a1))
                 | (t23 & ~t01 & _beats(a3, a0)) | (t23 & t01 & _beats(a3, a1)))
            k = np.int32(t) * (2 + np.int32(t23)) + np.int32(~t) * np.int32(t01)
            oc[oh, ow] = xc[2 * oh + (k >> 1), 2 * ow + (k & 1)]
            ac[oh, ow] = k


@njit(inline="always")
def _maxpool2x2_passes(f, W, m, b, m2, k2, oc, ac):
    """The same over a channel's flat plane f (H*W,) in two long loops, so that short rows too
    run as vector code: each pixel against the one below it (m, b: the winner and its window
    row, 0 or 2), then each such winner against its right neighbour (m2, k2: the window's max
    and its index, the lower index on a tie); both loops also compute pairs that straddle two
    windows, which are never read. Then out[oh, ow] = m2[oh*W + ow]."""
    for i in range(m.size):
        t = _beats(f[i + W], f[i])
        m[i] = f[i + W] if t else f[i]
        b[i] = np.int32(t) * 2
    for j in range(m2.size):
        left, right = m[2 * j], m[2 * j + 1]
        kl, kr = b[2 * j], b[2 * j + 1] + 1
        tie = (right == left) | ((right != right) & (left != left))
        t = _beats(right, left) | (tie & (kr < kl))
        m2[j] = right if t else left
        k2[j] = kr if t else kl
    for oh in range(oc.shape[0]):
        for ow in range(oc.shape[1]):
            oc[oh, ow] = m2[oh * W + ow]
            ac[oh, ow] = k2[oh * W + ow]


@njit(**JIT)
def _maxpool2x2_fwd(lo, hi, x, out, arg):
    """The common case, kernel 2, stride 2, no padding, unrolled: 15x faster than the general loop.
    Output rows of 32 or more LLVM vectorises (the selects become vector blends). Shorter rows it
    runs as scalar code whose selects it turns into branches, which real data mispredicts (a
    28x28 map: 3.4 ms on random values, 0.5 ms on constant ones); rows of 8 to 31 outputs take
    the two flat passes (1.7-1.8x faster than the tournament on 16x16 to 48x48 maps), shorter
    ones the tournament, which has no branch either."""
    W, OW = x.shape[3], out.shape[3]
    n1 = (2 * out.shape[2] - 1) * W if 8 <= OW < 32 else 0          # the passes' scratch
    m, b = np.empty(n1, x.dtype), np.empty(n1, np.int32)
    m2, k2 = np.empty(n1 // 2, x.dtype), np.empty(n1 // 2, np.int32)
    for n in range(lo, hi):
        for c in range(x.shape[1]):
            if OW >= 32:
                _maxpool2x2_selects(x[n, c], out[n, c], arg[n, c])
            elif OW >= 8:
                _maxpool2x2_passes(x[n, c].reshape(-1), W, m, b, m2, k2, out[n, c], arg[n, c])
            else:
                _maxpool2x2_tournament(x[n, c], out[n, c], arg[n, c])


@njit(**JIT)
def _maxpool2x2_bwd(lo, hi, dout, arg, dx):
    """Windows do not overlap: each window's two rows of dx are zeroed, then dout written at its
    max (a last odd row or column of dx, outside every window, is zeroed first). Without a
    branch per input: choosing between dout and zero for each of the four took 2-5x longer on
    real data, where the max's position is unpredictable."""
    C, OH, OW = dout.shape[1:]
    zero = dx.dtype.type(0)
    for n in range(lo, hi):
        if dx.shape[2] % 2 or dx.shape[3] % 2:
            dx[n] = 0
        for c in range(C):
            dxc, gc, kc = dx[n, c], dout[n, c], arg[n, c]
            for oh in range(OH):
                for w in range(2 * OW):
                    dxc[2 * oh, w] = zero
                    dxc[2 * oh + 1, w] = zero
                for ow in range(OW):
                    k = kc[oh, ow]
                    dxc[2 * oh + (k >> 1), 2 * ow + (k & 1)] = gc[oh, ow]


def _is_2x2(kernel, stride, padding):
    return kernel == stride == (2, 2) and padding == (0, 0)


def maxpool2d_forward(x, kernel, stride, padding, relu=False):
    """x (N, C, H, W) -> out (N, C, OH, OW), cache. Padding counts as -inf; ties go to the first;
    with relu, then max(out, 0) (see the reference)."""
    (KH, KW), (sh, sw), (ph, pw) = kernel, stride, padding
    N, C, H, W = x.shape
    OH, OW = out_size(H, KH, sh, ph), out_size(W, KW, sw, pw)
    x = np.ascontiguousarray(x)
    out = np.empty((N, C, OH, OW), dtype=x.dtype)
    arg = np.empty((N, C, OH, OW), dtype=np.int32)                  # index of the max inside its window
    if _is_2x2(kernel, stride, padding):
        parallel_for(_maxpool2x2_fwd, N, x, out, arg, work=x.size)
    else:
        parallel_for(_maxpool_fwd, N, x, KH, KW, sh, sw, ph, pw, out, arg, work=x.size)
    if relu:
        out, _ = relu_forward(out)
    return out, (x.shape, arg, kernel, stride, padding, out if relu else None)


def maxpool2d_backward(dout, cache):
    """dout (N, C, OH, OW) -> dx (N, C, H, W)."""
    xshape, arg, kernel, (sh, sw), (ph, pw), relu_out = cache
    dout = np.ascontiguousarray(dout) if relu_out is None else relu_backward(dout, relu_out)
    dx = np.empty(xshape, dtype=dout.dtype)
    if _is_2x2(kernel, (sh, sw), (ph, pw)):
        parallel_for(_maxpool2x2_bwd, xshape[0], dout, arg, dx, work=dx.size)
    else:
        parallel_for(_maxpool_bwd, xshape[0], dout, arg, kernel[1], sh, sw, ph, pw, dx, work=dx.size)
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
