"""Training and inference speed of the reference net, convlib vs PyTorch CPU, measured three
ways so that neither library's process settings can flatter the other:

  separate       each library alone in its own fresh process (the default headline figure);
                 processes alternate convlib, torch, convlib, ... and each prints its medians
  torch-first    one fresh process that imports torch, then convlib; both nets alternate
  convlib-first  the same with convlib imported first

plus the peak memory of a training step and the start-up time (cached and cold kernels).
Inference runs each net in eval mode (torch under no_grad), as a user's predictions do.

    python benchmarks/bench_train.py [--batch 32] [--size 64] [--threads 2] [--rounds 5]
    python benchmarks/bench_train.py --protocols separate          # only the headline
    python benchmarks/bench_train.py --net fashion --batch 128     # the Fashion-MNIST example's net
    python benchmarks/bench_train.py --busy-core 0.2               # one core shared with other work

PyTorch and ONNX Runtime are optional (pip install -e ".[bench]"); without them their columns are
skipped. ONNX Runtime runs the torch twin exported to ONNX, inference only, alone in its own
fresh process each round (the separate protocol).
The torch-alone process builds its weights with convlib's constructors (NumPy only: no convlib
kernel runs there, and importing convlib changes no thread or memory setting).
With --busy-core F, another process keeps the last core busy F of each 10 ms while every
library is timed (a laptop's browser, a noisy neighbour on a shared host): all of them meet it.
"""
import argparse
import atexit
import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
PROTOCOLS = ("separate", "torch-first", "convlib-first")


# ---------------------------------------------------------------- what runs in a child process
def _child(args):
    """One fresh process: import in the asked order, time the asked libraries, print JSON."""
    libs = args.child.split(",")                                    # e.g. "torch,convlib"
    if libs[0] == "torch":
        import torch
        torch.set_num_threads(args.threads)
    sys.path.insert(0, HERE)
    import numpy as np

    from common import alternate, build, cl, convlib_steps, torch_steps, torch_twin
    if "torch" in libs:
        import torch
        torch.set_num_threads(args.threads)
    cl.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    _, shape, classes = build(args.net, args.size)
    x = rng.random((args.batch, *shape), dtype=np.float32)
    y = rng.integers(0, classes, args.batch)
    steps = {}
    for lib in libs:
        net = build(args.net, args.size)[0]
        steps[lib] = torch_steps(torch_twin(net), x, y) if lib == "torch" else convlib_steps(net, x, y)
    train = alternate({k: v[0] for k, v in steps.items()}, rounds=args.rounds, reps=args.reps)
    infer = alternate({k: v[1] for k, v in steps.items()}, rounds=args.rounds, reps=args.reps)
    print(json.dumps({"train_s": train, "infer_s": infer}))


def ort_session(path, threads, batch, profile_prefix=None):
    """ONNX Runtime's session on an exported net at ``threads`` intra-op threads (one inter-op),
    and its feed: a random batch of ``batch`` inputs, {input name: array}. Imports NumPy and
    ONNX Runtime alone (never convlib, whose process settings must not touch ONNX Runtime's
    timings); with ``profile_prefix`` the session profiles each node."""
    import numpy as np
    import onnxruntime as ort
    so = ort.SessionOptions()
    so.intra_op_num_threads, so.inter_op_num_threads = threads, 1
    if profile_prefix:
        so.enable_profiling, so.profile_file_prefix = True, profile_prefix
    session = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    x = session.get_inputs()[0]
    return session, {x.name: np.random.default_rng(0).random((batch, *x.shape[1:]), dtype=np.float32)}


def _child_ort(args):
    """Fresh process: ONNX Runtime's inference on the torch twin exported to ONNX (the parent
    exported it; nothing else is imported here), intra_op_num_threads = --threads; the same
    rounds of timed steps as the other children."""
    import numpy as np
    import onnxruntime as ort
    session, feed = ort_session(args.child_ort, args.threads, args.batch)
    infer = lambda: session.run(None, feed)
    for _ in range(2):
        infer()
    rounds = []
    for _ in range(args.rounds):
        ts = []
        for _ in range(args.reps):
            t = time.perf_counter()
            infer()
            ts.append(time.perf_counter() - t)
        rounds.append(float(np.median(ts)))
    print(json.dumps({"infer_s": {"ort": float(np.median(rounds))}, "version": ort.__version__}))


