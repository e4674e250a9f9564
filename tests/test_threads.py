"""The thread policy (convlib/kernels/cpu/threads.py) and the threaded paths of the CPU kernels: shares cover
the batch exactly once, partial sums from every thread are added, BLAS's thread count is
restored, no OpenMP pool is ever started; kernels agree with the reference above the sizes
where they split work over threads, with uneven shares."""
import subprocess
import sys

import numpy as np
import pytest
from threadpoolctl import threadpool_info

import convlib as cl
from convlib.kernels import backend
from convlib.kernels.cpu import threads

pytestmark = pytest.mark.compiled                  # skipped with CONVLIB_KERNELS=reference
ref, cpu = backend("reference"), backend("cpu")    # the plain maths and the Numba kernels


@pytest.fixture
def three_threads():
    before = cl.get_num_threads()
    cl.set_num_threads(3)                 # more threads than this machine's cores: uneven shares
    yield
    cl.set_num_threads(before)


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2", None])
def test_set_num_threads_rejects_non_positive_ints(bad):
    with pytest.raises(ValueError, match="positive int"):
        cl.set_num_threads(bad)


def test_parallel_for_covers_the_range_once_in_order(three_threads):
    for n in (1, 2, 3, 7, 10):
        shares = threads.parallel_for(lambda lo, hi: (lo, hi), n)
        assert shares[0][0] == 0 and shares[-1][1] == n
        assert all(a[1] == b[0] for a, b in zip(shares, shares[1:]))   # contiguous, no overlap
        assert len(shares) == min(3, n)


def test_parallel_for_pieces_run_each_piece_once_on_any_free_thread(three_threads):
    import threading
    import time
    for n, pieces in ((1, 4), (7, 4), (10, 16), (32, 16), (5, 2)):
        step = -(-n // max(3, min(pieces, n)))          # fixed by n and pieces (one per thread at least)
        ran = threads.parallel_for(lambda lo, hi: (lo, hi), n, pieces=pieces)
        assert ran == [(lo, min(n, lo + step)) for lo in range(0, n, step)]
    # the first piece holds its thread: the others go to whichever threads are free, the caller's too
    slow = threads.parallel_for(lambda lo, hi: (time.sleep(0.2 if lo == 0 else 0.001),
                                                threading.current_thread().name)[1], 12, pieces=12)
    assert slow.count(slow[0]) == 1 and len(set(slow)) == 3


def test_parallel_for_pieces_raise_what_a_piece_raised_after_all_ran(three_threads):
    ran = []

    def fn(lo, hi):
        ran.append(lo)
        if lo == 3:
            raise KeyError("piece failed")
        return lo
    with pytest.raises(KeyError, match="piece failed"):
        threads.parallel_for(fn, 9, pieces=9)
    assert sorted(ran) == list(range(9))


def test_parallel_for_runs_small_work_inline(three_threads):
    import threading
    names = threads.parallel_for(lambda lo, hi: threading.current_thread().name, 8, work=100)
    assert names == [threading.current_thread().name]


def test_parallel_for_raises_what_a_share_raised(three_threads):
    def fn(lo, hi):
        if lo > 0:
            raise KeyError("share failed")
        return lo
    with pytest.raises(KeyError, match="share failed"):
        threads.parallel_for(fn, 9)


def _blas_threads():
    return {lib["filepath"]: lib["num_threads"] for lib in threadpool_info() if lib["user_api"] == "blas"}


def test_blas_is_single_threaded_inside_and_restored_after(three_threads):
    try:
        import scipy.linalg  # noqa: F401  (a second BLAS, loaded after convlib's first use of the pool)
    except ImportError:
        pass                 # NumPy's BLAS alone is still checked
    before = _blas_threads()
    assert before and max(before.values()) > 1 or threads._default_threads() == 1
    inside = threads.parallel_for(lambda lo, hi: _blas_threads(), 6)
    assert all(counts == {k: 1 for k in before} for counts in inside)
    x = np.random.default_rng(0).standard_normal((4, 2, 6, 6)).astype(np.float32)
    cpu.conv2d_forward(x, np.ones((3, 2, 3, 3), np.float32), None, (1, 1), (1, 1))
    assert _blas_threads() == before


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("stride,padding", [((1, 1), (1, 1)), ((2, 1), (0, 2)), ((1, 2), (3, 1))])
def test_conv_threaded_matches_reference(dtype, stride, padding, three_threads):
    """7 images over 3 threads (3 + 3 + 1): every share's weight-gradient part must be added."""
    rng = np.random.default_rng(5)
    x = rng.standard_normal((7, 3, 11, 9)).astype(dtype)
    w = rng.standard_normal((4, 3, 3, 3)).astype(dtype)
    b = rng.standard_normal(4).astype(dtype)
    out_r, cache_r = ref.conv2d_forward(x, w, b, stride, padding)
    out_c, cache_c = cpu.conv2d_forward(x, w, b, stride, padding)
    tol = dict(rtol=1e-4, atol=1e-4) if dtype == np.float32 else dict(rtol=1e-10, atol=1e-10)
    np.testing.assert_allclose(out_c, out_r, **tol)
    dout = rng.standard_normal(out_r.shape).astype(dtype)
    for got, want in zip(cpu.conv2d_backward(dout, cache_c), ref.conv2d_backward(dout, cache_r)):
        np.testing.assert_allclose(got, want, **tol)


@pytest.mark.parametrize("N,IN,OUT", [(300, 200, 150), (50, 300, 600)])
def test_linear_threaded_matches_reference(N, IN, OUT, three_threads):
    """Products of 8M multiply-adds or more split over the threads: by the rows of the batch
    (N > OUT), or by the output columns (forward N <= OUT; dx and dw, whose columns are IN)."""
    rng = np.random.default_rng(7)
    x, w, b = rng.standard_normal((N, IN)), rng.standard_normal((OUT, IN)), rng.standard_normal(OUT)
    out_r, cache_r = ref.linear_forward(x, w, b)
    out_c, cache_c = cpu.linear_forward(x, w, b)
    np.testing.assert_allclose(out_c, out_r, rtol=1e-12, atol=1e-10)
    dout = rng.standard_normal(out_r.shape)
    for got, want in zip(cpu.linear_backward(dout, cache_c), ref.linear_backward(dout, cache_r)):
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-10)


