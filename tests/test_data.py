"""convlib.data: IDX reader/writer, augmentations, image helpers."""
import gzip

import numpy as np
import pytest
from PIL import Image

from convlib import data


@pytest.mark.parametrize("suffix", ["", ".gz"])
@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64])
def test_idx_round_trip(tmp_path, suffix, dtype, rng):
    a = (rng.standard_normal((3, 4, 5)) * 50).astype(dtype)
    path = tmp_path / f"a.idx{suffix}"
    data.write_idx(path, a)
    b = data.read_idx(path)
    assert b.dtype == dtype and b.shape == a.shape
    np.testing.assert_array_equal(a, b)


def test_idx_matches_the_published_layout(tmp_path):
    # labels file of the MNIST family: magic 0x00000801, count, then one byte per label
    raw = bytes([0, 0, 8, 1, 0, 0, 0, 3, 7, 2, 9])
    (tmp_path / "labels-idx1-ubyte").write_bytes(raw)
    assert data.read_idx(tmp_path / "labels-idx1-ubyte").tolist() == [7, 2, 9]


def test_idx_errors_name_the_file(tmp_path):
    missing = tmp_path / "fashion-mnist" / "train-images-idx3-ubyte.gz"
    with pytest.raises(ValueError,
                       match=r"train-images-idx3-ubyte.gz: no such IDX file.*apt-get install dataset-fashion-mnist"):
        data.read_idx(missing)
    bad = tmp_path / "bad.idx"
    bad.write_bytes(b"\x12\x34\x08\x01")
    with pytest.raises(ValueError, match="bad.idx: not an IDX file"):
        data.read_idx(bad)
    short = tmp_path / "short.idx"
    short.write_bytes(bytes([0, 0, 8, 2, 0, 0, 0, 2, 0, 0, 0, 3, 1, 2, 3]))
    with pytest.raises(ValueError, match=r"short.idx: IDX header says \(2, 3\)"):
        data.read_idx(short)
    trunc = tmp_path / "t.idx.gz"
    trunc.write_bytes(gzip.compress(bytes([0, 0, 8, 1, 0, 0, 0, 9]) + bytes(9))[:-6])
    with pytest.raises(ValueError, match="t.idx.gz: cannot read"):
        data.read_idx(trunc)


def test_random_flip_is_exact_and_seeded(rng):
    x = rng.standard_normal((64, 2, 3, 5)).astype(np.float32)
    out = data.RandomFlip(0.5)(x, np.random.default_rng(1))
    flipped = np.array([np.array_equal(o, xi[:, :, ::-1]) for o, xi in zip(out, x)])
    kept = np.array([np.array_equal(o, xi) for o, xi in zip(out, x)])
    assert np.all(flipped ^ kept) and 15 < flipped.sum() < 49
    np.testing.assert_array_equal(out, data.RandomFlip(0.5)(x, np.random.default_rng(1)))
    np.testing.assert_array_equal(data.RandomFlip(1.0)(x, rng), x[:, :, :, ::-1])


def test_random_crop_shifts_within_padding(rng):
    x = rng.standard_normal((20, 1, 6, 7)).astype(np.float32)
    out = data.RandomCrop(2)(x, np.random.default_rng(3))
    assert out.shape == x.shape and out.dtype == x.dtype
    xp = np.pad(x, ((0, 0), (0, 0), (2, 2), (2, 2)))
    for o, p in zip(out, xp):                                        # each is some window of the padded image
        assert any(np.array_equal(o, p[:, dy:dy + 6, dx:dx + 7]) for dy in range(5) for dx in range(5))
    np.testing.assert_array_equal(data.RandomCrop(0)(x, rng), x)


