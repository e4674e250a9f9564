"""PyTorch as an optional oracle: the same weights give the same outputs and gradients.
Skipped where torch is not installed (it is never a dependency of convlib)."""
import numpy as np
import pytest

import convlib as cl

torch = pytest.importorskip("torch")


def test_net_forward_backward_and_state_dict_match_torch(rng):
    from torch import nn
    cl.manual_seed(0)
    net = cl.Sequential(cl.Conv2d(3, 4, (3, 2), stride=(2, 1), padding=1), cl.BatchNorm2d(4), cl.ReLU(),
                        cl.MaxPool2d(2, stride=1, padding=1), cl.Conv2d(4, 5, 3), cl.LeakyReLU(0.1),
                        cl.AvgPool2d(2), cl.Flatten(), cl.Linear(5 * 2 * 5, 6), cl.Tanh(), cl.Linear(6, 3))
    tnet = nn.Sequential(nn.Conv2d(3, 4, (3, 2), stride=(2, 1), padding=1), nn.BatchNorm2d(4), nn.ReLU(),
                         nn.MaxPool2d(2, stride=1, padding=1), nn.Conv2d(4, 5, 3), nn.LeakyReLU(0.1),
                         nn.AvgPool2d(2), nn.Flatten(), nn.Linear(5 * 2 * 5, 6), nn.Tanh(), nn.Linear(6, 3)).double()
    assert list(tnet.state_dict()) == list(net.state_dict())
    tnet.load_state_dict({k: torch.from_numpy(v) for k, v in net.state_dict().items()})
    net.to(np.float64)
    x = rng.standard_normal((4, 3, 9, 10))
    y = np.array([0, 2, 1, 2])
    out = net(x)
    loss, d = cl.softmax_cross_entropy(out, y)
    dx = net.backward(d)
    xt = torch.from_numpy(x).requires_grad_()
    tout = tnet(xt)
    tloss = nn.functional.cross_entropy(tout, torch.from_numpy(y))
    tloss.backward()
    np.testing.assert_allclose(out, tout.detach().numpy(), rtol=1e-10, atol=1e-12)
    assert abs(loss - tloss.item()) < 1e-12
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-9, atol=1e-12)
    tparams = dict(tnet.named_parameters())
    for name, p in net.named_parameters():
        np.testing.assert_allclose(p.grad, tparams[name].grad.numpy(), rtol=1e-9, atol=1e-12, err_msg=name)
    tstate = tnet.state_dict()
    for name in ("1.running_mean", "1.running_var"):
        np.testing.assert_allclose(net.state_dict()[name], tstate[name].numpy(), rtol=1e-10)


def test_optimizers_match_torch(rng):
    w0 = rng.standard_normal(5)
    grads = [rng.standard_normal(5) for _ in range(4)]
    for make_cl, make_t in [
        (lambda p: cl.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=0.01, nesterov=True),
         lambda p: torch.optim.SGD(p, lr=0.1, momentum=0.9, weight_decay=0.01, nesterov=True)),
        (lambda p: cl.optim.Adam(p, lr=0.01, weight_decay=0.1),
         lambda p: torch.optim.Adam(p, lr=0.01, weight_decay=0.1)),
        (lambda p: cl.optim.AdamW(p, lr=0.01), lambda p: torch.optim.AdamW(p, lr=0.01)),
    ]:
        p = cl.Parameter(w0.copy())
        tp = torch.nn.Parameter(torch.from_numpy(w0.copy()))
        opt, topt = make_cl([p]), make_t([tp])
        for g in grads:
            p.grad[:] = g
            tp.grad = torch.from_numpy(g.copy())
            opt.step()
            topt.step()
        np.testing.assert_allclose(p.data, tp.detach().numpy(), rtol=1e-10, atol=1e-12)