def _export_onnx(args, folder):
    """The reference (or Fashion) net's torch twin as an ONNX file in folder, or None when torch or
    onnxruntime is missing (the [bench] extra has both)."""
    try:
        import onnxruntime  # noqa: F401
        import torch
    except ImportError:
        return None
    sys.path.insert(0, HERE)
    from common import build, torch_twin
    net, shape, _ = build(args.net, args.size)
    path = os.path.join(folder, f"{args.net}.onnx")
    x = torch.zeros((args.batch, *shape))
    torch.onnx.export(torch_twin(net).eval(), x, path, dynamo=False, input_names=["x"], output_names=["logits"])
    return path


def _child_memory(args):
    """Fresh process, one library: start-up to the end of the first training step, and the peak
    resident memory a training step adds (Linux's VmHWM, reset through /proc/self/clear_refs
    once the net and data exist, minus the resident size then)."""
    t0 = time.perf_counter()
    if args.child_memory == "torch":
        import torch
        torch.set_num_threads(args.threads)
    sys.path.insert(0, HERE)
    import numpy as np

    from common import build, convlib_steps, torch_steps, torch_twin
    net, shape, classes = build(args.net, args.size)
    rng = np.random.default_rng(0)
    x = rng.random((args.batch, *shape), dtype=np.float32)
    y = rng.integers(0, classes, args.batch)
    train, _ = torch_steps(torch_twin(net), x, y) if args.child_memory == "torch" else convlib_steps(net, x, y)
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


def _child_busy(args):
    """Spin on the last core of this process's set for busy_core of each 10 ms, sleep the rest,
    until killed or its parent ends."""
    os.sched_setaffinity(0, {max(os.sched_getaffinity(0))})
    parent = os.getppid()
    while os.getppid() == parent:
        t = time.perf_counter()
        while time.perf_counter() - t < 0.01 * args.child_busy:
            pass
        time.sleep(0.01 * (1 - args.child_busy))


# ---------------------------------------------------------------- the parent
def run_child(args, flag, value, env=None):
    cmd = [sys.executable, __file__, flag, value, "--net", args.net, "--batch", str(args.batch),
           "--size", str(args.size),
           "--threads", str(args.threads), "--rounds", str(args.child_rounds), "--reps", str(args.reps)]
    t = time.perf_counter()
    out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **(env or {})})
    if out.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{out.stderr}")
    res = json.loads(out.stdout.strip().splitlines()[-1])
    res["process_s"] = time.perf_counter() - t
    return res


