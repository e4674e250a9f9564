"""How the cost of the reference net grows with batch size (1, 8, 32, 128 at 64x64) and image
size (32, 64, 128 at batch 32): training and inference images/s, convlib vs PyTorch, timed in
alternating rounds, medians.

    python benchmarks/bench_scaling.py [--rounds 3]
"""
import argparse
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import alternate, convlib_steps, reference_net, table, torch_steps, torch_twin  # noqa: E402


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    try:
        import torch
        torch.set_num_threads(args.threads)
    except ImportError:
        torch = None
        print("PyTorch is not installed: its columns are skipped")
    rows = []
    for B, S in [(1, 64), (8, 64), (32, 64), (128, 64), (32, 32), (32, 128)]:
        rng = np.random.default_rng(0)
        x = rng.random((B, 3, S, S), dtype=np.float32)
        y = rng.integers(0, 2, B)
        ct, ci = convlib_steps(reference_net(S), x, y)
        t, i = {"convlib": ct}, {"convlib": ci}
        if torch is not None:
            t["pytorch"], i["pytorch"] = torch_steps(torch_twin(reference_net(S)), x, y)
        rt = alternate(t, rounds=args.rounds, reps=3 if B >= 128 or S >= 128 else 5)
        ri = alternate(i, rounds=args.rounds, reps=3 if B >= 128 or S >= 128 else 5)
        row = [f"{B}", f"{S}x{S}", f"{1e3 * rt['convlib']:.1f}", f"{B / rt['convlib']:.0f}", f"{B / ri['convlib']:.0f}"]
        if torch is not None:
            row += [f"{B / rt['pytorch']:.0f}", f"{B / ri['pytorch']:.0f}",
                    f"{rt['pytorch'] / rt['convlib']:.2f}x", f"{ri['pytorch'] / ri['convlib']:.2f}x"]
        rows.append(row)
        print(f"batch {B} {S}x{S} done", file=sys.stderr)
    header = ["batch", "image", "step ms", "train img/s", "infer img/s"]
    if torch is not None:
        header += ["torch train", "torch infer", "train vs torch", "infer vs torch"]
    print(table(rows, header))
    print(f"\nrerun: python benchmarks/bench_scaling.py --rounds {args.rounds} --threads {args.threads}")


if __name__ == "__main__":
    main()
