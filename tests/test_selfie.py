"""The selfie example: generator, labeller, data parsers, crop search, and an end-to-end run."""
import csv
import os

import numpy as np
import pytest
from PIL import Image

from lib import selfie_data as sd  # examples/ is on pytest's path (setup.cfg)
from lib.selfie_model import best_crop, crop_boxes


def test_generator_is_deterministic_and_attributes_in_range(tmp_path):
    a1 = sd._make_one((7, 3, 32, str(tmp_path)))
    img1 = np.asarray(Image.open(tmp_path / a1["image"]))
    a2 = sd._make_one((7, 3, 32, str(tmp_path)))
    assert a1 == a2
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / a2["image"])), img1)
    assert img1.shape == (32, 32, 3)
    other = sd._make_one((8, 3, 32, str(tmp_path)))
    assert other != a1
    rng = np.random.default_rng(0)
    for _ in range(300):
        a = sd._random_attributes(rng)
        assert 0.15 <= a["face_frac"] <= 0.85 and 0.2 <= a["cx"] <= 0.8 and 0.15 <= a["cy"] <= 0.7
        assert 1 <= a["n_faces"] <= 4 and 0.25 <= a["brightness"] <= 1.25 and 0.5 <= a["saturation"] <= 2
        assert a["filter"] in ("none", "bw", "faded") and a["eyewear"] in ("none", "glasses", "sunglasses")
        assert a["forehead_cut"] == (a["cy"] - 0.5 * a["face_frac"] < 0.02)
        if a["n_faces"] > 1:
            assert a["face_frac"] <= 0.3


def test_quality_follows_the_posts_rules():
    base = dict(face_frac=0.33, cx=0.5, cy=0.35, forehead_cut=False, long_hair=False, saturation=1.0,
                filter="none", border=False, brightness=1.0, n_faces=1)
    q = sd.true_quality(base)
    assert sd.true_quality({**base, "border": True}) > q
    assert sd.true_quality({**base, "filter": "bw"}) > q
    assert sd.true_quality({**base, "brightness": 0.3}) < q
    assert sd.true_quality({**base, "n_faces": 3}) < q
    assert sd.true_quality({**base, "face_frac": 0.8}) < sd.true_quality({**base, "face_frac": 0.5}) < q
    assert sd.true_quality({**base, "cx": 0.8}) < q


def _post(i, followers, likes, tags=0, age=100):
    return dict(image=f"{i}.png", user=f"u{i}", followers=followers, likes=likes, tags=tags, age_days=age)


def test_labeller_groups_of_100_top_half_good():
    # 250 posts; audience = followers. Likes are a fixed shuffle so the expected split is known.
    rng = np.random.default_rng(0)
    likes = rng.permutation(250)
    posts = [_post(i, followers=1000 + i, likes=int(likes[i])) for i in range(250)]
    idx, labels, groups = sd.label_posts(posts)
    assert len(idx) == 200                                          # the incomplete last group is dropped
    assert sorted(idx.tolist()) == list(range(200))                 # sorted by audience: the 200 smallest
    for g in (0, 1):
        members = idx[groups == g]
        assert sorted(members.tolist()) == list(range(100 * g, 100 * g + 100))
        good = set(members[labels[groups == g] == 1].tolist())
        want = set(sorted(members.tolist(), key=lambda i: -likes[i])[:50])
        assert good == want and len(good) == 50


def test_labeller_filters_and_tag_bonus():
    posts = [_post(i, followers=100 + i, likes=i) for i in range(100)]
    posts += [_post(100, 10, 5, age=10), _post(101, 5, 5), _post(102, 10**7, 5), _post(103, 150, 5, tags=30)]
    idx, labels, _ = sd.label_posts(posts, min_age_days=30, min_followers=50, max_followers=10**6, max_tags=20)
    assert sorted(idx.tolist()) == list(range(100))                  # the four filtered posts are gone
    assert labels[idx == 99][0] == 1 and labels[idx == 0][0] == 0
    # tag bonus: a post with many tags sorts as a bigger audience
    posts = [_post(i, followers=100, likes=i, tags=(10 if i == 0 else 0)) for i in range(4)]
    idx, _, _ = sd.label_posts(posts, group=2)
    assert idx.tolist()[-1] == 0
    with pytest.raises(ValueError, match="even number"):
        sd.label_posts(posts, group=3)


