"""Sequential: shape errors naming the layer, summary, state_dict round trip, train/eval, dtype."""
import numpy as np
import pytest

import convlib as cl
from convlib.gradcheck import check_layer


def small_net():
    cl.manual_seed(0)
    return cl.Sequential(cl.Conv2d(3, 4, 3, padding=1), cl.ReLU(), cl.MaxPool2d(2),
                         cl.Flatten(), cl.Linear(4 * 4 * 5, 8), cl.ReLU(), cl.Dropout(0.5), cl.Linear(8, 2))


def test_forward_backward_shapes(rng):
    net = small_net()
    x = rng.standard_normal((3, 3, 8, 10)).astype(np.float32)
    out = net(x)
    assert out.shape == (3, 2) and out.dtype == np.float32
    dx = net.backward(np.ones_like(out))
    assert dx.shape == x.shape
    errors = check_layer(net, x[:2])                                 # every gradient, against finite differences
    assert set(errors) == {"x"} | {n for n, _ in net.named_parameters()}


def test_backward_adds_into_grad(rng):
    net = small_net().eval()
    x = rng.standard_normal((2, 3, 8, 10)).astype(np.float32)
    net(x)
    net.backward(np.ones((2, 2), np.float32))
    once = [p.grad.copy() for p in net.parameters()]
    net(x)
    net.backward(np.ones((2, 2), np.float32))
    for g1, p in zip(once, net.parameters()):
        np.testing.assert_allclose(p.grad, 2 * g1, rtol=1e-5)
    net.zero_grad()
    assert all(not p.grad.any() for p in net.parameters())


@pytest.mark.parametrize("kernels", ["cpu", "reference"])
def test_backward_without_input_grad_gives_the_same_parameter_grads(rng, kernels):
    cl.use_kernels(kernels)
    try:
        net = small_net().eval()
        x = rng.standard_normal((2, 3, 8, 10)).astype(np.float32)
        d = rng.standard_normal((2, 2)).astype(np.float32)
        net(x)
        assert net.backward(d).shape == x.shape
        full = [p.grad.copy() for p in net.parameters()]
        net.zero_grad()
        net(x)
        assert net.backward(d, input_grad=False) is None
        for g, p in zip(full, net.parameters()):
            np.testing.assert_array_equal(p.grad, g)
    finally:
        cl.use_kernels("cpu")


def test_shape_error_names_layer_expected_and_received():
    net = small_net()
    with pytest.raises(ValueError, match=r"Sequential layer 4: Linear\(in_features=80.*expected input of shape "
                                         r"\(N, 80\), got \(1, 96\)"):
        net(np.zeros((1, 3, 8, 12), np.float32))
    with pytest.raises(ValueError, match=r"Sequential layer 0: .*\(N, 3, H, W\), got \(1, 1, 8, 10\)"):
        net(np.zeros((1, 1, 8, 10), np.float32))
    with pytest.raises(ValueError, match="not a convlib layer"):
        cl.Sequential(cl.ReLU(), "relu")


def test_summary_lists_layers_shapes_and_params():
    lines = []
    text = small_net().summary((3, 8, 10), print_fn=lines.append)
    assert lines == [text]
    rows = text.splitlines()
    assert rows[1].split() == ["0:", "Conv2d", "(N,", "4,", "8,", "10)", "112"]
    assert rows[5].split()[-1] == "648"                             # Linear(80, 8): 80*8 + 8
    assert rows[-1] == f"total parameters: {112 + 648 + 18:,}"
    with pytest.raises(ValueError, match="Sequential layer 4"):
        small_net().summary((3, 8, 8))


def test_state_dict_keys_follow_torch_and_round_trip(rng):
    net = small_net()
    sd = net.state_dict()
    assert list(sd) == ["0.weight", "0.bias", "4.weight", "4.bias", "7.weight", "7.bias"]
    assert sd["0.weight"].shape == (4, 3, 3, 3) and sd["4.weight"].shape == (8, 80)
    cl.manual_seed(1)
    other = small_net()
    for p in other.parameters():
        p.data += 1
    other.load_state_dict(sd)
    x = rng.standard_normal((2, 3, 8, 10)).astype(np.float32)
    np.testing.assert_array_equal(other.eval()(x), net.eval()(x))
    sd["0.weight"][...] = 0                                         # a copy, not a view
    assert net[0].weight.data.any()


