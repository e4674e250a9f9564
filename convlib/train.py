"""Training loop: ``fit``, ``evaluate`` and ``predict_proba``."""
import math
import time

import numpy as np

from .backend import to_device, to_host
from .losses import softmax, softmax_cross_entropy
from .optim import SGD
from .progress import Progress


class History(dict):
    """Per-epoch lists: loss, acc, val_loss, val_acc, lr, seconds; plus best_epoch, best_val_acc."""
    best_epoch = None
    best_val_acc = None


def _check_inputs(x, name):
    x = np.asarray(x)
    if x.ndim < 2 or x.dtype.kind != "f":
        raise ValueError(f"{name}: expected float inputs of shape (N, ...), got {x.shape} {x.dtype}")
    if len(x) == 0:
        raise ValueError(f"{name}: got no images (inputs of shape {x.shape})")
    return x


def _check_arrays(x, y, name):
    x, y = _check_inputs(x, name), np.asarray(y)
    if y.shape != (x.shape[0],) or y.dtype.kind not in "iu":
        raise ValueError(f"{name}: expected integer labels of shape ({x.shape[0]},), got {y.shape} {y.dtype}")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{name}: inputs hold NaN or infinite values")
    return x, y


def iterate_batches(x, y, batch_size, shuffle=False, rng=None):
    """Yield (x[idx], y[idx]) batches in order, or shuffled with ``rng``."""
    idx = rng.permutation(len(x)) if shuffle else np.arange(len(x))
    for s in range(0, len(x), batch_size):
        j = idx[s:s + batch_size]
        yield x[j], y[j]


def fit(net, train, val=None, *, epochs=10, batch_size=32, optimizer=None, schedule=None,
        loss_fn=softmax_cross_entropy, augment=None, seed=0, restore_best=True, progress=True,
        on_epoch_end=None):
    """Train ``net`` and return a ``History``.

    Args:
        train: ``(x, y)`` arrays (x float (N, ...), y int (N,)), shuffled each epoch with ``seed``;
            or any re-iterable yielding ``(xb, yb)`` batches (e.g. a ``convlib.data`` loader).
        val: ``(x, y)`` arrays for per-epoch validation accuracy, or None.
        optimizer: default ``SGD(net.parameters(), lr=0.01, momentum=0.9)``.
        schedule: a ``convlib.optim`` schedule, stepped once per epoch.
        augment: ``augment(xb, rng) -> xb`` applied to each training batch of arrays.
        restore_best: with ``val``, load the weights of the best validation epoch at the end.
        on_epoch_end: ``callback(epoch, history)`` after each epoch.
    Batches come from the host (augmented there) and are copied to ``net.device``; on a GPU a
    step copies nothing back but the logits (for the accuracy) and the loss.
    Raises FloatingPointError naming the epoch and step when the logits or loss become NaN/inf.
    """
    if not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"fit: epochs must be an int >= 1, got {epochs!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"fit: batch_size must be an int >= 1, got {batch_size!r}")
    rng = np.random.default_rng(seed)
    if isinstance(train, tuple) or (isinstance(train, list) and len(train) == 2
                                    and all(isinstance(a, np.ndarray) for a in train)):   # [x, y] too
        x, y = _check_arrays(*train, "fit(train)")
        n_batches = math.ceil(len(x) / batch_size)
        batches = lambda: iterate_batches(x, y, batch_size, shuffle=True, rng=rng)
    else:
        n_batches = len(train) if hasattr(train, "__len__") else None
        batches = lambda: iter(train)
    if val is not None:
        val = _check_arrays(*val, "fit(val)")
    optimizer = optimizer or SGD(net.parameters(), lr=0.01, momentum=0.9)
    hist = History(loss=[], acc=[], val_loss=[], val_acc=[], lr=[], seconds=[])
    best_state, device = None, net.device
    for epoch in range(1, epochs + 1):
        net.train()
        t0, tot_loss, tot_correct, seen = time.perf_counter(), 0.0, 0, 0
        with Progress(n_batches, f"epoch {epoch}/{epochs}", "batch", enabled=progress) as bar:
            for step, (xb, yb) in enumerate(batches(), 1):
                if augment is not None:
                    xb = augment(xb, rng)
                logits = net(to_device(xb, device))
                host_logits = to_host(logits)                       # (N, K): the accuracy is counted here
                if not np.all(np.isfinite(host_logits)):
                    raise FloatingPointError(
                        f"fit: the logits became NaN or infinite at epoch {epoch}, step {step} "
                        f"(lr={optimizer.lr:g}); lower the learning rate or check the inputs")
                loss, dlogits = loss_fn(logits, yb)
                if not math.isfinite(loss):
                    raise FloatingPointError(f"fit: the loss became {loss} at epoch {epoch}, step {step} "
                                             f"(lr={optimizer.lr:g}); lower the learning rate")
                optimizer.zero_grad()
                net.backward(dlogits, input_grad=False)
                optimizer.step()
                n = len(yb)
                seen += n
                tot_loss += loss * n
                tot_correct += int((host_logits.argmax(1) == yb).sum())
                bar.update(1, loss=tot_loss / seen, acc=tot_correct / seen)
            if seen == 0:
                raise ValueError("fit: the training data yielded no batches")
            hist["loss"].append(tot_loss / seen)
            hist["acc"].append(tot_correct / seen)
            hist["lr"].append(optimizer.lr)
            if val is not None:
                vl, va = evaluate(net, *val, batch_size=max(batch_size, 256))
                hist["val_loss"].append(vl)
                hist["val_acc"].append(va)
                bar.set(val_acc=va)
                if hist.best_val_acc is None or va > hist.best_val_acc:
                    hist.best_val_acc, hist.best_epoch = va, epoch
                    best_state = net.state_dict() if restore_best else None
            hist["seconds"].append(time.perf_counter() - t0)
        if schedule is not None:
            schedule.step()
        if on_epoch_end is not None:
            on_epoch_end(epoch, hist)
    if best_state is not None:
        net.load_state_dict(best_state)
    net.eval()
    return hist


def _batched_eval(net, x, batch_size):
    """Host outputs of ``net`` in eval mode, batch by batch on the net's device."""
    was_training, device = net.training, net.device
    net.eval()
    try:
        return np.concatenate([to_host(net(to_device(x[s:s + batch_size], device)))
                               for s in range(0, len(x), batch_size)])
    finally:
        net.train(was_training)


def evaluate(net, x, y, batch_size=256, loss_fn=softmax_cross_entropy):
    """(mean loss, accuracy) of ``net`` in eval mode over arrays x (N, ...), y (N,)."""
    x, y = _check_arrays(x, y, "evaluate")
    logits = _batched_eval(net, x, batch_size)                     # (N, K)
    loss, _ = loss_fn(logits, y)
    return loss, float((logits.argmax(1) == y).mean())


def predict_proba(net, x, batch_size=256):
    """Class probabilities (N, K) of ``net`` in eval mode for inputs x (N, ...)."""
    x = _check_inputs(x, "predict_proba")
    return softmax(_batched_eval(net, x, batch_size))
