"""What does convlib's one process-wide setting buy? At its first kernel call convlib tells glibc
to keep freed blocks (mallopt: mmap threshold 32 MB, trim threshold 256 MB); CONVLIB_MALLOPT=0
turns that off. This times training and inference steps in fresh processes, alternating, with
and without it, for convlib and (the same glibc settings through MALLOC_* variables) for PyTorch.

    python benchmarks/bench_malloc.py [--net reference|fashion] [--batch 32] [--rounds 5]
"""
import argparse
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from bench_train import run_child  # noqa: E402
from common import table  # noqa: E402

GLIBC_AS_CONVLIB = {"MALLOC_MMAP_THRESHOLD_": str(32 << 20), "MALLOC_TRIM_THRESHOLD_": str(256 << 20)}
VARIANTS = {  # name: (library, extra environment)
    "convlib (default: mallopt)": ("convlib", {}),
    "convlib, CONVLIB_MALLOPT=0": ("convlib", {"CONVLIB_MALLOPT": "0"}),
    "torch (glibc defaults)": ("torch", {}),
    "torch, glibc set as convlib sets it": ("torch", GLIBC_AS_CONVLIB),
}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--net", choices=["reference", "fashion"], default="reference")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5, help="fresh processes per variant")
    args = ap.parse_args()
    args.child_rounds, args.reps = 3, 5
    try:
        import torch  # noqa: F401
        variants = VARIANTS
    except ImportError:
        variants = {k: v for k, v in VARIANTS.items() if v[0] == "convlib"}
    env0 = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "CONVLIB_MALLOPT"}
    os.environ.clear()
    os.environ.update(env0)
    run_child(args, "--child", "convlib")                           # compile once, untimed
    speed = {name: {"train": [], "infer": []} for name in variants}
    for r in range(args.rounds):
        for name, (lib, env) in variants.items():
            res = run_child(args, "--child", lib, env=env)
            for kind in ("train", "infer"):
                speed[name][kind].append(args.batch / res[kind + "_s"][lib])
        print(f"round {r + 1}/{args.rounds} done", file=sys.stderr)
    rows = [[name] + [f"{np.median(v[k]):.0f} ({min(v[k]):.0f}-{max(v[k]):.0f})" for k in ("train", "infer")]
            for name, v in speed.items()]
    print(f"{args.net} net, batch {args.batch}, {args.threads} threads: img/s, median (range) over {args.rounds} "
          f"fresh processes per variant, alternating")
    print(table(rows, ["variant", "train img/s", "infer img/s"]))
    print(f"\nrerun: python benchmarks/bench_malloc.py --net {args.net} --batch {args.batch} --rounds {args.rounds}")


if __name__ == "__main__":
    main()
