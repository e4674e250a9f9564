"""Plain NumPy kernels: every op of the kernel contract, declared here once (``@op``).

Each function is the readable maths of an op and the oracle the tests compare the fast backends
with; calling it runs the fastest implementation for where its first array lives (``cpu/``,
Numba, and ``cuda/``, numba.cuda, have the same names and signatures; ``kernels/__init__.py``
dispatches). Forward functions return ``(out, cache)``; backward functions take ``(dout, cache)``.
Shapes use N (batch), C (in channels), H, W (input height, width), F (filters),
KH, KW (kernel), OH, OW (output):

    OH = (H + 2 * PH - KH) // SH + 1        OW = (W + 2 * PW - KW) // SW + 1

Conv is cross-correlation (no kernel flip). Loops run over kernel offsets or output
positions only, with NumPy doing each slice, so the code reads like the maths and is
independent of the im2col formulation the fast kernels use.
"""
import numpy as np

from . import op


def out_size(size, k, s, p):
    """Output length of a sliding window: (size + 2p - k) // s + 1."""
    return (size + 2 * p - k) // s + 1


def _pad(x, ph, pw, value=0.0):
    return np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)), constant_values=value)


# ---------------------------------------------------------------- convolution
@op
def conv2d_forward(x, w, b, stride, padding):
    """x (N, C, H, W), w (F, C, KH, KW), b (F,) or None -> out (N, F, OH, OW), cache."""
    (sh, sw), (ph, pw) = stride, padding
    N, C, H, W = x.shape
    F, _, KH, KW = w.shape
    OH, OW = out_size(H, KH, sh, ph), out_size(W, KW, sw, pw)
    xp = _pad(x, ph, pw)                                            # (N, C, H+2PH, W+2PW)
    out = np.zeros((N, F, OH, OW), dtype=x.dtype)
    for i in range(KH):
        for j in range(KW):
            patch = xp[:, :, i:i + sh * OH:sh, j:j + sw * OW:sw]    # (N, C, OH, OW)
            out += np.einsum("nchw,fc->nfhw", patch, w[:, :, i, j])
    if b is not None:
        out += b[None, :, None, None]
    return out, (x, w, b is not None, stride, padding)


@op
def conv2d_backward(dout, cache, need_dx=True):
    """dout (N, F, OH, OW) -> dx (N, C, H, W) (None unless need_dx), dw (F, C, KH, KW), db (F,) or None."""
    x, w, has_bias, (sh, sw), (ph, pw) = cache
    N, C, H, W = x.shape
    F, _, KH, KW = w.shape
    OH, OW = dout.shape[2:]
    xp = _pad(x, ph, pw)
    dxp = np.zeros_like(xp)                                         # (N, C, H+2PH, W+2PW)
    dw = np.zeros_like(w)
    for i in range(KH):
        for j in range(KW):
            window = (slice(None), slice(None), slice(i, i + sh * OH, sh), slice(j, j + sw * OW, sw))
            dw[:, :, i, j] = np.einsum("nfhw,nchw->fc", dout, xp[window])
            dxp[window] += np.einsum("nfhw,fc->nchw", dout, w[:, :, i, j])
    dx = np.ascontiguousarray(dxp[:, :, ph:ph + H, pw:pw + W]) if need_dx else None
    db = dout.sum(axis=(0, 2, 3)) if has_bias else None
    return dx, dw, db


@op
def conv2d_pool_forward(x, w, b, stride, padding, pool, training=True):
    """relu(maxpool2d(conv2d(x))) with pool = (kernel, stride, padding), or relu(conv2d(x)) with
    pool None -> out, cache: one op, so that a backend can do them in one pass (``fused.fuse``);
    here, the ops in turn. With training False (eval mode) a backend may keep less for backward
    and compute again there."""
    out, conv_cache = conv2d_forward(x, w, b, stride, padding)
    out, pool_cache = maxpool2d_forward(out, *pool, relu=True) if pool else relu_forward(out)
    return out, (conv_cache, pool, pool_cache)


