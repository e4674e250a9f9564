"""Layers: each one's forward and hand-written backward side by side.

The contract every layer keeps (``Layer``): ``forward(x)`` stores what its backward needs,
``backward(dout, need_dx=True)`` adds into each ``Parameter.grad`` and returns dL/dx (a layer
may return None when ``need_dx`` is False and it saves work by skipping it); ``__call__`` is
``forward``; ``parameters()``, ``named_parameters()``, ``state_dict()``, ``load_state_dict()``,
``train()``, ``eval()``, ``to(device_or_dtype)``. Names, argument order, defaults and array
layouts follow ``torch.nn`` so that weights move between the two without conversion.

The arithmetic lives in the ops of ``kernels/reference.py`` (``ops.conv2d_forward(...)``): go to
an op's definition and you read its maths in NumPy; the call itself runs the fastest backend for
where the array lives (Numba on the CPU, numba.cuda on a GPU).
"""
import math
from collections import namedtuple

import numpy as np

from .backend import check_device, copy_into, device_of, is_array, to_device, to_host
from .kernels import reference as ops
from .rng import get_rng


class Parameter:
    """A trainable array ``data`` and its gradient ``grad`` (same shape and dtype).

    ``requires_grad=False`` freezes it (as in torch): backward adds nothing into ``grad`` and
    optimizers leave ``data`` untouched (``Layer.requires_grad_`` sets it for a whole layer).
    Layers add gradients with ``add_grad``. ``zero_grad`` runs nothing: the next ``add_grad``
    takes its array as the gradient (no zeroing and adding passes), and reading ``grad`` before
    that zeroes it then.
    """

    def __init__(self, data, requires_grad=True):
        self.data = np.ascontiguousarray(data)
        self._grad, self._zero_pending = np.zeros_like(self.data), False
        self.requires_grad = bool(requires_grad)

    @property
    def grad(self):
        if self._zero_pending:
            ops.zero_(self._grad)
            self._zero_pending = False
        return self._grad

    @grad.setter
    def grad(self, value):
        self._grad, self._zero_pending = value, False

    def zero_grad(self):
        """grad = 0, when it is next read or added to."""
        self._zero_pending = True

    def add_grad(self, g):
        """grad += g, where g (on data's device) is handed over: after zero_grad, if it has data's
        shape and type, it becomes the gradient itself."""
        if self._zero_pending and g.shape == self._grad.shape and g.dtype == self._grad.dtype:
            self.grad = g
        else:
            ops.accumulate(self.grad, g)

    @property
    def shape(self):
        return self.data.shape

    def __repr__(self):
        frozen = "" if self.requires_grad else ", requires_grad=False"
        return f"Parameter(shape={self.data.shape}, dtype={self.data.dtype}{frozen})"


IncompatibleKeys = namedtuple("IncompatibleKeys", ["missing_keys", "unexpected_keys"])
IncompatibleKeys.__doc__ = "What ``load_state_dict`` did not match: key lists, named and ordered as torch's."


def _pair(value, name, layer, minimum):
    """An int or a pair of ints, each >= minimum -> (a, b); ValueError otherwise."""
    pair = (value, value) if isinstance(value, (int, np.integer)) else tuple(value)
    if len(pair) != 2 or not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool)
                                 for v in pair):
        raise ValueError(f"{layer}: {name} must be an int or a pair of ints, got {value!r}")
    if min(pair) < minimum:
        raise ValueError(f"{layer}: {name} must be >= {minimum}, got {value!r}")
    return int(pair[0]), int(pair[1])


def _positive(value, name, layer):
    """A finite number > 0, as a float; ValueError otherwise."""
    if not (isinstance(value, (int, float)) and 0 < value < math.inf):
        raise ValueError(f"{layer}: {name} must be a number > 0, got {value!r}")
    return float(value)


def _uniform(shape, bound, dtype):
    return get_rng().uniform(-bound, bound, size=shape).astype(dtype)


