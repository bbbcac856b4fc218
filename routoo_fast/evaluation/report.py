"""Reports of an evaluation: every curve of one pool on one held-out set (`evaluate_pool` -> PoolReport), the
headline numbers against the best single model, markdown, JSON and plots (`Report.write`)."""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from routoo_fast.evaluation.baselines import oracle_curve, random_mix_curve, single_model_curves
from routoo_fast.evaluation.curves import (Curve, budget_curve, check_costs, check_matrix, default_lambdas,
                                           tradeoff_curve, upper_hull)
from routoo_fast.evaluation.metrics import aiq, apgr, cost_to_reach, cpt, paired_bootstrap, quality_at_cost

__all__ = ["PoolReport", "Report", "evaluate_pool", "gain_at_cost"]


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
    # {router: (mean gain, low, high)}: quality gain over the best model at its cost, paired-bootstrap 95 % interval
    intervals: dict = field(default_factory=dict)

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
                   "cost_fraction_to_match_best": (cost_to_reach(c, best.quality[0]) / best.cost[0]
                                                   if best.cost[0] > 0 else math.nan),
                   # equal costs (quality-only routing): no cost range to average over
                   "aiq": aiq(c, lo, hi) if hi > lo else math.nan, "max_quality": float(c.quality.max())}
            if c.name in self.intervals:
                row["gain_at_best_cost_ci"] = list(self.intervals[c.name])
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
        head = ("| router | quality at best model's cost | gain, 95 % CI | cost to match it (fraction) | AIQ "
                "| best quality |")
        sep = "|---|---:|---:|---:|---:|---:|"
        if two:
            head += " APGR | CPT(50%) | CPT(80%) |"
            sep += "---:|---:|---:|"
        lines += [head, sep]
        for r in self.rows():
            frac = r["cost_fraction_to_match_best"]
            ci = r.get("gain_at_best_cost_ci")
            gain = ("-" if ci is None else f"{ci[0] * 100:+.1f} pts [{ci[1] * 100:+.1f}, {ci[2] * 100:+.1f}]")
            cells = [r["router"], _fmt(r["quality_at_best_cost"], ".3f"), gain, _fmt(frac, ".3f", "not reached"),
                     _fmt(r["aiq"], ".4f"), f"{r['max_quality']:.3f}"]
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
    Y = check_matrix(Y, "Y")
    Ct = check_matrix(C_true, "C_true", Y.shape)
    check_costs(Ct, "C_true")
    Cp = Ct if C_pred is None else check_matrix(C_pred, "C_pred", Y.shape)
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
    best = max(range(len(names)), key=lambda j: (Y[:, j].mean(), -Ct[:, j].mean()))
    intervals = {}
    for rname, pred in predictions.items():
        Q = pred[0] if isinstance(pred, tuple) else pred
        gain = gain_at_cost(Q, Cp, Y, Ct, best, lambdas)
        if gain is not None:
            intervals[rname] = gain
    return PoolReport(name, Y.shape[0], names, curves, head, strong_weak, list(notes), intervals)


def gain_at_cost(Q_pred, C_pred, Y, C_true, best: int, lambdas=None, seed: int = 0):
    """The router's operating point with the best true quality at mean true cost <= model `best`'s (the point
    behind `quality_at_cost`), and the paired-bootstrap 95 % interval of its per-prompt quality gain over always
    calling `best`: (mean gain, low, high), or None if no point is that cheap."""
    from routoo_fast.selector import tradeoff

    Qp, Cp = check_matrix(Q_pred, "Q_pred", Y.shape), check_matrix(C_pred, "C_pred", Y.shape)
    lams = default_lambdas(Qp, Cp) if lambdas is None else np.asarray(lambdas, dtype=np.float64).ravel()
    rows = np.arange(Y.shape[0])
    budget, chosen, top = C_true[:, best].mean() * (1 + 1e-12), None, -math.inf
    for lam in lams:
        choice = tradeoff(Qp, Cp, float(lam)).choice
        if C_true[rows, choice].mean() <= budget and Y[rows, choice].mean() > top:
            chosen, top = choice, Y[rows, choice].mean()
    if chosen is None:
        return None
    return paired_bootstrap(Y[rows, chosen], Y[:, best], seed=seed)
