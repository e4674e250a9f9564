"""The CPU kernels' fast paths against the NumPy reference over many generated geometries (conv
strides and padding, pools with ties and NaN, the 2x2 pool's two loops, shapes past the
threading thresholds), and the reference itself against a direct loop over every output (a
second, naive oracle). Every op on fixed edge cases: test_contract.py."""
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from convlib.kernels import backend
from strategies import large_geometry, pool_values, seeds, window_geometry

pytestmark = pytest.mark.compiled                  # skipped with CONVLIB_KERNELS=reference
ref, cpu = backend("reference"), backend("cpu")    # the plain maths and the Numba kernels

TOL = {np.float32: dict(rtol=1e-4, atol=1e-5), np.float64: dict(rtol=1e-10, atol=1e-12)}


def _conv_args(g, rng, dtype, F=3):
    x = rng.standard_normal((g["N"], g["C"], g["H"], g["W"])).astype(dtype)
    w = rng.standard_normal((F, g["C"], *g["kernel"])).astype(dtype)
    b = rng.standard_normal(F).astype(dtype)
    return x, w, b


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@given(g=window_geometry(), seed=seeds, bias=st.booleans())
def test_conv2d_cpu_matches_reference(dtype, g, seed, bias):
    rng = np.random.default_rng(seed)
    x, w, b = _conv_args(g, rng, dtype)
    b = b if bias else None
    out_r, cache_r = ref.conv2d_forward(x, w, b, g["stride"], g["padding"])
    out_c, cache_c = cpu.conv2d_forward(x, w, b, g["stride"], g["padding"])
    assert out_c.dtype == dtype and out_c.shape == out_r.shape
    np.testing.assert_allclose(out_c, out_r, **TOL[dtype])
    dout = rng.standard_normal(out_r.shape).astype(dtype)
    for got, want in zip(cpu.conv2d_backward(dout, cache_c), ref.conv2d_backward(dout, cache_r)):
        if want is None:
            assert got is None
        else:
            assert got.dtype == dtype
            np.testing.assert_allclose(got, want, **TOL[dtype])


# ---------------------------------------------------------------- Winograd F(4x4, 3x3)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@settings(max_examples=15)
@given(N=st.integers(1, 5), C=st.sampled_from([16, 17, 24]), F=st.sampled_from([16, 19, 32]), H=st.integers(1, 19),
       W=st.integers(1, 19), pad=st.integers(0, 2), seed=seeds)
def test_winograd_conv_matches_reference_forward_and_backward(dtype, N, C, F, H, W, pad, seed):
    """3x3 stride-1 convolutions with 16 or more channels take F(4x4, 3x3), forward and input
    gradient: every size (partial edge tiles), every padding it takes, channel counts that are
    not multiples of 4 (the output's last rows are written 4 filters at a time), against the
    float64 maths.
    float32 error stays within the contract test's tolerance (2e-4 relative to the output's scale)."""
    from convlib.kernels.cpu import winograd
    H, W = max(H, 3 - 2 * pad), max(W, 3 - 2 * pad)                # an output of at least 1x1
    assert winograd.applies((F, C, 3, 3), (1, 1), (pad, pad))
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((N, C, H, W))
    w = rng.standard_normal((F, C, 3, 3)) / np.sqrt(9 * C)
    b = rng.standard_normal(F)
    out_r, cache_r = ref.conv2d_forward(x, w, b, (1, 1), (pad, pad))
    out_c, cache_c = cpu.conv2d_forward(x.astype(dtype), w.astype(dtype), b.astype(dtype), (1, 1), (pad, pad))
    tol = 2e-4 if dtype == np.float32 else 1e-11
    assert out_c.dtype == dtype and out_c.shape == out_r.shape
    np.testing.assert_allclose(out_c, out_r, rtol=0, atol=tol * np.abs(out_r).max())
    dout = rng.standard_normal(out_r.shape)
    dx_c, dw_c, db_c = cpu.conv2d_backward(dout.astype(dtype), cache_c)
    for got, want in zip((dx_c, dw_c, db_c), ref.conv2d_backward(dout, cache_r)):
        assert got.dtype == dtype
        np.testing.assert_allclose(got, want, rtol=0, atol=tol * np.abs(want).max())


def test_winograd_gradients_against_central_differences(rng):
    import convlib as cl
    from convlib.gradcheck import check_layer
    errs = check_layer(cl.Conv2d(16, 16, 3, padding=1), rng.standard_normal((2, 16, 6, 5)))   # float64, Winograd
    assert set(errs) == {"x", "weight", "bias"}