class Layer:
    """Base class. Subclasses set ``_param_names`` / ``_buffer_names`` and implement
    ``config()``, ``output_shape()``, ``forward()`` and ``backward()``."""
    _param_names = ()
    _buffer_names = ()
    training = True
    dtype = np.dtype(np.float32)

    # ---- bookkeeping shared by every layer
    def __call__(self, x):
        return self.forward(x)

    def config(self):
        """Constructor arguments as a JSON-able dict (used by ``__repr__`` and ``convlib.save``)."""
        return {}

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items())
        return f"{type(self).__name__}({args})"

    def children(self):
        """[(name, layer)]: the layers a container is made of (none for a plain layer)."""
        return []

    def _own(self, names, prefix):
        return [(prefix + n, getattr(self, n)) for n in names if getattr(self, n) is not None]

    def _children(self, method, prefix):
        return [kv for name, child in self.children() for kv in getattr(child, method)(f"{prefix}{name}.")]

    def named_parameters(self, prefix=""):
        """[(name, Parameter)] in state_dict order; names as in ``torch.nn`` (``"0.weight"``)."""
        return self._own(self._param_names, prefix) + self._children("named_parameters", prefix)

    def parameters(self):
        return [p for _, p in self.named_parameters()]

    def named_buffers(self, prefix=""):
        """[(name, ndarray)]: state that is saved but not trained (e.g. running means)."""
        return self._own(self._buffer_names, prefix) + self._children("named_buffers", prefix)

    def named_state(self, prefix=""):
        """[(name, array)]: own parameters and buffers, then each child's (torch's state_dict order)."""
        own = [(n, p.data) for n, p in self._own(self._param_names, prefix)] + self._own(self._buffer_names, prefix)
        return own + self._children("named_state", prefix)

    def state_dict(self):
        """{name: host array copy} of every parameter and buffer, keys and order as in ``torch.nn``."""
        return {n: np.array(to_host(a), copy=True) for n, a in self.named_state()}

    def load_state_dict(self, state, strict=True):
        """Copy arrays in by name (in place: optimizers keep their references).

        ``strict=True``: ValueError on a missing or unexpected key. ``strict=False`` loads the
        keys both sides have and reports the others. Either way a key whose shape differs, or
        that holds NaN/inf, raises ValueError before anything is copied. Returns
        ``IncompatibleKeys(missing_keys, unexpected_keys)``, as torch does.
        """
        params = dict(self.named_parameters())
        buffers = dict(self.named_buffers())
        want = [n for n, _ in self.named_state()]                   # state_dict order, as torch lists them
        keys = IncompatibleKeys([n for n in want if n not in state], [k for k in state if k not in params
                                                                      and k not in buffers])
        if strict and (keys.missing_keys or keys.unexpected_keys):
            raise ValueError(f"load_state_dict: missing keys {keys.missing_keys}, "
                             f"unexpected keys {keys.unexpected_keys}")
        loads = []
        for name in (n for n in want if n in state):
            have = params[name].data if name in params else buffers[name]
            new = to_host(state[name])
            if new.shape != have.shape:
                raise ValueError(f"load_state_dict: {name!r} has shape {new.shape}, "
                                 f"the model expects {have.shape}")
            if not np.all(np.isfinite(new)):
                raise ValueError(f"load_state_dict: {name!r} holds NaN or infinite values")
            loads.append((have, new))
        for have, new in loads:                                     # all checked: nothing half-loaded
            copy_into(have, new)
        return keys

    def requires_grad_(self, requires_grad=True):
        """Freeze (False) or unfreeze (True) every parameter of this layer; returns the layer.
        ``net[:3].requires_grad_(False)`` freezes the first three layers of a Sequential."""
        for p in self.parameters():
            p.requires_grad = bool(requires_grad)
        return self

    def train(self, mode=True):
        """Training mode (dropout active, batch norm uses batch statistics), children included."""
        self.training = bool(mode)
        for _, child in self.children():
            child.train(mode)
        return self

    def eval(self):
        return self.train(False)

    def to(self, target):
        """``to("cpu")`` / ``to("cuda")`` moves the parameters, gradients and float buffers (the
        batch counter stays on the host); ``to(np.float64)`` casts them where they are. Create
        the optimizer after moving a net, as in torch: its state lives where the parameters do."""
        if isinstance(target, str) and target in ("cpu", "cuda"):
            check_device(target)
            move = lambda a: to_device(a, target)
        else:
            try:
                dtype = np.dtype(target)
            except TypeError:
                dtype = None
            if dtype is None or dtype.kind != "f":
                raise ValueError(f"{self!r}: unknown device or dtype {target!r}; to() takes 'cpu', "
                                 f"'cuda' or a float dtype")
            self.dtype = dtype
            move = lambda a: to_device(to_host(a).astype(dtype), device_of(a))
        for _, p in self._own(self._param_names, ""):
            p.data, p.grad = move(p.data), move(p.grad)
        for n, b in self._own(self._buffer_names, ""):
            if b.dtype.kind == "f":
                setattr(self, n, move(b))
        for _, child in self.children():
            child.to(target)
        return self

    @property
    def device(self):
        """'cuda' or 'cpu': where the parameters live ('cpu' for a layer without any)."""
        params = self.parameters()
        return device_of(params[0].data) if params else "cpu"

    def zero_grad(self):
        for p in self.parameters():
            p.zero_grad()

    def _add_grads(self, dw, db):
        """weight.grad += dw and bias.grad += db (layers with those parameters), where they
        live; a frozen parameter's grad stays as it is."""
        for p, g in ((self.weight, dw), (self.bias, db)):
            if p is not None and p.requires_grad:
                p.add_grad(g)

    # ---- input checks: every layer validates before it computes
    def output_shape(self, shape):
        """Shape (N, ...) of the output for an input of ``shape``; ValueError if it does not fit."""
        return tuple(shape)

    def _check(self, x):
        if not is_array(x) or x.dtype.kind != "f":
            raise ValueError(f"{self!r}: expected a float ndarray, got "
                             f"{type(x).__name__} of {getattr(x, 'dtype', '?')}")
        if self._param_names and x.dtype != self.dtype:
            raise ValueError(f"{self!r}: expected {self.dtype} input (the dtype of its parameters), "
                             f"got {x.dtype}; cast the input or call .to({x.dtype.name!r})")
        if self._param_names and device_of(x) != self.device:
            raise ValueError(f"{self!r}: its parameters are on {self.device} but the input is on "
                             f"{device_of(x)}; move it with cl.to_device(x, {self.device!r})")
        self._out_shape = tuple(self.output_shape(x.shape))                # backward checks dout against it

    def _saved(self, dout):
        """What forward() kept for backward(), released here (memory is not held between steps),
        after checking that ``dout`` has the shape forward() returned."""
        cache = getattr(self, "_cache", None)
        if cache is None:
            raise RuntimeError(f"{self!r}: backward() called without a forward() since the last backward()")
        want = getattr(self, "_out_shape", None)
        if want is not None and tuple(getattr(dout, "shape", ())) != want:
            raise ValueError(f"{self!r}: backward expected dout of shape {want} (the output of forward), "
                             f"got {getattr(dout, 'shape', type(dout).__name__)}")
        self._cache = None
        return cache


