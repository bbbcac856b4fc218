import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import rankdata

from routoo_fast.train.metrics import (
    average_ranks,
    brier,
    evaluate_predictions,
    expected_calibration_error,
    roc_auc,
)


def auc_pairs(y, p):
    """Slow oracle: the fraction of (positive, negative) pairs ranked right, ties counting one half."""
    keep = ~np.isnan(y)
    y, p = y[keep], p[keep]
    pos, neg = p[y >= 0.5], p[y < 0.5]
    if pos.size == 0 or neg.size == 0:
        return float("nan")
    diff = pos[:, None] - neg[None, :]
    return float(((diff > 0) + 0.5 * (diff == 0)).mean())


def ece_loop(y, p, n_bins):
    """Slow oracle: bin by bin, with the documented edges."""
    keep = ~np.isnan(y)
    y, p = y[keep], p[keep]
    total = 0.0
    for b in range(n_bins):
        lo, hi = b / n_bins, (b + 1) / n_bins
        inside = (p >= lo) & ((p < hi) if b < n_bins - 1 else (p <= hi))
        if inside.any():
            total += inside.sum() / y.size * abs(y[inside].mean() - p[inside].mean())
    return total


def test_auc_hand_cases():
    assert roc_auc([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4]) == 1.0
    assert roc_auc([1, 1, 0, 0], [0.1, 0.2, 0.3, 0.4]) == 0.0
    assert roc_auc([0, 1, 0, 1], [0.5, 0.5, 0.5, 0.5]) == 0.5  # all tied
    # pairs (pos 0.8 vs neg 0.3, 0.8): win, tie -> (1 + 0.5) / 2
    assert roc_auc([1, 0, 0], [0.8, 0.3, 0.8]) == 0.75
    # NaN outcomes are ignored, whatever the prediction there
    assert roc_auc([0, np.nan, 1], [0.2, 0.9, 0.4]) == 1.0
    assert np.isnan(roc_auc([1, 1, np.nan], [0.1, 0.2, 0.3]))  # one class only


def test_brier_and_ece_hand_cases():
    assert brier([1, 0], [1.0, 0.0]) == 0.0
    assert brier([1, 0, np.nan], [0.5, 0.5, 0.0]) == pytest.approx(0.25)
    # bins of width 0.5: {0.2, 0.3} mean p 0.25 vs mean y 0.5; {0.9} vs 1 -> (2*0.25 + 1*0.1) / 3
    assert expected_calibration_error([0, 1, 1], [0.2, 0.3, 0.9], n_bins=2) == pytest.approx(0.6 / 3)
    # p = 1.0 lands in the last bin, not past it
    assert expected_calibration_error([1], [1.0], n_bins=10) == 0.0
    assert expected_calibration_error([0, 1], [0.5, 0.5], n_bins=1) == 0.0


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from([0.0, 1.0, np.nan]), st.integers(0, 6)), min_size=1, max_size=40))
def test_auc_matches_pairwise_oracle(pairs):
    y = np.array([a for a, _ in pairs])
    p = np.array([b / 6 for _, b in pairs])  # few distinct values -> many ties
    got, want = roc_auc(y, p), auc_pairs(y, p)
    assert (np.isnan(got) and np.isnan(want)) or got == pytest.approx(want, abs=1e-12)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(0, 5), min_size=1, max_size=50))
def test_average_ranks_matches_scipy(xs):
    np.testing.assert_allclose(average_ranks(np.array(xs)), rankdata(xs, method="average"))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.floats(0, 1), st.floats(0, 1)), min_size=1, max_size=40), st.integers(1, 12))
def test_ece_matches_loop(pairs, n_bins):
    y = np.array([a for a, _ in pairs])
    p = np.array([b for _, b in pairs])
    assert expected_calibration_error(y, p, n_bins) == pytest.approx(ece_loop(y, p, n_bins), abs=1e-12)


def test_report_per_model_and_mean():
    y = np.array([[0, 1], [1, np.nan], [0, 0], [1, 1]], dtype=np.float32)
    p = np.array([[0.1, 0.9], [0.8, 0.5], [0.3, 0.2], [0.6, 0.6]])
    rep = evaluate_predictions(y, p, ["a", "b"], name="head")
    assert rep.auc.tolist() == [1.0, 1.0]
    assert rep.n.tolist() == [4, 3]
    assert rep.mean_brier == pytest.approx((brier(y[:, 0], p[:, 0]) + brier(y[:, 1], p[:, 1])) / 2)
    md = rep.to_markdown()
    assert "| a | 4 |" in md and "**mean**" in md and "head" in md
    assert rep.to_dict()["per_model"]["b"]["n"] == 3


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="same shape"):
        roc_auc([0, 1], [0.5])
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        brier([2.0], [0.5])
    with pytest.raises(ValueError, match="NaN"):
        brier([1.0], [np.nan])
    with pytest.raises(ValueError, match="model_names"):
        evaluate_predictions(np.zeros((2, 2)), np.zeros((2, 2)), ["only-one"])
    with pytest.raises(ValueError, match="n_bins"):
        expected_calibration_error([1], [1.0], n_bins=0)
