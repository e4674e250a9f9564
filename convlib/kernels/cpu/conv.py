"""Convolution and fully connected products on the CPU: im2col + BLAS, per small group of images.

    cols   = im2col(x[n])         # (C*KH*KW + 1, OH*OW)  one column per output pixel, last row ones
    out[n] = wb @ cols            # (F, OH*OW)            wb = [w reshaped to (F, C*KH*KW) | b]

so the product writes NCHW directly and adds the bias through the row of ones. A small group of
images goes per call (about 1 MB of columns: one 64x64 image, several 14x14 ones), so the
columns stay in the core's L2 cache from im2col to the product; the whole batch's column matrix
would be 9x the input and go through main memory twice. Backward is the same per image,
transposed: dwb.T += cols @ dout[n].T (its last row is the bias gradient),
dcols = w2.T @ dout[n], dx[n] = col2im(dcols). Two paths take the 3x3 stride-1 convolutions
instead: Winograd (winograd.py) where both sides have 16 or more channels, and a direct loop
where the input has 1 to 3 (below). Maths: ``reference.conv2d_forward``.
"""
import numpy as np
from numba import njit
from numba import uint64 as u

from ..reference import out_size
from . import winograd
from .pool import _beats, maxpool2d_backward, maxpool2d_forward
from .relu import relu_backward, relu_forward
from .threads import JIT, parallel_for, workspace


# ---------------------------------------------------------------- matrix products
def _product_rows(lo, hi, a, b, out):
    np.matmul(a[lo:hi], b, out=out[lo:hi])


def _product_columns(lo, hi, a, b, out):
    np.matmul(a, b[:, lo:hi], out=out[:, lo:hi])


