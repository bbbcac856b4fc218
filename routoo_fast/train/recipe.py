"""The training recipe of the shipped router: group-prior soft targets, a seed ensemble folded into one head,
and logit shrinkage toward each model's prior folded into E and b. The result is a plain ScoringHead.

Why (measured by 5-fold cross-validation on the train + val prompts of MMLU-Pro's original-MMLU part, see
docs/EVALUATION.md): per-prompt 0/1 outcomes are very noisy and MiniLM encodings predict a prompt's difficulty
only weakly, so a head fitted to raw labels overfits within a few epochs and the argmax over its noisy Q picks
the wrong model (winner's curse). Three fixes, each a few tenths of a point of AIQ:
1. soft targets: y~[i, j] = beta * y[i, j] + (1 - beta) * T[g(i), j], with T the shrunk mean of model j over the
   training prompts of prompt i's group g (the MMLU subject): T = (sum_{g} y + k * prior_j) / (n_gj + k).
   The group label is used only for training; at run time the head sees the prompt encoding only.
2. an ensemble of `n_seeds` heads, averaged in logit space, which is one head of width n_seeds * H
   (`train.fit.merge_heads`).
3. logit shrinkage toward the prior: logit' = a * logit + (1 - a) * logit(prior_j), i.e. E <- a E,
   b <- a b + (1 - a) logit(prior): it damps the spread of Q across models, so the argmax chases less noise.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from routoo_fast.train.fit import TrainConfig, model_priors, train_head


@dataclass
class Recipe:
    """Knobs of `fit_recipe_head` (defaults: the shipped router's recipe)."""

    hidden: int = 128
    act: str = "gelu"
    weight_decay: float = 1e-2
    dropout: float = 0.3
    lr: float = 3e-4
    patience: int = 20
    epochs: int = 200
    n_seeds: int = 4
    beta: float = 0.3  # weight of the prompt's own label in the soft target
    group_shrink: float = 20.0  # k: pseudo-count of the model prior in each group's mean
    logit_shrink: float = 0.7  # a: 1 = no shrinkage

    def __post_init__(self) -> None:
        if not 0.0 <= self.beta <= 1.0:
            raise ValueError(f"beta must be in [0, 1], got {self.beta}")
        if not self.group_shrink >= 0:
            raise ValueError(f"group_shrink must be >= 0, got {self.group_shrink}")
        if not 0.0 < self.logit_shrink <= 1.0:
            raise ValueError(f"logit_shrink must be in (0, 1], got {self.logit_shrink}")
        if not isinstance(self.n_seeds, int) or self.n_seeds < 1:
            raise ValueError(f"n_seeds must be a positive int, got {self.n_seeds!r}")

    def to_dict(self) -> dict:
        return asdict(self)


def group_targets(scores, groups, fit_rows, beta: float, k: float) -> np.ndarray:
    """Soft targets [P, N]: beta * y + (1 - beta) * T[group]; T from `fit_rows` only; NaN where y is NaN.

    groups [P] (any hashable labels) or None (then T = the model prior: label smoothing toward it).
    """
    y = np.asarray(scores, dtype=np.float64)
    if y.ndim != 2:
        raise ValueError(f"scores must be 2-D [P, N], got shape {y.shape}")
    fit = np.asarray(fit_rows, dtype=np.int64)
    prior = model_priors(y, fit)
    T = np.broadcast_to(prior, y.shape).copy()
    if groups is not None:
        g = np.asarray(groups)
        if g.shape != (y.shape[0],):
            raise ValueError(f"groups must have shape ({y.shape[0]},), got {g.shape}")
        fit_g = g[fit]
        for label in np.unique(g):
            members = fit[fit_g == label]
            yy = y[members]
            n = (~np.isnan(yy)).sum(0)
            T[g == label] = (np.nansum(yy, 0) + k * prior) / (n + k)
    out = beta * y + (1.0 - beta) * T
    return np.where(np.isnan(y), np.nan, out).astype(np.float32)


def shrink_logits(head, prior, a: float) -> None:
    """In place: logits' = a * logits + (1 - a) * logit(prior) (E <- a E, b <- a b + (1 - a) logit(prior))."""
    import torch

    p = np.clip(np.asarray(prior, dtype=np.float64), 1e-6, 1 - 1e-6)
    if p.shape != (head.n_models,):
        raise ValueError(f"prior must have shape ({head.n_models},), got {p.shape}")
    with torch.no_grad():
        head.E.mul_(a)
        head.b.copy_((a * head.b.double() + (1 - a) * torch.from_numpy(np.log(p / (1 - p)))).to(head.b.dtype))


def fit_recipe_head(features, scores, train_idx, val_idx, groups=None, recipe: Recipe | None = None,
                    progress: bool = False):
    """Fit the shipped recipe on rows train_idx (early stopping on val_idx) -> ScoringHead on raw features.

    features [P, D] pooled encodings; scores [P, N] (NaN = missing); groups [P] training-only group labels
    (e.g. the MMLU subject) or None.
    """
    recipe = recipe if recipe is not None else Recipe()
    tr = np.asarray(train_idx, dtype=np.int64)
    va = np.asarray(val_idx, dtype=np.int64)
    fit_rows = np.concatenate([tr, va])
    targets = group_targets(scores, groups, fit_rows, recipe.beta, recipe.group_shrink)
    cfg = TrainConfig(hidden=recipe.hidden, act=recipe.act, lr=recipe.lr, weight_decay=recipe.weight_decay,
                      dropout=recipe.dropout, epochs=recipe.epochs, patience=recipe.patience, seed=0,
                      ensemble=recipe.n_seeds)
    head, _ = train_head(features, targets, tr, va, cfg, progress=progress)  # seeds 0..n_seeds-1, merged
    shrink_logits(head, model_priors(scores, tr), recipe.logit_shrink)
    return head
