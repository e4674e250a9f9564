"""Per-layer breakdown of one training step of the reference net: forward and backward time of
every layer (as Sequential runs them: a ReLU before a MaxPool2d as one fused unit) beside
PyTorch's same layer, each conv's effective GFLOP/s (direct-convolution FLOPs over its time) and
its share of the machine's sgemm peak (measured here: one large product on the same threads),
the same over all conv layers of a step together (median and range over the steps), and each
part's share of the step, so the next bottleneck is visible.

    python benchmarks/bench_layers.py [--batch 32] [--size 64] [--reps 15]
    python benchmarks/bench_layers.py --net fashion --batch 128     # the Fashion-MNIST example's net
"""
import argparse
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import build, cl, peak_matmul_gflops, table, torch_twin  # noqa: E402


def torch_layer_times(net, x, y, reps):
    """PyTorch's forward and backward milliseconds per layer of the same net (weights copied),
    each module run on its own detached input so its backward can be timed alone; the first
    layer's input needs no gradient, as in convlib's fit()."""
    import torch
    tnet = torch_twin(net).train()
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    fwd, bwd = [[] for _ in tnet], [[] for _ in tnet]
    for _ in range(reps + 3):
        acts, a = [], xt
        for i, m in enumerate(tnet):
            inp = a.detach().requires_grad_(i > 0)
            t = time.perf_counter()
            out = m(inp)
            fwd[i].append(time.perf_counter() - t)
            acts.append((inp, out))
            a = out
        logits = a.detach().requires_grad_()
        torch.nn.functional.cross_entropy(logits, yt).backward()
        g = logits.grad
        for i in reversed(range(len(tnet))):
            inp, out = acts[i]
            t = time.perf_counter()
            out.backward(g)
            bwd[i].append(time.perf_counter() - t)
            g = inp.grad
    return [float(np.median(v[3:])) for v in fwd], [float(np.median(v[3:])) for v in bwd]


def conv_flops(conv, shape, first):
    """(forward, backward) FLOPs of a direct convolution on input ``shape``: 2 per multiply-add;
    backward counts both gradients, or the weight gradient alone for the first layer (fit skips
    its input gradient). Effective GFLOP/s divide these by the time, so a faster algorithm
    (Winograd) can pass the machine's peak."""
    N, C = shape[:2]
    oh, ow = conv.output_shape(shape)[2:]
    flops = 2 * N * conv.out_channels * oh * ow * C * conv.kernel_size[0] * conv.kernel_size[1]
    return flops, flops if first else 2 * flops


def conv_of(unit):
    """The Conv2d a unit runs: the unit itself, or the conv of a fused Conv2d + ReLU + MaxPool2d
    (its time then includes the ReLU and the pool, done in the same pass), else None."""
    return unit if isinstance(unit, cl.Conv2d) else getattr(unit, "conv", None)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--reps", type=int, default=15)
    ap.add_argument("--net", choices=["reference", "fashion"], default="reference")
    args = ap.parse_args()
    B, S = args.batch, args.size
    net, shape, classes = build(args.net, S)
    rng = np.random.default_rng(0)
    x = rng.random((B, *shape), dtype=np.float32)
    y = rng.integers(0, classes, B)
    opt = cl.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    units = net._units()                                            # what Sequential runs, fused units as one
    fwd = {i: [] for i, _ in units}
    bwd = {i: [] for i, _ in units}
    other = {"loss": [], "optimizer": []}
    shapes = {}
    for rep in range(args.reps + 3):
        a = x
        for i, unit in units:
            shapes[i] = a.shape
            t = time.perf_counter()
            a = unit(a)
            fwd[i].append(time.perf_counter() - t)
        t = time.perf_counter()
        _, d = cl.softmax_cross_entropy(a, y)
        other["loss"].append(time.perf_counter() - t)
        opt.zero_grad()
        for i, unit in reversed(units):
            t = time.perf_counter()
            d = unit.backward(d, need_dx=i > 0)                     # as fit() does
            bwd[i].append(time.perf_counter() - t)
        t = time.perf_counter()
        opt.step()
        other["optimizer"].append(time.perf_counter() - t)
    med = lambda v: float(np.median(v[3:]))
    total = sum(med(fwd[i]) + med(bwd[i]) for i in fwd) + sum(med(v) for v in other.values())
    peak = peak_matmul_gflops()
    try:
        tf, tb = torch_layer_times(net, x, y, args.reps)
    except ImportError:
        tf = tb = None
        print("PyTorch is not installed: its columns are skipped (pip install torch==2.13.0)")
    rows = []
    for n, (i, unit) in enumerate(units):
        f, b = med(fwd[i]), med(bwd[i])
        layers = range(i, units[n + 1][0] if n + 1 < len(units) else len(net))   # the layers of this unit
        gf = ""
        if conv_of(unit) is not None:
            flops, bflops = conv_flops(conv_of(unit), shapes[i], first=i == 0)
            gf = f"{flops / f / 1e9:.0f} / {bflops / b / 1e9:.0f}"
            gf += f" ({100 * (flops + bflops) / (f + b) / 1e9 / peak:.0f}% peak)"
        name = "+".join(type(net[j]).__name__ for j in layers)
        torch_cols = [f"{1e3 * sum(tf[j] for j in layers):.2f}", f"{1e3 * sum(tb[j] for j in layers):.2f}"]
        label = f"{i}" if len(layers) == 1 else f"{layers[0]}-{layers[-1]}"
        rows.append([f"{label}: {name}", f"{1e3 * f:.2f}",
                     f"{1e3 * b:.2f}"] + (torch_cols if tf else []) + [gf, f"{100 * (f + b) / total:.1f}%"])
    for k, v in other.items():
        rows.append([k, f"{1e3 * med(v):.2f}", ""] + (["", ""] if tf else []) + ["", f"{100 * med(v) / total:.1f}%"])
    convs = [(i, conv_flops(conv_of(unit), shapes[i], first=i == 0)) for i, unit in units if conv_of(unit) is not None]
    for label, chosen in (("all conv layers", convs), ("without the first", convs[1:])):
        per_step = [sum(fl) / sum(fwd[i][r] + bwd[i][r] for i, _ in chosen) / 1e9       # effective GFLOP/s per step
                    for r in range(3, args.reps + 3) for fl in [[f + b for _, (f, b) in chosen]]]
        lo, mid, hi = np.min(per_step), np.median(per_step), np.max(per_step)
        rows.append([f"{label}, one step", "", ""] + (["", ""] if tf else []) +
                    [f"{mid:.0f} ({lo:.0f}-{hi:.0f}): {100 * mid / peak:.0f}% peak", ""])
    print(f"{args.net} net, batch {B}, {'x'.join(map(str, shape[1:]))}: one training step {1e3 * total:.1f} ms "
          f"({B / total:.0f} img/s); matmul peak {peak:.0f} GFLOP/s")
    print(table(rows, ["layer", "fwd ms", "bwd ms"] + (["torch fwd", "torch bwd"] if tf else [])
                + ["conv GFLOP/s fwd / bwd", "share"]))
    if tf:
        print(f"PyTorch, the same layers one by one (same process, its own autograd per module): "
              f"{1e3 * (sum(tf) + sum(tb)):.1f} ms without loss and optimizer")
    print(f"\nrerun: python benchmarks/bench_layers.py --net {args.net} --batch {B} --size {S}")


if __name__ == "__main__":
    main()
