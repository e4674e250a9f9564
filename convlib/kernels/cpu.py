"""Numba CPU kernels: the same names, signatures and results as ``reference.py``.

Convolution is im2col + one big matrix product (NumPy's BLAS):

    cols  = im2col(x)            # (C*KH*KW, N*OH*OW)  one column per output pixel
    out2  = w2 @ cols            # (F, N*OH*OW)        w2 = w reshaped to (F, C*KH*KW)
    out   = out2 -> NCHW + bias  # (N, F, OH, OW)

and its backward is the same three steps transposed (dw = dout2 @ cols.T,
dcols = w2.T @ dout2, dx = col2im(dcols)). The loops that move data (im2col, col2im,
pooling) are ``@njit(parallel=True)`` with ``prange`` over independent outputs only:
every iteration writes its own slice, so there are no races.
"""
import numpy as np
from numba import njit, prange

from .reference import (  # NumPy already runs these at memory speed: no Numba twin needed
    dropout_backward, dropout_forward, leaky_relu_backward, leaky_relu_forward,
    linear_backward, linear_forward, log_softmax, out_size, relu_backward, relu_forward,
    sigmoid_backward, sigmoid_forward, softmax_cross_entropy, tanh_backward, tanh_forward)

__all__ = [
    "conv2d_forward", "conv2d_backward", "maxpool2d_forward", "maxpool2d_backward",
    "avgpool2d_forward", "avgpool2d_backward", "linear_forward", "linear_backward",
    "relu_forward", "relu_backward", "leaky_relu_forward", "leaky_relu_backward",
    "sigmoid_forward", "sigmoid_backward", "tanh_forward", "tanh_backward",
    "dropout_forward", "dropout_backward", "log_softmax", "softmax_cross_entropy", "out_size"]

JIT = dict(cache=True, nogil=True)


# ---------------------------------------------------------------- convolution
@njit(parallel=True, **JIT)
def _im2col(x, KH, KW, sh, sw, ph, pw, OH, OW, cols):
    """x (N, C, H, W) -> cols (C*KH*KW, N*OH*OW); zero where the window hangs over the edge."""
    N, C, H, W = x.shape
    for r in prange(C * KH * KW):                     # one row of cols per (c, i, j)
        c, i, j = r // (KH * KW), (r // KW) % KH, r % KW
        for n in range(N):
            base = n * OH * OW
            for oh in range(OH):
                h = oh * sh - ph + i
                row_ok = 0 <= h < H
                for ow in range(OW):
                    w = ow * sw - pw + j
                    if row_ok and 0 <= w < W:
                        cols[r, base + oh * OW + ow] = x[n, c, h, w]
                    else:
                        cols[r, base + oh * OW + ow] = 0


@njit(parallel=True, **JIT)
def _col2im(dcols, KH, KW, sh, sw, ph, pw, OH, OW, dx):
    """dcols (C*KH*KW, N*OH*OW) -> dx (N, C, H, W), summing where windows overlap."""
    N, C, H, W = dx.shape
    for nc in prange(N * C):                          # each (n, c) plane is written by one thread
        n, c = nc // C, nc % C
        dx[n, c] = 0
        base = n * OH * OW
        for i in range(KH):
            for j in range(KW):
                r = (c * KH + i) * KW + j
                for oh in range(OH):
                    h = oh * sh - ph + i
                    if 0 <= h < H:
                        for ow in range(OW):
                            w = ow * sw - pw + j
                            if 0 <= w < W:
                                dx[n, c, h, w] += dcols[r, base + oh * OW + ow]


@njit(parallel=True, **JIT)
def _to_nchw(out2, b, N, out):
    """out2 (F, N*P) + b (F,) -> out (N, F, P)."""
    F, P = out.shape[1], out.shape[2]
    for nf in prange(N * F):
        n, f = nf // F, nf % F
        bf = b[f]
        for p in range(P):
            out[n, f, p] = out2[f, n * P + p] + bf


@njit(parallel=True, **JIT)
def _from_nchw(dout, dout2, db):
    """dout (N, F, P) -> dout2 (F, N*P), and db (F,) = the sum over N and P."""
    N, F, P = dout.shape
    for f in prange(F):
        s = 0.0
        for n in range(N):
            for p in range(P):
                v = dout[n, f, p]
                dout2[f, n * P + p] = v
                s += v
        db[f] = s


def conv2d_forward(x, w, b, stride, padding):
    """x (N, C, H, W), w (F, C, KH, KW), b (F,) or None -> out (N, F, OH, OW), cache."""
    (sh, sw), (ph, pw) = stride, padding
    N, C, H, W = x.shape
    F, _, KH, KW = w.shape
    OH, OW = out_size(H, KH, sh, ph), out_size(W, KW, sw, pw)
    cols = np.empty((C * KH * KW, N * OH * OW), dtype=x.dtype)      # (C*KH*KW, N*OH*OW)
    _im2col(np.ascontiguousarray(x), KH, KW, sh, sw, ph, pw, OH, OW, cols)
    out2 = w.reshape(F, -1) @ cols                                  # (F, N*OH*OW)
    out = np.empty((N, F, OH * OW), dtype=x.dtype)                  # (N, F, OH*OW)
    _to_nchw(out2, b if b is not None else np.zeros(F, x.dtype), N, out)
    return out.reshape(N, F, OH, OW), (x.shape, cols, w, b is not None, stride, padding)


