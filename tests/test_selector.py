"""routoo_fast.selector against its references: exact equality for the per-prompt modes, brute force and
scipy milp (HiGHS) for the batch budget, and a ValueError/TypeError for every kind of bad input."""
import math

import numpy as np
import pytest

from routoo_fast import _reference as R
from routoo_fast import selector as S

DTYPES = [np.float32, np.float64]
SHAPES = [(1, 1), (1, 16), (7, 3), (33, 8), (100, 64), (5, 129)]  # tails of the 8-wide SIMD loop, and > 8


def make(P, N, dtype, seed=0, grid=None, broadcast=False):
    """Random Q in [0, 1) and C >= 0; `grid` rounds values to multiples of 1/grid so ties actually happen."""
    rng = np.random.default_rng(seed)
    Q = rng.random((P, N))
    C = rng.random(N if broadcast else (P, N)) * 3
    if grid:
        Q, C = np.round(Q * grid) / grid, np.round(C * grid) / grid
    return Q.astype(dtype), C.astype(dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("P,N", SHAPES)
@pytest.mark.parametrize("grid", [None, 4])
@pytest.mark.parametrize("broadcast", [False, True])
def test_tradeoff_and_max_quality_equal_reference(P, N, dtype, grid, broadcast):
    Q, C = make(P, N, dtype, seed=P * N, grid=grid, broadcast=broadcast)
    for lam in [0.0, 0.1, 0.5, 3.0]:
        got = S.tradeoff(Q, C, lam)
        choice, quality, cost = R.tradeoff_reference(Q, C, lam)
        np.testing.assert_array_equal(got.choice, choice)
        np.testing.assert_array_equal(got.quality, quality)
        np.testing.assert_array_equal(got.cost, cost)
        assert got.choice.dtype == np.int32 and got.feasible.all()
        assert got.total_quality == pytest.approx(quality.sum()) and got.total_cost == pytest.approx(cost.sum())
    mq = S.max_quality(Q, C)
    np.testing.assert_array_equal(mq.choice, R.max_quality_reference(Q, C)[0])


def test_ties_go_to_cheaper_then_lower_index():
    Q = np.array([[0.5, 0.9, 0.9, 0.9, 0.1, 0.2, 0.3, 0.4, 0.9]], np.float32)
    C = np.array([[1.0, 2.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0]], np.float32)
    assert S.max_quality(Q, C).choice[0] == 2
    Q2 = np.array([[0.5, 0.5, 0.5]])
    C2 = np.array([0.2, 0.1, 0.1])
    assert S.max_quality(Q2, C2).choice[0] == 1
    assert S.min_cost(Q2, C2, 0.4).choice[0] == 1
    assert S.budget(Q2, C2, 1.0).choice[0] == 1


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("P,N", SHAPES)
def test_max_quality_caps_and_mask(P, N, dtype):
    Q, C = make(P, N, dtype, seed=1, grid=8)
    rng = np.random.default_rng(2)
    latency = rng.random(N) * 10
    allowed = rng.random((P, N)) < 0.7
    max_cost = rng.random(P) * 3
    got = S.max_quality(Q, C, max_cost=max_cost, max_latency=6.0, latency=latency, allowed=allowed)
    choice, quality, cost = R.max_quality_reference(Q, C, max_cost, 6.0, latency, allowed)
    np.testing.assert_array_equal(got.choice, choice)
    np.testing.assert_array_equal(got.feasible, choice >= 0)
    assert np.isnan(got.quality[choice < 0]).all() and np.isnan(got.cost[choice < 0]).all()
    ok = choice >= 0
    assert got.total_quality == pytest.approx(quality[ok].sum())
    masked = S.tradeoff(Q, C, 0.4, allowed=allowed[0])
    np.testing.assert_array_equal(masked.choice, R.tradeoff_reference(Q, C, 0.4, allowed[0])[0])


def test_max_quality_reports_infeasible_prompts():
    Q = np.array([[0.9, 0.8], [0.7, 0.6]])
    C = np.array([[5.0, 4.0], [1.0, 2.0]])
    got = S.max_quality(Q, C, max_cost=3.0)
    assert got.choice.tolist() == [-1, 0] and got.feasible.tolist() == [False, True]
    assert got.total_cost == 1.0


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("P,N", SHAPES)
@pytest.mark.parametrize("broadcast", [False, True])
def test_min_cost_equals_reference(P, N, dtype, broadcast):
    Q, C = make(P, N, dtype, seed=3, grid=8, broadcast=broadcast)
    floors = np.random.default_rng(4).random(P)
    for floor in [0.5, 0.95, floors]:
        got = S.min_cost(Q, C, floor)
        choice, quality, cost, flagged = R.min_cost_reference(Q, C, floor)
        np.testing.assert_array_equal(got.choice, choice)
        np.testing.assert_array_equal(got.flagged, flagged)
        np.testing.assert_array_equal(got.cost, cost)
    allowed = np.random.default_rng(5).random((P, N)) < 0.5
    allowed[:, 0] = True
    got = S.min_cost(Q, C, 0.6, allowed=allowed)
    np.testing.assert_array_equal(got.choice, R.min_cost_reference(Q, C, 0.6, allowed)[0])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("P,N,grid", [(1, 1, None), (1, 9, None), (20, 5, None), (50, 16, 16), (300, 64, None),
                                      (40, 8, 4)])
@pytest.mark.parametrize("fraction", [0.0, 0.1, 0.5, 0.9, 1.2])
def test_budget_equals_sorted_reference(P, N, grid, dtype, fraction):
    Q, C = make(P, N, dtype, seed=P + N, grid=grid)
    # the cheapest total correctly rounded (math.fsum: no dependence on numpy's summation order); the solver and the
    # reference sum in prompt order, a few ulps away, and both treat a budget that close as the cheapest total
    lo = math.fsum(C.astype(np.float64).min(1))
    hi = C.astype(np.float64)[np.arange(P), R.max_quality_reference(Q, C)[0]].sum()
    B = lo + fraction * max(hi - lo, 0.0)
    got = S.budget(Q, C, B)
    ref = R.budget_reference(Q, C, B)
    np.testing.assert_array_equal(got.choice, ref["choice"])
    assert got.lambda_star == ref["lambda_star"]
    assert got.break_gain == ref["break_gain"]
    assert got.lp_bound == pytest.approx(ref["lp_bound"], rel=1e-12, abs=1e-12)
    assert got.total_cost <= B * (1 + 1e-12) + 1e-12
    assert got.total_quality <= got.lp_bound + 1e-9
    np.testing.assert_array_equal(got.quality, Q[np.arange(P), got.choice].astype(np.float64))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("P", [1, 300, 20_000])  # 20,000 prompts: the fast path answers
def test_budget_at_the_cheapest_total(P, dtype):
    """A budget down to BUDGET_REL_SLACK below the cheapest total is that total: every prompt on its cheapest model,
    in the solver and in the reference alike; one a bit further below is refused by both."""
    assert S.BUDGET_REL_SLACK == R.BUDGET_REL_SLACK == 1e-9
    Q, C = make(P, 16, dtype, seed=P)
    cheapest = C.argmin(1)  # continuous random costs: no ties
    exact = math.fsum(C.astype(np.float64).min(1))
    ulps_below = exact
    for _ in range(4):
        ulps_below = np.nextafter(ulps_below, 0.0)
    budgets = [exact, float(C.astype(np.float64).min(1).sum()), float(C.min(1).mean(dtype=np.float64) * P),
               ulps_below, exact * (1 - 0.5 * S.BUDGET_REL_SLACK)]
    for B in budgets:
        got = S.budget(Q, C, B)
        np.testing.assert_array_equal(got.choice, cheapest)
        assert got.total_cost <= B * (1 + S.BUDGET_REL_SLACK)
        assert got.total_quality == pytest.approx(Q[np.arange(P), cheapest].astype(np.float64).sum(), rel=1e-12)
        if P <= 300:
            np.testing.assert_array_equal(R.budget_reference(Q, C, B)["choice"], cheapest)
    too_low = exact * (1 - 2 * S.BUDGET_REL_SLACK)
    with pytest.raises(ValueError, match="total_budget=.* is below the cheapest possible total"):
        S.budget(Q, C, too_low)
    if P <= 300:
        with pytest.raises(ValueError, match="below the cheapest possible total"):
            R.budget_reference(Q, C, too_low)


@pytest.mark.parametrize("seed", range(25))
def test_budget_within_one_hull_edge_of_brute_force(seed):
    rng = np.random.default_rng(seed)
    P, N = int(rng.integers(1, 7)), int(rng.integers(1, 5))
    grid = [None, 4][seed % 2]
    Q, C = make(P, N, np.float64, seed=seed, grid=grid)
    lo = C.min(1).sum()
    B = lo + rng.random() * (C.max(1).sum() - lo)
    got = S.budget(Q, C, B)
    opt, _ = R.budget_bruteforce(Q, C, B)
    assert got.total_cost <= B + 1e-12
    assert got.total_quality <= opt + 1e-12
    assert opt <= got.lp_bound + 1e-9
    assert got.total_quality >= opt - got.break_gain - 1e-9


@pytest.mark.parametrize("P,N", [(10, 4), (100, 8), (500, 4)])
def test_budget_within_one_hull_edge_of_milp(P, N):
    pytest.importorskip("scipy")
    Q, C = make(P, N, np.float64, seed=P)
    lo = C.min(1).sum()
    B = lo + 0.4 * (C.max(1).sum() - lo)
    got = S.budget(Q, C, B)
    opt, choice = R.budget_milp(Q, C, B)
    assert C[np.arange(P), choice].sum() <= B + 1e-6
    assert got.total_cost <= B + 1e-9
    assert got.total_quality <= opt + 1e-6
    assert opt <= got.lp_bound + 1e-6
    assert got.total_quality >= opt - got.break_gain - 1e-6


def test_budget_with_mask_and_broadcast_cost():
    Q, C = make(60, 12, np.float32, seed=9, broadcast=True)
    allowed = np.random.default_rng(9).random((60, 12)) < 0.5
    allowed[:, 3] = True
    B = float(np.where(allowed, C, np.inf).min(1).sum()) * 1.3
    got = S.budget(Q, C, B, allowed=allowed)
    ref = R.budget_reference(Q, C, B, allowed)
    np.testing.assert_array_equal(got.choice, ref["choice"])
    assert allowed[np.arange(60), got.choice].all()


@pytest.mark.parametrize("dtype", DTYPES)
def test_frontier_equals_reference_and_matches_tradeoff(dtype):
    Q, C = make(80, 10, dtype, seed=11)
    f = S.frontier(Q, C)
    slopes, cost, quality = R.frontier_reference(Q, C)
    np.testing.assert_array_equal(f.slopes, slopes)
    np.testing.assert_allclose(f.cost, cost, rtol=1e-12)
    np.testing.assert_allclose(f.quality, quality, rtol=1e-12)
    assert (np.diff(f.slopes) <= 0).all() and (np.diff(f.cost) > 0).all() and (np.diff(f.quality) > 0).all()
    for k in [0, 5, len(slopes) // 2, len(slopes) - 1]:  # between breakpoints lambda sweeps through
        lam = slopes[k] * 1.0001 if k == 0 else 0.5 * (slopes[k - 1] + slopes[k])
        t = S.tradeoff(Q.astype(np.float64), C.astype(np.float64), lam)
        assert t.total_cost == pytest.approx(f.cost[k], rel=1e-9)
        assert t.total_quality == pytest.approx(f.quality[k], rel=1e-9)


def test_calibrate_lambda_spends_the_target():
    Q, C = make(400, 16, np.float64, seed=12)
    lo, hi = C.min(1).mean(), C[np.arange(len(Q)), Q.argmax(1)].mean()
    for target in [lo, lo + 0.2 * (hi - lo), lo + 0.7 * (hi - lo)]:
        lam = S.calibrate_lambda(Q, C, target)
        spent = S.tradeoff(Q, C, lam).cost.mean()
        max_edge = C.max() / len(Q)  # one hull edge of one prompt
        assert abs(spent - target) <= max_edge + 1e-12
    assert S.calibrate_lambda(Q, C, 100.0) == 0.0


def test_memory_floor_sums_q_and_c():
    Q, C = make(10, 20, np.float64, seed=13)
    assert S._selector._memory_floor(Q, C) == pytest.approx(Q.sum() + C.sum())
    assert S._selector._memory_floor(Q, C[0]) == pytest.approx(Q.sum() + 10 * C[0].sum())


# ------------------------------------------------------------------------------------------------ bad input
def good():
    return make(4, 3, np.float64, seed=0)


@pytest.mark.parametrize("call", [
    lambda Q, C: S.max_quality(Q, C), lambda Q, C: S.tradeoff(Q, C, 0.1), lambda Q, C: S.min_cost(Q, C, 0.5),
    lambda Q, C: S.budget(Q, C, 100.0), lambda Q, C: S.calibrate_lambda(Q, C, 1.0), lambda Q, C: S.frontier(Q, C),
])
@pytest.mark.parametrize("where,value,message", [
    ("Q", np.nan, r"Q contains NaN or infinity at \[1, 2\]"), ("Q", np.inf, r"Q contains NaN or infinity"),
    ("Q", -np.inf, r"Q contains NaN or infinity"), ("C", np.nan, r"C contains NaN or infinity at \[1, 2\]"),
    ("C", np.inf, r"C contains NaN or infinity"), ("C", -1.0, r"C has a negative cost at \[1, 2\]"),
])
@pytest.mark.parametrize("dtype,N", [(np.float64, 3), (np.float32, 3), (np.float32, 19)])
def test_bad_values_are_named(call, where, value, message, dtype, N):
    Q, C = make(4, N, dtype, seed=0)
    (Q if where == "Q" else C)[1, 2] = value
    with pytest.raises(ValueError, match=message):
        call(Q, C)


def test_bad_broadcast_cost_is_named():
    Q, C = good()
    with pytest.raises(ValueError, match=r"C has a negative cost at \[1\]"):
        S.tradeoff(Q, np.array([0.1, -0.2, 0.3]), 0.1)
    with pytest.raises(ValueError, match=r"C contains NaN"):
        S.budget(Q, np.array([0.1, np.nan, 0.3]), 10.0)


def test_bad_shapes_and_types():
    Q, C = good()
    with pytest.raises(ValueError, match="Q must be 2-D"):
        S.max_quality(Q[0], C[0])
    with pytest.raises(ValueError, match="empty batch"):
        S.tradeoff(np.zeros((0, 3)), np.zeros(3), 0.1)
    with pytest.raises(ValueError, match="no models"):
        S.tradeoff(np.zeros((2, 0)), np.zeros(0), 0.1)
    with pytest.raises(ValueError, match="C must have shape"):
        S.max_quality(Q, C[:, :2])
    with pytest.raises(ValueError, match="C must have shape"):
        S.max_quality(Q, C.T)
    with pytest.raises(TypeError, match="Q must be a numeric array"):
        S.max_quality(np.array([["a", "b", "c"]]), C[0])
    with pytest.raises(TypeError, match="allowed must be a bool array"):
        S.max_quality(Q, C, allowed=np.ones(3))
    with pytest.raises(ValueError, match="allowed must have shape"):
        S.max_quality(Q, C, allowed=np.ones(4, bool))
    with pytest.raises(ValueError, match="latency must have shape"):
        S.max_quality(Q, C, max_latency=1.0, latency=np.ones(5))
    with pytest.raises(ValueError, match="max_latency needs latency"):
        S.max_quality(Q, C, max_latency=1.0)
    with pytest.raises(ValueError, match="latency must be finite and >= 0"):
        S.max_quality(Q, C, max_latency=1.0, latency=np.array([1.0, -1.0, 1.0]))
    with pytest.raises(ValueError, match="max_cost must be >= 0"):
        S.max_quality(Q, C, max_cost=-1.0)
    with pytest.raises(ValueError, match="max_cost must be a scalar or shape"):
        S.max_quality(Q, C, max_cost=np.ones(3))
    with pytest.raises(ValueError, match="min_quality contains NaN"):
        S.min_cost(Q, C, np.nan)


@pytest.mark.parametrize("name,call", [
    ("lam", lambda Q, C, v: S.tradeoff(Q, C, v)),
    ("total_budget", lambda Q, C, v: S.budget(Q, C, v)),
    ("target_mean_cost", lambda Q, C, v: S.calibrate_lambda(Q, C, v)),
])
@pytest.mark.parametrize("value,message", [(-0.5, ">= 0"), (np.nan, "finite"), (np.inf, "finite")])
def test_bad_scalars_are_named(name, call, value, message):
    Q, C = good()
    with pytest.raises(ValueError, match=f"{name} must be {message}"):
        call(Q, C, value)


def test_budget_below_cheapest_total_and_empty_mask():
    Q, C = good()
    with pytest.raises(ValueError, match="total_budget=.* is below the cheapest possible total"):
        S.budget(Q, C, C.min(1).sum() * 0.99)
    with pytest.raises(ValueError, match="target_mean_cost=.* is below the cheapest possible mean cost"):
        S.calibrate_lambda(Q, C, C.min(1).mean() * 0.5)
    allowed = np.ones((4, 3), bool)
    allowed[2] = False
    with pytest.raises(ValueError, match="allowed leaves prompt 2 with no model"):
        S.budget(Q, C, 100.0, allowed=allowed)
    with pytest.raises(ValueError, match="allowed leaves prompt 2 with no model"):
        S.frontier(Q, C, allowed=allowed)


def test_other_dtypes_are_converted_and_non_contiguous_accepted():
    Q, C = good()
    ints = (Q * 10).astype(np.int64)
    got = S.max_quality(ints, C)
    np.testing.assert_array_equal(got.choice, R.max_quality_reference(ints.astype(np.float64), C)[0])
    mixed = S.tradeoff(Q.astype(np.float32), C, 0.2)  # float32 Q + float64 C -> float64
    np.testing.assert_array_equal(mixed.choice, R.tradeoff_reference(Q.astype(np.float32).astype(np.float64), C, 0.2)[0])
    wide = np.asfortranarray(Q)
    np.testing.assert_array_equal(S.max_quality(wide, C).choice, S.max_quality(Q, C).choice)
    assert S.max_quality(Q.tolist(), C.tolist()).choice.tolist() == S.max_quality(Q, C).choice.tolist()


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_unpickled_arrays_are_accepted(dtype):
    """An unpickled array's dtype equals float32/64 but is a distinct object; the C++ side dispatches on identity."""
    import pickle

    Q, C = good()
    Q, C = Q.astype(dtype), C.astype(dtype)
    Qp, Cp = pickle.loads(pickle.dumps(Q)), pickle.loads(pickle.dumps(C))
    assert Qp.dtype == Q.dtype and Qp.dtype is not Q.dtype  # the case this test is about
    np.testing.assert_array_equal(S.tradeoff(Qp, Cp, 0.2).choice, S.tradeoff(Q, C, 0.2).choice)
    np.testing.assert_array_equal(S.tradeoff(Q, Cp, 0.2).choice, S.tradeoff(Q, C, 0.2).choice)
    np.testing.assert_array_equal(S.frontier(Qp, Cp).slopes, S.frontier(Q, C).slopes)
    budget = float(C.min(1).sum()) * 1.5
    assert S.budget(Qp, Cp, budget).total_quality == S.budget(Q, C, budget).total_quality


def test_sse2_path_agrees_with_reference():
    """On an AVX2 machine the default run tests the AVX2 copy of the row scan; this runs the SSE2 copy."""
    import os
    import subprocess
    import sys
    code = (
        "import numpy as np\n"
        "from routoo_fast import selector as S, _reference as R\n"
        "rng = np.random.default_rng(0)\n"
        "for N in (16, 37, 64, 129):\n"
        "    for dtype in (np.float32, np.float64):\n"
        "        Q = (np.round(rng.random((200, N)) * 8) / 8).astype(dtype)\n"
        "        C = (np.round(rng.random((200, N)) * 8) / 8).astype(dtype)\n"
        "        for lam in (0.0, 0.5):\n"
        "            assert (S.tradeoff(Q, C, lam).choice == R.tradeoff_reference(Q, C, lam)[0]).all()\n"
        "        B = C.astype(float).min(1).sum() * 1.5\n"
        "        assert (S.budget(Q, C, B).choice == R.budget_reference(Q, C, B)['choice']).all()\n"
        "        Q[3, 5] = np.nan\n"
        "        try:\n"
        "            S.tradeoff(Q, C, 0.1)\n"
        "            raise SystemExit('NaN not reported')\n"
        "        except ValueError:\n"
        "            pass\n"
        "print('ok')\n"
    )
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, "ROUTOO_NO_AVX2": "1"},
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_select_dispatches_by_name_and_rejects_unknown_modes():
    Q, C = good()
    np.testing.assert_array_equal(S.select("tradeoff", Q, C, lam=0.2).choice, S.tradeoff(Q, C, 0.2).choice)
    np.testing.assert_array_equal(S.select("budget", Q, C, total_budget=5.0).choice, S.budget(Q, C, 5.0).choice)
    with pytest.raises(ValueError, match="unknown mode 'fastest'"):
        S.select("fastest", Q, C)
