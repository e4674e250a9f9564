"""Thread and memory policy of the CPU kernels, in one place, applied at their first use.

How convlib uses the cores (measured in docs/performance.md):

- One small pool of Python threads, ``get_num_threads()`` of them (default: the cores this
  process may run on; ``set_num_threads(n)`` or ``CONVLIB_NUM_THREADS`` change it). A layer
  splits its batch into one contiguous share per thread (``parallel_for``), or a conv's forward
  into smaller pieces that each thread takes when free; each share runs plain single-threaded
  Numba kernels (``nogil``) and BLAS products, which release the GIL.
- While a share that may call BLAS runs (a Python function; Numba kernels call none), BLAS
  (NumPy's OpenBLAS or MKL) is single-threaded, so each thread's products stay on its own
  core; the previous thread count is restored after the layer, so NumPy code elsewhere in the
  process keeps its own setting.
- No OpenMP: convlib never starts Numba's parallel (OpenMP/TBB) thread pool. Its speed then
  does not depend on which library loaded libgomp first (PyTorch does), and it never leaves
  spinning workers behind that would slow PyTorch or NumPy in the same process.
- The one process-wide setting, announced in the README and docs/performance.md: at the first
  kernel call glibc is told to keep freed blocks (``mallopt``), so a training step does not
  page-fault its activations back in each time. ``CONVLIB_MALLOPT=0`` turns it off; it is
  skipped anyway where the user set any of glibc's ``MALLOC_*`` variables.
"""
import contextlib
import ctypes
import itertools
import math
import os
import sys
import threading

import numpy as np

# How every CPU kernel is compiled: cached on disk (start-up), and releasing the GIL so that the
# pool's threads run kernels at the same time.
JIT = dict(cache=True, nogil=True)

_lock = threading.Lock()
_state = {"threads": None, "pool": None, "malloc": False, "blas": None, "blas_modules": 0, "blas_users": 0,
          "blas_saved": []}


def _default_threads():
    env = os.environ.get("CONVLIB_NUM_THREADS")
    if env:
        try:
            n = int(env)
        except ValueError:
            raise ValueError(f"CONVLIB_NUM_THREADS must be a positive integer, got {env!r}") from None
        if n < 1:
            raise ValueError(f"CONVLIB_NUM_THREADS must be a positive integer, got {env!r}")
        return n
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:                                          # not Linux
        return max(1, os.cpu_count() or 1)


def get_num_threads():
    """How many threads convlib's CPU kernels use."""
    if _state["threads"] is None:
        _state["threads"] = _default_threads()
    return _state["threads"]


def set_num_threads(n):
    """Use ``n`` threads (>= 1) in convlib's CPU kernels from now on."""
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"set_num_threads: n must be a positive int, got {n!r}")
    with _lock:
        old, _state["threads"], _state["pool"] = _state["pool"], n, None
    if old is not None:
        old.close()


def _keep_freed_memory():
    """glibc hands freed blocks above its mmap threshold back to the OS and trims the heap top,
    so each training step page-faults its activations (a few MB each) back in. Keep blocks up
    to 32 MB in the heap and up to 256 MB of free heap, unless CONVLIB_MALLOPT=0 or the user set
    glibc's MALLOC_* variables; a no-op off glibc. Process-wide, like any malloc setting."""
    if _state["malloc"]:
        return
    _state["malloc"] = True
    if os.environ.get("CONVLIB_MALLOPT") == "0" or any(k.startswith("MALLOC_") for k in os.environ):
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 32 << 20)                                  # M_MMAP_THRESHOLD
        libc.mallopt(-1, 256 << 20)                                 # M_TRIM_THRESHOLD
    except (OSError, AttributeError):
        pass


def _blas_libraries():
    """threadpoolctl's controllers of the BLAS libraries loaded now. Finding them takes about a
    millisecond, so they are looked for again only when Python has imported modules since the
    last look (a new BLAS, SciPy's say, comes with an import)."""
    if _state["blas"] is None or _state["blas_modules"] != len(sys.modules):
        from threadpoolctl import ThreadpoolController
        _state["blas"] = ThreadpoolController().select(user_api="blas").lib_controllers
        _state["blas_modules"] = len(sys.modules)
    return _state["blas"]


@contextlib.contextmanager
def _single_threaded_blas():
    """BLAS at one thread inside the block (for every caller at once); the previous counts after.
    A library already at one thread is left alone (a process that keeps BLAS at one thread, as
    the web server does, then pays only the look)."""
    with _lock:
        if _state["blas_users"] == 0:
            _state["blas_saved"] = [(lib, n) for lib in _blas_libraries() if (n := lib.get_num_threads()) != 1]
            for lib, _ in _state["blas_saved"]:
                lib.set_num_threads(1)
        _state["blas_users"] += 1
    try:
        yield
    finally:
        with _lock:
            _state["blas_users"] -= 1
            if _state["blas_users"] == 0:
                for lib, n in _state["blas_saved"]:
                    lib.set_num_threads(n)


