"""Cross-validated comparison of quality predictors on the shared pools: the protocol every predictor change is
measured with (`routoo-fast cv`, docs/EVALUATION.md).

Protocol, per dataset (`reproduce.DATASETS`):
- 5 folds by a stable hash of the prompt text (`fold_of`), so exact-text duplicates never straddle train and
  test. Fold f is the test set; the other prompts are split again by hash into train (7/8) and val (1/8), which
  is all a predictor may use to choose anything (knobs, k, blend weights, early stopping).
- Every predictor in the run is fitted on the same rows of every fold and predicts the fold's test prompts.
- Each pool of the dataset is scored on the test prompts with every outcome of the pool: decisions are made with
  predicted Q and expected costs (`costs.CostModel.from_table` on the fold's train + val rows, with its per-prompt
  output-length model fitted on them, `CostModel.fit_output_length`, as `routoo-fast train` does) by a lambda sweep
  of `selector.tradeoff`, and scored with the true outcomes and true costs (`evaluation.curves`).
- Metrics per fold: AIQ over [cheapest, most expensive single model], the gain in quality over the best single
  model (on that fold) at its cost, the fraction of its cost needed to match it, log loss and ECE of Q.
  The table reports the mean over folds.
- Intervals: a paired bootstrap over prompts. Each resample draws every fold's test prompts with replacement
  (the same draw for every predictor), recomputes each predictor's operating points from its fixed per-prompt
  decisions, and averages the per-fold metric over folds; the 2.5 / 97.5 % quantiles of the difference to the
  reference predictor (default: the better baseline of each metric) give the 95 % interval.
- Repeated draws (`draws=R`, `routoo-fast cv --draws R`): the whole protocol runs on R independent deals of the
  folds (`fold_of(..., draw=d)`; draw 0 is the deal above), and every metric is the mean over the R x 5 folds.
  One fold deal can favour a predictor by which prompts land together; R deals average that out. The bootstrap
  then resamples each prompt once per resample (stratified by draw 0's folds) and gives it that weight in every
  draw, so the interval covers the prompts' sampling, not R times the same prompts counted as new ones.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np

from routoo_fast.data.splits import hash_unit
from routoo_fast.evaluation.baselines import KNNRouter, MFRouter
from routoo_fast.evaluation.curves import default_lambdas, upper_hull

__all__ = ["N_FOLDS", "fold_of", "inner_split", "PREDICTORS", "BASELINES", "CANDIDATES", "PoolFold", "CVResult",
           "cross_validate", "cross_validate_dataset", "fold_metrics", "simplex_weights", "platt_scaling",
           "bootstrap_differences"]

N_FOLDS = 5
VAL_SHARE = 1 / 8  # of the non-test prompts of a fold: the same share `split_fractions` gives val
N_BOOT = 1000

Predict = Callable[[np.ndarray], np.ndarray]  # features [B, D] -> Q [B, N]
FitPredictor = Callable[..., Predict]  # (features, scores, train_idx, val_idx, groups, memo) -> Predict


def fold_of(prompts: Sequence[str], n_folds: int = N_FOLDS, draw: int = 0) -> np.ndarray:
    """Fold id in [0, n_folds) per prompt [P] int64, from a hash of its text: identical texts share a fold.
    draw 0 is the protocol's deal; draw d >= 1 salts the hash ("routoo-cv-fold/d"), an independent deal of the
    same prompts for repeated cross-validation."""
    if not isinstance(n_folds, (int, np.integer)) or n_folds < 2:
        raise ValueError(f"n_folds must be an integer >= 2, got {n_folds!r}")
    if not isinstance(draw, (int, np.integer)) or isinstance(draw, bool) or draw < 0:
        raise ValueError(f"draw must be an integer >= 0, got {draw!r}")
    salt = "routoo-cv-fold" if draw == 0 else f"routoo-cv-fold/{int(draw)}"
    return np.minimum((hash_unit(prompts, salt) * n_folds).astype(np.int64), n_folds - 1)


def inner_split(prompts: Sequence[str], rows, val_share: float = VAL_SHARE) -> tuple[np.ndarray, np.ndarray]:
    """Split `rows` (indices into prompts) into (train, val) by a second hash of the text, val ~ val_share."""
    if not 0 < val_share < 1:
        raise ValueError(f"val_share must be in (0, 1), got {val_share}")
    rows = np.asarray(rows, dtype=np.int64)
    u = hash_unit([prompts[i] for i in rows], "routoo-cv-val")
    return rows[u >= val_share], rows[u < val_share]


# ----------------------------------------------------------------------------------------------- predictors
# A predictor is fit(features [P, D], scores [P, N], train_idx, val_idx, groups, memo) -> predict(features) -> Q.
# `memo` is one dict per fold shared by every predictor of the run, so that candidates built from the same parts
# (the recipe's head, kNN, MF) reuse the fold's fits instead of refitting them.

def _recipe_fit(memo, x, scores, tr, va, groups):
    """The shipped recipe (`train.recipe.fit_recipe`: knobs chosen on val or cross-fitted on train + val,
    refitted on train + val), once per fold."""
    if "recipe" not in memo:
        from routoo_fast.train.recipe import fit_recipe

        memo["recipe"] = fit_recipe(x, scores, tr, va, groups=groups)
    return memo["recipe"]


def _head_predict(head) -> Predict:
    import torch

    def predict(x):
        with torch.no_grad():
            return head.probs(torch.as_tensor(np.asarray(x, dtype=np.float32))).numpy()
    return predict


def _knn_fit(memo, x, scores, tr, va):
    """kNN (k chosen on val, neighbours train + val) and, for stacking, its val Q from train-only neighbours."""
    if "knn" not in memo:
        from routoo_fast.train.knn import KNNPredictor

        knn = KNNRouter().fit(x, scores, tr, va)
        memo["knn"] = knn
        memo["knn_val"] = KNNPredictor(knn.k).fit(x[tr], scores[tr]).predict(x[va])
    return memo["knn"]


def _mf_fit(memo, x, scores, tr, va):
    if "mf" not in memo:
        memo["mf"] = MFRouter().fit(x, scores, tr, va)
    return memo["mf"]


def fit_routoo(x, scores, tr, va, groups=None, memo=None) -> Predict:
    """The shipped predictor: the recipe's scoring head (`routoo-fast train`)."""
    return _head_predict(_recipe_fit({} if memo is None else memo, x, scores, tr, va, groups).head)


