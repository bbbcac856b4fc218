import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from routoo_fast.train.knn import KNNPredictor


def knn_reference(train_x, train_y, query_x, k):
    """Slow oracle: per query, sort all training rows by cosine similarity, average observed outcomes."""
    out = np.zeros((len(query_x), train_y.shape[1]))
    for b, q in enumerate(query_x):
        sims = [q @ x / (np.linalg.norm(q) * np.linalg.norm(x)) for x in train_x]
        nearest = np.argsort(sims)[::-1][:k]
        for j in range(train_y.shape[1]):
            vals = [train_y[i, j] for i in nearest if not np.isnan(train_y[i, j])]
            out[b, j] = np.mean(vals) if vals else np.nanmean(train_y[:, j]) if np.any(~np.isnan(train_y[:, j])) else 0.5
    return out


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 30), st.integers(1, 8), st.integers(1, 12), st.integers(0, 10_000))
def test_matches_reference(p, k, b, seed):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(p, 5))
    y = (rng.random((p, 3)) < 0.5).astype(np.float32)
    y[rng.random((p, 3)) < 0.3] = np.nan
    q = rng.normal(size=(b, 5))
    got = KNNPredictor(k=k, block_size=4).fit(x, y).predict(q)
    np.testing.assert_allclose(got, knn_reference(x, y, q, k), atol=1e-6)


def test_neighbours_are_most_similar_first_and_scale_free():
    x = np.array([[1, 0], [0, 1], [1, 1], [-1, 0]], dtype=np.float32)
    knn = KNNPredictor(k=2).fit(x, np.zeros((4, 1)))
    assert knn.neighbours([[10, 1]]).tolist() == [[0, 2]]  # cosine ignores length
    assert knn.neighbours([[0, 3]]).tolist() == [[1, 2]]


def test_missing_neighbour_outcomes_fall_back_to_training_mean():
    x = np.eye(3, dtype=np.float32)
    y = np.array([[np.nan], [1.0], [0.0]], dtype=np.float32)
    knn = KNNPredictor(k=1).fit(x, y)
    np.testing.assert_allclose(knn.predict(np.eye(3)), [[0.5], [1.0], [0.0]])


def test_bad_input():
    with pytest.raises(ValueError, match="k must"):
        KNNPredictor(k=0)
    with pytest.raises(ValueError, match="metric"):
        KNNPredictor(metric="l2")
    with pytest.raises(ValueError, match="scores"):
        KNNPredictor().fit(np.ones((3, 2)), np.ones((2, 1)))
    with pytest.raises(ValueError, match="NaN"):
        KNNPredictor().fit(np.full((3, 2), np.nan), np.ones((3, 1)))
    with pytest.raises(ValueError, match="D ="):
        KNNPredictor().fit(np.ones((3, 2)), np.ones((3, 1))).predict(np.ones((1, 4)))
    with pytest.raises(RuntimeError, match="fit"):
        KNNPredictor().predict(np.ones((1, 2)))


@settings(max_examples=20, deadline=None)
@given(st.integers(2, 25), st.integers(1, 6), st.integers(0, 10_000))
def test_leave_one_out_equals_refitting_without_the_row(p, k, seed):
    """predict(x, exclude=rows) of the training rows themselves = each row's kNN over the other rows."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(p, 4))
    y = (rng.random((p, 2)) < 0.5).astype(np.float32)
    y[rng.random((p, 2)) < 0.2] = np.nan
    got = KNNPredictor(k=k, block_size=3).fit(x, y).predict(x, exclude=np.arange(p))
    for i in range(p):
        rest = np.delete(np.arange(p), i)
        np.testing.assert_allclose(got[i], knn_reference(x[rest], y[rest], x[i:i + 1], k)[0], atol=1e-6)


def test_exclude_is_checked():
    knn = KNNPredictor(k=2).fit(np.eye(3), np.zeros((3, 1)))
    with pytest.raises(ValueError, match="exclude must be int row indices"):
        knn.predict(np.eye(3), exclude=np.array([0, 1]))
    with pytest.raises(ValueError, match="exclude must be int row indices"):
        knn.predict(np.eye(3), exclude=np.array([0, 1, 3]))
    with pytest.raises(ValueError, match="no training row"):
        KNNPredictor(k=2).fit(np.eye(1, 3), np.zeros((1, 1))).predict(np.eye(1, 3), exclude=np.array([0]))
