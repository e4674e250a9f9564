"""CUDA kernels against the NumPy reference, and whole training steps on cuda against the CPU.

Runs on a real GPU where there is one and in numba's CUDA simulator otherwise (tests/conftest.py
sets NUMBA_ENABLE_CUDASIM=1 on machines without an NVIDIA driver). The simulator runs every GPU
thread as a Python thread, so the shapes here are tiny; they are chosen so that every kernel still
sees partial tiles, padding, strides, overlapping windows and ties.
"""
import numpy as np
import pytest

import convlib as cl

if not cl.cuda_available():
    pytest.skip("numba.cuda has neither a GPU nor the simulator here", allow_module_level=True)

from numba import cuda                                             # noqa: E402

from convlib.kernels import cuda as K                              # noqa: E402
from convlib.kernels import reference as R                         # noqa: E402

dev = cl.to_device
host = cl.to_host


def close(got, want, tol=1e-10):
    np.testing.assert_allclose(host(got), want, rtol=tol, atol=tol)


@pytest.mark.parametrize("ta,tb", [(False, False), (True, False), (False, True), (True, True)])
@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-12), (np.float32, 1e-5)])
def test_matmul_matches_numpy(rng, ta, tb, dtype, tol):
    a = rng.standard_normal((5, 9)).astype(dtype)                  # sizes not multiples of the tile
    b = rng.standard_normal((9, 7)).astype(dtype)
    got = K.matmul(dev(a.T.copy() if ta else a), dev(b.T.copy() if tb else b), ta=ta, tb=tb)
    assert got.dtype == dtype
    close(got, a @ b, tol)
    with pytest.raises(ValueError, match="inner sizes differ"):
        K.matmul(dev(a), dev(a))


@pytest.mark.parametrize("shape,F,k,stride,padding,bias", [
    ((2, 3, 5, 6), 4, (3, 3), (1, 2), (1, 1), True),
    ((1, 2, 6, 5), 3, (2, 3), (2, 1), (0, 1), False)])
def test_conv2d_forward_backward_match_reference(rng, shape, F, k, stride, padding, bias):
    x = rng.standard_normal(shape)
    w = rng.standard_normal((F, shape[1]) + k)
    b = rng.standard_normal(F) if bias else None
    out, cache = K.conv2d_forward(dev(x), dev(w), dev(b) if bias else None, stride, padding)
    ref, rcache = R.conv2d_forward(x, w, b, stride, padding)
    close(out, ref)
    dout = rng.standard_normal(ref.shape)
    dx, dw, db = K.conv2d_backward(dev(dout), cache)
    rdx, rdw, rdb = R.conv2d_backward(dout, rcache)
    close(dx, rdx)
    close(dw, rdw)
    assert (db is None) == (not bias)
    if bias:
        close(db, rdb)
    none, dw2, _ = K.conv2d_backward(dev(dout), cache, need_dx=False)
    assert none is None
    close(dw2, rdw)


@pytest.mark.parametrize("kernel,stride,padding", [((2, 2), (2, 2), (0, 0)), ((3, 2), (1, 2), (1, 1))])
def test_maxpool_matches_reference_with_ties_and_overlap(rng, kernel, stride, padding):
    x = rng.integers(0, 3, (2, 2, 5, 4)).astype(np.float64)        # many ties: first max gets it
    out, cache = K.maxpool2d_forward(dev(x), kernel, stride, padding)
    ref, rcache = R.maxpool2d_forward(x, kernel, stride, padding)
    close(out, ref)
    dout = rng.standard_normal(ref.shape)
    close(K.maxpool2d_backward(dev(dout), cache), R.maxpool2d_backward(dout, rcache))


def test_avgpool_matches_reference(rng):
    x = rng.standard_normal((2, 2, 5, 4))
    out, cache = K.avgpool2d_forward(dev(x), (3, 2), (2, 1), (1, 1))
    ref, rcache = R.avgpool2d_forward(x, (3, 2), (2, 1), (1, 1))
    close(out, ref)
    dout = rng.standard_normal(ref.shape)
    close(K.avgpool2d_backward(dev(dout), cache), R.avgpool2d_backward(dout, rcache))


def test_linear_matches_reference(rng):
    x, w, b = rng.standard_normal((3, 5)), rng.standard_normal((4, 5)), rng.standard_normal(4)
    out, cache = K.linear_forward(dev(x), dev(w), dev(b))
    ref, rcache = R.linear_forward(x, w, b)
    close(out, ref)
    dout = rng.standard_normal(ref.shape)
    for got, want in zip(K.linear_backward(dev(dout), cache), R.linear_backward(dout, rcache)):
        close(got, want)
    assert K.linear_backward(dev(dout), cache, need_dx=False)[0] is None


