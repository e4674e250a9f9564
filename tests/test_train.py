"""fit / evaluate / predict_proba: a small ConvNet learns a generated image task; NaN detection;
best-weights restore; input validation; progress output."""
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
