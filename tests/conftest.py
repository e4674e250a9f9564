import os
import shutil
import sys

# The CUDA tests (test_cuda.py) run on a real GPU where there is one, and in numba's CUDA
# simulator otherwise. The simulator is chosen by an environment variable numba reads when it
# is first imported, so it is set here, before any test imports convlib.
if "NUMBA_ENABLE_CUDASIM" not in os.environ and not (
        shutil.which("nvidia-smi") or os.path.exists("/proc/driver/nvidia/version")):
    os.environ["NUMBA_ENABLE_CUDASIM"] = "1"


if os.environ.get("NUMBA_ENABLE_CUDASIM") == "1":
    sys.setswitchinterval(1e-4)       # the simulator's Python threads meet at barriers: hand over fast
    # (its shared arrays are made thread-safe by convlib/kernels/cuda/simulator.py, on import)

if os.environ.get("MUTANT_UNDER_TEST"):
    # mutmut runs the tests once in its own process, then forks a child per mutant. PyTorch's
    # OpenMP threads (libgomp) do not survive a fork: the child's first parallel torch call waits
    # for them forever. On one thread torch never starts them.
    try:
        import torch
        torch.set_num_threads(1)
    except ImportError:
        pass

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from hypothesis import settings  # noqa: E402

settings.register_profile("convlib", max_examples=25, deadline=None, derandomize=True)
settings.load_profile("convlib")


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


@pytest.fixture(autouse=True)
def _seeded():
    """Every test starts from convlib's generator seeded with 0, so the weights a layer draws
    do not depend on which tests ran before it (an unseeded gradient check once failed only
    after test_threads.py, on a draw that left its rounding 4e-9 over the bound)."""
    import convlib as cl
    cl.manual_seed(0)


def pytest_collection_modifyitems(config, items):
    """With CONVLIB_KERNELS=reference (the NumPy maths only) the tests of the compiled CPU kernels
    (marked ``compiled``) skip, saying so; every other test runs on the reference."""
    if os.environ.get("CONVLIB_KERNELS") == "reference":
        for item in items:
            marker = item.get_closest_marker("compiled")
            if marker is not None:
                why = marker.kwargs.get("reason", "this test checks the compiled CPU kernels")
                item.add_marker(pytest.mark.skip(reason=f"CONVLIB_KERNELS=reference: {why}"))
