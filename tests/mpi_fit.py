"""Run by tests/test_distributed.py under ``mpiexec -n 2 python -m mpi4py tests/mpi_fit.py MODE OUT``.

MODE plain: a net without batch norm trained by data-parallel ``fit``; each rank writes its final
weights to OUT.rank<r>.npz. MODE bn: the same with batch norm and validation. MODE raise: rank 1
raises in its third step (the job must end, not hang).
"""
import sys

import numpy as np

import convlib as cl


def data(n=72, seed=3):
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 2, 6, 6)).astype(np.float32)      # (N, 2, 6, 6)
    y = (x[:, 0].mean((1, 2)) > x[:, 1].mean((1, 2))).astype(np.int64)
    return x, y


def net(bn=False, seed=0):
    cl.manual_seed(seed)
    return cl.Sequential(cl.Conv2d(2, 4, 3, padding=1), *([cl.BatchNorm2d(4)] if bn else []), cl.ReLU(),
                         cl.MaxPool2d(2), cl.Flatten(), cl.Linear(4 * 3 * 3, 2))


def train(mode, comm=None):
    """The run every mode makes; returns (net, history)."""
    x, y = data()
    model = net(bn=mode == "bn")
    opt = cl.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-3)
    calls = []

    def loss_fn(logits, yb):
        calls.append(1)
        if mode == "raise" and comm is not None and comm.rank == 1 and len(calls) == 3:
            raise RuntimeError("planted failure on rank 1")
        return cl.softmax_cross_entropy(logits, yb)

    val = data(20, seed=4) if mode == "bn" else None
    hist = cl.fit(model, (x, y), val=val, epochs=3, batch_size=16, optimizer=opt, loss_fn=loss_fn,
                  progress=False, comm=comm)
    return model, hist


def fit_one(model, comm=None, **kwargs):
    """fit ``model`` on data() with the optimizer of the modes above and no custom loss (so the
    built-in loss's one-copy path runs); returns the history."""
    x, y = data()
    opt = cl.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-3)
    return cl.fit(model, (x, y), epochs=3, batch_size=16, optimizer=opt, comm=comm,
                  **{"progress": False, **kwargs})


if __name__ == "__main__":
    from convlib.distributed import world
    mode, out = sys.argv[1], sys.argv[2]
    comm = world()
    model, hist = train(mode, comm)
    np.savez(f"{out}.rank{comm.rank}.npz", size=comm.size, loss=hist["loss"], val_acc=hist["val_acc"],
             **model.state_dict())