def test_load_state_dict_errors():
    net = small_net()
    sd = net.state_dict()
    with pytest.raises(ValueError, match=r"missing keys \['7.bias'\]"):
        net.load_state_dict({k: v for k, v in sd.items() if k != "7.bias"})
    with pytest.raises(ValueError, match=r"unexpected keys \['9.weight'\]"):
        net.load_state_dict({**sd, "9.weight": np.zeros(3)})
    with pytest.raises(ValueError, match=r"'4.weight' has shape \(80, 8\), the model expects \(8, 80\)"):
        net.load_state_dict({**sd, "4.weight": sd["4.weight"].T})
    with pytest.raises(ValueError, match="NaN"):
        net.load_state_dict({**sd, "7.bias": np.array([np.nan, 0.0])})


def test_train_eval_switches_every_layer(rng):
    net = small_net().eval()
    assert not any(layer.training for layer in net)
    x = rng.standard_normal((4, 3, 8, 10)).astype(np.float32)
    np.testing.assert_array_equal(net(x), net(x))                   # dropout off: deterministic
    net.train()
    assert all(layer.training for layer in net)
    assert not np.array_equal(net(x), net(x))                       # dropout on


def test_to_float64_casts_parameters_and_float_buffers(rng):
    net = small_net().to(np.float64)
    assert all(p.data.dtype == np.float64 and p.grad.dtype == np.float64 for p in net.parameters())
    assert net(rng.standard_normal((1, 3, 8, 10))).dtype == np.float64
    bn = cl.BatchNorm2d(3).to(np.float64)                           # running statistics too, not the counter
    assert bn.running_mean.dtype == bn.running_var.dtype == bn.weight.data.dtype == np.float64
    assert bn.num_batches_tracked.dtype == np.int64
    bn(rng.standard_normal((4, 3, 2, 2)))                           # float64 input accepted
    with pytest.raises(ValueError, match="unknown device or dtype"):
        net.to(np.int32)


def test_cuda_request_without_gpu_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(cl.backend, "cuda_available", lambda: False)  # as on a machine without one
    with pytest.raises(RuntimeError, match=r"numba-cuda.*pip install -e \"\.\[gpu\]\""):
        small_net().to("cuda")
    with pytest.raises(ValueError, match="unknown device or dtype"):
        small_net().to("tpu")


def _one_by_one(layers, x, dout):
    """The layers run one by one, unfused: (their output, the input gradient of dout)."""
    for layer in layers:
        x = layer(x)
    for layer in reversed(list(layers)):
        dout = layer.backward(dout)
    return x, dout


@pytest.mark.parametrize("pool", [(2, 2, 0), (3, 1, 1)], ids=["2x2", "3x3 stride 1 pad 1"])
def test_relu_before_maxpool_runs_fused_with_the_same_values_and_gradients(rng, pool):
    """Sequential runs ReLU then MaxPool2d as relu(maxpool(x)); with ties, zeros, all-negative
    windows and a NaN, values and input gradients equal the layers run one by one."""
    from convlib.fused import ReLUMaxPool
    x = rng.integers(-2, 3, (3, 2, 6, 6)).astype(np.float64)
    x[0, 0, 0, 0] = np.nan
    x[1, 1, :2, :2] = -1                                             # a window with no positive value
    layers = [cl.ReLU(), cl.MaxPool2d(pool[0], pool[1], pool[2]), cl.Flatten()]
    net = cl.Sequential(*layers)
    out = net(x)
    assert isinstance(net._plan[0][1], ReLUMaxPool) and len(net._plan) == 2
    dout = rng.standard_normal(out.shape)
    dx = net.backward(dout)
    a, d = _one_by_one(layers, x, dout)
    np.testing.assert_array_equal(out, a)
    np.testing.assert_array_equal(dx, d)
    assert check_layer(cl.Sequential(cl.Conv2d(2, 3, 3, padding=1), cl.ReLU(), cl.MaxPool2d(2)),
                       rng.standard_normal((2, 2, 6, 6)))["x"] < 1e-6