def _label_posts_plainly(posts, group, **limits):
    """The rule as the post states it, in plain Python: the oracle of the NumPy labeller."""
    keep = [i for i, p in enumerate(posts) if p["age_days"] > 30 and p["tags"] <= limits.get("max_tags", 10**9)]
    keep.sort(key=lambda i: (posts[i]["followers"] * (1 + 0.05 * posts[i]["tags"]), i))
    out = []
    for g in range(len(keep) // group):
        members = keep[g * group:(g + 1) * group]
        good = set(sorted(members, key=lambda i: (-posts[i]["likes"], i))[:group // 2])
        out += [(i, int(i in good), g) for i in members]
    return [np.array(c, dtype=np.int64) for c in zip(*out)]


@pytest.mark.parametrize("group,limits", [(10, {}), (100, {}), (4, {"max_tags": 2})])
def test_labeller_matches_the_plain_rule_with_ties(group, limits):
    """Many equal audiences and like counts (ties go to the earlier post), lists or columns."""
    rng = np.random.default_rng(group)
    n = 3000
    cols = dict(followers=rng.integers(1, 60, n), likes=rng.integers(0, 8, n), tags=rng.poisson(1.0, n),
                age_days=rng.integers(1, 100, n))
    posts = [{k: int(v[i]) for k, v in cols.items()} for i in range(n)]
    want = _label_posts_plainly(posts, group, **limits)
    for given in (posts, cols):
        got = sd.label_posts(given, group=group, **limits)
        for w, g in zip(want, got):
            np.testing.assert_array_equal(g, w)


def test_label_ceiling_is_one_when_likes_follow_quality():
    q = np.arange(200.0)
    labels = np.r_[np.zeros(50), np.ones(50), np.zeros(50), np.ones(50)].astype(int)
    groups = np.repeat([0, 1], 100)
    assert sd.label_ceiling(q, labels, groups) == 1.0
    assert sd.label_ceiling(-q, labels, groups) == 0.0


def _img(path, color=(200, 100, 50), size=(40, 30)):
    Image.new("RGB", size, color).save(path)


def test_class_folders_parser(tmp_path, capsys):
    for name in ("good", "bad"):
        (tmp_path / name).mkdir()
        for i in range(3):
            _img(tmp_path / name / f"{i}.jpg")
    (tmp_path / "bad" / "broken.png").write_bytes(b"not an image at all")
    (tmp_path / "good" / "notes.txt").write_text("ignored")
    paths, labels, _ = sd.from_class_folders(str(tmp_path))
    assert len(paths) == 7 and labels.tolist() == [0, 0, 0, 0, 1, 1, 1]
    from convlib.data import load_images
    x, kept = load_images(paths, 16, progress=False)
    assert "skipped 1 of 7 images that did not decode: broken.png" in capsys.readouterr().err
    assert x.shape == (6, 3, 16, 16) and x.dtype == np.float32 and 1 <= x.max() * 255 <= 255
    assert "broken.png" not in [os.path.basename(paths[i]) for i in kept]


def test_class_folders_errors(tmp_path):
    (tmp_path / "good").mkdir()
    with pytest.raises(ValueError, match="bad/ is missing"):
        sd.from_class_folders(str(tmp_path))
    (tmp_path / "bad").mkdir()
    _img(tmp_path / "good" / "a.png")
    with pytest.raises(ValueError, match="class folder 'bad' holds no images"):
        sd.from_class_folders(str(tmp_path))


def test_selfie_dataset_parser(tmp_path):
    (tmp_path / "images").mkdir()
    lines = []
    for i, score in enumerate([3.0, 1.0, 4.0, 2.0]):
        _img(tmp_path / "images" / f"s{i}.jpg")
        codes = ["1" if (k + i) % 2 else "-1" for k in range(36)]
        lines.append(" ".join([f"s{i}", str(score)] + codes))
    (tmp_path / "selfie_dataset.txt").write_text("\n".join(lines) + "\n")
    paths, labels, info = sd.from_selfie_dataset(str(tmp_path))
    assert labels.tolist() == [1, 0, 1, 0]                           # top half by popularity
    assert paths[0].endswith(os.path.join("images", "s0.jpg")) and os.path.exists(paths[0])
    assert info["codes"]["dim_lighting"].tolist() == [1, -1, 1, -1]
    (tmp_path / "selfie_dataset.txt").write_text("s0 1.0 1 1\n")
    with pytest.raises(ValueError, match="line 1 has 4 fields"):
        sd.from_selfie_dataset(str(tmp_path))
    with pytest.raises(ValueError, match="no selfie_dataset.txt"):
        sd.from_selfie_dataset(str(tmp_path / "images"))


def test_posts_csv_parser(tmp_path):
    rows = [dict(image=f"{i}.png", user=f"u{i % 7}", followers=100 + i, likes=(i * 37) % 101, tags=i % 3,
                 age_days=10 if i >= 200 else 60) for i in range(220)]
    with open(tmp_path / "posts.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=sd.POST_FIELDS)
        w.writeheader()
        w.writerows(rows)
    paths, labels, info = sd.from_posts_csv(str(tmp_path / "posts.csv"))
    assert len(paths) == 200 and labels.sum() == 100                # the 20 young posts were dropped
    assert paths[0].startswith(str(tmp_path))
    (tmp_path / "bad.csv").write_text("image,likes\na.png,3\n")
    with pytest.raises(ValueError, match="missing columns"):
        sd.from_posts_csv(str(tmp_path / "bad.csv"))
    with pytest.raises(ValueError, match="no complete group"):
        sd.from_posts_csv(str(tmp_path / "posts.csv"), min_age_days=1000)


def test_crop_search_finds_the_known_best_crop():
    img = Image.new("RGB", (300, 200), (0, 0, 0))
    scales = np.linspace(0.4, 1.0, 7)
    boxes = crop_boxes(300, 200, scales, steps=7)
    target = boxes[len(boxes) // 3]
    # stub scorer: how close a crop's size and the position of a marker are to the target box
    img.putpixel((target[0], target[1]), (255, 0, 0))
    def score(crops):
        return np.array([-abs(c.width - target[2]) + (100 if c.getpixel((0, 0)) == (255, 0, 0) else 0)
                         for c in crops])
    box, best, scores = best_crop(img, score, scales, steps=7, batch=10)
    assert box == target and best == 100 and len(scores) == len(boxes)
    assert all(top + s <= 200 and left + s <= 300 for left, top, s in boxes)


def test_prepare_equals_image_by_image_conversion(rng):
    """The crop search's batch conversion gives exactly ``image_to_array`` then ``normalise``,
    for images at size, larger, not square, and not RGB."""
    from convlib.data import image_to_array, normalise
    from lib.selfie_model import prepare
    pixels = rng.integers(0, 256, (40, 60, 4), dtype=np.uint8)
    images = [Image.fromarray(pixels[:16, :16, :3]), Image.fromarray(pixels[:, :, :3]),
              Image.fromarray(pixels, "RGBA"), Image.fromarray(pixels[:, :, 0], "L")]
    for fit in ("crop", "squish"):
        meta = {"size": 16, "fit": fit, "mean": [0.4, 0.5, 0.6], "std": [0.2, 0.25, 0.3]}
        want = normalise(np.stack([image_to_array(im, 16, fit) for im in images]), meta["mean"], meta["std"])
        got = prepare(images, meta)
        assert got.flags.c_contiguous
        np.testing.assert_array_equal(got, want)


def test_end_to_end_tiny_run(tmp_path, capsys):
    import selfie_crop
    import selfie_explain
    import selfie_rate
    import selfie_train

    import convlib as cl
    from lib.selfie_model import load_model, p_good, prepare
    out = tmp_path / "run"
    argv = ["--synthetic-dir", str(tmp_path / "data"), "--n-images", "320", "--size", "16", "--epochs", "2",
            "--out", str(out), "--no-progress"]
    res = selfie_train.main(argv)
    printed = capsys.readouterr().out
    assert f"test accuracy: {100 * res['test_accuracy']:.1f}% (label ceiling: {100 * res['ceiling']:.1f}%)" in printed
    assert "white border" in printed
    for name in ("model.npz", "curves.png", "continuum.png", "best.png", "worst.png", "tsne.png",
                 "filters.png", "rules.png"):
        assert (out / name).stat().st_size > 0, name
    assert not [f for f in os.listdir(out) if f.startswith(".tmp")]
    # the reported figures are the saved model's, on the held-out split: recompute them independently
    d = selfie_train.prepare_data(selfie_train.parse_args(argv))
    te = d["split"][2]
    net, meta = load_model(str(out / "model.npz"))
    assert "synthetic selfies" in capsys.readouterr().err             # the tools say what it was trained on
    pred = cl.predict_proba(net, d["xn"][te]).argmax(1)
    assert res["test_accuracy"] == pytest.approx(np.mean(pred == d["labels"][te]), abs=1e-12)
    ideal = sd.ideal_labels(d["info"]["quality"], d["info"]["groups"])[d["kept"]][te]
    assert res["ceiling"] == pytest.approx(np.mean(ideal == d["labels"][te]), abs=1e-12)
    # rate, crop and explain give the numbers the model gives for the same file
    selfie = str(tmp_path / "data" / "selfie_00000.png")
    img = Image.open(selfie).convert("RGB")
    whole = float(p_good(net, prepare([img], meta))[0])
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8 truncated")
    results = selfie_rate.main([selfie, "--model", str(out / "model.npz")])
    assert results == [(selfie, pytest.approx(whole, abs=1e-6))]
    with pytest.raises(SystemExit):
        selfie_rate.main([selfie, str(tmp_path / "broken.jpg"), "--model", str(out / "model.npz")])
    (left, top, side), best = selfie_crop.main([selfie, "--model", str(out / "model.npz"), "--scales", "3",
                                                "--steps", "3"])
    crop = img.crop((left, top, left + side, top + side))
    assert best == pytest.approx(float(p_good(net, prepare([crop], meta))[0]), abs=1e-6)
    assert best >= whole - 1e-6                                      # the whole (square) image is a candidate
    assert (out / "crop_selfie_00000.png").exists()
    heat = selfie_explain.main([selfie, "--model", str(out / "model.npz")])
    from lib.selfie_model import saliency
    want = np.abs(saliency(net, prepare([img], meta))[0]).max(axis=0)
    np.testing.assert_allclose(heat, want, rtol=1e-6)
    assert Image.open(out / "explain_selfie_00000.png").size[0] > 2 * 300   # two panels at display size
    # the cached data is reused: same folder, no regeneration
    stamp = os.path.getmtime(tmp_path / "data" / "generator.json")
    sd.generate(str(tmp_path / "data"), n=320, size=16, seed=0, progress=False)
    assert os.path.getmtime(tmp_path / "data" / "generator.json") == stamp


def test_saliency_is_the_gradient_of_p_good():
    import convlib as cl
    from convlib.gradcheck import numerical_grad
    from lib.selfie_model import GOOD, build_net, saliency
    cl.manual_seed(0)
    net = build_net(16, blocks=2, width=(3, 4), hidden=5).to(np.float64).eval()
    x = np.random.default_rng(0).standard_normal((2, 3, 16, 16))
    want = numerical_grad(lambda: cl.predict_proba(net, x)[:, GOOD], x, np.ones(2))   # the image as it is, unmirrored
    np.testing.assert_allclose(saliency(net, x), want, rtol=1e-5, atol=1e-9)


def test_pictures_name_labels_ranks_and_agreement():
    from lib import plots
    from lib.selfie_report import _ranked, rule_bars
    p = np.array([0.9, 0.2, 0.7, 0.4])
    labels = np.array([1, 1, 0, 0])
    imgs = np.zeros((4, 3, 8, 8))
    captions = []
    orig_grid = plots.grid
    plots.grid = lambda images, cols, caps, **kw: captions.append((caps, kw["caption_colors"]))
    try:
        _ranked(imgs, p, labels, np.argsort(-p), "best")
    finally:
        plots.grid = orig_grid
    caps, colors = captions[0]
    assert caps == ["#1 good", "#2 bad", "#3 bad", "#4 good"]
    assert colors == [plots.GOOD_GREEN, plots.BAD_RED, plots.GOOD_GREEN, plots.BAD_RED]
    rows = [("a", 10, 0.7, 0.4, "do", "yes"), ("b", 10, 0.7, 0.4, "don't", "NO"), ("c", 10, 0.3, 0.5, "", "")]
    assert [bar[3] for bar in rule_bars(rows)] == [plots.GOOD_GREEN, plots.BAD_RED, plots.GREY]


def test_tsne_grid_layout_fills_every_slot_and_keeps_order():
    from lib.plots import grid_layout, nice_ticks
    xy = np.random.default_rng(0).standard_normal((50, 2))
    slots = grid_layout(xy)
    assert len({tuple(s) for s in slots}) == 50 and slots.max(0).tolist() == [7, 6]   # 8 per row, 7 rows
    for r in range(7):
        row = np.flatnonzero(slots[:, 1] == r)
        assert np.all(np.diff(xy[row[np.argsort(slots[row, 0])], 0]) >= 0)      # left to right by x
    assert max(xy[slots[:, 1] == 0, 1]) <= min(xy[slots[:, 1] == 1, 1])          # rows go down by y
    assert nice_ticks(0.583, 0.647) == ([0.59, 0.6, 0.61, 0.62, 0.63, 0.64], 2)
    assert nice_ticks(0.0, 1.0) == ([0.0, 0.25, 0.5, 0.75, 1.0], 2)
    assert nice_ticks(0.2, 2.7) == ([0.5, 1.0, 1.5, 2.0, 2.5], 1)


def test_each_data_source_gets_its_own_output_folder():
    import selfie_train
    outs = [selfie_train.default_out(selfie_train.parse_args(opt)) for opt in
            ([], ["--data", "d"], ["--selfie-dataset", "d"], ["--posts", "p.csv"])]
    assert outs == ["runs/selfie", "runs/selfie-folders", "runs/selfie-dataset", "runs/selfie-posts"]


@pytest.mark.parametrize("argv, message", [(["--cutout", "-1"], "--cutout must be >= 0"),
                                           (["--label-smoothing", "1"], "--label-smoothing must be in"),
                                           (["--lr", "0"], "--lr must be > 0")])
def test_bad_training_options_name_the_option(argv, message, capsys):
    import selfie_train
    with pytest.raises(SystemExit):
        selfie_train.parse_args(argv)
    assert message in capsys.readouterr().err


def test_a_run_removes_only_the_files_an_earlier_run_listed(tmp_path):
    from lib.selfie_report import record_run
    for name in ("model.npz", "rules.png", "mine.png"):
        (tmp_path / name).write_bytes(b"x")
    record_run(str(tmp_path), ["model.npz", "rules.png"], source="synthetic")
    record_run(str(tmp_path), ["model.npz"], source="folders")      # this run has no rules table
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine.png", "model.npz", "run.json"]
    (tmp_path / "run.json").write_text('{"files": ["../escape.txt"]}')
    (tmp_path.parent / "escape.txt").write_text("keep")
    record_run(str(tmp_path), ["model.npz"])
    assert (tmp_path.parent / "escape.txt").exists()                # never outside the folder


def test_an_interrupted_run_resumes_to_the_same_model(tmp_path, monkeypatch):
    import selfie_train

    import convlib as cl
    argv = ["--synthetic-dir", str(tmp_path / "data"), "--n-images", "320", "--size", "16", "--epochs", "3",
            "--no-progress"]
    want = selfie_train.main(argv + ["--out", str(tmp_path / "a")])
    fit = cl.fit

    def interrupted_fit(*args, on_epoch_end=None, **kwargs):        # Ctrl-C right after epoch 2's checkpoint
        def stop(epoch, hist):
            on_epoch_end(epoch, hist)
            if epoch == 2:
                raise KeyboardInterrupt("pressed")
        return fit(*args, on_epoch_end=stop, **kwargs)
    monkeypatch.setattr(selfie_train.cl, "fit", interrupted_fit)
    with pytest.raises(SystemExit, match="run the same command with --resume"):
        selfie_train.main(argv + ["--out", str(tmp_path / "b")])
    assert (tmp_path / "b" / "checkpoint.npz").exists()
    monkeypatch.setattr(selfie_train.cl, "fit", fit)
    got = selfie_train.main(argv + ["--out", str(tmp_path / "b"), "--resume"])
    assert got["test_accuracy"] == want["test_accuracy"] and got["history"]["loss"] == want["history"]["loss"]
    a, b = cl.load(tmp_path / "a" / "model.npz"), cl.load(tmp_path / "b" / "model.npz")
    for k, v in a.state_dict().items():
        np.testing.assert_array_equal(b.state_dict()[k], v)
    assert not (tmp_path / "b" / "checkpoint.npz").exists()


def test_rating_a_folder_ranks_it(tmp_path, capsys):
    import shutil

    import selfie_rate
    import selfie_train

    from lib.selfie_model import load_model, p_good, prepare
    selfie_train.main(["--synthetic-dir", str(tmp_path / "data"), "--n-images", "320", "--size", "16",
                       "--epochs", "1", "--out", str(tmp_path / "run"), "--no-progress"])
    folder = tmp_path / "mine"
    folder.mkdir()
    for i in range(25):
        shutil.copy(tmp_path / "data" / f"selfie_{i:05d}.png", folder / f"s{i:02d}.png")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8 truncated")
    (folder / "notes.txt").write_text("not an image, not listed")
    capsys.readouterr()
    model = str(tmp_path / "run" / "model.npz")
    ranked = selfie_rate.main([str(folder), "--model", model, "--no-progress"])
    captured = capsys.readouterr()
    assert "skipped 1 of 26 images that did not decode: broken.jpg" in captured.err
    assert "rated 25 of 26 images" in captured.out
    rows = list(csv.DictReader(open(tmp_path / "run" / "ranking_mine.csv")))
    assert [r["rank"] for r in rows] == [str(i) for i in range(1, 26)]
    ps = [float(r["p_good"]) for r in rows]
    assert ps == sorted(ps, reverse=True)
    net, meta = load_model(model)
    first = rows[0]["path"]
    assert float(rows[0]["p_good"]) == pytest.approx(float(p_good(net, prepare([Image.open(first).convert("RGB")],
                                                                                  meta))[0]), abs=1e-4)
    assert [(p, round(v, 4)) for p, v in ranked] == [(r["path"], float(r["p_good"])) for r in rows]
    assert Image.open(tmp_path / "run" / "ranking_mine.png").size[0] > 500


def test_fine_tuning_from_pretrained_weights(tmp_path, capsys):
    """selfie_pretrain.py's model starts selfie_train.py: the frozen layers end as they were
    pretrained, the head (other classes there) starts fresh, the rest trains; --n-labelled
    trains on that many; mismatched options end in messages."""
    import selfie_pretrain
    import selfie_train

    import convlib as cl
    data = ["--synthetic-dir", str(tmp_path / "data"), "--size", "16", "--no-progress"]
    pre = selfie_pretrain.main(data[:2] + ["--n-images", "200", "--size", "16", "--epochs", "1",
                                           "--seed", "7", "--out", str(tmp_path / "pre"), "--no-progress"])
    pre_net, pre_meta = cl.load(pre["path"], with_metadata=True)
    assert pre_net[-1].out_features == 64 and len(pre_meta["classes"]) == 64
    assert set(pre_meta["attribute_accuracy"]) == {"filtered", "border", "low light", "group", "long hair", "eyewear"}
    assert selfie_pretrain.attribute_class(dict(filter="bw", border="True", brightness="0.9", n_faces="1",
                                                long_hair="False", eyewear="glasses")) == 0b100011
    argv = data + ["--n-images", "320", "--epochs", "1", "--out", str(tmp_path / "ft"), "--no-pictures",
                   "--pretrained", pre["path"], "--freeze", "6", "--n-labelled", "60"]
    res = selfie_train.main(argv)
    printed = capsys.readouterr().out
    assert "train 60 / val 15 /" in printed and "starting fresh: 15.weight, 15.bias" in printed
    net, meta = cl.load(str(tmp_path / "ft" / "model.npz"), with_metadata=True)
    assert meta["pretrained"] == pre["path"] and meta["frozen_layers"] == 6 and meta["n_train"] == 60
    assert meta["mean"] == pre_meta["mean"]                            # the features' own scaling
    want, got = pre_net.state_dict(), net.state_dict()
    for k in ("0.weight", "0.bias", "3.weight", "3.bias"):              # frozen: exactly as pretrained
        np.testing.assert_array_equal(got[k], want[k], err_msg=k)
    assert not np.array_equal(got["6.weight"], want["6.weight"])        # pretrained, then trained
    assert got["15.weight"].shape == (2, 64) != want["15.weight"].shape
    assert sorted(os.listdir(tmp_path / "ft")) == ["model.npz", "run.json"]
    full = selfie_train.prepare_data(selfie_train.parse_args(data + ["--n-images", "320"]))["split"]
    few = selfie_train.prepare_data(selfie_train.parse_args(argv))["split"]
    assert set(few[0]) < set(full[0]) and set(few[1]) < set(full[1])    # drawn from the same split
    assert few[0].tolist() != full[0][:60].tolist()                     # at random, not the first ones
    np.testing.assert_array_equal(few[2], full[2])                      # the same test images
    assert 0 <= res["test_accuracy"] <= 1
    with pytest.raises(SystemExit):
        selfie_train.parse_args(["--freeze", "3"])                       # --freeze needs --pretrained
    with pytest.raises(SystemExit, match="trained at size 16, this run uses --size 32"):
        selfie_train.main(argv[:argv.index("--size")] + ["--size", "32"] + argv[argv.index("--size") + 2:])
    with pytest.raises(SystemExit, match="--freeze 40: the net has only 16 layers"):
        selfie_train.main(argv[:-3] + ["40", "--n-labelled", "60"])


def test_fine_tuning_table_medians_ranges_and_paired_gains():
    from selfie_finetune import table
    rows = [dict(n=100, seed=s, method=m, share=v) for s, m, v in
            [(0, "scratch", 0.70), (0, "fine-tuned", 0.80), (1, "scratch", 0.60), (1, "fine-tuned", 0.75),
             (2, "scratch", 0.65), (2, "fine-tuned", 0.69)]]
    lines = table(rows, [100]).splitlines()
    assert lines[2] == "| 100 | 65.0% [60.0–70.0] | 75.0% [69.0–80.0] | +10.0 pt |"   # gains 10, 15, 4


def test_selfie_tools_say_what_is_missing(tmp_path, capsys):
    from lib.selfie_model import load_model, open_image
    with pytest.raises(SystemExit, match="no trained model at .*python examples/selfie_train.py"):
        load_model(str(tmp_path / "model.npz"))
    with pytest.raises(ValueError, match="no such file"):
        open_image(str(tmp_path / "nothing.jpg"))
    with pytest.raises(ValueError, match="is a folder, not an image"):
        open_image(str(tmp_path))
