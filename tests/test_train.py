"""fit / evaluate / predict_proba: a small ConvNet learns a generated image task; NaN detection;
best-weights restore; input validation; progress output."""
import functools
import inspect
import io
import re

import numpy as np
import pytest

import convlib as cl
from convlib.progress import Progress


def bars(n, rng, size=12):
    """Images with one horizontal (label 0) or vertical (label 1) bright bar, plus noise."""
    x = rng.normal(0, 0.3, (n, 1, size, size)).astype(np.float32)
    y = rng.integers(0, 2, n)
    pos = rng.integers(1, size - 1, n)
    for i in range(n):
        if y[i] == 0:
            x[i, 0, pos[i], :] += 1.5
        else:
            x[i, 0, :, pos[i]] += 1.5
    return x, y


def bar_net():
    cl.manual_seed(0)
    return cl.Sequential(cl.Conv2d(1, 6, 3, padding=1), cl.ReLU(), cl.MaxPool2d(2),
                         cl.Conv2d(6, 8, 3, padding=1), cl.ReLU(), cl.MaxPool2d(2),
                         cl.Flatten(), cl.Linear(8 * 3 * 3, 16), cl.ReLU(), cl.Linear(16, 2))


def test_fit_learns_bars_above_95_percent(rng):
    xtr, ytr = bars(600, rng)
    xte, yte = bars(300, rng)
    net = bar_net()
    opt = cl.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    hist = cl.fit(net, (xtr, ytr), val=(xte, yte), epochs=6, batch_size=32, optimizer=opt,
                  schedule=cl.optim.CosineLR(opt, total=6), progress=False)
    assert set(hist) == {"loss", "acc", "val_loss", "val_acc", "lr", "seconds"}
    assert len(hist["val_acc"]) == 6 and hist["loss"][-1] < hist["loss"][0]
    loss, acc = cl.evaluate(net, xte, yte)
    assert acc > 0.95, hist
    assert acc == hist.best_val_acc                                 # best weights restored
    p = cl.predict_proba(net, xte)
    assert p.shape == (300, 2)
    np.testing.assert_allclose(p.sum(1), 1, rtol=1e-5)
    assert (p.argmax(1) == yte).mean() == acc


def test_fit_accepts_a_batch_iterable(rng):
    x, y = bars(64, rng)
    batches = [(x[i:i + 16], y[i:i + 16]) for i in range(0, 64, 16)]
    hist = cl.fit(bar_net(), batches, epochs=2, progress=False)
    assert len(hist["loss"]) == 2 and hist.best_epoch is None


def test_fit_is_reproducible_with_a_seed(rng):
    x, y = bars(64, rng)
    nets = [bar_net(), bar_net()]
    for net in nets:
        cl.fit(net, (x, y), epochs=2, batch_size=16, seed=7, progress=False)
    np.testing.assert_array_equal(nets[0][0].weight.data, nets[1][0].weight.data)


def test_a_loss_with_rows_counts_as_a_loss_of_your_own(rng, monkeypatch):
    """fit reads CrossEntropyLoss's loss and accuracy from one array of per-row results (its
    ``rows``); a loss of your own makes it count on a host copy of the logits: the same history."""
    x, y = bars(64, rng)
    x[:20] = x[:20][:, :, ::-1]                                     # some rows the net gets wrong early
    rows_calls = []
    loss = cl.CrossEntropyLoss(label_smoothing=0.2)
    monkeypatch.setattr(loss, "rows", lambda *a: rows_calls.append(1) or cl.losses.loss_rows(*a, 0.2))
    hists = []
    for loss_fn in (loss, functools.partial(cl.softmax_cross_entropy, label_smoothing=0.2)):
        hists.append(cl.fit(bar_net(), (x, y), epochs=2, batch_size=16, seed=3, loss_fn=loss_fn, progress=False))
    assert 0 < hists[0]["acc"][0] < 1 and len(rows_calls) == 8     # 2 epochs x 4 batches, through rows
    for key in ("loss", "acc"):
        np.testing.assert_allclose(hists[0][key], hists[1][key], rtol=1e-12)