def test_a_conv_runs_fused_with_relu_and_maxpool_with_the_same_values_and_gradients(rng):
    """Sequential fuses a Conv2d with the ReLU + MaxPool2d after it (never a subclass of Conv2d):
    the op computes a first layer's (1-3 channels) and a Winograd layer's in one pass, others as
    the ops in turn; values and every gradient are the layers' run one by one."""
    class MyConv(cl.Conv2d):
        pass

    x = rng.standard_normal((3, 3, 18, 16)).astype(np.float32)
    nets = [cl.Sequential(conv(3, 16, 3, padding=1), cl.ReLU(), cl.MaxPool2d(2), conv(16, 16, 3, padding=1), cl.ReLU(),
                          cl.MaxPool2d(2), conv(16, 4, 3, padding=1), cl.ReLU(), cl.MaxPool2d(2), cl.Flatten())
            for conv in (cl.Conv2d, MyConv)]
    nets[1].load_state_dict(nets[0].state_dict())
    outs = [net(x) for net in nets]
    assert [type(u).__name__ for _, u in nets[0]._plan] == ["ConvUnit", "ConvUnit", "ConvUnit", "Flatten"]
    assert [u._cache[0][0] for _, u in nets[0]._plan[:3]] == ["fused", "fused", "composed"]
    assert [type(u).__name__ for _, u in nets[1]._plan] == ["MyConv", "ReLUMaxPool"] * 3 + ["Flatten"]
    dout = rng.standard_normal(outs[0].shape).astype(np.float32)
    dxs = [net.backward(dout) for net in nets]
    np.testing.assert_array_equal(outs[0], outs[1])
    np.testing.assert_allclose(dxs[0], dxs[1], rtol=1e-5, atol=1e-6)
    for (name, p), q in zip(nets[0].named_parameters(), nets[1].parameters()):
        np.testing.assert_allclose(p.grad, q.grad, rtol=1e-5, atol=1e-6, err_msg=name)


def test_a_fused_conv_gives_the_same_values_and_gradients_in_training_and_eval_mode(rng):
    """Both modes fuse the conv with its ReLU + MaxPool2d: training keeps each window's maximum's
    place, eval mode only x (its backward computes the conv again: a saliency map's path). The
    same outputs and gradients, bit for bit."""
    net = cl.Sequential(cl.Conv2d(3, 16, 3, padding=1), cl.ReLU(), cl.MaxPool2d(2), cl.Conv2d(16, 16, 3, padding=1),
                        cl.ReLU(), cl.MaxPool2d(2), cl.Flatten())
    x = rng.standard_normal((2, 3, 12, 10)).astype(np.float32)
    dout = rng.standard_normal((2, 16 * 3 * 2)).astype(np.float32)
    runs = {}
    for mode in ("train", "eval"):
        net.train(mode == "train")
        net.zero_grad()
        out = net(x)
        runs[mode] = ([(type(u).__name__, u._cache[0][0]) for _, u in net._plan[:2]], out, net.backward(dout),
                      [p.grad.copy() for p in net.parameters()])
    assert runs["train"][0] == [("ConvUnit", "fused")] * 2
    assert runs["eval"][0] == [("ConvUnit", "again")] * 2
    for a, b in zip(runs["train"][1:3], runs["eval"][1:3]):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(runs["train"][3], runs["eval"][3]):
        np.testing.assert_array_equal(a, b)


def _bn_net(first_channels, bias=True, seed=0):
    """Conv-BN-ReLU-MaxPool, then a Winograd-wide Conv-BN-ReLU, batch norms with statistics,
    scales and shifts far from their defaults (a fold that skipped one would show)."""
    cl.manual_seed(seed)
    net = cl.Sequential(cl.Conv2d(first_channels, 16, 3, padding=1, bias=bias), cl.BatchNorm2d(16), cl.ReLU(),
                        cl.MaxPool2d(2), cl.Conv2d(16, 16, 3, padding=1), cl.BatchNorm2d(16), cl.ReLU(), cl.Flatten())
    rng = np.random.default_rng(seed)
    for bn in (net[1], net[5]):
        bn.running_mean[:], bn.running_var[:] = rng.standard_normal(16), rng.uniform(0.2, 3, 16)
        bn.weight.data[:], bn.bias.data[:] = rng.standard_normal(16), rng.standard_normal(16)
    return net


