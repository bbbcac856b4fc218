"""The generic long format: one row per (prompt, model) call, from .csv, .jsonl or .parquet."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from routoo_fast.costs import count_tokens
from routoo_fast.data.readers import iter_rows, require_file
from routoo_fast.data.table import OutcomeTable

__all__ = ["LONG_REQUIRED", "LONG_NUMERIC", "load_long", "load_outcomes"]


LONG_REQUIRED = ("prompt", "model", "score")
LONG_NUMERIC = ("cost", "input_tokens", "output_tokens")


def _number(value, what: str, where: str, upper: float | None = None, allow_missing: bool = True) -> float:
    if value is None or (isinstance(value, str) and value.strip() == ""):
        if allow_missing:
            return math.nan
        raise ValueError(f"{where}: {what} is missing")
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        low = value.strip().lower()
        if low in ("true", "false"):
            return 1.0 if low == "true" else 0.0
        try:
            value = float(low)
        except ValueError:
            raise ValueError(f"{where}: {what} must be a number, got {value!r}") from None
    if not isinstance(value, (int, float)):
        raise ValueError(f"{where}: {what} must be a number, got {type(value).__name__}")
    x = float(value)
    if math.isnan(x):
        if allow_missing:
            return x
        raise ValueError(f"{where}: {what} is NaN")
    if math.isinf(x) or x < 0 or (upper is not None and x > upper):
        bound = f"[0, {upper}]" if upper is not None else ">= 0"
        raise ValueError(f"{where}: {what} must be finite and in {bound}, got {x}")
    return x


def load_long(path, duplicates: str = "mean", tokenizer=None) -> OutcomeTable:
    """Load outcome logs in long format: one row per (prompt, model) call, from .csv, .jsonl or .parquet.

    Required columns: prompt (str), model (str), score (number in [0, 1], or true/false). Optional: cost (USD of the
    call), input_tokens (per prompt), output_tokens (of the call). Any other column goes to meta, per prompt (the
    value from the prompt's first row). Prompts and models keep their first-seen order.
    Several rows for one (prompt, model): duplicates="mean" averages score, cost and output_tokens over them
    (repeated calls of a model on one prompt estimate its success rate); duplicates="error" raises ValueError naming
    both lines. input_tokens: the first value given for the prompt, else `count_tokens(prompt, tokenizer)`.
    """
    if duplicates not in ("mean", "error"):
        raise ValueError(f"duplicates must be 'mean' or 'error', got {duplicates!r}")
    path = Path(path)
    require_file(path, "load_long")
    prow: dict[str, int] = {}
    mcol: dict[str, int] = {}
    cells: dict[tuple[int, int], list] = {}  # (p, n) -> [n_rows, score_sum, cost_sum, cost_n, out_sum, out_n, where]
    in_tokens: list[float] = []
    meta_rows: list[dict] = []
    extra_keys: list[str] = []
    for where, row in iter_rows(path, LONG_REQUIRED):
        prompt, model = row.get("prompt"), row.get("model")
        if not isinstance(prompt, str):
            raise ValueError(f"{where}: prompt must be a string, got {type(prompt).__name__}")
        if not isinstance(model, str) or not model.strip():
            raise ValueError(f"{where}: model must be a non-empty string, got {model!r}")
        score = _number(row.get("score"), "score", where, upper=1.0, allow_missing=False)
        cost = _number(row.get("cost"), "cost", where)
        out = _number(row.get("output_tokens"), "output_tokens", where)
        tok = _number(row.get("input_tokens"), "input_tokens", where)
        if not math.isnan(tok) and tok != round(tok):
            raise ValueError(f"{where}: input_tokens must be an integer, got {tok}")
        p = prow.setdefault(prompt, len(prow))
        n = mcol.setdefault(model, len(mcol))
        if p == len(in_tokens):
            in_tokens.append(tok)
            extras = {k: v for k, v in row.items() if k not in LONG_REQUIRED and k not in LONG_NUMERIC}
            for k in extras:
                if k not in extra_keys:
                    extra_keys.append(k)
            meta_rows.append(extras)
        elif math.isnan(in_tokens[p]):
            in_tokens[p] = tok
        cell = cells.get((p, n))
        if cell is None:
            cells[(p, n)] = [1, score, 0.0 if math.isnan(cost) else cost, int(not math.isnan(cost)),
                             0.0 if math.isnan(out) else out, int(not math.isnan(out)), where]
            continue
        if duplicates == "error":
            raise ValueError(f"{where}: duplicate row for model {model!r} on a prompt already given at {cell[6]}")
        cell[0] += 1
        cell[1] += score
        if not math.isnan(cost):
            cell[2] += cost
            cell[3] += 1
        if not math.isnan(out):
            cell[4] += out
            cell[5] += 1
    if not prow:
        raise ValueError(f"{path}: no rows (the file has no outcomes)")
    P, N = len(prow), len(mcol)
    scores = np.full((P, N), np.nan, dtype=np.float32)
    cost = np.full((P, N), np.nan)
    out = np.full((P, N), np.nan, dtype=np.float32)
    for (p, n), (k, s, cs, cn, os_, on, _) in cells.items():
        scores[p, n] = s / k
        if cn:
            cost[p, n] = cs / cn
        if on:
            out[p, n] = os_ / on
    prompts = list(prow)
    tok = np.array(in_tokens, dtype=np.float64)
    if np.isnan(tok).any():
        counted = count_tokens([prompts[i] for i in np.flatnonzero(np.isnan(tok))], tokenizer)
        tok[np.isnan(tok)] = counted
    meta = {}
    for k in extra_keys:
        values = [r.get(k) for r in meta_rows]
        meta[k] = np.array(values, dtype=object if any(isinstance(v, (list, dict)) for v in values) else None)
    return OutcomeTable(
        prompts=prompts,
        models=list(mcol),
        scores=scores,
        cost=cost if np.isfinite(cost).any() else None,
        input_tokens=tok.astype(np.int32),
        output_tokens=out if np.isfinite(out).any() else None,
        meta=meta,
    )


def load_outcomes(source="default", duplicates: str = "error", tokenizer=None) -> OutcomeTable:
    """The outcome table `routoo-fast train` / `eval` read: "default" = the bundled MMLU-Pro part
    (`mmlu_pro.load_default`), else a long-format file (`load_long`; repeated (prompt, model) rows are an error
    unless duplicates="mean")."""
    if source in (None, "default"):
        from routoo_fast.data.mmlu_pro import load_default

        return load_default(tokenizer)
    return load_long(source, duplicates=duplicates, tokenizer=tokenizer)
