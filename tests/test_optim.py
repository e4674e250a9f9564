"""Optimizers converge on a quadratic with a known minimum, match torch's update rules step by
step (hand-computed), and schedules give the expected learning rates."""
import inspect
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


def _params():
    return [cl.Parameter(np.ones(3, np.float32))]


@pytest.mark.parametrize("make, message", [
    (lambda: optim.SGD([], lr=0.1), "SGD: got an empty parameter list"),
    (lambda: optim.Adam(_params(), lr=-1), "Adam: lr must be a number in [0, inf), got -1"),
    (lambda: optim.AdamW(_params(), weight_decay=-1), "AdamW: weight_decay must be a number in [0, inf)"),
    (lambda: optim.SGD(_params(), momentum=1.0), "SGD: momentum must be a number in [0, 1), got 1.0"),
    (lambda: optim.SGD(_params(), momentum=1.5), "SGD: momentum must be a number in [0, 1), got 1.5"),
    (lambda: optim.SGD(_params(), lr=float("nan")), "SGD: lr must be a number in [0, inf), got nan"),
    (lambda: optim.Adam(_params(), betas=(0.9, 1.0)), "Adam: beta2 must be a number in [0, 1), got 1.0"),
    (lambda: optim.SGD(_params(), nesterov=True), "SGD: nesterov needs momentum > 0"),
    (lambda: optim.Adam(_params(), betas=(1.0, 0.9)), "Adam: beta1 must be a number in [0, 1), got 1.0"),
    (lambda: optim.Adam(_params(), betas=(0.9, 1.5)), "Adam: beta2 must be a number in [0, 1), got 1.5"),
    (lambda: optim.Adam(_params(), eps=1.0), "Adam: eps must be a number in [0, 1), got 1.0"),
    (lambda: optim.StepLR(optim.SGD(_params()), 2, gamma=-0.5), "StepLR: gamma must be a number in [0, inf)"),
    (lambda: optim.StepLR(optim.SGD(_params()), 2, warmup=-1), "StepLR: warmup must be an int >= 0, got -1"),
    (lambda: optim.CosineLR(optim.SGD(_params()), 5, warmup=1.5), "CosineLR: warmup must be an int >= 0"),
    (lambda: optim.CosineLR(optim.SGD(_params()), 2.5), "CosineLR: total must be an int >= 1, got 2.5"),
    (lambda: optim.CosineLR(optim.SGD(_params()), 0), "CosineLR: total must be an int >= 1, got 0"),
])
def test_optimizer_and_schedule_errors_name_the_class_and_the_value(make, message):
    with pytest.raises(ValueError) as e:
        make()
    assert str(e.value).startswith(message), str(e.value)


def test_optimizer_defaults_are_the_documented_ones():
    defaults = lambda cls: {k: v.default for k, v in inspect.signature(cls).parameters.items()
                            if v.default is not inspect.Parameter.empty}
    assert defaults(optim.SGD) == dict(lr=0.01, momentum=0.0, weight_decay=0.0, nesterov=False)
    assert defaults(optim.Adam) == dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0)
    assert defaults(optim.AdamW) == dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01)
    assert defaults(optim.StepLR) == dict(gamma=0.1, warmup=0)
    assert defaults(optim.CosineLR) == dict(min_lr=0.0, warmup=0)
    opt = optim.SGD(_params(), lr=0.5)
    assert opt.weight_decay == 0.0 and optim.ConstantLR(opt).lr_at(0) == 0.5       # no warm-up by default


def test_schedule_edges_one_step_totals_and_warmup_on_step_lr():
    opt = optim.SGD(_params(), lr=0.5)
    assert optim.CosineLR(opt, total=1).lr_at(1) == pytest.approx(0.0)         # total=1 is allowed
    opt = optim.SGD(_params(), lr=0.5)
    sched = optim.StepLR(opt, step_size=1, gamma=0.5, warmup=2)
    assert [sched.lr_at(t) for t in range(4)] == pytest.approx([0.25, 0.5, 0.5, 0.25])


