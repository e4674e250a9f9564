"""Tests written against mutation testing's survivors (mutmut over optim, losses, train, io and
gradcheck; see README "Development"): each one fails for a class of changed lines that the rest
of the suite let through. Grouped by module; each group says what it catches."""
import inspect
import json
import math
import re

import numpy as np
import pytest

import convlib as cl
from convlib import gradcheck, optim
from convlib.gradcheck import check_layer, check_loss, numerical_grad, rel_error


def _data(n=70, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 6)).astype(np.float32)
    return x, (x[:, 0] + 0.3 * x[:, 1] > 0).astype(np.int64)


def _net(seed=0):
    cl.manual_seed(seed)
    return cl.Sequential(cl.Linear(6, 8), cl.ReLU(), cl.Linear(8, 2))


# ---------------------------------------------------------------- optim
# Catches: hyper-parameter checks that accept what they should refuse, messages naming the
# wrong class, defaults that differ from the documented (torch's) ones, CosineLR's min_lr ratio.
def _params():
    return [cl.Parameter(np.ones(3, np.float32))]


@pytest.mark.parametrize("make, message", [
    (lambda: optim.SGD([], lr=0.1), "SGD: got an empty parameter list"),
    (lambda: optim.Adam(_params(), lr=-1), "Adam: lr must be a number in [0, inf), got -1"),
    (lambda: optim.AdamW(_params(), weight_decay=-1), "AdamW: weight_decay must be a number in [0, inf)"),
    (lambda: optim.SGD(_params(), momentum=1.0), "SGD: momentum must be a number in [0, 1), got 1.0"),
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


# ---------------------------------------------------------------- losses
# Catches: messages naming the wrong function, integer labels of another kind accepted.
@pytest.mark.parametrize("call, message", [
    (lambda: cl.softmax(np.zeros(3)), "softmax: expected float logits of shape (N, K), got (3,) float64"),
    (lambda: cl.softmax(np.array([[np.nan, 0.0]])), "softmax: logits hold NaN or infinite values"),
    (lambda: cl.softmax([[1.0, 2.0]]), "softmax: expected float logits of shape (N, K), got list"),
    (lambda: cl.softmax(np.zeros((2, 2), np.int64)), "softmax: expected float logits of shape (N, K), got (2, 2) int64"),
    (lambda: cl.softmax_cross_entropy(np.zeros((2, 3)), np.zeros(2)),
     "softmax_cross_entropy: expected integer labels of shape (2,), got (2,) float64"),
    (lambda: cl.softmax_cross_entropy(np.zeros((2, 3)), np.array([0, 3])),
     "softmax_cross_entropy: labels must lie in [0, 3), got values from 0 to 3"),
    (lambda: cl.softmax_cross_entropy(np.full((1, 2), np.inf), np.array([0])),
     "softmax_cross_entropy: logits hold NaN or infinite values"),
])
def test_loss_errors_name_the_function_and_what_was_wrong(call, message):
    with pytest.raises(ValueError) as e:
        call()
    assert str(e.value) == message


def test_unsigned_labels_are_labels():
    loss, _ = cl.softmax_cross_entropy(np.array([[0.0, np.log(3.0)]]), np.array([1], np.uint8))
    assert loss == pytest.approx(np.log(4 / 3))


# ---------------------------------------------------------------- train
# Catches: history values that are not the epoch's averages, the progress bar's numbers, the
# documented defaults (epochs, batch size, seed, optimizer), batch-size checks at their edge,
# list-of-batches inputs, the first layer's input gradient computed in training, messages.
def test_history_loss_and_accuracy_are_the_epochs_averages():
    x, y = _data(70)
    net = _net(seed=2)
    want_loss, want_acc = cl.evaluate(net, x, y)                    # the net before any update
    assert want_acc != 0.5                                           # (so that 1 - acc would show)
    opt = cl.optim.SGD(net.parameters(), lr=1e-30)                  # steps too small to change a weight
    hist = cl.fit(net, (x, y), val=(x[:30], y[:30]), epochs=1, batch_size=32, optimizer=opt, progress=False)
    assert hist["loss"][0] == pytest.approx(want_loss, rel=1e-6)    # batches of 32, 32, 6 weighted by size
    assert hist["acc"][0] == want_acc
    assert (hist["val_loss"][0], hist["val_acc"][0]) == pytest.approx(cl.evaluate(net, x[:30], y[:30]))
    assert 0 < hist["seconds"][0] < 60


def test_the_progress_bar_shows_the_epochs_numbers(capsys):
    x, y = _data(70)
    hist = cl.fit(_net(), (x, y), val=(x[:30], y[:30]), epochs=2, batch_size=32)    # progress on by default
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 2
    for epoch, line in enumerate(lines, 1):
        assert line.startswith(f"epoch {epoch}/2 [####################] 3/3 ") and " batch/s " in line
        values = dict(re.findall(r"(\w+)=([-\d.e+]+)", line))
        assert float(values["loss"]) == pytest.approx(hist["loss"][epoch - 1], rel=1e-3)
        assert float(values["acc"]) == pytest.approx(hist["acc"][epoch - 1], rel=1e-3)
        assert float(values["val_acc"]) == pytest.approx(hist["val_acc"][epoch - 1], rel=1e-3)


def test_a_list_of_batches_is_batches(capsys):
    x, y = _data(40)
    batches = [(x[:20], y[:20]), (x[20:], y[20:])]                  # two batches, not [x, y]
    steps = []
    hist = cl.fit(_net(), batches, epochs=1, augment=None, on_epoch_end=lambda e, h: steps.append(h["loss"]))
    assert "2/2" in capsys.readouterr().err and len(hist["loss"]) == 1 and steps == [hist["loss"]]


def test_fit_defaults_are_the_documented_ones():
    x, y = _data(70)
    counted = []
    net = _net()
    hist = cl.fit(net, (x, y), progress=False, augment=lambda xb, rng: counted.append(len(xb)) or xb)
    assert len(hist["loss"]) == 10 and counted[:3] == [32, 32, 6] and len(counted) == 30
    by_default = net.state_dict()
    net = _net()
    cl.fit(net, (x, y), epochs=10, batch_size=32, seed=0, optimizer=cl.optim.SGD(net.parameters(), lr=0.01,
           momentum=0.9), progress=False, augment=lambda xb, rng: xb)
    for k, v in net.state_dict().items():
        np.testing.assert_array_equal(v, by_default[k])


def test_augment_gets_the_seeded_generator():
    x, y = _data(40)
    draws = {0: [], 1: []}
    for run in (0, 1):
        cl.fit(_net(), (x, y), epochs=1, batch_size=16, progress=False,
               augment=lambda xb, rng, run=run: draws[run].append(rng.integers(1 << 30)) or xb)
    assert draws[0] == draws[1] and len(set(draws[0])) == 3         # the same draws under the same seed


def test_batch_size_one_is_allowed_and_a_fraction_is_not():
    x, y = _data(5)
    assert len(cl.fit(_net(), (x, y), epochs=1, batch_size=1, progress=False)["loss"]) == 1
    for bad in (0, 1.5):
        with pytest.raises(ValueError, match=f"^fit: batch_size must be an int >= 1, got {bad}$"):
            cl.fit(_net(), (x, y), batch_size=bad, progress=False)


def test_one_sample_is_enough_and_no_batches_is_an_error():
    x, y = _data(1)
    assert len(cl.fit(_net(), [(x, y)], epochs=1, progress=False)["acc"]) == 1
    with pytest.raises(ValueError, match="^fit: the training data yielded no batches$"):
        cl.fit(_net(), [], epochs=1, progress=False)


def test_training_skips_the_first_layers_input_gradient():
    x, y = _data(40)
    net = _net()
    asked = []
    first = net[0].backward
    net[0].backward = lambda dout, need_dx=True: asked.append(need_dx) or first(dout, need_dx)
    cl.fit(net, (x, y), epochs=1, batch_size=16, progress=False)
    assert asked == [False, False, False]


def test_a_nan_loss_names_the_epoch_and_step():
    x, y = _data(40)
    calls = []

    def loss_fn(logits, yb):
        calls.append(1)
        loss, d = cl.softmax_cross_entropy(logits, yb)
        return (float("nan") if len(calls) == 2 else loss), d
    with pytest.raises(FloatingPointError, match=r"fit: the loss became nan at epoch 1, step 2 \(lr=0.01\); "
                                                 r"lower the learning rate"):
        cl.fit(_net(), (x, y), epochs=1, batch_size=16, loss_fn=loss_fn, progress=False)


@pytest.mark.parametrize("call, message", [
    (lambda x, y: cl.fit(_net(), (x, y.astype(float)), progress=False), "fit(train): expected integer labels"),
    (lambda x, y: cl.fit(_net(), (x, y), val=(x[:3], y[:2]), progress=False), "fit(val): expected integer labels"),
    (lambda x, y: cl.evaluate(_net(), x, y[:-1]), "evaluate: expected integer labels"),
    (lambda x, y: cl.predict_proba(_net(), x[0]), "predict_proba: expected float inputs"),
    (lambda x, y: cl.evaluate(_net(), x[0], y), "evaluate: expected float inputs"),
    (lambda x, y: cl.evaluate(_net(), x, y.astype(np.uint8) + 0.5), "evaluate: expected integer labels"),
])
def test_training_errors_name_the_call(call, message):
    x, y = _data(10)
    with pytest.raises(ValueError) as e:
        call(x, y)
    assert str(e.value).startswith(message), str(e.value)


def test_unsigned_labels_train_and_iterate_batches_keeps_order_by_default():
    x, y = _data(10)
    cl.fit(_net(), (x, y.astype(np.uint8)), epochs=1, progress=False)
    got = np.concatenate([xb for xb, _ in cl.train.iterate_batches(x, y, 4)])
    np.testing.assert_array_equal(got, x)
    assert inspect.signature(cl.evaluate).parameters["batch_size"].default == 256
    assert inspect.signature(cl.predict_proba).parameters["batch_size"].default == 256


# ---------------------------------------------------------------- io
# Catches: a model file that names a non-layer class (or a private one) being built, error
# messages losing the layer type or the exception, saved precision lost, metadata not a dict.
def _header_file(tmp_path, arch, arrays=None):
    header = json.dumps({"format": 1, "arch": arch, "metadata": {}}).encode()
    path = tmp_path / "m.npz"
    np.savez(path, __convlib__=np.frombuffer(header, np.uint8), **(arrays or {}))
    return path


@pytest.mark.parametrize("name", ["Layer", "Parameter", "_Pool2d", "_ReLUMaxPool", "np", "math", "Sequentia"])
def test_a_model_file_can_only_name_public_layers(tmp_path, name):
    path = _header_file(tmp_path, {"type": "Sequential", "layers": [{"type": name}]})
    with pytest.raises(ValueError, match=f"unknown layer type '{name}'"):
        cl.load(path)


def test_model_file_layer_errors_say_what_was_wrong(tmp_path):
    for entry in (["Linear"], ["type"], "type", {"in_features": 2}):
        with pytest.raises(ValueError, match=r"model file: bad layer entry " + re.escape(repr(entry))):
            cl.load(_header_file(tmp_path, {"type": "Sequential", "layers": [entry]}))
    with pytest.raises(ValueError, match=r"model file: cannot build Linear from \{'in_features': 2\}"):
        cl.load(_header_file(tmp_path, {"type": "Sequential", "layers": [{"type": "Linear", "in_features": 2}]}))
    assert len(cl.load(_header_file(tmp_path, {"type": "Sequential"}))) == 0    # no layers listed: empty


def test_load_keeps_float64_and_metadata_is_a_dict(tmp_path):
    net = _net().to(np.float64)
    cl.save(net, tmp_path / "n.npz")
    loaded, meta = cl.load(tmp_path / "n.npz", with_metadata=True)
    assert meta == {} and loaded[0].weight.data.dtype == np.float64
    header = {"format": 1, "arch": json.loads(json.dumps(cl.model.layer_to_json(net)))}
    np.savez(tmp_path / "nometa.npz", __convlib__=np.frombuffer(json.dumps(header).encode(), np.uint8),
             **net.state_dict())
    assert cl.load(tmp_path / "nometa.npz", with_metadata=True)[1] == {}


def test_load_messages_name_the_file_and_the_problem(tmp_path):
    (tmp_path / "bad.npz").write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(ValueError, match=r"bad.npz: corrupt or truncated model file \(BadZipFile: "):
        cl.load(tmp_path / "bad.npz")
    with pytest.raises(ValueError, match=r"^.*reserved"):
        net = _net()
        net.state_dict = lambda: {"__convlib__": np.zeros(1)}
        cl.save(net, tmp_path / "x.npz")
    np.savez(tmp_path / "plain.npz", **{f"a{i}": np.zeros(1) for i in range(7)})
    with pytest.raises(ValueError, match=r"^\S*plain.npz: not a convlib model file \(no __convlib__ header; "
                                         r"arrays found: \['a0', 'a1', 'a2', 'a3', 'a4'\]\)$"):
        cl.load(tmp_path / "plain.npz")


# ---------------------------------------------------------------- gradcheck
# Catches: relative errors computed in the input's dtype, the 1e-8 floor, the empty case, the
# tolerance edge, the floor relative to the largest gradient, names in messages, the eps and
# seed arguments not passed on, the layer under test modified.
def test_rel_error_is_float64_with_a_floor_and_empty_is_zero():
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
    doubled = lambda lg, yb: (lambda l, d: (l, 2 * d))(*cl.softmax_cross_entropy(lg, yb))
    with pytest.raises(AssertionError, match="^dlogits: relative error"):
        check_loss(doubled, logits32, y)
    kink = lambda lg, yb: (float(np.abs(lg).sum()), np.sign(lg))
    with pytest.raises(AssertionError):
        check_loss(kink, np.array([[5e-4, 1.0]]), None, eps=1e-3)     # eps is passed on
    assert check_loss(kink, np.array([[5e-4, 1.0]]), None) < 1e-8
    assert math.isclose(inspect.signature(check_loss).parameters["tol"].default, 1e-5)



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
    assert optim.StepLR(optim.SGD(_params(), lr=1.0), 1).lr_at(1) == pytest.approx(0.1)


class _Sizes(cl.Flatten):
    """Flatten that records the batch sizes it sees."""
    def __init__(self):
        self.seen = []

    def forward(self, x):
        self.seen.append(len(x))
        return super().forward(x)


def test_evaluation_batches_are_256_and_validation_at_least_that():
    cl.manual_seed(0)
    sizes = _Sizes()
    net = cl.Sequential(sizes, cl.Linear(6, 2))
    x, y = _data(300)
    cl.predict_proba(net, x)
    cl.evaluate(net, x, y)
    assert sizes.seen == [256, 44, 256, 44]
    sizes.seen.clear()
    cl.fit(net, (x[:10], y[:10]), val=(x, y), epochs=1, batch_size=4, progress=False)
    assert sizes.seen == [4, 4, 2, 256, 44]
    sizes.seen.clear()
    cl.fit(net, (x[:10], y[:10]), val=(x, y), epochs=1, batch_size=290, progress=False)
    assert sizes.seen == [10, 290, 10]                               # validation batches: max(batch_size, 256)


def test_fit_shuffles_every_epoch_and_takes_any_re_iterable():
    x, y = _data(40)
    firsts = []
    cl.fit(_net(), (x, y), epochs=2, batch_size=40, progress=False,
           augment=lambda xb, rng: firsts.append(xb.copy()) or xb)
    assert not np.array_equal(firsts[0], x) and not np.array_equal(firsts[0], firsts[1])
    assert sorted(map(tuple, firsts[0])) == sorted(map(tuple, x))    # each sample once

    class Loader:                                                    # iterable, no len()
        def __iter__(self):
            return iter([(x[:20], y[:20]), (x[20:], y[20:])])
    hist = cl.fit(_net(), Loader(), epochs=2, progress=False)
    assert len(hist["loss"]) == 2


def test_progress_false_prints_nothing(capsys):
    x, y = _data(40)
    cl.fit(_net(), (x, y), val=(x, y), epochs=1, progress=False)
    assert capsys.readouterr().err == ""


def test_restore_best_false_keeps_the_last_epoch():
    x, y = _data(40)
    states = {}
    cl.manual_seed(0)
    net = cl.Sequential(cl.Linear(6, 8), cl.ReLU(), cl.Dropout(0.5), cl.Linear(8, 2))
    hist = cl.fit(net, (x, y), val=(x[:20], y[:20]), epochs=6, batch_size=8, progress=False, restore_best=False,
                  optimizer=cl.optim.SGD(net.parameters(), lr=0.5),
                  on_epoch_end=lambda e, h: states.__setitem__(e, net.state_dict()))
    assert hist.best_epoch != 6                                      # (so that restoring would show)
    for k, v in net.state_dict().items():
        np.testing.assert_array_equal(v, states[6][k])


def test_a_one_array_float64_model_loads(tmp_path):
    cl.manual_seed(0)
    net = cl.Sequential(cl.Linear(3, 2, bias=False)).to(np.float64)
    cl.save(net, tmp_path / "one.npz")
    assert cl.load(tmp_path / "one.npz")[0].weight.data.dtype == np.float64


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


# ---------------------------------------------------------------- checkpoints and optimizer state
# Catches: resume on by default, Ctrl-C caught without a checkpoint, a schedule or best weights
# expected where the run had none, optimizer state that aliases the live buffers or keeps the
# saved dtype, load messages losing the class, the entry names or the exception type.
def test_checkpoint_resume_is_off_by_default_and_ctrl_c_without_one_is_immediate(tmp_path):
    import os
    import signal
    x, y = _data(40)
    ck = str(tmp_path / "ck.npz")
    first = cl.fit(_net(), (x, y), epochs=2, progress=False, checkpoint=ck)
    again = cl.fit(_net(), (x, y), epochs=2, progress=False, checkpoint=ck)     # not resumed: trains 2 epochs
    assert again["loss"] == first["loss"]
    calls = []

    def press(xb, rng):
        calls.append(1)
        if len(calls) == 1:
            os.kill(os.getpid(), signal.SIGINT)
        return xb
    old = signal.signal(signal.SIGINT, signal.default_int_handler)   # Python's Ctrl-C, even where the shell
    try:                                                               # started us with SIGINT ignored (a & job)
        with pytest.raises(KeyboardInterrupt) as e:
            cl.fit(_net(), (x, y), epochs=1, batch_size=8, progress=False, augment=press)
    finally:
        signal.signal(signal.SIGINT, old)
    assert len(calls) == 1 and "stopped after" not in str(e.value)  # no checkpoint: Python's own Ctrl-C


def test_resume_without_schedule_or_best_weights(tmp_path):
    x, y = _data(40)
    ck = str(tmp_path / "ck.npz")
    net = _net()
    opt = cl.optim.SGD(net.parameters(), lr=0.1)
    cl.fit(net, (x, y), epochs=1, optimizer=opt, schedule=cl.optim.StepLR(opt, 1), progress=False, checkpoint=ck)
    net2 = _net()
    hist = cl.fit(net2, (x, y), epochs=2, optimizer=cl.optim.SGD(net2.parameters(), lr=0.1), progress=False,
                  checkpoint=ck, resume=True)                        # no schedule now, no val: no best weights
    assert len(hist["loss"]) == 2 and hist.best_epoch is None


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


def test_load_messages_for_odd_entries_and_headers(tmp_path):
    import zipfile
    net = _net()
    cl.save(net, tmp_path / "m.npz")
    with zipfile.ZipFile(tmp_path / "m.npz") as z, zipfile.ZipFile(tmp_path / "odd.npz", "w") as out:
        for name in z.namelist():
            out.writestr(name, z.read(name))
        out.writestr("notes.txt", b"not an array")                  # np.load hands this back as bytes
    with pytest.raises(ValueError, match=r"odd.npz: corrupt model file \(entries that are not arrays: "
                                         r"\['notes.txt'\]\)$"):
        cl.load(tmp_path / "odd.npz")
    np.savez(tmp_path / "list.npz", __convlib__=np.frombuffer(b"[1, 2]", np.uint8))
    with pytest.raises(ValueError, match=r"list.npz: unsupported model file format None"):
        cl.load(tmp_path / "list.npz")
    path = _header_file(tmp_path, {"type": "Sequential", "layers": 5})
    with pytest.raises(ValueError, match=r"m.npz: TypeError: 'int' object is not iterable$"):
        cl.load(path)
    path = _header_file(tmp_path, {"type": "Linear", "in_features": 2})
    with pytest.raises(ValueError, match=r"m.npz: model file: cannot build Linear"):
        cl.load(path)
