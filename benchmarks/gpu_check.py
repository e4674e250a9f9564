"""First contact with an NVIDIA GPU: correctness, per-kernel times and PyTorch's figures in one
process, in about 5 minutes on an H200, installing nothing. From the repository root:

    PYTHONPATH=. python3 benchmarks/gpu_check.py            # on the GPU machine
    PYTHONPATH=. python3 benchmarks/gpu_check.py --sim      # a smoke run in numba's simulator (CI)

It writes gpu_check.json (everything) and gpu_check.txt (a short table) to $OUT, or to
runs/gpu_check/ when $OUT is unset, after every part, so a run cut short still leaves what it
measured. Each part is guarded: an exception is recorded and the next part runs.

  a. versions: numba, numba-cuda, the CUDA bindings, NVVM, nvJitLink, the driver, the GPU; then
     a one-line kernel, compiled and run (can numba-cuda run anything at all here?).
  b. correctness: every product variant, pooling, batch norm, the optimizers and the loss at the
     reference net's shapes, for each batch: float32 on the GPU against NumPy in float64 (the
     reference kernels), with every array the pool hands out poisoned with NaN first (an element a
     kernel does not write shows), three times (a result that changes between repeats is a race:
     every kernel here is deterministic); then one whole training step against the CPU backend.
  c. timing: a CUDA event pair around every launch of one training step (milliseconds per
     kernel); the step's host time without the final synchronisation and its wall time with
     it (medians); and the options of ``kernels.cuda.tuning`` (split rule, launch bounds) timed
     A/B against the defaults, with their gradients compared to the defaults'.
  d. PyTorch CUDA on the same net and batches (cuDNN benchmark mode; TF32 off, then on), with
     inputs and labels already on the device.
  e. compute-sanitizer memcheck and racecheck on a short script (one split-K product, one batch
     norm), each under a timeout, where the tool is installed; in --sim the script runs alone.

--budget (seconds, default 300) bounds the run, so that a second one fits the same 15-minute
device lease: each part stops starting new work at its share (a by 10 %, b by 45 %, c by 70 %,
d by 80 %, e the rest; what it skipped is listed), so no part takes the others' time. --parts
runs some parts only (e.g. --parts ce).
"""
import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
TOL = 1e-4                  # largest relative error (max |got - want| / max |want|) a float32 result may have


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sim", action="store_true", help="numba's CUDA simulator, small shapes (a smoke test)")
    ap.add_argument("--out", help="output folder (default: $OUT, else runs/gpu_check)")
    ap.add_argument("--budget", type=float, default=300, help="seconds after which no new work starts")
    ap.add_argument("--parts", default="abcde", help="which parts to run (default abcde)")
    args = ap.parse_args(argv)
    args.out = args.out or os.environ.get("OUT") or os.path.join(ROOT, "runs", "gpu_check")
    # The reference net (examples/lib/selfie_model.py) and how often things are timed; in the
    # simulator (a Python thread per GPU thread) the same layout with two conv blocks, tiny.
    net = dict(size=8, blocks=2, width=(2, 3), hidden=4) if args.sim else \
        dict(size=64, blocks=4, width=(16, 32, 64, 64), hidden=64)
    vars(args).update(net, batches=(2, 3) if args.sim else (32, 256), ab_batches=(2,) if args.sim else (32, 256),
                      reps=1 if args.sim else 20,
                      warmup=1 if args.sim else 3, rounds=1 if args.sim else 3)
    return args


os.environ.setdefault("NUMBA_CUDA_LOW_OCCUPANCY_WARNINGS", "0")   # one per small grid would bury the output
if __name__ == "__main__" and "--sim" in sys.argv:
    os.environ["NUMBA_ENABLE_CUDASIM"] = "1"        # read once, when numba is first imported
    sys.setswitchinterval(1e-4)                     # its Python threads meet at barriers: hand over fast
sys.path.insert(0, HERE)

import numpy as np  # noqa: E402
from numba import config, cuda  # noqa: E402

from common import cl, torch_twin  # noqa: E402  (also puts convlib and the examples on the path)
from convlib import train  # noqa: E402
from convlib.kernels import backend, kernels_for  # noqa: E402
from convlib.kernels import cuda as K  # noqa: E402
from lib.selfie_model import build_net  # noqa: E402

REF = backend("reference")


