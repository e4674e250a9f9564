"""Containers: ``Sequential`` (a chain of layers) and ``Residual`` (a block with a skip connection)."""
import numpy as np

from .fused import fuse
from .kernels import reference as ops
from .layers import Layer


class Sequential(Layer):
    """Layers applied in order; backward runs them in reverse.

    Parameter names are ``"<index>.<name>"`` (``"0.weight"``), as in ``torch.nn.Sequential``.
    A bad input raises ``ValueError`` naming the layer (index and settings), the expected
    and the received shape.

    >>> from convlib import Linear, ReLU
    >>> net = Sequential(Linear(4, 8), ReLU(), Linear(8, 2))
    >>> net(np.zeros((5, 4), np.float32)).shape
    (5, 2)
    """

    def __init__(self, *layers):
        for i, layer in enumerate(layers):
            if not isinstance(layer, Layer):
                raise ValueError(f"Sequential: item {i} is {type(layer).__name__}, not a convlib layer")
        self.layers = list(layers)

    def __getitem__(self, i):
        """A layer by index, or a Sequential of the same layer objects for a slice (``net[:-1]``)."""
        return Sequential(*self.layers[i]) if isinstance(i, slice) else self.layers[i]

    def __setitem__(self, i, layer):
        """Replace layer ``i`` (an int, negative counts from the end), e.g. a new last Linear
        for other classes: ``net[-1] = Linear(64, 10)``."""
        if not isinstance(layer, Layer):
            raise ValueError(f"Sequential: can only hold convlib layers, got {type(layer).__name__}")
        if not isinstance(i, (int, np.integer)) or isinstance(i, bool):
            raise ValueError(f"Sequential: replace one layer by an int index, got {i!r}")
        self.layers[i] = layer
        self._plan = None                                           # the next backward needs a new forward

    def __len__(self):
        return len(self.layers)

    def __iter__(self):
        return iter(self.layers)

    def __repr__(self):
        return _container_repr(self)

    def _units(self):
        """[(index, unit)]: the layers in order, where a layer and the next unit can run together
        (``fused.fuse``: a ReLU before a MaxPool2d; on the CPU a Conv2d before an eval-mode
        BatchNorm2d or those two) one fused unit at the first one's index; merged from the end,
        and a unit just made is asked again about the unit after it."""
        units = list(enumerate(self.layers))
        k = len(units) - 2
        while k >= 0:
            made = fuse(units[k][1], units[k + 1][1]) if k + 1 < len(units) else None
            if made is None:
                k -= 1
            else:
                units[k:k + 2] = [(units[k][0], made)]
        return units

    def _run(self, units, method, arg, input_grad=True):
        """Run ``arg`` through the units, prefixing a layer's ValueError with its index."""
        first = 0
        if method == "backward" and not input_grad:                 # no layer below the first trainable
            first = next((i for i, layer in enumerate(self.layers)  # one needs a gradient: stop there
                          if any(p.requires_grad for p in layer.parameters())), len(self.layers))
            units = [(i, unit) for i, unit in units if i >= first]
            if not units:                                           # everything frozen: nothing to do
                return None
        for i, unit in units:
            try:
                if method == "backward":                            # the first layer's dx only if asked
                    arg = unit.backward(arg, need_dx=input_grad or i > first)
                else:
                    arg = getattr(unit, method)(arg)
            except ValueError as e:
                raise ValueError(f"Sequential layer {i}: {e}") from None
        return arg

    def forward(self, x):
        """x (N, ...) -> output of the last layer."""
        self._plan = self._units()                                  # backward runs the same units
        return self._run(self._plan, "forward", x)

    def backward(self, dout, input_grad=True, need_dx=None):
        """dL/d(output) -> dL/dx; adds into every Parameter.grad on the way.

        ``input_grad=False`` (or ``need_dx=False``, the layer contract's name) skips the input
        gradient where the first layer can (``fit`` does this: nobody needs d loss / d image
        during training) and may return None then; it also stops below the first layer with a
        trainable parameter, since frozen layers under it need no gradient (fine-tuning).
        """
        plan = getattr(self, "_plan", None)
        if plan is None:
            raise RuntimeError("Sequential: backward() called without a forward() since the last backward()")
        self._plan = None
        return self._run(plan[::-1], "backward", dout, input_grad if need_dx is None else need_dx)

    def output_shape(self, shape):
        return self._run(list(enumerate(self.layers)), "output_shape", tuple(shape))

    def children(self):
        return [(str(i), layer) for i, layer in enumerate(self.layers)]

    def config(self):
        return {"layers": [layer_to_json(layer) for layer in self]}

    def summary(self, input_shape, print_fn=print):
        """Print (and return) a table of layer, output shape and parameter count.

        ``input_shape`` is one sample's shape, e.g. (3, 64, 64); the batch axis is shown as N.
        """
        rows, shape = [], (1,) + tuple(input_shape)
        for i, layer in enumerate(self):
            try:
                shape = layer.output_shape(shape)
            except ValueError as e:
                raise ValueError(f"Sequential layer {i}: {e}") from None
            n = sum(p.data.size for p in layer.parameters())
            rows.append((f"{i}: {type(layer).__name__}", str(("N",) + shape[1:]).replace("'", ""), f"{n:,}"))
        total = sum(p.data.size for p in self.parameters())
        widths = [max(len(r[k]) for r in rows + [("layer", "output shape", "params")]) for k in range(3)]
        line = lambda r: f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:>{widths[2]}}"
        text = "\n".join([line(("layer", "output shape", "params"))] + [line(r) for r in rows]
                         + [f"total parameters: {total:,}"])
        print_fn(text)
        return text