@op
def conv2d_pool_backward(dout, cache, need_dx=True):
    """dout (N, F, PH, PW) -> dx (None unless need_dx), dw, db (or None): the backwards in turn."""
    conv_cache, pool, pool_cache = cache
    d = maxpool2d_backward(dout, pool_cache) if pool else relu_backward(dout, pool_cache)
    return conv2d_backward(d, conv_cache, need_dx)


# ---------------------------------------------------------------- pooling
@op
def maxpool2d_forward(x, kernel, stride, padding, relu=False):
    """x (N, C, H, W) -> out (N, C, OH, OW), cache. Padding counts as -inf.

    The cache keeps, per output, the flat index into the padded input of the *first*
    maximum of its window, so ties send the gradient to one place, as torch does.
    With relu, out = relu(maxpool(x)) (= maxpool(relu(x)): max commutes with the monotone ReLU),
    one op so that a backend can do both in one pass (``fused.fuse``).
    """
    (KH, KW), (sh, sw), (ph, pw) = kernel, stride, padding
    N, C, H, W = x.shape
    OH, OW = out_size(H, KH, sh, ph), out_size(W, KW, sw, pw)
    xp = _pad(x, ph, pw, value=-np.inf)
    out = np.empty((N, C, OH, OW), dtype=x.dtype)
    arg = np.empty((N, C, OH, OW), dtype=np.int64)                  # flat index into padded plane
    for oh in range(OH):
        for ow in range(OW):
            win = xp[:, :, oh * sh:oh * sh + KH, ow * sw:ow * sw + KW].reshape(N, C, -1)
            k = win.argmax(axis=2)                                  # first maximum
            out[:, :, oh, ow] = np.take_along_axis(win, k[..., None], 2)[..., 0]
            arg[:, :, oh, ow] = (oh * sh + k // KW) * (W + 2 * pw) + ow * sw + k % KW
    if relu:
        out = np.maximum(out, 0)
    return out, (x.shape, arg, padding, out if relu else None)


@op
def maxpool2d_backward(dout, cache):
    """dout (N, C, OH, OW) -> dx (N, C, H, W): each gradient goes to its window's argmax
    (after the ReLU's mask, when forward had relu)."""
    (N, C, H, W), arg, (ph, pw), relu_out = cache
    if relu_out is not None:
        dout = dout * (relu_out > 0)                                # the ReLU's gradient first
    Hp, Wp = H + 2 * ph, W + 2 * pw
    dxp = np.zeros((N * C, Hp * Wp), dtype=dout.dtype)
    rows = np.repeat(np.arange(N * C), arg.shape[2] * arg.shape[3])
    np.add.at(dxp, (rows, arg.reshape(-1)), dout.reshape(-1))       # windows may overlap
    return np.ascontiguousarray(dxp.reshape(N, C, Hp, Wp)[:, :, ph:ph + H, pw:pw + W])


@op
def avgpool2d_forward(x, kernel, stride, padding):
    """x (N, C, H, W) -> out (N, C, OH, OW). Zero padding counts in the divisor KH*KW
    (torch's default count_include_pad=True)."""
    (KH, KW), (sh, sw), (ph, pw) = kernel, stride, padding
    N, C, H, W = x.shape
    OH, OW = out_size(H, KH, sh, ph), out_size(W, KW, sw, pw)
    xp = _pad(x, ph, pw)
    out = np.zeros((N, C, OH, OW), dtype=x.dtype)
    for i in range(KH):
        for j in range(KW):
            out += xp[:, :, i:i + sh * OH:sh, j:j + sw * OW:sw]
    return out / (KH * KW), (x.shape, kernel, stride, padding)


@op
def avgpool2d_backward(dout, cache):
    """dout (N, C, OH, OW) -> dx (N, C, H, W)."""
    (N, C, H, W), (KH, KW), (sh, sw), (ph, pw) = cache
    OH, OW = dout.shape[2:]
    dxp = np.zeros((N, C, H + 2 * ph, W + 2 * pw), dtype=dout.dtype)
    g = dout / (KH * KW)
    for i in range(KH):
        for j in range(KW):
            dxp[:, :, i:i + sh * OH:sh, j:j + sw * OW:sw] += g
    return np.ascontiguousarray(dxp[:, :, ph:ph + H, pw:pw + W])


@op
def global_avgpool2d_forward(x):
    """x (N, C, H, W) -> out (N, C, 1, 1): the mean of each channel's plane."""
    return x.mean(axis=(2, 3), keepdims=True).astype(x.dtype, copy=False), x.shape


@op
def global_avgpool2d_backward(dout, xshape):
    """dout (N, C, 1, 1) -> dx (N, C, H, W): each input shares its plane's gradient equally."""
    H, W = xshape[2:]
    return np.broadcast_to(dout / (H * W), xshape).astype(dout.dtype)


# ---------------------------------------------------------------- dense and pointwise
@op
def linear_forward(x, w, b):
    """x (N, IN), w (OUT, IN), b (OUT,) or None -> out (N, OUT), cache."""
    out = x @ w.T                                                   # (N, OUT)
    if b is not None:
        out += b
    return out, (x, w, b is not None)


@op
def linear_backward(dout, cache, need_dx=True):
    """dout (N, OUT) -> dx (N, IN) or None, dw (OUT, IN), db (OUT,) or None."""
    x, w, has_bias = cache
    return (dout @ w if need_dx else None), dout.T @ x, (dout.sum(axis=0) if has_bias else None)


@op
def relu_forward(x):
    """x (...) -> max(x, 0), cache."""
    out = np.maximum(x, 0)
    return out, out


@op
def relu_backward(dout, out):
    """The gradient passes where the output is positive."""
    return dout * (out > 0)


@op
def leaky_relu_forward(x, slope):
    out = np.where(x > 0, x, x * slope).astype(x.dtype, copy=False)
    return out, (x > 0, slope)


@op
def leaky_relu_backward(dout, cache):
    pos, slope = cache
    return np.where(pos, dout, dout * slope).astype(dout.dtype, copy=False)


@op
def sigmoid_forward(x):
    out = np.empty_like(x)
    pos = x >= 0                                                    # stable on both sides
    out[pos] = 1 / (1 + np.exp(-x[pos]))
    ex = np.exp(x[~pos])
    out[~pos] = ex / (1 + ex)
    return out, out


@op
def sigmoid_backward(dout, out):
    return dout * out * (1 - out)


@op
def tanh_forward(x):
    out = np.tanh(x)
    return out, out


@op
def tanh_backward(dout, out):
    return dout * (1 - out * out)


@op
def dropout_forward(x, p, rng):
    """Inverted dropout: keep with probability 1-p and scale by 1/(1-p); x (...) -> out, mask."""
    mask = (rng.random(x.shape, dtype=x.dtype) >= p).astype(x.dtype) / x.dtype.type(1 - p)
    return x * mask, mask


@op
def dropout_backward(dout, mask):
    return dout * mask


# ---------------------------------------------------------------- batch normalisation
@op
def batchnorm_forward(x, gamma, beta, running_mean, running_var, momentum, eps, training):
    """x (N, C) or (N, C, H, W); gamma, beta, running_* (C,) -> out like x, cache.

    Training: normalise with the batch's mean and biased variance over every axis but C, and
    update the running statistics in place (running = (1 - momentum) * running + momentum *
    batch, the variance unbiased), as torch does. Eval: normalise with the running statistics.
    """
    axes = (0,) + tuple(range(2, x.ndim))
    shape = (1, -1) + (1,) * (x.ndim - 2)                           # broadcast (C,) over x
    if training:
        m = x.size // x.shape[1]
        mean = x.mean(axis=axes)                                    # (C,)
        var = x.var(axis=axes)                                      # (C,) biased
        running_mean *= 1 - momentum
        running_mean += momentum * mean
        running_var *= 1 - momentum
        running_var += momentum * var * (m / max(m - 1, 1))
    else:
        mean, var = running_mean, running_var
    inv_std = (1 / np.sqrt(var + eps)).astype(x.dtype)              # (C,)
    xhat = (x - mean.reshape(shape)) * inv_std.reshape(shape)       # like x
    out = xhat * gamma.reshape(shape) + beta.reshape(shape)
    return out.astype(x.dtype, copy=False), (xhat, inv_std, gamma, training)


@op
def batchnorm_backward(dout, cache):
    """dout like x -> dx like x, dgamma (C,), dbeta (C,)."""
    xhat, inv_std, gamma, training = cache
    axes = (0,) + tuple(range(2, dout.ndim))
    shape = (1, -1) + (1,) * (dout.ndim - 2)
    dbeta = dout.sum(axis=axes)
    dgamma = (dout * xhat).sum(axis=axes)
    scale = (gamma * inv_std).reshape(shape)
    if not training:                                                # statistics are constants
        return dout * scale, dgamma, dbeta
    m = dout.size // dout.shape[1]
    dx = scale * (dout - (dbeta.reshape(shape) + xhat * dgamma.reshape(shape)) / m)
    return dx.astype(dout.dtype, copy=False), dgamma, dbeta


@op
def batchnorm_pool_forward(x, gamma, beta, running_mean, running_var, momentum, eps, training, pool):
    """relu(maxpool2d(batchnorm(x))) with pool = (kernel, stride, padding) -> out, cache: one op, so
    that a backend can do the three in one pass (``fused.fuse``); here, the ops in turn."""
    out, bn_cache = batchnorm_forward(x, gamma, beta, running_mean, running_var, momentum, eps, training)
    out, pool_cache = maxpool2d_forward(out, *pool, relu=True)
    return out, (bn_cache, pool_cache)


@op
def batchnorm_pool_backward(dout, cache):
    """dout (N, C, PH, PW) -> dx like x, dgamma (C,), dbeta (C,): the two backwards in turn."""
    bn_cache, pool_cache = cache
    return batchnorm_backward(maxpool2d_backward(dout, pool_cache), bn_cache)


@op
def groupnorm_forward(x, groups, gamma, beta, eps):
    """x (N, C, ...), gamma, beta (C,) or None -> out like x, cache.

    The C channels are split into ``groups`` groups of C // groups; each (image, group) is
    normalised with its own mean and biased variance over its channels and positions, then each
    channel is scaled and shifted, out = xhat * gamma[c] + beta[c] (torch's GroupNorm). Nothing
    depends on the batch, so training and eval compute the same.
    """
    N, C = x.shape[:2]
    xg = x.reshape(N, groups, -1)                                   # (N, G, C//G * H*W)
    mean = xg.mean(axis=2, keepdims=True)                           # (N, G, 1)
    inv_std = 1 / np.sqrt(xg.var(axis=2, keepdims=True) + eps)      # (N, G, 1)
    xhat = ((xg - mean) * inv_std).reshape(x.shape)                 # like x
    shape = (1, C) + (1,) * (x.ndim - 2)                            # broadcast (C,) over x
    out = xhat if gamma is None else xhat * gamma.reshape(shape) + beta.reshape(shape)
    return out.astype(x.dtype, copy=False), (xhat, inv_std, gamma, groups)


@op
def groupnorm_backward(dout, cache):
    """dout like x -> dx like x, dgamma (C,) or None, dbeta (C,) or None.

    Per group, with g = dout * gamma and the means over the group's M values:
    dx = inv_std * (g - mean(g) - xhat * mean(g * xhat))."""
    xhat, inv_std, gamma, groups = cache
    N, C = dout.shape[:2]
    axes = (0,) + tuple(range(2, dout.ndim))
    g = dout if gamma is None else dout * gamma.reshape((1, C) + (1,) * (dout.ndim - 2))
    g, xg = g.reshape(N, groups, -1), xhat.reshape(N, groups, -1)  # (N, G, M)
    dx = inv_std * (g - g.mean(axis=2, keepdims=True) - xg * (g * xg).mean(axis=2, keepdims=True))
    dgamma, dbeta = (None, None) if gamma is None else ((dout * xhat).sum(axis=axes), dout.sum(axis=axes))
    return dx.reshape(dout.shape).astype(dout.dtype, copy=False), dgamma, dbeta


# ---------------------------------------------------------------- loss
def _log_softmax(logits):
    z = logits - logits.max(axis=1, keepdims=True)                  # (N, K), each row's max is 0
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


@op
def log_softmax(logits):
    """logits (N, K) -> log-probabilities (N, K), via log-sum-exp with the row max subtracted."""
    return _log_softmax(logits)


@op
def softmax_cross_entropy(logits, y, label_smoothing):
    """logits (N, K), y int (N,), label_smoothing eps -> rows (2, N) float64, dlogits (N, K).

    With the target t = (1 - eps) onehot(y) + eps / K (torch's label smoothing) and p the softmax:
    rows[0] = each row's loss -sum_k t_k log p_k (NaN where a logit is not finite), rows[1] = 1
    where the row's first maximum is at y (0 where a logit is not finite): the accuracy comes out
    of the same pass, and one copy brings both back from a GPU. dlogits = (p - t) / N, the
    gradient of the mean loss."""
    N, K = logits.shape
    with np.errstate(invalid="ignore"):                             # a non-finite row is NaN
        logp = _log_softmax(logits)                                 # (N, K)
    target = np.full((N, K), label_smoothing / K, logits.dtype)     # (N, K), in the logits' dtype
    target[np.arange(N), y] += 1 - label_smoothing
    finite = np.isfinite(logits).all(axis=1)                        # (N,)
    rows = np.stack([np.where(finite, -(target * logp).sum(axis=1), np.nan),
                     finite & (logits.argmax(axis=1) == y)]).astype(np.float64)  # (2, N)
    return rows, (np.exp(logp) - target) / N


@op
def softmax(logits):
    """logits (N, K) -> probabilities (N, K), each row summing to 1."""
    return np.exp(_log_softmax(logits))


@op
def all_finite(x):
    """True when no element of x is NaN or infinite."""
    return bool(np.all(np.isfinite(x)))


# ---------------------------------------------------------------- gradients and optimizer updates
# Update rules are torch's. They live with the kernels so an optimizer runs wherever its
# parameters live; all update the arrays in place.
@op
def zeros_like(a):
    return np.zeros_like(a)


@op
def zero_(a):
    """a[...] = 0 in place."""
    a[...] = 0


@op
def add(a, b):
    """a + b, a new array shaped like a (a residual block's output and its input gradient)."""
    return a + b


@op
def accumulate(dst, src):
    """dst += src in place (a layer adds its gradients into Parameter.grad)."""
    dst += src


@op
def sgd_step(ps, gs, bufs, lr, momentum, weight_decay, nesterov):
    """For each parameter p of the list ps, its gradient g and momentum buffer buf (bufs None
    without momentum): p -= lr * update, with g' = g + weight_decay * p, buf = momentum * buf + g'
    (buf starts at zero, so the first step's buf is g' as in torch) and update = g' + momentum *
    buf (Nesterov) or buf; without momentum update = g'. (Lists, so that a backend can update all
    the parameters of a model in one pass.)"""
    for i, (p, g) in enumerate(zip(ps, gs)):
        if weight_decay:
            g = g + weight_decay * p
        if bufs is not None:
            buf = bufs[i]
            buf *= momentum
            buf += g
            g = g + momentum * buf if nesterov else buf
        p -= p.dtype.type(lr) * g


@op
def adam_step(ps, gs, ms, vs, lr, beta1, beta2, eps, weight_decay, decoupled, t):
    """Adam step t (1, 2, ...) with bias correction, for each p, g, m, v of the lists; weight
    decay either added to the gradient (Adam) or ``decoupled`` (AdamW: p *= 1 - lr * weight_decay)."""
    for p, g, m, v in zip(ps, gs, ms, vs):
        if weight_decay and decoupled:
            p *= p.dtype.type(1 - lr * weight_decay)
        elif weight_decay:
            g = g + weight_decay * p
        m *= beta1
        m += (1 - beta1) * g
        v *= beta2
        v += (1 - beta2) * g * g
        denom = np.sqrt(v / (1 - beta2 ** t)) + eps
        p -= (lr / (1 - beta1 ** t) * m / denom).astype(p.dtype, copy=False)
