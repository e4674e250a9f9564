"""Fused units: neighbouring layers that ``Sequential`` runs as one, with the layers' values and
gradients but fewer passes over memory. Speed machinery beside the teaching core (counted
apart, as the kernels are): the maths of a unit is that of its layers in turn, and every unit is
tested against them (tests/test_model.py, tests/test_kernels.py).

- ReLU then MaxPool2d: relu(maxpool(x)), since max commutes with the monotone ReLU, so the ReLU
  touches the pooled map (a quarter of the values for 2x2 pools).
- On the CPU, Conv2d then a BatchNorm2d in eval mode: the batch norm folded into the conv's
  weights, y = (conv(x, w) + b - mean) * s + beta with s = gamma / sqrt(var + eps), that is
  conv(x, w * s) + (b - mean) * s + beta: one pass fewer over the conv's output.
- On the CPU, a BatchNorm2d in training mode then ReLU + MaxPool2d, through the op
  ``batchnorm_pool_forward``, which the CPU backend computes, for 2x2 pools, in one pass after the
  batch's statistics: the normalised map never goes through memory, and backward sums the
  gradients over the windows' maxima alone (in eval mode the batch norm folds into its conv).
- On the CPU, Conv2d (with its batch norm folded in or not) then ReLU + MaxPool2d, through the
  op ``conv2d_pool_forward``, which the CPU backend computes in one pass for 2x2 pools after a
  net's first layer (1-3 input channels) and every Winograd layer: the convolution's full output
  never goes through memory. Or then a ReLU alone (the same op without a pool), which Winograd
  applies as it writes its output. A subclass of Conv2d never fuses: its own forward would be
  bypassed.
"""
import weakref

import numpy as np

from .kernels import reference as ops
from .layers import BatchNorm2d, Conv2d, Layer, MaxPool2d, ReLU

_kept = weakref.WeakKeyDictionary()  # batch norm -> (its conv, copies of what w' was made of, _folded())


def fuse(layer, next_layer):
    """A unit computing ``layer`` then ``next_layer``, or None where they do not fuse.
    ``Sequential`` asks this of each pair of neighbours, and again of a unit it just made."""
    if isinstance(layer, ReLU) and isinstance(next_layer, MaxPool2d):
        return ReLUMaxPool(layer, next_layer)
    if type(layer) is BatchNorm2d and layer.training and layer.device == "cpu" and isinstance(next_layer, ReLUMaxPool):
        return NormReLUPool(layer, next_layer)
    folded = isinstance(layer, ConvUnit) and layer.relu_pool is None      # a conv with its batch norm
    conv, bn = (layer.conv, layer.bn) if folded else (layer, None)
    if type(conv) is not Conv2d or conv.device != "cpu":
        return None
    if not folded and isinstance(next_layer, BatchNorm2d) and not next_layer.training and \
            next_layer.device == "cpu" and next_layer.num_features == conv.out_channels and \
            next_layer.dtype == conv.dtype:
        return ConvUnit(conv, next_layer, None)
    if isinstance(next_layer, ReLUMaxPool) or type(next_layer) is ReLU:
        return ConvUnit(conv, bn, next_layer)
    return None


class ReLUMaxPool(Layer):
    """ReLU then MaxPool2d, run as relu(maxpool(x)). Gradients are the same too: where a
    window's maximum is positive both send dout to its first maximum; where it is <= 0 (or NaN)
    both send zero. One op, ``maxpool2d_forward(..., relu=True)``, which a backend may run in one
    pass."""

    def __init__(self, relu, pool):
        self.relu, self.pool = relu, pool

    def __repr__(self):
        return f"{self.relu!r} + {self.pool!r}"

    def output_shape(self, shape):
        return self.pool.output_shape(shape)

    def forward(self, x):
        self._check(x)
        out, self._cache = ops.maxpool2d_forward(x, self.pool.kernel_size, self.pool.stride,
                                                 self.pool.padding, relu=True)
        return out

    def backward(self, dout, need_dx=True):
        return ops.maxpool2d_backward(dout, self._saved(dout))


