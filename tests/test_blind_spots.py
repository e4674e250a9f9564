"""Tests for what a planted-bug review found unguarded: the training loop's promises (best
weights restored, schedule and augment used, eval mode for validation and the mode restored,
the last partial batch, on_epoch_end), the loss's value and label checks, casts of buffers,
kernel-set names, slicing a Sequential and batch norm's momentum extremes. Each test states
what it would catch."""
import numpy as np
import pytest

import convlib as cl


def _data(n=40, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 6)).astype(np.float32)
    return x, (x[:, 0] > 0).astype(np.int64)


def _net():
    cl.manual_seed(0)
    return cl.Sequential(cl.Linear(6, 8), cl.ReLU(), cl.Dropout(0.5), cl.Linear(8, 2))


# ---------------------------------------------------------------- fit
def test_fit_restores_the_best_validation_epoch():
    """Catches: restore_best ignored, or the last epoch's weights kept."""
    x, y = _data()
    states = {}

    def keep(epoch, hist):
        states[epoch] = net.state_dict()
    net = _net()
    hist = cl.fit(net, (x, y), val=(x[:20], y[:20]), epochs=6, batch_size=8, progress=False,
                  optimizer=cl.optim.SGD(net.parameters(), lr=0.5), on_epoch_end=keep)
    assert sorted(states) == [1, 2, 3, 4, 5, 6]                     # on_epoch_end ran once per epoch
    assert hist.best_epoch == 1 + int(np.argmax(hist["val_acc"]))
    for k, v in net.state_dict().items():
        np.testing.assert_array_equal(v, states[hist.best_epoch][k])


def test_fit_steps_the_schedule_once_per_epoch_and_records_lr():
    """Catches: a schedule never stepped, or stepped per batch."""
    x, y = _data()
    net = _net()
    opt = cl.optim.SGD(net.parameters(), lr=0.1)
    hist = cl.fit(net, (x, y), epochs=3, batch_size=8, optimizer=opt, progress=False,
                  schedule=cl.optim.StepLR(opt, step_size=1, gamma=0.5))
    assert hist["lr"] == pytest.approx([0.1, 0.05, 0.025])           # the lr each epoch trained with
    assert opt.lr == pytest.approx(0.1 * 0.5 ** 3)                  # stepped after each of the 3 epochs


def test_fit_uses_augment_on_every_training_batch_of_the_right_size():
    """Catches: augment skipped, or the last partial batch dropped (40 = 8 + 8 + 8 + 8 + 8, 43 adds 3)."""
    x, y = _data(43)
    sizes = []

    def augment(xb, rng):
        sizes.append(len(xb))
        return xb
    cl.fit(_net(), (x, y), epochs=2, batch_size=8, augment=augment, progress=False)
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
    x, y = _data()
    net = _net().train()
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


# ---------------------------------------------------------------- loss
def test_cross_entropy_is_the_mean_over_the_batch():
    """Catches: a sum instead of a mean (invisible at N = 1), or a wrong gradient scale."""
    logits = np.array([[2.0, 0.0, -1.0], [0.5, 0.5, 3.0], [0.0, 0.0, 0.0]])
    y = np.array([0, 1, 2])
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    loss, d = cl.softmax_cross_entropy(logits, y)
    assert loss == pytest.approx(-np.mean(np.log(p[np.arange(3), y])), rel=1e-12)
    want = p.copy()
    want[np.arange(3), y] -= 1
    np.testing.assert_allclose(d, want / 3, rtol=1e-12)


@pytest.mark.parametrize("y,match", [
    (np.array([0, 3]), r"labels must lie in \[0, 3\)"), (np.array([-1, 0]), r"labels must lie in \[0, 3\)"),
    (np.array([0, 1, 2]), r"labels of shape \(2,\)"), (np.array([0.0, 1.0]), "integer labels")])
def test_cross_entropy_rejects_bad_labels(y, match):
    with pytest.raises(ValueError, match=match):
        cl.softmax_cross_entropy(np.zeros((2, 3)), y)


# ---------------------------------------------------------------- layers and kernels
def test_to_dtype_casts_float_buffers_and_keeps_the_counter():
    """Catches: running statistics left in float32 after .to(float64)."""
    bn = cl.BatchNorm2d(3).to(np.float64)
    assert bn.running_mean.dtype == bn.running_var.dtype == bn.weight.data.dtype == np.float64
    assert bn.num_batches_tracked.dtype == np.int64
    bn(np.random.default_rng(0).standard_normal((4, 3, 2, 2)))    # float64 input accepted


def test_use_kernels_rejects_an_unknown_name_and_keeps_the_set():
    with pytest.raises(ValueError, match="unknown kernel set 'fast'"):
        cl.use_kernels("fast")
    from convlib.backend import kernels_for
    assert kernels_for(np.zeros(1)).name == "cpu"


def test_slicing_a_sequential_shares_the_layers():
    """Catches: a slice that copies layers (the t-SNE features of net[:-1] would use stale weights)."""
    net = _net()
    head = net[:-1]
    assert isinstance(head, cl.Sequential) and len(head) == 3 and all(a is b for a, b in zip(head, net))
    x = _data()[0]
    np.testing.assert_array_equal(head.eval()(x), net.layers[1](net.layers[0](x)))


@pytest.mark.parametrize("momentum", [0.0, 1.0])
def test_batchnorm_momentum_extremes(momentum):
    """momentum 0 keeps the running statistics; 1 replaces them with the batch's (variance unbiased)."""
    x = np.random.default_rng(1).standard_normal((5, 2, 3, 3)) * 2 + 1
    bn = cl.BatchNorm2d(2, momentum=momentum).to(np.float64)
    bn(x)
    mean, var = x.mean(axis=(0, 2, 3)), x.var(axis=(0, 2, 3), ddof=1)
    np.testing.assert_allclose(bn.running_mean, mean if momentum else np.zeros(2), rtol=1e-12)
    np.testing.assert_allclose(bn.running_var, var if momentum else np.ones(2), rtol=1e-12)


# ---------------------------------------------------------------- messages a new user hit
@pytest.mark.parametrize("fn", [lambda net, x: cl.evaluate(net, x, np.zeros(0, np.int64)),
                                lambda net, x: cl.predict_proba(net, x)], ids=["evaluate", "predict_proba"])
def test_zero_images_say_so(fn):
    with pytest.raises(ValueError, match=r"got no images \(inputs of shape \(0, 6\)\)"):
        fn(_net(), np.zeros((0, 6), np.float32))


@pytest.mark.parametrize("layer,x", [(cl.Linear(6, 3), np.zeros((4, 6), np.float32)),
                                     (cl.Conv2d(2, 3, 3), np.zeros((2, 2, 5, 5), np.float32)),
                                     (cl.ReLU(), np.zeros((2, 3), np.float32))])
def test_backward_checks_the_shape_of_dout(layer, x):
    out = layer(x)
    import re
    with pytest.raises(ValueError, match=re.escape(f"backward expected dout of shape {out.shape}") + r".*got \(1, 1\)"):
        layer.backward(np.zeros((1, 1), np.float32))


def test_selfie_tools_say_what_is_missing(tmp_path, capsys):
    from lib.selfie_model import load_model, open_image
    with pytest.raises(SystemExit, match="no trained model at .*python examples/selfie_train.py"):
        load_model(str(tmp_path / "model.npz"))
    with pytest.raises(ValueError, match="no such file"):
        open_image(str(tmp_path / "nothing.jpg"))
    with pytest.raises(ValueError, match="is a folder, not an image"):
        open_image(str(tmp_path))