@pytest.mark.parametrize("kernel,stride,padding", [((2, 2), (2, 2), (0, 0)), ((3, 2), (1, 2), (1, 1))])
def test_pools_and_relu_threaded_match_reference(kernel, stride, padding, three_threads):
    """Inputs big enough (> 2**15 elements) that pooling and ReLU split over the threads."""
    rng = np.random.default_rng(6)
    x = rng.integers(-3, 3, (7, 5, 36, 34)).astype(np.float64)     # many ties
    x[0, 0, 0, 1] = x[6, 4, 35, 33] = np.nan                        # in the first and the last share
    for kind in ("maxpool2d", "avgpool2d"):
        out_r, cache_r = getattr(ref, kind + "_forward")(x, kernel, stride, padding)
        out_c, cache_c = getattr(cpu, kind + "_forward")(x, kernel, stride, padding)
        np.testing.assert_allclose(out_c, out_r, rtol=1e-12, atol=1e-12)   # NaN where the reference has NaN
        dout = rng.standard_normal(out_r.shape)
        np.testing.assert_allclose(getattr(cpu, kind + "_backward")(dout, cache_c),
                                   getattr(ref, kind + "_backward")(dout, cache_r), rtol=1e-12, atol=1e-12)
    out_r, c_r = ref.relu_forward(x)
    out_c, c_c = cpu.relu_forward(x)
    np.testing.assert_array_equal(out_c, out_r)
    d = rng.standard_normal(x.shape)
    np.testing.assert_array_equal(cpu.relu_backward(d, c_c), ref.relu_backward(d, c_r))


