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

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

KINDS = ("router", "single", "random", "oracle", "baseline")


# ------------------------------------------------------------------------------------------------ validation
def _matrix(x, name: str, shape: tuple[int, int] | None = None, allow_nan: bool = False) -> np.ndarray:
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


def _check_costs(C: np.ndarray, name: str) -> None:
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

    Y = _matrix(Y, "Y")
    shape = Y.shape
    Qp = _matrix(Q_pred, "Q_pred", shape)
    Cp = _matrix(C_pred, "C_pred", shape)
    Ct = _matrix(C_true, "C_true", shape)
    _check_costs(Cp, "C_pred")
    _check_costs(Ct, "C_true")
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

    Y = _matrix(Y, "Y")
    Qp, Cp, Ct = (_matrix(a, n, Y.shape) for a, n in ((Q_pred, "Q_pred"), (C_pred, "C_pred"), (C_true, "C_true")))
    _check_costs(Cp, "C_pred")
    _check_costs(Ct, "C_true")
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


# ---------------------------------------------------------------------------------------------------- metrics
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


# ---------------------------------------------------------------------------------------------------- reports
@dataclass
class PoolReport:
    """Every curve of one pool on one held-out set, and the headline numbers against the best single model."""

    name: str
    n_prompts: int
    model_names: list[str]
    curves: list[Curve]
    router: str  # name of the curve the headline numbers are about
    strong_weak: tuple[str, str] | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def singles(self) -> list[Curve]:
        return [c for c in self.curves if c.kind == "single"]

    @property
    def best(self) -> Curve:
        """The best single model (highest quality; the cheaper one on a tie)."""
        return max(self.singles, key=lambda c: (c.quality[0], -c.cost[0]))

    @property
    def cost_range(self) -> tuple[float, float]:
        costs = [c.cost[0] for c in self.singles]
        return min(costs), max(costs)

    def curve(self, name: str) -> Curve:
        for c in self.curves:
            if c.name == name:
                return c
        raise ValueError(f"no curve named {name!r} in pool {self.name!r}; have {[c.name for c in self.curves]}")

    def rows(self) -> list[dict]:
        """One row per non-single curve: quality at the best model's cost, cost fraction to match it, AIQ, ...;
        for two-model pools also APGR and CPT(50%) / CPT(80%)."""
        best, (lo, hi) = self.best, self.cost_range
        out = []
        for c in self.curves:
            if c.kind == "single":
                continue
            row = {"router": c.name, "kind": c.kind,
                   "quality_at_best_cost": quality_at_cost(c, best.cost[0]),
                   "cost_fraction_to_match_best": cost_to_reach(c, best.quality[0]) / best.cost[0],
                   "aiq": aiq(c, lo, hi), "max_quality": float(c.quality.max())}
            if self.strong_weak is not None and c.strong_share is not None:
                qs = self.curve(self.strong_weak[0]).quality[0]
                qw = self.curve(self.strong_weak[1]).quality[0]
                row.update(apgr=apgr(c, qw, qs), cpt50=cpt(c, qw, qs, 0.5), cpt80=cpt(c, qw, qs, 0.8))
            out.append(row)
        return out

    def to_dict(self) -> dict:
        best = self.best
        return {"pool": self.name, "n_prompts": self.n_prompts, "models": self.model_names, "router": self.router,
                "best_model": {"name": best.name, "quality": best.quality[0], "cost": best.cost[0]},
                "cost_range": list(self.cost_range), "rows": self.rows(), "notes": list(self.notes),
                "single_models": [{"name": c.name, "quality": c.quality[0], "cost": c.cost[0]} for c in self.singles],
                "curves": {c.name: {"cost": c.cost.tolist(), "quality": c.quality.tolist()}
                           for c in self.curves if c.kind != "single"}}

    def to_markdown(self, plot_path: str | None = None) -> str:
        best = self.best
        lines = [f"### {self.name}", "",
                 f"{self.n_prompts} held-out prompts, {len(self.model_names)} models. Best single model: "
                 f"**{best.name}** quality {best.quality[0]:.3f} at ${best.cost[0] * 1e3:.4f} per 1k prompts.", ""]
        two = self.strong_weak is not None
        head = "| router | quality at best model's cost | cost to match it (fraction) | AIQ | best quality |"
        sep = "|---|---:|---:|---:|---:|"
        if two:
            head += " APGR | CPT(50%) | CPT(80%) |"
            sep += "---:|---:|---:|"
        lines += [head, sep]
        for r in self.rows():
            frac = r["cost_fraction_to_match_best"]
            cells = [r["router"], _fmt(r["quality_at_best_cost"], ".3f"), _fmt(frac, ".3f", "not reached"),
                     f"{r['aiq']:.4f}", f"{r['max_quality']:.3f}"]
            if two:
                cells += [_fmt(r.get("apgr"), ".3f", "-"), _fmt(r.get("cpt50"), ".1%", "-"),
                          _fmt(r.get("cpt80"), ".1%", "-")]
            lines.append("| " + " | ".join(cells) + " |")
        lines += ["", "Single models (quality, $ per 1k prompts): " + ", ".join(
            f"{c.name} {c.quality[0]:.3f} ${c.cost[0] * 1e3:.4f}" for c in sorted(self.singles, key=lambda c: -c.quality[0]))]
        lines += [f"- {n}" for n in self.notes]
        if plot_path:
            lines += ["", f"![{self.name}]({plot_path})"]
        return "\n".join(lines) + "\n"

    def plot(self, path) -> Path:
        """Quality vs mean cost per 1k prompts (log x) with every curve, written atomically as PNG."""
        import io

        import matplotlib

        matplotlib.use("Agg")
        from matplotlib.figure import Figure

        from routoo_fast._atomic import atomic_write_bytes

        fig = Figure(figsize=(8, 5.5))
        ax = fig.add_subplot(1, 1, 1)
        singles = self.singles
        ax.scatter([c.cost[0] * 1e3 for c in singles], [c.quality[0] for c in singles], s=14, c="grey",
                   label="single models", zorder=3)
        best = self.best
        ax.scatter([best.cost[0] * 1e3], [best.quality[0]], s=60, marker="*", c="black", zorder=4,
                   label=f"best: {best.name}")
        styles = {"router": "-", "baseline": "--", "random": ":", "oracle": "-."}
        for c in self.curves:
            if c.kind == "single":
                continue
            hc, hq = upper_hull(c.cost, c.quality)
            line, = ax.plot(c.cost * 1e3, c.quality, styles[c.kind], lw=1.4 if c.kind == "router" else 1.0,
                            label=c.name, alpha=0.9)
            ax.plot(hc * 1e3, hq, "o", ms=2, color=line.get_color())
        ax.set_xscale("log")
        ax.set_xlabel("mean cost per 1,000 prompts (USD, log scale)")
        ax.set_ylabel("mean true quality")
        ax.set_title(f"{self.name} ({self.n_prompts} held-out prompts)", fontsize=10)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7, loc="lower right")
        fig.tight_layout()
        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=110)
        atomic_write_bytes(path, buf.getvalue())
        return Path(path)


