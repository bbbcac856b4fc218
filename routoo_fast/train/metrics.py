"""How good are predicted probabilities of correctness: per-model ROC-AUC, Brier score and calibration error.

All functions take outcomes `y` and predictions `p` of the same shape; NaN in `y` means "no outcome" and is
masked out. Outcomes may be soft scores in [0, 1]: Brier and ECE use them as they are, ROC-AUC needs two classes
and counts `y >= 0.5` as positive.

- ROC-AUC (Mann-Whitney): AUC = (R+ - n+(n+ + 1)/2) / (n+ n-), with R+ the sum of the positives' ranks among
  all predictions, tied predictions given their average rank (a tie counts one half). NaN when a class is empty.
- Brier score: mean (p - y)^2.
- Expected calibration error: n_bins equal-width bins over [0, 1] (bin b holds p in [b/n_bins, (b+1)/n_bins),
  the last bin also holds p = 1); ECE = sum_b (|bin b| / n) * |mean y in b - mean p in b|.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def _as_pair(y, p, name_y: str = "y", name_p: str = "p") -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(y, dtype=np.float64)
    p = np.asarray(p, dtype=np.float64)
    if y.shape != p.shape:
        raise ValueError(f"{name_y} and {name_p} must have the same shape, got {y.shape} and {p.shape}")
    if np.isnan(p[~np.isnan(y)]).any():
        raise ValueError(f"{name_p} has NaN where {name_y} has an outcome")
    if np.isinf(p).any():
        raise ValueError(f"{name_p} has infinite values")
    observed = y[~np.isnan(y)]
    if observed.size and (observed.min() < 0 or observed.max() > 1):
        raise ValueError(f"{name_y} must be in [0, 1] (NaN = missing), got range [{observed.min()}, {observed.max()}]")
    return y, p


def average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks of a 1-D array, ties given the mean of the ranks they span (scipy.stats.rankdata 'average')."""
    x = np.asarray(x)
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    # start of each run of equal values, and each run's average rank
    new_run = np.r_[True, xs[1:] != xs[:-1]]
    run_id = np.cumsum(new_run) - 1
    starts = np.flatnonzero(new_run)
    ends = np.r_[starts[1:], xs.size]  # exclusive
    run_rank = (starts + 1 + ends) / 2.0  # mean of ranks starts+1 .. ends
    ranks = np.empty(x.size, dtype=np.float64)
    ranks[order] = run_rank[run_id]
    return ranks


def roc_auc(y, p) -> float:
    """ROC-AUC of scores `p` [P] for outcomes `y` [P] (NaN masked, y >= 0.5 positive); NaN if one class is empty."""
    y, p = _as_pair(y, p)
    if y.ndim != 1:
        raise ValueError(f"roc_auc takes 1-D arrays, got shape {y.shape}")
    keep = ~np.isnan(y)
    pos = y[keep] >= 0.5
    n_pos = int(pos.sum())
    n_neg = int(pos.size - n_pos)
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = average_ranks(p[keep])
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def brier(y, p) -> float:
    """Mean squared error (p - y)^2 over observed outcomes; NaN if none."""
    y, p = _as_pair(y, p)
    keep = ~np.isnan(y)
    if not keep.any():
        return float("nan")
    return float(np.mean((p[keep] - y[keep]) ** 2))


def expected_calibration_error(y, p, n_bins: int = 10) -> float:
    """ECE with `n_bins` equal-width bins over [0, 1] (see the module docstring); NaN if no outcome."""
    if not isinstance(n_bins, (int, np.integer)) or n_bins < 1:
        raise ValueError(f"n_bins must be a positive integer, got {n_bins!r}")
    y, p = _as_pair(y, p)
    keep = ~np.isnan(y)
    y, p = y[keep], p[keep]
    if y.size == 0:
        return float("nan")
    if p.min() < 0 or p.max() > 1:
        raise ValueError(f"p must be probabilities in [0, 1], got range [{p.min()}, {p.max()}]")
    bin_of = np.minimum((p * n_bins).astype(np.int64), n_bins - 1)
    sum_y = np.bincount(bin_of, weights=y, minlength=n_bins)
    sum_p = np.bincount(bin_of, weights=p, minlength=n_bins)
    # |mean y - mean p| * count / n  ==  |sum y - sum p| / n
    return float(np.abs(sum_y - sum_p).sum() / y.size)


@dataclass
class PredictionReport:
    """Per-model quality of predicted P(correct) on one split; NaN where a metric is undefined for a model."""

    model_names: list[str]
    auc: np.ndarray  # [N]
    brier: np.ndarray  # [N]
    ece: np.ndarray  # [N]
    n: np.ndarray  # [N] observed outcomes per model
    name: str = "predictor"

    @property
    def mean_auc(self) -> float:
        return float(np.nanmean(self.auc)) if np.isfinite(self.auc).any() else float("nan")

    @property
    def mean_brier(self) -> float:
        return float(np.nanmean(self.brier)) if np.isfinite(self.brier).any() else float("nan")

    @property
    def mean_ece(self) -> float:
        return float(np.nanmean(self.ece)) if np.isfinite(self.ece).any() else float("nan")

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "mean": {"auc": self.mean_auc, "brier": self.mean_brier, "ece": self.mean_ece},
            "per_model": {
                m: {"auc": float(a), "brier": float(b), "ece": float(e), "n": int(k)}
                for m, a, b, e, k in zip(self.model_names, self.auc, self.brier, self.ece, self.n)
            },
        }

    def to_markdown(self) -> str:
        """A table: one row per model, then the mean over models."""
        lines = [f"| model ({self.name}) | n | AUC | Brier | ECE |", "|---|---:|---:|---:|---:|"]
        for m, a, b, e, k in zip(self.model_names, self.auc, self.brier, self.ece, self.n):
            lines.append(f"| {m} | {int(k)} | {a:.4f} | {b:.4f} | {e:.4f} |")
        lines.append(f"| **mean** | {int(np.sum(self.n))} | {self.mean_auc:.4f} | {self.mean_brier:.4f} | "
                     f"{self.mean_ece:.4f} |")
        return "\n".join(lines)


def evaluate_predictions(y, p, model_names, n_bins: int = 10, name: str = "predictor") -> PredictionReport:
    """Score predictions `p` [P, N] against outcomes `y` [P, N] (NaN = missing), one column per model."""
    y, p = _as_pair(y, p, "outcomes", "predictions")
    if y.ndim != 2:
        raise ValueError(f"outcomes must be 2-D [P, N], got shape {y.shape}")
    model_names = list(model_names)
    if len(model_names) != y.shape[1]:
        raise ValueError(f"model_names has {len(model_names)} names but outcomes have {y.shape[1]} columns")
    cols = range(y.shape[1])
    return PredictionReport(
        model_names=model_names,
        auc=np.array([roc_auc(y[:, j], p[:, j]) for j in cols]),
        brier=np.array([brier(y[:, j], p[:, j]) for j in cols]),
        ece=np.array([expected_calibration_error(y[:, j], p[:, j], n_bins) for j in cols]),
        n=np.array([int((~np.isnan(y[:, j])).sum()) for j in cols]),
        name=name,
    )
