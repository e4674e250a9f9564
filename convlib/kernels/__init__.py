"""The kernel contract: every op that layers, losses and optimizers call, declared once.

An op is a plain NumPy function in ``reference.py`` marked ``@op``: its code is the readable
maths and the oracle the tests compare every other backend with, its docstring gives the
shapes. Calling it runs the implementation for the device of its first argument:

- a NumPy array: the active CPU backend, ``cpu/`` (Numba) by default, where it has the op, else
  the reference maths; ``use_kernels("reference")`` (or ``CONVLIB_KERNELS=reference``) runs the
  reference for everything, and then no Numba kernel is compiled;
- a numba.cuda device array: ``cuda/``; an op it lacks raises ``NotImplementedError`` naming it.

A backend is a module with functions of the same names and signatures. Forward ops return
``(out, cache)``; the matching backward op takes ``(dout, cache)``, where the cache is private to
the backend that made it. Shapes: N batch, C channels in, F channels out (filters), H, W input,
KH, KW kernel, SH, SW stride, PH, PW padding, OH, OW output, ``OH = (H + 2*PH - KH) // SH + 1``.
"""
import functools
import importlib
import inspect
import os

OPS = {}                     # op name -> its reference function (the plain maths), in declaration order


def op(fn):
    """Declare ``fn`` (a function of ``reference.py``) an op of the contract: it is registered
    under its name, and calling it runs the implementation for its first argument's device."""
    name = fn.__name__
    OPS[name] = fn

    @functools.wraps(fn)
    def run(*args, **kwargs):
        return getattr(kernels_for(args[0]), name)(*args, **kwargs)
    return run


class KernelSet:
    """One backend bound to the contract: every op of ``OPS`` as an attribute, the backend
    module's own where it has one, else (``fallback=True``, CPU backends) the reference maths,
    else a function raising ``NotImplementedError`` that names the op and the backend."""

    def __init__(self, name, module=None, fallback=False):
        self.name = name
        self.own = sorted(op for op in OPS if module is None or hasattr(module, op))
        for op, maths in OPS.items():
            fn = getattr(module, op, None) if module is not None else maths
            setattr(self, op, fn or (maths if fallback else _missing(op, name)))

    def __repr__(self):
        return f"KernelSet({self.name!r}, {len(self.own)} of {len(OPS)} ops its own)"


def _missing(op, backend):
    def missing(*args, **kwargs):
        raise NotImplementedError(f"the {backend} kernels have no {op!r}: run this layer on the CPU, or add "
                                  f"{op} to convlib/kernels/{backend}/ (its maths: reference.{op})")
    missing.__name__ = op
    return missing


_sets = {}
_active = []                 # the CPU kernel set in use: [name]


def backend(name):
    """The ``KernelSet`` of a backend: "reference", "cpu" or "cuda" (imported on first use)."""
    if name not in _sets:
        if name not in ("reference", "cpu", "cuda"):
            raise ValueError(f"unknown kernel set {name!r}; expected one of ['cpu', 'reference']")
        module = None if name == "reference" else importlib.import_module(f"{__name__}.{name}")
        _sets[name] = KernelSet(name, module, fallback=name == "cpu")
    return _sets[name]


def use_kernels(name):
    """Select the CPU kernel set: ``"cpu"`` (Numba, default) or ``"reference"`` (plain NumPy)."""
    if name not in ("cpu", "reference"):
        raise ValueError(f"unknown kernel set {name!r}; expected one of ['cpu', 'reference']")
    _active[:] = [name]


def kernels_for(x):
    """The ``KernelSet`` for where ``x`` lives (an array, or a list of arrays: its first)."""
    if isinstance(x, (list, tuple)) and x:
        x = x[0]
    return backend("cuda" if getattr(x, "__cuda_ndarray__", False) else _active[0])


def signature_mismatches(module):
    """[(op, why)] for ops of a backend module whose parameters differ from the reference's, and
    public functions named like an op (``*_forward``, ``*_backward``, ``*_step``) that are not one."""
    bad = [(name, "not in the contract") for name, fn in inspect.getmembers(module, inspect.isfunction)
           if name.endswith(("_forward", "_backward", "_step")) and name not in OPS]
    for op, maths in OPS.items():
        if hasattr(module, op):
            got, want = (list(inspect.signature(f).parameters) for f in (getattr(module, op), maths))
            if got != want:
                bad.append((op, f"parameters {got}, the reference has {want}"))
    return bad


use_kernels(os.environ.get("CONVLIB_KERNELS", "cpu"))
from . import reference  # noqa: E402,F401  (declares the ops)
