"""Past one machine (benchmarks/multihost.py, benchmarks/netns.py, convlib.distributed): the
collective timeout, every rank's random state in checkpoints, and, where network namespaces can
be made (root, iproute2), training, a cut link and Dask across simulated hosts over TCP."""
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from convlib import distributed
from convlib.distributed import CollectiveTimeout, MPIComm, Single

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
import multihost  # noqa: E402
import netns  # noqa: E402


class Request:
    """A stand-in for an MPI request that completes on its ``done``-th test (never if None)."""

    def __init__(self, done=None):
        self.done, self.tests = done, 0

    def Test(self):
        self.tests += 1
        return self.done is not None and self.tests >= self.done


def comm_with(timeout, rank=1, size=2):
    """An MPIComm that never touched MPI: enough for its waiting logic."""
    comm = MPIComm.__new__(MPIComm)
    comm.rank, comm.size, comm.timeout = rank, size, timeout
    return comm


class Gather(Single):
    """A communicator of ``size`` ranks seen from ``rank`` whose allgather returns ``answers``."""

    def __init__(self, rank, size, answers):
        self.rank, self.size, self.answers = rank, size, answers

    def allgather(self, obj):
        return list(self.answers)


def test_a_collective_that_gets_no_answer_raises_after_the_timeout():
    buf = np.zeros(10, np.float32)
    with pytest.raises(CollectiveTimeout, match=r"rank 1 of 2 waited 0.2 s in an allreduce of 40 bytes .* "
                                                r"network is cut .*CONVLIB_MPI_TIMEOUT"):
        comm_with(0.2)._wait(Request(), buf, "allreduce")
    request = Request(done=3)
    assert comm_with(0.2)._wait(request, buf, "allreduce") is buf and request.tests == 3


def test_the_timeout_comes_from_the_environment(monkeypatch):
    monkeypatch.delenv("CONVLIB_MPI_TIMEOUT", raising=False)
    assert distributed.timeout_from_env() == distributed.DEFAULT_TIMEOUT == 600
    for text, seconds in (("2.5", 2.5), ("0", None), (" 30 ", 30.0)):
        monkeypatch.setenv("CONVLIB_MPI_TIMEOUT", text)
        assert distributed.timeout_from_env() == seconds
    for bad in ("-1", "soon", "nan"):
        monkeypatch.setenv("CONVLIB_MPI_TIMEOUT", bad)
        with pytest.raises(ValueError, match="CONVLIB_MPI_TIMEOUT: expected seconds >= 0"):
            distributed.timeout_from_env()


def test_a_checkpoint_that_only_some_ranks_see_is_an_error(tmp_path):
    path = str(tmp_path / "ckpt.npz")
    with pytest.raises(ValueError, match=r"rank\(s\) \[1, 2\] cannot find the checkpoint .* rank\(s\) \[0\] find"):
        distributed.checkpoint_exists(Gather(0, 3, [True, False, False]), path)
    assert distributed.checkpoint_exists(Gather(1, 2, [False, False]), path) is False
    assert distributed.checkpoint_exists(Single(), path) is False


def test_every_rank_gets_its_own_generators_back():
    """Saved streams go back to their ranks; a rank the checkpoint did not have gets one of its
    own, not rank 0's; one process and old checkpoints (None) are left alone."""
    import convlib as cl
    saved = []
    for r in range(2):
        cl.manual_seed(100 + r)
        saved.append({"aug": np.random.default_rng(r).bit_generator.state,
                      "global": cl.rng.get_rng().bit_generator.state})
    for rank in (0, 1, 2):
        cl.manual_seed(7)
        aug = np.random.default_rng(99)
        distributed.restore_rng_states(Gather(rank, 3, []), saved, aug)
        if rank < 2:
            assert aug.bit_generator.state == saved[rank]["aug"]
            assert cl.rng.get_rng().bit_generator.state == saved[rank]["global"]
        else:
            assert aug.bit_generator.state == np.random.default_rng(99).bit_generator.state
            assert cl.rng.get_rng().bit_generator.state not in [s["global"] for s in saved]
    cl.manual_seed(7)
    before = cl.rng.get_rng().bit_generator.state
    distributed.restore_rng_states(Single(), saved, aug)
    distributed.restore_rng_states(Gather(1, 2, []), None, aug)
    assert cl.rng.get_rng().bit_generator.state == before
    assert distributed.rng_states(Single(), aug) is None


