"""Training and inference speed of the reference net: convlib (Numba) vs convlib's NumPy
reference kernels vs PyTorch CPU, timed side by side in alternating rounds, medians; plus
peak memory of a training step and start-up times.

    python benchmarks/bench_train.py [--batch 32] [--size 64] [--threads 2] [--skip-reference]

PyTorch is optional (pip install torch==2.13.0); without it those columns are skipped.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import alternate, cl, convlib_steps, median_time, reference_net, table, torch_steps, torch_twin  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def _child(kind, batch, size, threads):
    """Run in a fresh process: start-up time to the end of the first training step, and the
    peak resident memory a training step adds: Linux's high-water mark (VmHWM, reset through
    /proc/self/clear_refs after the net and data exist) minus the resident size at that point."""
    t0 = time.perf_counter()
    if kind == "torch":
        import torch
        torch.set_num_threads(threads)
    net = reference_net(size)
    rng = np.random.default_rng(0)
    x = rng.random((batch, 3, size, size), dtype=np.float32)
    y = rng.integers(0, 2, batch)
    train, _ = torch_steps(torch_twin(net), x, y) if kind == "torch" else convlib_steps(net, x, y)
    train()
    first = time.perf_counter() - t0
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")                                                 # reset the peak to the current size
    before = _status_kb("VmRSS")
    for _ in range(5):
        train()
    print(json.dumps(dict(first_step_s=first, step_mem_mb=(_status_kb("VmHWM") - before) / 1024)))


def _status_kb(key):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(key + ":"))


def child(kind, batch, size, threads, env=None):
    t = time.perf_counter()
    # A fixed mmap threshold makes glibc return every large block to the OS when it is freed, so
    # the resident size follows the live arrays of both libraries and the high-water mark is the
    # step's true peak (with the default dynamic threshold, freed blocks stay resident).
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", **(env or {})}
    out = subprocess.run([sys.executable, __file__, "--child", kind, "--batch", str(batch), "--size", str(size),
                          "--threads", str(threads)], capture_output=True, text=True, env=env)
    if out.returncode:
        raise RuntimeError(out.stderr)
    res = json.loads(out.stdout.strip().splitlines()[-1])
    res["process_s"] = time.perf_counter() - t
    return res


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--skip-reference", action="store_true")
    ap.add_argument("--child")
    args = ap.parse_args()
    if args.child:
        return _child(args.child, args.batch, args.size, args.threads)
    try:
        import torch
        torch.set_num_threads(args.threads)
    except ImportError:
        torch = None
        print("PyTorch is not installed: its columns are skipped (pip install torch==2.13.0)")
    B, S = args.batch, args.size
    rng = np.random.default_rng(0)
    x = rng.random((B, 3, S, S), dtype=np.float32)
    y = rng.integers(0, 2, B)
    net = reference_net(S)
    train, infer = convlib_steps(net, x, y)
    contenders_t, contenders_i = {"convlib": train}, {"convlib": infer}
    if torch is not None:
        tt, ti = torch_steps(torch_twin(reference_net(S)), x, y)
        contenders_t["pytorch"], contenders_i["pytorch"] = tt, ti
    res_t = alternate(contenders_t, rounds=args.rounds)
    res_i = alternate(contenders_i, rounds=args.rounds)
    if not args.skip_reference:
        cl.use_kernels("reference")
        ref_net = reference_net(S)
        rt, ri = convlib_steps(ref_net, x, y)
        rt()
        res_t["numpy reference"] = median_time(rt, 3)
        res_i["numpy reference"] = median_time(ri, 3)
        cl.use_kernels("cpu")
    mem = {"convlib": child("convlib", B, S, args.threads)}
    if torch is not None:
        mem["pytorch"] = child("torch", B, S, args.threads)
    with tempfile.TemporaryDirectory() as cache:
        cold = child("convlib", B, S, args.threads, env={"NUMBA_CACHE_DIR": cache})
    rows = []
    for k in res_t:
        ratio = lambda r: f"{r['pytorch'] / r[k]:.2f}x" if "pytorch" in r else "-"
        m = mem.get(k)
        rows.append([k, f"{B / res_t[k]:.0f}", ratio(res_t), f"{B / res_i[k]:.0f}", ratio(res_i),
                     f"{m['step_mem_mb']:.0f}" if m else "-"])
    print(f"reference net, batch {B}, {S}x{S}, float32, {args.threads} threads, medians of {args.rounds} "
          f"alternating rounds")
    print(table(rows, ["", "train img/s", "vs torch", "infer img/s", "vs torch", "step peak MB"]))
    print(f"\nstart-up to the end of the first training step (fresh process): convlib "
          f"{mem['convlib']['first_step_s']:.2f} s with cached kernels, {cold['first_step_s']:.1f} s cold "
          f"(compiling); whole process {mem['convlib']['process_s']:.2f} s / {cold['process_s']:.1f} s"
          + (f"; pytorch {mem['pytorch']['first_step_s']:.2f} s" if "pytorch" in mem else ""))
    print(f"\nrerun: python benchmarks/bench_train.py --batch {B} --size {S} --threads {args.threads}")


if __name__ == "__main__":
    main()
