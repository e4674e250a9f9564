"""softmax, softmax_cross_entropy and CrossEntropyLoss: values, gradients (float64 central
differences), label smoothing, and the errors bad logits and labels raise."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import convlib as cl
from convlib.gradcheck import check_loss
from strategies import seeds


@given(seed=seeds, n=st.integers(1, 6), k=st.integers(1, 8), scale=st.sampled_from([1.0, 100.0, 1e4]))
def test_softmax_rows_sum_to_one_even_for_huge_logits(seed, n, k, scale):
    logits = np.random.default_rng(seed).standard_normal((n, k)) * scale
    p = cl.softmax(logits)
    np.testing.assert_allclose(p.sum(1), 1.0, rtol=1e-12)
    loss, d = cl.softmax_cross_entropy(logits, np.zeros(n, dtype=int))
    assert np.isfinite(loss) and np.all(np.isfinite(d))


def test_softmax_cross_entropy_value():
    logits = np.array([[0.0, np.log(3.0)]])                        # p = [1/4, 3/4]
    loss, d = cl.softmax_cross_entropy(logits, np.array([1]))
    assert abs(loss - np.log(4 / 3)) < 1e-12
    np.testing.assert_allclose(d, [[0.25, -0.25]])


@given(seed=seeds, n=st.integers(1, 5), k=st.integers(2, 6))
def test_softmax_cross_entropy_gradient(seed, n, k):
    rng = np.random.default_rng(seed)
    check_loss(cl.softmax_cross_entropy, rng.standard_normal((n, k)) * 3, rng.integers(0, k, n))


@pytest.mark.parametrize("eps", [0.1, 0.5])
def test_label_smoothing_gradient_and_limits(rng, eps):
    """Finite differences (float64), the plain loss at eps 0, the uniform target's value, and errors."""
    logits, y = rng.standard_normal((5, 4)) * 3, rng.integers(0, 4, 5)
    assert check_loss(lambda z, t: cl.softmax_cross_entropy(z, t, label_smoothing=eps), logits, y) < 1e-6
    plain, smooth = cl.softmax_cross_entropy(logits, y), cl.softmax_cross_entropy(logits, y, label_smoothing=eps)
    logp = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    want = -((1 - eps) * logp[np.arange(5), y] + eps * logp.mean(1)).mean()
    assert abs(smooth[0] - want) < 1e-12 and abs(smooth[0] - plain[0]) > 1e-3
    np.testing.assert_allclose(smooth[1].sum(1), 0, atol=1e-12)     # softmax and target both sum to 1
    for bad in (-0.1, 1.0, "0.1"):
        with pytest.raises(ValueError, match="label_smoothing must be a number in"):
            cl.softmax_cross_entropy(logits, y, label_smoothing=bad)


def test_cross_entropy_is_the_mean_over_the_batch():
    """Catches: a sum instead of a mean (invisible at N = 1), or a wrong gradient scale."""
    logits = np.array([[2.0, 0.0, -1.0], [0.5, 0.5, 3.0], [0.0, 0.0, 0.0]])
    y = np.array([0, 1, 2])
    p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    loss, d = cl.softmax_cross_entropy(logits, y)
    assert loss == pytest.approx(-np.mean(np.log(p[np.arange(3), y])), rel=1e-12)
    want = p.copy()
    want[np.arange(3), y] -= 1
    np.testing.assert_allclose(d, want / 3, rtol=1e-12)


@pytest.mark.parametrize("call, message", [
    (lambda: cl.softmax(np.zeros(3)), "softmax: expected float logits of shape (N, K), got (3,) float64"),
    (lambda: cl.softmax(np.array([[np.nan, 0.0]])), "softmax: logits hold NaN or infinite values"),
    (lambda: cl.softmax([[1.0, 2.0]]), "softmax: expected float logits of shape (N, K), got list"),
    (lambda: cl.softmax(np.zeros((2, 2), np.int64)),
     "softmax: expected float logits of shape (N, K), got (2, 2) int64"),
    (lambda: cl.softmax_cross_entropy(np.zeros((2, 3)), np.zeros(2)),
     "softmax_cross_entropy: expected integer labels of shape (2,), got (2,) float64"),
    (lambda: cl.softmax_cross_entropy(np.zeros((2, 3)), np.array([0, 3])),
     "softmax_cross_entropy: labels must lie in [0, 3), got values from 0 to 3"),
    (lambda: cl.softmax_cross_entropy(np.zeros((2, 3)), np.array([-1, 0])),
     "softmax_cross_entropy: labels must lie in [0, 3), got values from -1 to 0"),
    (lambda: cl.softmax_cross_entropy(np.zeros((2, 3)), np.array([0, 1, 2])),
     "softmax_cross_entropy: expected integer labels of shape (2,), got (3,) int64"),
    (lambda: cl.CrossEntropyLoss(label_smoothing=1.0),
     "CrossEntropyLoss: label_smoothing must be a number in [0, 1), got 1.0"),
    (lambda: cl.softmax_cross_entropy(np.full((1, 2), np.inf), np.array([0])),
     "softmax_cross_entropy: logits hold NaN or infinite values"),
])
def test_loss_errors_name_the_function_and_what_was_wrong(call, message):
    with pytest.raises(ValueError) as e:
        call()
    assert str(e.value) == message


def test_unsigned_labels_are_labels():
    loss, _ = cl.softmax_cross_entropy(np.array([[0.0, np.log(3.0)]]), np.array([1], np.uint8))
    assert loss == pytest.approx(np.log(4 / 3))


def test_cross_entropy_loss_is_softmax_cross_entropy_with_its_rows_on_the_side(rng):
    logits, y = rng.standard_normal((5, 3)), np.array([0, 2, 1, 1, 0])
    loss, d = cl.CrossEntropyLoss(label_smoothing=0.1)(logits, y)
    want, want_d = cl.softmax_cross_entropy(logits, y, label_smoothing=0.1)
    assert loss == want and np.array_equal(d, want_d)
    rows, d2 = cl.CrossEntropyLoss(label_smoothing=0.1).rows(logits, y)
    assert rows.shape == (2, 5) and rows[0].mean() == pytest.approx(loss, rel=1e-12) and np.array_equal(d2, d)
    np.testing.assert_array_equal(rows[1], logits.argmax(1) == y)
