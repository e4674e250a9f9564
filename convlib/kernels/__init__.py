"""The kernel contract: every op that layers, losses and optimizers call, declared once.

A backend is a module of plain functions with these names and signatures:

- ``reference.py`` (NumPy) implements every op: it is the readable specification and the oracle
  that tests compare the others with;
- ``cpu.py`` (Numba) implements the ops it speeds up; the rest come from the reference, which
  runs on the same NumPy arrays;
- ``cuda.py`` (numba.cuda) implements the ops it can run on the GPU; an op it lacks raises
  ``NotImplementedError`` naming the op and the backend (host code cannot take device arrays).

``KernelSet`` binds one backend to the contract; ``backend.kernels_for(x)`` hands a layer the
set for the device where ``x`` lives, and the layer calls ops by name: ``k.conv2d_forward(...)``.
Forward ops return ``(out, cache)``; the matching backward op takes ``(dout, cache)``, where the
cache is private to the backend that made it. Shapes: N batch, C channels in, F channels out
(filters), H, W input, KH, KW kernel, SH, SW stride, PH, PW padding, OH, OW output with
``OH = (H + 2*PH - KH) // SH + 1``.
"""
import inspect

OPS = {
    # convolution and pooling (NCHW)
    "conv2d_forward": "x (N,C,H,W), w (F,C,KH,KW), b (F,)|None, stride, padding -> out (N,F,OH,OW), cache",
    "conv2d_backward": "dout (N,F,OH,OW), cache, need_dx -> dx (N,C,H,W)|None, dw (F,C,KH,KW), db (F,)|None",
    "maxpool2d_forward": "x (N,C,H,W), kernel, stride, padding, relu=False -> out (N,C,OH,OW), cache; first max, "
                         "NaN wins; with relu, max(out, 0) (the fused ReLU before a pool)",
    "maxpool2d_backward": "dout (N,C,OH,OW), cache -> dx (N,C,H,W)",
    "avgpool2d_forward": "x (N,C,H,W), kernel, stride, padding -> out (N,C,OH,OW), cache; divisor KH*KW",
    "avgpool2d_backward": "dout (N,C,OH,OW), cache -> dx (N,C,H,W)",
    "global_avgpool2d_forward": "x (N,C,H,W) -> out (N,C,1,1), cache",
    "global_avgpool2d_backward": "dout (N,C,1,1), cache -> dx (N,C,H,W)",
    # dense and pointwise
    "linear_forward": "x (N,IN), w (OUT,IN), b (OUT,)|None -> out (N,OUT), cache",
    "linear_backward": "dout (N,OUT), cache, need_dx -> dx (N,IN)|None, dw (OUT,IN), db (OUT,)|None",
    "relu_forward": "x (...) -> out (...), cache",
    "relu_backward": "dout (...), cache -> dx (...)",
    "leaky_relu_forward": "x (...), slope -> out (...), cache",
    "leaky_relu_backward": "dout (...), cache -> dx (...)",
    "sigmoid_forward": "x (...) -> out (...), cache",
    "sigmoid_backward": "dout (...), cache -> dx (...)",
    "tanh_forward": "x (...) -> out (...), cache",
    "tanh_backward": "dout (...), cache -> dx (...)",
    "dropout_forward": "x (...), p, rng -> out (...), cache (the scaled keep mask)",
    "dropout_backward": "dout (...), cache -> dx (...)",
    "batchnorm_forward": "x (N,C) or (N,C,H,W), gamma, beta, running_mean, running_var (C,), momentum, eps, "
                         "training -> out like x, cache; updates the running statistics in place",
    "batchnorm_backward": "dout like x, cache -> dx like x, dgamma (C,), dbeta (C,)",
    # loss
    "log_softmax": "logits (N,K) -> log-probabilities (N,K)",
    "softmax": "logits (N,K) -> probabilities (N,K)",
    "softmax_cross_entropy": "logits (N,K), y int (N,), label_smoothing -> rows (2,N) float64 (each row's "
                             "loss, 1.0 where its first maximum is at y), dlogits (N,K)",
    "all_finite": "x (...) -> bool: no NaN or infinity",
    # gradients and optimizer updates (in place)
    "zeros_like": "a -> zeros of a's shape and dtype, on a's device",
    "zero_": "a -> None; a[...] = 0",
    "accumulate": "dst, src -> None; dst += src",
    "sgd_step": "ps, gs, bufs|None (lists of arrays, one per parameter), lr, momentum, weight_decay, nesterov "
                "-> None; torch's SGD on every p",
    "adam_step": "ps, gs, ms, vs (lists), lr, beta1, beta2, eps, weight_decay, decoupled, t -> None; "
                 "torch's Adam/AdamW on every p",
}


def _missing(op, backend):
    def missing(*args, **kwargs):
        raise NotImplementedError(f"the {backend} kernels have no {op!r} (kernel contract: {OPS[op]}); "
                                  f"run this layer on the CPU, or add {op} to convlib/kernels/{backend}.py")
    missing.__name__ = op
    return missing


class KernelSet:
    """Every op of ``OPS`` as an attribute: ``module``'s own where it has one, else
    ``fallback``'s (the reference, for CPU backends), else a function that raises
    ``NotImplementedError`` naming the op and the backend."""

    def __init__(self, name, module, fallback=None):
        self.name = name
        self.own = sorted(op for op in OPS if hasattr(module, op))
        for op in OPS:
            fn = getattr(module, op, None) or getattr(fallback, op, None) or _missing(op, name)
            setattr(self, op, fn)

    def __repr__(self):
        return f"KernelSet({self.name!r}, {len(self.own)} of {len(OPS)} ops its own)"


def signature_mismatches(module, reference):
    """[(op, why)] for ops of ``module`` whose parameters differ from the reference's, or public
    functions of ``module`` (its ``__all__``) that are not in the contract."""
    bad = [(name, "not in the contract") for name in getattr(module, "__all__", []) if name not in OPS]
    for op in OPS:
        if hasattr(module, op):
            got = list(inspect.signature(getattr(module, op)).parameters)
            want = list(inspect.signature(getattr(reference, op)).parameters)
            if got != want:
                bad.append((op, f"parameters {got}, the reference has {want}"))
    return bad
