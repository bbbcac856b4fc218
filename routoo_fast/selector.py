"""Cost-aware model selection: numpy in and out, one C++ call per batch (routoo_fast._selector).

Inputs shared by every mode:
    Q        [n_prompts, n_models] predicted quality (e.g. P(correct)); float32 or float64.
    C        [n_prompts, n_models] expected cost, or [n_models] (one price per model, broadcast without copying).
    allowed  optional bool mask, [n_prompts, n_models] or [n_models]: False excludes a model.
Arithmetic: float32 inputs are scored in float32 (half the bytes to read), float64 in float64; mixed or other
numeric dtypes are converted to float64. Totals are summed in double. All entries of Q and C must be finite
and C >= 0, whether allowed or not. Ties always go to the cheaper model, then to the lower model index.

Modes:
    max_quality  per prompt argmax Q within optional cost/latency caps; infeasible prompts get choice -1.
    min_cost     per prompt the cheapest model with Q >= min_quality; else the best one, flagged.
    tradeoff     per prompt argmax Q - lam * C.
    budget       one model per prompt maximising sum Q subject to sum C <= total_budget (multiple-choice
                 knapsack: hulls + LP break slope + greedy fill); reports lambda* and the LP bound.
    calibrate_lambda  the lambda whose tradeoff spends target_mean_cost per prompt on a calibration batch.
    frontier     the batch's (total cost, total quality) curve over all lambda >= 0.
select(mode, Q, C, **params) dispatches the four selection modes by name.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from routoo_fast import _selector

__all__ = ["Selection", "Frontier", "max_quality", "min_cost", "tradeoff", "budget", "calibrate_lambda", "frontier",
           "select", "MODES", "BUDGET_REL_SLACK"]

_F32, _F64 = np.dtype(np.float32), np.dtype(np.float64)
_FLOAT_TYPES = (_F32, _F64)
_STATUS_NEGATIVE_COST = 2  # routoo::Status in csrc/include/routoo/per_prompt.hpp (1 = non-finite)
# A total_budget at most this fraction below the cheapest total counts as the cheapest total (see budget()).
BUDGET_REL_SLACK: float = _selector.BUDGET_REL_SLACK


@dataclass(slots=True)
class Selection:
    """One model per prompt, plus what the mode knows about the solution.

    choice   int32 [P]: chosen model index, -1 where no model is feasible (max_quality / tradeoff with caps or
             a mask). quality, cost: float64 [P], the chosen model's Q and C (NaN where choice is -1).
    total_quality, total_cost: sums over prompts with a choice (double).
    feasible bool [P] (max_quality, tradeoff): a model was available. flagged bool [P] (min_cost): no model
             reached the floor, the best one was taken instead.
    lambda_star, lp_bound, break_gain (budget): the LP break slope, the LP optimum (>= the integer optimum), and
             the quality gain of the break edge (lp_bound - total_quality <= break_gain up to the greedy fill).
    """

    choice: np.ndarray
    quality: np.ndarray
    cost: np.ndarray
    total_quality: float
    total_cost: float
    feasible: np.ndarray | None = None
    flagged: np.ndarray | None = None
    lambda_star: float | None = None
    lp_bound: float | None = None
    break_gain: float | None = None


@dataclass(frozen=True)
class Frontier:
    """The batch's quality/cost curve as lambda sweeps from +inf down to 0.

    slopes   float64 [K], descending (> 0): the lambdas where one prompt moves up one hull edge.
    cost, quality  float64 [K + 1]: totals after crossing the first k breakpoints; point 0 is every prompt on
             its cheapest model, point K every prompt on its best one. tradeoff(Q, C, lam) totals equal point k
             for slopes[k] < lam < slopes[k - 1] (ties at a breakpoint go to the cheaper model, i.e. point k
             at lam == slopes[k]).
    """

    slopes: np.ndarray
    cost: np.ndarray
    quality: np.ndarray


# ----------------------------------------------------------------------------------------------- validation
def _as_float_array(x, name: str) -> np.ndarray:
    a = np.asarray(x)
    if a.dtype not in _FLOAT_TYPES or not a.dtype.isnative:
        if a.dtype.kind not in "biuf":
            raise TypeError(f"{name} must be a numeric array, got dtype {a.dtype}")
        a = a.astype(np.float64)
    elif a.dtype is not _F32 and a.dtype is not _F64:
        # an equal but distinct dtype object (e.g. an unpickled array's): the C++ side dispatches on identity
        a = a.view(_F32 if a.dtype == _F32 else _F64)
    return a


def _inputs(Q, C, allowed=None):
    """Checked, C-contiguous (Q, C, allowed_uint8_or_None) sharing one float dtype.

    Shapes and dtypes are checked here; values (NaN, infinity, negative cost) inside the C++ pass, which
    reads the data anyway (see _check)."""
    if type(Q) is not np.ndarray or (Q.dtype is not _F32 and Q.dtype is not _F64):  # identity: the fast check
        Q = _as_float_array(Q, "Q")
    if type(C) is not np.ndarray or (C.dtype is not _F32 and C.dtype is not _F64):
        C = _as_float_array(C, "C")
    if Q.ndim != 2:
        raise ValueError(f"Q must be 2-D [n_prompts, n_models], got shape {Q.shape}")
    P, N = Q.shape
    if P == 0:
        raise ValueError("Q is an empty batch (n_prompts = 0)")
    if N == 0:
        raise ValueError("Q has no models (n_models = 0)")
    if C.shape != (N,) and C.shape != (P, N):
        raise ValueError(f"C must have shape {(P, N)} or {(N,)} to match Q, got {C.shape}")
    if Q.dtype != C.dtype:
        Q, C = Q.astype(np.float64, copy=False), C.astype(np.float64, copy=False)  # only the float32 one is copied
    if allowed is not None:
        allowed = _mask(allowed, "allowed", P, N)
    if not Q.flags.c_contiguous:
        Q = np.ascontiguousarray(Q)
    if not C.flags.c_contiguous:
        C = np.ascontiguousarray(C)
    return Q, C, allowed


def _mask(allowed, name: str, P: int, N: int) -> np.ndarray:
    a = np.asarray(allowed)
    if a.dtype != np.bool_:
        raise TypeError(f"{name} must be a bool array, got dtype {a.dtype}")
    if a.shape != (N,) and a.shape != (P, N):
        raise ValueError(f"{name} must have shape {(P, N)} or {(N,)}, got {a.shape}")
    return np.ascontiguousarray(a).view(np.uint8)


def _scalar(x, name: str) -> float:
    """A finite, non-negative real scalar."""
    try:
        v = float(x)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a real number, got {type(x).__name__}") from None
    if not math.isfinite(v):
        raise ValueError(f"{name} must be finite, got {v}")
    if v < 0:
        raise ValueError(f"{name} must be >= 0, got {v}")
    return v


def _per_prompt(x, name: str, P: int, nonneg: bool) -> np.ndarray:
    """A scalar or [P] parameter as float64 [P] (inf allowed: no cap)."""
    a = np.asarray(x, dtype=np.float64)
    if a.ndim == 0:
        a = np.full(P, float(a))
    if a.shape != (P,):
        raise ValueError(f"{name} must be a scalar or shape ({P},), got {a.shape}")
    if np.isnan(a).any():
        raise ValueError(f"{name} contains NaN at prompt {int(np.flatnonzero(np.isnan(a))[0])}")
    if nonneg and (a < 0).any():
        raise ValueError(f"{name} must be >= 0, negative at prompt {int(np.flatnonzero(a < 0)[0])}")
    return a


def _raise_bad_values(Q: np.ndarray, C: np.ndarray, status: int) -> None:
    """Turn a C++ status into a ValueError that names the first offending entry."""
    for name, a in (("Q", Q), ("C", C)):
        bad = ~np.isfinite(a)
        if bad.any():
            raise ValueError(f"{name} contains NaN or infinity at {_where(bad)}")
    if status == _STATUS_NEGATIVE_COST or (C < 0).any():
        raise ValueError(f"C has a negative cost at {_where(C < 0)}")
    # every entry is finite: only lam * C can have overflowed
    raise ValueError("lam * C overflows the float range: lam is too large for these costs")


def _where(bad: np.ndarray) -> str:
    idx = np.unravel_index(int(np.flatnonzero(bad)[0]), bad.shape)
    return "[" + ", ".join(str(int(i)) for i in idx) + "]"


def _check(status: int, Q, C) -> None:
    """The C++ pass reports non-finite Q/C or a negative C as a status; name the entry."""
    if status:
        _raise_bad_values(Q, C, status)




# ----------------------------------------------------------------------------------------------------- modes
def max_quality(Q, C, max_cost=None, max_latency=None, *, latency=None, allowed=None) -> Selection:
    """Per prompt argmax_j Q[i, j] over models with C <= max_cost, latency <= max_latency and allowed.

    max_cost / max_latency: scalar or [P] caps (inf = none); max_latency needs `latency` ([P, N] or [N]).
    Prompts where no model passes get choice -1 and feasible False.
    """
    Q, C, ok = _inputs(Q, C, allowed)
    P, N = Q.shape
    if max_cost is not None or max_latency is not None:
        caps = np.ones((1, N), dtype=bool) if ok is None else ok.view(np.bool_)
        if max_cost is not None:
            caps = caps & (C <= _per_prompt(max_cost, "max_cost", P, True)[:, None])
        if max_latency is not None:
            if latency is None:
                raise ValueError("max_latency needs latency ([n_prompts, n_models] or [n_models])")
            lat = _as_float_array(latency, "latency")
            if lat.shape != (N,) and lat.shape != (P, N):
                raise ValueError(f"latency must have shape {(P, N)} or {(N,)}, got {lat.shape}")
            if not np.isfinite(lat).all() or (lat < 0).any():
                raise ValueError("latency must be finite and >= 0")
            caps = caps & (lat <= _per_prompt(max_latency, "max_latency", P, True)[:, None])
        ok = np.ascontiguousarray(np.broadcast_to(caps, (P, N))).view(np.uint8)
    elif latency is not None:
        raise ValueError("latency given without max_latency")
    choice, quality, cost, feasible, total_q, total_c, status = _selector.tradeoff(Q, C, 0.0, ok)
    _check(status, Q, C)
    return Selection(choice, quality, cost, total_q, total_c, feasible)


def min_cost(Q, C, min_quality, *, allowed=None) -> Selection:
    """Per prompt the cheapest model with Q >= min_quality (scalar or [P]); ties go to the higher quality.

    Where no model reaches the floor the max-quality model is chosen and flagged[i] is True.
    """
    Q, C, ok = _inputs(Q, C, allowed)
    floor = _per_prompt(min_quality, "min_quality", Q.shape[0], False)
    if np.isinf(floor).any():
        raise ValueError("min_quality must be finite")
    choice, quality, cost, flagged, total_q, total_c, status = _selector.min_cost(Q, C, floor, ok)
    _check(status, Q, C)
    return Selection(choice, quality, cost, total_q, total_c, flagged=flagged.view(np.bool_))


def tradeoff(Q, C, lam, *, allowed=None) -> Selection:
    """Per prompt argmax_j Q[i, j] - lam * C[i, j], lam >= 0 (lam is rounded to Q's dtype)."""
    Q, C, ok = _inputs(Q, C, allowed)
    lam = _scalar(lam, "lam") if type(lam) is not float or not 0.0 <= lam < math.inf else lam
    choice, quality, cost, feasible, total_q, total_c, status = _selector.tradeoff(Q, C, lam, ok)
    _check(status, Q, C)
    return Selection(choice, quality, cost, total_q, total_c, feasible)


def _solve_budget(Q, C, ok, total_budget: float, too_small=None) -> dict:
    """Run the core's budget solve; `too_small(min_total_cost) -> message` words the infeasible-budget error."""
    r = _selector.budget(Q, C, total_budget, ok)
    _check(r["status"], Q, C)
    if r["empty_prompt"] >= 0:
        raise ValueError(f"allowed leaves prompt {r['empty_prompt']} with no model")
    if "choice" not in r:
        message = (too_small(r["min_total_cost"]) if too_small else
                   f"total_budget={total_budget} is below the cheapest possible total cost "
                   f"{r['min_total_cost']} (every prompt on its cheapest model)")
        raise ValueError(message)
    return r


def budget(Q, C, total_budget, *, allowed=None) -> Selection:
    """One model per prompt maximising sum Q subject to sum C <= total_budget (multiple-choice knapsack).

    Solved through its LP relaxation: per-prompt upper convex hulls, the break slope lambda* by weighted
    quickselect over hull edges (expected linear time), the fractional prompt rounded down, the leftover budget
    filled greedily. Always feasible; total_quality >= lp_bound - break_gain (within one hull edge of optimal).

    At the cheapest total (every prompt on its cheapest allowed model): a total_budget down to
    BUDGET_REL_SLACK (1e-9) relative below it is treated as exactly that total, and gets every prompt's cheapest
    model (total_cost may then exceed total_budget by at most that fraction). Summing the per-prompt minima in
    another order (numpy's pairwise sum, mean * n_prompts) moves the total by rounding only, well within the
    slack, so a budget computed that way is never refused. Any budget lower than that raises ValueError
    ("total_budget=... is below the cheapest possible total cost ...").
    """
    Q, C, ok = _inputs(Q, C, allowed)
    total_budget = _scalar(total_budget, "total_budget")
    r = _solve_budget(Q, C, ok, total_budget)
    # the core writes each prompt's chosen quality and cost; a numpy gather here cost ~50 ms at 1e6 prompts
    return Selection(choice=r["choice"], quality=r["quality"], cost=r["cost"], total_quality=r["total_quality"],
                     total_cost=r["total_cost"], lambda_star=r["lambda_star"], lp_bound=r["lp_bound"],
                     break_gain=r["break_gain"])


def calibrate_lambda(Q, C, target_mean_cost, *, allowed=None) -> float:
    """The lambda whose tradeoff spends target_mean_cost per prompt on this calibration batch.

    It is the LP break slope of budget(Q, C, target_mean_cost * n_prompts) (0 when the target affords every
    prompt's best model). tradeoff at that lambda spends the target up to one hull edge of one prompt, plus the
    hull edges whose slope equals lambda exactly (ties go to the cheaper model: one lambda cannot split them).
    Use it for streaming: calibrate on a representative batch, then call tradeoff per request.
    """
    Q, C, ok = _inputs(Q, C, allowed)
    target = _scalar(target_mean_cost, "target_mean_cost")
    P = Q.shape[0]
    r = _solve_budget(Q, C, ok, target * P, too_small=lambda min_total: (
        f"target_mean_cost={target} is below the cheapest possible mean cost {min_total / P}"))
    return float(r["lambda_star"])


def frontier(Q, C, *, allowed=None) -> Frontier:
    """The batch's (total cost, total quality) breakpoints as lambda goes from +inf to 0 (see Frontier)."""
    Q, C, ok = _inputs(Q, C, allowed)
    h = _selector.hull_edges(Q, C, ok)
    _check(h["status"], Q, C)
    if h["empty_prompt"] >= 0:
        raise ValueError(f"allowed leaves prompt {h['empty_prompt']} with no model")
    # LP order: slope descending, then prompt, then position along the prompt's hull
    order = np.lexsort((h["pos"], h["prompt"], -h["slope"]))
    cost = np.concatenate(([h["base_cost"].sum()], h["base_cost"].sum() + np.cumsum(h["dc"][order])))
    quality = np.concatenate(([h["base_quality"].sum()], h["base_quality"].sum() + np.cumsum(h["dq"][order])))
    return Frontier(slopes=h["slope"][order], cost=cost, quality=quality)


MODES = {"max_quality": max_quality, "min_cost": min_cost, "tradeoff": tradeoff, "budget": budget}


def select(mode: str, Q, C, **params) -> Selection:
    """Dispatch by mode name (config files, CLI, server): select("tradeoff", Q, C, lam=0.5)."""
    fn = MODES.get(mode)
    if fn is None:
        raise ValueError(f"unknown mode {mode!r}; expected one of {sorted(MODES)}")
    return fn(Q, C, **params)