def fit_knn(x, scores, tr, va, groups=None, memo=None) -> Predict:
    """kNN with k chosen on val by mean AUC, neighbours from train + val (`baselines.KNNRouter`)."""
    return _knn_fit({} if memo is None else memo, x, scores, tr, va).predict


def fit_mf(x, scores, tr, va, groups=None, memo=None) -> Predict:
    """RouteLLM-style matrix factorisation, early-stopped on val (`baselines.MFRouter`)."""
    return _mf_fit({} if memo is None else memo, x, scores, tr, va).predict


def _log_loss(q, y) -> float:
    seen = ~np.isnan(y)
    q = np.clip(np.asarray(q, dtype=np.float64)[seen], 1e-6, 1 - 1e-6)
    t = y[seen]
    return float(-np.mean(t * np.log(q) + (1 - t) * np.log1p(-q)))


def simplex_weights(parts_val: Sequence[np.ndarray], y_val: np.ndarray, step: float = 0.1) -> np.ndarray:
    """The convex weights w (grid of `step` on the simplex) minimising the log loss of sum_k w_k parts_val[k]
    against y_val [V, N] (NaN = missing); ties keep the earlier grid point (more weight on the first part)."""
    n = round(1 / step)
    best, best_w = math.inf, None
    K = len(parts_val)
    for combo in _compositions(n, K):
        w = np.array(combo[::-1], dtype=np.float64) / n  # the first part's weight descends first
        loss = _log_loss(sum(wk * p for wk, p in zip(w, parts_val)), y_val)
        if loss < best - 1e-12:
            best, best_w = loss, w
    return best_w


def _compositions(n: int, k: int):
    """All k-tuples of non-negative ints summing to n."""
    if k == 1:
        yield (n,)
        return
    for first in range(n + 1):
        for rest in _compositions(n - first, k - 1):
            yield (first,) + rest


