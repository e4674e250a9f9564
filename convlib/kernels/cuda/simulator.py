"""A fix for numba's CUDA simulator (``NUMBA_ENABLE_CUDASIM=1``), applied when convlib's CUDA
kernels are imported under it.

The simulator runs each GPU thread as a Python thread and creates a block's shared array in
whichever thread asks first, keyed by the calling line, with no lock: two threads can both
create one and then not share it, an intermittent wrong result of a correct kernel (seen here in
the tiled product). ``make_shared_arrays_thread_safe`` does what the simulator's
``FakeCUDAShared.array`` does, under a lock.
"""
import sys
import threading
import traceback

import numpy as np


def make_shared_arrays_thread_safe():
    from numba.core import types
    from numba.cuda.simulator import kernelapi
    from numba.np import numpy_support
    original = kernelapi.FakeCUDAShared.array
    if getattr(original, "thread_safe", False):
        return
    lock = threading.Lock()

    def array(self, shape, dtype, alignment=None):
        if shape == 0 or alignment is not None:                     # dynamic shared memory: unchanged
            return original(self, shape, dtype, alignment)
        if isinstance(dtype, types.Type):
            dtype = numpy_support.as_dtype(dtype)
        caller = traceback.extract_stack(sys._getframe())[-2][0:2]  # the kernel's line
        with lock:
            if caller not in self._allocations:
                self._allocations[caller] = np.empty(shape, dtype)
            return self._allocations[caller]
    array.thread_safe = True
    kernelapi.FakeCUDAShared.array = array
