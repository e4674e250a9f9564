"""The selfie pipeline's map stages over shards (examples/lib/shards.py): in this process and on
a local Dask cluster of two worker processes, with identical results."""
import csv
import shutil

import numpy as np
import pytest

import convlib as cl
from lib import shards


@pytest.fixture(scope="module")
def folder_and_model(tmp_path_factory):
    """A trained selfie model and a folder of 300 generated selfies plus one file that does not decode."""
    import selfie_train
    tmp = tmp_path_factory.mktemp("shards")
    selfie_train.main(["--synthetic-dir", str(tmp / "data"), "--n-images", "320", "--size", "16", "--epochs", "1",
                       "--out", str(tmp / "run"), "--no-progress", "--no-pictures"])
    folder = tmp / "mine"
    folder.mkdir()
    for i in range(300):
        shutil.copy(tmp / "data" / f"selfie_{i:05d}.png", folder / f"s{i:03d}.png")
    (folder / "s150_broken.jpg").write_bytes(b"\xff\xd8 truncated")
    return folder, str(tmp / "run" / "model.npz")


@pytest.fixture
def one_thread():
    """Compare with workers on the same thread count (LocalCluster workers run one each)."""
    old = cl.get_num_threads()
    cl.set_num_threads(1)
    yield
    cl.set_num_threads(old)


def test_scheduler_names_are_checked():
    for good in ("none", "local:2", "tcp://10.0.0.5:8786"):
        assert shards.check_scheduler(good) == good
    for bad in ("local:0", "local", "dask", "tcp://host", "local:2x"):
        with pytest.raises(ValueError, match="expected none, local:N or tcp://host:port"):
            shards.check_scheduler(bad)


def test_shards_join_in_order(folder_and_model, one_thread):
    """Across several shards (SHARD images each) the kept indices and images come back in order,
    the undecodable file skipped, the same as one load_images call over the whole list."""
    from convlib.data import list_images, load_images
    paths = list_images(str(folder_and_model[0]))
    kept, x = shards.map_shards(shards.decode, paths, 16, "crop", progress=False)
    want_x, want_kept = load_images(paths, 16, "crop", progress=False)
    assert len(paths) == 301 > shards.SHARD and len(kept) == 300        # two shards
    np.testing.assert_array_equal(kept, want_kept)
    np.testing.assert_array_equal(x, want_x)


@pytest.mark.compiled(reason="the NumPy maths leave BLAS at its own thread count, so a worker and this process "
                               "may round a P(good) differently in its last bit")
def test_local_dask_cluster_gives_identical_results(folder_and_model, one_thread, capsys):
    """Decoding and rating a folder on a LocalCluster of 2 workers: bit for bit the in-process results."""
    pytest.importorskip("distributed", reason="Dask is not installed (pip install -e '.[dask]')")
    from convlib.data import list_images
    folder, model = folder_and_model
    paths = list_images(str(folder))
    for stage, args in ((shards.decode, (16, "crop")), (shards.rate, (model,))):
        here = shards.map_shards(stage, paths, *args, progress=False)
        there = shards.map_shards(stage, paths, *args, scheduler="local:2", progress=False)
        assert len(here) == len(there) == 2 and len(here[0]) == 300
        for a, b in zip(here, there):
            np.testing.assert_array_equal(a, b)


@pytest.mark.compiled(reason="the NumPy maths leave BLAS at its own thread count, so a worker and this process "
                               "may round a P(good) differently in its last bit")
def test_rating_a_folder_on_dask(folder_and_model, one_thread, tmp_path, capsys):
    """selfie_rate.py --scheduler local:2 writes the same ranking as the in-process run."""
    pytest.importorskip("distributed", reason="Dask is not installed (pip install -e '.[dask]')")
    import selfie_rate
    folder, model = folder_and_model
    a = selfie_rate.main([str(folder), "--model", model, "--out", str(tmp_path / "a"), "--no-progress"])
    b = selfie_rate.main([str(folder), "--model", model, "--out", str(tmp_path / "b"), "--no-progress",
                          "--scheduler", "local:2"])
    assert a == b and len(a) == 300
    rows = [list(csv.reader(open(tmp_path / f"{n}.csv"))) for n in "ab"]
    assert rows[0] == rows[1]
    with pytest.raises(SystemExit):
        selfie_rate.main([str(folder), "--model", model, "--scheduler", "local:0"])
    assert "expected none, local:N or tcp://host:port" in capsys.readouterr().err
