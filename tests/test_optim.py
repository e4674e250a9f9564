"""Optimizers converge on a quadratic with a known minimum, match torch's update rules step by
step (hand-computed), and schedules give the expected learning rates."""
import math

import numpy as np
import pytest

import convlib as cl
from convlib import optim

TARGET = np.array([3.0, -2.0, 0.5])
SCALES = np.array([1.0, 4.0, 0.25])                                 # an ill-conditioned bowl


def minimise(make_opt, steps):
    p = cl.Parameter(np.zeros(3))
    opt = make_opt([p])
    for _ in range(steps):
        opt.zero_grad()
        p.grad += SCALES * (p.data - TARGET)                        # grad of 0.5 * sum(s * (p - t)^2)
        opt.step()
    return p.data


@pytest.mark.parametrize("make_opt, steps", [
    (lambda ps: optim.SGD(ps, lr=0.2), 300),
    (lambda ps: optim.SGD(ps, lr=0.05, momentum=0.9), 300),
    (lambda ps: optim.SGD(ps, lr=0.05, momentum=0.9, nesterov=True), 300),
    (lambda ps: optim.Adam(ps, lr=0.05), 1500),
    (lambda ps: optim.AdamW(ps, lr=0.05, weight_decay=0.0), 1500),
], ids=["sgd", "momentum", "nesterov", "adam", "adamw"])
def test_converges_to_known_minimum(make_opt, steps):
    np.testing.assert_allclose(minimise(make_opt, steps), TARGET, atol=1e-3)


def test_weight_decay_shifts_the_minimum():
    # minimum of 0.5*s*(p-t)^2 + 0.5*wd*p^2 is s*t/(s+wd)
    got = minimise(lambda ps: optim.SGD(ps, lr=0.1, momentum=0.5, weight_decay=0.5), 500)
    np.testing.assert_allclose(got, SCALES * TARGET / (SCALES + 0.5), atol=1e-4)


def test_sgd_momentum_matches_hand_computed_steps():
    p = cl.Parameter(np.array([1.0]))
    opt = optim.SGD([p], lr=0.1, momentum=0.9, nesterov=True)
    p.grad[:] = 1.0
    opt.step()                                                      # buf = 1, step = g + 0.9*buf = 1.9
    assert p.data[0] == pytest.approx(1 - 0.19)
    opt.step()                                                      # buf = 1.9, step = 1 + 1.71 = 2.71
    assert p.data[0] == pytest.approx(1 - 0.19 - 0.271)


def test_adam_first_step_is_lr_times_sign():
    p = cl.Parameter(np.array([1.0, -1.0]))
    opt = optim.Adam([p], lr=0.01)
    p.grad[:] = [5.0, -0.3]
    opt.step()
    np.testing.assert_allclose(p.data, [0.99, -0.99], atol=1e-7)


def test_adamw_decay_is_decoupled():
    p = cl.Parameter(np.array([2.0]))
    opt = optim.AdamW([p], lr=0.1, weight_decay=0.5)
    opt.step()                                                      # zero grad: only the decay acts
    assert p.data[0] == pytest.approx(2.0 * (1 - 0.05))


def test_float32_parameters_stay_float32():
    p = cl.Parameter(np.ones(4, np.float32))
    for opt in (optim.SGD([p], lr=0.1, momentum=0.9, weight_decay=1e-3), optim.Adam([p]), optim.AdamW([p])):
        p.grad[:] = 0.5
        opt.step()
        assert p.data.dtype == np.float32


@pytest.mark.parametrize("make", [lambda ps: optim.SGD(ps, lr=0.1, momentum=0.9, weight_decay=1e-2),
                                  lambda ps: optim.Adam(ps, lr=0.1, weight_decay=1e-2)], ids=["sgd", "adam"])
def test_one_optimizer_over_mixed_dtypes_and_frozen_parameters_equals_one_per_parameter(make):
    """step() updates the parameters in groups of one device and dtype: the same as an optimizer
    for each parameter alone, and a frozen one is left as it is."""
    def params():
        return [cl.Parameter(np.arange(3, dtype=np.float32)), cl.Parameter(np.ones(2)),
                cl.Parameter(np.full(4, 2.0, np.float32)), cl.Parameter(np.ones(1), requires_grad=False)]
    together, alone = params(), params()
    opts = [make(together)] + [make([p]) for p in alone]
    for step in range(3):
        for p in together + alone:
            p.grad = np.full(p.shape, 0.5 + step, p.data.dtype)
        for opt in opts:
            opt.step()
    for a, b in zip(together, alone):
        assert a.data.dtype == b.data.dtype
        np.testing.assert_array_equal(a.data, b.data)
    np.testing.assert_array_equal(together[3].data, np.ones(1))     # frozen


@pytest.mark.parametrize("make, match", [
    (lambda: optim.SGD([cl.Parameter(np.ones(1))], lr=-1), "lr must be"),
    (lambda: optim.SGD([cl.Parameter(np.ones(1))], lr=float("nan")), "lr must be"),
    (lambda: optim.SGD([cl.Parameter(np.ones(1))], momentum=1.5), "momentum must be"),
    (lambda: optim.SGD([cl.Parameter(np.ones(1))], nesterov=True), "nesterov needs momentum"),
    (lambda: optim.Adam([cl.Parameter(np.ones(1))], betas=(0.9, 1.0)), "beta2 must be"),
    (lambda: optim.SGD([], lr=0.1), "empty parameter list"),
])
def test_bad_hyper_parameters(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def _lrs(make_schedule, n):
    opt = optim.SGD([cl.Parameter(np.ones(1))], lr=1.0)
    sched = make_schedule(opt)
    return [opt.lr] + [sched.step() for _ in range(n)]


def test_step_schedule():
    assert _lrs(lambda o: optim.StepLR(o, step_size=2, gamma=0.5), 5) == [1, 1, 0.5, 0.5, 0.25, 0.25]


def test_cosine_schedule_with_warmup():
    lrs = _lrs(lambda o: optim.CosineLR(o, total=4, min_lr=0.2, warmup=2), 7)
    want = [0.5, 1.0] + [0.2 + 0.8 * 0.5 * (1 + math.cos(math.pi * t / 4)) for t in range(5)] + [0.2]
    np.testing.assert_allclose(lrs, want)


def test_constant_schedule_warmup():
    assert _lrs(lambda o: optim.ConstantLR(o, warmup=4), 5) == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0]
    with pytest.raises(ValueError, match="step_size"):
        optim.StepLR(optim.SGD([cl.Parameter(np.ones(1))], lr=1.0), step_size=0)
