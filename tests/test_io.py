"""Model files: round trip, metadata, atomic writes, and every corrupt-file case."""
import json
import os
import re
import sys

import numpy as np
import pytest

import convlib as cl


def net_and_input(rng):
    cl.manual_seed(0)
    net = cl.Sequential(cl.Conv2d(1, 3, (3, 2), stride=(2, 1), padding=1, bias=False), cl.LeakyReLU(0.2),
                        cl.AvgPool2d(2), cl.Flatten(), cl.Linear(3 * 2 * 3, 4), cl.Sigmoid(),
                        cl.Dropout(0.1), cl.Linear(4, 2))
    return net, rng.standard_normal((5, 1, 8, 6)).astype(np.float32)


def test_round_trip_gives_identical_outputs(tmp_path, rng):
    net, x = net_and_input(rng)
    path = cl.save(net, tmp_path / "m.npz", metadata={"classes": ["bad", "good"], "mean": [0.5]})
    loaded, meta = cl.load(path, with_metadata=True)
    assert meta == {"classes": ["bad", "good"], "mean": [0.5]}
    assert repr(loaded) == repr(net)
    np.testing.assert_array_equal(loaded(x), net.eval()(x))
    assert not loaded.training
    assert sorted(os.listdir(tmp_path)) == ["m.npz"]               # no temporary file left behind


def test_float64_model_stays_float64(tmp_path, rng):
    net, x = net_and_input(rng)
    net.to(np.float64)
    loaded = cl.load(cl.save(net, tmp_path / "m.npz"))
    assert loaded[0].weight.data.dtype == np.float64
    np.testing.assert_array_equal(loaded(x.astype(np.float64)), net.eval()(x.astype(np.float64)))
    one = cl.Sequential(cl.Linear(3, 2, bias=False)).to(np.float64)   # a single array
    assert cl.load(cl.save(one, tmp_path / "one.npz"))[0].weight.data.dtype == np.float64


def test_file_is_plain_arrays_without_pickle(tmp_path, rng):
    net, _ = net_and_input(rng)
    path = cl.save(net, tmp_path / "m.npz")
    with np.load(path, allow_pickle=False) as z:
        header = json.loads(z["__convlib__"].tobytes())
        assert header["format"] == 1 and header["arch"]["type"] == "Sequential"
        assert {"0.weight", "4.weight", "4.bias"} <= set(z.files)


def test_failed_save_leaves_old_file_intact(tmp_path, rng):
    net, _ = net_and_input(rng)
    path = cl.save(net, tmp_path / "m.npz")
    before = open(path, "rb").read()
    with pytest.raises(ValueError, match="JSON"):
        cl.save(net, path, metadata={"bad": object()})
    assert open(path, "rb").read() == before and os.listdir(tmp_path) == ["m.npz"]


def _corrupt(tmp_path, rng, how):
    net, _ = net_and_input(rng)
    path = str(cl.save(net, tmp_path / "m.npz"))
    data = open(path, "rb").read()
    if how == "truncated":
        open(path, "wb").write(data[: len(data) // 2])
    elif how == "garbage":
        open(path, "wb").write(b"this is not a model" * 10)
    elif how == "empty":
        open(path, "wb").write(b"")
    elif how == "foreign":
        np.savez(path, a=np.zeros(3))
    elif how == "pickle":
        np.save(path, np.array([{"x": 1}], dtype=object), allow_pickle=True)
        os.replace(path + ".npy", path)
    elif how in ("version", "arch", "shape", "header"):
        with np.load(path) as z:
            arrays = {k: z[k] for k in z.files}
        header = json.loads(arrays["__convlib__"].tobytes())
        if how == "version":
            header["format"] = 99
        if how == "arch":
            header["arch"]["layers"][0]["type"] = "Evil"
        if how == "shape":
            arrays["4.weight"] = arrays["4.weight"][:, :3]
        raw = b"{not json" if how == "header" else json.dumps(header).encode()
        arrays["__convlib__"] = np.frombuffer(raw, np.uint8)
        with open(path, "wb") as f:
            np.savez(f, **arrays)
    return path


@pytest.mark.parametrize("how, match", [
    ("truncated", "corrupt or truncated|not a readable"), ("garbage", "not a readable|corrupt"),
    ("empty", "not a readable|corrupt"), ("foreign", "not a convlib model file"),
    ("pickle", "not a readable|corrupt"), ("version", "unsupported model file format 99"),
    ("arch", "unknown layer type 'Evil'"), ("shape", r"'4.weight' has shape \(4, 3\)"),
    ("header", "not a readable"),
])
def test_corrupt_files_give_clear_errors(tmp_path, rng, how, match):
    path = _corrupt(tmp_path, rng, how)
    with pytest.raises(ValueError, match=match) as e:
        cl.load(path)
    assert path in str(e.value)


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError):
        cl.load(tmp_path / "nope.npz")


def test_saved_files_honour_the_umask(tmp_path, rng):
    old = os.umask(0o022)
    try:
        path = cl.save(net_and_input(rng)[0], tmp_path / "m.npz")
        assert os.stat(path).st_mode & 0o777 == 0o644
        os.umask(0o077)
        assert os.stat(cl.save(net_and_input(rng)[0], tmp_path / "private.npz")).st_mode & 0o777 == 0o600
    finally:
        os.umask(old)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".tmp-")] == []


