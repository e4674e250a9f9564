"""Scale-out figures (convlib.distributed and the labeller), measured on this machine:

1. the labeller (examples/lib/selfie_data.label_posts) on a generated table of --posts posts: rows/s;
2. training the reference net (64x64, global batch 32) as 1 process x 2 threads against
   ``mpiexec -n 2`` ranks x 1 thread, each run in its own fresh processes, in alternating rounds:
   images/s (median and range) and the allreduce time per step;
3. on paper: the expected throughput on N machines, from the measured step time and the
   allreduce volume, 2 (N - 1) / N x parameter bytes per step, at 1 and 10 Gbit/s.

    python benchmarks/bench_distributed.py [--rounds 3] [--posts 1000000]     # needs the [mpi] extra
"""
import argparse
import os
import shutil
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import convlib as cl  # noqa: E402
from common import reference_net, table  # noqa: E402
from lib import selfie_data as sd  # noqa: E402

BATCH, N_IMAGES = 32, 640


def labeller_rate(n, reps=3):
    """Posts labelled per second (median of ``reps``) on a generated table of ``n`` posts."""
    rng = np.random.default_rng(0)
    cols = dict(followers=np.round(np.exp(rng.normal(6.0, 1.5, n))).astype(np.int64) + 1,
                likes=rng.poisson(30, n), tags=rng.poisson(2.0, n), age_days=rng.integers(1, 400, n))
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        idx, labels, _ = sd.label_posts(cols)
        times.append(time.perf_counter() - t0)
    return n / float(np.median(times)), len(idx)


def worker():
    """One training run (after a warm-up epoch): prints images/s, the allreduce seconds per step
    and the parameter count from rank 0."""
    from convlib.distributed import world
    comm = world()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((N_IMAGES, 3, 64, 64)).astype(np.float32)    # (N, 3, 64, 64)
    y = rng.integers(0, 2, N_IMAGES)
    net = reference_net()
    opt = cl.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    cl.fit(net, (x[:4 * BATCH], y[:4 * BATCH]), epochs=1, batch_size=BATCH, optimizer=opt, progress=False)
    comm.barrier()
    t0 = time.perf_counter()
    cl.fit(net, (x, y), epochs=1, batch_size=BATCH, optimizer=opt, progress=False)
    seconds = time.perf_counter() - t0
    n_params = sum(p.data.size for p in net.parameters())
    buf = np.zeros(n_params, np.float32)                            # what fit reduces each step
    t0 = time.perf_counter()
    for _ in range(50):
        comm.allreduce_sum(buf)
    reduce_s = (time.perf_counter() - t0) / 50
    if comm.rank == 0:
        print(f"RESULT {N_IMAGES / seconds:.2f} {reduce_s:.6f} {n_params} {comm.size}")


def run(cmd, threads):
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=900,
                         env=dict(os.environ, CONVLIB_NUM_THREADS=str(threads)))
    line = [s for s in out.stdout.splitlines() if s.startswith("RESULT")]
    if out.returncode or not line:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{out.stdout}\n{out.stderr}")
    return [float(v) for v in line[0].split()[1:]]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--posts", type=int, default=1_000_000)
    ap.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker:
        return worker()
    rate, labelled = labeller_rate(args.posts)
    print(f"labeller: {args.posts:,} posts in {args.posts / rate:.2f} s = {rate:,.0f} posts/s "
          f"({labelled:,} labelled)\n")
    mpiexec = shutil.which("mpiexec", path=os.path.dirname(sys.executable) + os.pathsep + os.environ["PATH"])
    if mpiexec is None:
        raise SystemExit("no mpiexec: pip install -e '.[mpi]'")
    me = os.path.abspath(__file__)
    one, two = [], []
    for _ in range(args.rounds):                                    # alternating, each run in fresh processes
        one.append(run([sys.executable, me, "--worker"], threads=2))
        two.append(run([mpiexec, "-n", "2", sys.executable, "-m", "mpi4py", me, "--worker"], threads=1))
    one, two = np.array(one), np.array(two)                         # (rounds, 4)

    def fmt(a):
        return f"{np.median(a):.0f} [{a.min():.0f}-{a.max():.0f}]"
    rows = [["1 process x 2 threads", fmt(one[:, 0]), "-"],
            ["2 ranks x 1 thread (mpiexec)", fmt(two[:, 0]), f"{1e3 * np.median(two[:, 1]):.3f}"]]
    print(table(rows, ["reference net, batch 32", "train img/s", "allreduce ms/step"]))
    ratio = two[:, 0] / one[:, 0]
    print(f"2 ranks / 1 process: {np.median(ratio):.2f}x [{ratio.min():.2f}-{ratio.max():.2f}] "
          f"({args.rounds} rounds)\n")
    n_params = int(one[0, 2])
    step = BATCH / np.median(one[:, 0])                     # seconds per 32-image step on one machine
    rows = []
    for n in (2, 4, 8, 16):
        volume = 2 * (n - 1) / n * n_params * 4                     # bytes each machine sends per step (float32)
        row = [str(n)]
        for gbit in (1, 10):
            t = step + volume / (gbit * 1e9 / 8)
            row.append(f"{n * BATCH / t:.0f} ({n * BATCH / t / (BATCH / step):.1f}x)")
        rows.append(row)
    print(f"on paper: each machine as fast as this one ({BATCH / step:.0f} img/s, a {BATCH}-image step in "
          f"{1e3 * step:.0f} ms), {n_params:,} parameters reduced as float32 per step (latency ignored)")
    print(table(rows, ["machines", "img/s at 1 Gbit/s", "img/s at 10 Gbit/s"]))


if __name__ == "__main__":
    main()