@pytest.mark.parametrize("first_channels", [1, 16], ids=["direct first layer", "Winograd"])
@pytest.mark.parametrize("bias", [True, False], ids=["bias", "no bias"])
def test_in_eval_mode_batch_norm_folds_into_the_conv_with_the_same_values_and_gradients(rng, first_channels, bias):
    """On the CPU in eval mode a BatchNorm2d after a Conv2d is folded into its weights (and the
    ReLU + MaxPool2d after them join too, or a ReLU alone); float64 values and every gradient
    (dx, the conv's and the batch norm's) equal the layers run one by one; in training mode
    nothing folds."""
    net = _bn_net(first_channels, bias).to(np.float64).eval()
    x = rng.standard_normal((3, first_channels, 12, 10))
    out = net(x)
    assert [repr(u).count(" + ") for _, u in net._plan] == [3, 2, 0]        # conv + bn + relu (+ pool)
    assert [type(u).__name__ for _, u in net._plan] == ["ConvUnit", "ConvUnit", "Flatten"]
    dout = rng.standard_normal(out.shape)
    net.zero_grad()
    dx = net.backward(dout)
    grads = {n: p.grad.copy() for n, p in net.named_parameters()}
    a = x
    for layer in net:                                               # unfused: one by one
        a = layer(a)
    d = dout
    net.zero_grad()
    for layer in reversed(list(net)):
        d = layer.backward(d)
    np.testing.assert_allclose(out, a, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(dx, d, rtol=1e-10, atol=1e-12)
    assert set(grads) == {n for n, _ in net.named_parameters()}
    for name, p in net.named_parameters():
        np.testing.assert_allclose(grads[name], p.grad, rtol=1e-10, atol=1e-12, err_msg=name)
    net.train()
    net(x)
    assert "BatchNorm2d" in [type(u).__name__ for _, u in net._plan]


def test_a_folded_batch_norm_against_central_differences(rng):
    """float64: dx and the gradients of the conv's and the batch norm's parameters of an
    eval-mode conv + batch norm (one unit) and of one with ReLU + MaxPool2d (the direct loop)."""
    for net, x in ((cl.Sequential(*_bn_net(16)[4:6]), rng.standard_normal((2, 16, 7, 6))),
                   (cl.Sequential(*_bn_net(1)[:4]), rng.standard_normal((2, 1, 8, 6)))):
        net = net.to(np.float64).eval()
        assert [type(u).__name__ for _, u in net._units()] == ["ConvUnit"]
        assert set(check_layer(net, x)) == {"x", "0.weight", "0.bias", "1.weight", "1.bias"}


def test_a_folded_batch_norm_is_kept_between_forwards_until_any_of_its_parts_changes(rng):
    """Eval forwards reuse the folded weights (the same array, so Winograd's kept transform of
    it is reused too) while the conv's and the batch norm's arrays hold the same values; a change
    in place to any of them, to eps, or of dtype folds anew: the output stays that of the layers
    run one by one."""
    net = _bn_net(16).eval()
    x = rng.standard_normal((2, 16, 8, 8)).astype(np.float32)
    net(x)
    unit = net._plan[0][1]
    assert type(unit).__name__ == "ConvUnit" and unit._folded()[0] is unit._folded()[0]
    conv, bn = net[0], net[1]
    changes = [lambda: conv.weight.data.__imul__(1.5), lambda: conv.bias.data.__iadd__(0.5),
               lambda: bn.weight.data.__imul__(-2), lambda: bn.bias.data.__iadd__(1),
               lambda: bn.running_mean.__iadd__(0.3), lambda: bn.running_var.__imul__(4),
               lambda: setattr(bn, "eps", 0.5)]
    for change in changes:
        change()
        out, a = net(x), x
        for layer in net:
            a = layer(a)
        np.testing.assert_allclose(out, a, rtol=1e-5, atol=1e-5)
    net.to(np.float64)
    out, a = net(x.astype(np.float64)), x.astype(np.float64)
    assert out.dtype == np.float64
    for layer in net:
        a = layer(a)
    np.testing.assert_allclose(out, a, rtol=1e-12, atol=1e-12)


def test_a_batch_norm_folds_only_where_its_layers_would_give_the_same():
    """No fold for a Conv2d subclass, a batch norm in training mode, or one of another width
    (which still raises its own error); float32 eval outputs match the unfolded layers."""
    class MyConv(cl.Conv2d):
        pass

    x = np.random.default_rng(0).standard_normal((2, 3, 8, 8)).astype(np.float32)
    net = _bn_net(3).eval()
    folded = net(x)
    assert [type(u).__name__ for _, u in net._plan][0] == "ConvUnit"
    a = x
    for layer in net:
        a = layer(a)
    np.testing.assert_allclose(folded, a, rtol=1e-5, atol=1e-5)
    mine = cl.Sequential(MyConv(3, 16, 3, padding=1), cl.BatchNorm2d(16), cl.ReLU()).eval()
    mine(x)
    assert [type(u).__name__ for _, u in mine._plan] == ["MyConv", "BatchNorm2d", "ReLU"]
    wrong = cl.Sequential(cl.Conv2d(3, 16, 3, padding=1), cl.BatchNorm2d(8)).eval()
    with pytest.raises(ValueError, match=r"layer 1: BatchNorm2d.*expected input of shape \(N, 8, H, W\)"):
        wrong(x)


@pytest.mark.parametrize("size", [(8, 6), (7, 6)], ids=["even: one pass", "odd: the ops in turn"])
def test_in_training_batch_norm_relu_and_maxpool_run_fused_with_the_same_values_and_gradients(rng, size):
    """On the CPU a BatchNorm2d in training mode before ReLU + MaxPool2d runs as one unit; float64
    values, running statistics, the batch count and every gradient equal the layers run one by
    one (ties and a negative gamma included); in eval mode it folds into the conv instead."""
    def net():
        cl.manual_seed(3)
        net = cl.Sequential(cl.Conv2d(2, 3, 3, padding=1), cl.BatchNorm2d(3), cl.ReLU(), cl.MaxPool2d(2),
                            cl.Flatten()).to(np.float64)
        net[1].weight.data[:] = [1.5, -0.5, 0.8]                    # a negative gamma flips the maxima
        return net
    fused, plain = net(), net()
    x = np.round(rng.standard_normal((3, 2, *size)) * 2) / 2       # halves: ties in the windows
    out = fused(x)
    assert [type(u).__name__ for _, u in fused._plan] == ["Conv2d", "NormReLUPool", "Flatten"]
    dout = rng.standard_normal(out.shape)
    dx = fused.backward(dout)
    a, d = _one_by_one(plain, x, dout)
    np.testing.assert_allclose(out, a, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(dx, d, rtol=1e-10, atol=1e-12)
    for (name, p), q in zip(fused.named_parameters(), plain.parameters()):
        np.testing.assert_allclose(p.grad, q.grad, rtol=1e-10, atol=1e-12, err_msg=name)
    for name in ("running_mean", "running_var", "num_batches_tracked"):
        np.testing.assert_allclose(getattr(fused[1], name), getattr(plain[1], name), rtol=1e-12, err_msg=name)
    assert int(fused[1].num_batches_tracked) == 1
    unit = cl.Sequential(*fused[1:])                               # against central differences too
    assert set(check_layer(unit, rng.standard_normal((3, 3, *size)))) == {"x", "0.weight", "0.bias"}
    fused.eval()
    fused(x)
    assert [type(u).__name__ for _, u in fused._plan] == ["ConvUnit", "Flatten"]


def test_slicing_a_sequential_shares_the_layers():
    """Catches: a slice that copies layers (the t-SNE features of net[:-1] would use stale weights)."""
    cl.manual_seed(0)
    net = cl.Sequential(cl.Linear(6, 8), cl.ReLU(), cl.Dropout(0.5), cl.Linear(8, 2))
    head = net[:-1]
    assert isinstance(head, cl.Sequential) and len(head) == 3 and all(a is b for a, b in zip(head, net))
    x = np.random.default_rng(0).standard_normal((40, 6)).astype(np.float32)
    np.testing.assert_array_equal(head.eval()(x), net.layers[1](net.layers[0](x)))
