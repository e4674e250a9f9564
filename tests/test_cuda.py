"""The CUDA GEMM against NumPy, and whole training steps on cuda against the CPU (every op of
the kernel contract is checked against the reference in test_contract.py).

Runs on a real GPU where there is one and in numba's CUDA simulator otherwise (tests/conftest.py
sets NUMBA_ENABLE_CUDASIM=1 on machines without an NVIDIA driver). The simulator runs every GPU
thread as a Python thread, so the shapes here are tiny; they are chosen so that every kernel still
sees partial tiles, padding, strides, overlapping windows and ties.
"""
import inspect
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

import convlib as cl

if not cl.cuda_available():
    pytest.skip("numba.cuda has neither a GPU nor the simulator here", allow_module_level=True)

from numba import config, cuda  # noqa: E402

from convlib.kernels import backend  # noqa: E402
from convlib.kernels import cuda as K

dev = cl.to_device
host = cl.to_host


def close(got, want, tol=1e-10):
    np.testing.assert_allclose(host(got), want, rtol=tol, atol=tol)


@pytest.mark.parametrize("ta,tb", [(False, False), (True, False), (False, True), (True, True)])
@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-12), (np.float32, 1e-5)])
def test_matmul_matches_numpy(rng, ta, tb, dtype, tol):
    a = rng.standard_normal((21, 9)).astype(dtype)                 # not multiples of the tile; in the
    #                                                                 simulator more row tiles than y-blocks
    b = rng.standard_normal((9, 7)).astype(dtype)
    got = K.matmul(dev(a.T.copy() if ta else a), dev(b.T.copy() if tb else b), ta=ta, tb=tb)
    assert got.dtype == dtype
    close(got, a @ b, tol)
    with pytest.raises(ValueError, match="inner sizes differ"):
        K.matmul(dev(a), dev(a))
    assert host(K.matmul(dev(a[:0]), dev(b))).shape == (0, 7)       # no rows: no launch (an error on a GPU)
    close(K.matmul(dev(a[:, :0].copy()), dev(b[:0].copy())), np.zeros((21, 7)))   # K = 0: zeros


# The convolutions' weight gradients dW (F, C*KH*KW) = dout2 (F, K) @ cols.T (K, C*KH*KW) of the
# reference net at batch 32, with K = N*OH*OW: long sums over many tiles. On a GPU the real shapes; in the
# simulator (a Python thread per GPU thread) one shape with the same traits, small.
WEIGHT_GRADIENTS = [(16, 27, 32 * 64 * 64), (32, 144, 32 * 32 * 32), (64, 288, 32 * 16 * 16), (64, 576, 32 * 8 * 8)]


@pytest.mark.parametrize("F, R, L", WEIGHT_GRADIENTS[:1] if config.ENABLE_CUDASIM else WEIGHT_GRADIENTS)
def test_weight_gradient_products_sum_long_rows_in_float64(rng, F, R, L):
    if config.ENABLE_CUDASIM:
        F, R, L = 6, 9, 203                                         # no multiple of the tile; L >> the tile
    dout2, cols = rng.standard_normal((F, L)), rng.standard_normal((R, L))
    assert K._grid(F, R, L)[2] > 1                                  # K is split over blocks: the parts are summed
    for _ in range(2):                                              # twice: the tile tickets are reset for reuse
        close(K.matmul(dev(dout2), dev(cols), tb=True), dout2 @ cols.T, tol=1e-9)


def test_batch_norm_sums_over_uneven_parts_of_each_channel(rng):
    """Batch-norm statistics and gradient sums split each channel's N*L elements over blocks and
    merge the parts (in the simulator: 105 elements in 6 parts of 17 or 18, each thread stepping
    over rows of 21)."""
    reference = backend("reference")
    x, d = rng.standard_normal((5, 2, 3, 7)) * 3 + 5, rng.standard_normal((5, 2, 3, 7))
    assert K._channel_grid(x.reshape(5, 2, 21))[1] > 1
    gamma, beta = np.array([0.5, 2.0]), np.array([0.1, -0.2])
    got, want = [], []
    for k, to, out in ((K, dev, got), (reference, np.array, want)):
        rm, rv = to(np.zeros(2)), to(np.ones(2))
        y, cache = k.batchnorm_forward(to(x), to(gamma), to(beta), rm, rv, 0.1, 1e-5, True)
        out += [y, rm, rv, *k.batchnorm_backward(to(d), cache)]
    for g, w in zip(got, want):
        close(g, w, tol=1e-9)


