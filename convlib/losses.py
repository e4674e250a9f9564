"""Softmax and the softmax cross-entropy loss."""
import functools

import numpy as np

from .backend import is_array, kernels_for, to_host


def _check_logits(logits, name, finite=True):
    if not is_array(logits) or logits.ndim != 2 or logits.dtype.kind != "f":
        got = f"{logits.shape} {logits.dtype}" if is_array(logits) else type(logits).__name__
        raise ValueError(f"{name}: expected float logits of shape (N, K), got {got}")
    if finite and not kernels_for(logits).all_finite(logits):
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
    Maths: ``reference.softmax_cross_entropy``.
    """
    rows, dlogits = loss_rows(logits, y, label_smoothing)
    rows = to_host(rows)                                            # (2, N): the one copy from a GPU
    if not np.isfinite(rows[0]).all():
        raise ValueError("softmax_cross_entropy: logits hold NaN or infinite values")
    return float(rows[0].mean()), dlogits


def loss_rows(logits, y, label_smoothing=0.0):
    """The checked kernel call behind softmax_cross_entropy: (rows (2, N) float64, dlogits), on the
    logits' device; rows[0] the loss of each row (NaN where a logit is not finite), rows[1] 1.0
    where the row is classified right. fit() uses it to read loss and accuracy in one copy."""
    name = "softmax_cross_entropy"
    if not (isinstance(label_smoothing, (int, float)) and 0 <= label_smoothing < 1):
        raise ValueError(f"{name}: label_smoothing must be a number in [0, 1), got {label_smoothing!r}")
    _check_logits(logits, name, finite=False)                      # non-finite logits show in rows[0]
    y = to_host(y)
    N, K = logits.shape
    if y.shape != (N,) or y.dtype.kind not in "iu":
        raise ValueError(f"{name}: expected integer labels of shape ({N},), got {y.shape} {y.dtype}")
    if N and (y.min() < 0 or y.max() >= K):
        raise ValueError(f"{name}: labels must lie in [0, {K}), got values from {y.min()} to {y.max()}")
    return kernels_for(logits).softmax_cross_entropy(logits, y, float(label_smoothing))


def smoothing_of(loss_fn):
    """label_smoothing if ``loss_fn`` is softmax_cross_entropy (or a functools.partial of it that
    sets only label_smoothing), else None: fit() computes that loss with loss_rows."""
    if loss_fn is softmax_cross_entropy:
        return 0.0
    if (isinstance(loss_fn, functools.partial) and loss_fn.func is softmax_cross_entropy and not loss_fn.args
            and set(loss_fn.keywords) <= {"label_smoothing"}):
        return loss_fn.keywords.get("label_smoothing", 0.0)
    return None
