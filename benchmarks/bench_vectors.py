"""What 512-bit vectors give convlib's kernels on an AVX-512 machine, against ONNX Runtime.

On CPUs with AVX-512, LLVM (which compiles the Numba kernels) prefers 256-bit vectors unless
told otherwise, while NumPy's BLAS and ONNX Runtime run 512-bit code of their own. Numba takes
the CPU features to compile for from NUMBA_CPU_FEATURES; this machine's own features plus
"-prefer-256-bit" let LLVM vectorise with the full width (every Numba function of the process,
compiled and cached apart from the default ones). Each round runs three fresh processes, one
after the other: convlib as installed, convlib with that setting, and ONNX Runtime (the torch
twin exported to ONNX), each timing the eval forward (and convlib the training step) as
benchmarks/bench_train.py does; ratios are paired round by round.

    python benchmarks/bench_vectors.py [--net reference|fashion] [--batch 32] [--threads 2] [--rounds 5]

ONNX Runtime is optional (pip install -e ".[bench]"); without it its column is skipped.
"""
import argparse
import os
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
from bench_train import _export_onnx, _median_range, run_child  # noqa: E402


def wide_features():
    """NUMBA_CPU_FEATURES for 512-bit vectors: this machine's features (as Numba finds them
    itself) and -prefer-256-bit; None where the CPU has no AVX-512."""
    import llvmlite.binding as ll
    features = ll.get_host_cpu_features().flatten()
    return features + ",-prefer-256-bit" if "+avx512f" in features.split(",") else None


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--net", choices=["reference", "fashion"], default="reference")
    ap.add_argument("--batch", type=int, default=None, help="default: 32 (reference), 128 (fashion)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5, help="rounds of three fresh processes")
    ap.add_argument("--reps", type=int, default=5, help="steps per timed round inside a process")
    args = ap.parse_args()
    if args.batch is None:
        args.batch = 128 if args.net == "fashion" else 32
    if args.batch < 1 or args.threads < 1 or args.rounds < 1 or args.reps < 1:
        ap.error("--batch, --threads, --rounds and --reps must be positive")
    args.size, args.child_rounds = 64, 3                            # what run_child passes on
    wide = wide_features()
    if wide is None:
        print("This CPU has no AVX-512: LLVM's vectors are 256 bits wide at most, nothing to compare.")
        return
    if "NUMBA_CPU_FEATURES" in os.environ:
        ap.error("unset NUMBA_CPU_FEATURES first: the benchmark sets it for one of its columns")
    env = {"NUMBA_CPU_FEATURES": wide}
    for e in (None, env):                                          # compile both caches before timing
        run_child(args, "--child", "convlib", env=e)
    folder = tempfile.TemporaryDirectory()
    onnx_path = _export_onnx(args, folder.name)
    runs = {"default": [], "512-bit": [], "ort": []}
    for r in range(args.rounds):
        runs["default"].append(run_child(args, "--child", "convlib"))
        runs["512-bit"].append(run_child(args, "--child", "convlib", env=env))
        if onnx_path:
            runs["ort"].append(run_child(args, "--child-ort", onnx_path)["infer_s"]["ort"])
        print(f"round {r + 1}/{args.rounds} done", file=sys.stderr)
    folder.cleanup()

    def ms(values):
        med, lo, hi = _median_range([v * 1e3 for v in values])
        return f"{med:.2f} ({lo:.2f}-{hi:.2f})"

    def ratio(a, b):
        med, lo, hi = _median_range([x / y for x, y in zip(a, b)])
        return f"{med:.2f}x ({lo:.2f}-{hi:.2f})"

    from common import table
    step = {k: [run["train_s"]["convlib"] for run in runs[k]] for k in ("default", "512-bit")}
    fwd = {k: [run["infer_s"]["convlib"] for run in runs[k]] for k in ("default", "512-bit")}
    rows = [["training step ms", ms(step["default"]), ms(step["512-bit"]), ratio(step["default"], step["512-bit"]), ""],
            ["eval forward ms", ms(fwd["default"]), ms(fwd["512-bit"]), ratio(fwd["default"], fwd["512-bit"]),
             ms(runs["ort"]) if runs["ort"] else "not installed"]]
    if runs["ort"]:
        rows.append(["convlib / ONNX Runtime", ratio(runs["ort"], fwd["default"]),
                     ratio(runs["ort"], fwd["512-bit"]), "", ""])
    print(f"{args.net} net, batch {args.batch}, float32, {args.threads} threads; medians (ranges) over {args.rounds} "
          "rounds of fresh processes, ratios paired round by round (above 1: the second faster)")
    print(table(rows, ["", "convlib", "convlib, 512-bit", "speed-up", "ONNX Runtime"]))
    print("\n512-bit: NUMBA_CPU_FEATURES set to this machine's features (llvmlite.binding.get_host_cpu_features()"
          "), then -prefer-256-bit")
    print(f"rerun: python benchmarks/bench_vectors.py --net {args.net} --batch {args.batch} --threads {args.threads} "
          f"--rounds {args.rounds} --reps {args.reps}")


if __name__ == "__main__":
    main()
