"""Softmax and the softmax cross-entropy loss."""
import numpy as np

from .backend import kernels_for


def _check_logits(logits, name):
    if not isinstance(logits, np.ndarray) or logits.ndim != 2 or logits.dtype.kind != "f":
        raise ValueError(f"{name}: expected float logits of shape (N, K), got "
                         f"{getattr(logits, 'shape', type(logits).__name__)} "
                         f"{getattr(logits, 'dtype', '')}")
    if not np.all(np.isfinite(logits)):
        raise ValueError(f"{name}: logits hold NaN or infinite values")


def softmax(logits):
    """logits (N, K) -> probabilities (N, K), each row summing to 1."""
    _check_logits(logits, "softmax")
    return np.exp(kernels_for(logits).log_softmax(logits))


def softmax_cross_entropy(logits, y):
    """Mean cross-entropy of softmax(logits) against integer labels.

    Args: logits float (N, K); y int (N,) with values in [0, K).
    Returns: (loss as a Python float, dlogits (N, K) = (softmax - onehot) / N).
    Computed from log-sum-exp with the row max subtracted, so finite for any finite logits.
    """
    _check_logits(logits, "softmax_cross_entropy")
    y = np.asarray(y)
    N, K = logits.shape
    if y.shape != (N,) or y.dtype.kind not in "iu":
        raise ValueError(f"softmax_cross_entropy: expected integer labels of shape ({N},), "
                         f"got {y.shape} {y.dtype}")
    if N and (y.min() < 0 or y.max() >= K):
        raise ValueError(f"softmax_cross_entropy: labels must lie in [0, {K}), "
                         f"got values from {y.min()} to {y.max()}")
    return kernels_for(logits).softmax_cross_entropy(logits, y)