# ---------------------------------------------------------------- convolution and pooling
class Conv2d(Layer):
    """2-D convolution (cross-correlation) over an NCHW batch.

    Args:
        in_channels, out_channels (int): C and F.
        kernel_size (int or pair): KH, KW.
        stride (int or pair, default 1), padding (int or pair, default 0, zeros).
        bias (bool, default True).
    Shape:
        input (N, C, H, W) -> output (N, F, OH, OW), OH = (H + 2*PH - KH) // SH + 1 (same for W).
    Attributes:
        weight (F, C, KH, KW) and bias (F,), initialised U(-1/sqrt(C*KH*KW), +) as in torch.
    Maths: ``reference.conv2d_forward`` / ``conv2d_backward``.

    >>> conv = Conv2d(3, 16, 3, padding=1)
    >>> conv(np.zeros((2, 3, 32, 32), np.float32)).shape
    (2, 16, 32, 32)
    """
    _param_names = ("weight", "bias")

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, bias=True):
        name = "Conv2d"
        self.in_channels = _pair(in_channels, "in_channels", name, 1)[0]
        self.out_channels = _pair(out_channels, "out_channels", name, 1)[0]
        self.kernel_size = _pair(kernel_size, "kernel_size", name, 1)
        self.stride = _pair(stride, "stride", name, 1)
        self.padding = _pair(padding, "padding", name, 0)
        fan_in = self.in_channels * self.kernel_size[0] * self.kernel_size[1]
        bound = 1 / math.sqrt(fan_in)
        self.weight = Parameter(_uniform((self.out_channels, self.in_channels, *self.kernel_size),
                                         bound, self.dtype))
        self.bias = Parameter(_uniform((self.out_channels,), bound, self.dtype)) if bias else None

    def config(self):
        return dict(in_channels=self.in_channels, out_channels=self.out_channels,
                    kernel_size=self.kernel_size, stride=self.stride, padding=self.padding,
                    bias=self.bias is not None)

    def output_shape(self, shape):
        if len(shape) != 4 or shape[1] != self.in_channels:
            raise ValueError(f"{self!r}: expected input of shape (N, {self.in_channels}, H, W), "
                             f"got {tuple(shape)}")
        return (shape[0], self.out_channels) + _window_out(self, shape)

    def forward(self, x):
        self._check(x)
        b = self.bias.data if self.bias is not None else None
        out, self._cache = ops.conv2d_forward(x, self.weight.data, b, self.stride, self.padding)
        return out

    def backward(self, dout, need_dx=True):
        """Adds dL/dweight and dL/dbias into the grads; returns dL/dx (None if not need_dx:
        a first layer's input gradient is rarely wanted and costs a third of its backward)."""
        dx, dw, db = ops.conv2d_backward(dout, self._saved(dout), need_dx)
        self._add_grads(dw, db)
        return dx