@pytest.mark.parametrize("mod", [ref, cpu], ids=["reference", "cpu"])
@pytest.mark.parametrize("kernel,stride", [((2, 2), (2, 2)), ((2, 2), (1, 1))], ids=["2x2 fast path", "general"])
@pytest.mark.parametrize("where", [(0, 1), (1, 0), (0, 0)])
def test_maxpool_propagates_nan_and_sends_its_gradient_there(mod, kernel, stride, where):
    x = np.array([[[[1.0, 0.3], [0.5, 0.2]]]])
    x[0, 0][where] = np.nan
    out, cache = mod.maxpool2d_forward(x, kernel, stride, (0, 0))
    assert np.isnan(out[0, 0, 0, 0])
    dx = mod.maxpool2d_backward(np.ones_like(out), cache)
    want = np.zeros_like(x)
    want[0, 0][where] = 1
    np.testing.assert_array_equal(dx, want)


def test_training_never_starts_an_openmp_pool():
    """convlib's speed must not depend on who loaded libgomp first: it never starts Numba's
    parallel (OpenMP) pool, not even in training."""
    code = ("import numpy as np, convlib as cl, numba.np.ufunc.parallel as p\n"
            "net = cl.Sequential(cl.Conv2d(1, 4, 3, padding=1), cl.ReLU(), cl.MaxPool2d(2), cl.Flatten(),"
            " cl.Linear(4 * 8 * 8, 2))\n"
            "x = np.random.rand(40, 1, 16, 16).astype(np.float32); y = np.arange(40) % 2\n"
            "cl.fit(net, (x, y), epochs=1, batch_size=20, progress=False)\n"
            "print(p._is_initialized)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == "False"


def test_parallel_for_from_two_threads_and_nested(three_threads):
    """A second caller while the workers are busy (another thread, or a share that calls
    parallel_for itself) runs its work in its own thread: same results, no deadlock."""
    import threading

    def inner(lo, hi):
        return sum(range(lo, hi))

    def outer(lo, hi):
        return sum(threads.parallel_for(inner, 50))                  # nested
    assert threads.parallel_for(outer, 6) == [1225, 1225, 1225]
    got = []
    callers = [threading.Thread(target=lambda: got.append(sum(threads.parallel_for(inner, 1000))))
               for _ in range(4)]
    for t in callers:
        t.start()
    for t in callers:
        t.join(timeout=60)
    assert got == [499500] * 4


@pytest.mark.parametrize("C,side,group", [(1, 28, 33), (8, 40, 2), (3, 100, 1)],
                         ids=["one partial group 1x28x28", "groups of 2 8x40x40", "one by one 3x100x100"])
def test_conv_paths_for_tiny_and_large_images_match_reference(C, side, group, three_threads):
    """Images go a group per call (about 2**18 column values): a group larger than a share, groups
    of two with a partial last one, and one image per call, each against the reference over the
    uneven shares of 7 images on 3 threads (3, 3, 1), forward and backward with and without dx."""
    from convlib.kernels.cpu.conv import _group
    assert _group(C * 9 + 1, side * side) == group
    rng = np.random.default_rng(C)
    x, w, b = rng.standard_normal((7, C, side, side)), rng.standard_normal((5, C, 3, 3)), rng.standard_normal(5)
    out_r, cache_r = ref.conv2d_forward(x, w, b, (1, 1), (1, 1))
    out_c, cache_c = cpu.conv2d_forward(x, w, b, (1, 1), (1, 1))
    np.testing.assert_allclose(out_c, out_r, rtol=1e-10, atol=1e-10)
    dout = rng.standard_normal(out_r.shape)
    for need_dx in (False, True):
        _, cache_c = cpu.conv2d_forward(x, w, b, (1, 1), (1, 1))
        for got, want in zip(cpu.conv2d_backward(dout, cache_c, need_dx), ref.conv2d_backward(dout, cache_r, need_dx)):
            if want is None:
                assert got is None
            else:
                np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-9)


def test_a_forked_child_gets_its_own_workers(three_threads):
    """A child forked after the pool started has none of its threads; without a fresh pool its
    first parallel_for would wait forever."""
    import multiprocessing as mp
    if "fork" not in mp.get_all_start_methods():
        pytest.skip("this platform cannot fork")
    threads.parallel_for(lambda lo, hi: 0, 9)                       # the parent's pool exists now
    with mp.get_context("fork").Pool(1) as pool:
        got = pool.apply_async(_sum_shares, (1000,)).get(timeout=60)
    assert got == 499500