@pytest.mark.parametrize("name,args", [("relu", ()), ("leaky_relu", (0.1,)), ("sigmoid", ()), ("tanh", ())])
def test_pointwise_match_reference(rng, name, args):
    x = rng.standard_normal((2, 3, 4)) * 5
    x[0, 0, :2] = [0.0, -800.0]                                     # the kink, and exp overflow
    out, cache = getattr(K, name + "_forward")(dev(x), *args)
    ref, rcache = getattr(R, name + "_forward")(x, *args)
    close(out, ref)
    dout = rng.standard_normal(x.shape)
    close(getattr(K, name + "_backward")(dev(dout), cache), getattr(R, name + "_backward")(dout, rcache))


def test_dropout_masks_are_seeded_scaled_and_used_by_backward(rng):
    x = np.ones((40, 50), np.float32)
    out, mask = K.dropout_forward(dev(x), 0.3, np.random.default_rng(7))
    out, mask = host(out), host(mask)
    assert set(np.unique(mask)) <= {0.0, np.float32(1 / 0.7)}
    assert abs((mask == 0).mean() - 0.3) < 0.05                     # 2,000 draws: 5 sigma is 0.05
    np.testing.assert_array_equal(out, x * mask)
    _, again = K.dropout_forward(dev(x), 0.3, np.random.default_rng(7))
    np.testing.assert_array_equal(host(again), mask)                # same seed, same mask
    _, other = K.dropout_forward(dev(x), 0.3, np.random.default_rng(8))
    assert not np.array_equal(host(other), mask)
    dout = rng.standard_normal(x.shape).astype(np.float32)
    np.testing.assert_array_equal(host(K.dropout_backward(dev(dout), dev(mask))), dout * mask)


@pytest.mark.parametrize("shape", [(4, 3, 2, 3), (5, 3)])
@pytest.mark.parametrize("training", [True, False])
def test_batchnorm_matches_reference(rng, shape, training):
    x = rng.standard_normal(shape) * 3 + 1
    gamma, beta = rng.standard_normal(3), rng.standard_normal(3)
    rm, rv = rng.standard_normal(3), rng.random(3) + 0.5
    drm, drv = dev(rm), dev(rv)
    out, cache = K.batchnorm_forward(dev(x), dev(gamma), dev(beta), drm, drv, 0.1, 1e-5, training)
    ref, rcache = R.batchnorm_forward(x, gamma, beta, rm, rv, 0.1, 1e-5, training)   # updates rm, rv
    close(out, ref)
    close(drm, rm)
    close(drv, rv)
    dout = rng.standard_normal(shape)
    for got, want in zip(K.batchnorm_backward(dev(dout), cache), R.batchnorm_backward(dout, rcache)):
        close(got, want)


def test_softmax_and_cross_entropy_match_reference(rng):
    logits = rng.standard_normal((5, 4)) * 30
    y = np.array([0, 3, 1, 1, 2])
    loss, dlogits = K.softmax_cross_entropy(dev(logits), y)
    rloss, rd = R.softmax_cross_entropy(logits, y)
    assert loss == pytest.approx(rloss, rel=1e-12)
    close(dlogits, rd)
    close(K.log_softmax(dev(logits)), R.log_softmax(logits))
    close(K.softmax(dev(logits)), R.softmax(logits))
    assert K.all_finite(dev(logits))
    logits[2, 1] = np.nan
    assert not K.all_finite(dev(logits))
    with pytest.raises(ValueError, match="NaN"):
        cl.softmax_cross_entropy(dev(logits), y)


@pytest.mark.parametrize("momentum,nesterov,wd", [(0.0, False, 0.0), (0.9, False, 1e-2), (0.9, True, 1e-2)])
def test_sgd_step_matches_reference(rng, momentum, nesterov, wd):
    p, g = rng.standard_normal(7), rng.standard_normal(7)
    buf = rng.standard_normal(7) if momentum else None
    dp, dbuf = dev(p), dev(buf) if momentum else None
    for _ in range(2):
        K.sgd_step(dp, dev(g), dbuf, 0.1, momentum, wd, nesterov)
        R.sgd_step(p, g, buf, 0.1, momentum, wd, nesterov)
    close(dp, p)
    if momentum:
        close(dbuf, buf)