def test_cutout_zeroes_one_clipped_square_per_image(rng):
    x = rng.random((200, 2, 9, 8)).astype(np.float32) + 1           # no zeros of its own
    out = data.Cutout(4)(x, np.random.default_rng(2))
    assert out.shape == x.shape and out.dtype == x.dtype
    holes = out == 0
    np.testing.assert_array_equal(holes[:, 0], holes[:, 1])         # the same square in every channel
    np.testing.assert_array_equal(out[~holes], x[~holes])           # the rest untouched
    for h in holes[:, 0]:
        rows, cols = np.flatnonzero(h.any(1)), np.flatnonzero(h.any(0))
        assert len(rows) and len(cols) and len(rows) <= 4 and len(cols) <= 4
        assert h[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1].all() and h.sum() == len(rows) * len(cols)
    sizes = holes[:, 0].sum(axis=(1, 2))
    assert (sizes == 16).mean() > 0.3 and (sizes < 16).any()        # whole squares inside, clipped at edges
    corners = [h.nonzero() for h in holes[:, 0]]
    assert {int(r.min()) for r, _ in corners} == set(range(7))      # centres on every row: tops -2..6
    half = data.Cutout(4, p=0.5)(x, np.random.default_rng(2))
    assert 60 < (half == 0).any(axis=(1, 2, 3)).sum() < 140
    for bad in (0, True, 2.0):
        with pytest.raises(ValueError, match="size must be an int >= 1"):
            data.Cutout(bad)
    with pytest.raises(ValueError, match="padding must be an int >= 0"):
        data.RandomCrop(True)


def test_color_jitter_ranges_and_compose_determinism(rng):
    x = rng.random((50, 3, 4, 4)).astype(np.float32)
    out = data.ColorJitter(brightness=0.2)(x, np.random.default_rng(0))
    ratio = out.mean(axis=(1, 2, 3)) / x.mean(axis=(1, 2, 3))
    assert np.all((ratio > 0.799) & (ratio < 1.201)) and ratio.std() > 0.05
    c = data.ColorJitter(contrast=0.5)(x, np.random.default_rng(0))
    np.testing.assert_allclose(c.mean(axis=(1, 2, 3)), x.mean(axis=(1, 2, 3)), rtol=1e-5)   # contrast keeps the mean
    aug = data.Compose([data.RandomCrop(1), data.RandomFlip(), data.ColorJitter(0.1, 0.1)])
    np.testing.assert_array_equal(aug(x, np.random.default_rng(5)), aug(x, np.random.default_rng(5)))
    with pytest.raises(ValueError, match="brightness and contrast"):
        data.ColorJitter(brightness=1.5)


def test_normalise_gives_c_ordered_float32_from_any_layout(rng):
    x = rng.random((2, 5, 5, 3)).astype(np.float32).transpose(0, 3, 1, 2)   # channels last in memory
    mean, std = [0.1, 0.2, 0.3], [0.5, 1.0, 2.0]
    out = data.normalise(x, mean, std)
    assert out.dtype == np.float32 and out.flags.c_contiguous and out.shape == (2, 3, 5, 5)
    want = (x - np.float32(mean)[None, :, None, None]) / np.float32(std)[None, :, None, None]
    np.testing.assert_array_equal(out, want)
    out64 = data.normalise(x.astype(np.float64), mean, std)                # float64 in: computed in float64
    np.testing.assert_array_equal(out64, ((x.astype(np.float64) - np.float32(mean)[None, :, None, None])
                                          / np.float32(std)[None, :, None, None]).astype(np.float32))


def test_square_crop_and_squish():
    img = Image.new("RGB", (40, 20), (255, 0, 0))
    img.paste((0, 0, 255), (0, 0, 10, 20))                            # blue left quarter
    crop = data.image_to_array(img, 8, "crop")
    squish = data.image_to_array(img, 8, "squish")
    assert crop.shape == squish.shape == (3, 8, 8)
    assert crop[2].max() == 0                                        # the centre crop misses the blue
    assert squish[2, :, 0].min() > 0.9                               # squished keeps it on the left
    with pytest.raises(ValueError, match="fit must be"):
        data.image_to_array(img, 8, "stretch")


def test_load_image_errors_name_the_file(tmp_path):
    p = tmp_path / "x.png"
    p.write_bytes(b"\x89PNG\r\n\x1a\n broken")
    with pytest.raises(ValueError, match="x.png: cannot decode image"):
        data.load_image(p, 8)
