"""Add a new LLM to a trained router from K labelled prompts, without retraining anything else.

The head's shared features z = phi(x) [K, H] stay frozen; only the new model's row e [H] of E and its bias c
are fitted, by L2-regularised logistic regression (soft targets allowed, NaN outcomes dropped):

    minimise  sum_k BCE(sigmoid(z_k . e + c), y_k)  +  (l2 / 2) ||e - e0||^2

e0 = mean of the existing rows of E: with few labels the new model starts out like an average model and moves
away only as far as its data say (the bias c is not penalised). Solved by Newton's method (IRLS) in float64
with step halving, a few milliseconds for K in the hundreds. With l2="auto", l2 is picked from a grid by
5-fold cross-validated log loss on the K prompts.
"""
from __future__ import annotations

import math

import numpy as np

L2_GRID = (0.3, 1.0, 3.0, 10.0, 30.0, 100.0, 300.0, 1000.0, 3000.0)


def _objective(Z1, y, theta, pen, theta0):
    import torch

    logits = Z1 @ theta
    d = theta - theta0
    # BCE with logits, stable: log(1 + exp(l)) - y l
    return float((torch.nn.functional.softplus(logits) - y * logits).sum() + 0.5 * (d * pen * d).sum())


def fit_logistic(Z, y, l2: float, e0=None, max_iter: int = 100, tol: float = 1e-10):
    """Newton/IRLS for the objective in the module docstring: Z [K, H], y [K] in [0, 1] -> (e [H], c).

    float64 torch on one CPU thread: the systems are small (H + 1 unknowns), where BLAS threads only contend.
    """
    import torch

    from routoo_fast.train.fit import torch_threads

    with torch_threads(1):
        Z = torch.as_tensor(np.asarray(Z, dtype=np.float64))
        y = torch.as_tensor(np.asarray(y, dtype=np.float64))
        K, H = Z.shape
        e0 = torch.zeros(H, dtype=torch.float64) if e0 is None else torch.as_tensor(np.asarray(e0, np.float64))
        Z1 = torch.cat([Z, torch.ones(K, 1, dtype=torch.float64)], 1)
        pen = torch.cat([torch.full((H,), float(l2), dtype=torch.float64), torch.zeros(1, dtype=torch.float64)])
        theta0 = torch.cat([e0, torch.zeros(1, dtype=torch.float64)])  # no penalty on the bias
        mean = min(max(float(y.mean()), 1e-3), 1 - 1e-3)
        theta = torch.cat([e0, torch.tensor([math.log(mean / (1 - mean)) - float(Z.mean(0) @ e0)],
                                            dtype=torch.float64)])
        obj = _objective(Z1, y, theta, pen, theta0)
        for _ in range(max_iter):
            p = torch.sigmoid(Z1 @ theta)
            grad = Z1.T @ (p - y) + pen * (theta - theta0)
            hess = (Z1.T * (p * (1 - p))) @ Z1 + torch.diag(pen + 1e-9)
            step = torch.linalg.solve(hess, grad)
            t = 1.0
            while t >= 1e-8:  # step halving: the objective never goes up
                new_obj = _objective(Z1, y, theta - t * step, pen, theta0)
                if new_obj <= obj:
                    break
                t *= 0.5
            if t < 1e-8:
                break  # no step lowers the objective: at the optimum up to rounding
            converged = obj - new_obj <= tol * max(1.0, abs(obj))
            theta, obj = theta - t * step, new_obj
            if converged:
                break
        return theta[:H].numpy(), float(theta[H])


def choose_l2(Z, y, e0, grid=L2_GRID, folds: int = 5, seed: int = 0) -> float:
    """The l2 in `grid` with the lowest `folds`-fold cross-validated log loss (ties: the larger l2)."""
    K = len(y)
    folds = min(folds, K)
    fold_of = np.random.default_rng(seed).permutation(K) % folds
    best, best_loss = grid[-1], np.inf
    for l2 in sorted(grid, reverse=True):
        loss = 0.0
        for f in range(folds):
            tr, te = fold_of != f, fold_of == f
            if tr.sum() == 0 or te.sum() == 0:
                continue
            e, c = fit_logistic(Z[tr], y[tr], l2, e0)
            logit = Z[te] @ e + c
            loss += float((np.logaddexp(0.0, logit) - y[te] * logit).sum())
        if loss < best_loss - 1e-12:
            best, best_loss = l2, loss
    return float(best)


