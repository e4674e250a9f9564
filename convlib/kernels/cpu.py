"""Numba CPU kernels for the ops of the kernel contract that gain from them: the same names,
signatures and results as ``reference.py``.

Convolution is im2col + a matrix product (BLAS), per image:

    cols   = im2col(x[n])         # (C*KH*KW + 1, OH*OW)  one column per output pixel, last row ones
    out[n] = wb @ cols            # (F, OH*OW)            wb = [w reshaped to (F, C*KH*KW) | b]

so the product writes NCHW directly and adds the bias through the row of ones. A small group of
images goes per call (about 1 MB of columns: one 64x64 image, several 14x14 ones), so the
columns stay in the core's L2 cache from im2col to the product; the whole batch's column matrix
would be 9x the input and go through main memory twice. Backward is the same per image,
transposed: dwb.T += cols @ dout[n].T (its last row is the bias gradient),
dcols = w2.T @ dout[n], dx[n] = col2im(dcols).

Every kernel is a plain single-threaded ``@njit(nogil=True)`` loop over a range ``[lo, hi)``
of images (or channels, or elements); ``threads.parallel_for`` gives each thread one share.
See ``convlib/threads.py`` for why there is no OpenMP here.
"""
import numpy as np
from numba import njit
from numba import uint64 as u

from ..threads import parallel_for, workspace
from .reference import out_size

# The ops of the kernel contract (kernels/__init__.py) this backend speeds up; the others
# (dropout, sigmoid, tanh, leaky ReLU, the loss, optimizer updates) are the reference's, whose
# NumPy code already runs at memory speed.
__all__ = [
    "conv2d_forward", "conv2d_backward", "maxpool2d_forward", "maxpool2d_backward",
    "avgpool2d_forward", "avgpool2d_backward", "linear_forward", "linear_backward",
    "relu_forward", "relu_backward", "batchnorm_forward", "batchnorm_backward"]

JIT = dict(cache=True, nogil=True)


# ---------------------------------------------------------------- matrix products
def _product_rows(lo, hi, a, b, out):
    np.matmul(a[lo:hi], b, out=out[lo:hi])


