"""Deprecated alias of ``convlib.kernels.cpu.threads`` (removed in the next release); the public
calls are ``cl.set_num_threads`` and ``cl.get_num_threads``."""
import warnings

from .kernels.cpu import threads as _moved

warnings.warn("convlib.threads moved to convlib.kernels.cpu.threads; call cl.set_num_threads / "
              "cl.get_num_threads", DeprecationWarning, stacklevel=2)


def __getattr__(name):
    return getattr(_moved, name)