@pytest.mark.parametrize("content", [b"\x89PNG\r\n\x1a\n" + bytes(100), b"just some text\n"])
def test_loading_a_non_model_never_suggests_unpickling(tmp_path, content):
    path = tmp_path / "not_a_model.npz"
    path.write_bytes(content)
    with pytest.raises(ValueError) as e:
        cl.load(path)
    assert "not a convlib model file" in str(e.value) and "pickle" not in str(e.value)


def _corruptions(data, rng):
    """300 damaged copies of a model file's bytes: byte flips, truncations, zip entries swapped,
    replaced by raw bytes or by other arrays, and an unsupported compression method."""
    import io as _io
    import zipfile
    with zipfile.ZipFile(_io.BytesIO(data)) as z:
        names = z.namelist()
        members = {n: z.read(n) for n in names}

    def rezip(entries):
        buf = _io.BytesIO()
        with zipfile.ZipFile(buf, "w") as z:
            for n, b in entries:
                z.writestr(n, b)
        return buf.getvalue()
    out = []
    for i in range(300):
        kind = i % 6
        if kind == 0:                                               # flip 1-3 bytes anywhere
            b = bytearray(data)
            for pos in rng.integers(0, len(b), rng.integers(1, 4)):
                b[pos] ^= int(rng.integers(1, 256))
            out.append(bytes(b))
        elif kind == 1:                                             # truncate
            out.append(data[: int(rng.integers(0, len(data)))])
        elif kind == 2:                                             # two entries' contents swapped
            a, c = rng.choice(len(names), 2, replace=False)
            swapped = dict(members)
            swapped[names[a]], swapped[names[c]] = members[names[c]], members[names[a]]
            out.append(rezip(swapped.items()))
        elif kind == 3:                                             # an entry replaced by raw bytes, or renamed
            k = names[int(rng.integers(len(names)))]
            entries = dict(members)
            if rng.random() < 0.5:
                entries[k] = rng.bytes(int(rng.integers(0, 64)))
            else:
                entries[k[:-4] + ".bin"] = entries.pop(k)           # np.load returns raw bytes for it
            out.append(rezip(entries.items()))
        elif kind == 4:                                             # an entry replaced by another array
            k = names[int(rng.integers(len(names)))]
            buf = _io.BytesIO()
            others = [np.zeros(3, "<U2"), np.ones((2, 2), bool), np.arange(5), np.zeros(()),
                      np.full(4, np.nan, np.float32)]
            np.save(buf, others[int(rng.integers(len(others)))])
            entries = dict(members)
            entries[k] = buf.getvalue()
            out.append(rezip(entries.items()))
        else:                                                       # compression method 99 (unsupported)
            b = bytearray(data)
            b[8:10] = (99).to_bytes(2, "little")
            at = b.find(b"PK\x01\x02")
            if at >= 0:
                b[at + 10:at + 12] = (99).to_bytes(2, "little")
            out.append(bytes(b))
    return out


