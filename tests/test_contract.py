"""The kernel contract (convlib/kernels/__init__.py): the ops declared in reference.py with @op.

One test per op family, derived from the registry: each backend (cpu; cuda on a GPU or in numba's
simulator) against the reference maths, forward and backward, in float64 and float32, on the
edge cases each op must get right (ties, NaN, padding, overlapping windows, exp overflow, a ReLU's
kink). An op declared without a case here fails test_every_op_has_a_case. Backend-specific paths
have their own modules: the CPU's fast paths in test_kernels.py and test_threads.py, the CUDA
products, dropout streams and whole steps in test_cuda.py."""
import functools
import os
import sys

import numpy as np
import pytest

import convlib as cl
from convlib.kernels import OPS, backend, signature_mismatches

BACKENDS = ["cpu", "cuda"]
REFERENCE_ONLY = os.environ.get("CONVLIB_KERNELS") == "reference"


def _family(op):
    """conv2d for conv2d_forward and conv2d_backward; the op's own name otherwise."""
    return op.removesuffix("_forward").removesuffix("_backward")


FAMILIES = list(dict.fromkeys(_family(op) for op in OPS))           # in declaration order
CASES = {}                                                          # family -> case


def case(*families):
    """Register a case for op families: it runs their ops through a KernelSet ``k`` on arrays moved
    to the backend's device by ``to``, and returns host arrays to compare with the reference's."""
    def register(fn):
        CASES.update(dict.fromkeys(families, fn))
        return fn
    return register


def _kernels(name):
    """(KernelSet, move to the backend's device) for an available backend, else skip."""
    if name == "cpu":
        if REFERENCE_ONLY:
            pytest.skip("CONVLIB_KERNELS=reference: the compiled CPU kernels are off")
        return backend("cpu"), np.array                              # a copy, as to_device makes
    if not cl.cuda_available():
        pytest.skip("numba.cuda has neither a GPU nor the simulator here")
    return backend("cuda"), cl.to_device


DTYPE = np.float64                                                 # set per test by the dtype parameter


def _x(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape).astype(DTYPE)


@case("conv2d")
def conv2d(k, to):
    x, w, b, dout = _x((2, 3, 5, 6)), _x((4, 3, 3, 2), 1), _x(4, 2), _x((2, 4, 3, 7), 3)
    out, cache = k.conv2d_forward(to(x), to(w), to(b), (2, 1), (1, 1))
    dx, dw, db = k.conv2d_backward(to(dout), cache, True)
    _, cache = k.conv2d_forward(to(x), to(w), None, (2, 1), (1, 1))
    none_dx, dw2, none_db = k.conv2d_backward(to(dout), cache, False)
    assert none_dx is None and none_db is None
    x, w = _x((1, 2, 6, 5), 4), _x((3, 2, 2, 3), 5)                 # a kernel wider than tall, no bias
    out2, cache = k.conv2d_forward(to(x), to(w), None, (2, 1), (0, 1))
    dx2, dw3, _ = k.conv2d_backward(to(_x((1, 3, 3, 5), 6)), cache, True)
    return [out, dx, dw, db, dw2, out2, dx2, dw3]


