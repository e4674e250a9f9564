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
"""
import argparse
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
    if pytest.main(["-q", "-p", "no:cacheprovider", os.path.join(HERE, "test_cuda.py"),
                    os.path.join(HERE, "test_contract.py")]):
        sys.exit("the CUDA tests failed in the simulator: fix them first")
    with open(path, "wb") as f:
        pickle.dump(calls, f)


def compile_all(path, cc):
    import numba.cuda.dispatcher
    from numba import cuda
    # Device functions ask the current GPU for its compute capability; there is none here.
    numba.cuda.dispatcher.get_current_device = lambda: types.SimpleNamespace(compute_capability=cc)
    sys.path.insert(0, os.path.dirname(HERE))
    from convlib.kernels import cuda as K
    with open(path, "rb") as f:
        calls = pickle.load(f)
    failures = 0
    for key, sigs in sorted(calls.items()):
        fn = (K._product_kernel(*key.split(":")[1:]) if key.startswith("_product_kernel:")
              else getattr(K, key)).py_func
        for sig in sorted(sigs, key=str):
            try:
                cuda.compile_ptx(fn, sig, cc=cc)
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
    ap.add_argument("--record", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.record:
        return record(args.record)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "calls.pkl")
        subprocess.run([sys.executable, __file__, "--record", path], check=True,
                       env={**os.environ, "NUMBA_ENABLE_CUDASIM": "1"})
        sys.exit(1 if compile_all(path, tuple(int(v) for v in args.cc.split("."))) else 0)


if __name__ == "__main__":
    main()
