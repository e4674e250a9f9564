"""Training loop: ``fit``, ``evaluate`` and ``predict_proba``."""
import math
import signal
import threading
import time

import numpy as np

from . import distributed
from .backend import to_device, to_host
from .io import load_extra, save
from .losses import CrossEntropyLoss, softmax, softmax_cross_entropy
from .optim import SGD
from .progress import Progress
from .rng import get_rng, manual_seed


class History(dict):
    """Per-epoch lists: loss, acc, val_loss, val_acc, lr, seconds; plus best_epoch, best_val_acc."""
    best_epoch = None
    best_val_acc = None


def _check_inputs(x, name):
    x = np.asarray(x)
    if x.ndim < 2 or x.dtype.kind != "f":
        raise ValueError(f"{name}: expected float inputs of shape (N, ...), got {x.shape} {x.dtype}")
    if len(x) == 0:
        raise ValueError(f"{name}: got no images (inputs of shape {x.shape})")
    return x


def _check_arrays(x, y, name):
    x, y = _check_inputs(x, name), np.asarray(y)
    if y.shape != (x.shape[0],) or y.dtype.kind not in "iu":
        raise ValueError(f"{name}: expected integer labels of shape ({x.shape[0]},), got {y.shape} {y.dtype}")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{name}: inputs hold NaN or infinite values")
    return x, y


def iterate_batches(x, y, batch_size, shuffle=False, rng=None):
    """Yield (x[idx], y[idx]) batches in order, or shuffled with ``rng``."""
    idx = rng.permutation(len(x)) if shuffle else np.arange(len(x))
    for s in range(0, len(x), batch_size):
        j = idx[s:s + batch_size]
        yield x[j], y[j]


def fit(net, train, val=None, *, epochs=10, batch_size=32, optimizer=None, schedule=None, loss_fn=None,
        augment=None, seed=0, restore_best=True, progress=True, on_epoch_end=None, checkpoint=None, resume=False,
        comm=None):
    """Train ``net`` and return a ``History``.

    Args:
        train: ``(x, y)`` arrays (x float (N, ...), y int (N,)), shuffled each epoch with ``seed``;
            or any re-iterable yielding ``(xb, yb)`` batches (e.g. a ``convlib.data`` loader).
        val: ``(x, y)`` arrays for per-epoch validation accuracy, or None.
        optimizer: default ``SGD(net.parameters(), lr=0.01, momentum=0.9)``.
        schedule: a ``convlib.optim`` schedule, stepped once per epoch.
        loss_fn: ``loss_fn(logits, yb) -> (loss, dlogits)``; default ``CrossEntropyLoss()``.
        augment: ``augment(xb, rng) -> xb`` applied to each training batch of arrays.
        restore_best: with ``val``, load the weights of the best validation epoch at the end.
        on_epoch_end: ``callback(epoch, history)`` after each epoch.
        checkpoint: a file path. After every epoch the run is written there atomically (weights,
            optimizer and schedule state, random generators, epoch, history); Ctrl-C finishes
            the step in progress, writes it and raises KeyboardInterrupt saying how to go on.
        resume: with an existing ``checkpoint``, continue that run where it stopped: the final
            weights are bit for bit those of an uninterrupted run with the same arguments (a
            batch iterable must yield the same batches again).
        comm: a ``convlib.distributed`` communicator; default ``distributed.world()``, which is
            MPI when launched by ``mpiexec`` with several ranks and otherwise a no-op. With several
            ranks, each step's batch (``batch_size`` in all; a batch iterable must yield the same
            batches on every rank) is split among the ranks, gradients are averaged (so the weights
            follow the one-process run on the same batches, up to float rounding), batch-norm
            statistics are averaged each epoch, validation is split too, and only rank 0 shows
            progress, calls ``on_epoch_end`` and writes the checkpoint (Ctrl-C then ends the run:
            resume starts from the last epoch's checkpoint). ``comm=distributed.Single()`` trains
            each rank on its own instead.
    Batches come from the host (augmented there) and are copied to ``net.device``; on a GPU a
    step copies nothing back but each row's loss and hit (with ``CrossEntropyLoss``).
    Raises FloatingPointError naming the epoch and step when the logits or loss become NaN/inf.
    """
    for name, value in (("epochs", epochs), ("batch_size", batch_size)):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"fit: {name} must be an int >= 1, got {value!r}")
    rng = np.random.default_rng(seed)                               # the order of the batches (and augmentation)
    batches, n_batches = _batches(train, batch_size, rng)
    val = None if val is None else _check_arrays(*val, "fit(val)")
    optimizer = optimizer or SGD(net.parameters(), lr=0.01, momentum=0.9)
    loss_fn = CrossEntropyLoss() if loss_fn is None else loss_fn
    ranks = _Ranks(comm, net, seed, rng)                            # MPI data parallelism; one process: no-op
    run = _Run(checkpoint if resume else None, net, optimizer, schedule, rng, ranks)   # or where a checkpoint stopped
    with _CtrlC(enabled=checkpoint is not None and ranks.size == 1) as interrupted:
        for epoch in range(run.epoch, epochs + 1):
            net.train()
            with Progress(n_batches, f"epoch {epoch}/{epochs}", "batch", enabled=progress and ranks.lead) as bar:
                for step, (xb, yb) in run.steps(epoch, batches, rng, bar):   # a resumed epoch: the steps left
                    xb, yb, n = ranks.share(xb, yb)                 # this rank's part of the step's n images
                    if augment is not None:
                        xb = augment(xb, ranks.aug_rng)
                    optimizer.zero_grad()
                    loss, correct = _step(net, xb, yb, loss_fn, epoch, step, optimizer.lr) if len(yb) else (0.0, 0)
                    loss_sum, correct = ranks.average_grads(optimizer.params, len(yb), n, loss, correct)
                    optimizer.step()
                    bar.update(1, **run.count(n, loss_sum, correct))
                    if interrupted:                                 # Ctrl-C (one process only)
                        run.stop(checkpoint, net, optimizer, schedule, rng, epoch, step)
                run.end_epoch(epoch, net, optimizer.lr, val, max(batch_size, 256), ranks.comm, restore_best, bar)
            if schedule is not None:
                schedule.step()
            if checkpoint is not None:                              # every rank's generators: a collective
                states = distributed.rng_states(ranks.comm, ranks.aug_rng)
                if ranks.lead:
                    _save(checkpoint, net, optimizer, schedule, rng, run.hist, run.best, epoch=epoch + 1, step=0,
                          ranks=states)
            if on_epoch_end is not None and ranks.lead:
                on_epoch_end(epoch, run.hist)
    if run.best is not None:
        net.load_state_dict(run.best)
    net.eval()
    return run.hist


