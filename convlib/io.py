"""Model files: one ``.npz`` with the architecture as JSON, the arrays and user metadata.

Layout of the archive (all plain arrays, so ``np.load(allow_pickle=False)`` reads it and a
file from a stranger cannot run code):

    __convlib__   uint8 bytes of a JSON header: {"format": 1, "arch": {...}, "metadata": {...}}
    0.weight, 0.bias, ...   the state_dict, keys as in torch.nn.Sequential

Writes are atomic: a temporary file in the same folder, fsync'd, then renamed over the target.
"""
import contextlib
import json
import os
import tempfile
import threading
import zipfile

import numpy as np

from . import layers as _layers
from .model import Residual, Sequential, layer_to_json

FORMAT = 1
_HEADER = "__convlib__"
_EXTRA = "extra."                                                    # prefix of save(extra=...) arrays


def _layer_classes():
    """{class name: class} of every public layer (the names a model file may mention)."""
    found = {name: getattr(_layers, name) for name in dir(_layers)}
    return {k: v for k, v in found.items()
            if isinstance(v, type) and issubclass(v, _layers.Layer) and not k.startswith("_")
            and k != "Layer"} | {"Sequential": Sequential, "Residual": Residual}


def layer_from_json(spec):
    """Build a layer from its ``layer_to_json`` entry; ValueError for unknown types or arguments."""
    if not isinstance(spec, dict) or "type" not in spec:
        raise ValueError(f"model file: bad layer entry {spec!r}")
    kwargs = {k: layer_from_json(v) if isinstance(v, dict) else v for k, v in spec.items() if k != "type"}
    classes = _layer_classes()
    cls = classes.get(spec["type"])
    if cls is None:
        raise ValueError(f"model file: unknown layer type {spec['type']!r}; known: {sorted(classes)}")
    if cls is Sequential:
        return Sequential(*[layer_from_json(s) for s in kwargs.get("layers", [])])
    try:
        return cls(**kwargs)
    except TypeError as e:
        raise ValueError(f"model file: cannot build {spec['type']} from {kwargs}: {e}") from None


def save(net, path, metadata=None, extra=None):
    """Write ``net`` (architecture, parameters, buffers) and JSON-able ``metadata`` to ``path``;
    ``extra`` {name: array} is stored beside them (a checkpoint's optimizer state, say) and read
    back by ``load_extra``. The file appears complete or not at all. Returns the path written.
    """
    path = os.fspath(path)
    try:
        header = json.dumps({"format": FORMAT, "arch": layer_to_json(net), "metadata": metadata or {}})
    except TypeError as e:
        raise ValueError(f"save: metadata must be JSON-serialisable: {e}") from None
    arrays = net.state_dict()
    if _HEADER in arrays:
        raise ValueError(f"save: the key {_HEADER!r} is reserved")
    arrays[_HEADER] = np.frombuffer(header.encode(), dtype=np.uint8)
    arrays.update({_EXTRA + k: np.asarray(v) for k, v in (extra or {}).items()})
    with atomic_file(path, ".npz") as tmp, open(tmp, "wb") as f:
        np.savez(f, **arrays)
        f.flush()
        os.fsync(f.fileno())
    return path


@contextlib.contextmanager
def atomic_file(path, suffix=""):
    """Yield a temporary file name beside ``path``; when the block ends without an error, the
    file takes the permissions a new file gets under the umask (0644 under the usual 022) and
    is renamed to ``path`` in one step, so a reader never sees half a file. On an error it is
    removed and ``path`` is left as it was."""
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=suffix, dir=os.path.dirname(os.path.abspath(path)))
    os.close(fd)
    try:
        yield tmp
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)                               # mkstemp makes 0600
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def load(path, with_metadata=False):
    """Read a model written by ``save``. Returns the net (in eval mode), or (net, metadata).

    Raises ValueError naming the file for anything that is not a complete convlib model file:
    not an npz/zip archive, truncated, missing header, unknown format version, unknown layer,
    missing or mis-shaped arrays. Never unpickles.
    """
    net, metadata, _ = load_extra(path)
    return (net, metadata) if with_metadata else net


_reading = threading.Lock()   # one file at a time: NumPy parses .npy headers with ast, which CPython
                              # 3.11 breaks when threads share it (python/cpython#106905: SystemError)


def load_extra(path):
    """(net in eval mode, metadata, {name: array} saved as ``extra``) from a file ``save`` wrote;
    the same checks and errors as ``load``."""
    path = os.fspath(path)
    try:
        with _reading, np.load(path, allow_pickle=False) as z:
            if _HEADER not in z.files:
                raise ValueError(f"{path}: not a convlib model file (no {_HEADER} header; "
                                 f"arrays found: {z.files[:5]})")
            entries = {k: z[k] for k in z.files}
        odd = [k for k, v in entries.items() if not isinstance(v, np.ndarray)]
        if odd:                                                     # np.load gives raw bytes for non-.npy entries
            raise ValueError(f"{path}: corrupt model file (entries that are not arrays: {odd[:5]})")
        header = json.loads(entries.pop(_HEADER).tobytes().decode())
        extra = {k[len(_EXTRA):]: entries.pop(k) for k in list(entries) if k.startswith(_EXTRA)}
        arrays = entries
    except FileNotFoundError:
        raise
    except ValueError as e:
        if str(e).startswith(path):
            raise
        if "pickle" in str(e):                                      # numpy would offer to unpickle: never
            raise ValueError(f"{path}: not a convlib model file (not an .npz archive of plain arrays)") from None
        raise ValueError(f"{path}: not a readable convlib model file ({e})") from None
    except (zipfile.BadZipFile, EOFError, OSError, KeyError, UnicodeDecodeError, NotImplementedError,
            RuntimeError) as e:
        raise ValueError(f"{path}: corrupt or truncated model file ({type(e).__name__}: {e})") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        found = header.get("format") if isinstance(header, dict) else None
        raise ValueError(f"{path}: unsupported model file format {found!r} (this convlib reads format {FORMAT})")
    try:
        net = layer_from_json(header["arch"])
        floats = [a.dtype for a in arrays.values() if a.dtype.kind == "f"]
        if floats:
            net.to(floats[0])                                       # keep the saved precision
        net.load_state_dict(arrays)
    except (ValueError, KeyError, TypeError, AttributeError, IndexError, RecursionError) as e:   # a damaged header
        raise ValueError(f"{path}: {type(e).__name__ + ': ' if not isinstance(e, ValueError) else ''}{e}") from None
    net.eval()
    return net, header.get("metadata", {}), extra
