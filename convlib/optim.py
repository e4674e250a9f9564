"""Optimizers and learning-rate schedules.

One contract, stated once. An optimizer holds the Parameters, a learning rate ``lr`` and
``weight_decay``; ``step()`` updates every ``p.data`` from its ``p.grad`` (skipping frozen
ones, ``requires_grad=False``) and ``zero_grad()`` clears the gradients. A schedule changes
``optimizer.lr``: ``step()`` once per epoch (or per batch, your choice) sets
``lr = base_lr * factor(t)``, after an optional linear warm-up of ``warmup`` steps. Update
rules are torch's, so results can be compared; the arithmetic is in the ops ``sgd_step`` and
``adam_step``, so an optimizer updates parameters on the device where they live, keeping its
state (momentum, moments) there too.
"""
import math

import numpy as np

from .backend import device_of, to_device, to_host
from .kernels import reference as ops


def _check_hyper(name, **values):
    for key, (v, lo, hi) in values.items():
        if not (isinstance(v, (int, float)) and math.isfinite(v) and lo <= v < hi):
            raise ValueError(f"{name}: {key} must be a number in [{lo}, {hi}), got {v!r}")


class Optimizer:
    """Base: holds params, lr and weight_decay; subclasses implement ``_update(params, states)``
    (lists: parameters on one device, with one dtype, and their state dicts)."""

    def __init__(self, params, lr, weight_decay=0.0):
        self.params = list(params)
        if not self.params:
            raise ValueError(f"{type(self).__name__}: got an empty parameter list")
        _check_hyper(type(self).__name__, lr=(lr, 0, math.inf), weight_decay=(weight_decay, 0, math.inf))
        self.lr, self.weight_decay = float(lr), float(weight_decay)
        self.state = [{} for _ in self.params]
        self.t = 0

    def zero_grad(self):
        for p in self.params:
            p.zero_grad()

    def _buffer(self, state, name, p):
        """The state array ``name`` of parameter p, zeros where p lives on first use."""
        if name not in state:
            state[name] = ops.zeros_like(p.data)
        return state[name]

    def step(self):
        """Update every parameter from its grad; frozen ones (``requires_grad=False``) are
        left as they are, weight decay included. Parameters on one device with one dtype are
        updated by one kernel call (on a GPU, one launch for the whole model)."""
        self.t += 1
        groups = {}
        for p, state in zip(self.params, self.state):
            if p.requires_grad:
                groups.setdefault((device_of(p.data), p.data.dtype), []).append((p, state))
        for group in groups.values():
            self._update([p for p, _ in group], [state for _, state in group])

    def state_dict(self):
        """{"lr", "t", "state": [{name: host array} per parameter]}: the learning rate, the step
        count and each parameter's buffers (momentum, Adam's moments), copied."""
        return {"lr": self.lr, "t": self.t,
                "state": [{k: np.array(to_host(v)) for k, v in s.items()} for s in self.state]}

    def load_state_dict(self, state):
        """Restore what ``state_dict`` returned, onto the parameters' device; ValueError if it
        does not fit these parameters (count or shapes)."""
        bufs = state["state"]
        if len(bufs) != len(self.params):
            raise ValueError(f"{type(self).__name__}.load_state_dict: state for {len(bufs)} parameters, "
                             f"this optimizer has {len(self.params)}")
        for i, (p, s) in enumerate(zip(self.params, bufs)):
            for k, v in s.items():
                if np.shape(v) != p.shape:
                    raise ValueError(f"{type(self).__name__}.load_state_dict: buffer {k!r} of parameter {i} "
                                     f"has shape {np.shape(v)}, the parameter {p.shape}")
        self.state = [{k: to_device(np.array(v, p.data.dtype), device_of(p.data)) for k, v in s.items()}
                      for p, s in zip(self.params, bufs)]
        self.lr, self.t = float(state["lr"]), int(state["t"])
        return self


