"""The one place that knows about devices and kernel sets.

Layers call ``kernels_for(x).conv2d_forward(...)`` and never branch on the device.
On the CPU the kernel set is Numba (``"cpu"``) unless ``use_kernels("reference")`` picks
the plain NumPy one (benchmarks and debugging do that).
"""
import os

import numpy as np

from .kernels import cpu, reference

_KERNELS = {"cpu": cpu, "reference": reference}
_active = _KERNELS[os.environ.get("CONVLIB_KERNELS", "cpu")]


def use_kernels(name):
    """Select the CPU kernel set: ``"cpu"`` (Numba, default) or ``"reference"`` (plain NumPy)."""
    global _active
    if name not in _KERNELS:
        raise ValueError(f"unknown kernel set {name!r}; expected one of {sorted(_KERNELS)}")
    _active = _KERNELS[name]


def kernels_for(x):
    """The kernel module that runs on the device where array ``x`` lives."""
    return _active


def cuda_available():
    """True when numba.cuda can see an NVIDIA GPU (never raises)."""
    try:
        from numba import cuda
        return bool(cuda.is_available())
    except Exception:
        return False


_NO_CUDA = ("no CUDA device is available: convlib runs on the GPU through numba-cuda "
            "(`pip install numba-cuda`) on a machine with an NVIDIA GPU and driver; "
            "use device='cpu' otherwise")


def check_device(device):
    """Validate a device name; 'cuda' is accepted only where a GPU is usable."""
    if device == "cpu":
        return device
    if device == "cuda":
        if not cuda_available():
            raise RuntimeError(_NO_CUDA)
        raise NotImplementedError("CUDA kernels are not part of convlib yet; use device='cpu'")
    raise ValueError(f"unknown device {device!r}; expected 'cpu' or 'cuda'")


def to_device(x, device="cuda"):
    """Copy a host array to ``device``."""
    check_device(device)
    return np.asarray(x)


def to_host(x):
    """Copy an array to a host NumPy array (a no-op for host arrays)."""
    return np.asarray(x)