# ---------------------------------------------------------------- the report
class Report:
    """The results by part, written as JSON and a text table after every part."""

    def __init__(self, args):
        self.args, self.t0, self.deadline = args, time.perf_counter(), args.budget
        self.data = {"command": " ".join(["python3"] + sys.argv), "sim": args.sim, "budget_s": args.budget,
                     "errors": {}, "skipped": {}, "seconds": {}}
        os.makedirs(args.out, exist_ok=True)

    def left(self):
        """Seconds until the running part must stop starting new work."""
        return self.deadline - (time.perf_counter() - self.t0)

    def part(self, key, name, fn, until=1.0):
        """Run part ``key`` (if asked for) until the fraction ``until`` of the budget has passed
        (no part can take the others' time): fn(out) fills the dict stored under ``name`` as it
        goes, so an exception (recorded, never raised) keeps what came before."""
        if key not in self.args.parts:
            return
        self.deadline = self.args.budget * until
        if self.left() <= 0:
            self.data["skipped"][name] = f"its share of the {self.args.budget:.0f} s budget was spent"
            return self.write()
        print(f"== {key}. {name}", flush=True)
        t = time.perf_counter()
        self.data[name] = out = {}
        self.guard(name, lambda: fn(out))
        self.data["seconds"][name] = round(time.perf_counter() - t, 1)
        self.write()

    def guard(self, name, fn):
        """fn(), or None with the traceback recorded under errors[name]; the report is written after."""
        try:
            return fn()
        except Exception:
            self.data["errors"][name] = traceback.format_exc()[-3000:]
            print(self.data["errors"][name], flush=True)
        finally:
            self.write()

    def write(self):
        self.data["total_s"] = round(time.perf_counter() - self.t0, 1)
        with open(os.path.join(self.args.out, "gpu_check.json"), "w") as f:
            json.dump(self.data, f, indent=1, default=str)
        try:
            text = summary(self.data)
        except Exception:                                           # the JSON has it all anyway
            text = "could not summarise:\n" + traceback.format_exc()
        with open(os.path.join(self.args.out, "gpu_check.txt"), "w") as f:
            f.write(text + "\n")


def table(rows, header):
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
    line = lambda r: "  ".join(str(v).rjust(w) if i else str(v).ljust(w) for i, (v, w) in enumerate(zip(r, widths)))
    return "\n".join([line(header), line(["-" * w for w in widths])] + [line(r) for r in rows])


def summary(d):
    """The short text table of a report's data."""
    out = [f"convlib gpu_check, {d.get('total_s', 0):.0f} s: {d['command']}"]
    v = d.get("versions")
    if v:
        out.append(f"{v.get('device')} | driver {v.get('driver')} | numba {v.get('numba')}, numba-cuda "
                   f"{v.get('numba_cuda')}, cuda-bindings {v.get('cuda_bindings')}, NVVM {v.get('nvvm')}, "
                   f"nvJitLink {v.get('nvjitlink')} | first kernel: {v.get('first_kernel')}")
    c = d.get("correctness")
    if c and c.get("ops"):
        bad = [r for r in c["ops"] if not r["ok"]]
        worst = max(c["ops"], key=lambda r: max(r["rel_err"]))
        out.append(f"\ncorrectness: {len(c['ops']) - len(bad)} of {len(c['ops'])} checks ok (float32 vs float64, "
                   f"tolerance {TOL:g}, {c['repeats']} repeats, NaN-poisoned pool); worst {max(worst['rel_err']):.1e} "
                   f"({worst['op']}, batch {worst['batch']})")
        out += [f"  FAILED {r['op']} batch {r['batch']}: rel err {r['rel_err']}, repeats identical {r['identical']}"
                for r in bad]
        for s in c.get("training_step", []):
            out.append(f"  training step vs the CPU, batch {s['batch']}: worst rel err {s['worst']:.1e} "
                       f"({s['worst_of']}): {'ok' if s['ok'] else 'FAILED'}")
    t = d.get("timing")
    if t and t.get("steps"):
        rows = [[s["batch"], f"{s['host_ms']:.2f}", f"{s['wall_ms']:.2f}", f"{s['kernel_ms']:.2f}", s["launches"],
                 f"{s['batch'] / s['wall_ms'] * 1e3:.0f}"] for s in t["steps"]]
        out += ["\ntraining step (ms, medians): host = queued without the final sync, wall = with it"
                + (" (the simulator: no kernel times, and the rest is Python's)" if d["sim"] else ""),
                table(rows, ["batch", "host", "wall", "kernels", "launches", "img/s"])]
        for s in t["steps"]:
            top = sorted(s["by_kernel"].items(), key=lambda kv: -kv[1][0])[:8]
            out.append(f"  batch {s['batch']}, kernel ms (launches): " +
                       ", ".join(f"{k} {ms:.3f} ({n})" for k, (ms, n) in top))
        if t.get("ab"):
            rows = [[r["split"], r["blocks_per_sm"], r["batch"], f"{r['wall_ms']:.2f}", f"{r['product_ms']:.2f}",
                     "-" if r["grads_vs_default"] is None else f"{r['grads_vs_default']:.1e}"] if "wall_ms" in r
                    else [r["split"], r["blocks_per_sm"], r["batch"], "ERROR", r.get("error", "")[:60], ""]
                    for r in t["ab"]]
            out += ["\ntuning options A/B (ms, medians)",
                    table(rows, ["split", "blocks/SM", "batch", "wall", "products", "grads vs default"])]
    tt = d.get("torch")
    if tt:
        if tt.get("rows"):
            rows = [[r["batch"], r["tf32"], f"{r['ms']:.2f}", f"{r['batch'] / r['ms'] * 1e3:.0f}",
                     r.get("convlib_over_torch", "")] for r in tt["rows"]]
            out += [f"\nPyTorch {tt['version']} CUDA, cuDNN benchmark on (ms per step, median)",
                    table(rows, ["batch", "tf32", "ms", "img/s", "convlib ms / torch ms"])]
        else:
            out.append(f"\nPyTorch: {tt.get('skipped')}")
    s = d.get("sanitizer")
    if s:
        out.append("\ncompute-sanitizer: " + "; ".join(f"{k}: {r.get('summary')}" for k, r in s.items()
                                                      if isinstance(r, dict)))
    for name, why in d["skipped"].items():
        out.append(f"skipped {name}: {why}")
    for name in d["errors"]:
        out.append(f"ERROR in {name} (traceback in gpu_check.json)")
    return "\n".join(out)