class SGD(Optimizer):
    """SGD with optional momentum (torch's: buf = m*buf + g; nesterov uses g + m*buf) and L2
    weight decay (g += weight_decay * p)."""

    def __init__(self, params, lr=0.01, momentum=0.0, weight_decay=0.0, nesterov=False):
        super().__init__(params, lr, weight_decay)
        _check_hyper("SGD", momentum=(momentum, 0, 1))
        if nesterov and momentum == 0:
            raise ValueError("SGD: nesterov needs momentum > 0")
        self.momentum, self.nesterov = float(momentum), bool(nesterov)

    def _update(self, params, states):
        bufs = [self._buffer(s, "buf", p) for p, s in zip(params, states)] if self.momentum else None
        ops.sgd_step([p.data for p in params], [p.grad for p in params], bufs, self.lr, self.momentum,
                     self.weight_decay, self.nesterov)


class Adam(Optimizer):
    """Adam with bias correction; ``weight_decay`` is L2 added to the gradient (torch's Adam)."""
    decoupled = False

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0):
        super().__init__(params, lr, weight_decay)
        _check_hyper(type(self).__name__, beta1=(betas[0], 0, 1), beta2=(betas[1], 0, 1), eps=(eps, 0, 1))
        self.betas, self.eps = (float(betas[0]), float(betas[1])), float(eps)

    def _update(self, params, states):
        ms = [self._buffer(s, "m", p) for p, s in zip(params, states)]
        vs = [self._buffer(s, "v", p) for p, s in zip(params, states)]
        ops.adam_step([p.data for p in params], [p.grad for p in params], ms, vs, self.lr, *self.betas, self.eps,
                      self.weight_decay, self.decoupled, self.t)


class AdamW(Adam):
    """Adam with decoupled weight decay (p *= 1 - lr * weight_decay), torch's default 0.01."""
    decoupled = True

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.01):
        super().__init__(params, lr, betas, eps, weight_decay)


# ---------------------------------------------------------------- schedules
class Schedule:
    """Base: lr(t) = base_lr * (t + 1) / warmup for t < warmup, else base_lr * factor(t - warmup).

    ``t`` counts calls to ``step()``; the constructor sets lr(0) on the optimizer.
    """

    def __init__(self, optimizer, warmup=0):
        if not isinstance(warmup, int) or warmup < 0:
            raise ValueError(f"{type(self).__name__}: warmup must be an int >= 0, got {warmup!r}")
        self.optimizer, self.base_lr, self.warmup, self.t = optimizer, optimizer.lr, warmup, 0
        optimizer.lr = self.lr_at(0)

    def lr_at(self, t):
        if t < self.warmup:
            return self.base_lr * (t + 1) / self.warmup
        return self.base_lr * self.factor(t - self.warmup)

    def factor(self, t):
        return 1.0

    def step(self):
        self.t += 1
        self.optimizer.lr = self.lr_at(self.t)
        return self.optimizer.lr

    def state_dict(self):
        return {"t": self.t, "base_lr": self.base_lr}

    def load_state_dict(self, state):
        self.t, self.base_lr = int(state["t"]), float(state["base_lr"])
        self.optimizer.lr = self.lr_at(self.t)
        return self


class ConstantLR(Schedule):
    """The base learning rate throughout (after any warm-up)."""


class StepLR(Schedule):
    """Multiply the learning rate by ``gamma`` every ``step_size`` steps."""

    def __init__(self, optimizer, step_size, gamma=0.1, warmup=0):
        if not isinstance(step_size, int) or step_size < 1:
            raise ValueError(f"StepLR: step_size must be an int >= 1, got {step_size!r}")
        _check_hyper("StepLR", gamma=(gamma, 0, math.inf))
        self.step_size, self.gamma = step_size, float(gamma)
        super().__init__(optimizer, warmup)

    def factor(self, t):
        return self.gamma ** (t // self.step_size)


class CosineLR(Schedule):
    """Cosine decay from base_lr to ``min_lr`` over ``total`` steps (then stays at min_lr)."""

    def __init__(self, optimizer, total, min_lr=0.0, warmup=0):
        if not isinstance(total, int) or total < 1:
            raise ValueError(f"CosineLR: total must be an int >= 1, got {total!r}")
        self.total, self.min_lr = total, float(min_lr)
        super().__init__(optimizer, warmup)

    def factor(self, t):
        frac = min(t, self.total) / self.total
        m = self.min_lr / self.base_lr
        return m + (1 - m) * 0.5 * (1 + math.cos(math.pi * frac))
