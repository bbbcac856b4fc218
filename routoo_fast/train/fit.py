"""Fit the ScoringHead to observed outcomes: masked binary cross-entropy, AdamW, early stopping, fixed seeds.

Model (shared across LLMs, like IRT / matrix factorisation): logit P(model j right on prompt x) = E_j . phi(x) + b_j,
phi(x) = act(W1 standardise(x) + b1). Every model shares phi, so a model with few outcomes borrows strength
from the rest. b_j starts at the logit of model j's training accuracy; weight decay acts on W1 and E only
(biases are not shrunk); optional dropout on phi during training.

Loss on a minibatch B: sum over observed (i, j) of BCE(sigmoid(logit_ij), y_ij) / #observed, with soft targets
y in [0, 1] allowed and NaN outcomes masked out. Early stopping keeps the weights of the epoch with the lowest
validation loss. The feature standardisation (x - mean) / std is folded into W1, b1 (or E, b when hidden=None)
before returning, so the returned head takes raw pooled encoder outputs.
"""
from __future__ import annotations

import contextlib
import copy
import math
import time
from dataclasses import asdict, dataclass, field, replace

import numpy as np

from routoo_fast.head import ACTIVATIONS, ScoringHead

__all__ = ["TrainConfig", "TrainHistory", "train_head", "merge_heads", "fold_standardisation",
           "masked_bce", "model_priors", "prior_logits", "torch_threads"]


