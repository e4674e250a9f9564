"""fit / evaluate / predict_proba: a small ConvNet learns a generated image task; NaN detection;
best-weights restore; input validation; progress output."""
import functools
import io

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


@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning",
                            "ignore:invalid value encountered:RuntimeWarning")     # the point of the test
def test_fit_names_the_step_where_loss_explodes(rng):
    x, y = bars(64, rng)
    x *= 1e3
    net = bar_net()
    with pytest.raises(FloatingPointError, match=r"at epoch 1, step \d+"):
        cl.fit(net, (x, y), epochs=3, batch_size=8, optimizer=cl.optim.SGD(net.parameters(), lr=1e6),
               progress=False)


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