@pytest.mark.parametrize("bad, match", [
    (lambda x, y: (x, y[:-1]), r"labels of shape \(32,\)"),
    (lambda x, y: (x.astype(int), y), "float inputs"),
    (lambda x, y: (np.where(x > 1, np.nan, x).astype(np.float32), y), "NaN"),
])
def test_fit_rejects_bad_data(rng, bad, match):
    x, y = bars(32, rng)
    with pytest.raises(ValueError, match=match):
        cl.fit(bar_net(), bad(x, y), epochs=1, progress=False)
    with pytest.raises(ValueError, match="epochs must be"):
        cl.fit(bar_net(), (x, y), epochs=0)


def test_progress_bar_shows_rate_eta_and_values():
    out = io.StringIO()
    with Progress(10, "epoch 1", "batch", stream=out, log_every=0) as bar:
        for _ in range(10):
            bar.update(1, loss=0.5)
    lines = out.getvalue().splitlines()
    assert lines[-1].startswith("epoch 1 [####################] 10/10")
    assert "batch/s" in lines[-1] and "eta 00:00" in lines[-1] and "loss=0.5" in lines[-1]


def test_fit_takes_a_list_x_y_as_well_as_a_tuple():
    x = np.random.default_rng(0).random((12, 4)).astype(np.float32)
    y = np.arange(12) % 2
    runs = []
    for train in ((x, y), [x, y]):
        cl.manual_seed(0)
        net = cl.Sequential(cl.Linear(4, 2))
        runs.append(cl.fit(net, train, epochs=2, batch_size=4, progress=False)["loss"])
    assert runs[0] == runs[1] and len(runs[0]) == 2


# ---------------------------------------------------------------- checkpoints
def _resumable_run(tmp_path, interrupt=None, crash_after_epoch=None, resume=False, init_seed=0):
    """A 4-epoch run with Adam, cosine schedule with warm-up, dropout and batch norm; optionally
    Ctrl-C'd at (epoch, step), or crashing after an epoch, or resuming from its checkpoint."""
    import os
    import signal
    rng = np.random.default_rng(1)
    x = rng.standard_normal((50, 1, 6, 6)).astype(np.float32)
    y = (x[:, 0, :3].mean((1, 2)) > 0).astype(np.int64)
    cl.manual_seed(init_seed)
    net = cl.Sequential(cl.Conv2d(1, 4, 3, padding=1), cl.BatchNorm2d(4), cl.ReLU(), cl.MaxPool2d(2),
                        cl.Flatten(), cl.Dropout(0.3), cl.Linear(36, 2))
    opt = cl.optim.Adam(net.parameters(), lr=0.01)
    sched = cl.optim.CosineLR(opt, total=4, warmup=1)
    steps = []

    def augment(xb, g):
        steps.append(1)
        epoch, step = len(steps) // 4 + 1, len(steps) % 4
        if interrupt == (epoch, step):
            os.kill(os.getpid(), signal.SIGINT)                     # as if the user pressed Ctrl-C
        return cl.data.RandomFlip()(xb, g)

    def crash(epoch, hist):
        if epoch == 4:
            hist.last_epoch_state = net.state_dict()                 # before fit restores the best epoch
        if epoch == crash_after_epoch:
            raise RuntimeError("power cut")
    hist = cl.fit(net, (x, y), val=(x[:20], y[:20]), epochs=4, batch_size=13, optimizer=opt, schedule=sched,
                  augment=augment, progress=False, checkpoint=str(tmp_path / "ckpt.npz"), resume=resume,
                  on_epoch_end=crash)
    return net, hist


