"""Batch normalisation on the CPU: per-channel sums in float64, then one fused pass per element.
Maths: ``reference.batchnorm_forward`` / ``batchnorm_backward``."""
import numpy as np
from numba import njit

from .threads import JIT, parallel_for

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
