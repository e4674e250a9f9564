"""Where an eval forward's time goes on the threads, convlib beside ONNX Runtime: the question
behind the CPU issue's last goal (inference >= 1.0x ONNX Runtime).

  1. scaling    one thread and --threads, each library alone in a fresh process (the four kinds
                of process alternate, --rounds times): the eval forward's ms, and how much each
                library gains from its other threads;
  2. calls      convlib in one process, one thread and --threads alternating: each parallel
                call of an eval forward (a layer's kernel, ``threads.parallel_for``) with its
                time at one thread, its wall time at --threads, the threads' busy time in it
                (against the one-thread time: what running side by side costs the kernels),
                and the thread time left idle (handing the shares out, waiting for the last
                one); and the time outside the calls (the Python between the kernels, on one
                thread while the others wait);
  3. nodes      ONNX Runtime's own per-node kernel times at --threads (its profiler), same net.

    python benchmarks/bench_threads.py [--net reference|fashion] [--batch 32] [--threads 2] [--rounds 3]
    python benchmarks/bench_threads.py --parts 2          # only the trace of convlib's calls

ONNX Runtime and PyTorch (to export the net) come with the [bench] extra; without them parts 1
and 3 show convlib alone.
"""
import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)


def _forward_ms(fn, reps=30, warmup=3):
    """Median ms of fn() over reps calls (common.median_time's, here because common imports
    convlib, which the ONNX Runtime child must not)."""
    import numpy as np
    for _ in range(warmup):
        fn()
    ts = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        ts.append(time.perf_counter() - t)
    return float(np.median(ts)) * 1e3


def _convlib_net(args):
    import numpy as np

    from common import build
    net, shape, _ = build(args.net)
    net.eval()
    x = np.random.default_rng(0).random((args.batch, *shape), dtype=np.float32)
    return net, x


def _child(args):
    """Fresh process: one library at args.child_threads threads; prints {"ms": eval forward}."""
    if args.child == "ort":
        from bench_train import ort_session
        session, feed = ort_session(args.onnx, args.child_threads, args.batch)
        ms = _forward_ms(lambda: session.run(None, feed))
    else:
        from common import cl
        cl.set_num_threads(args.child_threads)
        net, x = _convlib_net(args)
        ms = _forward_ms(lambda: net(x))
    print(json.dumps({"ms": ms}))


def _scaling(args, onnx):
    """{(library, threads): [ms per round]} from fresh processes, alternating."""
    libs = ["convlib"] + (["ort"] if onnx else [])
    res = {(lib, t): [] for lib in libs for t in (1, args.threads)}
    for r in range(args.rounds):
        for lib, t in res:
            cmd = [sys.executable, __file__, "--child", lib, "--child-threads", str(t), "--net", args.net,
                   "--batch", str(args.batch), "--onnx", onnx or ""]
            out = subprocess.run(cmd, capture_output=True, text=True)
            if out.returncode:
                raise RuntimeError(f"{' '.join(cmd)} failed:\n{out.stderr}")
            res[lib, t].append(json.loads(out.stdout.strip().splitlines()[-1])["ms"])
        print(f"round {r + 1}/{args.rounds} done", file=sys.stderr)
    return res


def _calls(args, blocks=4, reps=10):
    """Per parallel call of convlib's eval forward, medians: (name, wall ms at one thread, wall ms
    and busy thread-ms at args.threads); the forward's ms and the part outside the calls, at
    args.threads. One thread and args.threads alternate in blocks of reps forwards, in one process."""
    import numpy as np

    from common import cl
    from convlib.kernels.cpu import threads
    net, x = _convlib_net(args)
    plain, calls, busy = threads.parallel_for, [], []

    def traced(fn, n, *a, **kw):
        def share(lo, hi, *rest):
            t = time.perf_counter()
            out = fn(lo, hi, *rest)
            busy.append(time.perf_counter() - t)                    # list.append: safe across threads
            return out
        if hasattr(fn, "py_func"):                                  # keep parallel_for's choice for Numba kernels
            share.py_func = fn.py_func
        del busy[:]
        t = time.perf_counter()
        out = plain(share, n, *a, **kw)
        calls.append((getattr(fn, "__name__", "?"), time.perf_counter() - t, sum(busy)))
        return out

    modules = [m for name, m in list(sys.modules.items())
               if name.startswith("convlib.kernels.cpu") and getattr(m, "parallel_for", None) is plain]
    for m in modules:
        m.parallel_for = traced
    runs = {1: [], args.threads: []}                                # threads -> [(wall, calls)]
    try:
        for _ in range(blocks):
            for n in runs:
                cl.set_num_threads(n)
                for _ in range(3):
                    net(x)
                for _ in range(reps):
                    del calls[:]
                    t = time.perf_counter()
                    net(x)
                    runs[n].append((time.perf_counter() - t, list(calls)))
    finally:
        for m in modules:
            m.parallel_for = plain
    med = lambda n, i, k: float(np.median([c[i][k] for _, c in runs[n]])) * 1e3
    many = runs[args.threads]
    rows = [(many[0][1][i][0], med(1, i, 1), med(args.threads, i, 1), med(args.threads, i, 2))
            for i in range(len(many[0][1]))]
    outside = float(np.median([w - sum(c[1] for c in cs) for w, cs in many])) * 1e3
    return rows, float(np.median([w for w, _ in many])) * 1e3, outside