def test_a_resumed_run_ends_bit_for_bit_where_an_uninterrupted_one_does(tmp_path):
    (tmp_path / "a").mkdir()
    want, want_hist = _resumable_run(tmp_path / "a")
    (tmp_path / "b").mkdir()
    with pytest.raises(KeyboardInterrupt, match=r"stopped after epoch 3, step 2; .*ckpt.npz holds the run: "
                                                r"continue it with fit\(\.\.\., checkpoint=.*, resume=True\)"):
        _resumable_run(tmp_path / "b", interrupt=(3, 2))
    got, hist = _resumable_run(tmp_path / "b", resume=True, init_seed=7)   # other initial weights: loaded
    for k, v in want.state_dict().items():
        np.testing.assert_array_equal(got.state_dict()[k], v, err_msg=k)                 # the best epoch's
        np.testing.assert_array_equal(hist.last_epoch_state[k], want_hist.last_epoch_state[k], err_msg=k)
    assert hist["loss"] == want_hist["loss"] and hist["val_acc"] == want_hist["val_acc"]
    assert hist.best_epoch == want_hist.best_epoch and hist["lr"] == want_hist["lr"]
    (tmp_path / "c").mkdir()
    with pytest.raises(RuntimeError, match="power cut"):
        _resumable_run(tmp_path / "c", crash_after_epoch=2)         # the checkpoint after epoch 2 is on disk
    got, hist = _resumable_run(tmp_path / "c", resume=True, init_seed=7)
    for k, v in want.state_dict().items():
        np.testing.assert_array_equal(got.state_dict()[k], v, err_msg=k)
        np.testing.assert_array_equal(hist.last_epoch_state[k], want_hist.last_epoch_state[k], err_msg=k)


def test_checkpoint_errors_say_what_is_wrong(tmp_path):
    net = cl.Sequential(cl.Linear(3, 2))
    cl.save(net, tmp_path / "model.npz")
    x, y = np.zeros((4, 3), np.float32), np.zeros(4, np.int64)
    with pytest.raises(ValueError, match="not a fit\\(\\) checkpoint"):
        cl.fit(net, (x, y), epochs=1, progress=False, checkpoint=str(tmp_path / "model.npz"), resume=True)
    cl.fit(net, (x, y), epochs=1, progress=False, checkpoint=str(tmp_path / "ck.npz"))
    other = cl.Sequential(cl.Linear(3, 5))
    with pytest.raises(ValueError, match="the checkpoint does not fit this net"):
        cl.fit(other, (x, y), epochs=1, progress=False, checkpoint=str(tmp_path / "ck.npz"), resume=True)
    fresh = cl.fit(cl.Sequential(cl.Linear(3, 2)), (x, y), epochs=1, progress=False,
                   checkpoint=str(tmp_path / "none.npz"), resume=True)   # nothing to resume: starts afresh
    assert len(fresh["loss"]) == 1 and (tmp_path / "none.npz").exists()


def _toy_data(n=70, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 6)).astype(np.float32)
    return x, (x[:, 0] + 0.3 * x[:, 1] > 0).astype(np.int64)


def _toy_net(seed=0):
    cl.manual_seed(seed)
    return cl.Sequential(cl.Linear(6, 8), cl.ReLU(), cl.Linear(8, 2))


def test_history_loss_and_accuracy_are_the_epochs_averages():
    x, y = _toy_data(70)
    net = _toy_net(seed=2)
    want_loss, want_acc = cl.evaluate(net, x, y)                    # the net before any update
    assert want_acc != 0.5                                           # (so that 1 - acc would show)
    opt = cl.optim.SGD(net.parameters(), lr=1e-30)                  # steps too small to change a weight
    hist = cl.fit(net, (x, y), val=(x[:30], y[:30]), epochs=1, batch_size=32, optimizer=opt, progress=False)
    assert hist["loss"][0] == pytest.approx(want_loss, rel=1e-6)    # batches of 32, 32, 6 weighted by size
    assert hist["acc"][0] == want_acc
    assert (hist["val_loss"][0], hist["val_acc"][0]) == pytest.approx(cl.evaluate(net, x[:30], y[:30]))
    assert 0 < hist["seconds"][0] < 60


def test_the_progress_bar_shows_the_epochs_numbers(capsys):
    x, y = _toy_data(70)
    hist = cl.fit(_toy_net(), (x, y), val=(x[:30], y[:30]), epochs=2, batch_size=32)    # progress on by default
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 2
    for epoch, line in enumerate(lines, 1):
        assert line.startswith(f"epoch {epoch}/2 [####################] 3/3 ") and " batch/s " in line
        values = dict(re.findall(r"(\w+)=([-\d.e+]+)", line))
        assert float(values["loss"]) == pytest.approx(hist["loss"][epoch - 1], rel=1e-3)
        assert float(values["acc"]) == pytest.approx(hist["acc"][epoch - 1], rel=1e-3)
        assert float(values["val_acc"]) == pytest.approx(hist["val_acc"][epoch - 1], rel=1e-3)


