"""Write docs/api.md, the API reference, from convlib's docstrings.

    python docs/build_api.py            # rewrites docs/api.md (tests/test_docs.py checks it is current)
"""
import inspect
import os
import re
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
import convlib as cl  # noqa: E402
from convlib import data, distributed, gradcheck, kernels, optim  # noqa: E402

SECTIONS = [  # (title, module prefix, objects)
    ("Layers and containers", "cl", [cl.Conv2d, cl.MaxPool2d, cl.AvgPool2d, cl.AdaptiveAvgPool2d, cl.ReLU,
                                     cl.LeakyReLU, cl.Sigmoid, cl.Tanh, cl.Flatten, cl.Linear, cl.Dropout,
                                     cl.BatchNorm2d, cl.BatchNorm1d, cl.GroupNorm, cl.Sequential, cl.Residual,
                                     cl.Layer, cl.Parameter]),
    ("Loss", "cl", [cl.softmax_cross_entropy, cl.CrossEntropyLoss, cl.softmax]),
    ("Training", "cl", [cl.fit, cl.evaluate, cl.predict_proba, cl.iterate_batches, cl.History]),
    ("Optimizers and schedules", "cl.optim", [optim.SGD, optim.Adam, optim.AdamW, optim.Optimizer, optim.ConstantLR,
                                              optim.StepLR, optim.CosineLR, optim.Schedule]),
    ("Model files", "cl", [cl.save, cl.load]),
    ("Devices, kernels and threads", "cl", [cl.to_device, cl.to_host, cl.cuda_available, cl.use_kernels,
                                            cl.set_num_threads, cl.get_num_threads, cl.manual_seed]),
    ("Gradient checks", "cl.gradcheck", [gradcheck.check_layer, gradcheck.check_loss, gradcheck.numerical_grad,
                                         gradcheck.rel_error]),
    ("Data", "cl.data", [getattr(data, n) for n in sorted(vars(data)) if not n.startswith("_") and
                         inspect.getmodule(getattr(data, n)) is data and callable(getattr(data, n))]),
    ("Distributed", "cl.distributed", [distributed.world, distributed.Single, distributed.MPIComm]),
    ("The kernel contract", "cl.kernels", [kernels.op, kernels.backend, kernels.kernels_for, kernels.KernelSet]),
]


def signature(obj):
    """The call signature, a function given as a default named (not its address, which changes per run)."""
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return "(...)"
    names = {p.name: p.default.__name__ for p in sig.parameters.values() if inspect.isfunction(p.default)}
    text = str(sig)
    for name, fn in names.items():
        text = re.sub(rf"{name}=<function [^>]*>", f"{name}={fn}", text)
    return text


def entry(prefix, obj):
    doc = inspect.getdoc(obj) or "(no docstring)"
    kind = "class " if inspect.isclass(obj) else ""
    lines = [f"### `{kind}{prefix}.{obj.__name__}{signature(obj)}`", "", "```text", doc, "```", ""]
    if inspect.isclass(obj):
        for name, member in vars(obj).items():
            if not name.startswith("_") and inspect.isfunction(member) and inspect.getdoc(member):
                lines += [f"- `{name}{signature(member)}`: {inspect.getdoc(member).splitlines()[0]}"]
        lines.append("")
    return lines


def ops_table():
    rows = ["| op | shapes and meaning |", "| --- | --- |"]
    for name, fn in kernels.OPS.items():
        first = " ".join((inspect.getdoc(fn) or "").split("\n\n")[0].split())
        rows.append(f"| `{name}{signature(fn)}` | {first.replace('|', '&#124;')} |")
    return rows


def build():
    out = ["# API reference", "",
           "Built from the docstrings by `python docs/build_api.py`; `import convlib as cl`. Names, arguments",
           "and defaults follow `torch.nn` where torch has the same thing.", ""]
    for title, prefix, objs in SECTIONS:
        out += [f"## {title}", ""]
        for obj in objs:
            out += entry(prefix, obj)
    out += ["## The ops (`convlib/kernels/reference.py`)", "",
            "Each op is declared once with `@op`; calling it runs the backend for its first argument's device.", ""]
    out += ops_table() + [""]
    return "\n".join(out)


if __name__ == "__main__":
    with open(os.path.join(HERE, "api.md"), "w", encoding="utf-8") as f:
        f.write(build())
    print("wrote docs/api.md")
