"""Batch normalisation on the CPU: per-channel sums in float64, then one fused pass per element.
Maths: ``reference.batchnorm_forward`` / ``batchnorm_backward``."""
import numpy as np
from numba import njit

from .pool import _beats, maxpool2d_backward, maxpool2d_forward
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


def _normalisation(x3, gamma, beta, running_mean, running_var, momentum, eps, training):
    """Of x3 (N, C, L): the statistics (the batch's, with the running ones updated, or the running
    ones) as (mean (C,) float64, inv_std (C,) float64, scale (C,), shift (C,)) with out = x *
    scale + shift."""
    C = x3.shape[1]
    if training:
        mean, var = np.empty(C), np.empty(C)
        parallel_for(_bn_stats, C, x3, mean, var, work=x3.size)
        m = x3.shape[0] * x3.shape[2]
        running_mean *= 1 - momentum
        running_mean += momentum * mean
        running_var *= 1 - momentum
        running_var += momentum * var * (m / max(m - 1, 1))
    else:
        mean, var = running_mean.astype(np.float64), running_var.astype(np.float64)
    inv_std = 1 / np.sqrt(var + eps)                                # (C,) float64
    scale = (gamma * inv_std).astype(x3.dtype)
    shift = (beta - mean * gamma * inv_std).astype(x3.dtype)
    return mean, inv_std, scale, shift


def batchnorm_forward(x, gamma, beta, running_mean, running_var, momentum, eps, training):
    """x (N, C) or (N, C, H, W) -> out like x, cache; semantics as in reference.py."""
    N, C = x.shape[:2]
    x3 = np.ascontiguousarray(x).reshape(N, C, -1)                  # (N, C, H*W)
    mean, inv_std, scale, shift = _normalisation(x3, gamma, beta, running_mean, running_var, momentum, eps,
                                                 training)
    out = np.empty_like(x3)
    parallel_for(_bn_apply, N, x3, scale, shift, out, work=x.size)
    return out.reshape(x.shape), (x3, mean, inv_std, gamma, training)


def _dx_coefficients(x3, mean, inv_std, gamma, training, dbeta, dgamma, dtype):
    """(a, b, d, mean) (C,) in ``dtype``: dx = a * dout + b * (x - mean) + d. Training: dx = k *
    (dout - (dbeta + xhat * dgamma) / m), k = gamma * inv_std, m = N * L; eval: dx = k * dout."""
    k, m = gamma * inv_std, x3.size // x3.shape[1]                  # (C,) float64
    if not training:                                                # statistics are constants
        return [v.astype(dtype) for v in (k, 0 * k, 0 * k, mean)]
    return [v.astype(dtype) for v in (k, -k * inv_std * dgamma / m, -k * dbeta / m, mean)]


def batchnorm_backward(dout, cache):
    """dout like x -> dx like x, dgamma (C,), dbeta (C,)."""
    x3, mean, inv_std, gamma, training = cache
    d3 = np.ascontiguousarray(dout).reshape(x3.shape)
    N, C = x3.shape[:2]
    dbeta, dgamma = np.empty(C), np.empty(C)
    parallel_for(_bn_sums, C, d3, x3, mean, inv_std, dbeta, dgamma, work=d3.size)
    dx = np.empty_like(d3)
    if training:
        a, b, d, mu = _dx_coefficients(x3, mean, inv_std, gamma, training, dbeta, dgamma, dout.dtype)
        parallel_for(_bn_dx, N, d3, x3, mu, a, b, d, dx, work=d3.size)
    else:                                                           # statistics are constants
        parallel_for(_bn_apply, N, d3, (gamma * inv_std).astype(dout.dtype), np.zeros(C, dout.dtype), dx,
                     work=d3.size)
    return dx.reshape(dout.shape), dgamma.astype(dout.dtype), dbeta.astype(dout.dtype)


