"""Deprecated alias of ``convlib.kernels.cuda.memory`` (removed in the next release)."""
import warnings

from .cuda import memory as _moved

warnings.warn("convlib.kernels.cuda_memory moved to convlib.kernels.cuda.memory", DeprecationWarning, stacklevel=2)


def __getattr__(name):
    return getattr(_moved, name)
