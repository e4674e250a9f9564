"""convlib.gradcheck, the tool every gradient test leans on: rel_error, numerical_grad, check_layer
and check_loss find a wrong gradient, name it, and leave the layer they check alone."""
import inspect
import math

import numpy as np
import pytest

import convlib as cl
from convlib import gradcheck
from convlib.gradcheck import check_layer, check_loss, numerical_grad, rel_error
from strategies import distinct_values


def test_gradcheck_catches_a_wrong_backward(rng):
    class Wrong(cl.ReLU):
        def backward(self, dout):
            return super().backward(dout) * 1.01                   # 1% off
    with pytest.raises(AssertionError, match="relative error .* at index"):
        check_layer(Wrong(), distinct_values(rng, (2, 3)))


def test_rel_error_is_float64_with_a_floor_and_empty_is_zero():
    assert rel_error([1.0, 2.0], [1.0, 2.0]) == 0.0
    assert abs(rel_error([1.0], [1.1]) - 0.1 / 2.1) < 1e-12
    assert rel_error(np.uint8([1]), np.uint8([2])) == pytest.approx(1 / 3)   # not uint8 wrap-around
    assert rel_error([1e-9], [0.0]) == pytest.approx(0.1)            # |a - b| / max(|a| + |b|, 1e-8)
    assert rel_error([], []) == 0.0


def test_compare_floor_tolerance_edge_and_message():
    analytic, numeric = np.array([1.0, 1e-6]), np.array([1.0 + 1e-6, 0.0])
    # the small entry is measured against 1e-4 of the largest scale (2): 1e-6 / 2e-4
    assert gradcheck._compare("w", analytic, numeric, 1.0) == pytest.approx(5e-3)
    assert gradcheck._compare("w", np.array([3.0]), np.array([1.0]), 0.5) == 0.5     # at tol: passes
    with pytest.raises(AssertionError, match=r"^w: relative error 0.5 > 0.49 at index \(0,\): analytic 3.0, "
                                             r"numerical 1.0$"):
        gradcheck._compare("w", np.array([3.0]), np.array([1.0]), 0.49)
    assert gradcheck._compare("e", np.zeros(0), np.zeros(0), 1e-5) == 0.0
    assert gradcheck._compare("z", np.zeros(3), np.zeros(3), 1e-5) == 0.0   # all zero: no 0/0


def test_numerical_grad_default_eps_is_small():
    x = np.array([0.7, -1.3])
    g = numerical_grad(lambda: x ** 3, x, np.ones(2))
    np.testing.assert_allclose(g, 3 * x ** 2, rtol=1e-8)


def test_check_layer_names_the_wrong_gradient_and_leaves_the_layer_alone():
    class WrongWeight(cl.Linear):
        def backward(self, dout, need_dx=True):
            dx = super().backward(dout, need_dx)
            self.weight.grad *= 2
            return dx
    cl.manual_seed(0)
    layer = WrongWeight(3, 2)
    x32 = np.random.default_rng(0).standard_normal((4, 3)).astype(np.float32)
    with pytest.raises(AssertionError, match=r"^weight: relative error"):
        check_layer(layer, x32)                                      # float32 in: checked in float64
    assert layer.weight.data.dtype == np.float32 and not layer.weight.grad.any()
    good = cl.Linear(3, 2)
    errors = check_layer(good, x32)
    assert set(errors) == {"x", "weight", "bias"} and all(isinstance(e, float) and e < 1e-5 for e in errors.values())
    assert check_layer(good, x32) == errors                          # the same random dout each call
    with pytest.raises(AssertionError, match=r"^dx: relative error"):
        check_layer(cl.ReLU(), np.array([[5e-4, 1.0, -1.0]]), eps=1e-3)    # eps reaches across the kink
    check_layer(cl.ReLU(), np.array([[5e-4, 1.0, -1.0]]))            # the default eps does not


def test_check_loss_default_tolerance_float64_and_name():
    logits32 = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
    y = np.array([0, 3, 1])
    assert check_loss(cl.softmax_cross_entropy, logits32, y) < 1e-6   # float32 in: checked in float64
    doubled = lambda lg, yb: (lambda loss, d: (loss, 2 * d))(*cl.softmax_cross_entropy(lg, yb))
    with pytest.raises(AssertionError, match="^dlogits: relative error"):
        check_loss(doubled, logits32, y)
    kink = lambda lg, yb: (float(np.abs(lg).sum()), np.sign(lg))
    with pytest.raises(AssertionError):
        check_loss(kink, np.array([[5e-4, 1.0]]), None, eps=1e-3)     # eps is passed on
    assert check_loss(kink, np.array([[5e-4, 1.0]]), None) < 1e-8
    assert math.isclose(inspect.signature(check_loss).parameters["tol"].default, 1e-5)


def test_compare_floor_follows_small_gradients():
    analytic, numeric = np.array([1e-3, 1e-9]), np.array([1e-3 + 1e-9, 0.0])
    # floor = 1e-4 * 2e-3: the tiny entry's error is 1e-9 / 2e-7, not measured against 1e-4
    assert gradcheck._compare("w", analytic, numeric, 1.0) == pytest.approx(5e-3)


def test_check_layer_passes_eps_to_the_parameter_checks():
    cl.manual_seed(0)
    net = cl.Sequential(cl.Linear(1, 1), cl.ReLU())
    net[0].weight.data[:] = 0.1
    net[0].bias.data[:] = 5e-4 - 1e-4                               # pre-activation 5e-4 at x = 1e-3
    x = np.array([[1e-3]])
    check_layer(net, x)
    with pytest.raises(AssertionError, match=r"^0.bias: relative error"):
        check_layer(net, x, eps=1e-3)                                # only the bias step crosses the kink
