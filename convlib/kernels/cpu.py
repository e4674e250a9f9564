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
import ctypes
import os
import threading
from concurrent.futures import ThreadPoolExecutor

import numba
import numpy as np
from numba import njit, prange
from threadpoolctl import threadpool_limits

from .reference import (  # NumPy already runs these at memory speed: no Numba twin needed
    accumulate, adam_step, all_finite, dropout_backward, dropout_forward, leaky_relu_backward,
    leaky_relu_forward, log_softmax, out_size, sgd_step,
    sigmoid_backward, sigmoid_forward, softmax, softmax_cross_entropy, tanh_backward,
    tanh_forward, zero_, zeros_like)

__all__ = [
    "conv2d_forward", "conv2d_backward", "maxpool2d_forward", "maxpool2d_backward",
    "avgpool2d_forward", "avgpool2d_backward", "linear_forward", "linear_backward",
    "relu_forward", "relu_backward", "leaky_relu_forward", "leaky_relu_backward",
    "sigmoid_forward", "sigmoid_backward", "tanh_forward", "tanh_backward",
    "dropout_forward", "dropout_backward", "batchnorm_forward", "batchnorm_backward", "log_softmax",
    "softmax", "softmax_cross_entropy", "all_finite", "out_size", "zeros_like", "zero_", "accumulate",
    "sgd_step", "adam_step"]

JIT = dict(cache=True, nogil=True)


# ---------------------------------------------------------------- threads and matrix products
# Thread policy (measured in benchmarks/README.md). Two pools would fight for the same cores:
# idle OpenBLAS workers and idle OpenMP workers (Numba's prange) both spin for a while after
# their work, stealing the cores from whatever runs next. So:
#  - BLAS runs one thread per call; convlib splits each big product into column blocks that
#    run at once on a small pool of Python threads (NumPy releases the GIL inside BLAS);
#  - Numba's OpenMP workers wait passively (OMP_WAIT_POLICY=PASSIVE, set only while Numba
#    starts its pool, below, unless the user chose a policy);
#  - both use THREADS threads, one per core, and never run at the same time.
def _start_numba_pool():
    """Start Numba's thread pool now with passive waiting, then restore the environment so other
    OpenMP runtimes in the process (PyTorch's, say) keep their defaults. Returns its size."""
    if "OMP_WAIT_POLICY" in os.environ:
        return numba.get_num_threads()
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
    try:
        return numba.get_num_threads()                              # launches the pool
    finally:
        del os.environ["OMP_WAIT_POLICY"]


def _keep_freed_memory():
    """glibc hands freed blocks above its mmap threshold back to the OS and trims the heap top,
    so each training step page-faults its activations (a few MB each) back in: 10-20% of a
    Fashion-MNIST step (benchmarks/README.md). Keep blocks up to 32 MB in the heap and up to
    256 MB of free heap, unless the user set glibc's MALLOC_* variables; a no-op off glibc."""
    if any(k.startswith("MALLOC_") for k in os.environ):
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 32 << 20)                                  # M_MMAP_THRESHOLD
        libc.mallopt(-1, 256 << 20)                                 # M_TRIM_THRESHOLD
    except (OSError, AttributeError):
        pass


_keep_freed_memory()
THREADS = max(1, min(_start_numba_pool(), os.cpu_count() or 1))
_pool = ThreadPoolExecutor(THREADS, thread_name_prefix="convlib") if THREADS > 1 else None
threadpool_limits(1, user_api="blas")