def _fmt(v, spec: str, nan: str = "n/a") -> str:
    return nan if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


@dataclass
class Report:
    """Several pools' reports; `write(out_dir)` makes report.md, results.json and one PNG per pool."""

    pools: list[PoolReport]
    title: str = "routoo_fast evaluation"
    notes: list[str] = field(default_factory=list)
    plot_paths: dict[str, Path] = field(default_factory=dict)

    def to_markdown(self) -> str:
        parts = [f"# {self.title}", ""] + [f"- {n}" for n in self.notes] + [""]
        for p in self.pools:
            path = self.plot_paths.get(p.name)
            parts.append(p.to_markdown(path.name if path is not None else None))
        return "\n".join(parts)

    def write(self, out_dir) -> Path:
        """Write report.md, results.json and <pool>.png into `out_dir` (each file atomically); returns report.md."""
        from routoo_fast._atomic import atomic_write_text

        out = Path(out_dir)
        if out.exists() and not out.is_dir():
            raise NotADirectoryError(f"out_dir {str(out)!r} exists and is not a directory")
        out.mkdir(parents=True, exist_ok=True)
        for p in self.pools:
            self.plot_paths[p.name] = p.plot(out / (_slug(p.name) + ".png"))
        atomic_write_text(out / "results.json", json.dumps(
            {"title": self.title, "notes": self.notes, "pools": [p.to_dict() for p in self.pools]},
            indent=1, default=_json_default, allow_nan=True) + "\n")
        md = out / "report.md"
        atomic_write_text(md, self.to_markdown())
        return md


def _slug(name: str) -> str:
    return "".join(ch if ch.isalnum() else "_" for ch in name).strip("_").lower() or "pool"


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def evaluate_pool(name: str, Y, C_true, model_names: Sequence[str], predictions: Mapping[str, object],
                  C_pred=None, router: str | None = None, strong_weak: tuple[str, str] | None = None,
                  lambdas=None, budgets: bool = True, notes: Sequence[str] = ()) -> PoolReport:
    """Evaluate routers on one pool and held-out set.

    Y, C_true [P, N]: true scores and costs. predictions: {router name: Q_pred [P, N] or (Q_pred, kind)}; the first
    (or `router`) is the headline router. C_pred [P, N]: the costs routers decide with (default C_true).
    Adds every single model, the random mix (hull of the single models) and the oracle (decides with the true
    outcomes and costs); `budgets` adds the headline router's batch-budget curve. strong_weak: (strong, weak) model
    names of a two-model pool, for APGR / CPT.
    """
    Y = _matrix(Y, "Y")
    Ct = _matrix(C_true, "C_true", Y.shape)
    _check_costs(Ct, "C_true")
    Cp = Ct if C_pred is None else _matrix(C_pred, "C_pred", Y.shape)
    names = [str(m) for m in model_names]
    if len(names) != Y.shape[1]:
        raise ValueError(f"model_names has {len(names)} names for {Y.shape[1]} columns of Y")
    if not predictions:
        raise ValueError("predictions must hold at least one router")
    strong = None
    if strong_weak is not None:
        for m in strong_weak:
            if m not in names:
                raise ValueError(f"strong_weak model {m!r} is not in model_names {names}")
        strong = names.index(strong_weak[0])
    from routoo_fast.baselines import oracle_curve, random_mix_curve, single_model_curves

    curves = single_model_curves(Y, Ct, names)
    curves.append(random_mix_curve(curves))
    head = router if router is not None else next(iter(predictions))
    if head not in predictions:
        raise ValueError(f"router {head!r} is not in predictions {list(predictions)}")
    for rname, pred in predictions.items():
        Q, kind = (pred if isinstance(pred, tuple) else (pred, "router" if rname == head else "baseline"))
        curves.append(tradeoff_curve(rname, Q, Cp, Y, Ct, lambdas, strong=strong, kind=kind))
        if budgets and rname == head:
            lo, hi = Cp.min(axis=1).mean(), Cp.max(axis=1).mean()
            curves.append(budget_curve(f"{rname} (batch budget)", Q, Cp, Y, Ct, np.geomspace(lo, hi, 48), kind=kind))
    curves.append(oracle_curve(Y, Ct, strong=strong))
    return PoolReport(name, Y.shape[0], names, curves, head, strong_weak, list(notes))
