"""Training throughput of the reference net on an NVIDIA GPU: convlib's numba.cuda kernels vs
PyTorch CUDA (cuDNN) on the same GPU, timed side by side in alternating rounds, medians.

    PYTHONPATH=. python3 benchmarks/gpu_check.py   # first: correctness on this GPU (docs/gpu.md)
    PYTHONPATH=. python3 benchmarks/bench_gpu.py [--batches 32 256] [--size 64]

(numba-cuda, and torch with CUDA for the comparison column, as installed; or
``pip install -e ".[gpu]" torch``.)

Each timed call is one training step (forward, loss, backward without the input gradient,
SGD with momentum) on a batch already on the GPU, ending in a device synchronisation; convlib's
step also copies the labels in and the loss out, as ``fit`` does. Without PyTorch CUDA the
torch column is skipped.
"""
import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import alternate, cl, convlib_steps, reference_net, table, torch_steps, torch_twin  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batches", type=int, nargs="+", default=[32, 256])
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    cl.backend.check_device("cuda")
    try:
        import torch
        has_torch = torch.cuda.is_available()
    except ImportError:
        has_torch = False
    rows = []
    for B in args.batches:
        rng = np.random.default_rng(0)
        x = rng.random((B, 3, args.size, args.size), dtype=np.float32)
        y = rng.integers(0, 2, B)
        fns = {"convlib": convlib_steps(reference_net(args.size), x, y, "cuda")[0]}
        if has_torch:
            fns["torch"] = torch_steps(torch_twin(reference_net(args.size)), x, y, "cuda")[0]
        t = alternate(fns, rounds=args.rounds, reps=10, warmup=3)
        row = [B, f"{B / t['convlib']:.0f}"]
        if has_torch:
            row += [f"{B / t['torch']:.0f}", f"{t['torch'] / t['convlib']:.2f}x"]
        rows.append(row)
    header = ["batch", "convlib img/s"] + (["torch img/s", "convlib / torch"] if has_torch else [])
    from numba import cuda
    gpu = cuda.get_current_device().name if hasattr(cuda, "get_current_device") else "numba's simulator"
    gpu = gpu.decode() if isinstance(gpu, bytes) else gpu
    print(f"reference net, {args.size}x{args.size}, training steps on {gpu}")
    print(table(rows, header))
    batches = " ".join(map(str, args.batches))
    print(f"\nrerun: PYTHONPATH=. python3 benchmarks/bench_gpu.py --batches {batches} --size {args.size}")


if __name__ == "__main__":
    main()
