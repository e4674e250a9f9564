"""Softmax and the softmax cross-entropy loss (as a function, and as torch's ``CrossEntropyLoss``)."""
import numpy as np

from .backend import is_array, to_host
from .kernels import reference as ops


def _check_logits(logits, name, finite=True):
    if not is_array(logits) or logits.ndim != 2 or logits.dtype.kind != "f":
        got = f"{logits.shape} {logits.dtype}" if is_array(logits) else type(logits).__name__
        raise ValueError(f"{name}: expected float logits of shape (N, K), got {got}")
    if finite and not ops.all_finite(logits):
        raise ValueError(f"{name}: logits hold NaN or infinite values")


def softmax(logits):
    """logits (N, K) -> probabilities (N, K), each row summing to 1 (on the logits' device)."""
    _check_logits(logits, "softmax")
    return ops.softmax(logits)


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
    where the row is classified right."""
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
    return ops.softmax_cross_entropy(logits, y, float(label_smoothing))


class CrossEntropyLoss:
    """``softmax_cross_entropy`` as a loss object, torch's name: ``loss_fn(logits, y) -> (loss,
    dlogits)`` like any loss you pass to ``fit``, plus ``rows(logits, y)`` (see ``loss_rows``),
    which ``fit`` uses when a loss has it: loss and accuracy then come back from a GPU in one copy,
    read after the backward pass is queued. ``fit``'s default loss is ``CrossEntropyLoss()``.

    >>> CrossEntropyLoss(label_smoothing=0.1)
    CrossEntropyLoss(label_smoothing=0.1)
    """

    def __init__(self, label_smoothing=0.0):
        if not (isinstance(label_smoothing, (int, float)) and 0 <= label_smoothing < 1):
            raise ValueError(f"CrossEntropyLoss: label_smoothing must be a number in [0, 1), got {label_smoothing!r}")
        self.label_smoothing = float(label_smoothing)

    def __repr__(self):
        return f"CrossEntropyLoss(label_smoothing={self.label_smoothing})"

    def __call__(self, logits, y):
        return softmax_cross_entropy(logits, y, self.label_smoothing)

    def rows(self, logits, y):
        return loss_rows(logits, y, self.label_smoothing)