def _parts(memo, x, scores, tr, va, groups):
    fit = _recipe_fit(memo, x, scores, tr, va, groups)
    knn, mf = _knn_fit(memo, x, scores, tr, va), _mf_fit(memo, x, scores, tr, va)
    predicts = (_head_predict(fit.head), knn.predict, mf.predict)
    vals = (fit.val_probs, memo["knn_val"], mf.predict(x[va]))
    return predicts, vals


def fit_stack(x, scores, tr, va, groups=None, memo=None) -> Predict:
    """Candidate: a convex mix of the recipe's head, kNN and MF, weights chosen by log loss on val."""
    memo = {} if memo is None else memo
    predicts, vals = _parts(memo, x, scores, tr, va, groups)
    w = simplex_weights(vals, np.asarray(scores, dtype=np.float64)[va])
    memo.setdefault("notes", {})["stack"] = "weights head / kNN / MF " + " / ".join(f"{v:.1f}" for v in w)
    return lambda xb: sum(wk * p(xb) for wk, p in zip(w, predicts) if wk > 0)


def fit_mean3(x, scores, tr, va, groups=None, memo=None) -> Predict:
    """Candidate: the plain mean of the recipe's head, kNN and MF (no weight chosen)."""
    predicts, _ = _parts({} if memo is None else memo, x, scores, tr, va, groups)
    return lambda xb: sum(p(xb) for p in predicts) / 3.0


def fit_platt(x, scores, tr, va, groups=None, memo=None) -> Predict:
    """Candidate: the recipe's head with a per-model Platt scaling sigmoid(a_j z + c_j) fitted on val."""
    memo = {} if memo is None else memo
    fit = _recipe_fit(memo, x, scores, tr, va, groups)
    a, c = platt_scaling(fit.val_probs, np.asarray(scores, dtype=np.float64)[va])
    head = _head_predict(fit.head)

    def predict(xb):
        q = np.clip(head(xb).astype(np.float64), 1e-6, 1 - 1e-6)
        return 1.0 / (1.0 + np.exp(-(a * np.log(q / (1 - q)) + c)))
    return predict


def platt_scaling(q_val: np.ndarray, y_val: np.ndarray, ridge: float = 1e-2, iters: int = 50):
    """Per-model (a_j, c_j) [N] each minimising the val log loss of sigmoid(a_j logit(q) + c_j) (Newton steps;
    a small ridge pulls a_j toward 1). Models without val outcomes keep (1, 0)."""
    z = np.log(np.clip(q_val, 1e-6, 1 - 1e-6) / np.clip(1 - q_val, 1e-6, 1))
    N = z.shape[1]
    a, c = np.ones(N), np.zeros(N)
    for j in range(N):
        seen = ~np.isnan(y_val[:, j])
        if not seen.any():
            continue
        zj, yj = z[seen, j], y_val[seen, j]
        aj, cj = 1.0, 0.0
        for _ in range(iters):
            p = 1.0 / (1.0 + np.exp(-(aj * zj + cj)))
            g = np.array([np.sum((p - yj) * zj) + ridge * (aj - 1.0), np.sum(p - yj)])
            w = p * (1 - p)
            H = np.array([[np.sum(w * zj * zj) + ridge, np.sum(w * zj)], [np.sum(w * zj), np.sum(w) + 1e-9]])
            step = np.linalg.solve(H, g)
            aj, cj = aj - step[0], cj - step[1]
            if np.abs(step).max() < 1e-10:
                break
        a[j], c[j] = aj, cj
    return a, c


def fit_knnfeat(x, scores, tr, va, groups=None, memo=None) -> Predict:
    """The recipe's head on [encoding, kNN outcome rates] (the kNN baseline's k; the rates of the train and val
    prompts leave-one-out among train + val, of a new prompt from all of them)."""
    from routoo_fast.train.knn import KNNPredictor
    from routoo_fast.train.recipe import fit_recipe

    knn = _knn_fit({} if memo is None else memo, x, scores, tr, va)
    pool = np.concatenate([tr, va])
    ref = KNNPredictor(knn.k).fit(x[pool], scores[pool])
    rates = np.zeros((x.shape[0], scores.shape[1]), dtype=np.float32)
    rates[pool] = ref.predict(x[pool], exclude=np.arange(pool.size))
    head = fit_recipe(np.concatenate([x, rates], axis=1), scores, tr, va, groups=groups).head
    with_rates = _head_predict(head)
    return lambda xb: with_rates(np.concatenate([xb, ref.predict(xb)], axis=1))