def test_winograd_takes_only_what_it_computes():
    from convlib.kernels.cpu import winograd
    assert winograd.applies((16, 16, 3, 3), (1, 1), (1, 1))
    for shape, stride, padding in [((16, 8, 3, 3), (1, 1), (1, 1)), ((16, 16, 3, 3), (2, 1), (1, 1)),
                                   ((16, 16, 5, 5), (1, 1), (2, 2)), ((16, 16, 3, 3), (1, 1), (3, 1))]:
        assert not winograd.applies(shape, stride, padding)


def test_winograd_groups_depend_on_the_batch_not_the_threads(three_threads):
    """The same images give bit-identical outputs whether run alone, in a batch split over
    threads, or in one thread with others (BLAS may round a product of another size otherwise)."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((9, 16, 12, 12)).astype(np.float32)
    w = rng.standard_normal((16, 16, 3, 3)).astype(np.float32)
    b = rng.standard_normal(16).astype(np.float32)
    whole = cpu.conv2d_forward(x, w, b, (1, 1), (1, 1))[0]
    import convlib as cl
    cl.set_num_threads(1)
    np.testing.assert_array_equal(cpu.conv2d_forward(x, w, b, (1, 1), (1, 1))[0], whole)


@pytest.mark.parametrize("x_shape,F", [((32, 16, 32, 32), 32), ((32, 32, 16, 16), 64), ((32, 64, 8, 8), 64),
                                       ((128, 16, 14, 14), 32), ((128, 32, 7, 7), 64), ((64, 16, 9, 9), 16)])
def test_winograd_groups_share_evenly_among_2_or_4_threads(x_shape, F):
    from convlib.kernels.cpu import winograd
    g, groups = winograd.group(x_shape, F, (1, 1))
    assert groups % 4 == 0 and g * groups == x_shape[0]           # equal groups, a multiple of 4 of them


def test_winograd_gives_the_same_values_each_time_on_two_threads():
    """Two threads multiplying at once must not change the values: with both operands of the 36
    products transposed, OpenBLAS on an AVX-512 Xeon gave wrong input gradients in 3-4% of runs
    of this geometry (the second thread's last group, one image), found by the test above."""
    import convlib as cl
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 24, 11, 12)).astype(np.float32)
    w = (rng.standard_normal((32, 24, 3, 3)) / 15).astype(np.float32)
    threads = cl.get_num_threads()
    cl.set_num_threads(2)
    try:
        out, cache = cpu.conv2d_forward(x, w, None, (1, 1), (0, 0))
        dout = rng.standard_normal(out.shape).astype(np.float32)
        first = cpu.conv2d_backward(dout, cache)
        for _ in range(200):
            np.testing.assert_array_equal(cpu.conv2d_forward(x, w, None, (1, 1), (0, 0))[0], out)
            for got, want in zip(cpu.conv2d_backward(dout, cache), first):
                np.testing.assert_array_equal(got, want)
    finally:
        cl.set_num_threads(threads)


def test_winograd_filters_are_kept_only_while_the_weights_hold_the_same_values(rng):
    from convlib.kernels.cpu import winograd
    x = rng.standard_normal((2, 16, 6, 6)).astype(np.float32)
    w = rng.standard_normal((16, 16, 3, 3)).astype(np.float32)
    b = np.zeros(16, np.float32)
    U = winograd.transformed(w)
    assert winograd.transformed(w) is U                             # the same values: kept
    w[3, 2, 1, 0] += 1                                              # an optimizer step, in place
    assert winograd.transformed(w) is not U
    np.testing.assert_array_equal(winograd.transformed(w), winograd.filters(w))
    w *= 2                                                          # and the next forward uses it
    out = cpu.conv2d_forward(x, w, b, (1, 1), (1, 1))[0]
    want = ref.conv2d_forward(x.astype(np.float64), w.astype(np.float64), b, (1, 1), (1, 1))[0]
    np.testing.assert_allclose(out, want, rtol=0, atol=2e-4 * np.abs(want).max())


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kind", ["maxpool2d", "avgpool2d"])
@given(g=window_geometry(), seed=seeds)
def test_pool_cpu_matches_reference(dtype, kind, g, seed):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((g["N"], g["C"], g["H"], g["W"])).astype(dtype)
    args = (g["kernel"], g["stride"], g["padding"])
    out_r, cache_r = getattr(ref, kind + "_forward")(x, *args)
    out_c, cache_c = getattr(cpu, kind + "_forward")(x, *args)
    assert out_c.dtype == dtype
    np.testing.assert_allclose(out_c, out_r, **TOL[dtype])
    dout = rng.standard_normal(out_r.shape).astype(dtype)
    dx_r = getattr(ref, kind + "_backward")(dout, cache_r)
    dx_c = getattr(cpu, kind + "_backward")(dout, cache_c)
    assert dx_c.dtype == dtype and dx_c.shape == x.shape
    np.testing.assert_allclose(dx_c, dx_r, **TOL[dtype])


