"""Per-prompt expected output length of each model, from the pooled prompt encoding.

A model's answer to a code task is hundreds of tokens, to a multiple-choice question one: a cost model that
prices every prompt with the model's MEAN output length mis-prices both, and the router then upgrades the wrong
prompts. This is a ridge regression per model in log space on the encoding the predictor already computed:

    out[b, n] = scale[n] * expm1(max(x[b] . W[:, n] + c[n], 0))          x [B, D] pooled encoding, out [B, N]

W [D, N], c [N] are fitted on log1p(observed output tokens) (the standardisation of x is folded in); the ridge
strength is chosen on validation prompts by squared error in log space, then the fit is redone on train + val.
scale [N] makes each model's mean prediction over the fit rows equal its mean observed output (a log-space fit
predicts a geometric mean; a cost needs the arithmetic one). A model without any observed output keeps a constant
prediction: its fallback length. Measured on RouterBench (real per-call costs, 5-fold CV, docs/EVALUATION.md):
the router's AIQ 0.8438 -> 0.8514 with these per-prompt costs instead of per-model means.
"""
from __future__ import annotations

import math

import numpy as np

__all__ = ["OutputLengthModel", "RIDGE_ALPHAS"]

RIDGE_ALPHAS = (10.0, 100.0, 1000.0, 10000.0)  # on standardised encodings; chosen on val


