"""Summary metrics of cost/quality curves (definitions in `routoo_fast.evaluation.curves`' docstring): AIQ,
quality at a cost, cost to reach a quality, and RouteLLM's PGR / APGR / CPT for two-model pools; plus the paired
bootstrap used for intervals on a difference of mean qualities."""
from __future__ import annotations

import math

import numpy as np

from routoo_fast.evaluation.curves import Curve, hull_value, upper_hull

__all__ = ["aiq", "quality_at_cost", "cost_to_reach", "pgr", "apgr", "cpt", "paired_bootstrap"]


def aiq(curve: Curve, c_min: float, c_max: float, n_grid: int = 4001) -> float:
    """RouterBench's AIQ: mean of the hull over [c_min, c_max] (exact for the piecewise-linear hull: the grid
    contains every hull vertex inside the range)."""
    if not (math.isfinite(c_min) and math.isfinite(c_max) and c_max > c_min):
        raise ValueError(f"need finite c_min < c_max, got {c_min}, {c_max}")
    hc, _ = upper_hull(curve.cost, curve.quality)
    grid = np.unique(np.concatenate((np.linspace(c_min, c_max, n_grid), hc[(hc > c_min) & (hc < c_max)],
                                     np.nextafter(hc[(hc > c_min) & (hc < c_max)], -np.inf))))
    return float(np.trapezoid(hull_value(curve, grid), grid) / (c_max - c_min))


def quality_at_cost(curve: Curve, c: float) -> float:
    """Best mean quality among the operating points with mean cost <= c (NaN if none is that cheap)."""
    ok = curve.cost <= c * (1 + 1e-12)
    return float(curve.quality[ok].max()) if ok.any() else math.nan


def cost_to_reach(curve: Curve, q: float) -> float:
    """Least mean cost among the operating points with mean quality >= q (NaN if none reaches q)."""
    ok = curve.quality >= q - 1e-12
    return float(curve.cost[ok].min()) if ok.any() else math.nan


def pgr(quality, q_weak: float, q_strong: float) -> np.ndarray:
    """Performance gap recovered: (quality - q_weak) / (q_strong - q_weak)."""
    if not q_strong > q_weak:
        raise ValueError(f"PGR needs q_strong > q_weak, got {q_strong} <= {q_weak}")
    return (np.asarray(quality, dtype=np.float64) - q_weak) / (q_strong - q_weak)


def _share_points(curve: Curve, q_weak: float, q_strong: float) -> tuple[np.ndarray, np.ndarray]:
    if curve.strong_share is None:
        raise ValueError(f"curve {curve.name!r} has no strong_share (pass strong= to tradeoff_curve)")
    s = np.concatenate(([0.0], curve.strong_share, [1.0]))
    g = np.concatenate(([0.0], pgr(curve.quality, q_weak, q_strong), [1.0]))
    order = np.lexsort((g, s))
    return s[order], g[order]


def apgr(curve: Curve, q_weak: float, q_strong: float) -> float:
    """RouteLLM's APGR: area under PGR against the strong-call share, trapezoid over the operating points."""
    s, g = _share_points(curve, q_weak, q_strong)
    return float(np.trapezoid(g, s))


def cpt(curve: Curve, q_weak: float, q_strong: float, level: float) -> float:
    """RouteLLM's CPT(level): least share of calls to the strong model among points with PGR >= level."""
    s, g = _share_points(curve, q_weak, q_strong)
    ok = g >= level - 1e-12
    return float(s[ok].min())


def paired_bootstrap(a, b, n_resamples: int = 2000, level: float = 0.95, seed: int = 0) -> tuple[float, float, float]:
    """Mean of a - b over prompts and its `level` percentile interval from `n_resamples` paired resamples.

    a, b [P]: per-prompt values of two routings of the SAME prompts (e.g. the true score of the router's pick and
    of the best model's): resampling prompts keeps each pair together, so the interval reflects the difference,
    not the spread of either. Returns (mean difference, low, high).
    """
    a = np.asarray(a, dtype=np.float64).ravel()
    b = np.asarray(b, dtype=np.float64).ravel()
    if a.shape != b.shape or a.size == 0:
        raise ValueError(f"a and b must be 1-D of one non-zero length, got {a.shape} and {b.shape}")
    if not (0 < level < 1):
        raise ValueError(f"level must be in (0, 1), got {level}")
    d = a - b
    rng = np.random.default_rng(seed)
    means = np.empty(n_resamples)
    for s in range(0, n_resamples, 256):  # blocks of resamples: [256, P] indices at a time
        m = min(256, n_resamples - s)
        means[s:s + m] = d[rng.integers(0, d.size, size=(m, d.size))].mean(1)
    lo, hi = np.quantile(means, [(1 - level) / 2, (1 + level) / 2])
    return float(d.mean()), float(lo), float(hi)