def _batches(train, batch_size, rng):
    """(a function returning an epoch's batch iterator, batches per epoch or None)."""
    if isinstance(train, tuple) or (isinstance(train, list) and len(train) == 2
                                    and all(isinstance(a, np.ndarray) for a in train)):   # [x, y] too
        x, y = _check_arrays(*train, "fit(train)")
        return (lambda: iterate_batches(x, y, batch_size, shuffle=True, rng=rng)), math.ceil(len(x) / batch_size)
    return (lambda: iter(train)), (len(train) if hasattr(train, "__len__") else None)


def _step(net, xb, yb, loss_fn, epoch, step, lr):
    """Forward, loss and backward of one batch (gradients added into the parameters' grad);
    returns (mean loss, number of correct predictions). A loss with ``rows`` (CrossEntropyLoss)
    gives both in one array, read after backward is queued (on a GPU the step's only wait for the
    device); for another loss the logits are checked and counted on a host copy first."""
    logits = net(to_device(xb, net.device))
    where = f"at epoch {epoch}, step {step} (lr={lr:g}); lower the learning rate or check the inputs"
    if getattr(loss_fn, "rows", None) is None:
        host_logits = to_host(logits)                               # (N, K): the accuracy is counted here
        if not np.all(np.isfinite(host_logits)):
            raise FloatingPointError(f"fit: the logits became NaN or infinite {where}")
        loss, dlogits = loss_fn(logits, yb)
        correct = int((host_logits.argmax(1) == yb).sum())
        net.backward(dlogits, input_grad=False)
    else:
        rows, dlogits = loss_fn.rows(logits, yb)
        net.backward(dlogits, input_grad=False)
        rows = to_host(rows)                                        # (2, N): loss and hit of each row
        loss, correct = float(rows[0].mean()), int(rows[1].sum())
    if not math.isfinite(loss):                                     # raised before the optimizer step
        raise FloatingPointError(f"fit: the loss became {loss} {where}")
    return loss, correct


class _Ranks:
    """Data-parallel training over MPI (``convlib.distributed``): every rank starts from rank 0's
    weights, takes its share of each step's batch, and the gradients are averaged; with one
    process each call leaves things as they are."""

    def __init__(self, comm, net, seed, rng):
        self.comm = distributed.world() if comm is None else comm
        self.size, self.lead, self.aug_rng = self.comm.size, self.comm.rank == 0, rng   # lead: prints, writes
        if self.size > 1:
            if net.device != "cpu":
                raise ValueError(f"fit: data-parallel training over MPI runs on the CPU; the net is on {net.device}")
            distributed.broadcast_state(self.comm, net)
            self.aug_rng = np.random.default_rng([seed, self.comm.rank])   # rng stays in step on all ranks (the order)
            manual_seed(int(get_rng().integers(2 ** 62)) + self.comm.rank)   # dropout masks differ between ranks

    def share(self, xb, yb):
        """(this rank's part of the batch, the whole batch's size)."""
        n = len(yb)
        if self.size > 1:
            part = distributed.shard(n, self.comm)
            xb, yb = xb[part], yb[part]
        return xb, yb, n

    def average_grads(self, params, n_local, n, loss, correct):
        """Average the gradients over all n images of the step; returns (loss sum, correct) of all ranks."""
        return distributed.average_grads(self.comm, params, n_local, n, extra=(loss * n_local, correct))


