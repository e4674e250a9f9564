"""BatchNorm2d / BatchNorm1d: gradients in train and eval mode, running statistics, modes, state."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import convlib as cl
from convlib.gradcheck import check_layer
from strategies import seeds


def _bn(cls, C, rng):
    bn = cls(C)
    bn.weight.data[:] = rng.uniform(0.5, 1.5, C)
    bn.bias.data[:] = rng.standard_normal(C)
    bn.running_mean[:] = rng.standard_normal(C)
    bn.running_var[:] = rng.uniform(0.5, 2, C)
    return bn


@given(seed=seeds, N=st.integers(2, 4), C=st.integers(1, 3), H=st.integers(1, 4), W=st.integers(1, 4),
       training=st.booleans())
def test_batchnorm2d_gradients(seed, N, C, H, W, training):
    rng = np.random.default_rng(seed)
    bn = _bn(cl.BatchNorm2d, C, rng).train(training)
    check_layer(bn, rng.standard_normal((N, C, H, W)) * 2 + 1)


# N >= 3: with two samples a training-mode output is exactly +-1 whatever x is, so dx is 0 and
# central differences measure only rounding noise.
@given(seed=seeds, N=st.integers(3, 6), C=st.integers(1, 5), training=st.booleans())
def test_batchnorm1d_gradients(seed, N, C, training):
    rng = np.random.default_rng(seed)
    check_layer(_bn(cl.BatchNorm1d, C, rng).train(training), rng.standard_normal((N, C)))


def test_train_mode_normalises_and_updates_running_stats(rng):
    x = (rng.standard_normal((8, 3, 4, 5)) * [[[[2.0]], [[0.5]], [[1.0]]]] + 3).astype(np.float32)
    bn = cl.BatchNorm2d(3, momentum=0.25)
    out = bn(x)
    np.testing.assert_allclose(out.mean(axis=(0, 2, 3)), 0, atol=1e-5)
    np.testing.assert_allclose(out.var(axis=(0, 2, 3)), 1, atol=1e-3)
    m = 8 * 4 * 5
    np.testing.assert_allclose(bn.running_mean, 0.25 * x.mean(axis=(0, 2, 3)), rtol=1e-5)
    np.testing.assert_allclose(bn.running_var, 0.75 + 0.25 * x.var(axis=(0, 2, 3)) * m / (m - 1), rtol=1e-5)
    assert int(bn.num_batches_tracked) == 1 and out.dtype == np.float32


def test_eval_mode_uses_running_stats_and_changes_nothing(rng):
    bn = _bn(cl.BatchNorm1d, 4, rng).eval()
    before = bn.state_dict()
    x = rng.standard_normal((5, 4)).astype(np.float32)
    out = bn(x)
    want = (x - bn.running_mean) / np.sqrt(bn.running_var + 1e-5) * bn.weight.data + bn.bias.data
    np.testing.assert_allclose(out, want, rtol=1e-5, atol=1e-6)
    for k, v in bn.state_dict().items():
        np.testing.assert_array_equal(v, before[k])


def test_state_dict_save_load_round_trip(tmp_path, rng):
    cl.manual_seed(0)
    net = cl.Sequential(cl.Conv2d(1, 2, 3), cl.BatchNorm2d(2), cl.ReLU(), cl.Flatten(), cl.Linear(2 * 3 * 3, 4),
                        cl.BatchNorm1d(4), cl.Linear(4, 2))
    x = rng.standard_normal((6, 1, 5, 5)).astype(np.float32)
    for _ in range(3):
        net(x)
    assert list(net.state_dict()) == ["0.weight", "0.bias", "1.weight", "1.bias", "1.running_mean", "1.running_var",
                                      "1.num_batches_tracked", "4.weight", "4.bias", "5.weight", "5.bias",
                                      "5.running_mean", "5.running_var", "5.num_batches_tracked", "6.weight", "6.bias"]
    loaded = cl.load(cl.save(net, tmp_path / "bn.npz"))
    assert int(loaded[1].num_batches_tracked) == 3 and loaded[1].running_mean.dtype == np.float32
    np.testing.assert_array_equal(loaded(x), net.eval()(x))


@pytest.mark.parametrize("make, match", [
    (lambda: cl.BatchNorm2d(0), "num_features must be >= 1"),
    (lambda: cl.BatchNorm2d(3, eps=0), "eps must be a number > 0"),
    (lambda: cl.BatchNorm1d(3, momentum=2), r"momentum must be in \[0, 1\]"),
])
def test_bad_hyper_parameters(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_bad_inputs():
    with pytest.raises(ValueError, match=r"expected input of shape \(N, 3, H, W\), got \(2, 4, 5, 5\)"):
        cl.BatchNorm2d(3)(np.zeros((2, 4, 5, 5), np.float32))
    with pytest.raises(ValueError, match="more than one value per channel"):
        cl.BatchNorm1d(3)(np.zeros((1, 3), np.float32))
    cl.BatchNorm1d(3).eval()(np.zeros((1, 3), np.float32))           # fine in eval mode


@pytest.mark.parametrize("momentum", [0.0, 1.0])
def test_batchnorm_momentum_extremes(momentum):
    """momentum 0 keeps the running statistics; 1 replaces them with the batch's (variance unbiased)."""
    x = np.random.default_rng(1).standard_normal((5, 2, 3, 3)) * 2 + 1
    bn = cl.BatchNorm2d(2, momentum=momentum).to(np.float64)
    bn(x)
    mean, var = x.mean(axis=(0, 2, 3)), x.var(axis=(0, 2, 3), ddof=1)
    np.testing.assert_allclose(bn.running_mean, mean if momentum else np.zeros(2), rtol=1e-12)
    np.testing.assert_allclose(bn.running_var, var if momentum else np.ones(2), rtol=1e-12)