def _naive_conv(x, w, b, stride, padding):
    """Seven nested loops: the textbook definition, used only to check the reference."""
    (sh, sw), (ph, pw) = stride, padding
    N, C, H, W = x.shape
    F, _, KH, KW = w.shape
    OH, OW = (H + 2 * ph - KH) // sh + 1, (W + 2 * pw - KW) // sw + 1
    out = np.zeros((N, F, OH, OW))
    for n in range(N):
        for f in range(F):
            for oh in range(OH):
                for ow in range(OW):
                    s = b[f]
                    for c in range(C):
                        for i in range(KH):
                            for j in range(KW):
                                h, v = oh * sh - ph + i, ow * sw - pw + j
                                if 0 <= h < H and 0 <= v < W:
                                    s += x[n, c, h, v] * w[f, c, i, j]
                    out[n, f, oh, ow] = s
    return out


@given(g=window_geometry(), seed=seeds)
def test_reference_conv_matches_textbook_loops(g, seed):
    x, w, b = _conv_args(g, np.random.default_rng(seed), np.float64)
    out, _ = ref.conv2d_forward(x, w, b, g["stride"], g["padding"])
    np.testing.assert_allclose(out, _naive_conv(x, w, b, g["stride"], g["padding"]), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("mod", [ref, cpu], ids=["reference", "cpu"])
def test_maxpool_ties_send_gradient_to_first_maximum(mod):
    x = np.ones((1, 1, 2, 2))                                       # all four tie
    out, cache = mod.maxpool2d_forward(x, (2, 2), (2, 2), (0, 0))
    dx = mod.maxpool2d_backward(np.full((1, 1, 1, 1), 3.0), cache)
    np.testing.assert_array_equal(dx[0, 0], [[3.0, 0.0], [0.0, 0.0]])


@pytest.mark.parametrize("mod", [ref, cpu], ids=["reference", "cpu"])
def test_maxpool_padding_is_never_the_maximum(mod):
    x = -np.arange(1.0, 10.0).reshape(1, 1, 3, 3)                 # all negative: zero padding would win
    out, _ = mod.maxpool2d_forward(x, (3, 3), (1, 1), (1, 1))
    assert out[0, 0, 0, 0] == -1.0 and out.max() < 0


@pytest.mark.parametrize("mod", [ref, cpu], ids=["reference", "cpu"])
def test_avgpool_counts_padding_in_divisor(mod):
    x = np.ones((1, 1, 2, 2))
    out, _ = mod.avgpool2d_forward(x, (2, 2), (2, 2), (1, 1))       # each corner window holds one 1
    np.testing.assert_allclose(out, np.full((1, 1, 2, 2), 0.25))


@given(g=window_geometry(), seed=seeds)
def test_pool_outputs_lie_within_input_bounds(g, seed):
    x = np.random.default_rng(seed).standard_normal((g["N"], g["C"], g["H"], g["W"]))
    args = (g["kernel"], g["stride"], g["padding"])
    mx, _ = cpu.maxpool2d_forward(x, *args)
    av, _ = cpu.avgpool2d_forward(x, *args)
    assert mx.max() <= x.max() and mx.min() >= x.min()
    assert av.max() <= max(x.max(), 0) + 1e-12 and av.min() >= min(x.min(), 0) - 1e-12
    if g["padding"] == (0, 0):                                      # a window's max is at least its mean
        assert np.all(mx >= av - 1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(2, 3, 7, 9), (1, 2, 8, 8), (3, 1, 2, 5), (2, 2, 5, 69),
                                   (2, 3, 16, 16), (1, 2, 29, 17), (2, 2, 48, 63), (1, 1, 3, 30)])