def _sum_shares(n):
    return sum(threads.parallel_for(lambda lo, hi: sum(range(lo, hi)), n))


def test_forward_in_eval_mode_is_safe_from_several_threads(three_threads):
    """A net shared between threads (the web page's requests): each thread's outputs equal the
    same forward run alone, with batches big enough that the kernels split work over the pool."""
    from concurrent.futures import ThreadPoolExecutor
    cl.manual_seed(0)
    net = cl.Sequential(cl.Conv2d(3, 8, 3, padding=1), cl.BatchNorm2d(8), cl.ReLU(), cl.MaxPool2d(2),
                        cl.Conv2d(8, 16, 3, padding=1), cl.ReLU(), cl.AvgPool2d(2), cl.Flatten(),
                        cl.Linear(16 * 8 * 8, 10), cl.Dropout(0.5)).eval()
    rng = np.random.default_rng(0)
    xs = [rng.standard_normal((n, 3, 32, 32)).astype(np.float32) for n in (16, 9, 16, 5, 12, 16)]
    want = [net(x) for x in xs]
    with ThreadPoolExecutor(6) as pool:
        for _ in range(3):
            got = list(pool.map(net, xs))
            for g, w in zip(got, want):
                np.testing.assert_array_equal(g, w)


def test_forward_gives_the_same_bits_on_one_thread_and_on_pieces_taken_by_three():
    """The direct first layer and Winograd's layers hand out their forward in pieces to whichever
    thread is free: each image's outputs (and each window's kept maximum, in training) are
    computed alike whichever thread took it, so one thread and three give the same bits."""
    cl.manual_seed(0)
    net = cl.Sequential(cl.Conv2d(3, 16, 3, padding=1), cl.ReLU(), cl.MaxPool2d(2),
                        cl.Conv2d(16, 16, 3, padding=1), cl.ReLU(), cl.MaxPool2d(2),
                        cl.Conv2d(16, 16, 3, padding=1), cl.Flatten(), cl.Linear(16 * 4 * 4, 3))
    x = np.random.default_rng(0).standard_normal((37, 3, 16, 16)).astype(np.float32)
    before = cl.get_num_threads()
    got = {}
    try:
        for n in (1, 3):
            cl.set_num_threads(n)
            net.train().zero_grad()
            logits = net(x)
            places = [u._cache[0][3].copy() for _, u in net._plan if getattr(u, "relu_pool", None)]
            dx = net.backward(np.ones_like(logits))
            got[n] = (net.eval()(x), logits, places, dx, [p.grad.copy() for p in net.parameters()])
    finally:
        cl.set_num_threads(before)
    for a, b in zip(got[1][:2], got[3][:2]):
        np.testing.assert_array_equal(a, b)
    assert len(got[1][2]) == 2
    for a, b in zip(got[1][2], got[3][2]):
        np.testing.assert_array_equal(a, b)
    for a, b in zip([got[1][3]] + got[1][4], [got[3][3]] + got[3][4]):     # sums over shares: rounding only
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_workspace_is_one_buffer_per_name_and_thread_grown_when_asked():
    """Scratch arrays: the same name gives the same memory (a bigger shape grows it, and views
    asked for before then come from the grown buffer, never the dropped one); other names and
    other threads get their own."""
    import threading
    a = threads.workspace("test_ws", (4, 8), np.float32)
    assert a.shape == (4, 8) and a.dtype == np.float32
    assert threads.workspace("test_ws", (4, 8), np.float32) is a
    assert np.shares_memory(threads.workspace("test_ws", (2, 8), np.float32), a)
    big = threads.workspace("test_ws", (64, 64), np.float32)
    assert not np.shares_memory(big, a)                                  # grown: a new buffer
    assert np.shares_memory(threads.workspace("test_ws", (4, 8), np.float32), big)
    assert not np.shares_memory(threads.workspace("test_ws_other", (4, 8), np.float32), big)
    assert threads.workspace("test_ws", (4, 8), np.float64).dtype == np.float64
    seen = []
    t = threading.Thread(target=lambda: seen.append(threads.workspace("test_ws", (4, 8), np.float32)))
    t.start()
    t.join()
    assert not np.shares_memory(seen[0], big)