def test_a_list_of_batches_is_batches(capsys):
    x, y = _toy_data(40)
    batches = [(x[:20], y[:20]), (x[20:], y[20:])]                  # two batches, not [x, y]
    steps = []
    hist = cl.fit(_toy_net(), batches, epochs=1, augment=None, on_epoch_end=lambda e, h: steps.append(h["loss"]))
    assert "2/2" in capsys.readouterr().err and len(hist["loss"]) == 1 and steps == [hist["loss"]]


def test_fit_defaults_are_the_documented_ones():
    x, y = _toy_data(70)
    counted = []
    net = _toy_net()
    hist = cl.fit(net, (x, y), progress=False, augment=lambda xb, rng: counted.append(len(xb)) or xb)
    assert len(hist["loss"]) == 10 and counted[:3] == [32, 32, 6] and len(counted) == 30
    by_default = net.state_dict()
    net = _toy_net()
    cl.fit(net, (x, y), epochs=10, batch_size=32, seed=0, optimizer=cl.optim.SGD(net.parameters(), lr=0.01,
           momentum=0.9), progress=False, augment=lambda xb, rng: xb)
    for k, v in net.state_dict().items():
        np.testing.assert_array_equal(v, by_default[k])


def test_augment_gets_the_seeded_generator():
    x, y = _toy_data(40)
    draws = {0: [], 1: []}
    for run in (0, 1):
        cl.fit(_toy_net(), (x, y), epochs=1, batch_size=16, progress=False,
               augment=lambda xb, rng, run=run: draws[run].append(rng.integers(1 << 30)) or xb)
    assert draws[0] == draws[1] and len(set(draws[0])) == 3         # the same draws under the same seed


def test_batch_size_one_is_allowed_and_a_fraction_is_not():
    x, y = _toy_data(5)
    assert len(cl.fit(_toy_net(), (x, y), epochs=1, batch_size=1, progress=False)["loss"]) == 1
    for bad in (0, 1.5):
        with pytest.raises(ValueError, match=f"^fit: batch_size must be an int >= 1, got {bad}$"):
            cl.fit(_toy_net(), (x, y), batch_size=bad, progress=False)


def test_one_sample_is_enough_and_no_batches_is_an_error():
    x, y = _toy_data(1)
    assert len(cl.fit(_toy_net(), [(x, y)], epochs=1, progress=False)["acc"]) == 1
    with pytest.raises(ValueError, match="^fit: the training data yielded no batches$"):
        cl.fit(_toy_net(), [], epochs=1, progress=False)


def test_training_skips_the_first_layers_input_gradient():
    x, y = _toy_data(40)
    net = _toy_net()
    asked = []
    first = net[0].backward
    net[0].backward = lambda dout, need_dx=True: asked.append(need_dx) or first(dout, need_dx)
    cl.fit(net, (x, y), epochs=1, batch_size=16, progress=False)
    assert asked == [False, False, False]


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning",
                            "ignore:invalid value encountered:RuntimeWarning")
def test_a_nan_or_infinite_loss_names_the_epoch_and_step():
    x, y = _toy_data(40)
    calls = []

    def loss_fn(logits, yb):
        calls.append(1)
        loss, d = cl.softmax_cross_entropy(logits, yb)
        return (float("nan") if len(calls) == 2 else loss), d
    with pytest.raises(FloatingPointError, match=r"fit: the loss became nan at epoch 1, step 2 \(lr=0.01\); "
                                                 r"lower the learning rate"):
        cl.fit(_toy_net(), (x, y), epochs=1, batch_size=16, loss_fn=loss_fn, progress=False)
    x, y = bars(64, np.random.default_rng(0))                       # the built-in loss: logits blow up
    net = bar_net()
    with pytest.raises(FloatingPointError, match=r"at epoch 1, step \d+"):
        cl.fit(net, (x * 1e3, y), epochs=3, batch_size=8, optimizer=cl.optim.SGD(net.parameters(), lr=1e6),
               progress=False)


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")
def test_nan_logits_name_the_epoch_and_step_with_a_loss_of_your_own():
    """A loss without ``rows`` gets the logits checked on the host before it runs."""
    x, y = _toy_data(40)
    net = _toy_net()
    net[2].weight.data[...] = np.nan
    with pytest.raises(FloatingPointError, match=r"^fit: the logits became NaN or infinite at epoch 1, step 1 "
                                                 r"\(lr=0\.01\); lower the learning rate or check the inputs$"):
        cl.fit(net, (x, y), epochs=1, batch_size=16, loss_fn=cl.softmax_cross_entropy, progress=False)


