"""Data-parallel training (convlib.distributed): the one-process no-op, the sharding, and real
two-rank runs under ``mpiexec`` (the [mpi] extra: mpi4py and MPICH)."""
import os
import shutil
import subprocess
import sys
import time

import numpy as np
import pytest

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


def test_a_failing_rank_ends_the_job(tmp_path):
    r, _, seconds = run_ranks("raise", tmp_path, timeout=120)
    assert r.returncode != 0
    assert "planted failure on rank 1" in r.stdout + r.stderr
    assert seconds < 60, f"the job took {seconds:.0f} s to end"


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