def _check_features(x, name: str = "features", d: int | None = None) -> np.ndarray:
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 2 or (d is not None and x.shape[1] != d):
        want = f"[B, {d}]" if d is not None else "[B, D]"
        raise ValueError(f"{name} must be {want}, got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError(f"{name} has NaN or infinite values")
    return x


def _ridge_log(Z: np.ndarray, out: np.ndarray, rows: np.ndarray, alpha: float, fallback: np.ndarray):
    """Per model n: argmin_w sum_{i in rows, out[i, n] seen} (Z[i] w - log1p(out[i, n]))^2 + alpha |w[:-1]|^2
    (the last column of Z is the intercept, not penalised) -> W [D + 1, N]; a model never seen: log1p(fallback)."""
    D1 = Z.shape[1]
    penalty = alpha * np.eye(D1)
    penalty[-1, -1] = 0.0
    W = np.zeros((D1, out.shape[1]))
    seen = np.isfinite(out[rows])
    full = seen.all(0)
    if full.any():  # models observed on every row share one Gram matrix
        A = Z[rows]
        W[:, full] = np.linalg.solve(A.T @ A + penalty, A.T @ np.log1p(out[rows][:, full]))
    for n in np.flatnonzero(~full):
        r = rows[seen[:, n]]
        if r.size == 0:
            W[-1, n] = math.log1p(fallback[n])
            continue
        A = Z[r]
        W[:, n] = np.linalg.solve(A.T @ A + penalty, A.T @ np.log1p(out[r, n]))
    return W


class OutputLengthModel:
    """out = scale * expm1(max(x W + c, 0)): expected output tokens [B, N] of N models from pooled encodings x [B, D].

    weight [D, N], bias [N], scale [N]; `fit` learns them; `predict` applies them.
    """

    def __init__(self, weight, bias, scale, alpha: float = math.nan, val_rmse_log: float = math.nan):
        W = np.asarray(weight, dtype=np.float64)
        if W.ndim != 2:
            raise ValueError(f"weight must be 2-D [D, N], got shape {W.shape}")
        c = np.asarray(bias, dtype=np.float64)
        s = np.asarray(scale, dtype=np.float64)
        for name, a in (("bias", c), ("scale", s)):
            if a.shape != (W.shape[1],):
                raise ValueError(f"{name} must have shape ({W.shape[1]},), got {a.shape}")
        for name, a in (("weight", W), ("bias", c), ("scale", s)):
            if not np.isfinite(a).all():
                raise ValueError(f"{name} has NaN or infinite values")
        if (s < 0).any():
            raise ValueError("scale must be >= 0")
        self.weight, self.bias, self.scale = W, c, s
        self.alpha, self.val_rmse_log = float(alpha), float(val_rmse_log)

    @property
    def d_in(self) -> int:
        return self.weight.shape[0]

    @property
    def n_models(self) -> int:
        return self.weight.shape[1]

    def predict(self, features) -> np.ndarray:
        """Expected output tokens float64 [B, N] (>= 0) for pooled encodings features [B, D]."""
        x = _check_features(features, d=self.d_in)
        return self.scale * np.expm1(np.maximum(x @ self.weight + self.bias, 0.0))

    @classmethod
    def fit(cls, features, output_tokens, train_idx, val_idx, fallback, alphas=RIDGE_ALPHAS) -> "OutputLengthModel":
        """Choose alpha on val_idx (mean squared log1p error over seen entries), refit on train + val.

        features [P, D] pooled encodings; output_tokens [P, N] observed output tokens per call (NaN = unknown);
        fallback [N]: the length of a model with no observed output (e.g. the cost model's per-model expectation).
        """
        x = _check_features(features)
        out = np.asarray(output_tokens, dtype=np.float64)
        if out.ndim != 2 or out.shape[0] != x.shape[0]:
            raise ValueError(f"output_tokens must be [P, N] with P = {x.shape[0]}, got shape {out.shape}")
        seen = np.isfinite(out)
        if (out[seen] < 0).any():
            raise ValueError("output_tokens must be >= 0 (NaN = unknown)")
        fb = np.asarray(fallback, dtype=np.float64)
        if fb.shape != (out.shape[1],) or not np.isfinite(fb).all() or (fb < 0).any():
            raise ValueError(f"fallback must be finite, >= 0 and of shape ({out.shape[1]},), got {fb.shape}")
        tr = np.asarray(train_idx, dtype=np.int64)
        va = np.asarray(val_idx, dtype=np.int64)
        if tr.size == 0:
            raise ValueError("train_idx is empty")
        if not alphas or any(not (a > 0) for a in alphas):
            raise ValueError(f"alphas must be positive numbers, got {alphas!r}")
        fit_rows = np.concatenate([tr, va])

        def design(rows):
            mu = x[rows].mean(0)
            sd = x[rows].std(0)
            sd = np.where(sd > 1e-6 * max(float(sd.max()), 1e-12), sd, 1.0)
            return mu, sd, np.c_[(x - mu) / sd, np.ones(len(x))]

        alpha, val_rmse = alphas[len(alphas) // 2], math.nan
        val_seen = seen[va]
        if va.size and val_seen.any() and len(alphas) > 1:
            _, _, Z = design(tr)
            errors = []
            for a in alphas:
                pred = Z[va] @ _ridge_log(Z, out, tr, a, fb)
                errors.append(float(np.mean((np.maximum(pred, 0.0) - np.log1p(out[va]))[val_seen] ** 2)))
            best = int(np.argmin(errors))
            alpha, val_rmse = float(alphas[best]), math.sqrt(errors[best])
        mu, sd, Z = design(fit_rows)
        W = _ridge_log(Z, out, fit_rows, alpha, fb)
        weight = W[:-1] / sd[:, None]  # fold the standardisation in: z = (x - mu) / sd
        bias = W[-1] - (mu / sd) @ W[:-1]
        raw = np.expm1(np.maximum(x[fit_rows] @ weight + bias, 0.0))
        scale = np.ones(out.shape[1])
        for n in range(out.shape[1]):
            s = seen[fit_rows, n]
            if s.any() and raw[s, n].mean() > 0:
                scale[n] = out[fit_rows[s], n].mean() / raw[s, n].mean()
        return cls(weight, bias, scale, alpha=alpha, val_rmse_log=val_rmse)

    def with_constant_model(self, tokens: float) -> "OutputLengthModel":
        """This model plus one more column predicting `tokens` for every prompt (a model added without output
        lengths to learn from, e.g. by `train.add_model`)."""
        t = float(tokens)
        if not math.isfinite(t) or t < 0:
            raise ValueError(f"tokens must be finite and >= 0, got {tokens!r}")
        return OutputLengthModel(np.c_[self.weight, np.zeros(self.d_in)], np.r_[self.bias, math.log1p(t)],
                                 np.r_[self.scale, 1.0], alpha=self.alpha, val_rmse_log=self.val_rmse_log)

    def tensors(self) -> dict:
        """{weight [D, N], bias [N], scale [N]} float64 numpy arrays, for saving."""
        return {"weight": self.weight, "bias": self.bias, "scale": self.scale}

    def describe(self) -> dict:
        """JSON-able summary (None for an unknown alpha / validation error, e.g. a model built by hand)."""
        known = lambda v: None if math.isnan(v) else v  # noqa: E731
        return {"d_in": self.d_in, "n_models": self.n_models, "alpha": known(self.alpha),
                "val_rmse_log": known(self.val_rmse_log)}

    def __repr__(self) -> str:
        return f"OutputLengthModel(D={self.d_in}, N={self.n_models}, alpha={self.alpha:g})"