def test_damaged_model_files_fail_with_a_value_error_naming_the_file(tmp_path):
    """Loading any damaged model file either works or raises ValueError naming the file; no
    other exception escapes (zipfile's NotImplementedError, np.load's raw bytes, ...)."""
    cl.manual_seed(0)
    net = cl.Sequential(cl.Conv2d(1, 2, 3), cl.BatchNorm2d(2), cl.ReLU(), cl.Flatten(), cl.Linear(8, 2))
    path = tmp_path / "m.npz"
    cl.save(net, path)
    kinds = {}
    for i, data in enumerate(_corruptions(path.read_bytes(), np.random.default_rng(0))):
        bad = tmp_path / f"bad{i}.npz"
        bad.write_bytes(data)
        try:
            cl.load(bad)
            kinds["loaded"] = kinds.get("loaded", 0) + 1
        except ValueError as e:
            assert str(e).startswith(str(bad)), str(e)
            kinds["ValueError"] = kinds.get("ValueError", 0) + 1
    assert kinds["ValueError"] > 250                               # nearly every damage is noticed


# ---------------------------------------------------------------- files of earlier releases
FIXTURES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures")


def test_a_model_file_of_release_0_1_0_loads_and_computes_what_it_did():
    net, meta = cl.load(os.path.join(FIXTURES, "model_0.1.0.npz"), with_metadata=True)
    probe = np.random.default_rng(2).standard_normal((3, 1, 8, 8))
    assert meta["written_by"] == "convlib 0.1.0" and net[0].weight.data.dtype == np.float64
    np.testing.assert_allclose(net(probe), meta["logits_of_probe"], rtol=1e-12, atol=1e-12)


def test_a_checkpoint_of_release_0_1_0_resumes(tmp_path):
    """tests/fixtures/make_fixtures.py stopped a run at epoch 2, step 2 with convlib 0.1.0;
    resumed today, it ends where today's uninterrupted run ends (float64, so the two agree to
    rounding wherever the kernels' order of sums moved)."""
    import shutil
    sys.path.insert(0, FIXTURES)
    try:
        from make_fixtures import run
    finally:
        sys.path.remove(FIXTURES)
    want, steps = run(str(tmp_path / "fresh.npz"))
    ckpt = shutil.copy(os.path.join(FIXTURES, "checkpoint_0.1.0.npz"), tmp_path / "old.npz")
    got, resumed_steps = run(str(ckpt), resume=True)
    assert (steps, resumed_steps) == (12, 6)                        # 3 epochs of 4; 4 + 2 were done
    for k, v in want.state_dict().items():
        np.testing.assert_allclose(got.state_dict()[k], v, rtol=1e-9, atol=1e-12, err_msg=k)


def _toy_net(seed=0):
    cl.manual_seed(seed)
    return cl.Sequential(cl.Linear(6, 8), cl.ReLU(), cl.Linear(8, 2))


def _header_file(tmp_path, arch, arrays=None):
    header = json.dumps({"format": 1, "arch": arch, "metadata": {}}).encode()
    path = tmp_path / "m.npz"
    np.savez(path, __convlib__=np.frombuffer(header, np.uint8), **(arrays or {}))
    return path


@pytest.mark.parametrize("name", ["Layer", "Parameter", "_Pool2d", "ConvUnit", "np", "math", "Sequentia"])
def test_a_model_file_can_only_name_public_layers(tmp_path, name):
    path = _header_file(tmp_path, {"type": "Sequential", "layers": [{"type": name}]})
    with pytest.raises(ValueError, match=f"unknown layer type '{name}'"):
        cl.load(path)


def test_model_file_layer_errors_say_what_was_wrong(tmp_path):
    for entry in (["Linear"], ["type"], "type", {"in_features": 2}):
        with pytest.raises(ValueError, match=r"model file: bad layer entry " + re.escape(repr(entry))):
            cl.load(_header_file(tmp_path, {"type": "Sequential", "layers": [entry]}))
    with pytest.raises(ValueError, match=r"model file: cannot build Linear from \{'in_features': 2\}"):
        cl.load(_header_file(tmp_path, {"type": "Sequential", "layers": [{"type": "Linear", "in_features": 2}]}))
    assert len(cl.load(_header_file(tmp_path, {"type": "Sequential"}))) == 0    # no layers listed: empty