# ---------------------------------------------------------------- batch norm, ReLU and a 2x2 max-pool together
# In training the statistics need the whole map first; then one pass normalises each 2x2 window,
# pools it and applies the ReLU, and the normalised map is never stored: forward keeps each
# window's maximum's place and its x. Backward sums dbeta and dgamma over the windows alone (the
# only places the pooled gradient reaches) and writes dx in one pass. Each plane (H, W even) is
# walked flat, by pairs of neighbours in a row, then by pairs of pairs a row apart: loops over a
# whole plane vectorise where rows of 7-14 windows did not (2-3x slower), and every value is read
# before a select picks one (a branch on random data costs 10 ns). float32 results are those of
# the three ops in turn on this backend, bit for bit; float64 sums run in another order.
@njit(**JIT)
def _bn_pool(lo, hi, x, scale, shift, out, xmax, arg):
    """For the images [lo, hi) of x (N, C, H, W), H and W even: out[n, c] (H/2, W/2) = relu(2x2
    max-pool(x[n, c] * scale[c] + shift[c])), each window's first maximum (the first NaN) as
    pool.py's; xmax the value of x there, arg its place in the window (0-3 in row order, held in
    x's dtype: as bytes, the conversion cost more than the rest of the pass). xmax and arg are
    (N, C, H/2, W): window (oh, ow) at [oh, ow], where the window pass over pairs writes it
    (the second half of each row holds what it wrote for the odd rows)."""
    zero, one, two = x.dtype.type(0), x.dtype.type(1), x.dtype.type(2)
    H, R = x.shape[2], x.shape[3] // 2                              # R pairs in a row
    pm, pv, pk = np.empty(H * R, x.dtype), np.empty(H * R, x.dtype), np.empty(H * R, x.dtype)
    tm = np.empty(H * R, x.dtype)
    for n in range(lo, hi):
        for c in range(x.shape[1]):
            xf, s, t = x[n, c].ravel(), scale[c], shift[c]
            for q in range(H * R):                                  # pair q: the places 2q, 2q + 1
                x0, x1 = xf[2 * q], xf[2 * q + 1]
                later = _beats(x1 * s + t, x0 * s + t)
                pm[q] = x1 * s + t if later else x0 * s + t         # its maximum, x there, which one
                pv[q] = x1 if later else x0
                pk[q] = one if later else zero
            tv, tk = xmax[n, c].ravel(), arg[n, c].ravel()          # (H*R,): the windows' in the even rows
            for q in range(H * R - R):                              # pairs q, q + R: a window where q's row is even
                mt, mb, vt, vb, kt, kb = pm[q], pm[q + R], pv[q], pv[q + R], pk[q], pk[q + R] + two
                later = _beats(mb, mt)
                v = mb if later else mt
                tm[q] = zero if v <= 0 else v
                tv[q] = vb if later else vt
                tk[q] = kb if later else kt
            for oh in range(H // 2):                                # the windows' rows: even rows of pairs
                o, q0 = out[n, c, oh], 2 * oh * R
                for ow in range(R):
                    o[ow] = tm[q0 + ow]


@njit(**REDUCE)
def _bn_pool_sums(lo, hi, dout, out, xmax, mean, inv_std, dbeta, dgamma):
    """For the channels [lo, hi): g = dout * (out > 0), the ReLU's mask, reaches each window's
    maximum, where x is xmax; dbeta[c] = sum of g, dgamma[c] = sum of g * xhat there (float64)."""
    zero = dout.dtype.type(0)
    for c in range(lo, hi):
        mu, k = mean[c], inv_std[c]
        sb, sg = 0.0, 0.0
        for n in range(dout.shape[0]):
            for oh in range(dout.shape[2]):
                g, o, xm = dout[n, c, oh], out[n, c, oh], xmax[n, c, oh]
                for ow in range(dout.shape[3]):
                    gi = g[ow] * dout.dtype.type(o[ow] > zero)
                    sb += gi
                    sg += gi * (xm[ow] - mu) * k
        dbeta[c], dgamma[c] = sb, sg


@njit(**JIT)
def _bn_pool_dx(lo, hi, dout, out, arg, x, mean, a, b, d, training, dx):
    """dx = a[c] * dy + b[c] * (x - mean[c]) + d[c] (``_bn_dx``'s formula; a[c] * dy unless training)
    for the images [lo, hi), dy the pooled gradient dout * (out > 0) at each window's maximum
    arg (0-3), zero elsewhere."""
    C, H, W = x.shape[1], x.shape[2], x.shape[3]
    zero = x.dtype.type(0)
    dy = np.empty(H * W, x.dtype)                                   # (H*W,): one plane's dy, flat
    for n in range(lo, hi):
        for c in range(C):
            for i in range(H * W):
                dy[i] = zero
            for oh in range(H // 2):
                g, o, k = dout[n, c, oh], out[n, c, oh], arg[n, c, oh]
                for ow in range(W // 2):
                    i = int(k[ow])
                    dy[(2 * oh + (i >> 1)) * W + 2 * ow + (i & 1)] = g[ow] * x.dtype.type(o[ow] > zero)
            ac, bc, dc, mc, xf, df = a[c], b[c], d[c], mean[c], x[n, c].ravel(), dx[n, c].ravel()
            if training:
                for i in range(H * W):
                    df[i] = ac * dy[i] + bc * (xf[i] - mc) + dc
            else:                                                   # statistics are constants
                for i in range(H * W):
                    df[i] = ac * dy[i]


def batchnorm_pool_forward(x, gamma, beta, running_mean, running_var, momentum, eps, training, pool):
    """relu(maxpool2d(batchnorm(x))), x (N, C, H, W), pool = (kernel, stride, padding) -> out,
    cache: for a 2x2 pool of stride 2 on even H and W, one pass after the statistics; else the ops
    in turn."""
    if tuple(map(tuple, pool)) != ((2, 2), (2, 2), (0, 0)) or x.shape[2] % 2 or x.shape[3] % 2:
        y, bn_cache = batchnorm_forward(x, gamma, beta, running_mean, running_var, momentum, eps, training)
        out, pool_cache = maxpool2d_forward(y, *pool, relu=True)
        return out, ("composed", bn_cache, pool_cache)
    N, C, H, W = x.shape
    x = np.ascontiguousarray(x)
    x3 = x.reshape(N, C, H * W)                                     # (N, C, H*W)
    mean, inv_std, scale, shift = _normalisation(x3, gamma, beta, running_mean, running_var, momentum, eps,
                                                 training)
    out = np.empty((N, C, H // 2, W // 2), x.dtype)                 # (N, C, PH, PW)
    xmax, arg = np.empty((2, N, C, H // 2, W), x.dtype)             # (N, C, PH, 2*PW): see _bn_pool
    parallel_for(_bn_pool, N, x, scale, shift, out, xmax, arg, work=x.size)
    return out, ("fused", (x3, mean, inv_std, gamma, training), out, xmax, arg, x)


def batchnorm_pool_backward(dout, cache):
    """dout (N, C, PH, PW) -> dx (N, C, H, W), dgamma (C,), dbeta (C,)."""
    if cache[0] == "composed":
        return batchnorm_backward(maxpool2d_backward(dout, cache[2]), cache[1])
    _, (x3, mean, inv_std, gamma, training), out, xmax, arg, x = cache
    N, C = x.shape[:2]
    dout = np.ascontiguousarray(dout)
    dbeta, dgamma = np.empty(C), np.empty(C)
    parallel_for(_bn_pool_sums, C, dout, out, xmax, mean, inv_std, dbeta, dgamma, work=out.size)
    a, b, d, mu = _dx_coefficients(x3, mean, inv_std, gamma, training, dbeta, dgamma, dout.dtype)
    dx = np.empty_like(x)
    parallel_for(_bn_pool_dx, N, dout, out, arg, x, mu, a, b, d, training, dx, work=x3.size)
    return dx, dgamma.astype(dout.dtype), dbeta.astype(dout.dtype)
