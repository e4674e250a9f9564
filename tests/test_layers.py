"""Every layer's backward against central differences (float64), over drawn geometries; shape
properties; and bad hyper-parameters / inputs raising clear errors."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import convlib as cl
from convlib.gradcheck import check_layer
from strategies import distinct_values, seeds, window_geometry


@given(g=window_geometry(), seed=seeds, F=st.integers(1, 3), bias=st.booleans())
def test_conv2d_gradients(g, seed, F, bias):
    rng = np.random.default_rng(seed)
    cl.manual_seed(seed)
    layer = cl.Conv2d(g["C"], F, g["kernel"], g["stride"], g["padding"], bias=bias)
    errs = check_layer(layer, rng.standard_normal((g["N"], g["C"], g["H"], g["W"])))
    assert set(errs) == {"x", "weight"} | ({"bias"} if bias else set())


@pytest.mark.parametrize("cls", [cl.MaxPool2d, cl.AvgPool2d])
@given(g=window_geometry(), seed=seeds)
def test_pool_gradients(cls, g, seed):
    x = distinct_values(np.random.default_rng(seed), (g["N"], g["C"], g["H"], g["W"]))
    check_layer(cls(g["kernel"], g["stride"], g["padding"]), x)


@pytest.mark.parametrize("layer", [cl.ReLU(), cl.LeakyReLU(0.1), cl.Sigmoid(), cl.Tanh(), cl.Flatten(),
                                   cl.Dropout(0.3), cl.Dropout(0.0)], ids=repr)
@given(seed=seeds, shape=st.lists(st.integers(1, 4), min_size=2, max_size=4))
def test_pointwise_gradients(layer, seed, shape):
    check_layer(layer, distinct_values(np.random.default_rng(seed), tuple(shape)))


@given(seed=seeds, n=st.integers(1, 4), fin=st.integers(1, 6), fout=st.integers(1, 5), bias=st.booleans())
def test_linear_gradients(seed, n, fin, fout, bias):
    cl.manual_seed(seed)
    check_layer(cl.Linear(fin, fout, bias=bias), np.random.default_rng(seed).standard_normal((n, fin)))


def test_sequential_gradients_through_whole_net(rng):
    cl.manual_seed(0)
    net = cl.Sequential(cl.Conv2d(2, 3, 3, padding=1), cl.Tanh(), cl.MaxPool2d(2), cl.Conv2d(3, 2, (2, 1)),
                        cl.LeakyReLU(0.2), cl.AvgPool2d(2, stride=1), cl.Flatten(), cl.Linear(2 * 1 * 2, 3))
    errs = check_layer(net, distinct_values(rng, (2, 2, 7, 6)))
    assert set(errs) == {"x", "0.weight", "0.bias", "3.weight", "3.bias", "7.weight", "7.bias"}




# ---------------------------------------------------------------- shape properties
@given(g=window_geometry(max_size=12), F=st.integers(1, 4))
def test_output_size_formula(g, F):
    (KH, KW), (SH, SW), (PH, PW) = g["kernel"], g["stride"], g["padding"]
    x = np.zeros((g["N"], g["C"], g["H"], g["W"]), np.float32)
    # counted, not the formula: the window's start positions that keep it inside the padded input
    want = (len(range(0, g["H"] + 2 * PH - KH + 1, SH)), len(range(0, g["W"] + 2 * PW - KW + 1, SW)))
    for layer in (cl.Conv2d(g["C"], F, (KH, KW), (SH, SW), (PH, PW)), cl.MaxPool2d((KH, KW), (SH, SW), (PH, PW)),
                  cl.AvgPool2d((KH, KW), (SH, SW), (PH, PW))):
        out = layer(x)
        assert out.shape[2:] == want
        assert layer.output_shape(x.shape) == out.shape


def test_pool_stride_defaults_to_kernel_size():
    assert cl.MaxPool2d(3).stride == (3, 3) and cl.AvgPool2d((2, 3)).stride == (2, 3)




@given(seed=seeds)
def test_relu_keeps_positives_and_zeroes_the_rest(seed):
    x = np.random.default_rng(seed).standard_normal((3, 4, 5)).astype(np.float32)
    x[0, 0, :2] = 0.0
    once = cl.ReLU()(x)
    np.testing.assert_array_equal(once[x > 0], x[x > 0])            # fails for zeros everywhere
    assert not once[x <= 0].any()                                    # fails for abs or identity
    np.testing.assert_array_equal(cl.ReLU()(once), once)


def test_dropout_train_and_eval(rng):
    x = np.ones((200, 50), np.float32)
    d = cl.Dropout(0.25)
    out = d(x)
    kept = out != 0
    assert 0.7 < kept.mean() < 0.8                                  # about 1 - p kept
    np.testing.assert_allclose(out[kept], 1 / 0.75, rtol=1e-6)      # inverted scaling
    np.testing.assert_array_equal(d.backward(np.ones_like(x)), out)  # same mask on the way back
    d.eval()
    np.testing.assert_array_equal(d(x), x)


def test_sigmoid_is_stable_for_large_inputs():
    out = cl.Sigmoid()(np.array([[-1000.0, 0.0, 1000.0]]))
    np.testing.assert_allclose(out, [[0.0, 0.5, 1.0]])


def test_torch_default_init_bounds():
    cl.manual_seed(0)
    conv = cl.Conv2d(4, 8, 3)
    bound = 1 / np.sqrt(4 * 9)
    assert conv.weight.shape == (8, 4, 3, 3) and conv.bias.shape == (8,)
    assert np.abs(conv.weight.data).max() <= bound and np.abs(conv.weight.data).max() > 0.8 * bound
    assert conv.weight.data.dtype == np.float32 and cl.Linear(3, 2, bias=False).bias is None


# ---------------------------------------------------------------- bad input
@pytest.mark.parametrize("make, match", [
    (lambda: cl.Conv2d(3, 4, 0), "kernel_size must be >= 1"),
    (lambda: cl.Conv2d(3, 4, 3, stride=0), "stride must be >= 1"),
    (lambda: cl.Conv2d(3, 4, (3, 3, 3)), "int or a pair"),
    (lambda: cl.Conv2d(3, 4, 3, padding=-1), "padding must be >= 0"),
    (lambda: cl.MaxPool2d(2, padding=2), "at most half"),
    (lambda: cl.Dropout(1.0), r"p must be in \[0, 1\)"),
    (lambda: cl.Linear(0, 3), "in_features must be >= 1"),
    (lambda: cl.LeakyReLU(float("nan")), "finite"),
])
def test_bad_hyper_parameters(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_bad_inputs_name_the_layer():
    with pytest.raises(ValueError,
                       match=r"Conv2d\(in_channels=3.*expected input of shape \(N, 3, H, W\), got \(2, 4, 8, 8\)"):
        cl.Conv2d(3, 4, 3)(np.zeros((2, 4, 8, 8), np.float32))
    with pytest.raises(ValueError, match="smaller than the kernel"):
        cl.Conv2d(3, 4, 5)(np.zeros((1, 3, 4, 8), np.float32))
    with pytest.raises(ValueError, match="expected float32 input"):
        cl.Linear(3, 2)(np.zeros((1, 3)))
    with pytest.raises(ValueError, match="float ndarray"):
        cl.ReLU()(np.zeros((1, 3), dtype=int))
    with pytest.raises(RuntimeError, match="without a forward"):
        cl.Linear(3, 2).backward(np.zeros((1, 2), np.float32))
    layer = cl.Linear(3, 2)
    layer(np.zeros((1, 3), np.float32))
    layer.backward(np.zeros((1, 2), np.float32))
    with pytest.raises(RuntimeError, match="without a forward"):          # the cache was released
        layer.backward(np.zeros((1, 2), np.float32))




def test_adaptive_avg_pool_is_global_average_pooling(rng):
    x = rng.standard_normal((2, 3, 5, 4))
    layer = cl.AdaptiveAvgPool2d(1).to(np.float64)
    np.testing.assert_allclose(layer(x), x.mean(axis=(2, 3), keepdims=True))
    assert check_layer(cl.AdaptiveAvgPool2d((1, 1)), x)["x"] < 1e-7
    with pytest.raises(ValueError, match="only output_size 1"):
        cl.AdaptiveAvgPool2d(2)


@given(seed=seeds, groups=st.sampled_from([1, 2, 4]), affine=st.booleans(), spatial=st.sampled_from([(), (3,), (2, 3)]))
def test_group_norm_gradients(seed, groups, affine, spatial):
    rng = np.random.default_rng([seed, 1])                          # not check_layer's dout (seed 0)
    layer = cl.GroupNorm(groups, 4, affine=affine)
    if affine:
        layer.weight.data[:] = rng.uniform(0.5, 2, 4)
    errs = check_layer(layer, rng.standard_normal((3, 4) + spatial) * 2 + 1)
    assert set(errs) == {"x"} | ({"weight", "bias"} if affine else set())


def test_group_norm_normalises_each_group_of_each_image(rng):
    x = rng.standard_normal((3, 6, 4, 5)) * 5 + 2
    out = cl.GroupNorm(3, 6).to(np.float64)(x).reshape(3, 3, -1)   # (N, G, 2 channels x 20 positions)
    np.testing.assert_allclose(out.mean(axis=2), 0, atol=1e-12)
    np.testing.assert_allclose(out.var(axis=2), 1, rtol=1e-4)       # eps 1e-5 against a variance of ~25
    with pytest.raises(ValueError, match="num_channels 6 must be divisible by num_groups 4"):
        cl.GroupNorm(4, 6)
    with pytest.raises(ValueError, match=r"GroupNorm.*expected input of shape \(N, 6, \.\.\.\), got \(3, 5, 4\)"):
        cl.GroupNorm(3, 6)(np.zeros((3, 5, 4), np.float32))


def test_residual_gradients_with_and_without_a_shortcut(rng):
    cl.manual_seed(1)
    block = cl.Sequential(cl.Conv2d(2, 3, 3, stride=2, padding=1), cl.Tanh(), cl.Conv2d(3, 3, 1))
    errs = check_layer(cl.Residual(block, shortcut=cl.Conv2d(2, 3, 1, stride=2)), rng.standard_normal((2, 2, 5, 5)))
    assert set(errs) == {"x", "block.0.weight", "block.0.bias", "block.2.weight", "block.2.bias",
                         "shortcut.weight", "shortcut.bias"}
    assert set(check_layer(cl.Residual(cl.Sequential(cl.Linear(4, 4), cl.Tanh())), rng.standard_normal((3, 4)))) == {
        "x", "block.0.weight", "block.0.bias"}


def test_residual_adds_the_identity_and_skips_the_input_gradient_on_request(rng):
    x = rng.standard_normal((2, 3)).astype(np.float32)
    res = cl.Residual(cl.Sequential(cl.Linear(3, 3)))
    np.testing.assert_allclose(res(x), res.block(x) + x, rtol=1e-6)
    res(x)
    assert res.backward(np.ones((2, 3), np.float32), need_dx=False) is None
    assert np.abs(res.block[0].weight.grad).sum() > 0               # the parameters still get theirs
    with pytest.raises(ValueError, match=r"the block maps \(2, 3\) to \(2, 4\) but the identity shortcut gives "
                                         r"\(2, 3\); give a shortcut"):
        cl.Residual(cl.Linear(3, 4))(x)
    with pytest.raises(ValueError, match="Residual: shortcut is int, not a convlib layer"):
        cl.Residual(cl.Linear(3, 3), shortcut=3)


@pytest.mark.parametrize("layer,x", [(cl.Linear(6, 3), np.zeros((4, 6), np.float32)),
                                     (cl.Conv2d(2, 3, 3), np.zeros((2, 2, 5, 5), np.float32)),
                                     (cl.ReLU(), np.zeros((2, 3), np.float32))])
def test_backward_checks_the_shape_of_dout(layer, x):
    out = layer(x)
    import re
    with pytest.raises(ValueError, match=re.escape(f"backward expected dout of shape {out.shape}") + r".*got \(1, 1\)"):
        layer.backward(np.zeros((1, 1), np.float32))


def test_zero_grad_waits_for_the_next_gradient_and_takes_it_as_it_is():
    p = cl.layers.Parameter(np.ones(3, np.float32))
    p.grad = np.full(3, 5, np.float32)
    p.zero_grad()
    g = np.arange(3, dtype=np.float32)
    p.add_grad(g)
    assert p.grad is g                                              # taken as it is: no zeroing, no adding
    p.add_grad(np.ones(3, np.float32))
    np.testing.assert_array_equal(p.grad, [1, 2, 3])
    p.zero_grad()
    np.testing.assert_array_equal(p.grad, [0, 0, 0])                # read before anything is added: zeros
    p.zero_grad()
    other = np.arange(3, dtype=np.float64)                          # another type: added into p's own array
    p.add_grad(other)
    assert p.grad.dtype == np.float32 and p.grad is not other
    np.testing.assert_array_equal(p.grad, [0, 1, 2])
