"""Softmax and the softmax cross-entropy loss."""
from .backend import is_array, kernels_for, to_host


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


def softmax_cross_entropy(logits, y):
    """Mean cross-entropy of softmax(logits) against integer labels.

    Args: logits float (N, K); y int (N,) with values in [0, K) (a host array; labels of
        logits on the GPU are copied there).
    Returns: (loss as a Python float, dlogits (N, K) = (softmax - onehot) / N, on the logits' device).
    Computed from log-sum-exp with the row max subtracted, so finite for any finite logits.
    """
    _check_logits(logits, "softmax_cross_entropy")
    y = to_host(y)
    N, K = logits.shape
    if y.shape != (N,) or y.dtype.kind not in "iu":
        raise ValueError(f"softmax_cross_entropy: expected integer labels of shape ({N},), "
                         f"got {y.shape} {y.dtype}")
    if N and (y.min() < 0 or y.max() >= K):
        raise ValueError(f"softmax_cross_entropy: labels must lie in [0, {K}), "
                         f"got values from {y.min()} to {y.max()}")
    return kernels_for(logits).softmax_cross_entropy(logits, y)