@pytest.mark.parametrize("call, message", [
    (lambda x, y: cl.fit(_toy_net(), (x, y.astype(float)), progress=False), "fit(train): expected integer labels"),
    (lambda x, y: cl.fit(_toy_net(), (x, y), val=(x[:3], y[:2]), progress=False), "fit(val): expected integer labels"),
    (lambda x, y: cl.evaluate(_toy_net(), x, y[:-1]), "evaluate: expected integer labels"),
    (lambda x, y: cl.predict_proba(_toy_net(), x[0]), "predict_proba: expected float inputs"),
    (lambda x, y: cl.evaluate(_toy_net(), x[0], y), "evaluate: expected float inputs"),
    (lambda x, y: cl.evaluate(_toy_net(), x, y.astype(np.uint8) + 0.5), "evaluate: expected integer labels"),
])
def test_training_errors_name_the_call(call, message):
    x, y = _toy_data(10)
    with pytest.raises(ValueError) as e:
        call(x, y)
    assert str(e.value).startswith(message), str(e.value)


def test_unsigned_labels_train_and_iterate_batches_keeps_order_by_default():
    x, y = _toy_data(10)
    cl.fit(_toy_net(), (x, y.astype(np.uint8)), epochs=1, progress=False)
    got = np.concatenate([xb for xb, _ in cl.train.iterate_batches(x, y, 4)])
    np.testing.assert_array_equal(got, x)
    assert inspect.signature(cl.evaluate).parameters["batch_size"].default == 256
    assert inspect.signature(cl.predict_proba).parameters["batch_size"].default == 256


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
    x, y = _toy_data(300)
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
    x, y = _toy_data(40)
    firsts = []
    cl.fit(_toy_net(), (x, y), epochs=2, batch_size=40, progress=False,
           augment=lambda xb, rng: firsts.append(xb.copy()) or xb)
    assert not np.array_equal(firsts[0], x) and not np.array_equal(firsts[0], firsts[1])
    assert sorted(map(tuple, firsts[0])) == sorted(map(tuple, x))    # each sample once

    class Loader:                                                    # iterable, no len()
        def __iter__(self):
            return iter([(x[:20], y[:20]), (x[20:], y[20:])])
    hist = cl.fit(_toy_net(), Loader(), epochs=2, progress=False)
    assert len(hist["loss"]) == 2


def test_progress_false_prints_nothing(capsys):
    x, y = _toy_data(40)
    cl.fit(_toy_net(), (x, y), val=(x, y), epochs=1, progress=False)
    assert capsys.readouterr().err == ""


def test_restore_best_false_keeps_the_last_epoch():
    x, y = _toy_data(40)
    states = {}
    cl.manual_seed(0)
    net = cl.Sequential(cl.Linear(6, 8), cl.ReLU(), cl.Dropout(0.5), cl.Linear(8, 2))
    hist = cl.fit(net, (x, y), val=(x[:20], y[:20]), epochs=6, batch_size=8, progress=False, restore_best=False,
                  optimizer=cl.optim.SGD(net.parameters(), lr=0.5),
                  on_epoch_end=lambda e, h: states.__setitem__(e, net.state_dict()))
    assert hist.best_epoch != 6                                      # (so that restoring would show)
    for k, v in net.state_dict().items():
        np.testing.assert_array_equal(v, states[6][k])


