"""The Fashion-MNIST example end to end on tiny IDX files the test writes (no dataset needed)."""
import os

import fashion_mnist  # examples/ is on pytest's path (setup.cfg)
import numpy as np
import pytest

import convlib as cl
from convlib.data import write_idx


def _fake_dataset(folder, rng, n_train=240, n_test=60):
    """Two easy classes among the ten: a bright top half (0) or a bright bottom half (1)."""
    os.makedirs(folder)
    for split, n in (("train", n_train), ("t10k", n_test)):
        y = rng.integers(0, 2, n).astype(np.uint8)
        x = rng.integers(0, 60, (n, 28, 28))
        for i in range(n):
            x[i, :14] += 150 * (y[i] == 0)
            x[i, 14:] += 150 * (y[i] == 1)
        write_idx(os.path.join(folder, f"{split}-images-idx3-ubyte.gz"), x.astype(np.uint8))
        write_idx(os.path.join(folder, f"{split}-labels-idx1-ubyte.gz"), y)


def test_fashion_example_end_to_end(tmp_path, rng, capsys):
    data = tmp_path / "fm"
    _fake_dataset(str(data), rng)
    acc, hist = fashion_mnist.main(["--data-dir", str(data), "--out", str(tmp_path / "out"), "--epochs", "2",
                                    "--batch-size", "32", "--val", "40", "--no-progress"])
    out = capsys.readouterr().out
    assert "test accuracy:" in out and len(hist["val_acc"]) == 2
    assert acc > 0.9                                                # the fake task is easy
    for name in ("curves.png", "confusion.png", "model.npz"):
        assert (tmp_path / "out" / name).stat().st_size > 0


def test_fashion_example_missing_data_says_how_to_get_it(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        fashion_mnist.main(["--data-dir", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")])
    assert "apt-get install dataset-fashion-mnist" in str(e.value)


def test_flip_averaging_makes_predictions_mirror_invariant(rng):
    net = fashion_mnist.build_net()
    x = rng.standard_normal((4, 1, 28, 28)).astype(np.float32)
    mirrored = np.ascontiguousarray(x[:, :, :, ::-1])               # left-right
    p = cl.predict_proba(net, x, flip=True)
    np.testing.assert_allclose(cl.predict_proba(net, mirrored, flip=True), p, rtol=1e-5, atol=1e-6)
    plain = cl.predict_proba(net, x)
    assert not np.allclose(cl.predict_proba(net, mirrored), plain, atol=1e-4)
    np.testing.assert_allclose(p, (plain + cl.predict_proba(net, mirrored)) / 2, rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match="flip=True needs images"):
        cl.predict_proba(net, x.reshape(4, -1), flip=True)


def test_fashion_example_without_validation_and_with_label_smoothing(tmp_path, rng, capsys):
    data = tmp_path / "fm"
    _fake_dataset(str(data), rng)
    acc, hist = fashion_mnist.main(["--data-dir", str(data), "--out", str(tmp_path / "out"), "--epochs", "2",
                                    "--batch-size", "32", "--val", "0", "--label-smoothing", "0.1", "--no-progress"])
    out = capsys.readouterr().out
    assert "last epoch kept" in out and hist["val_acc"] == [] and acc > 0.9
    assert hist["loss"][-1] > 0.1 * np.log(10) * 0.5                # smoothing keeps the loss off zero
    assert (tmp_path / "out" / "curves.png").stat().st_size > 0


def test_width_and_dropout_options_build_the_asked_net_and_refuse_bad_values(capsys):
    net = fashion_mnist.build_net((4, 6, 8))
    convs = [layer for layer in net if type(layer).__name__ == "Conv2d"]
    assert [c.weight.data.shape[0] for c in convs] == [4, 6, 8]
    assert net(np.zeros((2, 1, 28, 28), np.float32)).shape == (2, 10)   # the classifier follows the width
    for bad in ("16,32", "16,0,64", "a,b,c"):
        with pytest.raises(SystemExit):
            fashion_mnist.main(["--width", bad])
        assert "--width: expected three positive integers" in capsys.readouterr().err
    assert fashion_mnist.build_net(dropout=0.3)[-2].p == 0.3
    for bad in ("1", "-0.1", "x"):
        with pytest.raises(SystemExit):
            fashion_mnist.main(["--dropout", bad])
        assert "--dropout: expected a number in [0, 1)" in capsys.readouterr().err