@pytest.mark.parametrize("nan_rate", [0.0, 0.1])
def test_maxpool_2x2_fast_path_matches_reference(dtype, shape, nan_rate, rng):
    """The fast path (forward without indices, backward finding each window's maximum again)
    on many ties, signed zeros, NaNs and -inf, odd heights and widths, with and without the
    fused ReLU: the same values, signs of zeros and gradients as the reference."""
    x = rng.integers(-3, 3, shape).astype(dtype) * rng.choice([-1.0, 1.0], shape).astype(dtype)  # -0.0 too
    x[rng.random(shape) < nan_rate] = np.nan
    x[rng.random(shape) < nan_rate / 2] = -np.inf
    for relu in (False, True):
        out_r, cache_r = ref.maxpool2d_forward(x, (2, 2), (2, 2), (0, 0), relu=relu)
        out_c, cache_c = cpu.maxpool2d_forward(x, (2, 2), (2, 2), (0, 0), relu=relu)
        np.testing.assert_array_equal(out_c, out_r)
        np.testing.assert_array_equal(np.signbit(out_c), np.signbit(out_r))
        dout = rng.standard_normal(out_r.shape).astype(dtype)
        np.testing.assert_array_equal(cpu.maxpool2d_backward(dout, cache_c), ref.maxpool2d_backward(dout, cache_r))


# ---------------------------------------------------------------- the "large" profile
# Shapes past the threading thresholds (see strategies.large_geometry), on few examples, with
# three worker threads (uneven shares); conv padding up to the kernel size; pools with ties and
# NaNs on the 2x2 fast path and on the general one.
@pytest.fixture
def three_threads():
    import convlib as cl
    before = cl.get_num_threads()
    cl.set_num_threads(3)
    yield
    cl.set_num_threads(before)


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(g=large_geometry(conv=True), seed=seeds)
def test_conv2d_large_threaded_matches_reference(three_threads, g, seed):
    rng = np.random.default_rng(seed)
    x, w, b = _conv_args(g, rng, np.float64, F=5)
    out_r, cache_r = ref.conv2d_forward(x, w, b, g["stride"], g["padding"])
    out_c, cache_c = cpu.conv2d_forward(x, w, b, g["stride"], g["padding"])
    np.testing.assert_allclose(out_c, out_r, **TOL[np.float64])
    dout = rng.standard_normal(out_r.shape)
    for got, want in zip(cpu.conv2d_backward(dout, cache_c), ref.conv2d_backward(dout, cache_r)):
        np.testing.assert_allclose(got, want, **TOL[np.float64])


@given(g=window_geometry(conv=True), seed=seeds)
def test_conv2d_padding_beyond_half_the_kernel(g, seed):
    rng = np.random.default_rng(seed)
    x, w, b = _conv_args(g, rng, np.float64)
    out_r, cache_r = ref.conv2d_forward(x, w, b, g["stride"], g["padding"])
    np.testing.assert_allclose(out_r, _naive_conv(x, w, b, g["stride"], g["padding"]), rtol=1e-10, atol=1e-12)
    out_c, cache_c = cpu.conv2d_forward(x, w, b, g["stride"], g["padding"])
    np.testing.assert_allclose(out_c, out_r, **TOL[np.float64])
    dout = rng.standard_normal(out_r.shape)
    for got, want in zip(cpu.conv2d_backward(dout, cache_c), ref.conv2d_backward(dout, cache_r)):
        np.testing.assert_allclose(got, want, **TOL[np.float64])


def _pool_both_ways(x, geometry):
    args = (geometry["kernel"], geometry["stride"], geometry["padding"])
    out_r, cache_r = ref.maxpool2d_forward(x, *args)
    out_c, cache_c = cpu.maxpool2d_forward(x, *args)
    np.testing.assert_array_equal(out_c, out_r)                     # NaN where the reference has NaN
    dout = np.random.default_rng(0).standard_normal(out_r.shape)
    np.testing.assert_array_equal(cpu.maxpool2d_backward(dout, cache_c), ref.maxpool2d_backward(dout, cache_r))


@given(g=window_geometry(max_size=9), seed=seeds, nan_rate=st.sampled_from([0.0, 0.05, 0.3]),
       fast=st.booleans())
def test_maxpool_ties_and_nans_on_both_paths(g, seed, nan_rate, fast):
    if fast:                                                        # the 2x2 stride 2 fast path
        g = dict(g, kernel=(2, 2), stride=(2, 2), padding=(0, 0), H=max(g["H"], 2), W=max(g["W"], 2))
    x = pool_values(np.random.default_rng(seed), (g["N"], g["C"], g["H"], g["W"]), nan_rate)
    _pool_both_ways(x, g)