def _blocks(n):
    step = -(-n // THREADS)
    return [(i, min(n, i + step)) for i in range(0, n, step)]


def matmul(a, b, out=None):
    """a (M, K) @ b (K, N) -> out (M, N), the N columns split across the thread pool when the
    product is big enough (2^21 multiply-adds, about 50 microseconds on one core) to pay for it."""
    if out is None:
        out = np.empty((a.shape[0], b.shape[1]), dtype=np.result_type(a, b))
    if _pool is None or b.shape[1] < 64 or a.shape[0] * a.shape[1] * b.shape[1] < 2 ** 21:
        return np.matmul(a, b, out=out)
    jobs = [_pool.submit(np.matmul, a, b[:, i:j], out=out[:, i:j]) for i, j in _blocks(b.shape[1])]
    for job in jobs:
        job.result()
    return out


def matmul_nt(a, b):
    """a (M, K) @ b (N, K).T -> (M, N), the K reduction split across the pool and summed."""
    if _pool is None or a.shape[1] < 2048:
        return a @ b.T
    jobs = [_pool.submit(lambda i, j: a[:, i:j] @ b[:, i:j].T, i, j) for i, j in _blocks(a.shape[1])]
    out = jobs[0].result()
    for job in jobs[1:]:
        out += job.result()
    return out


# ---------------------------------------------------------------- convolution
@njit(inline="always")
def _valid(o_count, s, p, k, size):
    """Outputs o in [lo, hi) whose input index o*s - p + k lies inside [0, size)."""
    lo = max(0, -(-(p - k) // s))
    hi = min(o_count, (size - 1 + p - k) // s + 1)
    return lo, max(lo, hi)


@njit(parallel=True, **JIT)
def _im2col(x, KH, KW, sh, sw, ph, pw, OH, OW, cols):
    """x (N, C, H, W) -> cols (C*KH*KW, N*OH*OW); zero where the window hangs over the edge."""
    N, C, H, W = x.shape
    for r in prange(C * KH * KW):                     # one row of cols per (c, i, j)
        c, i, j = r // (KH * KW), (r // KW) % KH, r % KW
        olo, ohi = _valid(OH, sh, ph, i, H)
        wlo, whi = _valid(OW, sw, pw, j, W)
        w0 = wlo * sw - pw + j                        # first input column read
        for n in range(N):
            base = n * OH * OW
            cols[r, base:base + olo * OW] = 0         # rows above and below the image
            cols[r, base + ohi * OW:base + OH * OW] = 0
            for oh in range(olo, ohi):
                row = base + oh * OW
                cols[r, row:row + wlo] = 0            # left and right margins
                cols[r, row + whi:row + OW] = 0
                cols[r, row + wlo:row + whi] = x[n, c, oh * sh - ph + i, w0:w0 + (whi - wlo - 1) * sw + 1:sw]


@njit(parallel=True, **JIT)
def _col2im(dcols, KH, KW, sh, sw, ph, pw, OH, OW, dx):
    """dcols (C*KH*KW, N*OH*OW) -> dx (N, C, H, W), summing where windows overlap."""
    N, C, H, W = dx.shape
    for nc in prange(N * C):                          # each (n, c) plane is written by one thread
        n, c = nc // C, nc % C
        for h in range(H):
            for w in range(W):
                dx[n, c, h, w] = 0
        for i in range(KH):
            olo, ohi = _valid(OH, sh, ph, i, H)
            for j in range(KW):
                wlo, whi = _valid(OW, sw, pw, j, W)
                r = (c * KH + i) * KW + j
                for oh in range(olo, ohi):
                    h = oh * sh - ph + i
                    row = (n * OH + oh) * OW
                    for ow in range(wlo, whi):
                        dx[n, c, h, ow * sw - pw + j] += dcols[r, row + ow]


@njit(parallel=True, **JIT)
def _to_nchw(out2, b, N, out):
    """out2 (F, N*P) + b (F,) -> out (N, F, P)."""
    F, P = out.shape[1], out.shape[2]
    for nf in prange(N * F):
        n, f = nf // F, nf % F
        out[n, f, :] = out2[f, n * P:(n + 1) * P] + b[f]


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


_local = threading.local()


def workspace(name, shape, dtype):
    """A scratch array reused from call to call (one per name, dtype and thread), grown when a
    bigger one is asked for. The column matrices of every conv share it, as in Caffe: they are
    the largest arrays of a step and live only inside one kernel call."""
    key = (name, np.dtype(dtype).str)
    size = int(np.prod(shape))
    buf = getattr(_local, "buffers", {}).get(key)
    if buf is None or buf.size < size:
        buf = np.empty(size, dtype=dtype)
        _local.__dict__.setdefault("buffers", {})[key] = buf
    return buf[:size].reshape(shape)


def _cols(x, KH, KW, stride, padding, OH, OW):
    """im2col of x into the shared workspace -> (C*KH*KW, N*OH*OW)."""
    (sh, sw), (ph, pw) = stride, padding
    N, C = x.shape[:2]
    cols = workspace("cols", (C * KH * KW, N * OH * OW), x.dtype)
    _im2col(x, KH, KW, sh, sw, ph, pw, OH, OW, cols)
    return cols


def conv2d_forward(x, w, b, stride, padding):
    """x (N, C, H, W), w (F, C, KH, KW), b (F,) or None -> out (N, F, OH, OW), cache.

    The cache keeps x, not its 9x larger column matrix: backward rebuilds the columns (an
    im2col costs about a tenth of the step) so a training step's memory stays near PyTorch's.
    """
    N, C, H, W = x.shape
    F, _, KH, KW = w.shape
    OH, OW = out_size(H, KH, stride[0], padding[0]), out_size(W, KW, stride[1], padding[1])
    x = np.ascontiguousarray(x)
    cols = _cols(x, KH, KW, stride, padding, OH, OW)                # (C*KH*KW, N*OH*OW)
    out2 = matmul(w.reshape(F, -1), cols, workspace("out2", (F, N * OH * OW), x.dtype))  # (F, N*OH*OW)
    out = np.empty((N, F, OH * OW), dtype=x.dtype)                  # (N, F, OH*OW)
    _to_nchw(out2, b if b is not None else np.zeros(F, x.dtype), N, out)
    return out.reshape(N, F, OH, OW), (x, w, b is not None, stride, padding)


def conv2d_backward(dout, cache, need_dx=True):
    """dout (N, F, OH, OW) -> dx (N, C, H, W) or None, dw (F, C, KH, KW), db (F,) or None."""
    x, w, has_bias, (sh, sw), (ph, pw) = cache
    N, F, OH, OW = dout.shape
    KH, KW = w.shape[2:]
    dout2 = workspace("out2", (F, N * OH * OW), dout.dtype)         # (F, N*OH*OW)
    db = np.empty(F, dtype=dout.dtype)
    _from_nchw(np.ascontiguousarray(dout).reshape(N, F, OH * OW), dout2, db)
    cols = _cols(x, KH, KW, (sh, sw), (ph, pw), OH, OW)             # (C*KH*KW, N*OH*OW)
    dw = matmul_nt(dout2, cols).reshape(w.shape)                    # (F, C, KH, KW)
    if not need_dx:
        return None, dw, (db if has_bias else None)
    dcols = matmul(np.ascontiguousarray(w.reshape(F, -1).T), dout2, cols)  # reuses the columns' memory
    dx = np.empty(x.shape, dtype=dout.dtype)
    _col2im(dcols, KH, KW, sh, sw, ph, pw, OH, OW, dx)
    return dx, dw, (db if has_bias else None)


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
@njit(parallel=True, **JIT)
def _maxpool_fwd(x, KH, KW, sh, sw, ph, pw, out, arg):
    """out[n, c, oh, ow] = first maximum of its window; arg = its index i*KW + j in the window."""
    N, C, H, W = x.shape
    OH, OW = out.shape[2], out.shape[3]
    for nc in prange(N * C):
        n, c = nc // C, nc % C
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
                        if v > best:
                            best, k = v, i * KW + j
                out[n, c, oh, ow] = best
                arg[n, c, oh, ow] = k


@njit(parallel=True, **JIT)
def _maxpool_bwd(dout, arg, KW, sh, sw, ph, pw, dx):
    N, C, OH, OW = dout.shape
    for nc in prange(N * C):
        n, c = nc // C, nc % C
        dx[n, c] = 0
        for oh in range(OH):
            for ow in range(OW):
                k = arg[n, c, oh, ow]
                dx[n, c, oh * sh - ph + k // KW, ow * sw - pw + k % KW] += dout[n, c, oh, ow]


@njit(parallel=True, **JIT)
def _maxpool2x2_fwd(x, out, arg):
    """The common case, kernel 2, stride 2, no padding, unrolled: 15x faster than the general loop."""
    N, C = x.shape[0], x.shape[1]
    OH, OW = out.shape[2], out.shape[3]
    for nc in prange(N * C):
        n, c = nc // C, nc % C
        for oh in range(OH):
            for ow in range(OW):
                best, k = x[n, c, 2 * oh, 2 * ow], 0
                v = x[n, c, 2 * oh, 2 * ow + 1]
                if v > best:
                    best, k = v, 1
                v = x[n, c, 2 * oh + 1, 2 * ow]
                if v > best:
                    best, k = v, 2
                v = x[n, c, 2 * oh + 1, 2 * ow + 1]
                if v > best:
                    best, k = v, 3
                out[n, c, oh, ow] = best
                arg[n, c, oh, ow] = k


@njit(parallel=True, **JIT)
def _maxpool2x2_bwd(dout, arg, dx):
    N, C, OH, OW = dout.shape
    for nc in prange(N * C):
        n, c = nc // C, nc % C
        dx[n, c] = 0
        for oh in range(OH):
            for ow in range(OW):
                k = arg[n, c, oh, ow]
                dx[n, c, 2 * oh + k // 2, 2 * ow + k % 2] = dout[n, c, oh, ow]


def maxpool2d_forward(x, kernel, stride, padding):
    """x (N, C, H, W) -> out (N, C, OH, OW), cache. Padding counts as -inf; ties go to the first."""
    (KH, KW), (sh, sw), (ph, pw) = kernel, stride, padding
    N, C, H, W = x.shape
    OH, OW = out_size(H, KH, sh, ph), out_size(W, KW, sw, pw)
    out = np.empty((N, C, OH, OW), dtype=x.dtype)
    arg = np.empty((N, C, OH, OW), dtype=np.int32)                  # index of the max inside its window
    if kernel == stride == (2, 2) and padding == (0, 0):
        _maxpool2x2_fwd(np.ascontiguousarray(x), out, arg)
    else:
        _maxpool_fwd(np.ascontiguousarray(x), KH, KW, sh, sw, ph, pw, out, arg)
    return out, (x.shape, arg, kernel, stride, padding)


def maxpool2d_backward(dout, cache):
    """dout (N, C, OH, OW) -> dx (N, C, H, W)."""
    xshape, arg, (KH, KW), (sh, sw), (ph, pw) = cache
    dx = np.empty(xshape, dtype=dout.dtype)
    if (KH, KW) == (sh, sw) == (2, 2) and (ph, pw) == (0, 0):
        _maxpool2x2_bwd(np.ascontiguousarray(dout), arg, dx)
    else:
        _maxpool_bwd(np.ascontiguousarray(dout), arg, KW, sh, sw, ph, pw, dx)
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


# ---------------------------------------------------------------- ReLU (the most frequent layer)
@njit(parallel=True, **JIT)
def _relu(x, out):
    for i in prange(x.size):
        v = x[i]
        out[i] = 0 if v <= 0 else v                   # NaN stays NaN, as in np.maximum


@njit(parallel=True, **JIT)
def _relu_bwd(dout, out, dx):
    for i in prange(dout.size):
        dx[i] = dout[i] if out[i] > 0 else 0


def relu_forward(x):
    """x (...) -> max(x, 0), cache (the output)."""
    out = np.empty_like(x)
    _relu(np.ascontiguousarray(x).reshape(-1), out.reshape(-1))
    return out, out


def relu_backward(dout, out):
    """The gradient passes where the output is positive."""
    dx = np.empty_like(out)
    _relu_bwd(np.ascontiguousarray(dout).reshape(-1), out.reshape(-1), dx.reshape(-1))
    return dx


# ---------------------------------------------------------------- batch normalisation
@njit(parallel=True, **JIT)
def _bn_stats(x, mean, var):
    """x (N, C, L) -> per-channel mean and biased variance (two passes, float64 sums)."""
    N, C, L = x.shape
    for c in prange(C):
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


@njit(parallel=True, **JIT)
def _bn_apply(x, scale, shift, out):
    """out = x * scale[c] + shift[c] for x (N, C, L)."""
    N, C, L = x.shape
    for nc in prange(N * C):
        n, c = nc // C, nc % C
        for i in range(L):
            out[n, c, i] = x[n, c, i] * scale[c] + shift[c]


@njit(parallel=True, **JIT)
def _bn_sums(dout, x, mean, inv_std, dbeta, dgamma):
    """dbeta[c] = sum dout, dgamma[c] = sum dout * xhat over (N, L)."""
    N, C, L = x.shape
    for c in prange(C):
        sb, sg = 0.0, 0.0
        for n in range(N):
            for i in range(L):
                g = dout[n, c, i]
                sb += g
                sg += g * (x[n, c, i] - mean[c]) * inv_std[c]
        dbeta[c], dgamma[c] = sb, sg


@njit(parallel=True, **JIT)
def _bn_dx(dout, x, mean, inv_std, gamma, dbeta, dgamma, dx):
    """dx = gamma * inv_std * (dout - (dbeta + xhat * dgamma) / m), m = N * L."""
    N, C, L = x.shape
    m = N * L
    for nc in prange(N * C):
        n, c = nc // C, nc % C
        k = gamma[c] * inv_std[c]
        for i in range(L):
            xhat = (x[n, c, i] - mean[c]) * inv_std[c]
            dx[n, c, i] = k * (dout[n, c, i] - (dbeta[c] + xhat * dgamma[c]) / m)


def batchnorm_forward(x, gamma, beta, running_mean, running_var, momentum, eps, training):
    """x (N, C) or (N, C, H, W) -> out like x, cache; semantics as in reference.py."""
    N, C = x.shape[:2]
    x3 = np.ascontiguousarray(x).reshape(N, C, -1)                  # (N, C, H*W)
    if training:
        mean, var = np.empty(C), np.empty(C)
        _bn_stats(x3, mean, var)
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
    _bn_apply(x3, scale, shift, out)
    return out.reshape(x.shape), (x3, mean, inv_std, gamma, training)


def batchnorm_backward(dout, cache):
    """dout like x -> dx like x, dgamma (C,), dbeta (C,)."""
    x3, mean, inv_std, gamma, training = cache
    d3 = np.ascontiguousarray(dout).reshape(x3.shape)
    C = x3.shape[1]
    dbeta, dgamma = np.empty(C), np.empty(C)
    _bn_sums(d3, x3, mean, inv_std, dbeta, dgamma)
    dx = np.empty_like(d3)
    if training:
        _bn_dx(d3, x3, mean, inv_std, gamma.astype(np.float64), dbeta, dgamma, dx)
    else:                                                           # statistics are constants
        _bn_apply(d3, (gamma * inv_std).astype(dout.dtype), np.zeros(C, dout.dtype), dx)
    return dx.reshape(dout.shape), dgamma.astype(dout.dtype), dbeta.astype(dout.dtype)