def test_checkpoint_resume_is_off_by_default_and_ctrl_c_without_one_is_immediate(tmp_path):
    import os
    import signal
    x, y = _toy_data(40)
    ck = str(tmp_path / "ck.npz")
    first = cl.fit(_toy_net(), (x, y), epochs=2, progress=False, checkpoint=ck)
    again = cl.fit(_toy_net(), (x, y), epochs=2, progress=False, checkpoint=ck)     # not resumed: trains 2 epochs
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
            cl.fit(_toy_net(), (x, y), epochs=1, batch_size=8, progress=False, augment=press)
    finally:
        signal.signal(signal.SIGINT, old)
    assert len(calls) == 1 and "stopped after" not in str(e.value)  # no checkpoint: Python's own Ctrl-C


def test_a_checkpoint_of_another_run_is_overwritten_not_resumed_by_default(tmp_path):
    """Catches: resume on by default (a run that merely repeats the checkpoint's run would not
    show it: resumed, it ends where it would anyway)."""
    x, y = _toy_data(40)
    ck = str(tmp_path / "ck.npz")
    cl.fit(_toy_net(seed=1), (x, y), epochs=1, seed=1, progress=False, checkpoint=ck)   # another run's
    want_net = _toy_net()
    want = cl.fit(want_net, (x, y), epochs=2, progress=False)
    net = _toy_net()
    hist = cl.fit(net, (x, y), epochs=2, progress=False, checkpoint=ck)
    assert hist["loss"] == want["loss"] and len(hist["loss"]) == 2
    for k, v in want_net.state_dict().items():
        np.testing.assert_array_equal(net.state_dict()[k], v, err_msg=k)
    again = cl.fit(_toy_net(seed=3), (x, y), epochs=2, progress=False, checkpoint=ck, resume=True)
    assert again["loss"] == want["loss"]                            # the checkpoint now holds this run


def test_resume_without_schedule_or_best_weights(tmp_path):
    x, y = _toy_data(40)
    ck = str(tmp_path / "ck.npz")
    net = _toy_net()
    opt = cl.optim.SGD(net.parameters(), lr=0.1)
    cl.fit(net, (x, y), epochs=1, optimizer=opt, schedule=cl.optim.StepLR(opt, 1), progress=False, checkpoint=ck)
    net2 = _toy_net()
    hist = cl.fit(net2, (x, y), epochs=2, optimizer=cl.optim.SGD(net2.parameters(), lr=0.1), progress=False,
                  checkpoint=ck, resume=True)                        # no schedule now, no val: no best weights
    assert len(hist["loss"]) == 2 and hist.best_epoch is None


def _sign_data(n=40, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 6)).astype(np.float32)
    return x, (x[:, 0] > 0).astype(np.int64)


def _dropout_net():
    cl.manual_seed(0)
    return cl.Sequential(cl.Linear(6, 8), cl.ReLU(), cl.Dropout(0.5), cl.Linear(8, 2))


def test_fit_restores_the_best_validation_epoch():
    """Catches: restore_best ignored, or the last epoch's weights kept."""
    x, y = _sign_data()
    states = {}

    def keep(epoch, hist):
        states[epoch] = net.state_dict()
    net = _dropout_net()
    hist = cl.fit(net, (x, y), val=(x[:20], y[:20]), epochs=6, batch_size=8, progress=False,
                  optimizer=cl.optim.SGD(net.parameters(), lr=0.5), on_epoch_end=keep)
    assert sorted(states) == [1, 2, 3, 4, 5, 6]                     # on_epoch_end ran once per epoch
    assert hist.best_epoch == 1 + int(np.argmax(hist["val_acc"]))
    for k, v in net.state_dict().items():
        np.testing.assert_array_equal(v, states[hist.best_epoch][k])


def test_fit_steps_the_schedule_once_per_epoch_and_records_lr():
    """Catches: a schedule never stepped, or stepped per batch."""
    x, y = _sign_data()
    net = _dropout_net()
    opt = cl.optim.SGD(net.parameters(), lr=0.1)
    hist = cl.fit(net, (x, y), epochs=3, batch_size=8, optimizer=opt, progress=False,
                  schedule=cl.optim.StepLR(opt, step_size=1, gamma=0.5))
    assert hist["lr"] == pytest.approx([0.1, 0.05, 0.025])           # the lr each epoch trained with
    assert opt.lr == pytest.approx(0.1 * 0.5 ** 3)                  # stepped after each of the 3 epochs