@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(g=large_geometry(), seed=seeds, fast=st.booleans())
def test_maxpool_large_threaded_ties_and_nans(three_threads, g, seed, fast):
    if fast:
        g = dict(g, kernel=(2, 2), stride=(2, 2), padding=(0, 0))
    _pool_both_ways(pool_values(np.random.default_rng(seed), (g["N"], g["C"], g["H"], g["W"]), 0.02), g)


# ---------------------------------------------------------------- direct 3x3, 1-3 input channels
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@settings(max_examples=20, deadline=None)
@given(N=st.integers(1, 4), C=st.integers(1, 3), F=st.integers(1, 5), H=st.integers(1, 20), W=st.integers(1, 20),
       ph=st.integers(0, 3), pw=st.integers(0, 3), bias=st.booleans(), seed=seeds)
def test_direct_conv_matches_reference(dtype, N, C, F, H, W, ph, pw, bias, seed):
    """The first layer's path: forward, and backward (weights and bias from the direct loop, the
    input gradient, when asked, from im2col), every size and padding, against the maths."""
    from convlib.kernels.cpu import conv
    H, W = max(H, 3 - 2 * ph), max(W, 3 - 2 * pw)                  # an output of at least 1x1
    assert conv.direct_applies((F, C, 3, 3), (1, 1))
    rng = np.random.default_rng(seed)
    x, w, b = rng.standard_normal((N, C, H, W)), rng.standard_normal((F, C, 3, 3)), rng.standard_normal(F)
    b = b if bias else None
    out_r, cache_r = ref.conv2d_forward(x, w, b, (1, 1), (ph, pw))
    out_c, cache_c = cpu.conv2d_forward(x.astype(dtype), w.astype(dtype), None if b is None else b.astype(dtype),
                                        (1, 1), (ph, pw))
    assert out_c.dtype == dtype
    np.testing.assert_allclose(out_c, out_r, **TOL[dtype])
    dout = rng.standard_normal(out_r.shape)
    dx_r, dw_r, db_r = ref.conv2d_backward(dout, cache_r)
    for need_dx in (False, True):
        dx, dw, db = cpu.conv2d_backward(dout.astype(dtype), cache_c, need_dx=need_dx)
        assert (dx is None) == (not need_dx) and (db is None) == (b is None) and dw.dtype == dtype
        if need_dx:
            np.testing.assert_allclose(dx, dx_r, **TOL[dtype])
        np.testing.assert_allclose(dw, dw_r, **TOL[dtype])
        if b is not None:
            np.testing.assert_allclose(db, db_r, **TOL[dtype])


@pytest.mark.parametrize("F", [1, 3, 5])
@pytest.mark.parametrize("pooled", [False, True])
def test_direct_conv_odd_filter_counts(F, pooled, rng):
    """The direct loop computes two filters per pass; an odd count's last filter goes alone."""
    from convlib.kernels.cpu import conv
    x, w, b = rng.standard_normal((3, 3, 10, 9)), rng.standard_normal((F, 3, 3, 3)), rng.standard_normal(F)
    out_r, _ = ref.conv2d_forward(x, w, b, (1, 1), (1, 1))
    if pooled:
        out_r, _ = ref.maxpool2d_forward(out_r, (2, 2), (2, 2), (0, 0), relu=True)
        out_c, _ = conv.conv2d_pool_forward(x, w, b, (1, 1), (1, 1), ((2, 2), (2, 2), (0, 0)))
    else:
        out_c, _ = conv.conv2d_forward(x, w, b, (1, 1), (1, 1))
    np.testing.assert_allclose(out_c, out_r, rtol=1e-12, atol=1e-12)


def test_direct_conv_weight_gradient_against_central_differences(rng):
    """float64: the first layer of a net, whose backward asks for no input gradient, so the
    weights' and bias's gradients come from the direct loop."""
    import convlib as cl
    from convlib.gradcheck import numerical_grad
    conv = cl.Conv2d(3, 4, 3, padding=1).to(np.float64)
    x = rng.standard_normal((2, 3, 7, 6))
    dout = rng.standard_normal((2, 4, 7, 6))
    conv.forward(x)
    assert conv.backward(dout, need_dx=False) is None
    for p in (conv.weight, conv.bias):
        numeric = numerical_grad(lambda: conv.forward(x), p.data, dout, 1e-6)
        np.testing.assert_allclose(p.grad, numeric, rtol=1e-6, atol=1e-8)


