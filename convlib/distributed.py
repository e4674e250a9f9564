"""Data-parallel training over MPI; in a single process every call here is a no-op.

    mpiexec -n 2 python -m mpi4py examples/selfie_train.py     # pip install -e ".[mpi]"

``fit`` asks ``world()`` for the communicator. Launched by ``mpiexec`` with more than one rank,
it is MPI (mpi4py): rank 0's weights are broadcast at the start, each rank runs its share of
every batch (the global batch is ``batch_size``), the gradients are averaged with one allreduce
of one flat buffer per step, batch-norm running statistics are averaged at each epoch's end, and
only rank 0 shows progress and writes files. Run as plain ``python`` it is ``Single()``: size 1,
nothing is imported and nothing changes. ``python -m mpi4py`` makes an exception on one rank
abort every rank instead of leaving the others waiting in a collective.

A rank that is alive but unreachable (its host's link cut) raises no exception anywhere: a
blocking collective would wait for it forever. So every allreduce and broadcast here waits at
most ``CONVLIB_MPI_TIMEOUT`` seconds (default 600; 0 waits forever) and then raises
``CollectiveTimeout`` naming the rank and the call, which under ``python -m mpi4py`` ends the job.
Checkpoints of a multi-rank ``fit`` hold every rank's random generators (``rng_states``), so a
resumed run on as many ranks is bit for bit the uninterrupted one (docs/distributed.md).
"""
import os
import time

import numpy as np

from .rng import get_rng, manual_seed

__all__ = ["CollectiveTimeout", "MPIComm", "Single", "launched_size", "world"]

DEFAULT_TIMEOUT = 600.0                                             # seconds; CONVLIB_MPI_TIMEOUT overrides

_world = []


def launched_size():
    """How many ranks the MPI launcher started (1 when not under ``mpiexec``), from the variables
    MPICH/Hydra (``PMI_SIZE``), Open MPI (``OMPI_COMM_WORLD_SIZE``) and PMIx set."""
    for name in ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "PMIX_SIZE"):
        if os.environ.get(name, "").isdigit():
            return int(os.environ[name])
    return 1


class Single:
    """The communicator of one process: rank 0 of 1; every collective leaves its buffer as it is."""
    rank, size = 0, 1

    def allreduce_sum(self, buf):
        """In place: ``buf`` (a flat float array) becomes the sum of every rank's ``buf``."""
        return buf

    def broadcast(self, buf, root=0):
        """In place: every rank's ``buf`` becomes rank ``root``'s."""
        return buf

    def barrier(self):
        """Wait until every rank gets here."""

    def allgather(self, obj):
        """The list of every rank's ``obj`` (small Python objects), in rank order."""
        return [obj]


class CollectiveTimeout(TimeoutError):
    """A collective got no answer from the other ranks within the communicator's timeout."""


def timeout_from_env():
    """Seconds a collective may wait: ``CONVLIB_MPI_TIMEOUT`` (0: forever), else ``DEFAULT_TIMEOUT``."""
    text = os.environ.get("CONVLIB_MPI_TIMEOUT", "").strip()
    if not text:
        return DEFAULT_TIMEOUT
    try:
        seconds = float(text)
    except ValueError:
        seconds = -1.0
    if not seconds >= 0:
        raise ValueError(f"CONVLIB_MPI_TIMEOUT: expected seconds >= 0 (0: wait forever), got {text!r}")
    return seconds or None


class MPIComm(Single):
    """The same calls over an mpi4py communicator (default ``MPI.COMM_WORLD``); ``allreduce_sum``
    and ``broadcast`` raise ``CollectiveTimeout`` after ``timeout`` seconds (None: wait forever;
    default ``timeout_from_env()``)."""

    def __init__(self, comm=None, timeout="env"):
        from mpi4py import MPI
        self.MPI, self.comm = MPI, comm if comm is not None else MPI.COMM_WORLD
        self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()
        self.local_size = self.comm.Split_type(MPI.COMM_TYPE_SHARED).Get_size()   # ranks on this machine
        self.timeout = timeout_from_env() if timeout == "env" else timeout

    def allreduce_sum(self, buf):
        return self._wait(self.comm.Iallreduce(self.MPI.IN_PLACE, buf, op=self.MPI.SUM), buf, "allreduce")

    def broadcast(self, buf, root=0):
        return self._wait(self.comm.Ibcast(buf, root=root), buf, "broadcast")

    def barrier(self):
        self.comm.Barrier()

    def allgather(self, obj):
        return self.comm.allgather(obj)

    def _wait(self, request, buf, what):
        """``buf`` once ``request`` completes; polled (each test moves MPI's progress on, and a
        yield lets ranks that share cores compute meanwhile) until ``self.timeout`` runs out."""
        if self.timeout is None:
            request.Wait()
            return buf
        deadline = time.monotonic() + self.timeout
        while not request.Test():
            if time.monotonic() > deadline:
                raise CollectiveTimeout(
                    f"convlib.distributed: rank {self.rank} of {self.size} waited {self.timeout:g} s in an "
                    f"{what} of {buf.nbytes:,} bytes and got no answer: another rank stopped or its network "
                    f"is cut (set CONVLIB_MPI_TIMEOUT to wait longer; resume from the last checkpoint)")
            os.sched_yield()
        return buf


