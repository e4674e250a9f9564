"""Fine-tuning: frozen parameters (requires_grad), load_state_dict(strict=False), net[i] = layer."""
import numpy as np
import pytest

import convlib as cl
from convlib.gradcheck import check_layer


def net_and_batch(rng, batchnorm=True):
    cl.manual_seed(0)
    net = cl.Sequential(cl.Conv2d(3, 4, 3, padding=1), *([cl.BatchNorm2d(4)] if batchnorm else []), cl.ReLU(),
                        cl.MaxPool2d(2), cl.Conv2d(4, 6, 3, padding=1), cl.ReLU(), cl.MaxPool2d(2),
                        cl.Flatten(), cl.Linear(6 * 2 * 2, 8), cl.ReLU(), cl.Linear(8, 3))
    x = rng.standard_normal((16, 3, 8, 8)).astype(np.float32)
    y = np.arange(16) % 3
    return net, x, y


def test_requires_grad_defaults_and_flags():
    layer = cl.Linear(3, 2)
    assert all(p.requires_grad for p in layer.parameters())
    assert layer.requires_grad_(False) is layer
    assert [p.requires_grad for p in layer.parameters()] == [False, False]
    assert "requires_grad=False" in repr(layer.weight)
    layer.requires_grad_()
    assert all(p.requires_grad for p in layer.parameters())
    assert not cl.Parameter(np.zeros(2), requires_grad=False).requires_grad


@pytest.mark.parametrize("make_opt", [
    lambda ps: cl.optim.SGD(ps, lr=0.1, momentum=0.9, weight_decay=0.1),
    lambda ps: cl.optim.Adam(ps, lr=0.01, weight_decay=0.1),
    lambda ps: cl.optim.AdamW(ps, lr=0.01)], ids=["sgd", "adam", "adamw"])
def test_frozen_weights_unchanged_by_fit(rng, make_opt):
    """The optimizer gets every parameter (as people write it); the frozen ones must not move,
    not even by weight decay, while the rest train."""
    net, x, y = net_and_batch(rng)
    net[:5].requires_grad_(False)                                   # conv, BN, ReLU, pool, conv
    before = net.state_dict()
    cl.fit(net, (x, y), epochs=2, batch_size=4, optimizer=make_opt(net.parameters()), progress=False)
    after = net.state_dict()
    for name, p in net.named_parameters():
        if p.requires_grad:
            assert not np.array_equal(after[name], before[name]), name
        else:
            np.testing.assert_array_equal(after[name], before[name], err_msg=name)
            assert not p.grad.any(), name                            # backward added nothing
    assert name == "10.bias"                                        # the loop saw the trainable head
    np.testing.assert_raises(AssertionError, np.testing.assert_array_equal,  # BN statistics still move
                             after["1.running_mean"], before["1.running_mean"])


def test_backward_stops_below_the_first_trainable_layer(rng):
    """Frozen layers under the first trainable one are not run backward at all; the trainable
    ones get the same gradients as in a net with nothing frozen."""
    net, x, _ = net_and_batch(rng, batchnorm=False)
    ref, _, _ = net_and_batch(rng, batchnorm=False)
    calls = []

    def forward_then_spy(x):
        """net(x), then each unit of the plan that backward runs records (its first layer, need_dx)."""
        net(x)
        for i, unit in net._plan:
            def spy(dout, need_dx=True, _f=type(unit).backward, _u=unit, _i=i):
                calls.append((_i, need_dx))
                return _f(_u, dout, need_dx)
            unit.backward = spy

    net[:3].requires_grad_(False)                                   # first conv frozen, second conv (3) trains
    d = rng.standard_normal((16, 3)).astype(np.float32)
    forward_then_spy(x)
    net.backward(d, input_grad=False)
    ref(x)
    ref.backward(d, input_grad=False)
    assert [i for i, _ in calls] == [9, 8, 7, 6, 3]                 # 3-5 run as one fused conv+ReLU+pool unit
    assert dict(calls)[3] is False                                  # the first trainable conv skips its dx
    refp = dict(ref.named_parameters())
    for name, p in net.named_parameters():
        if name.startswith("0."):
            assert not p.grad.any()
        else:
            np.testing.assert_allclose(p.grad, refp[name].grad, rtol=1e-6, atol=1e-7, err_msg=name)
    calls.clear()
    forward_then_spy(x)
    dx = net.backward(d)                                            # input_grad=True still runs everything
    assert [i for i, _ in calls] == [9, 8, 7, 6, 3, 0] and dx.shape == x.shape    # 0-2 one unit too
    net.requires_grad_(False)
    net(x)
    assert net.backward(d, input_grad=False) is None                # all frozen: nothing to do