def fit_new_model(head, features, scores, l2="auto"):
    """Fit e [H], c for one new model on `features` [K, D] (raw pooled) and `scores` [K] -> (e, c, l2 used)."""
    import torch

    x = np.asarray(features, dtype=np.float32)
    y = np.asarray(scores, dtype=np.float64)
    if x.ndim != 2 or x.shape[1] != head.d_in:
        raise ValueError(f"features must be [K, {head.d_in}] (the head's input width), got shape {x.shape}")
    if y.shape != (x.shape[0],):
        raise ValueError(f"scores must be [K] with K = {x.shape[0]} (rows of features), got shape {y.shape}")
    if not np.isfinite(x).all():
        raise ValueError("features have NaN or infinite values")
    keep = ~np.isnan(y)
    x, y = x[keep], y[keep]
    if y.size == 0:
        raise ValueError("scores has no observed outcome (all NaN)")
    if np.isinf(y).any() or y.min() < 0 or y.max() > 1:
        raise ValueError("scores must be in [0, 1] with NaN for missing outcomes")
    with torch.no_grad():
        Z = head.features(torch.from_numpy(x)).double().numpy()
        e0 = head.E.detach().double().mean(0).numpy()
    if l2 == "auto":
        l2 = choose_l2(Z, y, e0) if y.size >= 10 else L2_GRID[len(L2_GRID) // 2]
    elif not (isinstance(l2, (int, float)) and np.isfinite(l2) and l2 > 0):
        raise ValueError(f"l2 must be a positive number or 'auto', got {l2!r}")
    e, c = fit_logistic(Z, y, float(l2), e0)
    return e, c, float(l2)


def extend_head(head, e, c):
    """A new ScoringHead scoring N+1 models: `head`'s weights unchanged, then row `e` [H] with bias `c`."""
    import torch

    from routoo_fast.head import ScoringHead

    new = ScoringHead(head.d_in, head.n_models + 1, hidden=head.hidden, act=head.act)
    with torch.no_grad():
        if head.W1 is not None:
            new.W1.copy_(head.W1)
            new.b1.copy_(head.b1)
        new.E.copy_(torch.cat([head.E.detach(), torch.as_tensor(e, dtype=head.E.dtype)[None, :]]))
        new.b.copy_(torch.cat([head.b.detach(), torch.tensor([c], dtype=head.b.dtype)]))
    return new.eval()


def add_model(base, scores, features=None, *, prompts=None, encoder=None, name: str | None = None, l2="auto",
              price=None, expected_output_tokens: float | None = None):
    """Add one model, labelled on K prompts, to `base` (a ScoringHead or a SavedRouter).

    scores [K] in [0, 1] (NaN = missing); either `features` [K, D] (raw pooled encodings) or `prompts` [K]
    (encoded with `encoder`, or for a SavedRouter with the encoder its config names).
    ScoringHead in -> ScoringHead out (N+1 models, the new one last).
    SavedRouter in -> SavedRouter out, with `name`, its `price` ((input, output) USD per 1M tokens or a price
    dict) and `expected_output_tokens` appended (a per-prompt output-length model gets a constant column for it);
    save it with `saved.save_router(path, ..., saved.cost_model)`.
    """
    from routoo_fast.saved import SavedRouter

    is_saved = isinstance(base, SavedRouter)
    head = base.head if is_saved else base
    if (features is None) == (prompts is None):
        raise ValueError("give exactly one of features [K, D] or prompts [K]")
    if prompts is not None:
        if encoder is None:
            if not is_saved:
                raise ValueError("prompts need an encoder (or pass features)")
            from routoo_fast.encoder import Encoder

            encoder = Encoder.from_spec(base.config["encoder"])
        features = encoder.encode(list(prompts))
    if is_saved:
        if not isinstance(name, str) or not name:
            raise ValueError("name must be the new model's non-empty name")
        if name in base.model_names:
            raise ValueError(f"model {name!r} is already in the router")
        if price is None or expected_output_tokens is None:
            raise ValueError("a SavedRouter needs the new model's price and expected_output_tokens")
        eo = float(expected_output_tokens)
        if not np.isfinite(eo) or eo < 0:
            raise ValueError(f"expected_output_tokens must be finite and >= 0, got {expected_output_tokens!r}")
    e, c, l2_used = fit_new_model(head, features, scores, l2)
    new_head = extend_head(head, e, c)
    if not is_saved:
        return new_head
    prices = base.prices.with_overrides({name: price})
    names = base.model_names + [name]
    config = dict(base.config)
    config["model_names"] = names
    config["prices"] = prices.to_dict(names)
    config["head"] = {**config["head"], "n_models": len(names)}
    config["expected_output_tokens"] = {**config["expected_output_tokens"], name: eo}
    metadata = dict(base.metadata)
    k = int(np.sum(~np.isnan(np.asarray(scores, dtype=np.float64))))
    metadata["added_models"] = list(metadata.get("added_models", [])) + [{"name": name, "k": k, "l2": l2_used}]
    config["metadata"] = metadata
    length = None if base.output_length is None else base.output_length.with_constant_model(eo)
    return SavedRouter(config=config, head=new_head, model_names=names, prices=prices,
                       expected_output_tokens=np.r_[base.expected_output_tokens, eo], metadata=metadata,
                       output_length=length)