def _window_out(layer, shape):
    """(OH, OW) of a sliding window layer; ValueError if the window does not fit."""
    (KH, KW), (SH, SW), (PH, PW) = layer.kernel_size, layer.stride, layer.padding
    H, W = shape[2], shape[3]
    OH, OW = (H + 2 * PH - KH) // SH + 1, (W + 2 * PW - KW) // SW + 1
    if OH < 1 or OW < 1:
        raise ValueError(f"{layer!r}: input {H}x{W} (padded to {H + 2 * PH}x{W + 2 * PW}) is smaller "
                         f"than the kernel {KH}x{KW}; got input shape {tuple(shape)}")
    return OH, OW


class _Pool2d(Layer):
    """Shared settings and checks of MaxPool2d and AvgPool2d."""

    def __init__(self, kernel_size, stride=None, padding=0):
        name = type(self).__name__
        self.kernel_size = _pair(kernel_size, "kernel_size", name, 1)
        self.stride = _pair(kernel_size if stride is None else stride, "stride", name, 1)
        self.padding = _pair(padding, "padding", name, 0)
        if any(2 * p > k for p, k in zip(self.padding, self.kernel_size)):
            raise ValueError(f"{name}: padding {self.padding} must be at most half of "
                             f"kernel_size {self.kernel_size}")

    def config(self):
        return dict(kernel_size=self.kernel_size, stride=self.stride, padding=self.padding)

    def output_shape(self, shape):
        if len(shape) != 4:
            raise ValueError(f"{self!r}: expected input of shape (N, C, H, W), got {tuple(shape)}")
        return tuple(shape[:2]) + _window_out(self, shape)

    def forward(self, x):
        self._check(x)
        out, self._cache = self._forward(x, self.kernel_size, self.stride, self.padding)
        return out

    def backward(self, dout, need_dx=True):
        return self._backward(dout, self._saved(dout))


class MaxPool2d(_Pool2d):
    """Max over KH x KW windows; padding counts as -inf; ties send the gradient to the first
    maximum; a NaN in a window is its maximum (NaN propagates).

    Args: kernel_size (int or pair), stride (default kernel_size), padding (default 0, at most
    kernel_size/2). Shape: (N, C, H, W) -> (N, C, OH, OW), OH = (H + 2*PH - KH) // SH + 1.
    Maths: ``reference.maxpool2d_forward`` / ``maxpool2d_backward``.

    >>> MaxPool2d(2)(np.zeros((1, 3, 8, 6), np.float32)).shape
    (1, 3, 4, 3)
    """

    def _forward(self, x, *window):
        return ops.maxpool2d_forward(x, *window)

    def _backward(self, dout, cache):
        return ops.maxpool2d_backward(dout, cache)