def test_frozen_layers_gradients_against_finite_differences(rng):
    """With layers frozen, the trainable parameters' gradients still match finite differences."""
    net, _, _ = net_and_batch(rng, batchnorm=False)
    net.to(np.float64)
    net[:3].requires_grad_(False)
    x = rng.standard_normal((2, 3, 8, 8))
    errors = check_layer(net, x)                                    # raises if any gradient is wrong
    assert set(errors) == {"x", "3.weight", "3.bias", "7.weight", "7.bias", "9.weight", "9.bias"}


def test_load_state_dict_strict_false_reports_keys(rng):
    net, _, _ = net_and_batch(rng, batchnorm=False)
    cl.manual_seed(5)
    other = cl.Sequential(cl.Conv2d(3, 4, 3, padding=1), cl.ReLU(), cl.MaxPool2d(2),
                          cl.Conv2d(4, 6, 3, padding=1))
    keys = other.load_state_dict(net.state_dict(), strict=False)
    assert keys.missing_keys == []
    assert keys.unexpected_keys == ["7.weight", "7.bias", "9.weight", "9.bias"]
    assert isinstance(keys, tuple) and keys == ([], ["7.weight", "7.bias", "9.weight", "9.bias"])
    np.testing.assert_array_equal(other[3].weight.data, net[3].weight.data)
    bigger = cl.Sequential(*net_and_batch(rng, batchnorm=False)[0], cl.ReLU(), cl.Linear(3, 2))
    keys = bigger.load_state_dict(other.state_dict(), strict=False)
    assert keys.missing_keys == ["7.weight", "7.bias", "9.weight", "9.bias", "11.weight", "11.bias"]
    assert keys.unexpected_keys == []
    assert net.load_state_dict(net.state_dict()) == ([], [])        # strict and matching: nothing left over
    with pytest.raises(ValueError, match="missing keys"):
        bigger.load_state_dict(other.state_dict())


def test_load_state_dict_shape_mismatch_raises_and_loads_nothing(rng):
    net, _, _ = net_and_batch(rng, batchnorm=False)
    sd = {k: v + 1 for k, v in net.state_dict().items()}
    sd["9.weight"] = np.zeros((5, 8), np.float32)                   # a head for 5 classes, not 3
    before = net.state_dict()
    with pytest.raises(ValueError, match=r"'9.weight' has shape \(5, 8\), the model expects \(3, 8\)"):
        net.load_state_dict(sd, strict=False)
    for k, v in net.state_dict().items():                           # checked before copying: untouched
        np.testing.assert_array_equal(v, before[k], err_msg=k)


def test_setitem_replaces_a_layer(rng, tmp_path):
    net, x, _ = net_and_batch(rng, batchnorm=False)
    old_head = net[-1]
    net[-1] = cl.Linear(8, 5)
    assert net[9] is not old_head and net(x).shape == (16, 5)
    assert net.state_dict()["9.weight"].shape == (5, 8)
    net.backward(np.ones((16, 5), np.float32))
    assert net[-1].weight.grad.any()
    cl.save(net, tmp_path / "m.npz")                                # the architecture follows the new layer
    np.testing.assert_array_equal(cl.load(tmp_path / "m.npz").eval()(x), net.eval()(x))
    assert net[:3][0] is net[0]                                     # slicing still shares the layers
    with pytest.raises(ValueError, match="not .*convlib layers|only hold convlib layers"):
        net[0] = np.zeros(3)
    with pytest.raises(ValueError, match="int index"):
        net[0:2] = cl.ReLU()
    with pytest.raises(IndexError):
        net[20] = cl.ReLU()


def test_setitem_needs_a_new_forward(rng):
    net, x, _ = net_and_batch(rng, batchnorm=False)
    net(x)
    net[-1] = cl.Linear(8, 3)
    with pytest.raises(RuntimeError, match="without a forward"):
        net.backward(np.ones((16, 3), np.float32))