# ---------------------------------------------------------------- MPI ranks on this machine
def mpiexec():
    pytest.importorskip("mpi4py", reason="mpi4py is not installed (pip install -e '.[mpi]')")
    exe = shutil.which("mpiexec", path=os.path.dirname(sys.executable) + os.pathsep + os.environ.get("PATH", ""))
    if exe is None:
        pytest.skip("no mpiexec (pip install mpich)")
    return exe


def fault_run(out, mode, variant, ranks=2):
    """multihost.fault_worker as ``ranks`` ranks under plain mpiexec (1: one process); (exit status, output)."""
    os.makedirs(out, exist_ok=True)
    worker = [os.path.join(ROOT, "benchmarks", "multihost.py"), "--worker", "fault", "--args", str(out), mode, variant]
    argv = ([mpiexec(), "-n", str(ranks), sys.executable, "-m", "mpi4py", *worker] if ranks > 1
            else [sys.executable, *worker])
    r = subprocess.run(argv, check=False, capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, CONVLIB_NUM_THREADS="1", PYTHONPATH=multihost.env_paths()))
    return r.returncode, r.stdout + r.stderr


def test_resume_on_as_many_ranks_is_bit_exact(tmp_path):
    """Dropout and a random flip (each rank draws its own numbers): a run whose rank 1 fails in
    epoch 3, resumed from its last checkpoint on 2 ranks, ends with the uninterrupted run's weights
    bit for bit, on both ranks."""
    mpiexec()
    code, out = fault_run(tmp_path / "full", "run", "random")
    assert code == 0, out
    code, out = fault_run(tmp_path / "failed", "raise", "random")
    assert code != 0 and "planted failure on rank 1" in out
    import convlib as cl
    state = cl.io.load_extra(str(tmp_path / "failed" / "ckpt.npz"))[1]["checkpoint"]
    assert state["epoch"] == multihost.CUT_AT[0] and len(state["ranks"]) == 2
    assert state["ranks"][0]["aug"] != state["ranks"][1]["aug"]
    code, out = fault_run(tmp_path / "failed", "resume", "random")
    assert code == 0, out
    full = multihost.weights(str(tmp_path / "full"))
    for rank in (0, 1):
        again = multihost.weights(str(tmp_path / "failed"), rank)
        for k in full:
            np.testing.assert_array_equal(again[k], full[k], err_msg=f"rank {rank}: {k}")


def test_survivors_go_on_as_all_ranks_would(tmp_path):
    """The same failed run's checkpoint resumed without per-rank randomness (no dropout or flip):
    on one process (the survivor) the weights are those of 2 ranks resuming it, to float rounding."""
    mpiexec()
    code, out = fault_run(tmp_path / "failed", "raise", "random")
    assert code != 0 and "planted failure on rank 1" in out
    for d in ("two", "one"):
        os.makedirs(tmp_path / d)
        shutil.copy(tmp_path / "failed" / "ckpt.npz", tmp_path / d)
    assert fault_run(tmp_path / "two", "resume", "plain")[0] == 0
    code, out = fault_run(tmp_path / "one", "resume", "plain", ranks=1)
    assert code == 0, out
    two, one = multihost.weights(str(tmp_path / "two")), multihost.weights(str(tmp_path / "one"))
    assert int(one["size"]) == 1 and int(two["size"]) == 2
    before = cl_checkpoint_weights(tmp_path / "failed" / "ckpt.npz")
    for k in before:
        np.testing.assert_allclose(one[k], two[k], rtol=1e-4, atol=1e-5, err_msg=k)
        assert not np.allclose(one[k], before[k]), f"{k} did not train after the resume"
    np.testing.assert_allclose(one["loss"], two["loss"], rtol=1e-4)