# ---------------------------------------------------------------- a. versions
def versions(v):
    import importlib.metadata as md

    import numba
    v.update(python=sys.version.split()[0], numpy=np.__version__, numba=numba.__version__)

    nvvm = lambda: __import__("numba.cuda.cudadrv.nvvm", fromlist=["nvvm"])
    driver = lambda: __import__("numba.cuda.cudadrv.driver", fromlist=["driver"])

    def cuda_bindings_tool(name):
        mod = __import__(f"cuda.bindings.{name}", fromlist=[name])
        return ".".join(map(str, mod.version()))
    for name, get in [("numba_cuda", lambda: md.version("numba-cuda")),
                      ("cuda_bindings", lambda: md.version("cuda-bindings")),
                      ("nvvm", lambda: ".".join(map(str, nvvm().NVVM().get_version()))),
                      ("nvjitlink", lambda: cuda_bindings_tool("nvjitlink")),
                      ("driver", lambda: ".".join(map(str, driver().driver.get_version()))),
                      ("runtime", lambda: ".".join(map(str, cuda.runtime.get_version()))),
                      ("device", device_name),
                      ("multiprocessors", K.multiprocessors),
                      ("torch", lambda: md.version("torch"))]:
        try:
            v[name] = get()
        except Exception as e:
            v[name] = f"unavailable ({type(e).__name__}: {str(e)[:150]})"
    smi = shutil.which("nvidia-smi")
    if smi:
        run = subprocess.run([smi, "--query-gpu=name,driver_version,memory.total,clocks.max.sm",
                              "--format=csv,noheader"], capture_output=True, text=True, timeout=30)
        v["nvidia_smi"] = (run.stdout or run.stderr).strip()
    v["split"] = {"rule": K.SPLIT, "fixed": K.FIXED_SPLIT, "product_blocks_per_sm": K.PRODUCT_BLOCKS_PER_SM}
    v["first_kernel"] = first_kernel()


def device_name():
    if config.ENABLE_CUDASIM:
        return "numba's CUDA simulator"
    d = cuda.get_current_device()
    name = d.name.decode() if isinstance(d.name, bytes) else str(d.name)
    return f"{name}, compute capability {'.'.join(map(str, d.compute_capability))}"


@cuda.jit
def _one_line(a):
    a[cuda.grid(1)] = cuda.grid(1)