def test_optimizer_updates_of_more_tensors_than_one_launch_takes(rng):
    """sgd_step / adam_step over 2 * MAX_TENSORS + 3 parameters (some empty) run in runs of
    MAX_TENSORS per launch (kernel arguments are limited to 4 KB): the same as the reference."""
    reference = backend("reference")
    n = 2 * K.MAX_TENSORS + 3
    ps = [rng.standard_normal(i % 4) for i in range(n)]             # sizes 0-3
    gs = [rng.standard_normal(p.shape) for p in ps]
    assert [n for _, _, n in K._chunks([dev(p) for p in ps])] == [24, 24, 3]   # three launches
    for k, to, zeros in ((K, dev, K.zeros_like), (reference, np.array, np.zeros_like)):
        p1, b = [to(p) for p in ps], [zeros(to(p)) for p in ps]
        k.sgd_step(p1, [to(g) for g in gs], b, 0.1, 0.9, 1e-2, True)
        p2, m, v = [to(p) for p in ps], [zeros(to(p)) for p in ps], [zeros(to(p)) for p in ps]
        k.adam_step(p2, [to(g) for g in gs], m, v, 1e-2, 0.9, 0.99, 1e-8, 1e-2, False, 1)
        if k is K:
            got = [host(a) for a in p1 + b + p2 + m + v]
        else:
            want = p1 + b + p2 + m + v
    for g, w in zip(got, want):
        close(g, w, tol=1e-12)


def test_cross_entropy_on_cuda_names_nan_logits(rng):
    logits = rng.standard_normal((5, 4))
    logits[2, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        cl.softmax_cross_entropy(dev(logits), np.array([0, 3, 1, 1, 2]))


def small_net(seed=3):
    cl.manual_seed(seed)
    return cl.Sequential(cl.Conv2d(2, 4, 3, padding=1), cl.BatchNorm2d(4), cl.ReLU(), cl.MaxPool2d(2),
                         cl.Conv2d(4, 3, 3, padding=1), cl.ReLU(), cl.AvgPool2d(2), cl.Flatten(),
                         cl.Linear(3, 5), cl.Tanh(), cl.Linear(5, 3))


def test_training_step_on_cuda_equals_cpu(rng, monkeypatch):
    monkeypatch.setattr(K.memory, "POISON", True)                  # arrays start as NaN: all written
    x = rng.standard_normal((3, 2, 4, 5)).astype(np.float32)
    y = np.array([0, 2, 1])
    nets = {"cpu": small_net(), "cuda": small_net().to("cuda")}
    results = {}
    for device, net in nets.items():
        assert net.device == device
        opt = cl.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-3)
        for _ in range(2):                                          # the second step uses momentum
            logits = net(cl.to_device(x, device))
            loss, dlogits = cl.softmax_cross_entropy(logits, y)
            opt.zero_grad()
            dx = net.backward(dlogits)
            opt.step()
        results[device] = (host(logits), loss, host(dx), [host(p.grad) for p in net.parameters()],
                           net.state_dict())
    (lc, sc, dc, gc, stc), (lg, sg, dg, gg, stg) = results["cpu"], results["cuda"]
    np.testing.assert_allclose(lg, lc, rtol=1e-4, atol=1e-5)
    assert sg == pytest.approx(sc, rel=1e-5)
    np.testing.assert_allclose(dg, dc, rtol=1e-4, atol=1e-5)
    for a, b in zip(gg, gc):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    assert stg.keys() == stc.keys()
    for k in stc:                                                   # weights and running statistics
        np.testing.assert_allclose(stg[k], stc[k], rtol=1e-4, atol=1e-5)


