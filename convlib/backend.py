"""Where arrays live: NumPy on the host, numba.cuda device arrays on an NVIDIA GPU.

Copies between them (``to_device``, ``to_host``), device names, and whether a GPU is there. Which
kernels run on an array is decided in one place, ``convlib/kernels/__init__.py`` (``kernels_for``).
"""
import numpy as np

from .kernels import kernels_for, use_kernels  # noqa: F401  (their old home; convlib.use_kernels)


def is_cuda_array(x):
    """True for a numba.cuda device array (the simulator's too); never imports numba.cuda."""
    return bool(getattr(x, "__cuda_ndarray__", False))


def is_array(x):
    """True for the arrays layers accept: NumPy arrays and CUDA device arrays."""
    return isinstance(x, np.ndarray) or is_cuda_array(x)


def device_of(x):
    """'cuda' for a device array, 'cpu' otherwise."""
    return "cuda" if is_cuda_array(x) else "cpu"


def cuda_available():
    """True when numba.cuda can see an NVIDIA GPU, or runs its simulator (never raises)."""
    try:
        from numba import cuda
        return bool(cuda.is_available())
    except Exception:
        return False


_NO_CUDA = ("no CUDA device is available: convlib runs on NVIDIA GPUs through numba-cuda; "
            "install it with `pip install -e \".[gpu]\"` on a machine with an NVIDIA GPU and driver "
            "(NUMBA_ENABLE_CUDASIM=1 runs the CUDA kernels in numba's slow simulator, for tests), "
            "or use device='cpu'")


def check_device(device):
    """Validate a device name: 'cpu', or 'cuda' where a GPU (or the simulator) is usable."""
    if device == "cpu":
        return device
    if device == "cuda":
        if not cuda_available():
            raise RuntimeError(_NO_CUDA)
        return device
    raise ValueError(f"unknown device {device!r}; expected 'cpu' or 'cuda'")


def to_device(x, device="cuda"):
    """A copy of array ``x`` on ``device`` ('cuda' or 'cpu'); ``x`` itself if it is there already."""
    check_device(device)
    if device == "cpu":
        return to_host(x)
    if is_cuda_array(x):
        return x
    from .kernels.cuda.memory import upload
    return upload(x)


def to_host(x):
    """A host NumPy array of ``x`` (copied from the GPU; host arrays are returned as they are)."""
    return x.copy_to_host() if is_cuda_array(x) else np.asarray(x)


def copy_into(dst, src):
    """Copy host array ``src`` into array ``dst`` (host or device) in place, cast to dst's dtype."""
    if is_cuda_array(dst):
        dst.copy_to_device(np.ascontiguousarray(src, dtype=dst.dtype))
    else:
        dst[...] = src