def test_load_state_dict_strict_false_and_frozen_params_match_torch(rng):
    """The same partial state dict gives torch's missing/unexpected keys (names and order), and
    a frozen first layer with Adam + weight decay trains the rest as torch does."""
    from torch import nn
    cl.manual_seed(0)
    net = cl.Sequential(cl.Conv2d(2, 3, 3), cl.ReLU(), cl.Flatten(), cl.Linear(3 * 4 * 4, 4), cl.ReLU(),
                        cl.Linear(4, 2))
    tnet = nn.Sequential(nn.Conv2d(2, 3, 3), nn.ReLU(), nn.Flatten(), nn.Linear(3 * 4 * 4, 4), nn.ReLU(),
                         nn.Linear(4, 2)).double()
    partial = {k: v for k, v in net.state_dict().items() if not k.startswith("5.")}
    partial["9.weight"] = np.zeros(3)
    keys = net.load_state_dict(partial, strict=False)
    tkeys = tnet.load_state_dict({k: torch.from_numpy(v) for k, v in partial.items()}, strict=False)
    assert keys.missing_keys == tkeys.missing_keys == ["5.weight", "5.bias"]
    assert keys.unexpected_keys == tkeys.unexpected_keys == ["9.weight"]

    tnet.load_state_dict({k: torch.from_numpy(v) for k, v in net.state_dict().items()})
    net.to(np.float64)
    net[0].requires_grad_(False)
    tnet[0].requires_grad_(False)
    opt = cl.optim.Adam(net.parameters(), lr=0.05, weight_decay=0.1)
    topt = torch.optim.Adam(tnet.parameters(), lr=0.05, weight_decay=0.1)
    x, y = rng.standard_normal((6, 2, 6, 6)), np.array([0, 1, 1, 0, 1, 0])
    for _ in range(3):
        opt.zero_grad()
        topt.zero_grad()
        net.backward(cl.softmax_cross_entropy(net(x), y)[1], input_grad=False)
        nn.functional.cross_entropy(tnet(torch.from_numpy(x)), torch.from_numpy(y)).backward()
        opt.step()
        topt.step()
    tstate = tnet.state_dict()
    for name, v in net.state_dict().items():
        np.testing.assert_allclose(v, tstate[name].numpy(), rtol=1e-9, atol=1e-12, err_msg=name)


def test_label_smoothing_matches_torch(rng):
    logits, y = rng.standard_normal((6, 5)) * 2, rng.integers(0, 5, 6)
    t = torch.tensor(logits, requires_grad=True)
    tloss = torch.nn.CrossEntropyLoss(label_smoothing=0.1)(t, torch.from_numpy(y))
    tloss.backward()
    loss, dlogits = cl.softmax_cross_entropy(logits, y, label_smoothing=0.1)
    assert abs(loss - tloss.item()) < 1e-12
    np.testing.assert_allclose(dlogits, t.grad.numpy(), atol=1e-12)


@pytest.mark.parametrize("groups, affine, shape",
                         [(2, True, (3, 6, 5, 4)), (1, True, (2, 4, 7)), (4, False, (2, 4, 3, 3))])
def test_group_norm_matches_torch_forward_and_backward(rng, groups, affine, shape):
    from torch import nn
    layer = cl.GroupNorm(groups, shape[1], eps=1e-4, affine=affine).to(np.float64)
    tlayer = nn.GroupNorm(groups, shape[1], eps=1e-4, affine=affine).double()
    if affine:
        layer.weight.data[:] = rng.uniform(0.5, 2, shape[1])
        layer.bias.data[:] = rng.standard_normal(shape[1])
    assert list(layer.state_dict()) == list(tlayer.state_dict())
    tlayer.load_state_dict({k: torch.from_numpy(v) for k, v in layer.state_dict().items()})
    x, dout = rng.standard_normal(shape) * 3 + 1, rng.standard_normal(shape)
    out = layer(x)
    dx = layer.backward(dout)
    xt = torch.from_numpy(x).requires_grad_()
    tout = tlayer(xt)
    tout.backward(torch.from_numpy(dout))
    np.testing.assert_allclose(out, tout.detach().numpy(), rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-9, atol=1e-12)
    for name, p in layer.named_parameters():
        np.testing.assert_allclose(p.grad, dict(tlayer.named_parameters())[name].grad.numpy(), rtol=1e-9, atol=1e-12)