class Residual(Layer):
    """A block with a skip connection, the unit of a ResNet: out = block(x) + x, or
    block(x) + shortcut(x) where the block changes the shape (e.g. a strided 1x1 ``Conv2d``).
    Backward sends dout down both paths and adds the two input gradients.

    Parameters are named ``block.<name>`` and ``shortcut.<name>``, as in a torch module holding
    the two (``3.block.0.weight``, ``3.shortcut.weight`` inside a Sequential), so weights move
    between them. Maths: ``reference.add``, twice.

    >>> from convlib import Conv2d, ReLU
    >>> res = Residual(Sequential(Conv2d(4, 4, 3, padding=1), ReLU(), Conv2d(4, 4, 3, padding=1)))
    >>> res(np.zeros((2, 4, 8, 8), np.float32)).shape
    (2, 4, 8, 8)
    """

    def __init__(self, block, shortcut=None):
        for name, layer in (("block", block), ("shortcut", shortcut)):
            if not isinstance(layer, Layer) and (name == "block" or layer is not None):
                raise ValueError(f"Residual: {name} is {type(layer).__name__}, not a convlib layer")
        self.block, self.shortcut = block, shortcut

    def children(self):
        return [("block", self.block)] + ([("shortcut", self.shortcut)] if self.shortcut is not None else [])

    def __repr__(self):
        return _container_repr(self)

    def config(self):
        return {"block": layer_to_json(self.block),
                "shortcut": None if self.shortcut is None else layer_to_json(self.shortcut)}

    def output_shape(self, shape):
        out = tuple(self.block.output_shape(shape))
        skip = tuple(shape) if self.shortcut is None else tuple(self.shortcut.output_shape(shape))
        if out != skip:
            raise ValueError(f"Residual: the block maps {tuple(shape)} to {out} but the "
                             f"{'shortcut' if self.shortcut else 'identity shortcut'} gives {skip}; "
                             f"give a shortcut that maps the input to the block's output shape")
        return out

    def forward(self, x):
        """x (N, ...) -> block(x) + shortcut(x) (or + x)."""
        self._check(x)
        self._cache = True
        return ops.add(self.block(x), x if self.shortcut is None else self.shortcut(x))

    def backward(self, dout, need_dx=True):
        """dL/d(out) -> dL/dx = the block's input gradient + the shortcut's (or dout itself)."""
        self._saved(dout)
        dskip = dout if self.shortcut is None else self.shortcut.backward(dout, need_dx=need_dx)
        dblock = self.block.backward(dout, need_dx=need_dx)
        return ops.add(dblock, dskip) if need_dx else None


def _container_repr(layer):
    """torch's layout: the class name, then one indented line per child, ``(name): repr``."""
    body = "".join("\n  " + f"({name}): {child!r}".replace("\n", "\n  ") for name, child in layer.children())
    return f"{type(layer).__name__}({body}\n)"


def layer_to_json(layer):
    """{"type": class name, **config}: the architecture entry ``convlib.save`` writes."""
    cfg = layer.config()
    return {"type": type(layer).__name__, **{k: list(v) if isinstance(v, tuple) else v
                                             for k, v in cfg.items()}}
