"""hypothesis property tests of routoo_fast.selector: feasibility, monotonicity in the budget, lambda = 0 is
max quality, calibrate_lambda spends its target, the frontier is monotone and concave."""
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from routoo_fast import _reference as R
from routoo_fast import selector as S

SETTINGS = settings(max_examples=60, deadline=None)
values = st.floats(0.0, 1.0, allow_nan=False, width=32)  # width=32 so float32 holds them exactly


@st.composite
def batches(draw, max_prompts=12, max_models=10):
    P = draw(st.integers(1, max_prompts))
    N = draw(st.integers(1, max_models))
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    Q = draw(arrays(dtype, (P, N), elements=values))
    broadcast = draw(st.booleans())
    C = draw(arrays(dtype, (N,) if broadcast else (P, N), elements=values))
    return Q, C


@st.composite
def batch_and_budgets(draw):
    Q, C = draw(batches())
    Cf = np.broadcast_to(C, Q.shape).astype(np.float64)
    lo, hi = Cf.min(1).sum(), Cf.max(1).sum()
    f1, f2 = sorted(draw(st.lists(st.floats(0.0, 1.2), min_size=2, max_size=2)))
    return Q, C, lo + f1 * (hi - lo), lo + f2 * (hi - lo)


@SETTINGS
@given(batch_and_budgets())
def test_budget_feasible_bounded_and_monotone(case):
    Q, C, b1, b2 = case
    s1, s2 = S.budget(Q, C, b1), S.budget(Q, C, b2)
    for s, b in ((s1, b1), (s2, b2)):
        assert s.total_cost <= b * (1 + 1e-12) + 1e-12
        assert s.total_quality <= s.lp_bound + 1e-9
        assert s.total_quality >= s.lp_bound - s.break_gain - 1e-9
    assert s2.lp_bound >= s1.lp_bound - 1e-9  # more budget never lowers the LP objective ...
    opt1, _ = R.budget_bruteforce(Q, C, b1) if Q.shape[0] <= 4 and Q.shape[1] <= 4 else (None, None)
    if opt1 is not None:  # ... nor the exact optimum, which the solution is within one hull edge of
        opt2, _ = R.budget_bruteforce(Q, C, b2)
        assert opt2 >= opt1 - 1e-12
        assert s1.total_quality >= opt1 - s1.break_gain - 1e-9


@SETTINGS
@given(batches())
def test_lambda_zero_is_max_quality(case):
    Q, C = case
    t, m = S.tradeoff(Q, C, 0.0), S.max_quality(Q, C)
    np.testing.assert_array_equal(t.choice, m.choice)
    np.testing.assert_array_equal(m.quality, Q.max(1).astype(np.float64))


@SETTINGS
@given(batches(max_prompts=40), st.floats(0.0, 1.0))
def test_calibrate_lambda_hits_target(case, f):
    Q, C = case
    Q, C = Q.astype(np.float64), C.astype(np.float64)
    Cf = np.broadcast_to(C, Q.shape)
    lo = Cf.min(1).mean()
    hi = S.max_quality(Q, C).cost.mean()
    target = lo + f * max(hi - lo, 0.0)
    lam = S.calibrate_lambda(Q, C, target)
    spent = S.tradeoff(Q, C, lam).cost.mean()
    # off by at most one hull edge of one prompt plus the edges tied at exactly lambda (one lambda cannot split
    # prompts whose edges have the same slope)
    f = S.frontier(Q, C)
    tied = np.diff(f.cost)[f.slopes == lam].sum()
    assert abs(spent - target) <= (Cf.max() + tied) / Q.shape[0] + 1e-9


@SETTINGS
@given(batches())
def test_frontier_monotone_concave_and_matches_reference(case):
    Q, C = case
    f = S.frontier(Q, C)
    # totals are running sums: a tiny step can vanish in rounding, so non-decreasing (each edge itself is > 0)
    assert (np.diff(f.cost) >= 0).all() and (np.diff(f.quality) >= 0).all()
    assert (np.diff(f.slopes) <= 0).all() and (f.slopes > 0).all()
    slopes, cost, quality = R.frontier_reference(Q, C)
    np.testing.assert_array_equal(f.slopes, slopes)
    np.testing.assert_allclose(f.cost, cost, rtol=1e-9, atol=1e-12)
    assert f.quality[-1] == S.max_quality(Q, C).quality.sum() or np.isclose(f.quality[-1], S.max_quality(Q, C).total_quality)


@SETTINGS
@given(batches(), st.floats(0.0, 5.0))
def test_per_prompt_modes_equal_reference(case, lam):
    Q, C = case
    np.testing.assert_array_equal(S.tradeoff(Q, C, lam).choice, R.tradeoff_reference(Q, C, lam)[0])
    floor = float(np.median(Q))
    got = S.min_cost(Q, C, floor)
    ref = R.min_cost_reference(Q, C, floor)
    np.testing.assert_array_equal(got.choice, ref[0])
    np.testing.assert_array_equal(got.flagged, ref[3])