def world():
    """The process's communicator: ``MPIComm()`` under ``mpiexec`` with more than one rank (then
    convlib's CPU threads default to this machine's cores divided among its ranks), else
    ``Single()``. Created once."""
    if not _world:
        if launched_size() > 1:
            try:
                comm = MPIComm()
            except ImportError:
                raise ImportError("convlib.distributed: started by an MPI launcher with "
                                  f"{launched_size()} ranks, but mpi4py is not installed: "
                                  "pip install -e \".[mpi]\"") from None
            if not os.environ.get("CONVLIB_NUM_THREADS"):
                from .kernels.cpu.threads import _default_threads, set_num_threads
                set_num_threads(max(1, _default_threads() // comm.local_size))
        else:
            comm = Single()
        _world.append(comm)
    return _world[0]


def _flat(arrays, dtype=np.float64):
    """One flat host buffer holding every array of ``arrays`` in turn."""
    return np.concatenate([np.asarray(a, dtype=dtype).ravel() for a in arrays]) if arrays else np.zeros(0, dtype)


def _unflat(buf, arrays):
    """Copy the flat ``buf`` back into ``arrays`` (host arrays, in place), in turn."""
    at = 0
    for a in arrays:
        a[...] = buf[at:at + a.size].reshape(a.shape)
        at += a.size


def broadcast_state(comm, net):
    """Every rank's parameters and buffers become rank 0's."""
    if comm.size > 1:
        arrays = [a for _, a in net.named_state()]
        _unflat(comm.broadcast(_flat(arrays)), arrays)


def average_grads(comm, params, n_local, n_global, extra=()):
    """Turn each rank's mean gradient over its ``n_local`` images into the mean over all
    ``n_global`` images of the step (uneven shares weighted by size), with one allreduce. ``extra``
    (numbers, e.g. the loss sum and correct count) ride in the same buffer; their sums are returned."""
    if comm.size == 1:
        return list(extra)
    grads = [p.grad for p in params if p.requires_grad]
    buf = _flat(grads + [np.asarray(extra, dtype=np.float64)], dtype=np.result_type(*grads))   # float32 on the wire
    buf[:buf.size - len(extra)] *= n_local
    comm.allreduce_sum(buf)
    buf[:buf.size - len(extra)] /= n_global
    _unflat(buf, grads)
    return [float(v) for v in buf[buf.size - len(extra):]]


def average_buffers(comm, net):
    """Average the buffers (batch norm's running statistics) over the ranks."""
    buffers = [b for _, b in net.named_buffers()]
    if comm.size > 1 and buffers:
        _unflat(comm.allreduce_sum(_flat(buffers)) / comm.size, buffers)


def shard(n, comm):
    """The slice of ``range(n)`` (a batch of n items) that rank ``comm.rank`` takes: contiguous,
    sizes differing by at most one."""
    base, extra = divmod(n, comm.size)
    lo = comm.rank * base + min(comm.rank, extra)
    return slice(lo, lo + base + (comm.rank < extra))


def rng_states(comm, aug_rng):
    """Every rank's random generators for a checkpoint: a list (one entry per rank, in rank order)
    of {"aug": the rank's augmentation generator ``aug_rng``, "global": convlib's generator, which
    draws dropout masks}, as ``bit_generator.state`` dicts; None in one process (the checkpoint's
    own generators are all there is). A collective: every rank calls it, every rank gets the list."""
    if comm.size == 1:
        return None
    return comm.allgather({"aug": aug_rng.bit_generator.state, "global": get_rng().bit_generator.state})


def restore_rng_states(comm, states, aug_rng):
    """Set this rank's generators from a checkpoint's ``rng_states`` list. On as many ranks as
    saved, each rank goes on with its own streams, so a resumed run is bit for bit the uninterrupted
    one. On fewer ranks (the survivors of a failure), rank r takes saved rank r's streams; on more,
    a rank past the saved ones gets a stream of its own. ``states`` None (a one-process checkpoint,
    or one from before convlib saved them) and a one-process run change nothing."""
    if states is None or comm.size == 1:
        return
    if comm.rank < len(states):
        aug_rng.bit_generator.state = states[comm.rank]["aug"]
        get_rng().bit_generator.state = states[comm.rank]["global"]
    else:                                                           # drawn from rank 0's saved stream
        manual_seed([int(get_rng().integers(2 ** 62)), comm.rank])


def checkpoint_exists(comm, path):
    """Whether the checkpoint ``path`` exists, asked on every rank (a collective). ValueError naming
    the ranks that cannot see it when some can: they would start afresh while the others resume."""
    seen = comm.allgather(os.path.exists(path))
    if any(seen) and not all(seen):
        missing = [r for r, s in enumerate(seen) if not s]
        raise ValueError(f"fit: resume: rank(s) {missing} cannot find the checkpoint {path} that rank(s) "
                         f"{[r for r, s in enumerate(seen) if s]} find: put it on a filesystem every host "
                         f"shares, or copy it to every host")
    return seen[0]