def matmul(a, b):
    """a (M, K) @ b (K, N) -> (M, N), the rows of the product split over the threads."""
    out = np.empty((a.shape[0], b.shape[1]), dtype=np.result_type(a, b))
    parallel_for(_product_rows, a.shape[0], a, b, out, work=a.shape[0] * a.shape[1] * b.shape[1] // 32)
    return out


# ---------------------------------------------------------------- convolution
# Index trap: Numba wraps a negative signed index around (x[-1] is the last element), which
# costs a compare and select per element and stops LLVM from vectorising a copy loop. The
# loops below index with unsigned integers (u) where the index is known to be >= 0, and read
# from a zero-padded copy of the image, so the inner loops have no bounds tests at all:
# im2col 3x faster on 64x64 maps, col2im 4.5x (1.2-1.6x on 14x14 and smaller).
@njit(**JIT)
def _pad(x, ph, pw, xp):
    """x (C, H, W) -> xp (C, H + 2*ph, W + 2*pw): x inside a border of zeros."""
    C, H, W = x.shape
    zero = x.dtype.type(0)                            # typed: a plain 0 would make each value a float64
    for c in range(C):
        for h in range(xp.shape[1]):
            dst = xp[c, h]
            if h < ph or h >= ph + H:
                for w in range(dst.shape[0]):
                    dst[w] = zero
            else:
                src = x[c, h - ph]
                for w in range(pw):
                    dst[w] = zero
                for w in range(W):
                    dst[u(w) + u(pw)] = src[w]
                for w in range(pw + W, dst.shape[0]):
                    dst[w] = zero


@njit(**JIT)
def _im2col(xp, KH, KW, sh, sw, OH, OW, cols):
    """xp (C, HP, WP), an image already padded -> cols (C*KH*KW + 1, OH*OW): row (c*KH + i)*KW + j
    holds, for each output pixel (oh, ow), xp[c, oh*sh + i, ow*sw + j]; the last row is ones,
    the bias's input."""
    C = xp.shape[0]
    for r in range(C * KH * KW):                      # one row of cols per (c, i, j)
        c, i, j = r // (KH * KW), (r // KW) % KH, r % KW
        dst = cols[r]
        for oh in range(OH):
            src, row = xp[c, oh * sh + i], u(oh * OW)
            for ow in range(u(OW)):
                dst[row + ow] = src[ow * u(sw) + u(j)]
    dst = cols[C * KH * KW]
    for p in range(OH * OW):
        dst[p] = 1


@njit(**JIT)
def _col2im(dcols, KH, KW, sh, sw, OH, OW, dxp):
    """dcols (C*KH*KW, OH*OW) -> dxp (C, HP, WP), summing where windows overlap: _im2col
    transposed, into a padded image (its border then dropped by _unpad)."""
    C = dxp.shape[0]
    dxp[:, :, :] = 0
    for r in range(C * KH * KW):
        c, i, j = r // (KH * KW), (r // KW) % KH, r % KW
        src = dcols[r]
        for oh in range(OH):
            dst, row = dxp[c, oh * sh + i], u(oh * OW)
            for ow in range(u(OW)):
                dst[ow * u(sw) + u(j)] += src[row + ow]


@njit(**JIT)
def _unpad(xp, ph, pw, x):
    """xp (C, H + 2*ph, W + 2*pw) -> x (C, H, W): the inside of the border."""
    C, H, W = x.shape
    for c in range(C):
        for h in range(H):
            src, dst = xp[c, h + ph], x[c, h]
            for w in range(W):
                dst[w] = src[u(w) + u(pw)]


@njit(**JIT)
def _im2col_images(x, n0, KH, KW, sh, sw, ph, pw, OH, OW, xp, cols):
    """Images n0, n0+1, ... of x (N, C, H, W) -> cols (group, C*KH*KW + 1, OH*OW), one per block."""
    for m in range(cols.shape[0]):
        _pad(x[n0 + m], ph, pw, xp)
        _im2col(xp, KH, KW, sh, sw, OH, OW, cols[m])


@njit(**JIT)
def _col2im_images(dcols, n0, KH, KW, sh, sw, ph, pw, OH, OW, dxp, dx):
    """dcols (group, C*KH*KW, OH*OW) -> images n0, n0+1, ... of dx (N, C, H, W)."""
    for m in range(dcols.shape[0]):
        _col2im(dcols[m], KH, KW, sh, sw, OH, OW, dxp)
        _unpad(dxp, ph, pw, dx[n0 + m])


def _group(rows, P):
    """How many images share one im2col call and one (stacked) product: enough for about 2**18
    column values (1 MB in float32), at least one. Each call from Python holds the GIL for a few
    microseconds, so with one image per call the threads queue for it on small maps. Measured on
    2 threads (2026-12-03), forward / backward ms, one image per call -> groups: a 16-to-32-channel
    conv at 14x14, batch 128, 4.4 / 10.3 -> 2.8 / 5.8; the reference net's first layer (3x64x64,
    batch 32, no input gradient) backward 4.6 -> 3.4; groups of 2**16 or 2**20 values measured
    no better."""
    return max(1, (1 << 18) // (rows * P))


def _padded(x, ph, pw):
    """This thread's scratch (C, H + 2*ph, W + 2*pw) for one padded image of x (N, C, H, W)."""
    _, C, H, W = x.shape
    return workspace("padded", (C, H + 2 * ph, W + 2 * pw), x.dtype)


def _conv_images(lo, hi, x, wb, geometry, out):
    """out[n] = wb @ im2col(x[n]) for the images n in [lo, hi), a group of images per call."""
    KH, KW, sh, sw, ph, pw, OH, OW = geometry
    g = _group(wb.shape[1], OH * OW)
    xp = _padded(x, ph, pw)                                         # (C, HP, WP)
    cols = workspace("cols", (g, wb.shape[1], OH * OW), x.dtype)   # (group, C*KH*KW + 1, OH*OW)
    for n0 in range(lo, hi, g):
        m = min(g, hi - n0)
        _im2col_images(x, n0, KH, KW, sh, sw, ph, pw, OH, OW, xp, cols[:m])
        np.matmul(wb, cols[:m], out=out[n0:n0 + m])                 # (group, F, OH*OW)


def _conv_grad_images(lo, hi, x, w2t, dout, geometry, dx):
    """For the images n in [lo, hi): returns the sum of im2col(x[n]) @ dout[n].T (C*KH*KW + 1, F),
    and writes dx[n] = col2im(w2t @ dout[n]) unless dx is None."""
    KH, KW, sh, sw, ph, pw, OH, OW = geometry
    K, F = w2t.shape
    g = _group(K + 1, OH * OW)
    xp = _padded(x, ph, pw)                                         # (C, HP, WP): x[n], then dx[n]
    cols = workspace("cols", (g, K + 1, OH * OW), x.dtype)         # (group, C*KH*KW + 1, OH*OW)
    dcols = workspace("dcols", (g, K, OH * OW), x.dtype) if dx is not None else None
    parts = np.empty((g, K + 1, F), dtype=x.dtype)
    dwb_t = np.zeros((K + 1, F), dtype=x.dtype)                     # (C*KH*KW + 1, F)
    for n0 in range(lo, hi, g):
        m = min(g, hi - n0)
        _im2col_images(x, n0, KH, KW, sh, sw, ph, pw, OH, OW, xp, cols[:m])
        # cols @ dout.T: 25-35% faster than dout @ cols.T
        np.matmul(cols[:m], dout[n0:n0 + m].transpose(0, 2, 1), out=parts[:m])  # (group, C*KH*KW + 1, F)
        dwb_t += parts[0] if m == 1 else parts[:m].sum(axis=0)
        if dx is not None:
            np.matmul(w2t, dout[n0:n0 + m], out=dcols[:m])          # (group, C*KH*KW, OH*OW)
            _col2im_images(dcols[:m], n0, KH, KW, sh, sw, ph, pw, OH, OW, xp, dx)
    return dwb_t


def conv2d_forward(x, w, b, stride, padding):
    """x (N, C, H, W), w (F, C, KH, KW), b (F,) or None -> out (N, F, OH, OW), cache.

    The cache keeps x, not the column matrices: backward rebuilds each image's columns (cheap,
    in cache), so a training step's memory stays near PyTorch's.
    """
    N, C, H, W = x.shape
    F, _, KH, KW = w.shape
    OH, OW = out_size(H, KH, stride[0], padding[0]), out_size(W, KW, stride[1], padding[1])
    K = C * KH * KW
    x = np.ascontiguousarray(x)
    wb = np.empty((F, K + 1), dtype=x.dtype)                        # (F, C*KH*KW + 1) = [w | b]
    wb[:, :K] = w.reshape(F, K)
    wb[:, K] = b if b is not None else 0
    geometry = (KH, KW, *stride, *padding, OH, OW)
    out = np.empty((N, F, OH * OW), dtype=x.dtype)                  # (N, F, OH*OW)
    parallel_for(_conv_images, N, x, wb, geometry, out)
    return out.reshape(N, F, OH, OW), (x, w.shape, wb, b is not None, geometry)


def conv2d_backward(dout, cache, need_dx=True):
    """dout (N, F, OH, OW) -> dx (N, C, H, W) or None, dw (F, C, KH, KW), db (F,) or None."""
    x, wshape, wb, has_bias, geometry = cache
    N, F, OH, OW = dout.shape
    K = wb.shape[1] - 1
    dout3 = np.ascontiguousarray(dout).reshape(N, F, OH * OW)       # (N, F, OH*OW)
    w2t = np.ascontiguousarray(wb[:, :K].T)                         # (C*KH*KW, F)
    dx = np.empty(x.shape, dtype=dout.dtype) if need_dx else None
    dwb_t = sum(parallel_for(_conv_grad_images, N, x, w2t, dout3, geometry, dx))  # (C*KH*KW + 1, F)
    dw = np.ascontiguousarray(dwb_t[:K].T).reshape(wshape)          # (F, C, KH, KW)
    return dx, dw, (dwb_t[K].copy() if has_bias else None)


# ---------------------------------------------------------------- fully connected
def linear_forward(x, w, b):
    """x (N, IN), w (OUT, IN), b (OUT,) or None -> out (N, OUT), cache; products on all cores."""
    out = matmul(x, w.T)                                            # (N, OUT)
    if b is not None:
        out += b
    return out, (x, w, b is not None)


def linear_backward(dout, cache, need_dx=True):
    """dout (N, OUT) -> dx (N, IN) or None, dw (OUT, IN), db (OUT,) or None."""
    x, w, has_bias = cache
    dx = matmul(dout, w) if need_dx else None                       # (N, IN)
    return dx, matmul(dout.T, x), (dout.sum(axis=0) if has_bias else None)


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


@njit(**JIT)
def _maxpool2x2_fwd(lo, hi, x, out, arg):
    """The common case, kernel 2, stride 2, no padding, unrolled: 15x faster than the general loop.
    Output rows of 32 or more LLVM vectorises (the selects become vector blends). Shorter rows it
    runs as scalar code whose selects it turns into branches, which real data mispredicts (a
    28x28 map: 3.4 ms on random values, 0.5 ms on constant ones), so those take the tournament,
    which has none: 2-2.3x faster than the selects on 14x14 to 32x32 maps, where on 64x64 maps
    the vectorised selects are 10x faster than the tournament."""
    for n in range(lo, hi):
        for c in range(x.shape[1]):
            if out.shape[3] >= 32:
                _maxpool2x2_selects(x[n, c], out[n, c], arg[n, c])
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


# ---------------------------------------------------------------- batch normalisation
# x is viewed as (N, C, L) (L = H*W, or 1 for BatchNorm1d). Statistics run over channels
# [lo, hi), elementwise passes over images [lo, hi). The two reductions may reassociate their
# float64 sums (fastmath "reassoc" only): LLVM then vectorises them instead of waiting on one
# add at a time, 3-4.5x faster on the Fashion-MNIST net's maps; the sums change by ~1e-14
# relative, and the float64 reference comparisons and gradient checks in the tests hold.
REDUCE = dict(JIT, fastmath={"reassoc"})


@njit(**REDUCE)
def _bn_stats(lo, hi, x, mean, var):
    """Per-channel mean and biased variance of x (N, C, L) (two passes, float64 sums)."""
    N, C, L = x.shape
    for c in range(lo, hi):
        s = 0.0
        for n in range(N):
            for i in range(L):
                s += x[n, c, i]
        mu = s / (N * L)
        q = 0.0
        for n in range(N):
            for i in range(L):
                d = x[n, c, i] - mu
                q += d * d
        mean[c], var[c] = mu, q / (N * L)


@njit(**JIT)
def _bn_apply(lo, hi, x, scale, shift, out):
    """out = x * scale[c] + shift[c] for x (N, C, L)."""
    C, L = x.shape[1:]
    for n in range(lo, hi):
        for c in range(C):
            for i in range(L):
                out[n, c, i] = x[n, c, i] * scale[c] + shift[c]


@njit(**REDUCE)
def _bn_sums(lo, hi, dout, x, mean, inv_std, dbeta, dgamma):
    """dbeta[c] = sum dout, dgamma[c] = sum dout * xhat over (N, L)."""
    N, C, L = x.shape
    for c in range(lo, hi):
        sb, sg = 0.0, 0.0
        for n in range(N):
            for i in range(L):
                g = dout[n, c, i]
                sb += g
                sg += g * (x[n, c, i] - mean[c]) * inv_std[c]
        dbeta[c], dgamma[c] = sb, sg


@njit(**JIT)
def _bn_dx(lo, hi, dout, x, mean, a, b, d, dx):
    """dx = a[c] * dout + b[c] * (x - mean[c]) + d[c], per-channel coefficients in x's dtype (the
    backward formula below, expanded in batchnorm_backward), so each element costs two FMAs."""
    C, L = x.shape[1:]
    for n in range(lo, hi):
        for c in range(C):
            for i in range(L):
                dx[n, c, i] = a[c] * dout[n, c, i] + b[c] * (x[n, c, i] - mean[c]) + d[c]


def batchnorm_forward(x, gamma, beta, running_mean, running_var, momentum, eps, training):
    """x (N, C) or (N, C, H, W) -> out like x, cache; semantics as in reference.py."""
    N, C = x.shape[:2]
    x3 = np.ascontiguousarray(x).reshape(N, C, -1)                  # (N, C, H*W)
    if training:
        mean, var = np.empty(C), np.empty(C)
        parallel_for(_bn_stats, C, x3, mean, var, work=x.size)
        m = x3.shape[0] * x3.shape[2]
        running_mean *= 1 - momentum
        running_mean += momentum * mean
        running_var *= 1 - momentum
        running_var += momentum * var * (m / max(m - 1, 1))
    else:
        mean, var = running_mean.astype(np.float64), running_var.astype(np.float64)
    inv_std = 1 / np.sqrt(var + eps)                                # (C,) float64
    scale = (gamma * inv_std).astype(x.dtype)
    shift = (beta - mean * gamma * inv_std).astype(x.dtype)
    out = np.empty_like(x3)
    parallel_for(_bn_apply, N, x3, scale, shift, out, work=x.size)
    return out.reshape(x.shape), (x3, mean, inv_std, gamma, training)


def batchnorm_backward(dout, cache):
    """dout like x -> dx like x, dgamma (C,), dbeta (C,)."""
    x3, mean, inv_std, gamma, training = cache
    d3 = np.ascontiguousarray(dout).reshape(x3.shape)
    N, C = x3.shape[:2]
    dbeta, dgamma = np.empty(C), np.empty(C)
    parallel_for(_bn_sums, C, d3, x3, mean, inv_std, dbeta, dgamma, work=d3.size)
    dx = np.empty_like(d3)
    if training:     # dx = k * (dout - (dbeta + xhat * dgamma) / m), k = gamma * inv_std, m = N * L
        k, m = gamma * inv_std, d3.size // C                        # (C,) float64
        coef = [v.astype(dout.dtype) for v in (k, -k * inv_std * dgamma / m, -k * dbeta / m, mean)]
        parallel_for(_bn_dx, N, d3, x3, coef[3], coef[0], coef[1], coef[2], dx, work=d3.size)
    else:                                                           # statistics are constants
        parallel_for(_bn_apply, N, d3, (gamma * inv_std).astype(dout.dtype), np.zeros(C, dout.dtype), dx,
                     work=d3.size)
    return dx.reshape(dout.shape), dgamma.astype(dout.dtype), dbeta.astype(dout.dtype)