@pytest.mark.parametrize("decoupled", [False, True])
def test_adam_step_matches_reference(rng, decoupled):
    p, g = rng.standard_normal(7), rng.standard_normal(7)
    m, v = np.zeros(7), np.zeros(7)
    dp, dm, dv = dev(p), dev(m), dev(v)
    for t in (1, 2, 3):
        K.adam_step(dp, dev(g), dm, dv, 1e-2, 0.9, 0.999, 1e-8, 1e-2, decoupled, t)
        R.adam_step(p, g, m, v, 1e-2, 0.9, 0.999, 1e-8, 1e-2, decoupled, t)
    for got, want in ((dp, p), (dm, m), (dv, v)):
        close(got, want)


def test_zero_and_accumulate(rng):
    a, b = rng.standard_normal((3, 4)), rng.standard_normal((3, 4))
    da = dev(a)
    K.accumulate(da, dev(b))
    close(da, a + b)
    K.zero_(da)
    close(da, np.zeros((3, 4)))
    close(K.zeros_like(da), np.zeros((3, 4)))


def small_net(seed=3):
    cl.manual_seed(seed)
    return cl.Sequential(cl.Conv2d(2, 4, 3, padding=1), cl.BatchNorm2d(4), cl.ReLU(), cl.MaxPool2d(2),
                         cl.Conv2d(4, 3, 3, padding=1), cl.ReLU(), cl.AvgPool2d(2), cl.Flatten(),
                         cl.Linear(3, 5), cl.Tanh(), cl.Linear(5, 3))


def test_training_step_on_cuda_equals_cpu(rng):
    x = rng.standard_normal((3, 2, 4, 5)).astype(np.float32)
    y = np.array([0, 2, 1])
    nets = {"cpu": small_net(), "cuda": small_net().to("cuda")}
    results = {}
    for device, net in nets.items():
        assert net.device == device
        opt = cl.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-3)
        for _ in range(2):                                          # the second step uses momentum
            logits = net(cl.to_device(x, device))
            loss, dlogits = cl.softmax_cross_entropy(logits, y)
            opt.zero_grad()
            dx = net.backward(dlogits)
            opt.step()
        results[device] = (host(logits), loss, host(dx), [host(p.grad) for p in net.parameters()],
                           net.state_dict())
    (lc, sc, dc, gc, stc), (lg, sg, dg, gg, stg) = results["cpu"], results["cuda"]
    np.testing.assert_allclose(lg, lc, rtol=1e-4, atol=1e-5)
    assert sg == pytest.approx(sc, rel=1e-5)
    np.testing.assert_allclose(dg, dc, rtol=1e-4, atol=1e-5)
    for a, b in zip(gg, gc):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)
    assert stg.keys() == stc.keys()
    for k in stc:                                                   # weights and running statistics
        np.testing.assert_allclose(stg[k], stc[k], rtol=1e-4, atol=1e-5)


def test_fit_on_cuda_and_models_move_between_devices(rng, tmp_path):
    x = rng.standard_normal((8, 2, 4, 4)).astype(np.float32)
    y = rng.integers(0, 3, 8)
    net = small_net().to("cuda")
    hist = cl.fit(net, (x, y), val=(x, y), epochs=2, batch_size=4, progress=False,
                  optimizer=cl.optim.Adam(net.parameters(), lr=1e-2))
    assert len(hist["loss"]) == 2 and np.isfinite(hist["loss"]).all()
    assert all(cuda.devicearray.is_cuda_ndarray(p.data) for p in net.parameters())
    gpu_out = host(net(cl.to_device(x)))
    cl.save(net, tmp_path / "gpu.npz")
    cpu_net = cl.load(tmp_path / "gpu.npz")                        # a GPU model loads on the CPU
    np.testing.assert_allclose(cpu_net(x), gpu_out, rtol=1e-4, atol=1e-5)
    back = cpu_net.to("cuda")                                       # and goes back
    np.testing.assert_allclose(host(back(cl.to_device(x))), gpu_out, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(cl.predict_proba(back, x), cl.predict_proba(cl.load(tmp_path / "gpu.npz"), x),
                               rtol=1e-4, atol=1e-5)
    assert back.to("cpu").device == "cpu"


def test_input_on_the_wrong_device_is_a_clear_error(rng):
    net = small_net().to("cuda")
    with pytest.raises(ValueError, match="parameters are on cuda but the input is on cpu"):
        net(rng.standard_normal((1, 2, 4, 4)).astype(np.float32))