@case("conv2d_pool")
def conv2d_pool(k, to):
    """Conv2d, ReLU and MaxPool2d as one op: the CPU's one-pass path (1-3 input channels, 3x3,
    stride 1, a 2x2 pool; odd sizes, ties and a NaN) with and without dx, and the ops in turn;
    without a pool, conv then ReLU (Winograd's output pass on the CPU: 16 channels, zeros, a NaN)."""
    rng = np.random.default_rng(7)
    x = rng.integers(-2, 3, (2, 3, 7, 6)).astype(DTYPE)             # small integers: ties in the windows
    x[1, 2, 3, 3] = np.nan
    w, b = rng.integers(-1, 2, (4, 3, 3, 3)).astype(DTYPE), rng.integers(-1, 2, 4).astype(DTYPE)   # exact sums
    got = []
    for need_dx in (True, False):
        out, cache = k.conv2d_pool_forward(to(x), to(w), to(b), (1, 1), (1, 1), ((2, 2), (2, 2), (0, 0)))
        got += [out, *(g for g in k.conv2d_pool_backward(to(_x((2, 4, 3, 3), 3)), cache, need_dx) if g is not None)]
    out, cache = k.conv2d_pool_forward(to(_x((2, 3, 6, 5))), to(w), None, (1, 1), (0, 1), ((3, 2), (1, 2), (1, 1)))
    dx, dw, db = k.conv2d_pool_backward(to(_x(cl.to_host(out).shape, 4)), cache, True)
    assert db is None
    x16 = rng.integers(-2, 3, (2, 16, 5, 7)).astype(DTYPE)
    x16[0, 3, 2, 2] = np.nan
    w16 = rng.integers(-1, 2, (16, 16, 3, 3)).astype(DTYPE)
    out16, cache = k.conv2d_pool_forward(to(x16), to(w16), to(rng.integers(-1, 2, 16).astype(DTYPE)), (1, 1), (1, 1),
                                         None)
    host = cl.to_host(out16)
    assert np.isnan(host).any() and (host == 0).any() and (host > 0).any() and not (host < 0).any()
    return got + [out, dx, dw, out16, *k.conv2d_pool_backward(to(_x(host.shape, 5)), cache, True)]


def _pool(k, to, forwards, backward):
    x = np.random.default_rng(4).integers(-2, 3, (2, 3, 7, 6)).astype(DTYPE)   # ties
    x[0, 0, 1, 1] = np.nan
    got = []
    for kernel, stride, padding in [((2, 2), (2, 2), (0, 0)), ((3, 2), (1, 2), (1, 1))]:
        for forward in forwards:
            out, cache = forward(to(x), kernel, stride, padding)
            got += [out, backward(to(_x(cl.to_host(out).shape, 5)), cache)]
    return got


@case("maxpool2d")
def maxpool2d(k, to):
    relu_max = functools.partial(k.maxpool2d_forward, relu=True)   # ReLU then MaxPool2d, one op
    return _pool(k, to, [k.maxpool2d_forward, relu_max], k.maxpool2d_backward)


@case("avgpool2d")
def avgpool2d(k, to):
    return _pool(k, to, [k.avgpool2d_forward], k.avgpool2d_backward)


@case("global_avgpool2d")
def global_avgpool2d(k, to):
    out, cache = k.global_avgpool2d_forward(to(_x((2, 3, 4, 5))))
    return [out, k.global_avgpool2d_backward(to(_x((2, 3, 1, 1), 6)), cache)]


@case("linear")
def linear(k, to):
    x, w, b, dout = _x((5, 4)), _x((3, 4), 1), _x(3, 2), _x((5, 3), 3)
    out, cache = k.linear_forward(to(x), to(w), to(b))
    got = [out, *k.linear_backward(to(dout), cache, True)]
    none_dx, dw, db = k.linear_backward(to(dout), cache, False)
    assert none_dx is None
    return got + [dw, db]


@case("relu", "leaky_relu", "sigmoid", "tanh")
def pointwise(k, to):
    xs, d = _x((2, 3, 4), 7) * 3, _x((2, 3, 4), 8)
    xs[0, 0, :3] = [0.0, -800.0, np.nan]                            # the kink, exp overflow, NaN kept
    got = []
    for fwd, bwd, args in [(k.relu_forward, k.relu_backward, ()), (k.leaky_relu_forward, k.leaky_relu_backward, (0.1,)),
                           (k.sigmoid_forward, k.sigmoid_backward, ()), (k.tanh_forward, k.tanh_backward, ())]:
        out, cache = fwd(to(xs), *args)
        got += [out, bwd(to(d), cache)]
    return got


@case("dropout")
def dropout(k, to):
    """Masks differ between backends (each has its own generator): check what they must share."""
    cl.manual_seed(0)
    x, d = np.ones((40, 50), DTYPE), _x((40, 50), 1)
    out, mask = k.dropout_forward(to(x), 0.25, cl.rng.get_rng())
    out, dx = cl.to_host(out), cl.to_host(k.dropout_backward(to(d), mask))
    assert set(np.unique(out)) <= {0.0, DTYPE(1 / 0.75)} and 0.2 < (out == 0).mean() < 0.3
    np.testing.assert_allclose(dx, d * out)                         # the forward's own mask
    masks = [cl.to_host(k.dropout_forward(to(x), 0.25, np.random.default_rng(s))[1]) for s in (7, 7, 8)]
    np.testing.assert_array_equal(masks[0], masks[1])               # same seed, same mask
    assert not np.array_equal(masks[0], masks[2])
    return []


