"""routoo_fast.evaluation: curves scored with true outcomes, hull/AIQ against brute force, APGR/CPT, reports."""
import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from routoo_fast import evaluation as ev


# ---------------------------------------------------------------------------------------------- references
def hull_value_reference(cost, quality, c):
    """Best quality reachable at mean cost <= c by mixing at most two points (0 below the cheapest point)."""
    best = 0.0
    for ci, qi in zip(cost, quality):
        if ci <= c:
            best = max(best, qi)
        for cj, qj in zip(cost, quality):
            if ci <= c < cj:
                best = max(best, qi + (qj - qi) * (c - ci) / (cj - ci))
    return best


def sweep_reference(Q, C_pred, Y, C_true, lams):
    rows = np.arange(Q.shape[0])
    out = []
    for lam in lams:
        j = np.argmax(Q - lam * C_pred, axis=1)
        out.append((C_true[rows, j].mean(), Y[rows, j].mean()))
    return np.array(out)


# no subnormal costs: interpolating between costs 0 and 2e-309 divides by a subnormal and loses every digit
points = st.lists(st.tuples(st.floats(0, 10, allow_nan=False, allow_subnormal=False), st.floats(0, 1, allow_nan=False)),
                  min_size=1, max_size=12)


@settings(max_examples=150, deadline=None)
@given(points, st.lists(st.floats(0, 12, allow_nan=False, allow_subnormal=False), min_size=1, max_size=8))
def test_hull_matches_two_point_mixing_brute_force(pts, cs):
    cost, quality = np.array(pts).T
    curve = ev.Curve("r", cost, quality)
    got = ev.hull_value(curve, np.array(cs))
    want = [hull_value_reference(cost, quality, c) for c in cs]
    np.testing.assert_allclose(got, want, atol=1e-9)


@settings(max_examples=100, deadline=None)
@given(points)
def test_hull_is_concave_and_non_decreasing(pts):
    hc, hq = ev.upper_hull(*np.array(pts).T)
    assert np.all(np.diff(hc) > 0) and np.all(np.diff(hq) > 0)
    if len(hc) >= 3:
        slopes = np.diff(hq) / np.diff(hc)
        assert np.all(np.diff(slopes) < 1e-9)


def test_aiq_of_known_curves():
    flat = ev.Curve("flat", [1.0], [0.6])
    assert ev.aiq(flat, 1.0, 3.0) == pytest.approx(0.6)
    # line from (1, 0.2) to (3, 0.8): mean over [1, 3] is 0.5
    line = ev.Curve("line", [1.0, 3.0], [0.2, 0.8])
    assert ev.aiq(line, 1.0, 3.0) == pytest.approx(0.5, abs=1e-6)
    # a router whose cheapest point is at cost 2 gets nothing on [1, 2): (0 * 1 + 0.8 * 1) / 2
    late = ev.Curve("late", [2.0], [0.8])
    assert ev.aiq(late, 1.0, 3.0) == pytest.approx(0.4, abs=1e-3)
    with pytest.raises(ValueError, match="c_min < c_max"):
        ev.aiq(flat, 2.0, 2.0)


def test_quality_at_cost_and_cost_to_reach_use_operating_points_only():
    c = ev.Curve("r", [1.0, 2.0, 4.0], [0.5, 0.7, 0.72])
    assert ev.quality_at_cost(c, 3.0) == 0.7  # no interpolation toward (4, 0.72)
    assert math.isnan(ev.quality_at_cost(c, 0.5))
    assert ev.cost_to_reach(c, 0.6) == 2.0
    assert math.isnan(ev.cost_to_reach(c, 0.9))


def test_tradeoff_curve_matches_numpy_argmax_reference():
    rng = np.random.default_rng(0)
    P, N = 60, 5
    Q = rng.random((P, N))
    C_pred = rng.random((P, N)) + 0.1
    Y = (rng.random((P, N)) < 0.5).astype(float)
    C_true = C_pred * rng.uniform(0.5, 1.5, (P, N))
    lams = [0.0, 0.05, 0.3, 1.0, 5.0, 100.0]
    curve = ev.tradeoff_curve("r", Q, C_pred, Y, C_true, lambdas=lams)
    ref = sweep_reference(Q, C_pred, Y, C_true, lams)
    ref = ref[np.lexsort((ref[:, 1], ref[:, 0]))]
    np.testing.assert_allclose(np.c_[curve.cost, curve.quality], ref)


def test_default_lambdas_span_cheapest_to_best():
    rng = np.random.default_rng(1)
    Q, C = rng.random((40, 4)), rng.random((40, 4)) + 0.01
    curve = ev.tradeoff_curve("r", Q, C, Q, C)
    assert curve.cost.min() == pytest.approx(C.min(1).mean())  # lambda beyond every slope: cheapest per prompt
    assert curve.quality.max() == pytest.approx(Q.max(1).mean())  # lambda 0: best predicted per prompt


def test_budget_curve_respects_each_budget():
    rng = np.random.default_rng(2)
    Q, C = rng.random((50, 4)), rng.random((50, 4)) + 0.05
    budgets = np.linspace(C.min(1).mean(), C.max(1).mean(), 7)
    curve = ev.budget_curve("b", Q, C, Q, C, budgets)
    assert len(curve.cost) == 7
    assert np.all(np.sort(curve.cost) <= np.sort(budgets) + 1e-12)
    with pytest.raises(ValueError, match="below the cheapest"):
        ev.budget_curve("b", Q, C, Q, C, [0.0])


