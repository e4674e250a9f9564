"""Data-parallel training across simulated hosts: one MPI rank per network namespace, every
allreduce byte over TCP through veth links shaped to 1 or 10 Gbit/s (benchmarks/netns.py).
Needs root, Linux, iproute2 and the [mpi] extra (the Dask part: [dask]).

    python benchmarks/multihost.py                  # 2, 4, 8 ranks at 1 and 10 Gbit/s: the tables, the projection
    python benchmarks/multihost.py --ranks 2 --gbit 1 --rounds 1    # one row
    python benchmarks/multihost.py --fault          # cut a host's link mid-epoch; resume from the checkpoint
    python benchmarks/multihost.py --dask           # rate a folder on Dask workers in two other namespaces
    python benchmarks/multihost.py --cleanup        # remove the namespaces of a killed run

The table: the reference net (64x64, 32 images per rank per step, SGD with momentum) trained by
``cl.fit`` with a communicator that clocks each allreduce. Per step: the time, its compute (from
the end of one allreduce to the start of the next: forward, backward, the optimizer, flattening),
the allreduce as it happens in the step (including the wait for the slowest rank), the same
allreduce alone (after a barrier, median of 20), and the bytes each rank's eth0 sent per step, by
the kernel's counters. All ranks share this machine's cores (one kernel thread each); every row is
measured --rounds times in turn (default 3) and the medians printed. Then the projection to N real
machines: one machine's step (one process, 2 threads) plus the allreduce as measured, next to the
old formula (2(N-1)/N x 4P bytes at line rate). Run as root. Results: docs/distributed.md.
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path[:0] = [HERE, ROOT, os.path.join(ROOT, "examples")]
import netns  # noqa: E402

PER_RANK, SIZE = 32, 64                                             # images per rank per step, image side
REPS = 20                                                           # allreduces timed alone
FAULT_EPOCHS, FAULT_STEPS, CUT_AT = 4, 6, (3, 2)                    # cut in epoch 3, step 2


def env_paths():
    """PYTHONPATH for every process started here: this checkout's convlib and examples first."""
    return os.pathsep.join([ROOT, os.path.join(ROOT, "examples"), HERE]
                           + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p])