@case("batchnorm")
def batchnorm(k, to):
    got = []
    for shape, training in [((4, 3, 2, 5), True), ((4, 3, 2, 5), False), ((6, 3), True), ((2, 3, 1, 7), True)]:
        x, d = _x(shape) * 2 + 1, _x(shape, 1)
        gamma, beta = np.linspace(0.5, 2, 3, dtype=DTYPE), np.array([0.1, -0.2, 0.3], DTYPE)
        rm, rv = to(np.array([0.5, -1.0, 0.0], DTYPE)), to(np.array([1.0, 2.0, 0.5], DTYPE))
        out, cache = k.batchnorm_forward(to(x), to(gamma), to(beta), rm, rv, 0.1, 1e-5, training)
        got += [out, rm, rv, *k.batchnorm_backward(to(d), cache)]
    return got


@case("batchnorm_pool")
def batchnorm_pool(k, to):
    """BatchNorm2d, ReLU and MaxPool2d as one op: the CPU's one-pass path (a 2x2 pool on even
    sizes; ties, a NaN, a negative gamma, windows all below zero) in training and eval, and the
    ops in turn (odd sizes, another pool)."""
    rng = np.random.default_rng(9)
    x = rng.integers(-2, 3, (3, 3, 6, 8)).astype(DTYPE)             # small integers: ties in the windows
    x[1, 2, 3, 3] = np.nan
    gamma, beta = np.array([0.5, -1.5, 2.0], DTYPE), np.array([0.1, -3.0, 0.3], DTYPE)
    got = []
    for x, pool, training in [(x, ((2, 2), (2, 2), (0, 0)), True), (x, ((2, 2), (2, 2), (0, 0)), False),
                              (_x((2, 3, 5, 7)), ((2, 2), (2, 2), (0, 0)), True),
                              (_x((2, 3, 6, 5)), ((3, 2), (1, 2), (1, 1)), True)]:
        rm, rv = to(np.array([0.5, -1.0, 0.0], DTYPE)), to(np.array([1.0, 2.0, 0.5], DTYPE))
        out, cache = k.batchnorm_pool_forward(to(x), to(gamma), to(beta), rm, rv, 0.1, 1e-5, training, pool)
        got += [out, rm, rv, *k.batchnorm_pool_backward(to(_x(cl.to_host(out).shape, 3)), cache)]
    return [np.nan_to_num(cl.to_host(g), nan=7.0) for g in got]


@case("groupnorm")
def groupnorm(k, to):
    got = []
    for shape, groups, affine in [((3, 6, 2, 5), 3, True), ((2, 4, 3), 1, True), ((2, 4, 2, 2), 4, False)]:
        x, d = _x(shape) * 2 + 1, _x(shape, 1)
        gamma, beta = (to(np.linspace(0.5, 2, shape[1], dtype=DTYPE)), to(_x(shape[1], 2))) if affine else (None, None)
        out, cache = k.groupnorm_forward(to(x), groups, gamma, beta, 1e-5)
        got += [out, *(g for g in k.groupnorm_backward(to(d), cache) if g is not None)]
    return got


@case("log_softmax", "softmax", "softmax_cross_entropy", "all_finite")
def loss(k, to):
    logits = _x((6, 4)) * 30                                        # far apart: exp would overflow
    logits[4] = [1.0, 3.0, 3.0, 0.0]                                # a tie: the first maximum counts
    y = np.array([0, 3, 1, 2, 2, 0])                                # labels stay on the host
    got = [k.log_softmax(to(logits)), k.softmax(to(logits))]
    for eps in (0.0, 0.1):
        got += k.softmax_cross_entropy(to(logits), y, eps)
    assert cl.to_host(got[2])[1, 4] == 0                            # the tie is classified as 1, not 2
    for bad in (np.inf, np.nan):
        worse = logits.copy()
        worse[2, 1] = bad
        assert k.all_finite(to(logits)) is True and k.all_finite(to(worse)) is False
        got += k.softmax_cross_entropy(to(worse), y, 0.0)[:1]        # row 2: loss NaN, not counted right
    return got