PREDICTORS: dict[str, FitPredictor] = {
    "routoo": fit_routoo, "kNN": fit_knn, "MF": fit_mf,
    "stack": fit_stack,
    "mean3": fit_mean3,
    "platt": fit_platt,
    "knnfeat": fit_knnfeat,
}
BASELINES = ("kNN", "MF")
CANDIDATES = ("stack", "mean3", "platt", "knnfeat")  # tried for issue 11; docstrings say what each is


# -------------------------------------------------------------------------------------------------- scoring
@dataclass
class PoolFold:
    """One pool on one fold's test prompts with every outcome: the data every metric is computed from.

    Y, C_true [P, N]: true scores and costs; C_pred [P, N]: expected costs; Q {predictor: [P, N]};
    picks {predictor: int [L, P]}: the model each lambda of the predictor's sweep picks per prompt;
    rows [P]: the prompts' row ids in the dataset (None: this fold's own, for one draw only); draw: the fold
    deal it comes from (`fold_of`).
    """

    Y: np.ndarray
    C_true: np.ndarray
    C_pred: np.ndarray
    Q: dict
    picks: dict = field(default_factory=dict)
    rows: np.ndarray | None = None
    draw: int = 0

    def __post_init__(self) -> None:
        from routoo_fast.selector import tradeoff

        for name, q in self.Q.items():
            q64 = np.asarray(q, dtype=np.float64)
            lams = default_lambdas(q64, self.C_pred)
            self.picks[name] = np.stack([tradeoff(q64, self.C_pred, float(lam)).choice for lam in lams])


def _aiq_of_points(cost: np.ndarray, quality: np.ndarray, c_min: float, c_max: float) -> float:
    """AIQ of the operating points: mean over [c_min, c_max] of their non-decreasing upper hull (0 below it)."""
    hc, hq = upper_hull(cost, quality)
    inner = hc[(hc > c_min) & (hc < c_max)]
    grid = np.unique(np.concatenate(([c_min, c_max], inner, np.nextafter(inner, -np.inf))))
    v = np.where(grid < hc[0], 0.0, np.interp(grid, hc, hq, right=hq[-1]))
    return float(np.trapezoid(v, grid) / (c_max - c_min))


def fold_metrics(Yc: np.ndarray, Cc: np.ndarray, single_q: np.ndarray, single_c: np.ndarray) -> dict:
    """Metrics of one predictor on one pool-fold from its operating points.

    Yc, Cc [L]: mean true quality / cost of each lambda's routing; single_q, single_c [N]: each model's.
    Returns aiq, gain (quality at the best model's cost minus its quality), match (cost to reach its quality
    as a fraction of its cost; NaN if never reached).
    """
    best = max(range(single_q.size), key=lambda j: (single_q[j], -single_c[j]))
    qb, cb = single_q[best], single_c[best]
    lo, hi = single_c.min(), single_c.max()
    aiq = _aiq_of_points(Cc, Yc, lo, hi) if hi > lo else math.nan
    ok = Cc <= cb * (1 + 1e-12)
    gain = float(Yc[ok].max() - qb) if ok.any() else math.nan
    reach = Yc >= qb - 1e-12
    match = float(Cc[reach].min() / cb) if reach.any() and cb > 0 else math.nan
    return {"aiq": aiq, "gain": gain, "match": match}