def _nodes(args, onnx, reps=40):
    """ONNX Runtime's per-node kernel times (median ms) at args.threads, and its forward's ms."""
    import numpy as np

    from bench_train import ort_session
    with tempfile.TemporaryDirectory() as folder:
        session, feed = ort_session(onnx, args.threads, args.batch, os.path.join(folder, "prof"))
        ms = _forward_ms(lambda: session.run(None, feed), reps)
        with open(session.end_profiling()) as f:
            events = json.load(f)
    times = {}
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time"):
            key = (e["name"][:-len("_kernel_time")], e["args"].get("op_name", "?"))
            times.setdefault(key, []).append(e["dur"] / 1e3)
    return [(f"{op} ({name})", float(np.median(v))) for (name, op), v in times.items()], ms


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--net", choices=["reference", "fashion"], default="reference")
    p.add_argument("--batch", type=int, default=None, help="default: 32 (reference), 128 (fashion)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--parts", default="1,2,3", help="which of the three parts to run (default: all)")
    p.add_argument("--child", help=argparse.SUPPRESS)
    p.add_argument("--child-threads", type=int, help=argparse.SUPPRESS)
    p.add_argument("--onnx", help=argparse.SUPPRESS)
    args = p.parse_args()
    args.batch = args.batch or (32 if args.net == "reference" else 128)
    parts = set(args.parts.replace(" ", "").split(","))
    if not parts or not parts <= {"1", "2", "3"}:
        p.error(f"--parts: a comma-separated choice of 1, 2 and 3, got {args.parts!r}")
    for name in ("batch", "threads", "rounds"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be at least 1, got {getattr(args, name)}")
    parts = {int(v) for v in parts}
    if args.child:
        return _child(args)

    from bench_train import _export_onnx
    from common import table
    folder = tempfile.TemporaryDirectory()
    args.size = 64
    onnx = _export_onnx(args, folder.name) if parts & {1, 3} else None
    if onnx is None and parts & {1, 3}:
        print("ONNX Runtime or PyTorch missing (pip install -e \".[bench]\"): convlib alone", file=sys.stderr)
    print(f"{args.net} net, batch {args.batch}, float32, eval forward")

    if 1 in parts:
        _print_scaling(args, _scaling(args, onnx))
    if 2 in parts:
        _print_calls(args, *_calls(args))
    if onnx and 3 in parts:
        nodes, ms = _nodes(args, onnx)
        print(f"\n3. ONNX Runtime's nodes at {args.threads} threads (its profiler, medians): forward {ms:.2f} ms")
        print(table([[name, f"{t:.3f}"] for name, t in nodes], ["node", "ms"]))
    folder.cleanup()
    print(f"\nrerun: python benchmarks/bench_threads.py --net {args.net} --batch {args.batch} "
          f"--threads {args.threads} --rounds {args.rounds} --parts {','.join(map(str, sorted(parts)))}")


def _print_scaling(args, res):
    import numpy as np

    from common import table
    rows = []
    for lib in dict.fromkeys(k[0] for k in res):
        one, many = np.array(res[lib, 1]), np.array(res[lib, args.threads])
        rows.append([{"ort": "ONNX Runtime"}.get(lib, lib), f"{np.median(one):.2f} ({one.min():.2f}-{one.max():.2f})",
                     f"{np.median(many):.2f} ({many.min():.2f}-{many.max():.2f})",
                     f"{np.median(one / many):.2f}x ({(one / many).min():.2f}-{(one / many).max():.2f})"])
    print(f"\n1. scaling: fresh processes, {args.rounds} rounds, medians (range), ms")
    print(table(rows, ["library", "1 thread", f"{args.threads} threads", "speed-up (paired by round)"]))


def _print_calls(args, calls, wall, outside):
    from common import table
    T = args.threads
    rows = [[name, f"{one:.3f}", f"{w:.3f}", f"{b:.3f}", f"{b / one:.2f}x", f"{(T * w - b) / (T * w):.0%}"]
            for name, one, w, b in calls]
    idle = sum(T * w - b for _, _, w, b in calls) + (T - 1) * outside
    print(f"\n2. convlib's parallel calls, one process, medians: at {T} threads the forward {wall:.2f} ms, "
          f"{outside:.2f} ms of it outside the calls")
    print(table(rows, ["kernel", "1 thread ms", f"{T} threads ms", "busy thread-ms",
                       "busy / 1 thread", "idle"]))
    print(f"busy / 1 thread: the kernels' own work at {T} threads against one (1.00x: none lost to sharing "
          f"the machine). Thread time left idle at {T} threads (in the calls, and the other threads' "
          f"outside them): {idle:.2f} of {T * wall:.2f} thread-ms ({idle / (T * wall):.0%})")


if __name__ == "__main__":
    main()
