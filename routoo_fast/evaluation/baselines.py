"""Baseline routers for the evaluation: single models, the random mix, the oracle, kNN and matrix factorisation.

- single model j: always call j -> one point (mean C_true[:, j], mean Y[:, j]).
- random mix: send each prompt to model j with probability p_j; its reachable (cost, quality) points are the convex
  combinations of the single-model points, so its curve is their non-decreasing upper hull (RouterBench's
  "zero router").
- oracle: decides with the true outcomes and costs (Q = Y, C = C_true): at small lambda every prompt goes to the
  cheapest model that gets it right. An upper bound, not a router.
- kNN (RouterBench): Q[b, j] = mean outcome of model j over the k training prompts most cosine-similar to b
  (`routoo_fast.train.knn.KNNPredictor`), k chosen on the validation split by mean AUC.
- matrix factorisation (RouteLLM's MF router, adapted to per-model outcomes): logit P(j right on x) =
  w2 . (v_j * (W x + b0)) + c_j, a bilinear model of prompt x and model embedding v_j. Folding w2 into v_j gives
  E_j . (W x + b0) + c_j: exactly `ScoringHead(hidden=d, act="identity")`, trained by `train.fit.train_head`.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from routoo_fast.evaluation.curves import Curve, check_matrix, tradeoff_curve, upper_hull

MF_DIM = 128  # RouteLLM's MF router uses 128-dimensional model / projected prompt embeddings


def single_model_curves(Y, C_true, model_names: Sequence[str]) -> list[Curve]:
    """One single-point Curve per model: always calling that model, scored by Y / C_true [P, N]."""
    Y = check_matrix(Y, "Y")
    Ct = check_matrix(C_true, "C_true", Y.shape)
    if len(model_names) != Y.shape[1]:
        raise ValueError(f"model_names has {len(model_names)} names for {Y.shape[1]} columns")
    return [Curve(str(m), np.array([Ct[:, j].mean()]), np.array([Y[:, j].mean()]), "single")
            for j, m in enumerate(model_names)]


def random_mix_curve(singles: Sequence[Curve], name: str = "random mix") -> Curve:
    """The random router's curve: the non-decreasing upper hull of the single-model points."""
    if not singles:
        raise ValueError("singles must hold at least one single-model curve")
    hc, hq = upper_hull([c.cost[0] for c in singles], [c.quality[0] for c in singles])
    return Curve(name, hc, hq, "random")


def oracle_curve(Y, C_true, strong: int | None = None, name: str = "oracle") -> Curve:
    """The oracle's curve: tradeoff sweep deciding with the true outcomes and costs."""
    return tradeoff_curve(name, Y, C_true, Y, C_true, strong=strong, kind="oracle")


class KNNRouter:
    """kNN quality predictor on pooled encodings; `fit(features, scores, train_idx, val_idx)` picks k on val."""

    def __init__(self, k: int | None = None):
        if k is not None and (not isinstance(k, (int, np.integer)) or k < 1):
            raise ValueError(f"k must be a positive integer or None (choose on val), got {k!r}")
        self.k = None if k is None else int(k)
        self._knn = None

    def fit(self, features, scores, train_idx, val_idx=()) -> "KNNRouter":
        """Choose k on `val_idx` (if not given), then remember train + val rows as neighbours."""
        from routoo_fast.train.knn import KNNPredictor, choose_knn_k

        x = np.asarray(features, dtype=np.float32)
        y = np.asarray(scores, dtype=np.float32)
        tr = np.asarray(train_idx, dtype=np.int64)
        va = np.asarray(val_idx, dtype=np.int64)
        if x.ndim != 2 or y.ndim != 2 or x.shape[0] != y.shape[0]:
            raise ValueError(f"features [P, D] and scores [P, N] need the same P, got {x.shape} and {y.shape}")
        if tr.size == 0:
            raise ValueError("train_idx is empty")
        if self.k is None:
            self.k = choose_knn_k(x, y, tr, va)
        fit = np.concatenate([tr, va])
        self._knn = KNNPredictor(self.k).fit(x[fit], y[fit])
        return self

    def predict(self, features) -> np.ndarray:
        """Q float32 [B, N]."""
        if self._knn is None:
            raise RuntimeError("KNNRouter.fit must be called before predict")
        return self._knn.predict(features)


class MFRouter:
    """RouteLLM-style matrix factorisation: `ScoringHead(hidden=dim, act="identity")` fitted with train_head."""

    def __init__(self, dim: int = MF_DIM, weight_decay: float = 1e-2, seed: int = 0):
        if not isinstance(dim, (int, np.integer)) or dim < 1:
            raise ValueError(f"dim must be a positive integer, got {dim!r}")
        self.dim, self.weight_decay, self.seed = int(dim), float(weight_decay), int(seed)
        self.head = None

    def fit(self, features, scores, train_idx, val_idx) -> "MFRouter":
        """Masked BCE on rows train_idx, early stopping on val_idx."""
        from routoo_fast.train.fit import TrainConfig, train_head

        cfg = TrainConfig(hidden=self.dim, act="identity", weight_decay=self.weight_decay, dropout=0.0,
                          patience=10, seed=self.seed, ensemble=1)
        self.head, self.history = train_head(features, scores, train_idx, val_idx, cfg, progress=False)
        return self

    def predict(self, features) -> np.ndarray:
        """Q float32 [B, N]."""
        import torch

        if self.head is None:
            raise RuntimeError("MFRouter.fit must be called before predict")
        with torch.no_grad():
            return self.head.probs(torch.as_tensor(np.asarray(features, dtype=np.float32))).numpy()
