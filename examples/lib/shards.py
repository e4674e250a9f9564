"""The selfie pipeline's map stages (decoding and resizing, the face filter, rating) over shards of
a file list: in this process, on a local Dask cluster, or on an existing one.

    --scheduler none              in this process, one shard after another (the default)
    --scheduler local:4           a LocalCluster of 4 worker processes on this machine
    --scheduler tcp://host:8786   the Dask scheduler of an existing cluster

Every scheduler runs the same shard functions on the same shards, so the results are identical
(bit for bit where the processes use the same number of convlib threads; a LocalCluster's workers
use one each, and other thread counts can round a P(good) differently in the last bit, since BLAS
sums a share of a different size in another order).
A stage function takes (paths, *args) and returns a tuple of arrays whose first axis lines up
with the images it kept; a worker loads a model once (``_model`` caches it per process). Dask
workers must be able to import ``lib`` (a LocalCluster started from examples/ can; for a remote
cluster, install the examples there or ``client.upload_file`` them). pip install -e ".[dask]".
"""
import contextlib
import functools
import os
import re

import numpy as np

from convlib.progress import Progress

SHARD = 256                                                         # images per task


def check_scheduler(spec):
    """``spec`` if it is none, local:N (N >= 1) or tcp://host:port; else ValueError saying so."""
    if spec == "none" or re.fullmatch(r"local:[1-9]\d*", spec) or re.fullmatch(r"tcp://[^:/\s]+:\d+", spec):
        return spec
    raise ValueError(f"--scheduler: expected none, local:N or tcp://host:port, got {spec!r}")


@contextlib.contextmanager
def _client(spec):
    """A Dask client for ``spec`` (local:N or tcp://...), closed (with its cluster) on exit."""
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        raise SystemExit(f"error: --scheduler {spec} needs Dask: pip install -e \".[dask]\"") from None
    if spec.startswith("local:"):
        n = int(spec.split(":")[1])                                 # one thread per worker: the cores are the workers
        with LocalCluster(n_workers=n, threads_per_worker=1, processes=True, dashboard_address=None,
                          env={"CONVLIB_NUM_THREADS": "1"}) as cluster, Client(cluster) as client:
            yield client
    else:
        with Client(spec, timeout="20s") as client:
            yield client


def map_shards(fn, paths, *args, scheduler="none", desc="images", progress=True):
    """Run ``fn(shard_paths, *args) -> (kept, *arrays)`` over shards of ``paths`` on ``scheduler``
    and join the results: kept (indices into ``paths``) and each array concatenated in order."""
    check_scheduler(scheduler)
    starts = list(range(0, len(paths), SHARD))
    results = [None] * len(starts)
    with Progress(len(paths), desc, "img", enabled=progress) as bar:
        if scheduler == "none":
            for j, s in enumerate(starts):
                results[j] = fn(paths[s:s + SHARD], *args)
                bar.update(min(SHARD, len(paths) - s))
        else:
            from distributed import as_completed
            with _client(scheduler) as client:
                futures = [client.submit(fn, paths[s:s + SHARD], *args, pure=False) for s in starts]
                where = {f.key: j for j, f in enumerate(futures)}
                for f in as_completed(futures):
                    j = where[f.key]
                    results[j] = f.result()                         # a worker's exception is raised here
                    bar.update(min(SHARD, len(paths) - starts[j]))
    if not results:
        return (np.zeros(0, np.int64),)
    kept = np.concatenate([r[0] + s for r, s in zip(results, starts)])
    return (kept, *(np.concatenate([r[k] for r in results]) for k in range(1, len(results[0]))))


# ---------------------------------------------------------------- the stages
def decode(paths, size, fit):
    """Stage: (kept, x float32 (n, 3, size, size)) of the files that decode."""
    from convlib.data import load_images
    x, kept = load_images(paths, size, fit, progress=False)
    return kept, x


def _model(path, kind):
    """A model loaded once per process and file version: the selfie net (net, meta) or the face
    filter (net, threshold)."""
    st = os.stat(path)
    return _load(path, kind, st.st_mtime_ns, st.st_size)


@functools.lru_cache(maxsize=4)
def _load(path, kind, *version):
    if kind == "faces":
        from lib import faces
        return faces.load_filter(path)
    from lib.selfie_model import load_model
    return load_model(path, note=False)                             # the command said it once already


def faces_found(paths, model_path):
    """Stage: (indices of all ``paths``, bool (n,) True where the face filter finds a face)."""
    from lib import faces
    keep = faces.face_filter(*_model(model_path, "faces"), progress=False)
    return np.arange(len(paths)), keep(paths)


def rate(paths, model_path):
    """Stage: (kept, P(good) float (n,)) of the files that decode, by the model at ``model_path``."""
    from convlib.data import normalise
    from lib.selfie_model import p_good
    net, meta = _model(model_path, "selfie")
    kept, x = decode(paths, meta["size"], meta["fit"])
    p = p_good(net, normalise(x, meta["mean"], meta["std"])) if len(kept) else np.zeros(0, np.float32)
    return kept, p
