"""routoo_fast.evaluation.baselines: single models, random mix, oracle, kNN router, RouteLLM-style MF router."""
import numpy as np
import pytest

from routoo_fast.evaluation import baselines as bl
from routoo_fast import evaluation as ev
from routoo_fast.train.knn import KNNPredictor
from routoo_fast.train.metrics import roc_auc


def _data(P=60, N=3, seed=0):
    rng = np.random.default_rng(seed)
    Y = (rng.random((P, N)) < np.linspace(0.3, 0.8, N)).astype(float)
    C = np.broadcast_to(np.array([0.01, 0.1, 1.0][:N]), (P, N)).copy()
    return Y, C


def test_single_model_curves_are_column_means():
    Y, C = _data()
    singles = bl.single_model_curves(Y, C, ["a", "b", "c"])
    assert [s.name for s in singles] == ["a", "b", "c"]
    np.testing.assert_allclose([s.quality[0] for s in singles], Y.mean(0))
    np.testing.assert_allclose([s.cost[0] for s in singles], C.mean(0))
    with pytest.raises(ValueError, match="model_names has 2 names"):
        bl.single_model_curves(Y, C, ["a", "b"])


def test_random_mix_is_the_hull_of_single_models():
    Y, C = _data()
    singles = bl.single_model_curves(Y, C, ["a", "b", "c"])
    mix = bl.random_mix_curve(singles)
    for s in singles:  # every single model lies on or under the mix
        assert ev.hull_value(mix, s.cost[0]) >= s.quality[0] - 1e-12
    with pytest.raises(ValueError, match="at least one"):
        bl.random_mix_curve([])


def test_oracle_reaches_every_solvable_prompt_at_least_cost():
    Y, C = _data(P=200)
    oracle = bl.oracle_curve(Y, C)
    solvable = Y.max(1).mean()
    assert oracle.quality.max() == pytest.approx(solvable)
    # cheapest correct model per prompt (cheapest overall when none is correct)
    cheapest_right = np.where(Y.any(1), np.where(Y > 0, C, np.inf).min(1), C.min(1)).mean()
    assert ev.cost_to_reach(oracle, solvable) == pytest.approx(cheapest_right)
    for s in bl.single_model_curves(Y, C, ["a", "b", "c"]):
        assert ev.quality_at_cost(oracle, s.cost[0]) >= s.quality[0]


def _planted(P=1200, D=8, N=3, seed=1):
    """Outcomes driven by a bilinear signal of the features: a learnable routing problem."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(P, D)).astype(np.float32)
    V = rng.normal(size=(N, D))
    p = 1 / (1 + np.exp(-(x @ V.T) * 1.5))
    Y = (rng.random((P, N)) < p).astype(np.float32)
    idx = np.arange(P)
    return x, Y, p, idx[: P // 2], idx[P // 2: 3 * P // 4], idx[3 * P // 4:]


def test_knn_router_equals_knn_predictor_on_train_plus_val():
    x, Y, _, tr, va, te = _planted()
    r = bl.KNNRouter(k=7).fit(x, Y, tr, va)
    fit = np.concatenate([tr, va])
    np.testing.assert_array_equal(r.predict(x[te]), KNNPredictor(7).fit(x[fit], Y[fit]).predict(x[te]))


def test_knn_router_chooses_k_on_val_and_validates():
    x, Y, _, tr, va, te = _planted()
    r = bl.KNNRouter().fit(x, Y, tr, va)
    assert r.k in (10, 20, 40, 80, 160, 320)
    with pytest.raises(RuntimeError, match="fit"):
        bl.KNNRouter(5).predict(x)
    with pytest.raises(ValueError, match="k must be"):
        bl.KNNRouter(0)
    with pytest.raises(ValueError, match="same P"):
        bl.KNNRouter(5).fit(x[:10], Y, tr, va)


def test_mf_router_is_a_bilinear_head_that_learns_the_planted_signal():
    x, Y, p, tr, va, te = _planted()
    mf = bl.MFRouter(dim=8).fit(x, Y, tr, va)
    assert mf.head.act == "identity" and mf.head.hidden == 8
    q = mf.predict(x[te])
    assert q.shape == (len(te), 3) and np.all((q >= 0) & (q <= 1))
    aucs = [roc_auc(Y[te, j], q[:, j]) for j in range(3)]
    bayes = [roc_auc(Y[te, j], p[te, j]) for j in range(3)]  # AUC of the true probabilities
    assert np.mean(aucs) > 0.5 + 0.7 * (np.mean(bayes) - 0.5), (aucs, bayes)
    with pytest.raises(RuntimeError, match="fit"):
        bl.MFRouter().predict(x)
    with pytest.raises(ValueError, match="dim"):
        bl.MFRouter(dim=0)
