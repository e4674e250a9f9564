"""Shared pieces of the benchmarks: the reference net (issue: CPU speed), its torch twin, timing."""
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.join(HERE, ".."), os.path.join(HERE, "..", "examples")]   # convlib, the examples' nets
from fashion_mnist import build_net as fashion_net  # noqa: E402

import convlib as cl  # noqa: E402
from lib.selfie_model import build_net as selfie_net  # noqa: E402


def reference_net(size=64, seed=0):
    """The selfie example's net (examples/lib/selfie_model.py): float32 NCHW, 4 x (Conv3x3 p1 ->
    ReLU -> MaxPool2) with 16, 32, 64, 64 channels, Flatten, Linear(.., 64), ReLU, Linear(64, 2)."""
    cl.manual_seed(seed)
    return selfie_net(size)


def build(name, size=64):
    """(net, input shape (C, H, W), classes) of a benchmarked net: "reference" or "fashion" (the
    Fashion-MNIST example's own net, from examples/fashion_mnist.py)."""
    if name == "fashion":
        cl.manual_seed(0)
        return fashion_net(), (1, 28, 28), 10
    return reference_net(size), (3, size, size), 2


def torch_twin(net):
    """The same net in torch.nn with convlib's weights copied in (no conversion needed)."""
    import torch
    from torch import nn
    mods = []
    for layer in net:
        name = type(layer).__name__
        if name == "Conv2d":
            mods.append(nn.Conv2d(layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride,
                                  layer.padding))
        elif name == "Linear":
            mods.append(nn.Linear(layer.in_features, layer.out_features))
        elif name == "MaxPool2d":
            mods.append(nn.MaxPool2d(layer.kernel_size, layer.stride, layer.padding))
        elif name in ("BatchNorm2d", "BatchNorm1d"):
            mods.append(getattr(nn, name)(layer.num_features, layer.eps, layer.momentum))
        elif name == "Dropout":
            mods.append(nn.Dropout(layer.p))
        else:
            mods.append({"ReLU": nn.ReLU, "Flatten": nn.Flatten}[name]())
    tnet = nn.Sequential(*mods)
    tnet.load_state_dict({k: torch.from_numpy(v) for k, v in net.state_dict().items()})
    return tnet


def convlib_steps(net, x, y, device="cpu"):
    """(train, infer) closures for ``net`` on ``device``; x is copied there once, each call ends
    in a device synchronisation (labels are copied in and the loss out, as fit() does)."""
    net.to(device)
    x = cl.to_device(x, device)
    opt = cl.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    sync = _sync(device, "convlib")

    def train():
        logits = net(x)
        _, d = cl.softmax_cross_entropy(logits, y)
        opt.zero_grad()
        net.backward(d, input_grad=False)                            # as fit() does; torch skips it too
        opt.step()
        sync()

    def infer():                                                    # eval mode, as predict_proba runs
        net.eval()
        net(x)
        net.train()
        sync()
    return train, infer


def torch_steps(tnet, x, y, device="cpu"):
    import torch
    tnet = tnet.to(device)
    xt, yt = torch.from_numpy(x).to(device), torch.from_numpy(y).to(device)
    opt = torch.optim.SGD(tnet.parameters(), lr=0.01, momentum=0.9)
    lossf = torch.nn.CrossEntropyLoss()
    sync = _sync(device, "torch")

    def train():
        opt.zero_grad()
        lossf(tnet(xt), yt).backward()
        opt.step()
        sync()

    def infer():                                                    # eval mode too (batch norm, dropout)
        tnet.eval()
        with torch.no_grad():
            tnet(xt)
        tnet.train()
        sync()
    return train, infer


def _sync(device, library):
    """Wait for the GPU's queued work (a no-op on the CPU), so a timing covers all of it."""
    if device != "cuda":
        return lambda: None
    if library == "torch":
        import torch
        return torch.cuda.synchronize
    from numba import cuda
    return cuda.synchronize


def median_time(fn, reps):
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return float(np.median(ts))


def alternate(contenders, rounds=5, reps=5, warmup=2):
    """Time each contender's function in turns (round-robin) and return the median seconds per call."""
    for fn in contenders.values():
        for _ in range(warmup):
            fn()
    times = {k: [] for k in contenders}
    for _ in range(rounds):
        for k, fn in contenders.items():
            times[k].append(median_time(fn, reps))
    return {k: float(np.median(v)) for k, v in times.items()}


def peak_matmul_gflops(n=2048, reps=5):
    """float32 n x n matrix product with convlib's thread policy (all cores), GFLOP/s."""
    from convlib.kernels.cpu.conv import matmul
    a = np.random.rand(n, n).astype(np.float32)
    return 2 * n ** 3 / median_time(lambda: matmul(a, a), reps) / 1e9


def table(rows, header):
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
    fmt = lambda r: "  ".join(str(v).rjust(w) if i else str(v).ljust(w) for i, (v, w) in enumerate(zip(r, widths)))
    return "\n".join([fmt(header), fmt(["-" * w for w in widths])] + [fmt(r) for r in rows])