def test_metadata_is_a_dict_even_where_none_was_saved(tmp_path):
    net = _toy_net()
    cl.save(net, tmp_path / "n.npz")
    assert cl.load(tmp_path / "n.npz", with_metadata=True)[1] == {}
    header = {"format": 1, "arch": json.loads(json.dumps(cl.model.layer_to_json(net)))}
    np.savez(tmp_path / "nometa.npz", __convlib__=np.frombuffer(json.dumps(header).encode(), np.uint8),
             **net.state_dict())
    assert cl.load(tmp_path / "nometa.npz", with_metadata=True)[1] == {}


def test_load_messages_name_the_file_and_the_problem(tmp_path):
    (tmp_path / "bad.npz").write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(ValueError, match=r"bad.npz: corrupt or truncated model file \(BadZipFile: "):
        cl.load(tmp_path / "bad.npz")
    with pytest.raises(ValueError, match=r"^.*reserved"):
        net = _toy_net()
        net.state_dict = lambda: {"__convlib__": np.zeros(1)}
        cl.save(net, tmp_path / "x.npz")
    np.savez(tmp_path / "plain.npz", **{f"a{i}": np.zeros(1) for i in range(7)})
    with pytest.raises(ValueError, match=r"^\S*plain.npz: not a convlib model file \(no __convlib__ header; "
                                         r"arrays found: \['a0', 'a1', 'a2', 'a3', 'a4'\]\)$"):
        cl.load(tmp_path / "plain.npz")


def test_load_messages_for_odd_entries_and_headers(tmp_path):
    import zipfile
    net = _toy_net()
    cl.save(net, tmp_path / "m.npz")
    with zipfile.ZipFile(tmp_path / "m.npz") as z, zipfile.ZipFile(tmp_path / "odd.npz", "w") as out:
        for name in z.namelist():
            out.writestr(name, z.read(name))
        out.writestr("notes.txt", b"not an array")                  # np.load hands this back as bytes
    with pytest.raises(ValueError, match=r"odd.npz: corrupt model file \(entries that are not arrays: "
                                         r"\['notes.txt'\]\)$"):
        cl.load(tmp_path / "odd.npz")
    np.savez(tmp_path / "list.npz", __convlib__=np.frombuffer(b"[1, 2]", np.uint8))
    with pytest.raises(ValueError, match=r"list.npz: unsupported model file format None"):
        cl.load(tmp_path / "list.npz")
    path = _header_file(tmp_path, {"type": "Sequential", "layers": 5})
    with pytest.raises(ValueError, match=r"m.npz: TypeError: 'int' object is not iterable$"):
        cl.load(path)
    path = _header_file(tmp_path, {"type": "Linear", "in_features": 2})
    with pytest.raises(ValueError, match=r"m.npz: model file: cannot build Linear"):
        cl.load(path)


def test_threads_read_model_files_one_at_a_time(tmp_path, rng, monkeypatch):
    """np.load parses each array's header with ast, which CPython 3.11 gets wrong when threads
    share it (a spurious SystemError, python/cpython#106905): loads from several threads (thread
    ranks resuming from one checkpoint) take turns."""
    import threading
    import time

    import convlib.io as cio
    net, x = net_and_input(rng)
    path = cl.save(net, tmp_path / "m.npz")
    inside, most, guard = [0], [0], threading.Lock()
    real_load = np.load

    def counting_load(*args, **kwargs):
        with guard:
            inside[0] += 1
            most[0] = max(most[0], inside[0])
        time.sleep(0.02)                                            # give another thread time to come in
        with guard:
            inside[0] -= 1
        return real_load(*args, **kwargs)

    monkeypatch.setattr(cio.np, "load", counting_load)
    outs = [None] * 4
    threads = [threading.Thread(target=lambda i=i: outs.__setitem__(i, cl.load(path)(x))) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert most[0] == 1
    for out in outs:
        np.testing.assert_array_equal(out, net.eval()(x))