class _TorchResidual(torch.nn.Module):
    """The torch twin of cl.Residual: block(x) + shortcut(x), or + x."""

    def __init__(self, block, shortcut=None):
        super().__init__()
        self.block, self.shortcut = block, shortcut

    def forward(self, x):
        return self.block(x) + (x if self.shortcut is None else self.shortcut(x))


def test_a_small_resnet_matches_its_torch_twin_and_weights_move_both_ways(rng, tmp_path):
    """Two residual blocks (an identity shortcut, and a strided 1x1 conv where the shape changes):
    forward, backward, state_dict keys; weights from torch load into convlib and back."""
    from torch import nn
    cl.manual_seed(0)
    net = cl.Sequential(
        cl.Conv2d(3, 8, 3, padding=1), cl.GroupNorm(2, 8), cl.ReLU(),
        cl.Residual(cl.Sequential(cl.Conv2d(8, 8, 3, padding=1), cl.BatchNorm2d(8), cl.ReLU(),
                                  cl.Conv2d(8, 8, 3, padding=1), cl.BatchNorm2d(8))),
        cl.ReLU(),
        cl.Residual(cl.Sequential(cl.Conv2d(8, 16, 3, stride=2, padding=1), cl.GroupNorm(4, 16), cl.ReLU(),
                                  cl.Conv2d(16, 16, 3, padding=1)), shortcut=cl.Conv2d(8, 16, 1, stride=2)),
        cl.ReLU(), cl.AdaptiveAvgPool2d(1), cl.Flatten(), cl.Linear(16, 3))
    tnet = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.GroupNorm(2, 8), nn.ReLU(),
        _TorchResidual(nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                                     nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8))),
        nn.ReLU(),
        _TorchResidual(nn.Sequential(nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.GroupNorm(4, 16), nn.ReLU(),
                                     nn.Conv2d(16, 16, 3, padding=1)), shortcut=nn.Conv2d(8, 16, 1, stride=2)),
        nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 3)).double()
    assert list(net.state_dict()) == list(tnet.state_dict())
    assert "3.block.0.weight" in net.state_dict() and "5.shortcut.weight" in net.state_dict()
    net.load_state_dict({k: v.numpy() for k, v in tnet.state_dict().items()})   # torch -> convlib
    net.to(np.float64)
    x, y = rng.standard_normal((4, 3, 8, 8)), np.array([0, 2, 1, 1])
    out = net(x)
    loss, d = cl.softmax_cross_entropy(out, y)
    dx = net.backward(d)
    xt = torch.from_numpy(x).requires_grad_()
    tout = tnet(xt)
    nn.functional.cross_entropy(tout, torch.from_numpy(y)).backward()
    np.testing.assert_allclose(out, tout.detach().numpy(), rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(dx, xt.grad.numpy(), rtol=1e-8, atol=1e-12)
    tparams = dict(tnet.named_parameters())
    for name, p in net.named_parameters():
        np.testing.assert_allclose(p.grad, tparams[name].grad.numpy(), rtol=1e-8, atol=1e-12, err_msg=name)
    for name, v in tnet.state_dict().items():                       # running statistics after one step
        np.testing.assert_allclose(net.state_dict()[name], v.numpy(), rtol=1e-10, err_msg=name)
    cl.save(net, tmp_path / "resnet.npz")                           # saved and loaded like any net
    again = cl.load(tmp_path / "resnet.npz")
    tnet.load_state_dict({k: torch.from_numpy(v) for k, v in again.state_dict().items()})   # convlib -> torch
    np.testing.assert_allclose(again(x), tnet.eval()(torch.from_numpy(x)).detach().numpy(), rtol=1e-9, atol=1e-12)
