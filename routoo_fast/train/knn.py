"""The k-nearest-neighbour predictor, RouterBench's baseline router.

For a query x, take the k training prompts with the highest cosine similarity to x and predict, per model, the
mean of their observed outcomes: Q[b, j] = mean_{i in knn(b), y[i, j] observed} y[i, j]. If none of the k
neighbours has an outcome for model j, fall back to model j's mean over all training prompts. Exact brute force:
one matmul of unit vectors per query block, then a partial sort.
"""
from __future__ import annotations

import numpy as np

__all__ = ["KNNPredictor", "choose_knn_k", "KNN_GRID"]

KNN_GRID = (10, 20, 40, 80, 160, 320)


def _unit_rows(x: np.ndarray, name: str) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    if x.ndim != 2:
        raise ValueError(f"{name} must be 2-D [rows, D], got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError(f"{name} has NaN or infinite values")
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.maximum(norms, 1e-12)


class KNNPredictor:
    """kNN over pooled prompt encodings with cosine similarity; `predict` returns [B, N] in [0, 1]."""

    def __init__(self, k: int = 40, metric: str = "cosine", block_size: int = 1024):
        if not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        if metric != "cosine":
            raise ValueError(f"metric must be 'cosine', got {metric!r}")
        self.k = int(k)
        self.metric = metric
        self.block_size = int(block_size)
        self._x: np.ndarray | None = None

    def fit(self, features, scores) -> "KNNPredictor":
        """Remember unit-normalised `features` [P, D] and `scores` [P, N] (NaN = missing)."""
        x = _unit_rows(features, "features")
        y = np.asarray(scores, dtype=np.float32)
        if y.ndim != 2 or y.shape[0] != x.shape[0]:
            raise ValueError(f"scores must be [P, N] with P = {x.shape[0]} rows of features, got shape {y.shape}")
        observed = y[~np.isnan(y)]
        if observed.size and (observed.min() < 0 or observed.max() > 1):
            raise ValueError("scores must be in [0, 1] (NaN = missing)")
        self._x = x
        self._observed = (~np.isnan(y)).astype(np.float32)
        self._y0 = np.nan_to_num(y, nan=0.0)
        counts = self._observed.sum(0)
        # a model never observed in training gets 0.5: no information either way
        self._fallback = np.where(counts > 0, self._y0.sum(0) / np.maximum(counts, 1), 0.5).astype(np.float32)
        return self

    def neighbours(self, features, exclude=None) -> np.ndarray:
        """Indices [B, k'] (k' = min(k, P), or min(k, P - 1) with `exclude`) of each query's nearest training rows,
        most similar first. exclude: int [B], a training row each query may not use (its own row: leave-one-out
        rates of the training prompts themselves), or None."""
        if self._x is None:
            raise RuntimeError("KNNPredictor.fit must be called before predict")
        q = _unit_rows(features, "features")
        if q.shape[1] != self._x.shape[1]:
            raise ValueError(f"features have D = {q.shape[1]}, the fitted data has D = {self._x.shape[1]}")
        if exclude is not None:
            exclude = np.asarray(exclude)
            if exclude.shape != (q.shape[0],) or not np.issubdtype(exclude.dtype, np.integer) \
                    or (exclude.size and (exclude.min() < 0 or exclude.max() >= self._x.shape[0])):
                raise ValueError(f"exclude must be int row indices [{q.shape[0]}] into the {self._x.shape[0]} "
                                 "training rows")
        k = min(self.k, self._x.shape[0] - (exclude is not None))
        if k < 1:
            raise ValueError("exclude leaves no training row to be a neighbour")
        out = np.empty((q.shape[0], k), dtype=np.int64)
        for s in range(0, q.shape[0], self.block_size):
            sim = q[s:s + self.block_size] @ self._x.T  # [b, P]
            if exclude is not None:
                sim[np.arange(sim.shape[0]), exclude[s:s + self.block_size]] = -np.inf
            top = np.argpartition(-sim, k - 1, axis=1)[:, :k] if k < sim.shape[1] else \
                np.broadcast_to(np.arange(sim.shape[1]), sim.shape).copy()
            order = np.argsort(-np.take_along_axis(sim, top, axis=1), axis=1, kind="stable")
            out[s:s + self.block_size] = np.take_along_axis(top, order, axis=1)
        return out

    def predict(self, features, exclude=None) -> np.ndarray:
        """Mean neighbour outcome per model, [B, N] float32 (see the module docstring for missing outcomes);
        exclude: as `neighbours`."""
        idx = self.neighbours(features, exclude)  # [B, k]
        total = self._y0[idx].sum(1)  # [B, N]
        count = self._observed[idx].sum(1)
        fallback = self._fallback
        if exclude is not None:  # the training mean without the excluded row, as if refitted without it
            rest_total = self._y0.sum(0) - self._y0[exclude]
            rest_count = self._observed.sum(0) - self._observed[exclude]
            fallback = np.where(rest_count > 0, rest_total / np.maximum(rest_count, 1), np.float32(0.5))
        return np.where(count > 0, total / np.maximum(count, 1), fallback).astype(np.float32)


def choose_knn_k(features, scores, fit_idx, val_idx, grid=KNN_GRID) -> int:
    """The k in `grid` whose kNN (fitted on `fit_idx`) has the best mean AUC on `val_idx`: a fairly tuned baseline."""
    from routoo_fast.train.metrics import evaluate_predictions

    if len(val_idx) == 0:
        return 40
    best, best_auc = grid[0], -np.inf
    for k in grid:
        pred = KNNPredictor(k).fit(features[fit_idx], scores[fit_idx]).predict(features[val_idx])
        auc = evaluate_predictions(scores[val_idx], pred, [str(j) for j in range(scores.shape[1])]).mean_auc
        if auc > best_auc:
            best, best_auc = k, auc
    return int(best)