class AvgPool2d(_Pool2d):
    """Mean over KH x KW windows; zero padding counts in the divisor (torch's count_include_pad).

    Args and Shape as MaxPool2d. Maths: ``reference.avgpool2d_forward`` / ``avgpool2d_backward``.
    """

    def _forward(self, x, *window):
        return ops.avgpool2d_forward(x, *window)

    def _backward(self, dout, cache):
        return ops.avgpool2d_backward(dout, cache)


class AdaptiveAvgPool2d(Layer):
    """Global average pooling: the mean of each channel's plane, torch's ``AdaptiveAvgPool2d(1)``
    (only output_size 1, or (1, 1), is supported).

    Shape: (N, C, H, W) -> (N, C, 1, 1). Maths: ``reference.global_avgpool2d_forward`` / ``_backward``.

    >>> AdaptiveAvgPool2d(1)(np.ones((2, 3, 5, 4), np.float32)).shape
    (2, 3, 1, 1)
    """

    def __init__(self, output_size=1):
        if output_size not in (1, (1, 1), [1, 1]):
            raise ValueError(f"AdaptiveAvgPool2d: only output_size 1 (global average pooling) is "
                             f"supported, got {output_size!r}")
        self.output_size = 1

    def config(self):
        return dict(output_size=self.output_size)

    def output_shape(self, shape):
        if len(shape) != 4:
            raise ValueError(f"{self!r}: expected input of shape (N, C, H, W), got {tuple(shape)}")
        return tuple(shape[:2]) + (1, 1)

    def forward(self, x):
        self._check(x)
        out, self._cache = ops.global_avgpool2d_forward(x)
        return out

    def backward(self, dout, need_dx=True):
        return ops.global_avgpool2d_backward(dout, self._saved(dout))


# ---------------------------------------------------------------- pointwise
class _Pointwise(Layer):
    """An elementwise activation: any shape in, the same shape out. Subclasses name their two
    ops in ``_forward(x)`` and ``_backward(dout, cache)``."""

    def forward(self, x):
        self._check(x)
        out, self._cache = self._forward(x)
        return out

    def backward(self, dout, need_dx=True):
        return self._backward(dout, self._saved(dout))


class ReLU(_Pointwise):
    """max(x, 0). The gradient at exactly 0 is 0 (as in torch).
    Maths: ``reference.relu_forward`` / ``relu_backward``."""

    def _forward(self, x):
        return ops.relu_forward(x)

    def _backward(self, dout, cache):
        return ops.relu_backward(dout, cache)


class LeakyReLU(_Pointwise):
    """x for x > 0, negative_slope * x otherwise.
    Maths: ``reference.leaky_relu_forward`` / ``leaky_relu_backward``."""

    def __init__(self, negative_slope=0.01):
        if not (isinstance(negative_slope, (int, float)) and math.isfinite(negative_slope)):
            raise ValueError(f"LeakyReLU: negative_slope must be a finite number, got {negative_slope!r}")
        self.negative_slope = float(negative_slope)

    def config(self):
        return dict(negative_slope=self.negative_slope)

    def _forward(self, x):
        return ops.leaky_relu_forward(x, self.negative_slope)

    def _backward(self, dout, cache):
        return ops.leaky_relu_backward(dout, cache)


class Sigmoid(_Pointwise):
    """1 / (1 + exp(-x)), computed without overflow for large |x|.
    Maths: ``reference.sigmoid_forward`` / ``sigmoid_backward``."""

    def _forward(self, x):
        return ops.sigmoid_forward(x)

    def _backward(self, dout, cache):
        return ops.sigmoid_backward(dout, cache)


class Tanh(_Pointwise):
    """tanh(x). Maths: ``reference.tanh_forward`` / ``tanh_backward``."""

    def _forward(self, x):
        return ops.tanh_forward(x)

    def _backward(self, dout, cache):
        return ops.tanh_backward(dout, cache)


