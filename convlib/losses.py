"""Softmax and the softmax cross-entropy loss."""
import numpy as np

from .backend import device_of, is_array, kernels_for, to_device, to_host


def _check_logits(logits, name):
    if not is_array(logits) or logits.ndim != 2 or logits.dtype.kind != "f":
        got = f"{logits.shape} {logits.dtype}" if is_array(logits) else type(logits).__name__
        raise ValueError(f"{name}: expected float logits of shape (N, K), got {got}")
    if not kernels_for(logits).all_finite(logits):
        raise ValueError(f"{name}: logits hold NaN or infinite values")


def softmax(logits):
    """logits (N, K) -> probabilities (N, K), each row summing to 1 (on the logits' device)."""
    _check_logits(logits, "softmax")
    return kernels_for(logits).softmax(logits)


def softmax_cross_entropy(logits, y, label_smoothing=0.0):
    """Mean cross-entropy of softmax(logits) against integer labels.

    Args: logits float (N, K); y int (N,) with values in [0, K) (a host array; labels of
        logits on the GPU are copied there); label_smoothing: eps in [0, 1), as in torch's
        ``CrossEntropyLoss``: the target is (1 - eps) onehot + eps / K.
    Returns: (loss as a Python float, dlogits (N, K) = (softmax - target) / N, on the logits' device).
    Computed from log-sum-exp with the row max subtracted, so finite for any finite logits.
    """
    if not (isinstance(label_smoothing, (int, float)) and 0 <= label_smoothing < 1):
        raise ValueError(f"softmax_cross_entropy: label_smoothing must be a number in [0, 1), got {label_smoothing!r}")
    _check_logits(logits, "softmax_cross_entropy")
    y = to_host(y)
    N, K = logits.shape
    if y.shape != (N,) or y.dtype.kind not in "iu":
        raise ValueError(f"softmax_cross_entropy: expected integer labels of shape ({N},), "
                         f"got {y.shape} {y.dtype}")
    if N and (y.min() < 0 or y.max() >= K):
        raise ValueError(f"softmax_cross_entropy: labels must lie in [0, {K}), "
                         f"got values from {y.min()} to {y.max()}")
    loss, dlogits = kernels_for(logits).softmax_cross_entropy(logits, y)
    return _smoothed(logits, y, loss, dlogits, label_smoothing) if label_smoothing else (loss, dlogits)


def _smoothed(logits, y, loss, dlogits, eps):
    """(loss, dlogits) for the target (1 - eps) onehot + eps / K, from the plain ones:
    loss' = (1 - eps) loss + eps mean_k(-log p_k), dlogits' = dlogits + eps (onehot - 1/K) / N."""
    z = to_host(logits).astype(np.float64)                          # (N, K)
    N, K = z.shape
    m = z.max(1, keepdims=True)                                     # (N, 1)
    lse = m[:, 0] + np.log(np.exp(z - m).sum(1))                    # (N,) log-sum-exp
    uniform = float(np.mean(lse - z.mean(1)))                       # mean over k of -log p_k
    corr = np.full((N, K), -eps / (K * N))                          # (N, K)
    corr[np.arange(N), y] += eps / N
    d = (to_host(dlogits) + corr).astype(dlogits.dtype)
    return (1 - eps) * loss + eps * uniform, to_device(d, device_of(logits))