def test_direct_conv_takes_only_what_it_computes():
    from convlib.kernels.cpu import conv
    assert conv.direct_applies((16, 3, 3, 3), (1, 1)) and conv.direct_applies((8, 1, 3, 3), (1, 1))
    for shape, stride in [((16, 4, 3, 3), (1, 1)), ((16, 3, 3, 3), (2, 2)), ((16, 3, 5, 5), (1, 1)),
                          ((16, 3, 3, 1), (1, 1))]:
        assert not conv.direct_applies(shape, stride)


# ---------------------------------------------------------------- conv, ReLU and max-pool in one pass
def _conv_pool_reference(x, w, b, padding, pool):
    out, conv_cache = ref.conv2d_forward(x, w, b, (1, 1), padding)
    out, pool_cache = ref.maxpool2d_forward(out, *pool, relu=True)
    return out, lambda dout, need_dx: ref.conv2d_backward(ref.maxpool2d_backward(dout, pool_cache), conv_cache,
                                                          need_dx)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@settings(max_examples=20, deadline=None)
@given(N=st.integers(1, 3), C=st.integers(1, 3), F=st.integers(1, 4), H=st.integers(1, 15), W=st.integers(1, 15),
       pad=st.integers(0, 2), ties=st.booleans(), bias=st.booleans(), nan=st.booleans(), training=st.booleans(),
       seed=seeds)
def test_conv_relu_maxpool_in_one_pass_matches_the_ops_in_turn(dtype, N, C, F, H, W, pad, ties, bias, nan, training,
                                                               seed):
    """The first layer's fused path: odd sizes (a last row or column outside every window),
    ties (small integers everywhere, so that the sums are exact and tie in every order), a NaN
    (forward only: the first NaN of a window wins, as the pool's; where gradients meet the NaN
    they hold NaN in whatever places their sums' order gives), every padding; forward, and
    backward with and without dx. In eval mode (training False) the pass keeps no maxima's
    places: the same values bit for bit, and backward computes the convolution again."""
    H, W = max(H, 4 - 2 * pad), max(W, 4 - 2 * pad)                 # a pooled output of at least 1x1
    rng = np.random.default_rng(seed)
    draw = (lambda shape: rng.integers(-2, 3, shape).astype(float)) if ties else rng.standard_normal
    x, w, b = draw((N, C, H, W)), draw((F, C, 3, 3)), draw(F) if bias else None
    if nan:
        x[0, 0, rng.integers(H), rng.integers(W)] = np.nan
    pool = ((2, 2), (2, 2), (0, 0))
    out_r, backward_r = _conv_pool_reference(x, w, b, (pad, pad), pool)
    cast = (lambda a: None if a is None else a.astype(dtype))
    out_c, cache = cpu.conv2d_pool_forward(cast(x), cast(w), cast(b), (1, 1), (pad, pad), pool, training)
    assert cache[0] == ("fused" if training else "again") and out_c.dtype == dtype
    np.testing.assert_allclose(out_c, out_r, **TOL[dtype])
    if not training:
        np.testing.assert_array_equal(out_c, cpu.conv2d_pool_forward(cast(x), cast(w), cast(b), (1, 1), (pad, pad),
                                                                     pool)[0])
    dout = rng.standard_normal(out_r.shape)
    for need_dx in () if nan else (False, True):
        got = cpu.conv2d_pool_backward(cast(dout), cache, need_dx)
        for g, want in zip(got, backward_r(dout, need_dx)):
            assert (g is None) == (want is None)
            if want is not None:
                np.testing.assert_allclose(g, want, **TOL[dtype])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@settings(max_examples=15, deadline=None)
@given(N=st.integers(1, 3), C=st.sampled_from([16, 17, 24]), F=st.sampled_from([16, 19, 32]), H=st.integers(1, 13),
       W=st.integers(1, 13), pad=st.integers(0, 2), bias=st.booleans(), nan=st.booleans(), training=st.booleans(),
       seed=seeds)