def _median_range(values):
    import numpy as np
    return float(np.median(values)), float(min(values)), float(max(values))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--net", choices=["reference", "fashion"], default="reference",
                    help="fashion: the Fashion-MNIST example's net (1x28x28; use --batch 128)")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=5, help="fresh processes per library and protocol")
    ap.add_argument("--child-rounds", type=int, default=3, help="alternating rounds inside a process")
    ap.add_argument("--reps", type=int, default=5, help="steps per round (their median is taken)")
    ap.add_argument("--protocols", default=",".join(PROTOCOLS))
    ap.add_argument("--child")
    ap.add_argument("--child-memory")
    ap.add_argument("--busy-core", type=float, default=0.0,
                    help="keep the last core busy this share (0-1) of the time while timing")
    ap.add_argument("--child-ort")
    ap.add_argument("--child-busy", type=float)
    args = ap.parse_args()
    if args.child_busy is not None:
        return _child_busy(args)
    if not 0 <= args.busy_core < 1:
        ap.error(f"--busy-core must be in [0, 1), got {args.busy_core}")
    if args.child:
        return _child(args)
    if args.child_ort:
        return _child_ort(args)
    if args.child_memory:
        return _child_memory(args)
    try:
        import torch  # noqa: F401  (only asks whether it is installed; timing happens in children)
        have_torch = True
    except ImportError:
        have_torch = False
        print("PyTorch is not installed: its columns are skipped (pip install torch==2.13.0)")
    protocols = [p for p in args.protocols.split(",") if p]
    for p in protocols:
        if p not in PROTOCOLS:
            ap.error(f"unknown protocol {p!r}; choose from {', '.join(PROTOCOLS)}")
    if not have_torch:
        protocols = ["separate"]
    libs = ["convlib", "torch"] if have_torch else ["convlib"]
    # warm the kernel cache once, so that no timed process compiles
    run_child(args, "--child", "convlib")
    onnx_dir = tempfile.TemporaryDirectory()
    onnx_path = _export_onnx(args, onnx_dir.name)
    if onnx_path is None:
        print("ONNX Runtime or PyTorch is not installed: its column is skipped (pip install -e \".[bench]\")")
    busy = subprocess.Popen([sys.executable, __file__, "--child-busy", str(args.busy_core)]) if args.busy_core else None
    if busy:
        atexit.register(busy.kill)                                  # also if a round fails
    ort = {"infer": [], "version": None}
    results = {p: {"train": {k: [] for k in libs}, "infer": {k: [] for k in libs}} for p in protocols}
    for r in range(args.rounds):
        for p in protocols:
            if p == "separate":
                runs = [run_child(args, "--child", lib) for lib in libs]
                if onnx_path:
                    res = run_child(args, "--child-ort", onnx_path)
                    ort["infer"].append(args.batch / res["infer_s"]["ort"])
                    ort["version"] = res["version"]
            else:
                order = "torch,convlib" if p == "torch-first" else "convlib,torch"
                runs = [run_child(args, "--child", order)]
            for res in runs:
                for kind in ("train", "infer"):
                    for lib, s in res[kind + "_s"].items():
                        results[p][kind][lib].append(args.batch / s)
        print(f"round {r + 1}/{args.rounds} done", file=sys.stderr)
    if busy:
        busy.kill()
        busy.wait()
    sys.path.insert(0, HERE)
    from common import table
    rows = []
    for p in protocols:
        for lib in libs:
            row = [p, lib]
            for kind in ("train", "infer"):
                med, lo, hi = _median_range(results[p][kind][lib])
                row.append(f"{med:.0f} ({lo:.0f}-{hi:.0f})")
                if have_torch:
                    ratios = [c / t for c, t in zip(results[p][kind][lib], results[p][kind]["torch"])]
                    rmed, rlo, rhi = _median_range(ratios)
                    row.append(f"{rmed:.2f}x ({rlo:.2f}-{rhi:.2f})" if lib == "convlib" else "1.00x")
            rows.append(row)
    header = ["protocol", "library", "train img/s (range)"] + (["vs torch"] if have_torch else []) + \
             ["infer img/s (range)"] + (["vs torch"] if have_torch else [])
    where = f"{args.size}x{args.size}" if args.net == "reference" else "28x28"
    print(f"{args.net} net, batch {args.batch}, {where}, float32, {args.threads} threads; "
          f"medians over {args.rounds} fresh processes per protocol (each: median of {args.child_rounds} "
          f"alternating rounds of {args.reps} steps); ratios paired round by round"
          + (f"; the last core kept busy {args.busy_core:.0%} of the time by another process"
             if args.busy_core else ""))
    print(table(rows, header))
    if ort["infer"]:
        conv = results["separate"]["infer"]["convlib"]
        med, lo, hi = _median_range(ort["infer"])
        rmed, rlo, rhi = _median_range([c / o for c, o in zip(conv, ort["infer"])])
        print(f"ONNX Runtime {ort['version']} (the torch twin exported to ONNX, intra_op_num_threads="
              f"{args.threads}), each alone in a fresh process: inference {med:.0f} ({lo:.0f}-{hi:.0f}) img/s; "
              f"convlib / ONNX Runtime {rmed:.2f}x ({rlo:.2f}-{rhi:.2f})")
    onnx_dir.cleanup()
    mem = {lib: run_child(args, "--child-memory", lib, env={"MALLOC_MMAP_THRESHOLD_": "65536"}) for lib in libs}
    # A fixed mmap threshold makes glibc return every large block to the OS when it is freed, so
    # the resident size follows the live arrays of both libraries and the high-water mark is the
    # step's true peak (convlib's own malloc setting is skipped when MALLOC_* is set).
    with tempfile.TemporaryDirectory() as cache:
        cold = run_child(args, "--child-memory", "convlib", env={"NUMBA_CACHE_DIR": cache})
    print("\nstep peak memory (fresh process): " + ", ".join(f"{k} {v['step_mem_mb']:.0f} MB" for k, v in mem.items()))
    print(f"start-up to the end of the first training step (fresh process): convlib "
          f"{mem['convlib']['first_step_s']:.2f} s with cached kernels, {cold['first_step_s']:.1f} s cold "
          f"(compiling); whole process {mem['convlib']['process_s']:.2f} s / {cold['process_s']:.1f} s"
          + (f"; pytorch {mem['torch']['first_step_s']:.2f} s" if "torch" in mem else ""))
    print(f"\nrerun: python benchmarks/bench_train.py --net {args.net} --batch {args.batch} --size {args.size} "
          f"--threads {args.threads} --rounds {args.rounds} --protocols {','.join(protocols)}"
          + (f" --busy-core {args.busy_core}" if args.busy_core else ""))


if __name__ == "__main__":
    main()