def test_cosine_decays_to_min_lr_for_any_base_lr():
    opt = optim.SGD(_params(), lr=0.5)
    sched = optim.CosineLR(opt, total=4, min_lr=0.1)
    assert [sched.lr_at(t) for t in (0, 2, 4)] == pytest.approx([0.5, 0.3, 0.1])


def test_sgd_without_momentum_keeps_no_buffer():
    opt = optim.SGD(_params(), lr=0.1)
    opt.params[0].grad[:] = 1.0
    opt.step()
    assert opt.state == [{}]                                        # no momentum: no memory per parameter


def test_default_hyper_parameters_act_as_documented():
    p = cl.Parameter(np.zeros(2))
    p.grad[:] = 1.0
    optim.SGD([p]).step()
    np.testing.assert_allclose(p.data, -0.01)                        # lr 0.01, no momentum or decay
    for cls in (optim.Adam, optim.AdamW):
        p = cl.Parameter(np.ones(2))
        p.grad[:] = 1.0
        cls([p], weight_decay=0.0).step()
        np.testing.assert_allclose(p.data, 1 - 1e-3, rtol=1e-6)     # Adam's first step is lr * sign(g)
    p = cl.Parameter(np.array([1.0, -1.0]))
    p.grad[:] = [5.0, -0.3]
    optim.Adam([p], lr=0.01).step()
    np.testing.assert_allclose(p.data, [0.99, -0.99], atol=1e-7)     # whatever the gradient's size
    assert optim.StepLR(optim.SGD(_params(), lr=1.0), 1).lr_at(1) == pytest.approx(0.1)


def test_optimizer_state_dict_is_a_copy_and_loads_in_the_parameters_dtype():
    p = cl.Parameter(np.ones(2, np.float32))
    opt = cl.optim.SGD([p], lr=0.1, momentum=0.9)
    p.grad[:] = 1.0
    opt.step()
    sd = opt.state_dict()
    opt.step()
    np.testing.assert_array_equal(sd["state"][0]["buf"], [1.0, 1.0])   # not the live buffer
    sd["state"][0]["buf"] = np.full(2, 0.5, np.float64)
    opt.load_state_dict(sd)
    assert opt.state[0]["buf"].dtype == np.float32
    with pytest.raises(ValueError, match=r"^SGD.load_state_dict: state for 2 parameters, this optimizer has 1$"):
        opt.load_state_dict(dict(sd, state=[{}, {}]))
    with pytest.raises(ValueError, match=r"^SGD.load_state_dict: buffer 'buf' of parameter 0 has shape \(3,\), "
                                         r"the parameter \(2,\)$"):
        opt.load_state_dict(dict(sd, state=[{"buf": np.zeros(3)}]))


def test_optimizer_state_dict_round_trip():
    cl.manual_seed(0)
    a = cl.Linear(3, 2)
    opt = cl.optim.Adam(a.parameters(), lr=0.1)
    for _ in range(3):
        for p in a.parameters():
            p.grad[:] = 1.0
        opt.step()
    sd = opt.state_dict()
    assert sd["t"] == 3 and set(sd["state"][0]) == {"m", "v"}
    b = cl.Linear(3, 2)
    b.load_state_dict(a.state_dict())
    opt2 = cl.optim.Adam(b.parameters(), lr=0.5).load_state_dict(sd)
    for o, layer in ((opt, a), (opt2, b)):
        for p in layer.parameters():
            p.grad[:] = 0.5
        o.step()
    np.testing.assert_array_equal(a.weight.data, b.weight.data)
    sd["state"][0]["m"] = np.zeros(5)
    with pytest.raises(ValueError, match="buffer 'm' of parameter 0 has shape"):
        opt2.load_state_dict(sd)
