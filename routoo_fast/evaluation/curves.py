"""Cost/quality curves of routers scored with the TRUE outcomes and costs, their summary metrics, reports and plots.

A router is evaluated on a held-out set of P prompts and N models from:
  Q_pred [P, N]  what the router believes (predicted P(correct));  C_pred [P, N]  the costs it believes;
  Y [P, N]       the true scores (0/1 or in [0, 1], no NaN);      C_true [P, N]  the true cost of each call.
The selector decides with (Q_pred, C_pred); each decision is scored with (Y, C_true). Sweeping lambda of the
per-prompt trade-off argmax_j Q_pred - lambda * C_pred (or the batch budget) gives points (mean cost, mean quality).

Metrics (all on those points, no interpolation except where said):
- quality_at_cost(c): the best mean quality among operating points whose mean cost is <= c.
- cost_to_reach(q): the least mean cost among operating points whose mean quality is >= q.
- AIQ (RouterBench): area under the non-decreasing upper convex hull of the points (mixing two operating points
  at random realises every point of a hull edge), over [c_min, c_max] divided by (c_max - c_min); the hull is 0
  below the router's cheapest point.
- two-model pools (RouteLLM): PGR = (q - q_weak) / (q_strong - q_weak) against the share of calls sent to the
  strong model; APGR = trapezoid area under PGR(share) with (0, 0) and (1, 1) added; CPT(x) = the least strong
  share among operating points with PGR >= x.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["KINDS", "Curve", "check_matrix", "check_costs", "default_lambdas", "tradeoff_curve", "budget_curve",
           "upper_hull", "hull_value"]

KINDS = ("router", "single", "random", "oracle", "baseline")


# ------------------------------------------------------------------------------------------------ validation
def check_matrix(x, name: str, shape: tuple[int, int] | None = None, allow_nan: bool = False) -> np.ndarray:
    a = np.asarray(x)
    if a.dtype.kind not in "fiub":
        raise TypeError(f"{name} must be a numeric array, got dtype {a.dtype}")
    a = a.astype(np.float64)
    if a.ndim != 2:
        raise ValueError(f"{name} must be 2-D [prompts, models], got shape {a.shape}")
    if shape is not None and a.shape != shape:
        raise ValueError(f"{name} must have shape {shape}, got {a.shape}")
    if not allow_nan and np.isnan(a).any():
        p, n = np.argwhere(np.isnan(a))[0]
        raise ValueError(f"{name} has NaN at [{p}, {n}]; drop prompts without outcomes before evaluating")
    if np.isinf(a).any():
        raise ValueError(f"{name} has infinite values")
    return a


def check_costs(C: np.ndarray, name: str) -> None:
    if (C < 0).any():
        p, n = np.argwhere(C < 0)[0]
        raise ValueError(f"{name} must be >= 0; {name}[{p}, {n}] = {C[p, n]}")


# ----------------------------------------------------------------------------------------------------- curves
@dataclass(frozen=True)
class Curve:
    """Operating points of one router: mean cost and mean true quality per prompt, sorted by cost.

    cost, quality float64 [K]; strong_share float64 [K] or None: fraction of prompts sent to the strong model
    (two-model pools); kind in KINDS (how the plot draws it).
    """

    name: str
    cost: np.ndarray
    quality: np.ndarray
    kind: str = "router"
    strong_share: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")
        c = np.asarray(self.cost, dtype=np.float64).ravel()
        q = np.asarray(self.quality, dtype=np.float64).ravel()
        if c.shape != q.shape or c.size == 0:
            raise ValueError(f"cost and quality must be 1-D of one non-zero length, got {c.shape}, {q.shape}")
        if not (np.isfinite(c).all() and np.isfinite(q).all()):
            raise ValueError(f"curve {self.name!r} has NaN or infinite points")
        order = np.lexsort((q, c))
        object.__setattr__(self, "cost", c[order])
        object.__setattr__(self, "quality", q[order])
        if self.strong_share is not None:
            s = np.asarray(self.strong_share, dtype=np.float64).ravel()
            if s.shape != c.shape:
                raise ValueError(f"strong_share must have shape {c.shape}, got {s.shape}")
            object.__setattr__(self, "strong_share", s[order])


def default_lambdas(Q, C, n: int = 256) -> np.ndarray:
    """lambda values covering the whole trade-off of (Q, C): 0, quantiles of the frontier's break slopes
    (each taken just above the slope, so ties go to the cheaper model), and one lambda beyond the steepest."""
    from routoo_fast.selector import frontier

    slopes = frontier(Q, C).slopes
    if slopes.size == 0:
        return np.array([0.0])
    qs = np.quantile(slopes, np.linspace(0.0, 1.0, n))
    return np.unique(np.concatenate(([0.0], qs * (1 + 1e-9), [2.0 * slopes.max() + 1e-12])))


def tradeoff_curve(name: str, Q_pred, C_pred, Y, C_true, lambdas=None, strong: int | None = None,
                   kind: str = "router") -> Curve:
    """Sweep `lambdas` (default `default_lambdas`) through `selector.tradeoff(Q_pred, C_pred, lam)` and score each
    routing by the true Y and C_true. strong: column of the strong model (two-model pools) to record its share."""
    from routoo_fast.selector import tradeoff

    Y = check_matrix(Y, "Y")
    shape = Y.shape
    Qp = check_matrix(Q_pred, "Q_pred", shape)
    Cp = check_matrix(C_pred, "C_pred", shape)
    Ct = check_matrix(C_true, "C_true", shape)
    check_costs(Cp, "C_pred")
    check_costs(Ct, "C_true")
    lams = default_lambdas(Qp, Cp) if lambdas is None else np.asarray(lambdas, dtype=np.float64).ravel()
    if lams.size == 0 or not np.isfinite(lams).all() or (lams < 0).any():
        raise ValueError("lambdas must be a non-empty list of finite values >= 0")
    rows = np.arange(shape[0])
    cost, quality, share = [], [], []
    for lam in lams:
        choice = tradeoff(Qp, Cp, float(lam)).choice
        cost.append(Ct[rows, choice].mean())
        quality.append(Y[rows, choice].mean())
        if strong is not None:
            share.append(float(np.mean(choice == strong)))
    return Curve(name, np.array(cost), np.array(quality), kind, np.array(share) if strong is not None else None)


def budget_curve(name: str, Q_pred, C_pred, Y, C_true, mean_budgets, kind: str = "router") -> Curve:
    """Batch-budget routing: for each mean budget b, `selector.budget(Q_pred, C_pred, b * P)` (one model per prompt
    maximising predicted quality with predicted total cost <= b * P), scored by the true Y and C_true."""
    from routoo_fast.selector import budget

    Y = check_matrix(Y, "Y")
    Qp, Cp, Ct = (check_matrix(a, n, Y.shape) for a, n in ((Q_pred, "Q_pred"), (C_pred, "C_pred"), (C_true, "C_true")))
    check_costs(Cp, "C_pred")
    check_costs(Ct, "C_true")
    P = Y.shape[0]
    floor = Cp.min(axis=1).sum() / P
    rows = np.arange(P)
    cost, quality = [], []
    for b in np.asarray(mean_budgets, dtype=np.float64).ravel():
        if not math.isfinite(b) or b < floor:
            continue  # below every prompt's cheapest model: infeasible
        choice = budget(Qp, Cp, b * P).choice
        cost.append(Ct[rows, choice].mean())
        quality.append(Y[rows, choice].mean())
    if not cost:
        raise ValueError(f"every mean budget is below the cheapest possible mean cost {floor:.3g}")
    return Curve(name, np.array(cost), np.array(quality), kind)


# ------------------------------------------------------------------------------------------------------- hulls
def upper_hull(cost, quality) -> tuple[np.ndarray, np.ndarray]:
    """Vertices (cost ascending) of the non-decreasing upper convex hull of the points (monotone chain)."""
    c = np.asarray(cost, dtype=np.float64).ravel()
    q = np.asarray(quality, dtype=np.float64).ravel()
    order = np.lexsort((-q, c))
    hc: list[float] = []
    hq: list[float] = []
    for ci, qi in zip(c[order], q[order]):
        if hc and qi <= hq[-1]:
            continue  # costs at least as much for no more quality: under the hull
        while len(hc) >= 2 and (hq[-1] - hq[-2]) * (ci - hc[-2]) <= (qi - hq[-2]) * (hc[-1] - hc[-2]):
            hc.pop()
            hq.pop()  # the last vertex lies on or below the chord to the new point
        hc.append(ci)
        hq.append(qi)
    return np.array(hc), np.array(hq)


def hull_value(curve: Curve, c) -> np.ndarray:
    """The hull of `curve` evaluated at costs c (0 below its cheapest point, flat after its best)."""
    hc, hq = upper_hull(curve.cost, curve.quality)
    c = np.asarray(c, dtype=np.float64)
    v = np.interp(c, hc, hq, left=0.0, right=hq[-1])
    return np.where(c < hc[0], 0.0, v)
