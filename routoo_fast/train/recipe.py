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
4. interaction shrinkage (2026-11-30): split the shrunk logit of prompt i into the model's prior, the prompt's
   mean deviation from the priors (its difficulty, shared by every model) and the model-specific rest,
   d_ij = logit_ij - logit(prior_j), mu_i = mean_j d_ij, logit'_ij = logit(prior_j) + mu_i + c (d_ij - mu_i).
   With c < 1 only the model-specific part is damped, the prompt's difficulty is kept: each model's skill vector
   is pulled toward the mean one, E_j <- mean(E) + c (E_j - mean(E)) (`shrink_interactions`). It is the
   hierarchical-IRT answer to the winner's curse when many models are close: on ZeroEval CRUXEval (48 models)
   cross-validated AIQ 0.9442 -> 0.9513, above kNN's 0.9499 (docs/EVALUATION.md).

`fit_recipe` is what `routoo-fast train`, the Python API (`train.pipeline.train_router`) and the reproduction run:
the data-dependent knobs are picked from the small grid GRID (hidden size H, soft-target weight beta, ensemble
size, logit shrinkage a, interaction shrinkage c) by the masked log loss of the final head's Q against the raw
held-out outcomes. Only H x beta need training runs (GRID's 2 x 2 = 4 combinations x max(n_seeds) = 4 seeds, 16
small fits); the ensemble size reuses the first seeds' heads and both shrinkages are applied after training, so
their 3 x 4 x 4 values cost only forward passes. Where the knobs are scored:
- on the user's validation split (each seed trains on the train rows with early stopping on val), when train + val
  holds SELECT_FOLDS_BELOW prompts or more;
- below that, by K = SELECT_FOLDS-fold cross-fitting on train + val (`inner_folds`, identical prompts share a
  fold): every fold's 16 heads train on the other folds with early stopping on it, and each grid point is scored
  by its out-of-fold log loss over all train + val prompts, K times the fits. A 1/8 val split of a small pool is
  70 to 290 prompts and chose noisily (interaction shrinkage 0.25 to 1 across the folds of one pool); the
  cross-fitted choice is stable and lowered the cross-validated log loss and ECE on all 4 small pools
  (docs/EVALUATION.md). With too few distinct prompts for K folds the val split chooses.
