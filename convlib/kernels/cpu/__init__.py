"""The CPU backend: Numba kernels for the ops that gain from them, same names, signatures and
results as ``convlib/kernels/reference.py``; every other op runs the reference's NumPy code.

What it makes faster, and how:

- ``conv.py``: convolution as im2col + a BLAS product, a few images at a time so the columns
  stay in the core's cache; a direct loop for 1-3 input channels (a net's first layer), which
  also runs the ReLU and 2x2 max-pool after it in the same pass; Linear's products split over
  the threads;
- ``winograd.py``: F(4x4, 3x3) for the 3x3 stride-1 convolutions with 16 or more channels (in eval
  mode with the ReLU and 2x2 max-pool after them pooled from its output tiles);
- ``pool.py``: max and average pooling as plain loops (a branch-free 2x2 path);
- ``relu.py``, ``batchnorm.py``: one pass per element, per-channel sums in float64; in training a
  batch norm, ReLU and 2x2 max-pool in one pass after the statistics (``fused.fuse``);
- ``optim.py``: SGD's step in one pass per parameter, to the bit as the reference's;
- ``threads.py``: how the kernels share the cores (a small pool of Python threads running
  single-threaded ``nogil`` kernels, BLAS held at one thread meanwhile; no OpenMP).

How it is checked: ``tests/test_contract.py`` runs every op here against the reference in float32
and float64 on edge cases (ties, NaN, padding); ``tests/test_kernels.py`` and
``tests/test_threads.py`` run hypothesis geometries, float64 finite differences and the threaded
paths. ``cl.use_kernels("reference")`` (or ``CONVLIB_KERNELS=reference``) switches this backend off.
"""
from .batchnorm import batchnorm_backward, batchnorm_forward, batchnorm_pool_backward, batchnorm_pool_forward
from .conv import (
    conv2d_backward,
    conv2d_forward,
    conv2d_pool_backward,
    conv2d_pool_forward,
    linear_backward,
    linear_forward,
)
from .optim import sgd_step
from .pool import avgpool2d_backward, avgpool2d_forward, maxpool2d_backward, maxpool2d_forward
from .relu import relu_backward, relu_forward