class _Run:
    """A run's bookkeeping: history, the epoch's running totals, the best epoch's weights, and
    where it starts (epoch 1, or where the checkpoint ``resume_from`` stopped, mid-epoch too)."""

    def __init__(self, resume_from, net, optimizer, schedule, rng, ranks):
        self.hist = History(loss=[], acc=[], val_loss=[], val_acc=[], lr=[], seconds=[])
        self.best, self.at = None, dict(epoch=1, step=0)
        if resume_from is not None and distributed.checkpoint_exists(ranks.comm, resume_from):
            self.hist, self.best, self.at = _restore(resume_from, net, optimizer, schedule, rng)
            distributed.restore_rng_states(ranks.comm, self.at["ranks"], ranks.aug_rng)   # each rank's own
        self.epoch = self.at["epoch"]

    def steps(self, epoch, batches, rng, bar):
        """The epoch's numbered batches; in the epoch a checkpoint stopped in, the steps not yet done,
        with the totals and random generators as they were at the stop."""
        self.t0 = time.perf_counter()
        skip = self.at["step"] if epoch == self.at["epoch"] else 0
        self.totals = list(self.at["totals"]) if skip else [0.0, 0, 0]     # loss sum, correct, seen
        self.epoch_rng = self.at["epoch_rng"] if skip else rng.bit_generator.state
        rng.bit_generator.state = self.epoch_rng
        todo = batches()
        for _ in range(skip):                                       # the same order, minus the done steps
            next(todo)
        if skip:
            rng.bit_generator.state, get_rng().bit_generator.state = self.at["rng"], self.at["global_rng"]
        bar.n = skip
        return enumerate(todo, skip + 1)

    def count(self, n, loss_sum, correct):
        """Add a step to the epoch's totals; returns the running loss and accuracy."""
        self.totals = [self.totals[0] + loss_sum, self.totals[1] + int(correct), self.totals[2] + n]
        return dict(loss=self.totals[0] / self.totals[2], acc=self.totals[1] / self.totals[2])

    def stop(self, checkpoint, net, optimizer, schedule, rng, epoch, step):
        """Ctrl-C: write the run as it is after this step, and stop."""
        _save(checkpoint, net, optimizer, schedule, rng, self.hist, self.best, epoch=epoch, step=step,
              totals=tuple(self.totals), epoch_rng=self.epoch_rng)
        raise KeyboardInterrupt(f"fit: stopped after epoch {epoch}, step {step}; {checkpoint} holds the run: "
                                f"continue it with fit(..., checkpoint={checkpoint!r}, resume=True)")

    def end_epoch(self, epoch, net, lr, val, batch_size, comm, restore_best, bar):
        """Record the epoch: its averages, batch-norm statistics averaged over the ranks, validation,
        the best weights so far."""
        loss_sum, correct, seen = self.totals
        if seen == 0:
            raise ValueError("fit: the training data yielded no batches")
        self.hist["loss"].append(loss_sum / seen)
        self.hist["acc"].append(correct / seen)
        self.hist["lr"].append(lr)
        distributed.average_buffers(comm, net)
        if val is not None:
            vl, va = _evaluate_shared(net, val, batch_size, comm)
            self.hist["val_loss"].append(vl)
            self.hist["val_acc"].append(va)
            bar.set(val_acc=va)
            if self.hist.best_val_acc is None or va > self.hist.best_val_acc:
                self.hist.best_val_acc, self.hist.best_epoch = va, epoch
                self.best = net.state_dict() if restore_best else None
        self.hist["seconds"].append(time.perf_counter() - self.t0)


def _evaluate_shared(net, val, batch_size, comm):
    """(loss, accuracy) over ``val``, each rank evaluating its share (all of it in one process)."""
    x, y = val
    if comm.size == 1 or len(y) < comm.size:
        return evaluate(net, x, y, batch_size=batch_size)
    part = distributed.shard(len(y), comm)
    loss, acc = evaluate(net, x[part], y[part], batch_size=batch_size)
    n = len(y[part])
    loss_sum, correct = comm.allreduce_sum(np.array([loss * n, acc * n]))
    return float(loss_sum / len(y)), float(round(correct) / len(y))