def test_winograd_conv_relu_maxpool_in_one_pass_matches_the_ops_in_turn(dtype, N, C, F, H, W, pad, bias, nan,
                                                                         training, seed):
    """Winograd's pooled pass: every size (partial tiles, odd rows and columns outside every
    window), every padding, a NaN; bit for bit the CPU's conv then its ReLU + pool (the bias added
    in the pass, before the max), within float32's Winograd tolerance of the float64 maths; its
    backward that of the ops in turn, bit for bit: in training from the places of the windows'
    maxima it kept, in eval mode computing the conv again."""
    H, W = max(H, 4 - 2 * pad), max(W, 4 - 2 * pad)                 # a pooled output of at least 1x1
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((N, C, H, W)).astype(dtype)
    if nan:
        x[N - 1, C - 1, H // 2, W // 2] = np.nan
    w = (rng.standard_normal((F, C, 3, 3)) / np.sqrt(9 * C)).astype(dtype)
    b = rng.standard_normal(F).astype(dtype) if bias else None
    pool = ((2, 2), (2, 2), (0, 0))
    out, cache = cpu.conv2d_pool_forward(x, w, b, (1, 1), (pad, pad), pool, training)
    assert cache[0] == ("fused" if training else "again") and out.dtype == dtype
    full, conv_cache = cpu.conv2d_forward(x, w, b, (1, 1), (pad, pad))
    want, pool_cache = cpu.maxpool2d_forward(full, *pool, relu=True)
    np.testing.assert_array_equal(out, want)                        # NaNs in the same places
    if not nan:                                                     # (a tile's transform spreads a NaN further)
        out_r, _ = _conv_pool_reference(x.astype(float), w.astype(float), None if b is None else b.astype(float),
                                        (pad, pad), pool)
        tol = 2e-4 if dtype == np.float32 else 1e-11
        np.testing.assert_allclose(out, out_r, rtol=0, atol=tol * np.abs(out_r).max())
    dout = rng.standard_normal(out.shape).astype(dtype)
    for need_dx in (False, True):
        got = cpu.conv2d_pool_backward(dout, cache, need_dx)
        wanted = cpu.conv2d_backward(cpu.maxpool2d_backward(dout, pool_cache), conv_cache, need_dx)
        for g, want in zip(got, wanted):
            assert (g is None) == (want is None)
            if want is not None:
                np.testing.assert_array_equal(g, want)


@pytest.mark.parametrize("C", [3, 16])
def test_a_fused_pass_breaks_ties_on_the_conv_outputs_with_the_bias_added(C, rng):
    """Conv outputs that differ by less than the bias's rounding step tie once the bias is added,
    and the pool sends the gradient to the first of them (the direct loop's pass and Winograd's,
    in training); a pass that compared the values before adding the bias picks the largest."""
    x = (rng.standard_normal((2, C, 8, 8)) * 1e-11).astype(np.float32)
    w = rng.standard_normal((16, C, 3, 3)).astype(np.float32)
    b = np.ones(16, np.float32)
    pool = ((2, 2), (2, 2), (0, 0))
    out, cache = cpu.conv2d_pool_forward(x, w, b, (1, 1), (1, 1), pool, True)
    assert cache[0] == "fused"
    full, conv_cache = cpu.conv2d_forward(x, w, b, (1, 1), (1, 1))
    assert np.all(full == 1)                                        # every window a four-way tie
    want, pool_cache = cpu.maxpool2d_forward(full, *pool, relu=True)
    np.testing.assert_array_equal(out, want)
    dout = rng.standard_normal(out.shape).astype(np.float32)
    for g, want in zip(cpu.conv2d_pool_backward(dout, cache, True),
                       cpu.conv2d_backward(cpu.maxpool2d_backward(dout, pool_cache), conv_cache, True)):
        np.testing.assert_array_equal(g, want)


@pytest.mark.parametrize("C", [3, 16])
def test_eval_mode_fused_conv_gradients_against_central_differences(C, rng):
    """float64, an eval-mode Sequential that fuses a conv (the direct loop's or Winograd's) with
    its ReLU + pool: the backward that computes the conv again gives dx, the weights' and the
    bias's gradients."""
    import convlib as cl
    from convlib.gradcheck import check_layer
    net = cl.Sequential(cl.Conv2d(C, 16, 3, padding=1), cl.ReLU(), cl.MaxPool2d(2)).to(np.float64).eval()
    [(_, unit)] = net._units()
    assert type(unit).__name__ == "ConvUnit"
    unit.forward(rng.standard_normal((2, C, 7, 6)))
    assert unit._cache[0][0] == "again"                             # no maxima's places kept
    assert set(check_layer(net, rng.standard_normal((2, C, 7, 6)))) == {"x", "0.weight", "0.bias"}


def test_conv_relu_maxpool_gradients_against_central_differences(rng):
    """float64, through a Sequential that fuses the three: dx (the rare path, via the pooled
    gradient spread back out) and the weights' and bias's gradients without dx (one pass)."""
    import convlib as cl
    from convlib.gradcheck import check_layer, numerical_grad
    net = cl.Sequential(cl.Conv2d(3, 4, 3, padding=1), cl.ReLU(), cl.MaxPool2d(2)).to(np.float64)
    assert [type(unit).__name__ for _, unit in net._units()] == ["ConvUnit"]
    x = rng.standard_normal((2, 3, 7, 6))
    assert set(check_layer(net, x)) == {"x", "0.weight", "0.bias"}
    dout = rng.standard_normal((2, 4, 3, 3))
    net(x)
    net.zero_grad()
    assert net.backward(dout, input_grad=False) is None
    for p in (net[0].weight, net[0].bias):
        np.testing.assert_allclose(p.grad, numerical_grad(lambda: net(x), p.data, dout, 1e-6), rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("momentum,weight_decay,nesterov", [(0.0, 0.0, False), (0.9, 5e-4, False), (0.9, 5e-4, True),
                                                            (0.5, 0.0, True)])
def test_sgd_step_cpu_takes_the_reference_steps_to_the_bit(dtype, momentum, weight_decay, nesterov, rng):
    """One pass per parameter (a large one split over the threads), the same roundings as the
    reference's NumPy passes: three steps give the same bits, buffers too."""
    ref, cpu = backend("reference"), backend("cpu")
    shapes = [(600, 257), (7,), (3, 1, 3, 3)]                       # the first split over the threads
    runs = []
    for k in (ref, cpu):
        r = np.random.default_rng(1)
        ps = [r.standard_normal(s).astype(dtype) for s in shapes]
        bufs = [np.zeros_like(p) for p in ps] if momentum else None
        for lr in (0.1, 0.05, 0.025):
            gs = [r.standard_normal(s).astype(dtype) for s in shapes]
            k.sgd_step(ps, gs, bufs, lr, momentum, weight_decay, nesterov)
        runs.append(ps + (bufs or []))
    for a, b in zip(*runs):
        np.testing.assert_array_equal(a, b)
    assert not np.array_equal(runs[1][0], np.random.default_rng(1).standard_normal(shapes[0]).astype(dtype))


def test_sgd_step_cpu_falls_back_where_numpy_would_compute_otherwise(rng):
    """A strided parameter is updated in place all the same, and a NumPy float64 momentum (not a
    weak Python float: NumPy computes in float64, then rounds) gives the reference's bits."""
    ref, cpu = backend("reference"), backend("cpu")
    base = rng.standard_normal((6, 8)).astype(np.float32)
    g = rng.standard_normal((6, 4)).astype(np.float32)
    got = []
    for k in (ref, cpu):
        whole = base.copy()
        p, buf = whole[:, ::2], np.zeros((6, 4), np.float32)
        k.sgd_step([p], [g], [buf], 0.1, np.float64(0.9), 1e-2, False)
        k.sgd_step([p], [g], [buf], 0.1, np.float64(0.9), 1e-2, False)
        got.append((whole, buf))
    np.testing.assert_array_equal(got[0][0], got[1][0])
    np.testing.assert_array_equal(got[0][1], got[1][1])
    assert not np.array_equal(got[1][0][:, ::2], base[:, ::2]) and np.array_equal(got[1][0][:, 1::2], base[:, 1::2])


@pytest.mark.parametrize("C", [3, 16])
def test_conv_relu_gradients_against_central_differences(C, rng):
    """float64, a Conv2d then a ReLU alone fused into one unit in training (Winograd applies the
    ReLU in its output pass where it runs the conv, C = 16; the direct loop's conv then the
    ReLU, C = 3): dx and the weights' and bias's gradients."""
    import convlib as cl
    from convlib.gradcheck import check_layer
    net = cl.Sequential(cl.Conv2d(C, 16, 3, padding=1), cl.ReLU()).to(np.float64)
    x = rng.standard_normal((2, C, 7, 6))
    out = net(x)
    [(_, unit)] = net._plan
    assert type(unit).__name__ == "ConvUnit" and unit._cache[0][0] == "relu"
    assert (out == 0).any() and (out > 0).any()
    assert set(check_layer(net, x)) == {"x", "0.weight", "0.bias"}
