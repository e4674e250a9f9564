"""The crop search (lib/selfie_model.py, shared by selfie_crop.py and the web page): climb finds
the peak of a one-peak landscape from a fraction of the scores, each point scored once and
inside the grid; find_crop answers the chosen crop's own P(good), never less than the whole
image's, and its exhaustive mode scores every crop of the grid."""
import numpy as np
import pytest
from PIL import Image

import convlib as cl
from lib.selfie_model import (
    build_net,
    climb,
    crop_boxes,
    crop_grid,
    find_crop,
    p_good,
    prepare,
)


def test_climb_finds_the_one_peak_scoring_each_point_once():
    rng = np.random.default_rng(0)
    for _ in range(20):
        peak = rng.integers(0, 9, 3)
        weights = rng.uniform(0.2, 3, 3)                                 # a bowl, steeper along some axes
        rounds = []

        def score(points, peak=peak, weights=weights, rounds=rounds):
            rounds.append(points)
            return [-float(np.sum(weights * (np.array(p) - peak) ** 2)) for p in points]

        seen = climb(score, (9, 9, 9))
        assert max(seen, key=seen.get) == tuple(peak)
        scored = [p for r in rounds for p in r]
        assert len(scored) == len(set(scored)) == len(seen) < 729 / 5  # each point once, a fraction of the grid
        assert all(0 <= v <= 8 for p in scored for v in p)


def test_climb_counts_points_with_one_key_once_among_the_best():
    """On a 5 x 5 grid the coarse points of the right edge all stand for one thing (scoring 10);
    the peak (20) sits next to the left edge (5), off the coarse grid. With the key the two
    starts are the edge and the left side, and the peak is found; without it both starts are
    on the edge and it is not."""
    def score(points):
        return [10.0 if p[0] == 4 else 20.0 if p == (0, 1) else 5.0 if p[0] == 0 else 0.0 for p in points]

    edge = lambda p: "right edge" if p[0] == 4 else p
    seen = climb(score, (5, 5), keep=2, key=edge)
    assert max(seen, key=seen.get) == (0, 1)
    assert (0, 1) not in climb(score, (5, 5), keep=2)


def test_crop_grid_spans_the_boxes_of_crop_boxes():
    box = crop_grid(300, 200, np.linspace(0.5, 1.0, 9), 9)
    assert {box(a, b, c) for a in range(9) for b in range(9) for c in range(9)} == \
        set(crop_boxes(300, 200, np.linspace(0.5, 1.0, 9), 9))
    assert box(0, 0, 0) == (0, 0, 100) and box(8, 8, 8) == (100, 0, 200)
    assert box(0.5, 4, 4) == (round(4 * (300 - 106) / 8), round(4 * (200 - 106) / 8), 106)   # between scales


@pytest.fixture(scope="module")
def tiny():
    """A random 16-px selfie net, its metadata, and a 120 x 80 picture of smooth colours."""
    cl.manual_seed(0)
    net = build_net(16, blocks=2, width=(4, 8), hidden=8).eval()
    meta = {"size": 16, "fit": "crop", "mean": [0.5] * 3, "std": [0.25] * 3}
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (5, 6, 3), dtype=np.uint8)).resize((120, 80), Image.BICUBIC)
    return net, meta, image


def own(net, meta, image, box):
    left, top, side = box
    return float(p_good(net, prepare([image.crop((left, top, left + side, top + side))], meta))[0])


def test_find_crop_answers_the_chosen_crops_own_p_good(tiny):
    net, meta, image = tiny
    box, best, whole, n = find_crop(net, meta, image)
    left, top, side = box
    assert 0 <= left <= 120 - side and 0 <= top <= 80 - side and 40 <= side <= 80
    assert best == pytest.approx(own(net, meta, image, box), abs=1e-6)
    assert whole == pytest.approx(float(p_good(net, prepare([image], meta))[0]), abs=1e-6)
    assert best >= whole
    assert n < len(crop_boxes(120, 80, np.linspace(0.5, 1.0, 9), 9)) / 4


def test_find_crop_exhaustive_scores_every_crop_of_the_grid(tiny):
    net, meta, image = tiny
    boxes = crop_boxes(120, 80, np.linspace(0.5, 1.0, 3), 3)
    box, best, whole, n = find_crop(net, meta, image, scales=3, steps=3, exhaustive=True)
    scores = [own(net, meta, image, b) for b in boxes]
    assert n == len(boxes)
    assert best == pytest.approx(max(max(scores), whole), abs=1e-6)
    assert box == (boxes[int(np.argmax(scores))] if max(scores) >= whole else (20, 0, 80))


def test_find_crop_on_a_one_box_grid(tiny):
    net, meta, image = tiny
    box, _, _, n = find_crop(net, meta, image, scales=1, steps=1)
    assert n == 1 and box in ((0, 0, 40), (20, 0, 80))