def matmul(a, b):
    """a (M, K) @ b (K, N) -> (M, N), split over the threads where it has 8M multiply-adds or
    more (below that, handing out the shares costs more than they save: a Linear(1024, 64) at
    batch 32 has 2M), by the columns of b where N >= M, else by the rows of a: each thread then
    packs only its share of b (docs/performance.md has the times)."""
    out = np.empty((a.shape[0], b.shape[1]), dtype=np.result_type(a, b))
    share, n = (_product_columns, b.shape[1]) if b.shape[1] >= a.shape[0] else (_product_rows, a.shape[0])
    parallel_for(share, n, a, b, out, work=a.shape[0] * a.shape[1] * b.shape[1] // 256)
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


# ---------------------------------------------------------------- direct 3x3, few input channels
# With C*9 + 1 rows im2col's product is too thin for BLAS's speed (the first layer of an RGB net:
# 28 rows), and the columns are 9x the image. The direct loop reads the padded image instead:
# laid out flat, output pixel (oh, ow) sits at position p = oh*WP + ow of the padded plane (WP
# its width, rounded up to even) and its 3x3 window at p + i*WP + j, so one loop over p, in which
# LLVM vectorises eighteen multiply-adds (two filters'), covers the whole plane (the two or three
# columns past each row's end are computed and dropped).
DIRECT_PIECES = 8    # the direct loop's forward: up to 8 pieces of 4 images or more (threads.parallel_for)


def direct_applies(w_shape, stride):
    """Whether the direct loop runs a convolution of weights (F, C, KH, KW) with this stride:
    3x3, stride 1, at most 3 input channels (grey or RGB images; from 4 on im2col measured as
    fast). Backward's weight and bias gradients come from it too; the input gradient, rarely
    asked of such a layer (a net's first), from im2col's path."""
    F, C, KH, KW = w_shape
    return (KH, KW) == (3, 3) and tuple(stride) == (1, 1) and C <= 3


@njit(inline="always")
def _taps(x, p, WP, k, m, a, b):
    """The 3x3 window at flat position p of a padded plane x (HP*WP,) times two filters' weights k
    and m (9 values each), added to a and b. Two filters share each of the nine reads of x: one
    filter's loop made ten reads (and a store) for nine multiply-adds, two make eleven for
    eighteen (docs/performance.md has the times)."""
    r1, r2 = u(WP), u(2 * WP)
    x0, x1, x2 = x[p], x[p + u(1)], x[p + u(2)]
    x3, x4, x5 = x[p + r1], x[p + r1 + u(1)], x[p + r1 + u(2)]
    x6, x7, x8 = x[p + r2], x[p + r2 + u(1)], x[p + r2 + u(2)]
    return (a + k[0] * x0 + k[1] * x1 + k[2] * x2 + k[3] * x3 + k[4] * x4 + k[5] * x5 + k[6] * x6 + k[7] * x7
            + k[8] * x8,
            b + m[0] * x0 + m[1] * x1 + m[2] * x2 + m[3] * x3 + m[4] * x4 + m[5] * x5 + m[6] * x6 + m[7] * x7
            + m[8] * x8)


@njit(inline="always")
def _planes(xp, w, b, f, g, WP, L, acc):
    """acc[0] and acc[1] (each HP*WP,) = b[f] + the 3x3 convolution of the padded image xp (C, HP,
    WP) with the filter w[f] (C, 3, 3), and the same for g, at the flat positions p < L (the
    plane's outputs, and the gaps)."""
    a0, a1 = acc[0], acc[1]
    for c in range(xp.shape[0]):
        kc, mc, xc = w[f, c].ravel(), w[g, c].ravel(), xp[c].ravel()
        k = (kc[0], kc[1], kc[2], kc[3], kc[4], kc[5], kc[6], kc[7], kc[8])   # held, not re-read
        m = (mc[0], mc[1], mc[2], mc[3], mc[4], mc[5], mc[6], mc[7], mc[8])
        if c == 0:
            bf, bg = b[f], b[g]
            for p in range(L):
                a0[p], a1[p] = _taps(xc, p, WP, k, m, bf, bg)
        else:
            for p in range(L):
                a0[p], a1[p] = _taps(xc, p, WP, k, m, a0[p], a1[p])


@njit(inline="always")
def _plane_grads(xp, d, WP, L, dwf):
    """dwf (C, 9) += for each channel c the sums over p < L of d[p] times the padded xp[c] at
    p + i*WP + j, j + 3*i the column: the gradient of one filter's weights from one image's
    output gradient d, laid out flat as ``_planes`` lays out its output."""
    zero = d.dtype.type(0)
    for c in range(xp.shape[0]):
        xc, r1, r2 = xp[c].ravel(), u(WP), u(2 * WP)
        s0 = s1 = s2 = s3 = s4 = s5 = s6 = s7 = s8 = zero
        for p in range(L):
            v = d[p]
            s0 += v * xc[p]
            s1 += v * xc[p + u(1)]
            s2 += v * xc[p + u(2)]
            s3 += v * xc[p + r1]
            s4 += v * xc[p + r1 + u(1)]
            s5 += v * xc[p + r1 + u(2)]
            s6 += v * xc[p + r2]
            s7 += v * xc[p + r2 + u(1)]
            s8 += v * xc[p + r2 + u(2)]
        g = dwf[c]
        g[0] += s0
        g[1] += s1
        g[2] += s2
        g[3] += s3
        g[4] += s4
        g[5] += s5
        g[6] += s6
        g[7] += s7
        g[8] += s8


@njit(fastmath={"contract", "reassoc"}, **JIT)
def _direct_images(lo, hi, x, w, b, ph, pw, out, pooled, arg):
    """For n in [lo, hi), with x (N, C, H, W), w (F, C, 3, 3), b (F,), stride 1: unless pooled,
    out[n] (F, OH, OW) = conv3x3(x[n]) + b; else out[n] = relu(maxpool2x2(that)) (F, OH//2, OW//2),
    so that the convolution's output never leaves the cache, and unless arg is None (eval mode),
    arg[n] (uint8) each window's first maximum, 0-3 in row order (``pool.py``'s rules: the first
    NaN wins)."""
    F = w.shape[0]
    C, H, W = x.shape[1], x.shape[2], x.shape[3]
    HP, WP = H + 2 * ph, W + 2 * pw
    OH, OW = HP - 2, WP - 2
    WP += WP % 2                                                    # rows of even length: pairs of places align
    xp = np.empty((C, HP, WP), x.dtype)                             # (C, HP, WP): x[n], zero-padded
    planes = np.empty((2, HP * WP), x.dtype)                        # (2, HP*WP): two output planes, flat
    L = u((OH - 1) * WP + OW)                                       # the positions that hold outputs
    QH, QW, R = OH // 2, OW // 2, u(WP // 2)                        # windows down and across; pairs in a row
    pairs = np.empty((2, QH * WP), x.dtype)                         # (2, QH*WP): max of each pair, which won
    tops = np.empty((2, QH * WP), x.dtype)                          # (2, QH*WP): each window's max, its place
    zero, one, two = x.dtype.type(0), x.dtype.type(1), x.dtype.type(2)
    for n in range(lo, hi):
        _pad(x[n], ph, pw, xp)
        for f in range(F):
            if f % 2 == 0:                                          # filters f and f + 1 (f again if F is odd)
                _planes(xp, w, b, f, min(f + 1, F - 1), WP, L, planes)
            acc = planes[f % 2]
            if not pooled:
                for oh in range(OH):
                    dst, row = out[n, f, oh], u(oh * WP)
                    for ow in range(u(OW)):
                        dst[ow] = acc[row + ow]
            elif arg is None:                                       # eval: the maxima alone, half the passes
                pm = pairs[0]
                for q in range(u(QH * WP)):                         # the pair of places 2q, 2q + 1 (row 2q // WP)
                    a0, a1 = acc[2 * q], acc[2 * q + u(1)]
                    pm[q] = a1 if _beats(a1, a0) else a0
                for qh in range(QH):                                # a window's top pair, and the pair below
                    o, k = out[n, f, qh], u(qh * WP)                # it, R = WP/2 further on
                    for qw in range(u(QW)):
                        top, below = pm[k + qw], pm[k + qw + R]
                        v = below if _beats(below, top) else top
                        o[qw] = zero if v <= 0 else v               # the ReLU, as pool.py's
            else:                                                   # flat passes of two or three arrays, which
                pm, pk, tm, tk = pairs[0], pairs[1], tops[0], tops[1]   # LLVM vectorises (rows of 10-14 it did not)
                for q in range(u(QH * WP)):                         # the pair of places 2q, 2q + 1 (row 2q // WP)
                    a0, a1 = acc[2 * q], acc[2 * q + u(1)]
                    later = _beats(a1, a0)
                    pm[q], pk[q] = (a1, one) if later else (a0, zero)
                for q in range(u(QH * WP) - R):                     # q = qh*WP + qw: a window's top pair; the
                    later = _beats(pm[q + R], pm[q])                # pair below it is R = WP/2 further on
                    tm[q], tk[q] = (pm[q + R], two + pk[q + R]) if later else (pm[q], pk[q])
                for qh in range(QH):
                    o, a, k = out[n, f, qh], arg[n, f, qh], u(qh * WP)
                    for qw in range(u(QW)):
                        v = tm[k + qw]
                        o[qw] = zero if v <= 0 else v               # the ReLU, as pool.py's
                        a[qw] = np.uint8(tk[k + qw])


@njit(fastmath={"contract", "reassoc"}, **JIT)
def _direct_grad_images(lo, hi, x, dout, ph, pw, out, arg):
    """For n in [lo, hi): returns dw (F, C, 3, 3) and db (F,) summed over those images, in float64
    (each plane's sums in the input's type). With out and arg None, dout (N, F, OH, OW) is the
    convolution's; else the gradient of ``_direct_images``' pooled out (N, F, OH//2, OW//2), sent
    to each window's maximum where out > 0 (the ReLU's mask)."""
    F = dout.shape[1]
    C, H, W = x.shape[1], x.shape[2], x.shape[3]
    HP, WP = H + 2 * ph, W + 2 * pw
    OH, OW = HP - 2, WP - 2
    xp = np.empty((C, HP, WP), x.dtype)                             # (C, HP, WP): x[n], zero-padded
    d = np.zeros(HP * WP, x.dtype)                                  # (HP*WP,): dL/d conv[n, f], flat, zero in the gaps
    dw = np.zeros((F, C, 9))                                        # (F, C, 3*3)
    db = np.zeros(F)
    L = u((OH - 1) * WP + OW)
    zero = x.dtype.type(0)
    for n in range(lo, hi):
        _pad(x[n], ph, pw, xp)
        for f in range(F):
            if arg is None:
                for oh in range(OH):
                    src, row = dout[n, f, oh], u(oh * WP)
                    for ow in range(u(OW)):
                        d[row + ow] = src[ow]
            else:                                                   # zeros, then each window's value at its maximum
                for p in range(L):
                    d[p] = zero
                for qh in range(OH // 2):
                    g, o, a = dout[n, f, qh], out[n, f, qh], arg[n, f, qh]
                    for qw in range(OW // 2):
                        k = a[qw]
                        d[u((2 * qh + (k >> 1)) * WP + 2 * qw + (k & 1))] = g[qw] * x.dtype.type(o[qw] > zero)
            s = zero
            for p in range(L):
                s += d[p]
            db[f] += s
            _plane_grads(xp, d, WP, L, dw[f])
    return dw.reshape(F, C, 3, 3), db


def conv2d_forward(x, w, b, stride, padding):
    """x (N, C, H, W), w (F, C, KH, KW), b (F,) or None -> out (N, F, OH, OW), cache.

    The cache keeps x, not the column matrices: backward rebuilds each image's columns (cheap,
    in cache), so a training step's memory stays near PyTorch's.
    """
    return _forward(x, w, b, stride, padding, False)


def _forward(x, w, b, stride, padding, relu):
    """``conv2d_forward``, and with relu (``conv2d_pool_forward`` without a pool) max(out, 0),
    which Winograd applies as it writes out, the other paths after."""
    x, cache = _conv_cache(x, w, b, stride, padding)
    N, F, wb, (*_, OH, OW) = x.shape[0], w.shape[0], cache[2], cache[4]
    out = np.empty((N, F, OH, OW), dtype=x.dtype)
    bias = wb[:, -1].copy()                                         # (F,)
    if winograd.applies(w.shape, stride, padding):                  # 3x3, stride 1: F(4x4, 3x3)
        winograd.conv2d(x, winograd.transformed(w.astype(x.dtype, copy=False)), bias, tuple(padding), out,
                        relu=relu)
        return out, cache
    if direct_applies(w.shape, stride):                             # 3x3, stride 1, C <= 3
        parallel_for(_direct_images, N, x, np.ascontiguousarray(w, dtype=x.dtype), bias, *padding, out, False,
                     None, pieces=min(DIRECT_PIECES, N // 4))
    else:
        parallel_for(_conv_images, N, x, wb, cache[4], out.reshape(N, F, OH * OW))
    return (relu_forward(out)[0] if relu else out), cache


def _conv_cache(x, w, b, stride, padding):
    """x made contiguous, and the cache of ``conv2d_forward``: (x, w's shape, wb = [w | b] (F,
    C*KH*KW + 1), whether there is a bias, the geometry (KH, KW, SH, SW, PH, PW, OH, OW))."""
    N, C, H, W = x.shape
    F, _, KH, KW = w.shape
    OH, OW = out_size(H, KH, stride[0], padding[0]), out_size(W, KW, stride[1], padding[1])
    K = C * KH * KW
    x = np.ascontiguousarray(x)
    wb = np.empty((F, K + 1), dtype=x.dtype)                        # (F, C*KH*KW + 1) = [w | b]
    wb[:, :K] = w.reshape(F, K)
    wb[:, K] = b if b is not None else 0
    return x, (x, w.shape, wb, b is not None, (KH, KW, *stride, *padding, OH, OW))


def conv2d_backward(dout, cache, need_dx=True):
    """dout (N, F, OH, OW) -> dx (N, C, H, W) or None, dw (F, C, KH, KW), db (F,) or None."""
    x, wshape, wb, has_bias, geometry = cache
    N, F, OH, OW = dout.shape
    K = wb.shape[1] - 1
    dout = np.ascontiguousarray(dout)
    dx = np.empty(x.shape, dtype=dout.dtype) if need_dx else None
    padding = geometry[4:6]
    if winograd.applies(wshape, geometry[2:4], padding):             # 3x3, stride 1: F(4x4, 3x3)
        dw, db = winograd.backward(x, dout, wb[:, :K].reshape(wshape), padding, dx)
        return dx, dw, (db if has_bias else None)
    direct = direct_applies(wshape, geometry[2:4])                  # 3x3, stride 1, C <= 3
    if direct:
        dw, db = _direct_grads(x, dout, padding, has_bias, None, None)
        if not need_dx:
            return None, dw, db
    dout3 = dout.reshape(N, F, OH * OW)                             # (N, F, OH*OW)
    w2t = np.ascontiguousarray(wb[:, :K].T)                         # (C*KH*KW, F)
    dwb_t = sum(parallel_for(_conv_grad_images, N, x, w2t, dout3, geometry, dx))  # (C*KH*KW + 1, F)
    if direct:                                                      # rare (not a first layer): dx from im2col,
        return dx, dw, db                                           # dw as without dx, from the direct loop
    dw = np.ascontiguousarray(dwb_t[:K].T).reshape(wshape)          # (F, C, KH, KW)
    return dx, dw, (dwb_t[K].copy() if has_bias else None)


def _direct_grads(x, dout, padding, has_bias, out, arg):
    """dw (F, C, 3, 3) and db (F,) or None from ``_direct_grad_images`` on all threads."""
    parts = parallel_for(_direct_grad_images, x.shape[0], x, dout, *padding, out, arg)
    db = sum(db for _, db in parts).astype(dout.dtype) if has_bias else None
    return sum(dw for dw, _ in parts).astype(dout.dtype), db


# ---------------------------------------------------------------- conv, ReLU and max-pool together
def conv2d_pool_forward(x, w, b, stride, padding, pool, training=True):
    """relu(maxpool(conv2d(x))), pool = (kernel, stride, padding) -> out, cache. For a 2x2 pool of
    stride 2, two paths do the three in one pass, so that the convolution's output never goes
    through memory: the direct loop (1-3 input channels) and Winograd. In training each window's
    maximum's place is kept (a byte), and backward spreads the pooled gradient back from it; in
    eval mode (training False) only x, and backward computes the convolution again (a saliency
    map's rare case). Elsewhere the two ops run one after the other. With pool None, relu(conv2d(x)):
    Winograd applies the ReLU as it writes its output, the other paths after it."""
    if pool is None:
        out, cache = _forward(x, w, b, stride, padding, True)
        return out, ("relu", cache, out)
    is_2x2 = pool == ((2, 2), (2, 2), (0, 0))
    direct = direct_applies(w.shape, stride)
    if is_2x2 and (direct or winograd.applies(w.shape, stride, padding)):
        x, cache = _conv_cache(x, w, b, stride, padding)
        N, F, (OH, OW) = x.shape[0], w.shape[0], cache[4][6:]
        out = np.empty((N, F, OH // 2, OW // 2), dtype=x.dtype)
        bias = cache[2][:, -1].copy()                               # (F,)
        arg = np.empty(out.shape, dtype=np.uint8) if training else None   # each window's first maximum, 0-3
        if direct:
            parallel_for(_direct_images, N, x, np.ascontiguousarray(w, dtype=x.dtype), bias, *padding, out, True,
                         arg, pieces=min(DIRECT_PIECES, N // 4))
        else:
            winograd.conv2d(x, winograd.transformed(w.astype(x.dtype, copy=False)), bias, tuple(padding), None, out,
                            arg)
        return out, (("fused", cache, out, arg) if training else ("again", cache, pool))
    out, cache = conv2d_forward(x, w, b, stride, padding)
    out, pool_cache = maxpool2d_forward(out, *pool, relu=True)
    return out, ("composed", cache, pool_cache)


def conv2d_pool_backward(dout, cache, need_dx=True):
    """dout (N, F, PH, PW), the pooled output's gradient -> dx or None, dw, db or None."""
    kind, conv_cache, *pool_cache = cache
    if kind == "relu":                                              # no pool: the ReLU's mask, its output
        return conv2d_backward(relu_backward(dout, pool_cache[0]), conv_cache, need_dx)
    if kind == "again":                                             # eval mode: the conv anew from x
        x, wshape, wb, has_bias, geometry = conv_cache
        K = wb.shape[1] - 1
        full, _ = conv2d_forward(x, wb[:, :K].reshape(wshape), wb[:, K] if has_bias else None, geometry[2:4],
                                 geometry[4:6])
        pool_cache = [maxpool2d_forward(full, *pool_cache[0], relu=True)[1]]
    if kind != "fused":
        return conv2d_backward(maxpool2d_backward(dout, *pool_cache), conv_cache, need_dx)
    x, wshape, _, has_bias, geometry = conv_cache
    out, arg = pool_cache
    dout = np.ascontiguousarray(dout)
    if not need_dx and direct_applies(wshape, geometry[2:4]):      # the gradients in one pass too
        return (None,) + _direct_grads(x, dout, geometry[4:6], has_bias, out, arg)
    d = np.empty((*dout.shape[:2], *geometry[6:]), dout.dtype)     # (N, F, OH, OW): the conv's gradient
    parallel_for(_unpool, dout.shape[0], dout, out, arg, d)
    return conv2d_backward(d, conv_cache, need_dx)


@njit(**JIT)
def _unpool(lo, hi, dout, out, arg, d):
    """For n in [lo, hi): d[n] (F, OH, OW), the gradient of the conv under the fused pass, from its
    pooled out's dout[n] (F, OH//2, OW//2): each value at its window's maximum arg (0-3 in row
    order) where out > 0 (the ReLU's mask), zero elsewhere (a last odd row or column too)."""
    zero = d.dtype.type(0)
    for n in range(lo, hi):
        for f in range(d.shape[1]):
            g, o, a, df = dout[n, f], out[n, f], arg[n, f], d[n, f]
            for h in range(df.shape[0]):
                for w in range(df.shape[1]):
                    df[h, w] = zero
            for i in range(g.shape[0]):
                for j in range(g.shape[1]):
                    k = a[i, j]
                    df[2 * i + (k >> 1), 2 * j + (k & 1)] = g[i, j] * d.dtype.type(o[i, j] > zero)


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