The chosen recipe is then refitted on train + val, every seed for the epochs it early-stopped at (the median over
the K folds), so no labelled prompt outside the test split is held back from the shipped head.
"""
from __future__ import annotations

import itertools
import math
from dataclasses import asdict, dataclass, field, replace

import numpy as np

from routoo_fast.train.fit import TrainConfig, merge_heads, model_priors, train_head

__all__ = ["Recipe", "GRID", "SELECT_FOLDS", "SELECT_FOLDS_BELOW", "RecipeFit", "fit_recipe", "fit_count",
           "select_folds_for", "check_select_folds", "inner_folds", "fit_recipe_head", "group_targets", "shrink_logits",
           "shrink_interactions", "shrunk_logits", "model_priors"]

# the data-dependent knobs `fit_recipe` chooses on the validation split (the shipped values are in each list)
GRID = {"hidden": (32, 128), "beta": (0.3, 1.0), "n_seeds": (1, 2, 4), "logit_shrink": (0.5, 0.7, 0.85, 1.0),
        "interaction_shrink": (1.0, 0.75, 0.5, 0.25)}  # 1.0 first: a tie keeps the head as trained
# The knobs are scored by K-fold cross-fitting on train + val when train + val holds fewer than
# SELECT_FOLDS_BELOW prompts: there one val split (1/8: 70 to 290 prompts on the ZeroEval and RouterBench pools)
# chooses noisily; above it the val split alone, at 1/K of the cost (docs/EVALUATION.md).
SELECT_FOLDS = 5
SELECT_FOLDS_BELOW = 4000
_FOLD_SEED = 0


@dataclass
class Recipe:
    """Knobs of the recipe. `fit_recipe` chooses hidden, beta, n_seeds, logit_shrink and interaction_shrink on val
    from GRID and keeps the others as given; the defaults are the values chosen for MMLU-Pro by cross-validation (docs/EVALUATION.md)."""

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
    interaction_shrink: float = 1.0  # c: 1 = no shrinkage of the model-specific part

    def __post_init__(self) -> None:
        if not 0.0 <= self.beta <= 1.0:
            raise ValueError(f"beta must be in [0, 1], got {self.beta}")
        if not self.group_shrink >= 0:
            raise ValueError(f"group_shrink must be >= 0, got {self.group_shrink}")
        if not 0.0 < self.logit_shrink <= 1.0:
            raise ValueError(f"logit_shrink must be in (0, 1], got {self.logit_shrink}")
        if not 0.0 <= self.interaction_shrink <= 1.0:
            raise ValueError(f"interaction_shrink must be in [0, 1], got {self.interaction_shrink}")
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

    lp = _logit_prior(prior, head.n_models)
    with torch.no_grad():
        head.E.mul_(a)
        head.b.copy_((a * head.b.double() + (1 - a) * torch.from_numpy(lp)).to(head.b.dtype))


def _logit_prior(prior, n_models: int) -> np.ndarray:
    p = np.clip(np.asarray(prior, dtype=np.float64), 1e-6, 1 - 1e-6)
    if p.shape != (n_models,):
        raise ValueError(f"prior must have shape ({n_models},), got {p.shape}")
    return np.log(p / (1 - p))


def shrink_interactions(head, prior, c: float) -> None:
    """In place: d = logits - logit(prior), logits' = logit(prior) + mean_j d + c (d - mean_j d), per prompt.

    Linear in the head's output, so it folds into E [N, H] and b [N]: E_j <- mean(E) + c (E_j - mean(E)),
    b_j <- l_j + m + c (b_j - l_j - m) with l = logit(prior), m = mean_j (b_j - l_j). c = 1 leaves the head as is;
    c = 0 keeps only each model's prior plus the prompt's mean deviation (its difficulty)."""
    import torch

    if not 0.0 <= c <= 1.0:
        raise ValueError(f"interaction shrink c must be in [0, 1], got {c}")
    lp = _logit_prior(prior, head.n_models)
    if c == 1.0:  # exactly the head as trained (the folded form would move E and b by rounding)
        return
    with torch.no_grad():
        e_mean = head.E.mean(0, keepdim=True)
        head.E.copy_(e_mean + c * (head.E - e_mean))
        rest = head.b.double().numpy() - lp
        m = rest.mean()
        head.b.copy_(torch.from_numpy(lp + m + c * (rest - m)).to(head.b.dtype))


def shrunk_logits(z, logit_prior, a: float, c: float) -> np.ndarray:
    """The logits [B, N] of a head after `shrink_logits(a)` then `shrink_interactions(c)`, from its raw logits
    z [B, N] (what `fit_recipe` scores each grid point's val loss with, without touching the head)."""
    d = a * (np.asarray(z, dtype=np.float64) - logit_prior)
    mu = d.mean(1, keepdims=True)
    return logit_prior + mu + c * (d - mu)


def fit_recipe_head(features, scores, train_idx, val_idx, groups=None, recipe: Recipe | None = None,
                    progress: bool = False):
    """The recipe with its knobs as given (no grid), fitted on rows train_idx with early stopping on val_idx and no
    refit -> ScoringHead on raw features: `fit_recipe(..., grid={}, refit=False).head`.

    features [P, D] pooled encodings; scores [P, N] (NaN = missing); groups [P] training-only group labels
    (e.g. the MMLU subject) or None.
    """
    return fit_recipe(features, scores, train_idx, val_idx, groups=groups, recipe=recipe, grid={}, refit=False).head


@dataclass
class RecipeFit:
    """What `fit_recipe` returns: the head (refitted on train + val), the chosen recipe, the grid with every
    point's validation loss, and the epochs each ensemble member trained."""

    head: object  # ScoringHead taking raw pooled encodings
    recipe: Recipe
    grid: list = field(default_factory=list)  # [{hidden, beta, n_seeds, logit_shrink, interaction_shrink, val_loss}]
    epochs: list = field(default_factory=list)  # per member, from early stopping on val
    val_loss: float = math.nan  # of the chosen recipe, before the refit on train + val
    refit_rows: int = 0
    val_probs: np.ndarray | None = None  # [len(val_idx), N] Q of the chosen recipe on val, before the refit
    select_folds: int = 1  # K of the knob choice: 1 = on val, K >= 2 = out-of-fold over K folds of train + val
    refit: bool = True  # False: the head is the one trained on the train rows, early-stopped on val

    def summary(self) -> str:
        r = self.recipe
        where = "on val" if self.select_folds < 2 else f"by {self.select_folds}-fold cross-fitting on train + val"
        trained = (f"refitted on {self.refit_rows} train + val prompts for {self.epochs} epochs" if self.refit else
                   f"trained on {self.refit_rows} train prompts, early-stopped on val at {self.epochs} epochs (no refit)")
        return (f"recipe chosen {where} from {len(self.grid)} grid points: hidden {r.hidden}, beta {r.beta}, "
                f"{r.n_seeds} seeds, logit shrink {r.logit_shrink}, interaction shrink {r.interaction_shrink} "
                f"(held-out log loss {self.val_loss:.4f}); {trained}")


def _masked_log_loss(logits: np.ndarray, y: np.ndarray) -> float:
    """Mean binary cross-entropy of sigmoid(logits) against y in [0, 1] over the observed (non-NaN) entries."""
    seen = ~np.isnan(y)
    z, t = logits[seen], y[seen]
    return float(np.mean(np.logaddexp(0.0, z) - t * z)) if z.size else math.nan


def _config(recipe: Recipe, seed: int, num_threads, epochs: int | None = None) -> TrainConfig:
    return TrainConfig(hidden=recipe.hidden, act=recipe.act, lr=recipe.lr, weight_decay=recipe.weight_decay,
                       dropout=recipe.dropout, epochs=recipe.epochs if epochs is None else epochs,
                       patience=recipe.patience, seed=seed, ensemble=1, num_threads=num_threads)


def check_select_folds(select_folds):
    """select_folds as given when it is None or a positive int, else a ValueError naming it."""
    if select_folds is not None and (not isinstance(select_folds, (int, np.integer)) or isinstance(select_folds, bool)
                                     or select_folds < 1):
        raise ValueError(f"select_folds must be a positive integer or None, got {select_folds!r}")
    return select_folds


def select_folds_for(n_rows: int) -> int:
    """K of the cross-fitted knob choice for `n_rows` train + val prompts: SELECT_FOLDS below SELECT_FOLDS_BELOW
    prompts, else 1 (the val split alone)."""
    return SELECT_FOLDS if n_rows < SELECT_FOLDS_BELOW else 1


def inner_folds(features, rows, k: int) -> np.ndarray:
    """Fold id in [0, k) per row of `rows` [R] for the cross-fitted knob choice -> int64 [R].

    Rows with identical feature vectors (identical prompts: the encoding cache encodes a text once) share a fold;
    groups are numbered by first occurrence and dealt to folds by a fixed-seed permutation, so the folds depend
    only on the row order and which rows are equal, not on the float values (the same on every CPU)."""
    if not isinstance(k, (int, np.integer)) or k < 2:
        raise ValueError(f"k must be an integer >= 2, got {k!r}")
    rows = np.asarray(rows, dtype=np.int64)
    x = np.ascontiguousarray(np.asarray(features, dtype=np.float32)[rows])
    _, first, inverse = np.unique(x.view(np.dtype((np.void, x.dtype.itemsize * x.shape[1]))).ravel(),
                                  return_index=True, return_inverse=True)
    rank = np.empty(first.size, dtype=np.int64)
    rank[np.argsort(first, kind="stable")] = np.arange(first.size)  # group number by first occurrence
    deal = np.random.default_rng(_FOLD_SEED).permutation(first.size) % k
    return deal[rank[inverse.ravel()]]


def fit_recipe(features, scores, train_idx, val_idx, groups=None, recipe: Recipe | None = None, grid=GRID,
               refit: bool = True, num_threads: int | None = 1, progress=None,
               select_folds: int | None = None) -> RecipeFit:
    """The shipped recipe with its data-dependent knobs chosen on held-out prompts, refitted on train + val (see
    the module docstring). features [P, D] pooled encodings; scores [P, N] (NaN = missing); groups [P]
    training-only group labels (e.g. the MMLU subject) or None. recipe: the other knobs (default Recipe()); grid:
    {knob: values} over hidden, beta, n_seeds, logit_shrink, interaction_shrink (None or {} = no choice: `recipe`
    as given). select_folds: K >= 2 scores every grid point by its out-of-fold log loss over K folds of
    train + val (`inner_folds`), each fold's heads early-stopped on the fold they predict, and refits for the
    median of their epochs; 1 scores on val_idx only; None = `select_folds_for(train + val prompts)`. Without a
    refit the knobs are always chosen on val_idx (the returned head is the one trained on train_idx).
    progress: a tqdm-like bar advanced once per head fitted (total `fit_count(grid, recipe, refit, K)`), or None.
    """
    import torch

    base = recipe if recipe is not None else Recipe()
    x = np.asarray(features, dtype=np.float32)
    y = np.asarray(scores, dtype=np.float32)
    tr = np.asarray(train_idx, dtype=np.int64)
    va = np.asarray(val_idx, dtype=np.int64)
    if va.size == 0 or not (~np.isnan(y[va])).any():
        raise ValueError("the recipe needs validation prompts with outcomes (early stopping and the grid choice)")
    grid = dict(grid or {})
    knobs = ("hidden", "beta", "n_seeds", "logit_shrink", "interaction_shrink")
    unknown = set(grid) - set(knobs)
    if unknown:
        raise ValueError(f"grid knobs must be among {', '.join(knobs)}; got {sorted(unknown)}")
    hiddens = tuple(grid.get("hidden", (base.hidden,)))
    betas = tuple(grid.get("beta", (base.beta,)))
    seeds = tuple(sorted(grid.get("n_seeds", (base.n_seeds,))))
    shrinks = tuple(grid.get("logit_shrink", (base.logit_shrink,)))
    inter = tuple(grid.get("interaction_shrink", (base.interaction_shrink,)))
    fit_rows = np.concatenate([tr, va])
    k = select_folds_for(fit_rows.size) if check_select_folds(select_folds) is None else select_folds
    splits = [(tr, va)]
    if refit and k >= 2:
        fold = inner_folds(x, fit_rows, int(k))
        folds = [(fit_rows[fold != f], fit_rows[fold == f]) for f in range(int(k))]
        # too few distinct prompts for K folds with outcomes on both sides: the val split chooses instead
        if all(np.isfinite(y[fit_part]).any() and np.isfinite(y[held_part]).any() for fit_part, held_part in folds):
            splits = folds
        elif progress is not None:  # fit_count counted K folds of fits; the val split trains one
            progress.update(len(hiddens) * len(betas) * max(seeds) * (int(k) - 1))
    # held-out rows of every split, each row once: its raw logits per (hidden, beta, n_seeds) and its split's prior
    held = np.concatenate([h for _, h in splits])
    logit_prior = np.empty((held.size, y.shape[1]))
    targets_of = {float(b): group_targets(y, groups, fit_rows, float(b), base.group_shrink) for b in betas}
    raw, epochs_of, trained = {}, {}, {}
    start = 0
    for s_tr, s_va in splits:
        rows = slice(start, start + s_va.size)
        start += s_va.size
        prior_s = model_priors(y, s_tr)
        logit_prior[rows] = np.log(prior_s / (1 - prior_s))
        xv = torch.from_numpy(x[s_va])
        for hidden, beta in itertools.product(hiddens, betas):
            r = replace(base, hidden=int(hidden), beta=float(beta))
            members = []
            for s in range(max(seeds)):
                head, hist = train_head(x, targets_of[r.beta], s_tr, s_va, _config(r, s, num_threads),
                                        progress=False)
                members.append((head, hist.best_epoch + 1))
                if progress is not None:
                    progress.update(1)
            epochs_of.setdefault((r.hidden, r.beta), []).append([e for _, e in members])
            if len(splits) == 1:
                trained[(r.hidden, r.beta)] = members
            for n in seeds:
                with torch.no_grad():
                    z = merge_heads([h for h, _ in members[:n]])(xv).double().numpy()
                raw.setdefault((r.hidden, r.beta, int(n)), np.empty((held.size, y.shape[1])))[rows] = z
    y_held = y[held]
    results = []
    for hidden, beta in itertools.product(hiddens, betas):
        for n in seeds:
            z = raw[(int(hidden), float(beta), int(n))]
            for a, c in itertools.product(shrinks, inter):
                results.append({"hidden": int(hidden), "beta": float(beta), "n_seeds": int(n),
                                "logit_shrink": float(a), "interaction_shrink": float(c),
                                "val_loss": _masked_log_loss(shrunk_logits(z, logit_prior, a, c), y_held)})
    # the lowest held-out loss; a tie keeps the earliest grid point
    best = min(range(len(results)), key=lambda i: (results[i]["val_loss"], i))
    choice = results[best]
    chosen = replace(base, hidden=choice["hidden"], beta=choice["beta"], n_seeds=choice["n_seeds"],
                     logit_shrink=choice["logit_shrink"], interaction_shrink=choice["interaction_shrink"])
    per_split = epochs_of[(chosen.hidden, chosen.beta)]
    epochs = [int(round(float(np.median([e[s] for e in per_split])))) for s in range(chosen.n_seeds)]
    if refit:
        heads = []
        for s, e in enumerate(epochs):
            heads.append(train_head(x, targets_of[chosen.beta], fit_rows, [], _config(chosen, s, num_threads, epochs=e),
                                    progress=False)[0])
            if progress is not None:
                progress.update(1)
        if progress is not None:
            progress.update(max(seeds) - len(epochs))  # fit_count counted max(n_seeds) refits
        head = merge_heads(heads)
        prior = model_priors(y, fit_rows)
    else:
        head = merge_heads([h for h, _ in trained[(chosen.hidden, chosen.beta)][:chosen.n_seeds]])
        prior = model_priors(y, tr)
    shrink_logits(head, prior, chosen.logit_shrink)
    shrink_interactions(head, prior, chosen.interaction_shrink)
    position = np.empty(y.shape[0], dtype=np.int64)
    position[held] = np.arange(held.size)
    z = shrunk_logits(raw[(chosen.hidden, chosen.beta, chosen.n_seeds)], logit_prior, chosen.logit_shrink,
                      chosen.interaction_shrink)  # recomputed: keeping every grid point's logits costs memory
    return RecipeFit(head=head, recipe=chosen, grid=results, epochs=epochs, val_loss=choice["val_loss"],
                     refit_rows=int(fit_rows.size) if refit else int(tr.size),
                     val_probs=(1.0 / (1.0 + np.exp(-z[position[va]]))).astype(np.float32),
                     select_folds=len(splits), refit=bool(refit))


def fit_count(grid=GRID, recipe: Recipe | None = None, refit: bool = True, select_folds: int = 1) -> int:
    """How many single heads `fit_recipe` trains with this grid and K = select_folds (for a progress bar's total;
    K as `fit_recipe` resolves it, e.g. `select_folds_for(train + val prompts)`)."""
    base = recipe if recipe is not None else Recipe()
    grid = dict(grid or {})
    seeds = max(grid.get("n_seeds", (base.n_seeds,)))
    n = len(grid.get("hidden", (1,))) * len(grid.get("beta", (1,))) * seeds
    folds = select_folds if refit and select_folds >= 2 else 1
    return n * folds + (seeds if refit else 0)  # the refit trains at most max(n_seeds) members