def test_apgr_and_cpt_of_the_random_router_and_a_perfect_one():
    share = np.linspace(0, 1, 11)
    rand = ev.Curve("random", share, 0.6 + 0.2 * share, strong_share=share)
    assert ev.apgr(rand, 0.6, 0.8) == pytest.approx(0.5)
    assert ev.cpt(rand, 0.6, 0.8, 0.5) == pytest.approx(0.5)
    assert ev.cpt(rand, 0.6, 0.8, 0.8) == pytest.approx(0.8)
    # perfect: 20% of prompts need the strong model; sending exactly those recovers the whole gap
    perfect = ev.Curve("p", [0.0, 0.2, 1.0], [0.6, 0.8, 0.8], strong_share=[0.0, 0.2, 1.0])
    assert ev.cpt(perfect, 0.6, 0.8, 0.8) == pytest.approx(0.2)
    assert ev.apgr(perfect, 0.6, 0.8) == pytest.approx(0.9)
    with pytest.raises(ValueError, match="strong_share"):
        ev.apgr(ev.Curve("x", [1.0], [0.5]), 0.6, 0.8)
    with pytest.raises(ValueError, match="q_strong > q_weak"):
        ev.pgr([0.5], 0.8, 0.6)


def _pool_data(P=80, N=4, seed=3):
    rng = np.random.default_rng(seed)
    skill = np.linspace(0.3, 0.8, N)
    Y = (rng.random((P, N)) < skill).astype(float)
    C = np.broadcast_to(np.geomspace(0.01, 1.0, N), (P, N)) * rng.uniform(0.9, 1.1, (P, N))
    return Y, C, [f"m{j}" for j in range(N)]


def test_evaluate_pool_rows_and_report_files(tmp_path):
    Y, C, names = _pool_data()
    rng = np.random.default_rng(4)
    noisy = np.clip(Y * 0.6 + 0.2 + rng.normal(0, 0.1, Y.shape), 0, 1)
    pool = ev.evaluate_pool("toy pool", Y, C, names, {"mine": noisy, "prior": np.broadcast_to(Y.mean(0), Y.shape)})
    rows = {r["router"]: r for r in pool.rows()}
    assert set(rows) == {"random mix", "mine", "mine (batch budget)", "prior", "oracle"}
    assert pool.best.name == names[int(np.argmax(Y.mean(0)))]
    assert rows["oracle"]["aiq"] >= max(r["aiq"] for r in rows.values()) - 1e-12
    assert rows["random mix"]["quality_at_best_cost"] == pytest.approx(pool.best.quality[0])
    report = ev.Report([pool], title="toy")
    md = report.write(tmp_path / "out")
    assert md.read_text().count("| mine |") == 1 and "toy pool" in md.read_text()
    data = json.loads((tmp_path / "out" / "results.json").read_text())
    assert data["pools"][0]["best_model"]["name"] == pool.best.name
    png = tmp_path / "out" / "toy_pool.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_evaluate_pool_two_model_metrics():
    Y, C, names = _pool_data(N=2)
    pool = ev.evaluate_pool("two", Y, C, names, {"r": Y * 0.5 + 0.25}, strong_weak=("m1", "m0"))
    row = next(r for r in pool.rows() if r["router"] == "r")
    assert 0 <= row["cpt50"] <= row["cpt80"] <= 1
    assert row["apgr"] > 0.5  # a router that sees the outcomes beats random
    assert "APGR" in pool.to_markdown()


@pytest.mark.parametrize("bad, match", [
    (lambda Y, C: (np.where(np.eye(*Y.shape) > 0, np.nan, Y), C), "Y has NaN"),
    (lambda Y, C: (Y, -C), "C_true must be >= 0"),
    (lambda Y, C: (Y, C[:, :2]), "C_true must have shape"),
    (lambda Y, C: (Y.astype(str), C), "Y must be a numeric array"),
])
def test_evaluate_pool_rejects_bad_inputs(bad, match):
    Y, C, names = _pool_data()
    Yb, Cb = bad(Y, C)
    with pytest.raises((ValueError, TypeError), match=match):
        ev.evaluate_pool("p", Yb, Cb, names, {"r": Y})


def test_evaluate_pool_rejects_bad_names():
    Y, C, names = _pool_data()
    with pytest.raises(ValueError, match="model_names has 3 names"):
        ev.evaluate_pool("p", Y, C, names[:3], {"r": Y})
    with pytest.raises(ValueError, match="strong_weak model 'gpt'"):
        ev.evaluate_pool("p", Y, C, names, {"r": Y}, strong_weak=("gpt", "m0"))
    with pytest.raises(ValueError, match="at least one router"):
        ev.evaluate_pool("p", Y, C, names, {})
    with pytest.raises(ValueError, match="Q_pred must have shape"):
        ev.evaluate_pool("p", Y, C, names, {"r": Y[:, :2]})


def test_curve_validation():
    with pytest.raises(ValueError, match="kind"):
        ev.Curve("x", [1.0], [0.5], kind="magic")
    with pytest.raises(ValueError, match="NaN"):
        ev.Curve("x", [np.nan], [0.5])
    with pytest.raises(ValueError, match="one non-zero length"):
        ev.Curve("x", [1.0, 2.0], [0.5])
