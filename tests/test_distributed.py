"""Data-parallel training (convlib.distributed): the one-process no-op, the sharding, and real
two-rank runs under ``mpiexec`` (the [mpi] extra: mpi4py and MPICH)."""
import copy
import os
import shutil
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

import convlib as cl
import convlib.rng
from convlib import distributed
from convlib.distributed import Single

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
import mpi_fit  # noqa: E402


def mpiexec():
    """The launcher beside this Python (the mpich wheel's) or on PATH; skip, saying why, without it."""
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        pytest.skip("mpi4py is not installed (pip install -e '.[mpi]')")
    exe = shutil.which("mpiexec", path=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    if exe is None:
        pytest.skip("no mpiexec (pip install mpich)")
    return exe


def run_ranks(mode, tmp_path, timeout=240):
    out = str(tmp_path / mode)
    env = dict(os.environ, CONVLIB_NUM_THREADS="1", PYTHONPATH=os.pathsep.join([os.path.dirname(HERE), HERE]))
    t0 = time.perf_counter()
    r = subprocess.run([mpiexec(), "-n", "2", sys.executable, "-m", "mpi4py", os.path.join(HERE, "mpi_fit.py"),
                        mode, out], capture_output=True, text=True, timeout=timeout, env=env)
    return r, out, time.perf_counter() - t0


@pytest.mark.parametrize("n,size", [(16, 2), (17, 2), (5, 3), (2, 3), (1, 1)])
def test_shards_cover_the_batch_once(n, size):
    parts = []
    for rank in range(size):
        comm = Single()
        comm.rank, comm.size = rank, size
        parts.append(np.arange(n)[distributed.shard(n, comm)])
    np.testing.assert_array_equal(np.concatenate(parts), np.arange(n))
    assert max(map(len, parts)) - min(map(len, parts)) <= 1


def test_one_process_is_a_no_op(monkeypatch):
    for name in ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_SIZE"):
        monkeypatch.delenv(name, raising=False)
    assert distributed.launched_size() == 1
    monkeypatch.setenv("PMI_SIZE", "4")
    assert distributed.launched_size() == 4
    comm = Single()
    buf = np.arange(3.0)
    assert comm.allreduce_sum(buf) is buf and buf.tolist() == [0, 1, 2]
    assert comm.broadcast(buf) is buf and buf.tolist() == [0, 1, 2]


def test_fit_without_mpi_is_unchanged():
    """fit with the default communicator (no launcher) gives the same weights as fit with Single()."""
    a, ha = mpi_fit.train("plain")
    b, hb = mpi_fit.train("plain", comm=Single())
    for (k, va), (_, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        np.testing.assert_array_equal(va, vb, err_msg=k)
    assert ha["loss"] == hb["loss"]


@pytest.mark.mpiexec
def test_two_ranks_match_one_process(tmp_path):
    """Two ranks on half-batches (a 72-image epoch in batches of 16, so the last batch of 8 splits
    4/4; momentum, Nesterov and weight decay) end with the one-process weights."""
    r, out, _ = run_ranks("plain", tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    ranks = [np.load(f"{out}.rank{i}.npz") for i in range(2)]
    assert int(ranks[0]["size"]) == 2
    one, hist = mpi_fit.train("plain", comm=Single())
    for k, v in one.state_dict().items():
        np.testing.assert_array_equal(ranks[0][k], ranks[1][k], err_msg=f"ranks differ in {k}")
        np.testing.assert_allclose(ranks[0][k], v, rtol=1e-4, atol=1e-5, err_msg=k)
        assert not np.allclose(v, mpi_fit.net().state_dict()[k]), f"{k} never trained"
    np.testing.assert_allclose(ranks[0]["loss"], hist["loss"], rtol=1e-4)   # losses summed over both shards


@pytest.mark.mpiexec
def test_two_ranks_average_batch_norm_statistics(tmp_path):
    """With batch norm each rank normalises by its own half-batch, so the weights differ from one
    process; the running statistics must still agree across ranks (averaged each epoch), and
    validation accuracy is the same figure on both ranks."""
    r, out, _ = run_ranks("bn", tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    a, b = (np.load(f"{out}.rank{i}.npz") for i in range(2))
    for k in a.files:
        np.testing.assert_array_equal(a[k], b[k], err_msg=f"ranks differ in {k}")
    assert not np.allclose(a["1.running_mean"], 0) and len(a["val_acc"]) == 3


@pytest.mark.mpiexec
def test_a_failing_rank_ends_the_job(tmp_path):
    r, _, seconds = run_ranks("raise", tmp_path, timeout=120)
    assert r.returncode != 0
    assert "planted failure on rank 1" in r.stdout + r.stderr
    assert seconds < 60, f"the job took {seconds:.0f} s to end"


@pytest.mark.mpiexec
def test_selfie_train_runs_unchanged_under_mpiexec(tmp_path):
    """The example's command under mpiexec -n 2: rank 0 generates the data first and alone writes
    the model and prints; the run ends with one summary line."""
    examples = os.path.join(os.path.dirname(HERE), "examples")
    r = subprocess.run([mpiexec(), "-n", "2", sys.executable, "-m", "mpi4py", os.path.join(examples, "selfie_train.py"),
                        "--n-images", "320", "--size", "16", "--epochs", "2", "--no-pictures", "--no-progress",
                        "--synthetic-dir", str(tmp_path / "data"), "--out", str(tmp_path / "run")],
                       capture_output=True, text=True, timeout=300, env=dict(os.environ, CONVLIB_NUM_THREADS="1"))
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.count("test accuracy:") == 1 and r.stdout.count("epoch 2:") == 1
    assert sorted(os.listdir(tmp_path / "run")) == ["model.npz", "run.json"]


class ThreadComm(Single):
    """Ranks as threads of this process, for tests: every collective meets at a barrier and combines
    the ranks' buffers in rank order (what MPI does, without a launcher, so that the data-parallel
    path of fit runs inside pytest and its coverage)."""

    def __init__(self, rank, size, shared):
        self.rank, self.size, self.shared = rank, size, shared

    def _exchange(self, value):
        slots, barrier = self.shared["slots"], self.shared["barrier"]
        slots[self.rank] = value
        barrier.wait()
        got = list(slots)
        barrier.wait()
        return got

    def allreduce_sum(self, buf):
        parts = self._exchange(np.array(buf, copy=True))
        total = parts[0].copy()
        for p in parts[1:]:
            total += p
        buf[...] = total
        return buf

    def broadcast(self, buf, root=0):
        buf[...] = self._exchange(np.array(buf, copy=True))[root]
        return buf

    def allgather(self, obj):
        return self._exchange(obj)

    def barrier(self):
        self.shared["barrier"].wait()


def fit_on_thread_ranks(size, nets, fit=mpi_fit.fit_one, **kwargs):
    """``fit(nets[r], comm=..., **kwargs)`` for each of ``nets`` on its own thread-rank of ``size``
    (default ``mpi_fit.fit_one``); returns their histories."""
    shared = dict(slots=[None] * size, barrier=threading.Barrier(size, timeout=120))
    hists, errors = [None] * size, []

    def rank(r):
        try:
            hists[r] = fit(nets[r], comm=ThreadComm(r, size, shared), **kwargs)
        except BaseException as e:                                  # seen by the test, not lost in a thread
            errors.append(e)
            shared["barrier"].abort()
    threads = [threading.Thread(target=rank, args=(r,)) for r in range(size)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return hists


@pytest.mark.parametrize("size", [2, 3])
def test_ranks_in_threads_match_one_process(size):
    """The data-parallel path of fit, in this process: ranks on shares of each batch (uneven with
    3 ranks and the last batch of 8), rank 0's weights broadcast at the start (the others start
    from other weights), gradients and the loss and accuracy averaged, validation split over the
    ranks: every rank ends with the weights and history of one process."""
    one = mpi_fit.net(bn=False)
    want = mpi_fit.fit_one(one, comm=Single(), val=mpi_fit.data(20, seed=4))
    nets = [mpi_fit.net(bn=False)] + [mpi_fit.net(bn=False, seed=r) for r in range(1, size)]
    hists = fit_on_thread_ranks(size, nets, val=mpi_fit.data(20, seed=4))
    for r in range(size):
        for k, v in one.state_dict().items():
            np.testing.assert_allclose(nets[r].state_dict()[k], v, rtol=1e-4, atol=1e-5, err_msg=f"rank {r}: {k}")
        np.testing.assert_allclose(hists[r]["loss"], want["loss"], rtol=1e-4)
        np.testing.assert_allclose(hists[r]["acc"], want["acc"], rtol=1e-12)
        np.testing.assert_allclose(hists[r]["val_loss"], want["val_loss"], rtol=1e-4)
        np.testing.assert_allclose(hists[r]["val_acc"], want["val_acc"], rtol=1e-12)
        assert hists[r].best_epoch == want.best_epoch


def test_ranks_in_threads_average_batch_norm_statistics_and_only_rank_0_writes(tmp_path, capsys):
    """With batch norm the running statistics are averaged each epoch, so the ranks agree; only
    rank 0 shows progress, calls on_epoch_end and writes the checkpoint."""
    nets = [mpi_fit.net(bn=True), mpi_fit.net(bn=True, seed=1)]
    calls = []
    fit_on_thread_ranks(2, nets, progress=True, checkpoint=str(tmp_path / "ck.npz"),
                        on_epoch_end=lambda epoch, hist: calls.append(epoch))
    for k, v in nets[0].state_dict().items():
        np.testing.assert_array_equal(nets[1].state_dict()[k], v, err_msg=k)
    assert not np.allclose(nets[0].state_dict()["1.running_mean"], 0)
    assert calls == [1, 2, 3]                                       # once per epoch: rank 0 only
    assert capsys.readouterr().err.count("epoch 3/3") == 1          # one progress bar
    assert os.path.exists(tmp_path / "ck.npz")


@pytest.fixture
def ranks_as_processes(monkeypatch):
    """Thread-ranks that repeat bit for bit, as processes under ``mpiexec`` with CONVLIB_NUM_THREADS=1
    do: one kernel thread and one BLAS thread each (the kernels' thread pool serves one caller at a
    time, so otherwise a rank's sums would be split one way or another as the threads race), and
    convlib's generator (weights, dropout masks, ``manual_seed``) once per rank: a rank's thread
    starts from a copy of the main thread's generator (every process has drawn the same up to fit)
    and reseeds only its own. Nets made in the main thread use the real one."""
    from threadpoolctl import threadpool_limits
    threads = cl.get_num_threads()
    cl.set_num_threads(1)
    blas = threadpool_limits(1, user_api="blas")
    local, real_get_rng, real_manual_seed = threading.local(), convlib.rng.get_rng, convlib.rng.manual_seed
    main = lambda: threading.current_thread() is threading.main_thread()

    def get_rng():
        if main():
            return real_get_rng()
        if not hasattr(local, "g"):
            local.g = copy.deepcopy(real_get_rng())
        return local.g

    def manual_seed(seed):
        if main():
            real_manual_seed(seed)
        else:
            local.g = np.random.default_rng(seed)
    for module in (cl.train, cl.distributed, cl.layers):
        monkeypatch.setattr(module, "get_rng", get_rng)
    for module in (cl.train, cl.distributed):
        monkeypatch.setattr(module, "manual_seed", manual_seed)
    yield
    blas.restore_original_limits()
    cl.set_num_threads(threads)


def dropout_net(seed=0):
    cl.manual_seed(seed)
    return cl.Sequential(cl.Conv2d(2, 4, 3, padding=1), cl.ReLU(), cl.MaxPool2d(2), cl.Flatten(), cl.Dropout(0.3),
                         cl.Linear(4 * 3 * 3, 2))


def fit_augmented(model, comm, epochs=2, noises=None, **kwargs):
    """fit ``model`` on data(40) in batches of 16 (8 per rank), each batch plus noise drawn from the
    generator fit hands ``augment`` (kept in ``noises[rank]``); the history also holds the rank's
    convlib generator state at the end (``hist.rng_state``)."""
    x, y = mpi_fit.data(40)

    def augment(xb, g):                                             # xb (8, 2, 6, 6): this rank's share
        noise = g.normal(0, 0.5, xb.shape).astype(xb.dtype)
        if noises is not None:
            noises[comm.rank].append(noise)
        return xb + noise
    opt = cl.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    hist = cl.fit(model, (x, y), epochs=epochs, batch_size=16, optimizer=opt, augment=augment, progress=False,
                  comm=comm, **kwargs)
    hist.rng_state = cl.train.get_rng().bit_generator.state
    return hist


def test_thread_ranks_draw_their_own_augmentation_and_dropout_yet_repeat_exactly(ranks_as_processes):
    """Each rank seeds its augmentation generator and convlib's generator (dropout masks) from the
    seed and its rank: the two ranks draw different noise and end with different generator states,
    and a second identical run ends with the same weights, history and draws bit for bit."""
    runs = []
    for _ in range(2):
        nets, noises = [dropout_net(), dropout_net(seed=1)], {0: [], 1: []}
        hists = fit_on_thread_ranks(2, nets, fit=fit_augmented, noises=noises)
        runs.append((nets, hists, noises))
    (nets, hists, noises), (again, again_hists, again_noises) = runs
    assert len(noises[0]) == len(noises[1]) == 6                    # 2 epochs x 3 batches (16, 16, 8)
    assert not np.array_equal(noises[0][0], noises[1][0])           # the rank is in the augmentation seed
    assert hists[0].rng_state != hists[1].rng_state                 # and in the dropout seed
    for r in range(2):
        for a, b in zip(noises[r], again_noises[r]):
            np.testing.assert_array_equal(a, b)
        for k, v in nets[r].state_dict().items():
            np.testing.assert_array_equal(again[r].state_dict()[k], v, err_msg=f"rank {r}: {k}")
        assert again_hists[r]["loss"] == hists[r]["loss"] and again_hists[r].rng_state == hists[r].rng_state
    for k, v in nets[0].state_dict().items():
        np.testing.assert_array_equal(nets[1].state_dict()[k], v, err_msg=k)   # the ranks agree


def test_a_resumed_run_on_thread_ranks_ends_bit_for_bit_where_an_uninterrupted_one_does(tmp_path, ranks_as_processes):
    """The checkpoint holds every rank's augmentation and dropout generators and each rank gets its
    own back: resumed from the checkpoint after epoch 1 (into nets with other weights), every rank
    ends with the weights and history of the uninterrupted 3-epoch run."""
    ck, ck1 = tmp_path / "ck.npz", tmp_path / "ck1.npz"
    nets = [dropout_net(), dropout_net(seed=1)]
    want = fit_on_thread_ranks(2, nets, fit=fit_augmented, epochs=3, checkpoint=str(ck),
                               on_epoch_end=lambda epoch, hist: epoch == 1 and shutil.copy(ck, ck1))
    got_nets = [dropout_net(seed=7), dropout_net(seed=8)]
    got = fit_on_thread_ranks(2, got_nets, fit=fit_augmented, epochs=3, checkpoint=str(ck1), resume=True)
    for r in range(2):
        for k, v in nets[r].state_dict().items():
            np.testing.assert_array_equal(got_nets[r].state_dict()[k], v, err_msg=f"rank {r}: {k}")
        assert len(got[r]["loss"]) == 3
        assert got[r]["loss"] == want[r]["loss"] and got[r]["acc"] == want[r]["acc"]
        assert got[r].rng_state == want[r].rng_state


class _EvalSizes(cl.Flatten):
    """Flatten that records the batch sizes it sees in eval mode (validation)."""
    def __init__(self):
        self.seen = []

    def forward(self, x):
        if not self.training:
            self.seen.append(len(x))
        return super().forward(x)


@pytest.mark.parametrize("n_val, batch_size, shares", [
    (1, 4, [[1], [1]]),                                             # fewer images than ranks: each takes all
    (2, 4, [[1], [1]]),                                             # as many as ranks: one each
    (5, 4, [[3], [2]]),                                             # uneven shares
    (600, 300, [[300], [300]]),                                     # in batches of max(batch_size, 256)
])
def test_thread_ranks_split_validation_and_report_the_one_process_figures(n_val, batch_size, shares):
    """Each rank validates its share of the validation set (all of it when there are fewer images
    than ranks), in batches of max(batch_size, 256); loss and accuracy are those of ``evaluate``
    over the whole set in one process."""
    rng = np.random.default_rng(n_val)
    x = rng.standard_normal((10 + n_val, 6)).astype(np.float32)     # (N, 6)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).astype(np.int64)
    nets = []
    for seed in (2, 3):
        cl.manual_seed(seed)
        nets.append(cl.Sequential(_EvalSizes(), cl.Linear(6, 2)))

    def fit(model, comm, **kwargs):                                 # steps too small to change a weight
        return cl.fit(model, (x[:10], y[:10]), epochs=1, optimizer=cl.optim.SGD(model.parameters(), lr=1e-30),
                      progress=False, comm=comm, **kwargs)
    hists = fit_on_thread_ranks(2, nets, fit=fit, val=(x[10:], y[10:]), batch_size=batch_size)
    assert [net[0].seen for net in nets] == shares
    loss, acc = cl.evaluate(nets[0], x[10:], y[10:])
    if n_val > 2:
        assert 0 < acc < 1                                          # (so that a wrong count would show)
    for r in range(2):
        assert hists[r]["val_loss"] == pytest.approx([loss], rel=1e-6), f"rank {r}"
        assert hists[r]["val_acc"] == [acc], f"rank {r}"