def test_fit_on_cuda_and_models_move_between_devices(rng, tmp_path):
    x = rng.standard_normal((8, 2, 4, 4)).astype(np.float32)
    y = rng.integers(0, 3, 8)
    net = small_net().to("cuda")
    hist = cl.fit(net, (x, y), val=(x, y), epochs=2, batch_size=4, progress=False,
                  optimizer=cl.optim.Adam(net.parameters(), lr=1e-2))
    assert len(hist["loss"]) == 2 and np.isfinite(hist["loss"]).all()
    assert all(cuda.devicearray.is_cuda_ndarray(p.data) for p in net.parameters())
    gpu_out = host(net(cl.to_device(x)))
    cl.save(net, tmp_path / "gpu.npz")
    cpu_net = cl.load(tmp_path / "gpu.npz")                        # a GPU model loads on the CPU
    np.testing.assert_allclose(cpu_net(x), gpu_out, rtol=1e-4, atol=1e-5)
    back = cpu_net.to("cuda")                                       # and goes back
    np.testing.assert_allclose(host(back(cl.to_device(x))), gpu_out, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(cl.predict_proba(back, x), cl.predict_proba(cl.load(tmp_path / "gpu.npz"), x),
                               rtol=1e-4, atol=1e-5)
    assert back.to("cpu").device == "cpu"


def test_input_on_the_wrong_device_is_a_clear_error(rng):
    net = small_net().to("cuda")
    with pytest.raises(ValueError, match="parameters are on cuda but the input is on cpu"):
        net(rng.standard_normal((1, 2, 4, 4)).astype(np.float32))


def test_zero_grad_on_cuda_waits_for_the_next_gradient():
    p = cl.layers.Parameter(np.ones(3, np.float32))
    p.data, p.grad = dev(p.data), dev(np.full(3, 5, np.float32))
    p.zero_grad()
    g = dev(np.arange(3, dtype=np.float32))
    p.add_grad(g)
    assert p.grad is g                                              # taken as it is: no zeroing, no adding
    p.add_grad(dev(np.ones(3, np.float32)))
    close(p.grad, [1, 2, 3])
    p.zero_grad()
    close(p.grad, [0, 0, 0])                                        # read before anything is added: zeros
    p.add_grad(dev(np.ones(3, np.float32)))
    close(p.grad, [1, 1, 1])


def test_pool_reuses_a_block_only_when_no_view_of_its_array_is_left():
    from convlib.kernels.cuda import memory as pool
    if not pool.ENABLED:
        pytest.skip("CONVLIB_CUDA_POOL=0 turns the pool off")
    pool.release()
    a = pool.empty((3, 50), np.float32)                             # 600 bytes: a 1024-byte block
    view = a.reshape(150)[10:20]
    start = address(view)
    del a
    b = pool.empty(200, np.float32)                                 # the same size: must not be a's block
    assert address(b) not in range(start - 40, start + 600)
    del view
    reuses = pool.stats["reuses"]
    c = pool.empty((16, 16), np.float32)                            # now a's block is free again
    assert pool.stats["reuses"] == reuses + 1 and address(c) == start - 40
    c.copy_to_device(np.arange(256, dtype=np.float32).reshape(16, 16))
    np.testing.assert_array_equal(host(c.reshape(256))[:3], [0, 1, 2])


def address(a):
    """Where a device array's first element lies (the simulator's arrays are NumPy's)."""
    if config.ENABLE_CUDASIM:
        return a._ary.__array_interface__["data"][0]
    return int(a.device_ctypes_pointer.value or 0)


@pytest.mark.skipif(not config.ENABLE_CUDASIM, reason="counted by instrumenting numba's CUDA simulator")
def test_a_training_step_on_cuda_waits_once_and_allocates_nothing_after_the_first(monkeypatch):
    """What fit() does per step on the reference net (64 px, batch 32, as benchmarked), counted
    in the simulator with the kernels stubbed out: the counts are of the host code's calls
    (launches, device allocations, copies to the host), which do not depend on what the
    kernels compute; with nothing computed every array stays finite (zeros)."""
    from numba.cuda.simulator.cudadrv.devicearray import FakeCUDAArray
    from numba.cuda.simulator.kernel import FakeCUDAKernel

    from lib.selfie_model import build_net
    counts = dict(launches=0, allocations=0, copies_to_host=0)
    run = FakeCUDAKernel.__call__

    def launch(kernel, *args):
        if kernel._device:                                          # a device function, inside a kernel
            return run(kernel, *args)
        counts["launches"] += 1

    def counted(name, fn):
        def wrapper(*args, **kwargs):
            counts[name] += 1
            return fn(*args, **kwargs)
        return wrapper
    monkeypatch.setattr(FakeCUDAKernel, "__call__", launch)
    monkeypatch.setattr(cuda, "device_array", counted("allocations", lambda shape, dtype=np.float64, **_:
                                                      FakeCUDAArray(np.zeros(shape, dtype))))
    monkeypatch.setattr(cuda, "to_device", counted("allocations", cuda.to_device))
    monkeypatch.setattr(FakeCUDAArray, "copy_to_host", counted("copies_to_host", FakeCUDAArray.copy_to_host))

    cl.manual_seed(0)
    net = build_net(64).to("cuda")
    opt = cl.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    per_step, step = [], opt.step

    def counted_step():                                             # fit calls it once per step, last
        step()
        per_step.append(dict(counts))
        counts.update(launches=0, allocations=0, copies_to_host=0)
    opt.step = counted_step
    x = np.random.default_rng(0).standard_normal((4 * 32, 3, 64, 64)).astype(np.float32)
    cl.fit(net, (x, np.arange(4 * 32) % 2), epochs=1, batch_size=32, optimizer=opt, progress=False)
    assert len(per_step) == 4 and per_step[1] == per_step[2] == per_step[3]
    assert per_step[0]["allocations"] > 0 and per_step[1]["allocations"] == 0   # the pool serves every step
    assert per_step[1]["copies_to_host"] == 1                       # the loss and the correct count
    assert per_step[1]["launches"] <= 45                            # 29: 17 products, 8 pools, 1 update, ...


# ---------------------------------------------------------------- what the simulator cannot show
# The simulator has no caches, registers or streams: these hazards are checked in the PTX that
# numba-cuda compiles for an H100/H200 (sm_90), in a child process without the simulator.
@pytest.fixture(scope="module")
def ptx(tmp_path_factory):
    """{kernel: its PTX for sm_90} of tests/ptx_check.py's hazard_kernels."""
    path = tmp_path_factory.mktemp("ptx") / "ptx.json"
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_ENABLE_CUDASIM"}
    run = subprocess.run([sys.executable, os.path.join(os.path.dirname(__file__), "ptx_check.py"), "--emit",
                          str(path)], env=env, capture_output=True, text=True)
    if run.returncode == 3:
        pytest.skip("numba-cuda's compiler is not installed (the [gpu] extra, which CI installs)")
    assert run.returncode == 0, run.stderr[-4000:]
    return json.loads(path.read_text())


def last_block_path(text):
    """The PTX after the ticket's atomic add: the path of the block that adds the parts."""
    assert text.count("atom.global.add") == 1
    return text[text.index("atom.global.add"):]


def test_the_last_block_acquires_the_parts_after_its_ticket(ptx):
    """A fence between the ticket's atomic and the barrier after it, in every kernel with a last
    block: without it the parts' reads are not ordered after the ticket."""
    for name, text in ptx.items():
        between = last_block_path(text).split("bar.sync")[0]
        assert re.search(r"\bmembar\.gl\b|\bfence\.", between), name


def test_the_last_block_reads_the_parts_through_l2(ptx):
    """Each part another block wrote is read with ld.global.cg (an ordinary load may hit a stale
    copy in L1): in the products, the float32 parts that the last block converts to add them in
    float64; in batch norm (float64 parts), every load after the ticket."""
    for name, text in ptx.items():
        path = last_block_path(text)
        if name.startswith("_"):                                     # batch norm's sums
            loads = re.findall(r"\bld\.global\.[\w.]+", path)
            assert loads and all(ld.startswith("ld.global.cg") for ld in loads), (name, set(loads))
        else:
            parts = re.findall(r"cvt\.f64\.f32\s+%\w+,\s*(%\w+)", path)
            assert parts and all(defining(text, r).startswith("ld.global.cg") for r in parts), name


def test_float32_products_compute_in_float32(ptx):
    """The only float32 -> float64 conversions in a float32 product kernel are of the parts the
    last block adds (read with ld.global.cg): the operands are read and multiplied in float32.
    An untyped literal (``else 0``) beside a float32 element would add a conversion per element."""
    for name, text in ptx.items():
        if not name.startswith("_"):
            converted = re.findall(r"cvt\.f64\.f32\s+%\w+,\s*(%\w+)", text)
            assert all(defining(text, r).startswith("ld.global.cg") for r in converted), name


def defining(text, register):
    """The instruction that sets a PTX register, through a mov (an inline ld.global.cg loads
    into an integer register, moved to a float one)."""
    m = re.search(rf"^\s*([\w.]+)\s+{re.escape(register)},\s*([^;]*);", text, re.M)
    if m is None:
        return ""
    if m.group(1).startswith("mov.b"):
        return defining(text, m.group(2).strip())
    return m.group(0).strip()


def test_launch_bounds_option_reaches_the_ptx(ptx):
    assert ".minnctapersm 2" in ptx["conv2d_backward dw, 2 blocks per SM"]
    assert ".minnctapersm" not in ptx["conv2d_backward dw"]


@pytest.mark.skipif(not config.ENABLE_CUDASIM, reason="recorded by instrumenting numba's CUDA simulator")
def test_each_launch_site_has_its_own_tickets(rng, monkeypatch):
    """Batch norm's two per-channel sums and the split products of a convolution's, a linear
    layer's and a matmul's weight gradients, each over 6 last-block slots (channels or tiles):
    every launch site has a ticket array of its own (before, all five shared one)."""
    from numba.cuda.simulator.kernel import FakeCUDAKernel
    sites, run = {}, FakeCUDAKernel.__call__                       # ticket array -> launch sites

    def launch(kernel, *args):
        names = list(inspect.signature(kernel.fn).parameters)
        if not kernel._device and "tickets" in names and args[names.index("tickets")].size == 6:
            caller = sys._getframe(1)
            while caller.f_code.co_name == "_product":
                caller = caller.f_back
            sites.setdefault(address(args[names.index("tickets")]), set()).add(caller.f_code.co_name +
                                                                              f":{caller.f_lineno}")
        return run(kernel, *args)
    monkeypatch.setattr(FakeCUDAKernel, "__call__", launch)
    x = dev(rng.standard_normal((2, 6, 5, 5)))                       # 6 channels in 3 parts each
    ones, zeros = dev(np.ones(6)), dev(np.zeros(6))
    _, cache = K.batchnorm_forward(x, ones, zeros, dev(np.zeros(6)), dev(np.ones(6)), 0.1, 1e-5, True)
    K.batchnorm_backward(x, cache)
    _, cache = K.conv2d_forward(dev(rng.standard_normal((2, 8, 5, 5))), dev(rng.standard_normal((8, 8, 1, 1))),
                                dev(np.zeros(8)), (1, 1), (0, 0))
    K.conv2d_backward(dev(rng.standard_normal((2, 8, 5, 5))), cache)   # dw: 2 x 3 tiles of (8, 8 + 1)
    _, cache = K.linear_forward(dev(rng.standard_normal((40, 8))), dev(rng.standard_normal((8, 8))), dev(np.zeros(8)))
    K.linear_backward(dev(rng.standard_normal((40, 8))), cache)         # dw: 2 x 3 tiles, K = 40
    K.matmul(dev(rng.standard_normal((40, 8))), dev(rng.standard_normal((40, 12))), ta=True)
    assert len(sites) == 5 and all(len(s) == 1 for s in sites.values()), sites


@pytest.mark.skipif(not config.ENABLE_CUDASIM, reason="recorded by instrumenting numba's CUDA simulator")
def test_labels_are_copied_without_waiting_for_the_device(rng, monkeypatch):
    """The loss's labels go to the device from a pinned buffer, copied on a stream (queued, no
    wait for the forward pass); a second call of the same batch size first waits for the event
    of the last copy, then reuses the buffer. The losses are right either way."""
    from numba.cuda.simulator.cudadrv.devicearray import FakeCUDAArray
    log, copy = [], FakeCUDAArray.copy_to_device

    class Event:
        def record(self, stream=0):
            log.append("record")

        def synchronize(self):
            log.append("wait")

    def copied(self, ary, stream=0):
        log.append(("copy", id(ary), stream != 0))
        return copy(self, ary, stream)
    monkeypatch.setattr(K, "_label_buffers", {})
    monkeypatch.setattr(cuda, "event", Event)
    logits = rng.standard_normal((5, 3))
    d = dev(logits)
    monkeypatch.setattr(FakeCUDAArray, "copy_to_device", copied)
    for y in ([0, 2, 1, 1, 0], [2, 2, 0, 1, 1]):
        rows, _ = cl.losses.loss_rows(d, np.array(y))
        close(rows, cl.losses.loss_rows(logits, np.array(y))[0], tol=1e-12)
    buffer = id(K._label_buffers[5][0])
    assert log == ["wait", ("copy", buffer, True), "record"] * 2


def test_tuning_options_compute_the_same_products(rng):
    """The options gpu_check.py times on a GPU: either split rule and launch bounds (ignored by
    the simulator) give the same weight gradients, and the settings come back afterwards."""
    dout2, cols = rng.standard_normal((6, 203)), rng.standard_normal((9, 203))
    assert (K.SPLIT, K.PRODUCT_BLOCKS_PER_SM) == ("sm", 2)      # the defaults an H200 measured
    for split in ("sm", "fixed"):
        with K.tuning(split=split, blocks_per_sm=0):
            assert (K.SPLIT, K.PRODUCT_BLOCKS_PER_SM) == (split, 0)
            assert K._grid(6, 9, 203)[2] > 1                       # the sum is split either way
            close(K.matmul(dev(dout2), dev(cols), tb=True), dout2 @ cols.T, tol=1e-9)
    assert (K.SPLIT, K.PRODUCT_BLOCKS_PER_SM) == ("sm", 2)
    with pytest.raises(ValueError, match="split 'fixed' or 'sm'"):
        with K.tuning(split="auto"):
            pass


# ---------------------------------------------------------------- benchmarks/gpu_check.py
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_gpu_check_runs_end_to_end_in_the_simulator(tmp_path):
    """The first-contact script's smoke mode (small shapes, numba's simulator): every part runs
    and its JSON says what a GPU run would: every check passes, each batch's step is timed launch
    by launch, each tuning option gives the default's gradients, and the sanitizer's script runs."""
    run = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "gpu_check.py"), "--sim", "--out",
                          str(tmp_path)], env={**os.environ, "PYTHONPATH": ROOT}, capture_output=True, text=True)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    d = json.loads((tmp_path / "gpu_check.json").read_text())
    assert d["errors"] == {} and d["skipped"] == {}, (d["errors"], d["skipped"])
    assert d["versions"]["first_kernel"].startswith("ok")
    ops = d["correctness"]["ops"]
    assert {r["batch"] for r in ops} == {2, 3} and all(r["ok"] and len(r["rel_err"]) == 3 for r in ops)
    assert sum(r["op"].startswith("conv") for r in ops) == 4 and all(s["ok"] for s in d["correctness"]["training_step"])
    steps = d["timing"]["steps"]
    assert [s["batch"] for s in steps] == [2, 3] and all(s["launches"] == len(s["per_launch"]) > 10 for s in steps)
    assert any(r["kernel"] == "product conv dw" and r["grid"][2] > 1 for r in steps[0]["per_launch"])  # split K
    ab = d["timing"]["ab"]
    assert {(r["split"], r["blocks_per_sm"]) for r in ab} == {("fixed", 0), ("sm", 0), ("fixed", 2), ("sm", 2)}
    assert all(r["grads_vs_default"] <= 1e-4 for r in ab)
    assert "rows" in d["torch"] or "skipped" in d["torch"]
    assert d["sanitizer"]["script"]["rc"] == 0
    assert "checks ok" in (tmp_path / "gpu_check.txt").read_text()


def test_gpu_check_records_a_failing_part_and_runs_the_next(tmp_path):
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    import gpu_check
    report = gpu_check.Report(gpu_check.parse_args(["--out", str(tmp_path), "--parts", "ab"]))
    report.part("a", "versions", lambda out: 1 / 0)
    report.part("b", "correctness", lambda out: out.update(
        repeats=1, ops=[dict(op="x", batch=1, rel_err=[0.0], identical=True, ok=True)]))
    report.part("c", "timing", lambda out: 1 / 0)                  # not asked for: not run
    d = json.loads((tmp_path / "gpu_check.json").read_text())
    assert list(d["errors"]) == ["versions"] and "ZeroDivisionError" in d["errors"]["versions"]
    assert d["correctness"]["ops"][0]["ok"] and "timing" not in d and "timing" not in d["errors"]
    assert "ERROR in versions" in (tmp_path / "gpu_check.txt").read_text()