class Dropout(_Pointwise):
    """Inverted dropout: in training, zero each element with probability p and scale the rest by
    1/(1-p); in eval mode (or p = 0), the identity. Masks come from ``convlib.manual_seed``'s
    generator. Maths: ``reference.dropout_forward`` / ``dropout_backward``."""

    def __init__(self, p=0.5):
        if not (isinstance(p, (int, float)) and 0 <= p < 1):
            raise ValueError(f"Dropout: p must be in [0, 1), got {p!r}")
        self.p = float(p)

    def config(self):
        return dict(p=self.p)

    def _forward(self, x):
        if not (self.training and self.p > 0):
            return x, (None,)                                       # no mask: the identity
        out, mask = ops.dropout_forward(x, self.p, get_rng())
        return out, (mask,)

    def _backward(self, dout, cache):
        (mask,) = cache
        return dout if mask is None else ops.dropout_backward(dout, mask)


# ---------------------------------------------------------------- reshaping and dense
class Flatten(Layer):
    """(N, d1, d2, ...) -> (N, d1*d2*...)."""

    def output_shape(self, shape):
        if len(shape) < 2:
            raise ValueError(f"{self!r}: expected input with a batch axis, (N, ...), got {tuple(shape)}")
        return (shape[0], int(math.prod(shape[1:])))              # np.prod: tens of us after a conv

    def forward(self, x):
        self._check(x)
        self._cache = x.shape
        return x.reshape(self.output_shape(x.shape))

    def backward(self, dout, need_dx=True):
        return dout.reshape(self._saved(dout))


class Linear(Layer):
    """Fully connected layer: out = x @ weight.T + bias.

    Args: in_features, out_features (int), bias (bool, default True).
    Shape: (N, in_features) -> (N, out_features).
    Attributes: weight (out_features, in_features), bias (out_features,), U(-1/sqrt(in), +).
    Maths: ``reference.linear_forward`` / ``linear_backward``.

    >>> Linear(4, 2)(np.zeros((3, 4), np.float32)).shape
    (3, 2)
    """
    _param_names = ("weight", "bias")

    def __init__(self, in_features, out_features, bias=True):
        self.in_features = _pair(in_features, "in_features", "Linear", 1)[0]
        self.out_features = _pair(out_features, "out_features", "Linear", 1)[0]
        bound = 1 / math.sqrt(self.in_features)
        self.weight = Parameter(_uniform((self.out_features, self.in_features), bound, self.dtype))
        self.bias = Parameter(_uniform((self.out_features,), bound, self.dtype)) if bias else None

    def config(self):
        return dict(in_features=self.in_features, out_features=self.out_features,
                    bias=self.bias is not None)

    def output_shape(self, shape):
        if len(shape) != 2 or shape[1] != self.in_features:
            raise ValueError(f"{self!r}: expected input of shape (N, {self.in_features}), "
                             f"got {tuple(shape)}")
        return (shape[0], self.out_features)

    def forward(self, x):
        self._check(x)
        b = self.bias.data if self.bias is not None else None
        out, self._cache = ops.linear_forward(x, self.weight.data, b)
        return out

    def backward(self, dout, need_dx=True):
        """Adds into the grads; returns dL/dx (None if not need_dx)."""
        dx, dw, db = ops.linear_backward(dout, self._saved(dout), need_dx)
        self._add_grads(dw, db)
        return dx


# ---------------------------------------------------------------- batch normalisation
class _BatchNorm(Layer):
    """Shared by BatchNorm1d and BatchNorm2d: torch's semantics, parameters and buffers."""
    _param_names = ("weight", "bias")
    _buffer_names = ("running_mean", "running_var", "num_batches_tracked")

    def __init__(self, num_features, eps=1e-5, momentum=0.1):
        name = type(self).__name__
        self.num_features = _pair(num_features, "num_features", name, 1)[0]
        self.eps = _positive(eps, "eps", name)
        if not (isinstance(momentum, (int, float)) and 0 <= momentum <= 1):
            raise ValueError(f"{name}: momentum must be in [0, 1], got {momentum!r}")
        self.momentum = float(momentum)
        C = self.num_features
        self.weight = Parameter(np.ones(C, self.dtype))
        self.bias = Parameter(np.zeros(C, self.dtype))
        self.running_mean = np.zeros(C, self.dtype)
        self.running_var = np.ones(C, self.dtype)
        self.num_batches_tracked = np.zeros((), np.int64)

    def config(self):
        return dict(num_features=self.num_features, eps=self.eps, momentum=self.momentum)

    def output_shape(self, shape):
        want = "(N, C)" if self._ndim == 2 else "(N, C, H, W)"
        if len(shape) != self._ndim or shape[1] != self.num_features:
            raise ValueError(f"{self!r}: expected input of shape {want.replace('C', str(self.num_features))}, "
                             f"got {tuple(shape)}")
        return tuple(shape)

    def forward(self, x):
        out, self._cache = ops.batchnorm_forward(*self._arguments(x))
        return out

    def _arguments(self, x):
        """Check x and count a training batch; the arguments of ``batchnorm_forward`` for x (a
        fused unit, ``fused.NormReLUPool``, passes them on with a pool's)."""
        self._check(x)
        if self.training and x.size // x.shape[1] < 2:
            raise ValueError(f"{self!r}: training needs more than one value per channel, got input "
                             f"shape {x.shape}")
        if self.training:
            self.num_batches_tracked += 1
        return (x, self.weight.data, self.bias.data, self.running_mean, self.running_var, self.momentum,
                self.eps, self.training)

    def backward(self, dout, need_dx=True):
        dx, dgamma, dbeta = ops.batchnorm_backward(dout, self._saved(dout))
        self._add_grads(dgamma, dbeta)
        return dx