class _CtrlC:
    """``with _CtrlC(enabled) as interrupted``: inside, Ctrl-C appends to the list ``interrupted``
    instead of raising, so the step in progress can finish (main thread only, where Python
    delivers signals; ``enabled`` False leaves Ctrl-C alone)."""

    def __init__(self, enabled):
        self.enabled, self.flag, self.old = enabled, [], None

    def __enter__(self):
        if self.enabled and threading.current_thread() is threading.main_thread():
            self.old = signal.signal(signal.SIGINT, lambda *_: self.flag.append(1))
        return self.flag

    def __exit__(self, *exc):
        if self.old is not None:
            signal.signal(signal.SIGINT, self.old)


def _save(path, net, optimizer, schedule, rng, hist, best_state, epoch, step, totals=None, epoch_rng=None,
          ranks=None):
    """Write a checkpoint: the net with its weights, plus in metadata and extra arrays everything
    else a run needs to go on from (epoch, step) exactly."""
    opt = optimizer.state_dict()
    extra = {f"optimizer.{i}.{k}": v for i, s in enumerate(opt["state"]) for k, v in s.items()}
    extra.update({f"best.{k}": v for k, v in (best_state or {}).items()})
    state = dict(epoch=epoch, step=step, totals=totals, epoch_rng=epoch_rng, rng=rng.bit_generator.state,
                 global_rng=get_rng().bit_generator.state, optimizer={"lr": opt["lr"], "t": opt["t"]},
                 schedule=schedule.state_dict() if schedule is not None else None,
                 history=dict(hist), best_epoch=hist.best_epoch, best_val_acc=hist.best_val_acc,
                 has_best=best_state is not None, ranks=ranks)
    save(net, path, metadata={"checkpoint": state}, extra=extra)


def _restore(path, net, optimizer, schedule, rng):
    """Load a checkpoint written by ``_save`` into net, optimizer, schedule and the generators;
    returns (history, best state or None, where to start)."""
    saved, meta, extra = load_extra(path)
    state = meta.get("checkpoint")
    if not isinstance(state, dict):
        raise ValueError(f"{path}: not a fit() checkpoint (a model file without training state)")
    try:
        net.load_state_dict(saved.state_dict())
    except ValueError as e:
        raise ValueError(f"{path}: the checkpoint does not fit this net: {e}") from None
    bufs = [{} for _ in optimizer.params]
    for k, v in extra.items():
        if k.startswith("optimizer."):
            i, name = k[len("optimizer."):].split(".", 1)
            bufs[int(i)][name] = v
    optimizer.load_state_dict(dict(state["optimizer"], state=bufs))
    if schedule is not None and state["schedule"] is not None:
        schedule.load_state_dict(state["schedule"])
    rng.bit_generator.state = state["rng"]
    get_rng().bit_generator.state = state["global_rng"]
    hist = History(state["history"])
    hist.best_epoch, hist.best_val_acc = state["best_epoch"], state["best_val_acc"]
    best = {k[len("best."):]: v for k, v in extra.items() if k.startswith("best.")} if state["has_best"] else None
    at = dict(epoch=state["epoch"], step=state["step"], epoch_rng=state["epoch_rng"], rng=state["rng"],
              global_rng=state["global_rng"], totals=state["totals"],   # epoch_rng, totals: mid-epoch only
              ranks=state.get("ranks"))                             # every rank's generators (several ranks)
    return hist, best, at


def _batched_eval(net, x, batch_size):
    """Host outputs of ``net`` in eval mode, batch by batch on the net's device."""
    was_training, device = net.training, net.device
    net.eval()
    try:
        return np.concatenate([to_host(net(to_device(x[s:s + batch_size], device)))
                               for s in range(0, len(x), batch_size)])
    finally:
        net.train(was_training)


def evaluate(net, x, y, batch_size=256, loss_fn=softmax_cross_entropy):
    """(mean loss, accuracy) of ``net`` in eval mode over arrays x (N, ...), y (N,)."""
    x, y = _check_arrays(x, y, "evaluate")
    logits = _batched_eval(net, x, batch_size)                     # (N, K)
    loss, _ = loss_fn(logits, y)
    return loss, float((logits.argmax(1) == y).mean())


def predict_proba(net, x, batch_size=256, flip=False):
    """Class probabilities (N, K) of ``net`` in eval mode for inputs x (N, ...). ``flip=True``
    (images x (N, C, H, W)): the mean over each image and its mirror image, test-time
    augmentation for a net trained with ``RandomFlip``."""
    x = _check_inputs(x, "predict_proba")
    if flip and x.ndim != 4:
        raise ValueError(f"predict_proba: flip=True needs images (N, C, H, W), got shape {x.shape}")
    p = softmax(_batched_eval(net, x, batch_size))
    return (p + softmax(_batched_eval(net, x[..., ::-1], batch_size))) / 2 if flip else p