def cl_checkpoint_weights(path):
    import convlib as cl
    return cl.io.load_extra(str(path))[0].state_dict()


# ---------------------------------------------------------------- simulated hosts (namespaces)
@pytest.fixture(scope="module")
def can_make_hosts():
    reason = netns.why_not()
    if reason:
        pytest.skip(reason)
    mpiexec()


def test_two_hosts_train_with_every_allreduce_byte_on_the_link(can_make_hosts):
    """fit of the reference net as 2 ranks in 2 namespaces at 1 Gbit/s: each rank's eth0 sent at
    least the ring volume per step (with shared memory it would send next to nothing), the ranks end
    with the same weights, and the namespaces are gone afterwards."""
    with netns.Hosts(2, gbit=1) as hosts:
        prefix = hosts.prefix
        r = multihost.measure(hosts, steps=3, timeout=300)
    volume = multihost.ring_bytes(2, r["n_params"])                 # 4P bytes: the whole buffer, once
    assert r["size"] == 2 and len({q["weights"] for q in r["ranks"]}) == 1
    for q in r["ranks"]:
        assert 0.97 * volume < q["sent_step"] < 1.3 * volume, q
        assert 0.97 * volume < q["sent_alone"] < 1.3 * volume, q
    assert min(r["outside"]) > 5 * volume                           # warm-up, steps and 40 allreduces
    assert netns.namespaces(prefix) == []


def test_a_cut_link_ends_the_job_and_the_checkpoint_resumes(can_make_hosts, tmp_path):
    """Host 1's link cut in epoch 3: the job ends by itself (within the 5 s timeout plus the bound
    of fault_scenario) with the timeout's message, and host 1's processes end once its link is
    back; the last checkpoint (the start of epoch 3) resumed on both hosts gives the uninterrupted
    run's weights bit for bit; on host 0 alone it trains on from the same epochs."""
    with netns.Hosts(2, gbit=1) as hosts:
        r = multihost.fault_scenario(hosts, str(tmp_path), mpi_timeout=5)
    assert r["code"] not in (0, None), r["output"]
    assert "CollectiveTimeout" in r["output"] and "its network is cut" in r["output"], r["output"]
    assert r["gone_after"] is not None, "host 1's processes outlived the mended link by 30 s"
    assert r["checkpoint_epoch"] == multihost.CUT_AT[0]
    for k in r["full"]:
        np.testing.assert_array_equal(r["resumed"][k], r["full"][k], err_msg=k)
        np.testing.assert_array_equal(r["rank1_resumed"][k], r["full"][k], err_msg=k)
    done = multihost.CUT_AT[0] - 1                                  # epochs the checkpoint holds
    np.testing.assert_array_equal(r["survivor"]["loss"][:done], r["full"]["loss"][:done])
    assert len(r["survivor"]["loss"]) == multihost.FAULT_EPOCHS and int(r["survivor"]["size"]) == 1


def test_dask_workers_in_other_namespaces_rate_a_folder_as_in_process(can_make_hosts, tmp_path):
    pytest.importorskip("distributed", reason="Dask is not installed (pip install -e '.[dask]')")
    with netns.Hosts(3, gbit=1) as hosts:
        there, here = multihost.dask_scenario(hosts, str(tmp_path), copies=2)
    assert len(here["p"]) == 640 and 640 not in here["kept"]        # the file that does not decode is skipped
    np.testing.assert_array_equal(there["kept"], here["kept"])
    np.testing.assert_array_equal(there["p"], here["p"])
    assert sorted(a.split(":")[1].lstrip("/") for a in there["ran"]) == ["10.77.0.2", "10.77.0.3"]
    assert all(n >= 1 for n in there["ran"].values()) and sum(there["ran"].values()) == 3   # 641 files, 3 shards
