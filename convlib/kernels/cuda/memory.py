"""Device memory for the CUDA kernels: a caching pool, so that a training step, which asks for
the same sizes every time, allocates nothing on the device after its first step.

numba allocates with cuMemAlloc and frees when an array is garbage collected, in batches that
synchronise the device. Here every array the kernels make is a view of a block the pool owns:
when the last array that uses a block is collected, the block goes back on the free list for
its size instead of being freed, and the next request of that size takes it. All convlib
kernels and copies run in order on one stream, so a block taken again is only written after
the kernels that read it as its previous array have run (PyTorch's caching allocator relies on
the same order).

Sizes are rounded up to 512 bytes. If the device runs out of memory, the pool frees its idle
blocks and tries once more; ``release()`` frees them on demand. ``stats`` counts device
allocations ("allocs") and reuses ("reuses"). ``CONVLIB_CUDA_POOL=0`` turns the pool off: every
array is then allocated and freed by numba. With ``POISON`` set (checks and tests), every array
handed out starts with all its bits set, NaN in floats and -1 in ints, so an element a kernel
forgot to write shows in its result instead of an old value that happens to be right.

Why not numba's External Memory Management plug-in: it replaces the memory manager of the whole
process (every other library that uses numba.cuda), must be installed before the CUDA context
exists, and does not run in the simulator, where the tests count allocations. This pool is
convlib's own, and the tests exercise the same code that runs on a GPU, except ``_view``.
"""
import functools
import os
import weakref
from collections import defaultdict

import numpy as np
from numba import config, cuda

ROUND = 512                                        # bytes: sizes are rounded up to a multiple
ENABLED = os.environ.get("CONVLIB_CUDA_POOL", "1") != "0"
POISON = False                                     # True: arrays start as NaN (every bit set), see above
stats = {"allocs": 0, "reuses": 0}
_idle = defaultdict(list)                          # block size in bytes -> idle blocks (uint8 device arrays)


def empty(shape, dtype):
    """An uninitialised device array of ``shape`` and ``dtype``, from the pool."""
    shape = (shape,) if isinstance(shape, (int, np.integer)) else tuple(int(s) for s in shape)
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape)) * dtype.itemsize
    if not ENABLED or nbytes == 0:
        stats["allocs"] += nbytes > 0
        out = cuda.device_array(shape, dtype)
    else:
        out = _view(_take(-(-nbytes // ROUND) * ROUND), shape, dtype, nbytes)
    if POISON and nbytes:
        out.copy_to_device(np.full(nbytes, 255, np.uint8).view(dtype).reshape(shape))
    return out


def upload(x):
    """A device copy of host array ``x`` (C-contiguous), in pool memory."""
    x = np.ascontiguousarray(x)
    out = empty(x.shape, x.dtype)
    if x.size:
        out.copy_to_device(x)
    return out


def release():
    """Free every idle block (arrays in use keep theirs)."""
    _idle.clear()


def _take(size):
    if _idle[size]:
        stats["reuses"] += 1
        return _idle[size].pop()
    stats["allocs"] += 1
    try:
        return cuda.device_array(size, np.uint8)
    except Exception:                              # out of memory: free the idle blocks, try once more
        if not any(_idle.values()):
            raise
        release()
        return cuda.device_array(size, np.uint8)


def _give_back(block):
    _idle[block.size].append(block)


if config.ENABLE_CUDASIM:
    from numba.cuda.simulator.cudadrv.devicearray import FakeCUDAArray

    class _Lent:
        """The owner of a simulated array's memory: numpy views of the array keep it alive, so
        its finalizer runs when the last view is gone (numpy stops collapsing ``base`` here)."""

        def __init__(self, block, shape, dtype):
            face = dict(block._ary.__array_interface__, shape=shape, typestr=dtype.str, strides=None)
            face.pop("descr", None)
            self.__array_interface__, self.block = face, block

    def _view(block, shape, dtype, nbytes):
        owner = np.asarray(_Lent(block, shape, dtype))                  # shape, dtype; block's memory
        weakref.finalize(owner, _give_back, block)
        return FakeCUDAArray(owner)
else:
    import itertools

    from numba.cuda.cudadrv.devicearray import DeviceNDArray
    from numba.cuda.cudadrv.driver import AutoFreePointer

    _lent, _keys = {}, itertools.count()       # key -> pointer of a lent block (arrays hold weak proxies)

    def _view(block, shape, dtype, nbytes):
        """A device array over ``block``'s memory, built as numba builds its own: a reference-
        counted pointer that every reshape or slice of the array counts; when the count drops
        to zero the block goes back on the free list."""
        key = next(_keys)
        mem = block.gpu_data
        _lent[key] = ptr = AutoFreePointer(mem.context, mem.device_pointer, nbytes,
                                           finalizer=functools.partial(_returned, key, block))
        strides, step = [], dtype.itemsize                              # C order
        for n in reversed(shape):
            strides.insert(0, step)
            step *= n
        return DeviceNDArray(shape, tuple(strides), dtype, gpu_data=ptr.own())

    def _returned(key, block):
        del _lent[key]
        _give_back(block)
