"""Numerical gradient checks (central differences, float64), public so users can check their own layers.

    check_layer(Conv2d(3, 4, 3), x)   # raises AssertionError with the worst entry if a gradient is off
"""
import copy

import numpy as np

from .rng import manual_seed


def rel_error(a, b):
    """max |a - b| / max(|a| + |b|, 1e-8), elementwise, as one float."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b) / np.maximum(np.abs(a) + np.abs(b), 1e-8), initial=0.0))


def numerical_grad(f, x, dout, eps=1e-6):
    """d/dx of sum(f() * dout), by central differences, perturbing ``x`` in place.

    f: a function of no arguments that reads ``x`` (an array, changed in place and restored).
    Returns an array shaped like ``x``.
    """
    grad = np.zeros_like(x)
    it = np.nditer(x, flags=["multi_index"])
    for _ in it:
        i = it.multi_index
        old = x[i]
        x[i] = old + eps
        plus = np.sum(f() * dout)
        x[i] = old - eps
        minus = np.sum(f() * dout)
        x[i] = old
        grad[i] = (plus - minus) / (2 * eps)
    return grad


def _compare(name, analytic, numeric, tol):
    """Relative error per entry. Entries far below the array's largest gradient are measured
    against 1e-4 of that largest value, where finite differences have no more digits to give."""
    scale = np.abs(analytic) + np.abs(numeric)
    floor = max(1e-8, 1e-4 * float(scale.max(initial=0.0)))
    err = np.abs(analytic - numeric) / np.maximum(scale, floor)
    worst = np.unravel_index(np.argmax(err), err.shape) if err.size else ()
    if err.size and err[worst] > tol:
        raise AssertionError(f"{name}: relative error {err[worst]:.3g} > {tol:g} at index "
                             f"{tuple(int(i) for i in worst)}: analytic {float(analytic[worst])!r}, "
                             f"numerical {float(numeric[worst])!r}")
    return float(err[worst]) if err.size else 0.0


def check_layer(layer, x, tol=1e-5, eps=1e-6, seed=0):
    """Check a layer's dx and every trainable parameter's gradient against central differences.

    The layer is deep-copied and cast to float64 (the original is untouched); ``x`` is cast
    to float64. A random upstream gradient is used, and convlib's generator is reseeded
    before every forward so dropout masks stay fixed. Returns {name: max relative error};
    raises AssertionError naming the worst index and both values when one exceeds ``tol``.
    """
    layer = copy.deepcopy(layer).to(np.float64)
    x = np.array(x, dtype=np.float64)
    rng = np.random.default_rng(seed)

    def f():
        manual_seed(seed)
        return layer.forward(x)

    out = f()
    dout = rng.standard_normal(out.shape)
    layer.zero_grad()
    dx = layer.backward(dout)
    errors = {"x": _compare("dx", dx, numerical_grad(f, x, dout, eps), tol)}
    for name, p in layer.named_parameters():
        if p.requires_grad:                                         # frozen ones have no gradient to check
            errors[name] = _compare(name, p.grad, numerical_grad(f, p.data, dout, eps), tol)
    return errors


def check_loss(loss_fn, logits, y, tol=1e-5, eps=1e-6):
    """Check that ``loss_fn(logits, y) -> (loss, dlogits)`` returns the gradient of its loss."""
    logits = np.array(logits, dtype=np.float64)
    _, analytic = loss_fn(logits, y)
    numeric = numerical_grad(lambda: np.array(loss_fn(logits, y)[0]), logits, np.array(1.0), eps)
    return _compare("dlogits", analytic, numeric, tol)
