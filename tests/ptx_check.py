"""Compile every CUDA kernel, with the argument types the CUDA tests launch it with, to PTX for a
real GPU architecture: catches what numba's simulator cannot (typing, CUDA-only lowering), on a
machine without a GPU.

    pip install -e ".[test,gpu]"         # numba-cuda and its NVVM compiler; no GPU or driver needed
    python tests/ptx_check.py [--cc 9.0]

Step 1 runs tests/test_cuda.py and tests/test_contract.py in a child process under
NUMBA_ENABLE_CUDASIM=1 and records the argument types of each kernel launch; step 2 compiles
each (kernel, types) pair with ``numba.cuda.compile_ptx`` for the given compute capability (9.0:
H100/H200) and reports failures.
Not a pytest module (the name does not start with test_): it needs the gpu extra.

``--emit FILE`` writes instead the PTX of the kernels whose hazards tests/test_cuda.py checks in
the PTX (``hazard_kernels``) to FILE as JSON, {name: PTX text}; it exits with status 3, saying
why, where numba-cuda's compiler (NVVM) is missing.
"""
import argparse
import json
import os
import pickle
import subprocess
import sys
import tempfile
import types

HERE = os.path.dirname(os.path.abspath(__file__))


def record(path):
    """Child process, simulator on: run the CUDA tests, pickle {kernel: {argument types}} to path."""
    import numba
    import pytest
    from numba.cuda.simulator import kernel as simk
    calls, launch = {}, simk.FakeCUDAKernel.__call__

    def typeof(a):                                                  # a tuple of arrays: the optimizer updates
        if isinstance(a, tuple):
            return numba.types.BaseTuple.from_types([typeof(v) for v in a])
        return numba.typeof(getattr(a, "_ary", a))

    def recording_call(self, *args):
        if not self._device:
            key = self.fn.__qualname__
            if hasattr(self.fn, "product_key"):                     # a product kernel: rebuilt from its key
                key = "_product_kernel:" + ":".join(self.fn.product_key)
            calls.setdefault(key, set()).add(tuple(typeof(a) for a in args))
        return launch(self, *args)
    simk.FakeCUDAKernel.__call__ = recording_call
    sys.path.insert(0, os.path.dirname(HERE))                        # convlib, installed or not
    if pytest.main(["-q", "-p", "no:cacheprovider", "-k", "not gpu_check", os.path.join(HERE, "test_cuda.py"),
                    os.path.join(HERE, "test_contract.py")]):                # (gpu_check runs in a child process)
        sys.exit("the CUDA tests failed in the simulator: fix them first")
    with open(path, "wb") as f:
        pickle.dump(calls, f)


def _compiler(cc):
    """numba.cuda and convlib's CUDA kernels, set up to compile for compute capability cc with no GPU."""
    import numba.cuda.dispatcher
    from numba import cuda
    # Device functions ask the current GPU for its compute capability; there is none here.
    numba.cuda.dispatcher.get_current_device = lambda: types.SimpleNamespace(compute_capability=cc)
    sys.path.insert(0, os.path.dirname(HERE))
    from convlib.kernels import cuda as K
    return cuda, K


def _ptx(cuda, kernel, sig, cc):
    """The PTX of a kernel (a numba.cuda dispatcher) for the argument types sig."""
    fn = kernel.py_func
    return cuda.compile_ptx(fn, sig, cc=cc, launch_bounds=getattr(fn, "launch_bounds", None))[0]


def hazard_kernels(K):
    """{name: (kernel, argument types)}: the float32 product kernel of every call site in
    convlib/kernels/cuda/ (named after the site) and batch norm's two per-channel sums: the
    kernels whose last block adds the other blocks' parts."""
    import numba
    import numpy as np

    def a(ndim, dtype=np.float32):                                  # a C-contiguous array type
        return numba.typeof(np.zeros((1,) * ndim, dtype))
    i, g = numba.typeof(1), numba.typeof((0,) * 10)
    products = {"conv2d_forward": (("rows", 2), ("im2col", 4), ("nchw_bias", 3)),
                "conv2d_backward dw": (("nchw", 3), ("im2col_t", 4), ("rows", 2)),
                "conv2d_backward dx": (("w_t", 4), ("dcols", 4), ("nchw_bias", 3)),
                "linear_forward": (("rows", 2), ("cols", 2), ("rows_bias", 2)),
                "linear_backward dw": (("cols", 2), ("rows", 2), ("rows", 2)),
                "matmul": (("rows", 2), ("rows", 2), ("rows", 2))}
    out = {}
    for site, ((ka, na), (kb, nb), (kc, nc)) in products.items():
        out[site] = (K._product_kernel(np.float32, ka, kb, kc),
                     (a(na), a(nb), a(nc), a(1), i, i, i, g, i, a(3), a(1, np.int32)))
    kernel, sig = out["conv2d_backward dw"]
    out["conv2d_backward dw, 2 blocks per SM"] = (K._product_kernel(np.float32, "nchw", "im2col_t", "rows", 2), sig)
    f8 = a(1, np.float64)
    out["_channel_sums"] = (K._channel_sums, (a(3), a(3), f8, a(3, np.float64), a(1, np.int32), f8, f8))
    out["_mean_var"] = (K._mean_var, (a(3), a(3, np.float64), a(1, np.int32), f8, f8))
    return out


def emit(path, cc):
    """Write {name: PTX} of ``hazard_kernels`` to path as JSON; exit 3 without NVVM."""
    try:
        from numba.cuda.cudadrv import nvvm
        found = nvvm.is_available()
    except ImportError:
        found = False
    if not found:
        print("numba-cuda's compiler (NVVM) is not installed here: pip install -e '.[gpu]'", file=sys.stderr)
        sys.exit(3)
    cuda, K = _compiler(cc)
    with open(path, "w") as f:
        json.dump({name: _ptx(cuda, kernel, sig, cc) for name, (kernel, sig) in hazard_kernels(K).items()}, f)


def compile_all(path, cc):
    cuda, K = _compiler(cc)
    with open(path, "rb") as f:
        calls = pickle.load(f)
    failures = 0
    for key, sigs in sorted(calls.items()):
        kernel = (K._product_kernel(*key.split(":")[1:]) if key.startswith("_product_kernel:")
                  else getattr(K, key))
        for sig in sorted(sigs, key=str):
            try:
                _ptx(cuda, kernel, sig, cc)
            except Exception as e:                                  # report them all, then fail
                failures += 1
                print(f"FAIL {key}{sig}: {type(e).__name__}: {e}")
    total = sum(len(s) for s in calls.values())
    print(f"{total - failures} of {total} kernel signatures ({len(calls)} kernels) compile to PTX for "
          f"compute capability {cc[0]}.{cc[1]}")
    return failures


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cc", default="9.0", help="compute capability, e.g. 8.0 (A100) or 9.0 (H100/H200)")
    ap.add_argument("--emit", metavar="FILE", help="write the PTX of the kernels the hazard tests read, as JSON")
    ap.add_argument("--record", help=argparse.SUPPRESS)
    args = ap.parse_args()
    cc = tuple(int(v) for v in args.cc.split("."))
    if args.record:
        return record(args.record)
    if args.emit:
        return emit(args.emit, cc)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "calls.pkl")
        subprocess.run([sys.executable, __file__, "--record", path], check=True,
                       env={**os.environ, "NUMBA_ENABLE_CUDASIM": "1"})
        sys.exit(1 if compile_all(path, cc) else 0)


if __name__ == "__main__":
    main()