def first_kernel():
    """A one-line kernel compiled and run: 'ok in <s> (compile + load + run)' or what went wrong."""
    t = time.perf_counter()
    a = cuda.device_array(64, np.int32)
    _one_line[2, 32](a)
    got = a.copy_to_host()
    seconds = time.perf_counter() - t
    return (f"ok in {seconds:.2f} s (compile + load + run)" if np.array_equal(got, np.arange(64))
            else f"WRONG result {got[:8]}...")


# ---------------------------------------------------------------- b. correctness
def rel_err(got, want):
    """max |got - want| / max |want| (inf where got holds NaN or inf)."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    if got.shape != want.shape:
        raise ValueError(f"shapes differ: got {got.shape}, want {want.shape}")
    if not np.isfinite(got).all():
        return float("inf")
    return float(np.max(np.abs(got - want), initial=0) / max(np.max(np.abs(want), initial=0), 1e-30))


def net_for(args):
    cl.manual_seed(0)
    return build_net(args.size, blocks=args.blocks, width=args.width, hidden=args.hidden)


def layer_inputs(net, size):
    """[(layer, input shape without the batch)] of a net, from a forward pass of one image (NumPy)."""
    out, h = [], np.zeros((1, 3, size, size), np.float32)
    previous = kernels_for(h).name
    cl.use_kernels("reference")
    try:
        for layer in net:
            out.append((layer, h.shape[1:]))
            h = layer(h)
    finally:
        cl.use_kernels(previous)
    return out


def op_checks(net, size, B, rng):
    """[(name, fn)] where fn(k, to) runs an op (or forward + backward) with backend k on inputs made
    by to() (a float32 device copy, or a float64 host copy) and returns its outputs."""
    checks = []
    p0, k2 = (0, 0), (2, 2)
    inputs = layer_inputs(net, size)
    convs = [(layer, shape) for layer, shape in inputs if type(layer).__name__ == "Conv2d"]
    linears = [(layer, shape) for layer, shape in inputs if type(layer).__name__ == "Linear"]
    r = lambda *shape: rng.standard_normal((B,) + tuple(shape)).astype(np.float32)
    for i, (layer, (C, H, W)) in enumerate(convs, 1):
        F = layer.out_channels
        x, w, b, d = r(C, H, W), layer.weight.data, layer.bias.data, r(F, H, W)

        def conv(k, to, x=x, w=w, b=b, d=d, layer=layer):
            out, cache = k.conv2d_forward(to(x), to(w), to(b), layer.stride, layer.padding)
            return (out, *k.conv2d_backward(to(d), cache))            # out, dx, dw (split K), db
        checks.append((f"conv{i} fwd+bwd", conv))
        y, dp = r(F, H, W), r(F, H // 2, W // 2)

        def pool(k, to, y=y, dp=dp):
            out, cache = k.maxpool2d_forward(to(y), k2, k2, p0, relu=True)
            return out, k.maxpool2d_backward(to(dp), cache)
        checks.append((f"relu+maxpool{i} fwd+bwd", pool))
    C, H, W = convs[0][0].out_channels, *convs[0][1][1:]
    y, dp = r(C, H, W), r(C, H // 2, W // 2)

    def avgpool(k, to):
        out, cache = k.avgpool2d_forward(to(y), k2, k2, p0)
        return out, k.avgpool2d_backward(to(dp), cache)
    checks.append(("avgpool fwd+bwd", avgpool))
    for i, (layer, (IN,)) in enumerate(linears, 1):
        x, w, b, d = r(IN), layer.weight.data, layer.bias.data, r(layer.out_features)

        def linear(k, to, x=x, w=w, b=b, d=d):
            out, cache = k.linear_forward(to(x), to(w), to(b))
            return (out, *k.linear_backward(to(d), cache))
        checks.append((f"linear{i} fwd+bwd", linear))
    a, m = r(linears[0][1][0]), rng.standard_normal((linears[0][1][0], linears[0][0].out_features)).astype(np.float32)
    for ta in (False, True):
        for tb in (False, True):
            def matmul(k, to, ta=ta, tb=tb):                         # (not an op: NumPy's is the reference)
                if k is REF:
                    return (to(a) @ to(m),)
                return (k.matmul(to(a.T.copy() if ta else a), to(m.T.copy() if tb else m), ta=ta, tb=tb),)
            checks.append((f"matmul{' ta' if ta else ''}{' tb' if tb else ''}", matmul))
    for i in (0, len(convs) - 1):                                   # batch norm: many elements per channel, and few
        (layer, (C, H, W)) = convs[i]
        x, d, F = r(layer.out_channels, H, W), r(layer.out_channels, H, W), layer.out_channels
        g, be = rng.random(F).astype(np.float32) + 0.5, rng.standard_normal(F).astype(np.float32)

        def batchnorm(k, to, x=x, d=d, g=g, be=be, F=F):
            rm, rv = to(np.zeros(F, np.float32)), to(np.ones(F, np.float32))
            out, cache = k.batchnorm_forward(to(x), to(g), to(be), rm, rv, 0.1, 1e-5, True)
            return (out, rm, rv, *k.batchnorm_backward(to(d), cache))
        checks.append((f"batchnorm at conv{i + 1} fwd+bwd", batchnorm))
    ps = [p.data for p in net.parameters()]
    gs = [rng.standard_normal(p.shape).astype(np.float32) for p in ps]
    bufs = [rng.standard_normal(p.shape).astype(np.float32) for p in ps]

    def sgd(k, to):
        p, buf = [to(v) for v in ps], [to(v) for v in bufs]
        k.sgd_step(p, [to(v) for v in gs], buf, 0.01, 0.9, 5e-4, True)
        return (*p, *buf)

    def adam(k, to):
        p, mm, vv = [to(v) for v in ps], [to(v) for v in bufs], [to(np.abs(v)) for v in bufs]
        k.adam_step(p, [to(v) for v in gs], mm, vv, 1e-3, 0.9, 0.999, 1e-8, 1e-2, True, 3)
        return (*p, *mm, *vv)
    checks += [("sgd_step (all parameters)", sgd), ("adam_step (all parameters)", adam)]
    logits, labels = r(2), rng.integers(0, 2, B)
    checks.append(("softmax_cross_entropy", lambda k, to: k.softmax_cross_entropy(to(logits), labels, 0.1)))
    return checks


def correctness(args, report, out, repeats=3):
    out.update(repeats=repeats, tolerance=TOL, ops=[], training_step=[])
    K.memory.POISON = True
    try:
        for B in args.batches:
            for name, fn in op_checks(net_for(args), args.size, B, np.random.default_rng(B)):
                if report.left() <= 0:
                    report.data["skipped"][f"correctness, batch {B}, from {name}"] = "its share of the budget was spent"
                    break
                row = report.guard(f"correctness: {name}, batch {B}", lambda: check(fn, repeats))
                if row:
                    out["ops"].append(dict(op=name, batch=B, **row))
                    print(f"  batch {B} {name}: {max(row['rel_err']):.1e}"
                          f"{'' if row['identical'] else ' CHANGES BETWEEN REPEATS'}", flush=True)
            if B == args.batches[0] and report.left() > 0:            # before the larger batches' checks
                step = report.guard("correctness: training step", lambda: training_step_vs_cpu(args, B))
                out["training_step"] += [step] if step else []
    finally:
        K.memory.POISON = False


def check(fn, repeats):
    """fn (see op_checks) in float64 with the reference, then repeats times on the GPU:
    {rel_err: the worst over the outputs, per repeat; identical: the repeats agree bit for bit; ok}."""
    want = fn(REF, lambda a: np.array(a, np.float64))
    got = [[cl.to_host(o) for o in fn(K, lambda a: cl.to_device(np.asarray(a, np.float32)))]
           for _ in range(repeats)]
    errs = [max(rel_err(g, w) for g, w in zip(run, want)) for run in got]
    identical = all(np.array_equal(a, b, equal_nan=True) for run in got[1:] for a, b in zip(got[0], run))
    return dict(rel_err=errs, identical=identical, ok=bool(identical and max(errs) <= TOL))


def training_step_vs_cpu(args, B):
    """One step of fit (forward, loss, backward, SGD) on the GPU and on the CPU backend from the same
    weights and batch: worst relative error of logits, loss, gradients and new weights."""
    rng = np.random.default_rng(7)
    x, y = rng.random((B, 3, args.size, args.size), dtype=np.float32), rng.integers(0, 2, B)
    got = {}
    for device in ("cpu", "cuda"):
        net = net_for(args).to(device)
        opt = cl.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
        logits = cl.to_host(net(cl.to_device(x, device)))
        loss, _ = train._step(net, x, y, cl.CrossEntropyLoss(), 1, 1, opt.lr)
        grads = [cl.to_host(p.grad) for p in net.parameters()]
        opt.step()
        got[device] = dict(logits=[logits], loss=[np.array(loss)], grads=grads,
                           weights=[cl.to_host(p.data) for p in net.parameters()])
    errs = {k: max(rel_err(g, c) for g, c in zip(got["cuda"][k], got["cpu"][k])) for k in got["cpu"]}
    worst = max(errs, key=errs.get)
    return dict(batch=B, rel_err=errs, worst=errs[worst], worst_of=worst, ok=errs[worst] <= TOL)


# ---------------------------------------------------------------- c. timing
SITES = {("rows", "im2col", "nchw_bias"): "conv fwd", ("nchw", "im2col_t", "rows"): "conv dw",
         ("w_t", "dcols", "nchw_bias"): "conv dx", ("rows", "cols", "rows_bias"): "linear fwd",
         ("cols", "rows", "rows"): "linear dw", ("rows", "rows", "rows"): "linear dx"}


def label(fn):
    key = getattr(fn, "product_key", None)
    if key is None:
        return fn.__name__.lstrip("_")
    return "product " + SITES.get(tuple(key[1:4]), ":".join(key[1:4]))


@contextlib.contextmanager
def launch_events(records):
    """While active, every kernel launch appends [label, grid, start event, end event] to records."""
    if config.ENABLE_CUDASIM:
        from numba.cuda.simulator.kernel import FakeCUDAKernel as cls
        fn_of, grid_of = (lambda k: k.fn), (lambda k: k.grid_dim)
    else:
        from numba.cuda.dispatcher import _LaunchConfiguration as cls
        fn_of, grid_of = (lambda k: k.dispatcher.py_func), (lambda k: k.griddim)
    launch = cls.__call__

    def timed(self, *args):
        if getattr(self, "_device", False):                        # a device function, in the simulator
            return launch(self, *args)
        start, end = cuda.event(), cuda.event()
        start.record()
        result = launch(self, *args)
        end.record()
        records.append([label(fn_of(self)), [int(v) for v in tuple(grid_of(self))], start, end])
        return result
    cls.__call__ = timed
    try:
        yield records
    finally:
        cls.__call__ = launch


def training_step(args, B, seed=0):
    """(step, net): one step as fit takes it (zero_grad, forward, loss, backward, optimizer) on a
    batch already on the device; the labels come from the host, as in fit."""
    rng = np.random.default_rng(seed)
    net = net_for(args).to("cuda")
    x, y = cl.to_device(rng.random((B, 3, args.size, args.size), dtype=np.float32)), rng.integers(0, 2, B)
    opt, loss_fn = cl.optim.SGD(net.parameters(), lr=0.01, momentum=0.9), cl.CrossEntropyLoss()

    def step():
        opt.zero_grad()
        train._step(net, x, y, loss_fn, 1, 1, opt.lr)
        opt.step()
    return step, net


def step_times(step, reps):
    """Median (host ms, wall ms) of reps steps: queued without the final sync, and with it."""
    host, wall = [], []
    for _ in range(reps):
        t = time.perf_counter()
        step()
        h = time.perf_counter()
        cuda.synchronize()
        host.append(h - t)
        wall.append(time.perf_counter() - t)
    return float(np.median(host)) * 1e3, float(np.median(wall)) * 1e3


def kernel_times(step):
    """[{kernel, grid, ms}] for every launch of one step, timed by CUDA events."""
    cuda.synchronize()
    with launch_events([]) as records:
        step()
    cuda.synchronize()
    ms = (lambda s, e: 0.0) if config.ENABLE_CUDASIM else (lambda s, e: round(float(s.elapsed_time(e)), 4))
    return [dict(kernel=k, grid=g, ms=ms(s, e)) for k, g, s, e in records]   # (the simulator times nothing)


def timing(args, report, out):
    out.update(steps=[], ab=[])
    for B in args.batches:
        step = report.guard(f"timing: batch {B}", lambda: timed_step(args, B)) if report.left() > 0 else None
        out["steps"] += [step] if step else []
    for B in args.ab_batches:
        if report.left() > 0:
            out["ab"] += report.guard(f"timing: tuning A/B, batch {B}", lambda: tuning_ab(args, B)) or []


def timed_step(args, B):
    """Host and wall times of the training step at batch B (medians), and every launch of one step."""
    step, _ = training_step(args, B)
    for _ in range(args.warmup):                                    # compile, fill the pool
        step()
    host_ms, wall_ms = step_times(step, args.reps)
    launches = kernel_times(step)
    by_kernel = {}
    for r in launches:
        ms, n = by_kernel.get(r["kernel"], (0.0, 0))
        by_kernel[r["kernel"]] = (round(ms + r["ms"], 4), n + 1)
    print(f"  batch {B}: host {host_ms:.2f} ms, wall {wall_ms:.2f} ms, {len(launches)} launches", flush=True)
    return dict(batch=B, host_ms=host_ms, wall_ms=wall_ms, kernel_ms=sum(r["ms"] for r in launches),
                launches=len(launches), by_kernel=by_kernel, per_launch=launches)


def tuning_ab(args, B, configs=(("sm", 2), ("fixed", 0), ("sm", 0), ("fixed", 2))):
    """Each tuning option (the first is the default) at batch B: its first step's gradients against
    the default's, the products' milliseconds in one step, then wall times in rounds that take the
    options in turn (medians). An option that fails is reported with its error; the others go on."""
    runs, default = [], None
    for split, bps in configs:
        run = dict(split=split, blocks_per_sm=bps, batch=B)
        try:
            with K.tuning(split=split, blocks_per_sm=bps):
                step, net = training_step(args, B)
                step()
                grads = [cl.to_host(p.grad) for p in net.parameters()]
                default = grads if (split, bps) == configs[0] else default
                step()                                              # compiled; the pool holds the step's arrays
                run.update(step=step, walls=[], grads_vs_default=None if default is None else
                           max(rel_err(g, f) for g, f in zip(grads, default)),
                           product_ms=sum(r["ms"] for r in kernel_times(step) if r["kernel"].startswith("product")))
        except Exception as e:
            run["error"] = f"{type(e).__name__}: {e}"[:500]
        runs.append(run)
    timed = [r for r in runs if "step" in r]
    for _ in range(args.rounds):
        for r in timed:
            with K.tuning(split=r["split"], blocks_per_sm=r["blocks_per_sm"]):
                r["walls"].append(step_times(r["step"], max(1, args.reps // args.rounds))[1])
    for r in timed:
        r["wall_ms"] = float(np.median(r.pop("walls")))
        del r["step"]
    for r in runs:
        print(f"  batch {B}, split {r['split']}, blocks/SM {r['blocks_per_sm']}: "
              + (f"{r['wall_ms']:.2f} ms" if "wall_ms" in r else r["error"]), flush=True)
    return runs


# ---------------------------------------------------------------- d. PyTorch
def torch_part(args, report, out):
    try:
        import torch
    except ImportError:
        return out.update(skipped="PyTorch is not installed")
    if not torch.cuda.is_available():
        return out.update(skipped=f"PyTorch {torch.__version__} sees no CUDA GPU")
    torch.backends.cudnn.benchmark = True
    out.update(version=torch.__version__, rows=[])
    ours = {s["batch"]: s["wall_ms"] for s in report.data.get("timing", {}).get("steps", [])}
    for tf32 in (False, True):
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = tf32
        for B in args.batches:
            if report.left() > 0:
                ms = report.guard(f"torch: batch {B}, TF32 {tf32}", lambda: torch_step_ms(torch, args, B))
                if ms:
                    out["rows"].append(dict(batch=B, tf32=tf32, ms=ms, **(
                        {"convlib_over_torch": round(ours[B] / ms, 2)} if B in ours else {})))
                    print(f"  batch {B}, TF32 {tf32}: {ms:.2f} ms", flush=True)


def torch_step_ms(torch, args, B):
    """The median wall time (ms) of a PyTorch training step of the same net at batch B."""
    rng = np.random.default_rng(0)
    net = torch_twin(net_for(args)).cuda()
    x = torch.from_numpy(rng.random((B, 3, args.size, args.size), dtype=np.float32)).cuda()
    y = torch.from_numpy(rng.integers(0, 2, B)).cuda()
    opt, lossf = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9), torch.nn.CrossEntropyLoss()

    def step():
        opt.zero_grad()
        lossf(net(x), y).backward()
        opt.step()
    for _ in range(5):                                              # cuDNN's benchmark mode picks its kernels
        step()
    times = []
    for _ in range(args.reps):
        t = time.perf_counter()
        step()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - t)
    return float(np.median(times)) * 1e3


# ---------------------------------------------------------------- e. compute-sanitizer
SANITIZED = '''"""One split-K product and one batch norm, for compute-sanitizer (benchmarks/gpu_check.py)."""
import numpy as np
from numba import config, cuda

from convlib.kernels import cuda as K

N, C, F, S = (2, 2, 3, 6) if config.ENABLE_CUDASIM else (8, 16, 32, 32)
rng = np.random.default_rng(0)
dev = lambda *shape: cuda.to_device(rng.standard_normal(shape).astype(np.float32))
full = lambda n, v: cuda.to_device(np.full(n, v, np.float32))
x, w = dev(N, C, S, S), dev(F, C, 3, 3)
out, cache = K.conv2d_forward(x, w, full(F, 0), (1, 1), (1, 1))
assert K._grid(F, C * 9 + 1, N * S * S)[2] > 1, "the weight gradient is not split"
dx, dw, db = K.conv2d_backward(out, cache)                      # dw: the split-K product
y, cache = K.batchnorm_forward(x, full(C, 1), full(C, 0), full(C, 0), full(C, 1), 0.1, 1e-5, True)
K.batchnorm_backward(y, cache)
cuda.synchronize()
print("ran a split-K product and a batch norm")
'''


def sanitizer(args, report, out):
    script = os.path.join(tempfile.mkdtemp(), "sanitized.py")
    with open(script, "w") as f:
        f.write(SANITIZED)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")])}
    tool = shutil.which("compute-sanitizer") or next(
        (p for p in ("/usr/local/cuda/bin/compute-sanitizer", "/opt/nvidia/compute-sanitizer/compute-sanitizer")
         if os.path.exists(p)), None)
    if args.sim or tool is None:
        why = "the simulator" if args.sim else "compute-sanitizer is not installed"
        return out.update(script=run_logged([sys.executable, script], env, max(30, report.left())),
                          note=f"{why}: the script ran without the sanitizer")
    out["tool"] = tool
    checks = ("memcheck", "racecheck")
    for i, check in enumerate(checks):
        if report.left() < 30:
            out[check] = {"summary": "skipped: the budget is spent"}
            continue
        out[check] = run_logged([tool, "--tool", check, "--error-exitcode", "9", sys.executable, script], env,
                                min(150, report.left() / (len(checks) - i)))    # a fair share of what is left
        report.write()


def run_logged(cmd, env, timeout):
    """Run cmd under a timeout, in a process group of its own, which is killed whole at the
    timeout (compute-sanitizer's Python child with it): {rc, seconds, summary, tail}; never raises."""
    t = time.perf_counter()
    try:
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                start_new_session=True)
    except OSError as e:
        return dict(rc=None, seconds=0.0, summary=f"could not run: {e}", tail="")
    try:
        text, _ = proc.communicate(timeout=timeout)
        rc = proc.returncode
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        text, _ = proc.communicate()
        text, rc = f"{text or ''}\ntimed out after {timeout:.0f} s", None
    lines = [ln for ln in text.splitlines() if "ERROR SUMMARY" in ln or "RACECHECK SUMMARY" in ln]
    last = (text.strip().splitlines() or [""])[-1]
    summary = lines[-1].strip("= ") if lines else (f"ok: {last}" if rc == 0 else f"rc {rc}: {last}")
    if rc != 0 and "Target application returned an error" in text:   # no hazards, but nothing checked
        summary = f"the script failed (rc {rc}), so nothing was checked: {summary}"
    return dict(rc=rc, seconds=round(time.perf_counter() - t, 1), summary=summary, tail=text[-3000:])


def main(argv=None):
    args = parse_args(argv)
    if args.sim and not config.ENABLE_CUDASIM:
        sys.exit("gpu_check: --sim needs numba's simulator on from the start: run it as a script")
    report = Report(args)
    print(f"convlib gpu_check: {'the simulator' if args.sim else 'GPU'}, batches {args.batches}, "
          f"budget {args.budget:.0f} s, writing to {args.out}", flush=True)
    report.part("a", "versions", versions, until=0.1)               # each part's end, as a share of the budget
    report.part("b", "correctness", lambda out: correctness(args, report, out), until=0.45)
    report.part("c", "timing", lambda out: timing(args, report, out), until=0.7)
    report.part("d", "torch", lambda out: torch_part(args, report, out), until=0.8)
    report.part("e", "sanitizer", lambda out: sanitizer(args, report, out))
    with open(os.path.join(args.out, "gpu_check.txt")) as f:
        print("\n" + f.read(), flush=True)
    print(f"\nwritten: {os.path.join(args.out, 'gpu_check.json')} and gpu_check.txt")


if __name__ == "__main__":
    main()