def _params():
    """Three parameters of sizes 7, 1 and 2x3, and their gradients: updates take lists."""
    return [_x(7), _x(1, 2), _x((2, 3), 3)], [_x(7, 1), _x(1, 4), _x((2, 3), 5)]


@case("sgd_step")
def sgd_step(k, to):
    ps, g = _params()
    p0 = [to(p) for p in ps]
    k.sgd_step(p0, [to(gi) for gi in g], None, 0.1, 0.0, 0.0, False)  # plain SGD: no momentum buffers
    bufs, p1 = [k.zeros_like(to(p)) for p in ps], [to(p) for p in ps]
    for nesterov in (False, True):
        for _ in range(3):
            k.sgd_step(p1, [to(gi) for gi in g], bufs, 0.1, 0.9, 1e-2, nesterov)
    return [*p0, *p1, *bufs]


@case("adam_step")
def adam_step(k, to):
    ps, g = _params()
    got = []
    for decoupled in (False, True):
        p2, m, v = [to(p) for p in ps], [k.zeros_like(to(p)) for p in ps], [k.zeros_like(to(p)) for p in ps]
        for t in (1, 2, 3):
            k.adam_step(p2, [to(gi) for gi in g], m, v, 1e-2, 0.9, 0.99, 1e-8, 1e-2, decoupled, t)
        got += [*p2, *m, *v]
    return got


@case("zeros_like", "zero_", "add", "accumulate")
def arrays(k, to):
    a, b = _x((2, 3)), _x((2, 3), 1)
    acc, zeroed = to(a), to(b)
    k.accumulate(acc, to(b))
    k.zero_(zeroed)
    return [acc, zeroed, k.zeros_like(to(a)), k.add(to(a), to(b))]


def test_every_op_has_a_case():
    assert [f for f in FAMILIES if f not in CASES] == [], "ops declared in reference.py without a case here"


RUNS = list(dict.fromkeys(CASES[f] for f in FAMILIES if f in CASES))   # each case once, in declaration order


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # the simulator's inf - inf
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("backend_name", BACKENDS)
@pytest.mark.parametrize("run", RUNS, ids=[run.__name__ for run in RUNS])
def test_backend_matches_reference(backend_name, run, dtype, monkeypatch):
    monkeypatch.setattr(sys.modules[__name__], "DTYPE", dtype)
    tol = dict(rtol=1e-9, atol=1e-12) if dtype == np.float64 else dict(rtol=2e-4, atol=2e-5)
    k, to = _kernels(backend_name)
    ops = [op for op in OPS if CASES.get(_family(op)) is run]
    lacking = sorted(op for op in ops if op not in k.own and backend_name == "cuda")
    if lacking:                                   # a documented gap: a clear error, not a wrong result
        with pytest.raises(NotImplementedError, match=f"the cuda kernels have no '({'|'.join(lacking)})'"):
            run(k, to)
        return
    want = run(backend("reference"), np.array)
    got = run(k, to)
    assert len(got) == len(want)
    for g, w in zip(got, want):
        g = cl.to_host(g)
        assert g.shape == np.shape(w) and g.dtype == np.asarray(w).dtype
        np.testing.assert_allclose(g, w, **tol)


@pytest.mark.parametrize("name", ["cpu", "cuda"])
def test_backend_names_and_signatures_match_the_contract(name):
    if name == "cuda" and not cl.cuda_available():
        pytest.skip("numba.cuda has neither a GPU nor the simulator here")
    import importlib
    assert signature_mismatches(importlib.import_module(f"convlib.kernels.{name}")) == []


def test_reference_implements_every_op_and_missing_ops_say_so():
    assert backend("reference").own == sorted(OPS)
    from convlib.kernels import KernelSet
    empty = KernelSet("empty", object())
    with pytest.raises(NotImplementedError, match="the empty kernels have no 'conv2d_forward'"):
        empty.conv2d_forward(np.zeros((1, 1, 3, 3)), np.zeros((1, 1, 1, 1)), None, (1, 1), (0, 0))
    assert backend("cpu").dropout_forward is OPS["dropout_forward"]  # the CPU falls back to the maths