def test_fit_uses_augment_on_every_training_batch_of_the_right_size():
    """Catches: augment skipped, or the last partial batch dropped (40 = 8 + 8 + 8 + 8 + 8, 43 adds 3)."""
    x, y = _sign_data(43)
    sizes = []

    def augment(xb, rng):
        sizes.append(len(xb))
        return xb
    cl.fit(_dropout_net(), (x, y), epochs=2, batch_size=8, augment=augment, progress=False)
    assert sizes == [8, 8, 8, 8, 8, 3] * 2


def test_iterate_batches_covers_every_sample_once_with_a_partial_last_batch():
    x = np.arange(10, dtype=np.float32)[:, None]
    y = np.arange(10)
    batches = list(cl.iterate_batches(x, y, 4, shuffle=True, rng=np.random.default_rng(0)))
    assert [len(b[1]) for b in batches] == [4, 4, 2]
    assert sorted(np.concatenate([b[1] for b in batches])) == list(range(10))
    for xb, yb in batches:
        np.testing.assert_array_equal(xb[:, 0], yb)                 # x and y stay paired


def test_validation_runs_in_eval_mode_and_the_mode_is_restored():
    """Catches: dropout active while validating, or evaluate leaving the net in eval mode."""
    x, y = _sign_data()
    net = _dropout_net().train()
    seen = []
    orig = net.layers[2].forward

    def spy(a):
        seen.append(net.layers[2].training)
        return orig(a)
    net.layers[2].forward = spy
    cl.evaluate(net, x, y)
    assert seen and not any(seen) and net.training and net.layers[2].training
    net.eval()
    cl.predict_proba(net, x)
    assert not net.training and not net.layers[2].training          # eval mode stays eval mode
    net.train()
    seen.clear()
    cl.fit(net, (x, y), val=(x, y), epochs=1, batch_size=40, progress=False)
    assert seen == [True, False]                                    # one training batch, one validation pass


@pytest.mark.parametrize("fn", [lambda net, x: cl.evaluate(net, x, np.zeros(0, np.int64)),
                                lambda net, x: cl.predict_proba(net, x)], ids=["evaluate", "predict_proba"])
def test_zero_images_say_so(fn):
    with pytest.raises(ValueError, match=r"got no images \(inputs of shape \(0, 6\)\)"):
        fn(_dropout_net(), np.zeros((0, 6), np.float32))


def test_predict_proba_flip_averages_each_image_with_its_mirror_image():
    """flip=True: the mean of the probabilities of each image and of its left-right mirror image,
    for images only; flip=False: the plain softmax of the outputs."""
    x = np.random.default_rng(5).standard_normal((5, 1, 6, 6)).astype(np.float32)   # (N, C, H, W)
    cl.manual_seed(0)
    net = cl.Sequential(cl.Conv2d(1, 2, 3), cl.Flatten(), cl.Linear(2 * 4 * 4, 3))
    net.eval()

    def softmax(z):                                                 # z (N, K)
        e = np.exp(z - z.max(1, keepdims=True))
        return e / e.sum(1, keepdims=True)
    plain = softmax(net(x).astype(np.float64))
    mirrored = softmax(net(np.ascontiguousarray(x[..., ::-1])).astype(np.float64))
    assert np.abs(plain - mirrored).max() > 0.05                    # the net tells an image from its mirror
    got = cl.predict_proba(net, x, batch_size=2, flip=True)        # (5, 3)
    assert got.shape == (5, 3)
    np.testing.assert_allclose(got, (plain + mirrored) / 2, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(got.sum(1), 1, rtol=1e-6)
    np.testing.assert_allclose(cl.predict_proba(net, x, batch_size=2), plain, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(cl.predict_proba(net, x, flip=False), plain, rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match=r"^predict_proba: flip=True needs images \(N, C, H, W\), "
                                         r"got shape \(5, 36\)$"):
        cl.predict_proba(_toy_net(), x.reshape(5, 36), flip=True)
