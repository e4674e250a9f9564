"""Data-parallel training over MPI; in a single process every call here is a no-op.

    mpiexec -n 2 python -m mpi4py examples/selfie_train.py     # pip install -e ".[mpi]"

``fit`` asks ``world()`` for the communicator. Launched by ``mpiexec`` with more than one rank,
it is MPI (mpi4py): rank 0's weights are broadcast at the start, each rank runs its share of
every batch (the global batch is ``batch_size``), the gradients are averaged with one allreduce
of one flat buffer per step, batch-norm running statistics are averaged at each epoch's end, and
only rank 0 shows progress and writes files. Run as plain ``python`` it is ``Single()``: size 1,
nothing is imported and nothing changes. ``python -m mpi4py`` makes an exception on one rank
abort every rank instead of leaving the others waiting in a collective.
"""
import os

import numpy as np

__all__ = ["Single", "MPIComm", "world", "launched_size"]

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


class MPIComm(Single):
    """The same calls over an mpi4py communicator (default ``MPI.COMM_WORLD``)."""

    def __init__(self, comm=None):
        from mpi4py import MPI
        self.MPI, self.comm = MPI, comm if comm is not None else MPI.COMM_WORLD
        self.rank, self.size = self.comm.Get_rank(), self.comm.Get_size()
        self.local_size = self.comm.Split_type(MPI.COMM_TYPE_SHARED).Get_size()   # ranks on this machine

    def allreduce_sum(self, buf):
        self.comm.Allreduce(self.MPI.IN_PLACE, buf, op=self.MPI.SUM)
        return buf

    def broadcast(self, buf, root=0):
        self.comm.Bcast(buf, root=root)
        return buf

    def barrier(self):
        self.comm.Barrier()


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