def tool(name):
    """A program beside this Python (the venv's mpiexec, dask) or on PATH; SystemExit without it."""
    exe = shutil.which(name, path=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    if exe is None:
        raise SystemExit(f"no {name}: pip install -e '.[mpi,dask]'")
    return exe


def nic_bytes(dev="eth0"):
    """(sent, received) bytes of ``dev`` in this process's network namespace (/proc/net/dev)."""
    with open("/proc/net/dev") as f:
        for line in f:
            name, _, rest = line.partition(":")
            if name.strip() == dev:
                v = rest.split()
                return int(v[8]), int(v[0])
    return 0, 0


def barrier_then_bytes(comm):
    """Bytes eth0 has sent, read once every rank got here: what a rank sent before is delivered
    (a barrier's messages follow it on the same connections), so none is still queued."""
    comm.barrier()
    return nic_bytes()[0]


# ---------------------------------------------------------------- workers (run as MPI ranks)
class Repeat:
    """A batch iterable: the same batch ``(x, y)`` ``steps`` times (fit splits it among the ranks)."""

    def __init__(self, x, y, steps):
        self.x, self.y, self.steps = x, y, steps

    def __len__(self):
        return self.steps

    def __iter__(self):
        return iter([(self.x, self.y)] * self.steps)


def train_worker(steps):
    """Rank r's part of one table row; rank 0 prints ``RESULT <json>``: per rank its step times
    split into compute and allreduce (ms, medians), the allreduce alone, and the bytes it sent."""
    import convlib as cl
    from common import reference_net
    from convlib import distributed
    from convlib.distributed import MPIComm, Single, launched_size

    class Clocked(MPIComm if launched_size() > 1 else Single):
        """The communicator, noting (start, end) of every allreduce."""
        def __init__(self):
            super().__init__()
            self.log = []

        def allreduce_sum(self, buf):
            t0 = time.perf_counter()
            super().allreduce_sum(buf)
            self.log.append((t0, time.perf_counter()))
            return buf

    comm = Clocked()
    rng = np.random.default_rng(0)
    n = PER_RANK * comm.size                                        # the global batch
    x = rng.standard_normal((n, 3, SIZE, SIZE)).astype(np.float32)  # (n, 3, 64, 64)
    y = rng.integers(0, 2, n)
    net = reference_net(SIZE)
    opt = cl.optim.SGD(net.parameters(), lr=0.01, momentum=0.9)
    cl.fit(net, Repeat(x, y, 3), epochs=1, batch_size=n, optimizer=opt, progress=False, comm=comm)   # warm-up
    sent = [barrier_then_bytes(comm)]
    distributed.broadcast_state(comm, net)                          # what fit sends before its first step
    sent.append(barrier_then_bytes(comm))
    comm.log.clear()
    t_start = time.perf_counter()
    cl.fit(net, Repeat(x, y, steps), epochs=1, batch_size=n, optimizer=opt, progress=False, comm=comm)
    seconds = time.perf_counter() - t_start
    sent.append(barrier_then_bytes(comm))
    log = comm.log[:]                                               # one allreduce per step
    if len(log) > 1:                                                # steady state: from the first step's end
        seconds = (log[-1][1] - log[0][1]) * steps / (len(log) - 1)
    compute = [log[k][0] - log[k - 1][1] for k in range(1, len(log))]
    in_step = [b - a for a, b in log[1:]]
    n_params = sum(p.data.size for p in net.parameters())
    buf = np.zeros(n_params, np.float32)                            # what fit reduces each step
    alone, blocking = [], []
    for _ in range(REPS):
        comm.barrier()
        t0 = time.perf_counter()
        comm.allreduce_sum(buf)
        alone.append(time.perf_counter() - t0)
    sent.append(barrier_then_bytes(comm))
    for _ in range(REPS if comm.size > 1 else 0):                   # MPI's blocking call, for comparison
        comm.barrier()
        t0 = time.perf_counter()
        comm.comm.Allreduce(comm.MPI.IN_PLACE, buf, op=comm.MPI.SUM)
        blocking.append(time.perf_counter() - t0)
    sleepy = []                                                     # waiting asleep: the cores left to the kernel
    for _ in range(REPS if comm.size > 1 else 0):
        comm.barrier()
        t0 = time.perf_counter()
        request = comm.comm.Iallreduce(comm.MPI.IN_PLACE, buf, op=comm.MPI.SUM)
        while not request.Test():
            time.sleep(1e-4)
        sleepy.append(time.perf_counter() - t0)
    tiny, one = [], np.zeros(1)                                     # 8 bytes: the latency of a round
    for _ in range(REPS if comm.size > 1 else 0):
        comm.barrier()
        t0 = time.perf_counter()
        comm.allreduce_sum(one)
        tiny.append(time.perf_counter() - t0)
    ms = lambda v: 1e3 * float(np.median(v)) if len(v) else 0.0
    mine = {"rank": comm.rank, "step": 1e3 * seconds / steps, "compute": ms(compute), "in_step": ms(in_step),
            "alone": ms(alone), "blocking": ms(blocking), "sleepy": ms(sleepy),
            "tiny": ms(tiny), "sent_alone": (sent[3] - sent[2]) / REPS,
            "sent_step": (sent[2] - sent[1] - (sent[1] - sent[0])) / steps,   # less the broadcast fit starts with
            "weights": float(sum(np.abs(p.data).sum(dtype=np.float64) for p in net.parameters()))}
    everyone = comm.allgather(mine)
    if comm.rank == 0:
        print("RESULT " + json.dumps({"size": comm.size, "n_params": int(n_params), "ranks": everyone}), flush=True)


def fault_data(n=96, seed=3):
    """x float32 (n, 2, 6, 6), y int (n,): a small separable problem."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 2, 6, 6)).astype(np.float32)
    y = (x[:, 0].mean((1, 2)) > x[:, 1].mean((1, 2))).astype(np.int64)
    return x, y


def fault_worker(out, mode, variant):
    """One run of the fault scenario: a small net trained by ``fit`` for FAULT_EPOCHS epochs of
    FAULT_STEPS steps with a checkpoint in ``out``; writes ``out/final.rank<r>.npz``.
    ``variant`` random: dropout and a random flip, so every rank draws its own random numbers;
    plain: neither (the weights then follow the one-process run to float rounding).
    ``mode`` run: to the end; resume: from ``out/ckpt.npz``; cut: at CUT_AT rank 0 writes
    ``out/cut-me`` and waits (30 s at most) for ``out/cut-done`` (the harness cuts a link
    meanwhile); raise: rank 1 raises there instead (a plain failure, no namespaces needed)."""
    import convlib as cl
    from convlib.distributed import world
    comm = world()
    x, y = fault_data(FAULT_STEPS * 16)
    cl.manual_seed(0)
    p = 0.3 if variant == "random" else 0.0
    net = cl.Sequential(cl.Conv2d(2, 4, 3, padding=1), cl.ReLU(), cl.MaxPool2d(2), cl.Flatten(), cl.Dropout(p),
                        cl.Linear(4 * 3 * 3, 2))
    opt = cl.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    calls = []

    def loss_fn(logits, yb):
        calls.append(1)
        if len(calls) == (CUT_AT[0] - 1) * FAULT_STEPS + CUT_AT[1]:
            if mode == "raise" and comm.rank == 1:
                raise RuntimeError("planted failure on rank 1")
            if mode == "cut" and comm.rank == 0:
                open(os.path.join(out, "cut-me"), "w").close()
                deadline = time.monotonic() + 30
                while not os.path.exists(os.path.join(out, "cut-done")) and time.monotonic() < deadline:
                    time.sleep(0.05)
        return cl.softmax_cross_entropy(logits, yb)

    def augment(xb, rng):
        mirror = rng.random(len(xb)) < 0.5                          # (n,) which images to flip left-right
        xb = xb.copy()
        xb[mirror] = xb[mirror][..., ::-1]
        return xb

    hist = cl.fit(net, (x, y), epochs=FAULT_EPOCHS, batch_size=16, optimizer=opt, loss_fn=loss_fn,
                  augment=augment if variant == "random" else None, progress=False, comm=comm,
                  checkpoint=os.path.join(out, "ckpt.npz"), resume=mode == "resume")
    np.savez(os.path.join(out, f"final.rank{comm.rank}.npz"), size=comm.size, loss=hist["loss"], **net.state_dict())


def rate_worker(folder, model, scheduler, out):
    """Rate every image in ``folder`` in shards on ``scheduler``; save kept (n,) and P(good) (n,),
    and on a Dask scheduler, how many shards each worker ran ({address: count})."""
    from convlib.data import list_images
    from lib import shards
    ran = {}
    if scheduler.startswith("tcp://"):
        from distributed import Client
        with Client(scheduler, timeout="30s") as client:
            client.wait_for_workers(2, timeout=120)
            kept, p = shards.map_shards(shards.rate, list_images(folder), model, scheduler=scheduler, progress=False)
            ran = client.run(lambda dask_worker: dask_worker.state.executed_count)
    else:
        kept, p = shards.map_shards(shards.rate, list_images(folder), model, scheduler=scheduler, progress=False)
    np.savez(out, kept=kept, p=p, ran=json.dumps(ran))


# ---------------------------------------------------------------- the harness (root namespace)
RECEIVE = """import socket, sys, time
s = socket.create_server((sys.argv[1], 5001)); s.settimeout(30); c, _ = s.accept(); c.settimeout(30)
n, t0 = 0, None
while True:
    b = c.recv(1 << 20)
    if not b: break
    t0 = t0 or time.perf_counter(); n += len(b)
print(n, time.perf_counter() - t0)"""
SEND = """import socket, sys, time
for _ in range(100):
    try: s = socket.create_connection((sys.argv[1], 5001), timeout=5); break
    except OSError: time.sleep(0.1)
buf, t_end = bytes(1 << 20), time.perf_counter() + float(sys.argv[2])
while time.perf_counter() < t_end: s.sendall(buf)
s.close()"""


def run(argv, env, timeout):
    """(exit status or None when it ran past ``timeout`` s and was killed, stdout + stderr, seconds)."""
    t0 = time.monotonic()
    try:
        r = subprocess.run(argv, check=False, capture_output=True, text=True, env=env, timeout=timeout)
        return r.returncode, r.stdout + r.stderr, time.monotonic() - t0
    except subprocess.TimeoutExpired as e:
        out = (e.stdout or b"") + (e.stderr or b"")
        return None, out.decode() if isinstance(out, bytes) else out, time.monotonic() - t0


def link_rate(hosts, seconds=1.0):
    """Gbit/s that one TCP stream carries from host 1 to host 0 (Python sockets, 1 MB writes)."""
    env = dict(os.environ)
    rx = subprocess.Popen(hosts.run_in(0, [sys.executable, "-c", RECEIVE, hosts.addr[0]]), stdout=subprocess.PIPE,
                          text=True, env=env)
    try:
        code, out, _ = run(hosts.run_in(1, [sys.executable, "-c", SEND, hosts.addr[0], str(seconds)]), env, 60)
        got = rx.communicate(timeout=60)[0].split()
    finally:
        rx.kill()
    if code != 0 or len(got) != 2:
        raise RuntimeError(f"link check failed: {out}")
    return 8 * int(got[0]) / float(got[1]) / 1e9


def measure(hosts, steps, timeout=600):
    """One table row on ``hosts`` as they are shaped now: the parsed RESULT of ``train_worker``,
    plus ``outside``: the bytes each host's eth0 sent during the whole job, read from outside."""
    before = hosts.counters()
    argv = hosts.mpiexec([sys.executable, "-m", "mpi4py", os.path.abspath(__file__), "--worker", "train",
                          "--steps", str(steps)], mpiexec=tool("mpiexec"))
    code, out, _ = run(argv, hosts.env(CONVLIB_NUM_THREADS="1", PYTHONPATH=env_paths()), timeout)
    lines = [s for s in out.splitlines() if s.startswith("RESULT ")]
    if code != 0 or not lines:
        raise RuntimeError(f"{hosts.n} ranks at {hosts.gbit:g} Gbit/s: the job failed (exit {code}):\n{out[-3000:]}")
    result = json.loads(lines[0][len("RESULT "):])
    result["outside"] = [a[0] - b[0] for a, b in zip(hosts.counters(), before)]
    return result


def one_machine(steps, threads=2, timeout=600):
    """ms per 32-image step of the reference net in one process with ``threads`` threads (no MPI)."""
    code, out, _ = run([sys.executable, os.path.abspath(__file__), "--worker", "train", "--steps", str(steps)],
                       dict(os.environ, CONVLIB_NUM_THREADS=str(threads), PYTHONPATH=env_paths()), timeout)
    lines = [s for s in out.splitlines() if s.startswith("RESULT ")]
    if code != 0 or not lines:
        raise RuntimeError(f"one process, {threads} threads: failed (exit {code}):\n{out[-3000:]}")
    return json.loads(lines[0][len("RESULT "):])["ranks"][0]["step"]


def ring_bytes(n, n_params):
    """Bytes each of ``n`` ranks sends in an allreduce of ``n_params`` float32 by ring or
    reduce-scatter + allgather: 2 (n - 1) / n x the buffer (the old formula's volume)."""
    return 2 * (n - 1) / n * n_params * 4


def markdown(rows, header):
    return "\n".join(["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
                     + ["| " + " | ".join(map(str, r)) + " |" for r in rows])


def rows_of(n, gbit, link, r):
    """The two table rows (the step; the allreduce alone) of one measured (ranks, Gbit/s) pair."""
    ranks = r["ranks"]
    mean = lambda k: float(np.mean([q[k] for q in ranks]))        # over the ranks
    sent, alone = mean("sent_alone"), ranks[0]["alone"] / 1e3
    volume = ring_bytes(n, r["n_params"])
    step = [n, f"{gbit:g}", f"{ranks[0]['step']:.0f}", f"{mean('compute'):.0f}", f"{mean('in_step'):.1f}",
            f"{mean('sent_step') / 1e3:.0f}", f"{PER_RANK * n / (ranks[0]['step'] / 1e3):.0f}"]
    reduce = [n, f"{gbit:g}", f"{link:.2f}", f"{ranks[0]['tiny']:.2f}", f"{1e3 * alone:.1f}",
              f"{ranks[0]['blocking']:.1f}", f"{ranks[0]['sleepy']:.1f}", f"{1e3 * volume * 8 / (gbit * 1e9):.1f}",
              f"{sent / 1e3:.0f}",
              f"{volume / 1e3:.0f}", f"{8 * sent / alone / 1e9:.2f}", f"{8 * n * sent / alone / 1e9:.1f}"]
    return step, reduce


STEP_HEADER = ["ranks", "Gbit/s", "step ms", "compute ms", "allreduce in step ms", "sent KB/step", "img/s"]
REDUCE_HEADER = ["ranks", "Gbit/s", "one TCP stream Gbit/s", "8-byte allreduce ms", "allreduce ms (fit's)",
                 "MPI_Allreduce ms", "asleep between tests ms", "at line rate ms", "sent KB", "2(N-1)/N x 4P KB",
                 "Gbit/s per rank", "Gbit/s all ranks"]


def projection(results, one_ms, gbits, n_params):
    """Rows for 2..16 machines like this one (each a 32-image step in ``one_ms`` with all its
    cores, then the allreduce): img/s and speed-up over one machine with the allreduce as
    measured here (where N was measured), and as the old formula had it (2(N-1)/N x 4P bytes at
    line rate, latency ignored)."""
    rows = []
    for n in sorted({n for n, _ in results} | {16}):
        row = [n]
        for gbit in gbits:
            for reduce_s in (results[n, gbit]["ranks"][0]["alone"] / 1e3 if (n, gbit) in results else None,
                             ring_bytes(n, n_params) * 8 / (gbit * 1e9)):
                t = one_ms / 1e3 + reduce_s if reduce_s is not None else None
                row.append(f"{PER_RANK * n / t:,.0f} ({n * one_ms / 1e3 / t:.1f}x)" if t else "-")
        rows.append(row)
    header = ["machines"] + [f"{g:g} Gbit/s: {what}" for g in gbits
                             for what in ("allreduce as measured", "old formula")]
    return rows, header


def median_of(runs):
    """One result from several runs of ``measure`` (and their link rates): every number the median
    over the runs, rank by rank."""
    ranks = [{k: float(np.median([r["ranks"][i][k] for r, _ in runs])) for k in runs[0][0]["ranks"][i]}
             for i in range(len(runs[0][0]["ranks"]))]
    return dict(runs[0][0], ranks=ranks), float(np.median([link for _, link in runs]))


def table_command(args):
    """Measure every (ranks, Gbit/s) pair ``args.rounds`` times (in turn, so that a busy moment on
    a shared machine spoils one round, not a row); print the tables and the projection."""
    runs, ones = {}, []
    for _ in range(args.rounds):
        ones.append(one_machine(args.steps))
        print(f"  one process x 2 threads: {ones[-1]:.1f} ms per {PER_RANK}-image step", file=sys.stderr, flush=True)
        for n in args.ranks:
            with netns.Hosts(n) as hosts:
                for gbit in args.gbit:
                    hosts.shape(gbit)
                    link = link_rate(hosts)
                    r = measure(hosts, args.steps)
                    if len({q["weights"] for q in r["ranks"]}) != 1:
                        raise RuntimeError(f"{n} ranks at {gbit:g} Gbit/s: the ranks ended with different weights")
                    runs.setdefault((n, gbit), []).append((r, link))
                    print(f"  {n} ranks at {gbit:g} Gbit/s: {rows_of(n, gbit, link, r)}", file=sys.stderr, flush=True)
    steps, reduces, results = [], [], {}
    for (n, gbit), these in runs.items():
        results[n, gbit], link = median_of(these)
        step, reduce = rows_of(n, gbit, link, results[n, gbit])
        steps.append(step)
        reduces.append(reduce)
    one_ms = float(np.median(ones))
    n_params = next(iter(results.values()))["n_params"]
    print(f"The step: the reference net, {PER_RANK} images per rank, every rank on this machine's cores "
          f"(one thread each); {n_params:,} float32 parameters reduced per step; medians of {args.rounds} rounds\n")
    print(markdown(steps, STEP_HEADER))
    print(f"\nThe allreduce alone (after a barrier, median of {REPS}; bytes each rank sent, by eth0's counters):\n")
    print(markdown(reduces, REDUCE_HEADER))
    rows, header = projection(results, one_ms, args.gbit, n_params)
    print(f"\nProjection to N machines like this one, each computing a {PER_RANK}-image step in {one_ms:.0f} ms "
          f"(one process x 2 threads, measured), then the allreduce: as measured above (alone), and as the old "
          f"formula had it:\n")
    print(markdown(rows, header))
    print(f"\npython benchmarks/multihost.py --ranks {' '.join(map(str, args.ranks))} "
          f"--gbit {' '.join(f'{g:g}' for g in args.gbit)} --steps {args.steps} --rounds {args.rounds}")
    return results

def fault_job(hosts, out, mode, variant="random", ranks=2, timeout=300):
    """Launch ``fault_worker`` as ``ranks`` ranks over ``hosts`` (1: one plain process on host 0)
    writing to ``out``; returns the Popen (stdout and stderr together, as text)."""
    worker = [os.path.abspath(__file__), "--worker", "fault", "--args", out, mode, variant]
    argv = (hosts.mpiexec([sys.executable, "-m", "mpi4py", *worker], mpiexec=tool("mpiexec"), ranks=ranks)
            if ranks > 1 else hosts.run_in(0, [sys.executable, *worker]))
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=hosts.env(CONVLIB_NUM_THREADS="1", PYTHONPATH=env_paths(),
                                          CONVLIB_MPI_TIMEOUT=str(timeout)))


def finish(proc, timeout):
    """(exit status, output) of ``proc`` once it ends; killed, status None, after ``timeout`` s."""
    try:
        out = proc.communicate(timeout=timeout)[0]
        return proc.returncode, out
    except subprocess.TimeoutExpired:
        proc.kill()
        return None, proc.communicate()[0]


def weights(out, rank=0):
    with np.load(os.path.join(out, f"final.rank{rank}.npz")) as z:
        return {k: z[k] for k in z.files}


def fault_scenario(hosts, tmp, mpi_timeout=10, variant="random"):
    """On 2 hosts: the uninterrupted run; the same run with host 1's link cut at CUT_AT; its last
    checkpoint resumed on both hosts and on host 0 alone. Returns a dict of what happened."""
    dirs = {k: os.path.join(tmp, k) for k in ("full", "cut", "resumed", "survivor")}
    for d in dirs.values():
        os.makedirs(d, exist_ok=True)
    code, out = finish(fault_job(hosts, dirs["full"], "run", variant), 300)
    if code != 0:
        raise RuntimeError(f"the uninterrupted run failed (exit {code}):\n{out[-3000:]}")
    job = fault_job(hosts, dirs["cut"], "cut", variant, timeout=mpi_timeout)
    try:
        deadline = time.monotonic() + 120
        while not os.path.exists(os.path.join(dirs["cut"], "cut-me")) and time.monotonic() < deadline:
            if job.poll() is not None:
                raise RuntimeError(f"the run to cut ended early:\n{job.communicate()[0][-3000:]}")
            time.sleep(0.05)
        hosts.cut(1)
        t_cut = time.monotonic()
        open(os.path.join(dirs["cut"], "cut-done"), "w").close()
        code, out = finish(job, mpi_timeout + 120)
        ended_after = time.monotonic() - t_cut
        left = len(hosts.pids(1))                                   # host 1's rank and proxy, cut off
    finally:
        job.kill()
        hosts.mend(1)
    t_mend = time.monotonic()
    while hosts.pids(1) and time.monotonic() < t_mend + 30:
        time.sleep(0.1)
    gone_after = time.monotonic() - t_mend if not hosts.pids(1) else None
    for d in ("resumed", "survivor"):
        shutil.copy(os.path.join(dirs["cut"], "ckpt.npz"), dirs[d])
    import convlib as cl
    epoch = cl.io.load_extra(os.path.join(dirs["cut"], "ckpt.npz"))[1]["checkpoint"]["epoch"]
    resumed = finish(fault_job(hosts, dirs["resumed"], "resume", variant), 300)
    survivor = finish(fault_job(hosts, dirs["survivor"], "resume", variant, ranks=1), 300)
    for what, (c, o) in (("the resumed run", resumed), ("the survivor's run", survivor)):
        if c != 0:
            raise RuntimeError(f"{what} failed (exit {c}):\n{o[-3000:]}")
    full, again, alone = weights(dirs["full"]), weights(dirs["resumed"]), weights(dirs["survivor"])
    return {"code": code, "output": out, "ended_after": ended_after, "left": left, "gone_after": gone_after,
            "checkpoint_epoch": epoch, "full": full,
            "resumed": again, "survivor": alone, "rank1_resumed": weights(dirs["resumed"], 1)}


def fault_command(args):
    with netns.Hosts(2, gbit=1) as hosts, tempfile.TemporaryDirectory(prefix="clmh-fault-") as tmp:
        r = fault_scenario(hosts, tmp)
    errors = [line for line in r["output"].splitlines() if "CollectiveTimeout" in line]
    print(f"host 1's link cut at epoch {CUT_AT[0]}, step {CUT_AT[1]} (CONVLIB_MPI_TIMEOUT=10): the job ended "
          f"{r['ended_after']:.1f} s later with exit status {r['code']}")
    print("  " + (errors[-1] if errors else "(no CollectiveTimeout in the output)\n" + r["output"][-2000:]))
    print(f"host 1 then still ran {r['left']} processes (its rank in MPI_Abort, waiting for its hydra proxy, which "
          f"waits for mpiexec); with the link back they ended "
          + (f"{r['gone_after']:.1f} s later" if r["gone_after"] is not None else "NOT within 30 s"))
    print(f"its last checkpoint: the start of epoch {r['checkpoint_epoch']}")
    same = all(np.array_equal(r["full"][k], r["resumed"][k]) for k in r["full"] if k != "size")
    print(f"resumed on 2 hosts: final weights {'bit for bit' if same else 'NOT'} those of the uninterrupted run; "
          f"losses per epoch {np.round(r['resumed']['loss'], 4).tolist()} vs {np.round(r['full']['loss'], 4).tolist()}")
    gap = max(float(np.abs(r["full"][k] - r["survivor"][k]).max()) for k in r["full"] if k not in ("size", "loss"))
    print(f"resumed on host 0 alone: losses per epoch {np.round(r['survivor']['loss'], 4).tolist()}; "
          f"largest weight difference from the uninterrupted run {gap:.3g}")



def dask_scenario(hosts, tmp, copies=3, timeout=600):
    """A Dask scheduler on host 0 and a worker on each of hosts 1 and 2 (one thread each); a folder
    of generated selfies (320 x ``copies`` and one file that does not decode) rated there by a
    client on host 0, and in this process. Returns (there, here): the saved npz contents."""
    env = dict(os.environ, CONVLIB_NUM_THREADS="1", PYTHONPATH=env_paths())
    code, out, _ = run([sys.executable, os.path.join(ROOT, "examples", "selfie_train.py"), "--synthetic-dir",
                        os.path.join(tmp, "data"), "--n-images", "320", "--size", "16", "--epochs", "1", "--out",
                        os.path.join(tmp, "run"), "--no-progress", "--no-pictures"], env, timeout)
    if code != 0:
        raise RuntimeError(f"training the model to rate with failed:\n{out[-3000:]}")
    folder, model = os.path.join(tmp, "folder"), os.path.join(tmp, "run", "model.npz")
    os.makedirs(folder)
    pngs = sorted(f for f in os.listdir(os.path.join(tmp, "data")) if f.endswith(".png"))
    for c in range(copies):
        for f in pngs:
            shutil.copy(os.path.join(tmp, "data", f), os.path.join(folder, f"{c}_{f}"))
    with open(os.path.join(folder, "broken.jpg"), "wb") as f:
        f.write(b"\xff\xd8 truncated")
    dask, head = tool("dask"), hosts.addr[0]
    daemons = [subprocess.Popen(hosts.run_in(0, [dask, "scheduler", "--host", head, "--port", "8786",
                                                 "--no-dashboard"]),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)]
    try:
        for i in (1, 2):
            daemons.append(subprocess.Popen(hosts.run_in(i, [dask, "worker", f"tcp://{head}:8786", "--host",
                                                             hosts.addr[i], "--nthreads", "1", "--nworkers", "1",
                                                             "--no-dashboard"]),
                                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env))
        results = []
        for where, scheduler in ((0, f"tcp://{head}:8786"), (None, "none")):
            path = os.path.join(tmp, f"rated-{scheduler[:3]}.npz")
            argv = [sys.executable, os.path.abspath(__file__), "--worker", "rate", "--args", folder, model, scheduler,
                    path]
            code, out, _ = run(hosts.run_in(where, argv) if where is not None else argv, env, timeout)
            if code != 0:
                raise RuntimeError(f"rating on {scheduler} failed (exit {code}):\n{out[-3000:]}")
            with np.load(path) as z:
                results.append({"kept": z["kept"], "p": z["p"], "ran": json.loads(str(z["ran"]))})
        return results
    finally:
        for d in daemons:
            d.terminate()
        for d in daemons:
            try:
                d.wait(timeout=20)
            except subprocess.TimeoutExpired:
                d.kill()


def dask_command(args):
    with netns.Hosts(3, gbit=1) as hosts, tempfile.TemporaryDirectory(prefix="clmh-dask-") as tmp:
        there, here = dask_scenario(hosts, tmp)
    same = np.array_equal(there["kept"], here["kept"]) and np.array_equal(there["p"], here["p"])
    print(f"rated {len(there['p'])} images on Dask workers in two namespaces (shards run per worker: "
          f"{there['ran']}): {'bit for bit' if same else 'NOT'} the in-process P(good)")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ranks", type=int, nargs="+", default=[2, 4, 8])
    ap.add_argument("--gbit", type=float, nargs="+", default=[1.0, 10.0])
    ap.add_argument("--steps", type=int, default=10, help="timed steps per row")
    ap.add_argument("--rounds", type=int, default=3, help="measure every row this many times, report medians")
    ap.add_argument("--fault", action="store_true", help="the fault scenario instead of the table")
    ap.add_argument("--dask", action="store_true", help="the Dask rating instead of the table")
    ap.add_argument("--cleanup", action="store_true", help="remove namespaces a killed run left")
    ap.add_argument("--worker", choices=["train", "fault", "rate"], help=argparse.SUPPRESS)
    ap.add_argument("--args", nargs="*", default=[], help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.worker == "train":
        return train_worker(args.steps)
    if args.worker == "fault":
        return fault_worker(*args.args)
    if args.worker == "rate":
        return rate_worker(*args.args)
    if args.fault or args.dask:
        reason = netns.why_not()
        if reason:
            raise SystemExit(f"multihost: {reason}")
        return fault_command(args) if args.fault else dask_command(args)
    if args.cleanup:
        left = netns.cleanup()
        print("removed every clmh- namespace" if not left else f"could not remove {left}")
        return
    reason = netns.why_not()
    if reason:
        raise SystemExit(f"multihost: {reason}")
    if any(n < 2 for n in args.ranks) or args.steps < 2 or args.rounds < 1:
        raise SystemExit("multihost: --ranks must be >= 2, --steps >= 2 and --rounds >= 1")
    return table_command(args)


if __name__ == "__main__":
    main()