class BatchNorm2d(_BatchNorm):
    """Batch normalisation over (N, H, W) for each channel of an NCHW batch.

    Args: num_features (C), eps (1e-5), momentum (0.1: running = 0.9 * running + 0.1 * batch).
    Shape: (N, C, H, W) -> same. Attributes: weight (C,) = 1, bias (C,) = 0; buffers
    running_mean (C,) = 0, running_var (C,) = 1, num_batches_tracked (). Training mode uses the
    batch statistics and updates the running ones; eval mode uses the running ones.
    Maths: ``reference.batchnorm_forward`` / ``batchnorm_backward``.
    """
    _ndim = 4


class BatchNorm1d(_BatchNorm):
    """Batch normalisation of each feature of an (N, C) batch; see BatchNorm2d."""
    _ndim = 2


class GroupNorm(Layer):
    """Group normalisation, torch's ``nn.GroupNorm``: the channels of each image are split into
    ``num_groups`` groups, each normalised with its own mean and variance, then every channel is
    scaled and shifted. It does not depend on the batch: the same in training and eval, any N.

    Args: num_groups (G, divides num_channels), num_channels (C), eps (1e-5), affine (True:
    learn weight and bias). Shape: (N, C, *) -> same. Attributes: weight (C,) = 1, bias (C,) = 0.
    Maths: ``reference.groupnorm_forward`` / ``groupnorm_backward``.

    >>> GroupNorm(2, 4)(np.ones((3, 4, 5, 5), np.float32)).shape
    (3, 4, 5, 5)
    """
    _param_names = ("weight", "bias")

    def __init__(self, num_groups, num_channels, eps=1e-5, affine=True):
        self.num_groups = _pair(num_groups, "num_groups", "GroupNorm", 1)[0]
        self.num_channels = _pair(num_channels, "num_channels", "GroupNorm", 1)[0]
        if self.num_channels % self.num_groups:
            raise ValueError(f"GroupNorm: num_channels {num_channels} must be divisible by num_groups {num_groups}")
        self.eps = _positive(eps, "eps", "GroupNorm")
        self.weight = Parameter(np.ones(self.num_channels, self.dtype)) if affine else None
        self.bias = Parameter(np.zeros(self.num_channels, self.dtype)) if affine else None

    def config(self):
        return dict(num_groups=self.num_groups, num_channels=self.num_channels, eps=self.eps,
                    affine=self.weight is not None)

    def output_shape(self, shape):
        if len(shape) < 2 or shape[1] != self.num_channels:
            raise ValueError(f"{self!r}: expected input of shape (N, {self.num_channels}, ...), got {tuple(shape)}")
        return tuple(shape)

    def forward(self, x):
        self._check(x)
        gamma, beta = (None, None) if self.weight is None else (self.weight.data, self.bias.data)
        out, self._cache = ops.groupnorm_forward(x, self.num_groups, gamma, beta, self.eps)
        return out

    def backward(self, dout, need_dx=True):
        dx, dgamma, dbeta = ops.groupnorm_backward(dout, self._saved(dout))
        self._add_grads(dgamma, dbeta)
        return dx