class _Workers:
    """``n`` worker threads, each waiting on its own semaphore for a share to run: a
    parallel_for's hand-offs cost about 40 microseconds here, half a ThreadPoolExecutor's. One
    caller at a time: a second caller (another Python thread, or a share that calls
    parallel_for itself) finds them busy and runs its work in its own thread."""

    def __init__(self, n):
        self.busy = threading.Lock()
        self.tasks = [None] * n
        self.go, self.done = [threading.Semaphore(0) for _ in range(n)], threading.Semaphore(0)
        for i in range(n):
            threading.Thread(target=self._serve, args=(i,), name=f"convlib-{i + 1}", daemon=True).start()

    def _serve(self, i):
        while True:
            self.go[i].acquire()
            if self.tasks[i] is None:                               # close()
                return
            self.tasks[i][0](*self.tasks[i][1:])
            self.done.release()

    def run(self, fn, shares, args, taken=False):
        """[fn(lo, hi, *args) for each share], in order. Shares go one per thread (the first in the
        caller's), or with taken, to whichever thread is free next, the caller's too."""
        if not self.busy.acquire(blocking=False):
            return [fn(*share, *args) for share in shares] if taken else [fn(0, shares[-1][1], *args)]
        try:
            results = [None] * len(shares)
            if taken:
                nxt = itertools.count()                             # next() is atomic under the GIL
                task = (_take, nxt, shares, fn, args, results)
                helpers = min(len(self.tasks), len(shares) - 1)
            else:
                task, helpers = None, len(shares) - 1
            for i in range(helpers):
                self.tasks[i] = task or (_one, shares[i + 1], fn, args, results, i + 1)
                self.go[i].release()
            try:
                if taken:
                    _take(nxt, shares, fn, args, results)
                else:
                    _one(shares[0], fn, args, results, 0)
            finally:
                for _ in range(helpers):                            # every share ends before we return
                    self.done.acquire()
                self.tasks[:helpers] = [None] * helpers             # keep no array of this call alive
            for ok, value in results:
                if not ok:
                    raise value
            return [value for _, value in results]
        finally:
            self.busy.release()

    def close(self):
        """End the workers, once a call that is running has finished."""
        with self.busy:
            for i in range(len(self.tasks)):
                self.tasks[i] = None
                self.go[i].release()


def _one(share, fn, args, results, i):
    """results[i] = (True, fn(lo, hi, *args)) for share (lo, hi), or (False, the exception)."""
    try:
        results[i] = (True, fn(*share, *args))
    except BaseException as e:                                      # re-raised in the caller
        results[i] = (False, e)


def _take(nxt, shares, fn, args, results):
    """Run the shares not yet taken, one at a time, until none is left."""
    while (i := next(nxt)) < len(shares):
        _one(shares[i], fn, args, results, i)


def _after_fork_in_child():
    """A forked child has none of the parent's worker threads: start afresh (on first use)."""
    global _lock
    _lock = threading.Lock()
    _state.update(pool=None, blas=None, blas_users=0, blas_saved=[])


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


def _workers():
    with _lock:
        if _state["pool"] is None:
            _state["pool"] = _Workers(get_num_threads() - 1)
        return _state["pool"]


def parallel_for(fn, n, *args, work=None, pieces=None):
    """Run ``fn(lo, hi, *args)`` over contiguous shares of ``range(n)``, one per thread, and
    return the list of its results in order. The caller's thread takes the first share.
    ``work`` (elements touched, if given) below 2**15 runs everything in the caller's thread:
    handing shares to other threads and back costs about 40 microseconds. BLAS is held at one
    thread meanwhile, unless ``fn`` is a Numba kernel (those call no BLAS; the hold costs
    about 15 microseconds, a tenth of a small pool's time).

    With ``pieces``, range(n) is cut into that many shares instead, each taken by whichever
    thread is free next: where the shares cost alike but the cores may not run alike (a core
    that the machine shares with other work), the free thread takes more of them, rather than
    wait for the slow one at the end."""
    _keep_freed_memory()
    threads = min(get_num_threads(), n)
    with contextlib.nullcontext() if hasattr(fn, "py_func") else _single_threaded_blas():
        if threads <= 1 or (work is not None and work < 2 ** 15):
            return [fn(0, n, *args)]
        step = -(-n // (threads if pieces is None else max(threads, min(pieces, n))))
        return _workers().run(fn, [(lo, min(n, lo + step)) for lo in range(0, n, step)], args, pieces is not None)


_local = threading.local()


def workspace(name, shape, dtype):
    """A scratch array reused from call to call (one per name, dtype and thread), grown when a
    bigger one is asked for. Column matrices live here, a small group of images' at a time per
    thread, so they stay in the core's L2 cache between being written and being multiplied.
    The view of each shape asked for is kept too: a kernel asks for a few arrays per group of
    images, and building a view costs microseconds of Python under the GIL each time."""
    views = _local.__dict__.setdefault("views", {})
    view = views.get((name, shape, dtype))
    if view is None:
        key = (name, np.dtype(dtype).str)
        size = math.prod(shape)                                     # (np.prod: 5 us, a tenth of a small conv)
        buffers = _local.__dict__.setdefault("buffers", {})
        buf = buffers.get(key)
        if buf is None or buf.size < size:
            buf = buffers[key] = np.empty(size, dtype=dtype)
            views.clear()                                           # none may keep an old buffer alive
        if len(views) >= 256:                                       # a bound, for shapes that keep changing
            views.clear()
        view = views[(name, shape, dtype)] = buf[:size].reshape(shape)
    return view