def _points(pf: PoolFold, name: str, w: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(mean quality [L], mean cost [L]) of a predictor's sweep, prompts weighted by w [P] (None: equally)."""
    picks = pf.picks[name]
    rows = np.arange(pf.Y.shape[0])
    yq = pf.Y[rows, picks]  # [L, P]
    yc = pf.C_true[rows, picks]
    if w is None:
        return yq.mean(1), yc.mean(1)
    return yq @ w, yc @ w


def _prediction_metrics(Y: np.ndarray, Q: np.ndarray) -> dict:
    from routoo_fast.train.metrics import expected_calibration_error

    q = np.clip(np.asarray(Q, dtype=np.float64), 1e-6, 1 - 1e-6)
    loss = float(np.mean(-(Y * np.log(q) + (1 - Y) * np.log1p(-q))))
    return {"log_loss": loss, "ece": expected_calibration_error(Y.ravel(), q.ravel())}


def _resample_weights(folds: Sequence[PoolFold], n_boot: int, rng) -> list[np.ndarray]:
    """Per fold, bootstrap prompt weights [R, P] (rows sum to 1): the folds of the first fold's draw are resampled
    with replacement, each on its own; a fold of another draw weights each of its prompts by the count that prompt
    drew there (its row id in `PoolFold.rows`), renormalised. A row of all zeros means that fold drew nothing."""
    base = [i for i, pf in enumerate(folds) if pf.draw == folds[0].draw]
    if len(base) < len(folds) and any(pf.rows is None for pf in folds):
        raise ValueError("folds of several draws need PoolFold.rows (their prompts' row ids) to share a resample")
    weights: list = [None] * len(folds)
    drawn_rows, drawn = [], []
    for i in base:
        P = folds[i].Y.shape[0]
        k = rng.multinomial(P, np.full(P, 1.0 / P), size=n_boot).astype(np.float64)  # [R, P]
        weights[i] = k / P
        if folds[i].rows is not None:
            drawn_rows.append(np.asarray(folds[i].rows, dtype=np.int64))
            drawn.append(k)
    if len(base) < len(folds):
        rows = np.concatenate(drawn_rows)
        k_all = np.concatenate(drawn, axis=1)
        order = np.argsort(rows, kind="stable")
        rows, k_all = rows[order], k_all[:, order]
        for i, pf in enumerate(folds):
            if weights[i] is not None:
                continue
            r = np.asarray(pf.rows, dtype=np.int64)
            pos = np.minimum(np.searchsorted(rows, r), rows.size - 1)
            if not np.array_equal(rows[pos], r):
                raise ValueError(f"draw {pf.draw} holds prompts that draw {folds[0].draw} does not: every draw must "
                                 "deal the same prompts")
            k = k_all[:, pos]
            weights[i] = k / np.maximum(k.sum(1, keepdims=True), 1.0)
    return weights


def bootstrap_differences(folds: Sequence[PoolFold], a: str, b: str, n_boot: int = N_BOOT, seed: int = 0) -> dict:
    """Paired bootstrap of fold-mean metric differences a - b: {metric: (mean, low, high)} (95 % interval).

    Each resample redraws every fold's test prompts with replacement (one draw shared by a and b). With the
    folds of several draws (repeated cross-validation), a prompt keeps its resampled count in every draw
    (`_resample_weights`)."""
    rng = np.random.default_rng(seed)
    draws = {m: np.zeros(n_boot) for m in ("aiq", "gain")}
    counts = {m: np.zeros(n_boot) for m in draws}
    for pf, W in zip(folds, _resample_weights(folds, n_boot, rng)):
        sq, sc = W @ pf.Y, W @ pf.C_true  # [R, N]
        qa, ca = _points(pf, a, W.T)  # [L, R]
        qb, cb = _points(pf, b, W.T)
        drew = W.sum(1) > 0
        for r in range(n_boot):
            if not drew[r]:
                continue  # this fold of a later draw drew none of its prompts
            ma = fold_metrics(qa[:, r], ca[:, r], sq[r], sc[r])
            mb = fold_metrics(qb[:, r], cb[:, r], sq[r], sc[r])
            for m in draws:
                d = ma[m] - mb[m]
                if math.isfinite(d):
                    draws[m][r] += d
                    counts[m][r] += 1
    out = {}
    for m in draws:
        d = draws[m] / np.maximum(counts[m], 1)
        point = [fold_metrics(*_points(pf, a), pf.Y.mean(0), pf.C_true.mean(0))[m]
                 - fold_metrics(*_points(pf, b), pf.Y.mean(0), pf.C_true.mean(0))[m] for pf in folds]
        point = [p for p in point if math.isfinite(p)]
        lo, hi = np.quantile(d, [0.025, 0.975]) if counts[m].min() > 0 else (math.nan, math.nan)
        out[m] = (float(np.mean(point)) if point else math.nan, float(lo), float(hi))
    return out


def _nanmean(values) -> float:
    v = np.asarray(values, dtype=np.float64)
    return float(np.nanmean(v)) if np.isfinite(v).any() else math.nan


def _per_draw(per_fold: Sequence[dict], draw_of: Sequence[int]) -> list[dict]:
    """AIQ and gain of each draw: the mean over that draw's folds (NaN folds left out), in draw order."""
    return [{k: _nanmean([m[k] for m, d in zip(per_fold, draw_of) if d == draw]) for k in ("aiq", "gain")}
            for draw in sorted(set(draw_of))]


# --------------------------------------------------------------------------------------------------- result
@dataclass
class CVResult:
    """Per pool: the per-fold PoolFolds, the metrics table and the bootstrap intervals."""

    pools: dict = field(default_factory=dict)  # pool name -> list[PoolFold]
    # pool -> predictor -> {metric: mean over every fold of every draw}, "per_fold": [...], "per_draw": [...]
    table: dict = field(default_factory=dict)
    intervals: dict = field(default_factory=dict)  # pool -> "a - b" -> {metric: (mean, lo, hi)}
    notes: list = field(default_factory=list)
    choices: dict = field(default_factory=dict)  # pool -> predictor -> per-fold descriptions (e.g. chosen knobs)

    def summarise(self, n_boot: int = N_BOOT) -> None:
        """Fill `table` and `intervals` (every other predictor against each baseline present) from `pools`."""
        for pool, folds in self.pools.items():
            names = list(folds[0].Q)
            rows = {}
            for name in names:
                per_fold = []
                for pf in folds:
                    m = fold_metrics(*_points(pf, name), pf.Y.mean(0), pf.C_true.mean(0))
                    m.update(_prediction_metrics(pf.Y, pf.Q[name]))
                    per_fold.append(m)
                rows[name] = {k: _nanmean([m[k] for m in per_fold]) for k in per_fold[0]}
                rows[name]["per_fold"] = per_fold
                rows[name]["per_draw"] = _per_draw(per_fold, [pf.draw for pf in folds])
            self.table[pool] = rows
            # every predictor that is not a baseline, against each baseline of the run
            self.intervals[pool] = {f"{a} - {b}": bootstrap_differences(folds, a, b, n_boot)
                                    for a in names if a not in BASELINES for b in names if b in BASELINES}

    def verdicts(self) -> dict:
        """pool -> predictor -> {"aiq": bool, "gain": bool}: its fold mean >= the better baseline's, for every
        predictor that is not a baseline."""
        out = {}
        for pool, rows in self.table.items():
            base = [rows[b] for b in BASELINES if b in rows]
            out[pool] = {name: {m: all(not math.isfinite(r[m]) or row[m] >= r[m] for r in base)
                                for m in ("aiq", "gain")}
                         for name, row in rows.items() if name not in BASELINES}
        return out

    def to_markdown(self) -> str:
        draws = max((len(r["per_draw"]) for rows in self.table.values() for r in rows.values()), default=1)
        folds = max((len(r["per_fold"]) for rows in self.table.values() for r in rows.values()), default=0) // draws
        lines = [f"# routoo_fast cross-validation ({folds} folds" + (f" x {draws} draws" if draws > 1 else "")
                 + ", true outcomes and costs)", ""]
        lines += [f"- {n}" for n in self.notes] + [""]
        verdict = self.verdicts()
        for pool, rows in self.table.items():
            per_what = "AIQ per draw (mean of its folds)" if draws > 1 else "AIQ per fold"
            lines += [f"## {pool}", "", "| predictor | AIQ | gain at best's cost (pts) | cost to match (mean where reached) | log loss | "
                      f"ECE | {per_what} |", "|---|---:|---:|---:|---:|---:|---|"]
            for name, r in rows.items():
                per = " ".join(f"{m['aiq']:.4f}" for m in (r["per_draw"] if draws > 1 else r["per_fold"]))
                reached = sum(math.isfinite(m["match"]) for m in r["per_fold"])
                match = _fmt(r["match"], ".3f") + ("" if reached in (0, len(r["per_fold"]))
                                                   else f" ({reached} of {len(r['per_fold'])} folds)")
                lines.append(f"| {name} | {r['aiq']:.4f} | {100 * r['gain']:+.2f} | {match} | "
                             f"{r['log_loss']:.4f} | {r['ece']:.4f} | {per} |")
            lines.append("")
            for pair, d in self.intervals.get(pool, {}).items():
                lines.append(f"- {pair}: AIQ {d['aiq'][0]:+.4f} [{d['aiq'][1]:+.4f}, {d['aiq'][2]:+.4f}], gain "
                             f"{100 * d['gain'][0]:+.2f} [{100 * d['gain'][1]:+.2f}, {100 * d['gain'][2]:+.2f}] pts")
            for name, v in verdict.get(pool, {}).items():
                lines.append(f"- {name} >= the better of {', '.join(BASELINES)}: AIQ "
                             f"{'MET' if v['aiq'] else 'missed'}, quality at the best model's cost "
                             f"{'MET' if v['gain'] else 'missed'}")
            for name, ch in self.choices.get(pool, {}).items():
                lines.append(f"- {name} choices per fold: {'; '.join(ch)}")
            lines.append("")
        return "\n".join(lines)

    def to_dict(self) -> dict:
        return {"notes": self.notes, "table": self.table, "intervals": self.intervals, "choices": self.choices,
                "verdicts": self.verdicts()}

    def write(self, out_dir) -> Path:
        """report.md and results.json into out_dir (atomically); returns report.md."""
        from routoo_fast._atomic import atomic_write_text

        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        atomic_write_text(out / "results.json", json.dumps(self.to_dict(), indent=1, default=float) + "\n")
        atomic_write_text(out / "report.md", self.to_markdown())
        return out / "report.md"


def _fold_choices(memo: dict) -> dict:
    """What each fold's fits chose on val, for the report."""
    out = {}
    if "recipe" in memo:
        r = memo["recipe"].recipe
        out["routoo recipe"] = (f"H {r.hidden}, beta {r.beta}, {r.n_seeds} seeds, shrink {r.logit_shrink}, "
                                f"interaction {r.interaction_shrink}")
    if "knn" in memo:
        out["kNN"] = f"k {memo['knn'].k}"
    for name, text in memo.get("notes", {}).items():
        out[name] = text
    return out


def _fmt(v: float, spec: str) -> str:
    return "not reached" if not math.isfinite(v) else format(v, spec)


# -------------------------------------------------------------------------------------------------- the run
def _check_draws(draws) -> int:
    if not isinstance(draws, (int, np.integer)) or isinstance(draws, bool) or draws < 1:
        raise ValueError(f"draws must be an integer >= 1, got {draws!r}")
    return int(draws)


def cross_validate_dataset(result: CVResult, ds, x: np.ndarray, fits: Mapping[str, FitPredictor],
                           n_folds: int = N_FOLDS, prices=None, log=None, draws: int = 1) -> CVResult:
    """Add one dataset's folds to `result.pools` (not summarised): ds a `reproduce.Dataset`, x [P, D] its
    pooled encodings, fits {predictor name: fit function}; prices the PriceTable (default: the shipped one);
    draws: how many deals of the folds (`fold_of(..., draw=d)` for d < draws), each fitted and scored in full."""
    t = ds.table
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2 or x.shape[0] != t.n_prompts:
        raise ValueError(f"x must be [P, D] with P = {t.n_prompts} prompts, got shape {x.shape}")
    for d in range(_check_draws(draws)):
        _cross_validate_draw(result, ds, x, fits, n_folds, prices, log, d, draws > 1)
    return result


def _cross_validate_draw(result: CVResult, ds, x, fits, n_folds, prices, log, draw: int, named: bool) -> None:
    from routoo_fast.costs import CostModel

    t = ds.table
    fold = fold_of(t.prompts, n_folds, draw)
    for f in range(n_folds):
        te = np.flatnonzero(fold == f)
        tr, va = inner_split(t.prompts, np.flatnonzero(fold != f))
        if te.size == 0 or tr.size == 0 or va.size == 0:
            raise ValueError(f"dataset {ds.name!r} draw {draw} fold {f} has {tr.size} train, {va.size} val, {te.size} test "
                             "prompts: too few prompts for the folds")
        Q, memo = {}, {}
        for pname, fit in fits.items():
            predict = fit(x, t.scores, tr, va, ds.groups, memo)
            Q[pname] = np.asarray(predict(x[te]), dtype=np.float64)
        for pool in ds.pools:
            for what, text in _fold_choices(memo).items():
                result.choices.setdefault(pool, {}).setdefault(what, []).append(
                    f"[draw {draw}] {text}" if named else text)
        cm = CostModel.from_table(t, prices, rows=np.concatenate([tr, va]),
                                  default_output_tokens=ds.default_output_tokens).fit_output_length(t, x, tr, va)
        sub = t.subset(te)
        c_pred, c_true = cm.expected(sub, features=x[te]), cm.true(sub)
        for pool, models in ds.pools.items():
            cols = [t.model_index(m) for m in models]
            Y = sub.scores[:, cols].astype(np.float64)
            ok = np.isfinite(Y).all(1) & np.isfinite(c_true[:, cols]).all(1)
            result.pools.setdefault(pool, []).append(PoolFold(
                Y[ok], c_true[ok][:, cols], c_pred[ok][:, cols], {p: q[ok][:, cols] for p, q in Q.items()},
                rows=te[ok], draw=draw))
        if log is not None:
            log(f"{f'draw {draw} ' if named else ''}fold {f}: {tr.size} train, {va.size} val, {te.size} test")


def cross_validate(datasets: Sequence[str] | str = "all", predictors: Sequence[str] | Mapping[str, FitPredictor] = (
                   "routoo", "kNN", "MF"), n_folds: int = N_FOLDS, data_dir=None, cache_dir=None,
                   n_boot: int = N_BOOT, progress: bool = False, log=print, draws: int = 1,
                   encoder=None) -> CVResult:
    """Run the protocol (module docstring) on `datasets` ("all" = `reproduce.DATASETS`) for `predictors` (names
    in PREDICTORS, or {name: fit function}) over `draws` deals of the folds; returns the summarised CVResult.
    encoder: a local encoder folder, or an Encoder, every predictor reads (None: the shipped router's)."""
    from routoo_fast.costs import PriceTable
    from routoo_fast.data.encoding_cache import features
    from routoo_fast.encoder import Encoder
    from routoo_fast.evaluation.reproduce import DATASETS, load_dataset
    from routoo_fast.router import DEFAULT_ROUTER
    from routoo_fast.saved import load_router

    names = list(DATASETS) if datasets == "all" else [datasets] if isinstance(datasets, str) else list(datasets)
    unknown = [d for d in names if d not in DATASETS]
    if unknown or not names:
        raise ValueError(f"datasets must be 'all' or names from {DATASETS}, got {datasets!r}")
    if isinstance(predictors, Mapping):
        fits = dict(predictors)
    else:
        bad = [p for p in predictors if p not in PREDICTORS]
        if bad:
            raise ValueError(f"unknown predictors {bad}; choose from {sorted(PREDICTORS)}")
        fits = {p: PREDICTORS[p] for p in predictors}
    if not fits:
        raise ValueError("predictors must name at least one predictor")
    draws = _check_draws(draws)
    if encoder is None:
        encoder = Encoder.from_spec(load_router(DEFAULT_ROUTER).config["encoder"])
    elif not isinstance(encoder, Encoder):
        encoder = Encoder(path=encoder)
    prices = PriceTable.load()
    result = CVResult(notes=[f"{n_folds} folds by prompt-text hash; train / val = 7/8 / 1/8 of the rest by a second "
                             "hash; every choice made on train + val (on val, or by cross-fitting on train + val); "
                             "decisions with predicted Q and expected costs, scored with true outcomes and costs",
                             f"intervals: paired bootstrap over prompts within folds, {n_boot} resamples, 95 %",
                             f"encodings: {encoder.encoder_id}"]
                      + ([f"{draws} draws of the folds (fold hash salted per draw); every metric is the mean over "
                          f"all {draws} x {n_folds} folds; the bootstrap gives each prompt one resampled count shared "
                          "by every draw"] if draws > 1 else []))
    for name, fit in fits.items():
        doc = (fit.__doc__ or "").strip().splitlines()
        result.notes.append(f"{name}: {doc[0] if doc else 'a predictor passed in'}")
    for dname in names:
        t0 = time.perf_counter()
        ds = load_dataset(dname, data_dir, prices)
        x = features(ds.table.prompts, encoder, cache_dir, progress)
        cross_validate_dataset(result, ds, x, fits, n_folds, prices,
                               log=None if log is None else (lambda m: log(f"{dname} {m} ({time.perf_counter() - t0:.0f} s)")),
                               draws=draws)
    result.summarise(n_boot=n_boot)
    return result