@dataclass
class TrainConfig:
    """Every knob of `train_head` (one plain fit; the shipped recipe, `train.recipe`, builds its configs itself)."""

    hidden: int | None = 64  # H per ensemble member; None = no projection, logits = E x + b
    act: str = "gelu"
    lr: float = 3e-4
    weight_decay: float = 1.0  # AdamW decoupled decay (per step: lr * weight_decay), on W1 and E only
    dropout: float = 0.2  # on phi(x) during training
    epochs: int = 200  # upper bound; early stopping usually ends sooner
    batch_size: int = 256
    patience: int = 10  # epochs without a lower validation loss before stopping
    seed: int = 0
    ensemble: int = 5  # members (seeds seed..seed+M-1) averaged in logit space, merged into one head (merge_heads)
    device: str = "cpu"
    num_threads: int | None = 1  # torch CPU threads while training (the head is tiny: more threads only contend)
    encoder_lr: float = 1e-5  # used only when the encoder is fine-tuned

    def __post_init__(self) -> None:
        if self.hidden is not None and (isinstance(self.hidden, bool) or not isinstance(self.hidden, int)
                                        or self.hidden < 1):
            raise ValueError(f"hidden must be a positive int or None, got {self.hidden!r}")
        if self.act not in ACTIVATIONS:
            raise ValueError(f"act must be one of {ACTIVATIONS}, got {self.act!r}")
        for name in ("lr", "encoder_lr"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise ValueError(f"{name} must be a positive number, got {v!r}")
        if not (isinstance(self.weight_decay, (int, float)) and self.weight_decay >= 0):
            raise ValueError(f"weight_decay must be >= 0, got {self.weight_decay!r}")
        if not (isinstance(self.dropout, (int, float)) and 0 <= self.dropout < 1):
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout!r}")
        if self.num_threads is not None and (isinstance(self.num_threads, bool)
                                             or not isinstance(self.num_threads, int) or self.num_threads < 1):
            raise ValueError(f"num_threads must be a positive int or None, got {self.num_threads!r}")
        for name in ("epochs", "batch_size", "patience", "ensemble"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class TrainHistory:
    """Per-epoch mean losses, and where training stopped."""

    train_loss: list[float] = field(default_factory=list)
    val_loss: list[float] = field(default_factory=list)
    best_epoch: int = -1  # 0-based epoch whose weights were kept
    stopped_early: bool = False
    seconds: float = 0.0
    members: list = field(default_factory=list)  # each ensemble member's TrainHistory (empty for one member)

    @property
    def best_val_loss(self) -> float:
        return self.val_loss[self.best_epoch] if self.val_loss and self.best_epoch >= 0 else float("nan")


def masked_bce(logits, target, mask):
    """Mean BCE-with-logits over entries where mask is 1 (target already has NaN replaced)."""
    import torch.nn.functional as F

    per = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    return (per * mask).sum() / mask.sum().clamp(min=1.0)


def _check_inputs(features, scores, train_idx, val_idx):
    x = np.asarray(features)
    y = np.asarray(scores, dtype=np.float32)
    if x.ndim != 2 or x.dtype.kind != "f":
        raise ValueError(f"features must be a float array [P, D], got shape {x.shape} dtype {x.dtype}")
    if not np.isfinite(x).all():
        raise ValueError("features have NaN or infinite values")
    if y.ndim != 2 or y.shape[0] != x.shape[0]:
        raise ValueError(f"scores must be [P, N] with P = {x.shape[0]} (rows of features), got shape {y.shape}")
    obs = y[~np.isnan(y)]
    if np.isinf(y).any() or (obs.size and (obs.min() < 0 or obs.max() > 1)):
        raise ValueError("scores must be in [0, 1] with NaN for missing outcomes")
    idx = []
    for name, ix in (("train_idx", train_idx), ("val_idx", val_idx)):
        ix = np.asarray(ix)
        if ix.dtype == bool:
            if ix.shape != (x.shape[0],):
                raise ValueError(f"{name} as a boolean mask must have shape ({x.shape[0]},), got {ix.shape}")
            ix = np.flatnonzero(ix)
        if ix.ndim != 1 or (ix.size and ix.dtype.kind not in "iu"):
            raise ValueError(f"{name} must be a 1-D integer index array or boolean mask, got {ix.dtype} {ix.shape}")
        ix = ix.astype(np.int64)
        if ix.size and (ix.min() < 0 or ix.max() >= x.shape[0]):
            raise ValueError(f"{name} has indices outside [0, {x.shape[0]})")
        idx.append(ix)
    train_ix, val_ix = idx
    if train_ix.size == 0:
        raise ValueError("train_idx is empty")
    if np.intersect1d(train_ix, val_ix).size:
        raise ValueError("train_idx and val_idx overlap: a prompt cannot be in both")
    if not (~np.isnan(y[train_ix])).any():
        raise ValueError("the training rows have no observed outcome")
    return x.astype(np.float32), y, train_ix, val_ix


@contextlib.contextmanager
def torch_threads(n: int | None):
    """Run the block with `n` torch CPU threads, then restore the caller's setting (None: leave as is)."""
    import torch

    before = torch.get_num_threads()
    if n is not None:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def fold_standardisation(head: ScoringHead, mean, std) -> None:
    """Rewrite `head` in place so head(x) == old_head((x - mean) / std) for raw x.

    W1 (x - m)/s + b1 = (W1 / s) x + (b1 - (W1 / s) m); with no hidden layer the same holds for E, b.
    """
    import torch

    with torch.no_grad():
        mean = torch.as_tensor(mean, dtype=torch.float64)
        std = torch.as_tensor(std, dtype=torch.float64)
        W, bias = (head.W1, head.b1) if head.W1 is not None else (head.E, head.b)
        W_new = W.double() / std
        bias_new = bias.double() - W_new @ mean
        W.copy_(W_new.to(W.dtype))
        bias.copy_(bias_new.to(bias.dtype))


def model_priors(scores, rows=None) -> np.ndarray:
    """Mean observed score of each model over `rows` (default all), clipped to [0.01, 0.99] -> float64 [N]
    (0.5 for a model with no outcome there)."""
    y = np.asarray(scores, dtype=np.float64)
    if rows is not None:
        y = y[np.asarray(rows, dtype=np.int64)]
    seen = ~np.isnan(y)
    mean = np.where(seen.any(0), np.nansum(y, 0) / np.maximum(seen.sum(0), 1), 0.5)
    return np.clip(mean, 0.01, 0.99)


def prior_logits(scores: np.ndarray) -> np.ndarray:
    """logit of `model_priors(scores)`: each model's mean observed score, clipped to [0.01, 0.99] (0 if unseen)."""
    mean = model_priors(scores)
    return np.log(mean / (1 - mean)).astype(np.float32)


def merge_heads(heads) -> ScoringHead:
    """One head whose logits are the mean of `heads`' logits (an ensemble, exactly, as a single wider head).

    mean_m (E_m phi_m(x) + b_m) = [E_1 / M, ..., E_M / M] . [phi_1(x); ...; phi_M(x)] + mean_m b_m, so W1, b1 and
    E's columns are concatenated (H = sum of the members' H). Without a hidden layer E and b are averaged.
    """
    import torch

    heads = list(heads)
    first = heads[0]
    if any((h.d_in, h.n_models, h.hidden, h.act) != (first.d_in, first.n_models, first.hidden, first.act)
           for h in heads):
        raise ValueError("merge_heads needs heads of the same d_in, n_models, hidden and act")
    M = len(heads)
    hidden = None if first.hidden is None else first.hidden * M
    merged = ScoringHead(first.d_in, first.n_models, hidden=hidden, act=first.act)
    with torch.no_grad():
        if hidden is None:
            merged.E.copy_(torch.stack([h.E for h in heads]).mean(0))
        else:
            merged.W1.copy_(torch.cat([h.W1 for h in heads], 0))
            merged.b1.copy_(torch.cat([h.b1 for h in heads], 0))
            merged.E.copy_(torch.cat([h.E for h in heads], 1) / M)
        merged.b.copy_(torch.stack([h.b for h in heads]).mean(0))
    return merged.eval()


def train_head(features, scores, train_idx, val_idx, config: TrainConfig | None = None, progress: bool = True):
    """Fit a ScoringHead on rows `train_idx` of `features` [P, D] / `scores` [P, N] (NaN = missing).

    Early stopping watches the masked BCE on `val_idx`; with an empty `val_idx` all `config.epochs` run and the
    last weights are kept. Returns (head on CPU taking raw features, TrainHistory). Same inputs and config ->
    bit-identical weights (seeded torch RNG, forked so the caller's RNG state is untouched).
    With config.ensemble = M > 1, M members (seeds seed, seed+1, ...) are trained and merged (`merge_heads`)
    into one head of width M * hidden; the history is the first member's, all of them in `history.members`.
    """
    config = config if config is not None else TrainConfig()
    if config.ensemble == 1:
        return _train_single(features, scores, train_idx, val_idx, config, progress)
    members = [_train_single(features, scores, train_idx, val_idx,
                             replace(config, seed=config.seed + i, ensemble=1), progress)
               for i in range(config.ensemble)]
    history = replace(members[0][1], members=[h for _, h in members],
                      seconds=sum(h.seconds for _, h in members))
    return merge_heads([h for h, _ in members]), history


def _train_single(features, scores, train_idx, val_idx, config: TrainConfig, progress: bool):
    import torch
    from tqdm.auto import tqdm

    x, y, train_ix, val_ix = _check_inputs(features, scores, train_idx, val_idx)
    P, D = x.shape
    N = y.shape[1]
    mean = x[train_ix].mean(0, dtype=np.float64)
    std = x[train_ix].std(0, dtype=np.float64)
    std = np.where(std > 1e-6 * max(float(std.max()), 1e-12), std, 1.0)  # constant features: leave unscaled
    device = torch.device(config.device)
    xs = torch.from_numpy(((x - mean) / std).astype(np.float32)).to(device)
    mask_all = torch.from_numpy((~np.isnan(y)).astype(np.float32)).to(device)
    y_all = torch.from_numpy(np.nan_to_num(y, nan=0.0)).to(device)
    history = TrainHistory()
    start = time.perf_counter()

    with torch.random.fork_rng(devices=[]), torch_threads(config.num_threads):
        torch.manual_seed(config.seed)
        head = ScoringHead(D, N, hidden=config.hidden, act=config.act)
        with torch.no_grad():
            head.b.copy_(torch.from_numpy(prior_logits(y[train_ix])))
        head.to(device)
        decayed = [p for p in (head.W1, head.E) if p is not None]
        plain = [p for p in (head.b1, head.b) if p is not None]
        opt = torch.optim.AdamW([{"params": decayed, "weight_decay": config.weight_decay},
                                 {"params": plain, "weight_decay": 0.0}], lr=config.lr)
        gen = torch.Generator().manual_seed(config.seed)
        train_t = torch.from_numpy(train_ix)
        val_t = torch.from_numpy(val_ix).to(device)

        def logits_of(rows, train: bool):
            z = head.features(xs[rows])
            if train and config.dropout > 0:
                z = torch.nn.functional.dropout(z, config.dropout, training=True)
            return torch.nn.functional.linear(z, head.E, head.b)

        best_state, best_loss, bad_epochs = None, math.inf, 0
        bar = tqdm(range(config.epochs), desc="training head", unit="epoch", disable=not progress)
        for epoch in bar:
            head.train()
            order = train_t[torch.randperm(train_t.numel(), generator=gen)].to(device)
            total, count = 0.0, 0.0
            for s in range(0, order.numel(), config.batch_size):
                rows = order[s:s + config.batch_size]
                m = mask_all[rows]
                if m.sum() == 0:
                    continue
                loss = masked_bce(logits_of(rows, True), y_all[rows], m)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                total += float(loss.detach()) * float(m.sum())
                count += float(m.sum())
            history.train_loss.append(total / max(count, 1.0))
            if val_ix.size:
                head.eval()
                with torch.no_grad():
                    val_loss = float(masked_bce(logits_of(val_t, False), y_all[val_t], mask_all[val_t]))
                history.val_loss.append(val_loss)
                bar.set_postfix(train=f"{history.train_loss[-1]:.4f}", val=f"{val_loss:.4f}")
                if val_loss < best_loss:
                    best_loss, bad_epochs, history.best_epoch = val_loss, 0, epoch
                    best_state = copy.deepcopy(head.state_dict())
                else:
                    bad_epochs += 1
                    if bad_epochs >= config.patience:
                        history.stopped_early = True
                        break
            else:
                history.best_epoch = epoch
        bar.close()
        if best_state is not None:
            head.load_state_dict(best_state)

    head = head.cpu().eval()
    fold_standardisation(head, mean, std)
    history.seconds = time.perf_counter() - start
    return head, history