def conv2d_backward(dout, cache):
    """dout (N, F, OH, OW) -> dx (N, C, H, W), dw (F, C, KH, KW), db (F,) or None."""
    xshape, cols, w, has_bias, (sh, sw), (ph, pw) = cache
    N, F, OH, OW = dout.shape
    KH, KW = w.shape[2:]
    dout2 = np.empty((F, N * OH * OW), dtype=dout.dtype)            # (F, N*OH*OW)
    db = np.empty(F, dtype=dout.dtype)
    _from_nchw(np.ascontiguousarray(dout).reshape(N, F, OH * OW), dout2, db)
    dw = (dout2 @ cols.T).reshape(w.shape)                          # (F, C, KH, KW)
    dcols = w.reshape(F, -1).T @ dout2                              # (C*KH*KW, N*OH*OW)
    dx = np.empty(xshape, dtype=dout.dtype)
    _col2im(dcols, KH, KW, sh, sw, ph, pw, OH, OW, dx)
    return dx, dw, (db if has_bias else None)


# ---------------------------------------------------------------- pooling
@njit(parallel=True, **JIT)
def _maxpool_fwd(x, KH, KW, sh, sw, ph, pw, out, arg):
    """out[n, c, oh, ow] = first maximum of its window; arg = its flat index h*W + w."""
    N, C, H, W = x.shape
    OH, OW = out.shape[2], out.shape[3]
    for nc in prange(N * C):
        n, c = nc // C, nc % C
        for oh in range(OH):
            for ow in range(OW):
                best, k = x[n, c, 0, 0], -1
                for i in range(KH):
                    h = oh * sh - ph + i
                    if 0 <= h < H:
                        for j in range(KW):
                            w = ow * sw - pw + j
                            if 0 <= w < W and (k < 0 or x[n, c, h, w] > best):
                                best, k = x[n, c, h, w], h * W + w
                out[n, c, oh, ow] = best
                arg[n, c, oh, ow] = k


@njit(parallel=True, **JIT)
def _maxpool_bwd(dout, arg, dx):
    N, C, OH, OW = dout.shape
    W = dx.shape[3]
    for nc in prange(N * C):
        n, c = nc // C, nc % C
        dx[n, c] = 0
        for oh in range(OH):
            for ow in range(OW):
                k = arg[n, c, oh, ow]
                dx[n, c, k // W, k % W] += dout[n, c, oh, ow]


def maxpool2d_forward(x, kernel, stride, padding):
    """x (N, C, H, W) -> out (N, C, OH, OW), cache. Padding counts as -inf; ties go to the first."""
    (KH, KW), (sh, sw), (ph, pw) = kernel, stride, padding
    N, C, H, W = x.shape
    OH, OW = out_size(H, KH, sh, ph), out_size(W, KW, sw, pw)
    out = np.empty((N, C, OH, OW), dtype=x.dtype)
    arg = np.empty((N, C, OH, OW), dtype=np.int32)                  # flat index into the H*W plane
    _maxpool_fwd(np.ascontiguousarray(x), KH, KW, sh, sw, ph, pw, out, arg)
    return out, (x.shape, arg)


def maxpool2d_backward(dout, cache):
    """dout (N, C, OH, OW) -> dx (N, C, H, W)."""
    xshape, arg = cache
    dx = np.empty(xshape, dtype=dout.dtype)
    _maxpool_bwd(np.ascontiguousarray(dout), arg, dx)
    return dx


@njit(parallel=True, **JIT)
def _avgpool(x, KH, KW, sh, sw, ph, pw, out, forward):
    """forward: x (N,C,H,W) -> out (N,C,OH,OW). backward: x is dout, out is dx (roles swap)."""
    if forward:
        N, C, H, W = x.shape
        OH, OW = out.shape[2], out.shape[3]
    else:
        N, C, H, W = out.shape
        OH, OW = x.shape[2], x.shape[3]
    scale = 1.0 / (KH * KW)
    for nc in prange(N * C):
        n, c = nc // C, nc % C
        if not forward:
            out[n, c] = 0
        for oh in range(OH):
            for ow in range(OW):
                s = 0.0
                g = x[n, c, oh, ow] * scale if not forward else 0.0
                for i in range(KH):
                    h = oh * sh - ph + i
                    if 0 <= h < H:
                        for j in range(KW):
                            w = ow * sw - pw + j
                            if 0 <= w < W:
                                if forward:
                                    s += x[n, c, h, w]
                                else:
                                    out[n, c, h, w] += g
                if forward:
                    out[n, c, oh, ow] = s * scale


def avgpool2d_forward(x, kernel, stride, padding):
    """x (N, C, H, W) -> out (N, C, OH, OW); zero padding counts in the divisor KH*KW."""
    (KH, KW), (sh, sw), (ph, pw) = kernel, stride, padding
    N, C, H, W = x.shape
    out = np.empty((N, C, out_size(H, KH, sh, ph), out_size(W, KW, sw, pw)), dtype=x.dtype)
    _avgpool(np.ascontiguousarray(x), KH, KW, sh, sw, ph, pw, out, True)
    return out, (x.shape, kernel, stride, padding)


def avgpool2d_backward(dout, cache):
    """dout (N, C, OH, OW) -> dx (N, C, H, W)."""
    xshape, (KH, KW), (sh, sw), (ph, pw) = cache
    dx = np.empty(xshape, dtype=dout.dtype)
    _avgpool(np.ascontiguousarray(dout), KH, KW, sh, sw, ph, pw, dx, False)
    return dx