class NormReLUPool(Layer):
    """A BatchNorm2d ``bn`` in training mode, then a ``ReLUMaxPool``: one op,
    ``batchnorm_pool_forward``, with the batch norm's checks, statistics and gradients."""

    def __init__(self, bn, relu_pool):
        self.bn, self.relu_pool = bn, relu_pool

    def __repr__(self):
        return f"{self.bn!r} + {self.relu_pool!r}"

    def output_shape(self, shape):
        return self.relu_pool.output_shape(self.bn.output_shape(shape))

    def forward(self, x):
        self._check(x)
        pool = self.relu_pool.pool
        out, self._cache = ops.batchnorm_pool_forward(*self.bn._arguments(x),
                                                      (pool.kernel_size, pool.stride, pool.padding))
        return out

    def backward(self, dout, need_dx=True):
        dx, dgamma, dbeta = ops.batchnorm_pool_backward(dout, self._saved(dout))
        self.bn._add_grads(dgamma, dbeta)
        return dx


class ConvUnit(Layer):
    """Conv2d, then an eval-mode BatchNorm2d ``bn`` folded into its weights or None, then a
    ``ReLUMaxPool`` or a ``ReLU`` (``relu_pool``) or None: one ``conv2d_forward`` or
    ``conv2d_pool_forward`` (without a pool after a ReLU alone).
    Backward takes the gradients of the folded weights w' and bias b' back to the layers':
    dw = dw' * s, db = db' * s, dgamma = (sum over C, KH, KW of dw' * w + db' * (b - mean)) /
    sqrt(var + eps), dbeta = db'."""

    def __init__(self, conv, bn, relu_pool):
        self.conv, self.bn, self.relu_pool = conv, bn, relu_pool

    def __repr__(self):
        return " + ".join(repr(layer) for layer in (self.conv, self.bn, self.relu_pool) if layer is not None)

    def output_shape(self, shape):
        shape = self.conv.output_shape(shape)
        return shape if self.relu_pool is None else self.relu_pool.output_shape(shape)

    def _folded(self):
        """(w' (F, C, KH, KW), b' (F,) or None, s (F,) or None, 1 / sqrt(var + eps) (F,) or None).
        Kept while the arrays it is made of hold the same values (``_kept``): the same w' array
        each eval forward, so that a backend's kept transform of it (Winograd's) is reused too."""
        conv, bn = self.conv, self.bn
        w, b = conv.weight.data, conv.bias.data if conv.bias is not None else None
        if bn is None:
            return w, b, None, None
        made_of = [w, bn.weight.data, bn.bias.data, bn.running_mean, bn.running_var, np.float64(bn.eps)] + \
            ([] if b is None else [b])
        kept = _kept.get(bn)
        if kept is not None and kept[0] is conv and len(kept[1]) == len(made_of) and \
                all(k.shape == a.shape and k.dtype == a.dtype and np.array_equal(k, a)
                    for k, a in zip(kept[1], made_of)):
            return kept[2]
        inv_std = 1 / np.sqrt(bn.running_var + bn.eps)              # (F,)
        s = bn.weight.data * inv_std                                # (F,)
        b = ((0 if b is None else b) - bn.running_mean) * s + bn.bias.data
        folded = w * s[:, None, None, None], b, s, inv_std
        _kept[bn] = (conv, [np.copy(a) for a in made_of], folded)
        return folded

    def forward(self, x):
        self.conv._check(x)                                         # dtype and device, as the conv's
        self._check(x)
        conv = self.conv
        w, b, s, inv_std = self._folded()
        if self.relu_pool is None:
            out, cache = ops.conv2d_forward(x, w, b, conv.stride, conv.padding)
        else:
            pool = getattr(self.relu_pool, "pool", None)                # None after a ReLU alone
            out, cache = ops.conv2d_pool_forward(x, w, b, conv.stride, conv.padding,
                                                 pool and (pool.kernel_size, pool.stride, pool.padding), conv.training)
        self._cache = (cache, s, inv_std)
        return out

    def backward(self, dout, need_dx=True):
        cache, s, inv_std = self._saved(dout)
        backward = ops.conv2d_backward if self.relu_pool is None else ops.conv2d_pool_backward
        dx, dw, db = backward(dout, cache, need_dx)                # of the folded w' and b'
        if self.bn is not None:
            conv, bn = self.conv, self.bn
            b = 0 if conv.bias is None else conv.bias.data
            dgamma = ((dw * conv.weight.data).sum(axis=(1, 2, 3)) + db * (b - bn.running_mean)) * inv_std
            bn._add_grads(dgamma, db)
            dw, db = dw * s[:, None, None, None], db * s
        self.conv._add_grads(dw, db)
        return dx
