"""The outcome table: which LLM got which prompt right, as a prompts x models table.

`OutcomeTable` holds, for P prompts and N models:
  scores        float32 [P, N]  in [0, 1] (1 = correct; soft scores allowed), NaN = no outcome recorded
  cost          float64 [P, N]  real USD per call where the source has it (RouterBench), NaN elsewhere; or None
  input_tokens  int32   [P]     prompt length in tokens (an estimate unless a tokenizer was given); or None
  output_tokens float32 [P, N]  observed output length in tokens (chars / 4 where only characters are known); or None
  meta          dict of per-prompt 1-D arrays [P] (`id`, `task`, `subject`, `split`, ...)

Token estimates come from the one token counter in `routoo_fast.costs` (ceil(chars / 4) without a tokenizer).
The loaders, one per source, live beside this module (`routoo_fast.data.mmlu_pro`, `.routellm`, `.routerbench`,
`.zeroeval`, `.long`); the file formats they read, one reader each, in `routoo_fast.data.readers`.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np

__all__ = ["OutcomeTable"]


def _as_float_array(name: str, value, dtype, shape: tuple[int, ...]) -> np.ndarray:
    arr = np.asarray(value)
    if arr.dtype.kind not in "biuf":
        raise TypeError(f"{name} must be a numeric array, got dtype {arr.dtype}")
    if arr.shape != shape:
        raise ValueError(f"{name} must have shape {shape}, got {arr.shape}")
    return np.ascontiguousarray(arr, dtype=dtype)


@dataclass
class OutcomeTable:
    """Scores of N models on P prompts (see the module docstring for each field's shape and meaning)."""

    prompts: list[str]
    models: list[str]
    scores: np.ndarray
    cost: np.ndarray | None = None
    input_tokens: np.ndarray | None = None
    output_tokens: np.ndarray | None = None
    meta: dict[str, np.ndarray] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if isinstance(self.prompts, np.ndarray) and self.prompts.ndim == 1:
            self.prompts = self.prompts.tolist()
        if isinstance(self.prompts, (str, bytes)) or not isinstance(self.prompts, Sequence):
            raise TypeError(f"prompts must be a list of str, got {type(self.prompts).__name__}")
        self.prompts = list(self.prompts)
        for i, p in enumerate(self.prompts):
            if not isinstance(p, str):
                raise TypeError(f"prompts[{i}] must be str, got {type(p).__name__}")
        if isinstance(self.models, np.ndarray) and self.models.ndim == 1:
            self.models = self.models.tolist()
        if isinstance(self.models, (str, bytes)) or not isinstance(self.models, Sequence):
            raise TypeError(f"models must be a list of str, got {type(self.models).__name__}")
        self.models = list(self.models)
        for i, m in enumerate(self.models):
            if not isinstance(m, str) or not m:
                raise TypeError(f"models[{i}] must be a non-empty str, got {m!r}")
        if len(set(self.models)) != len(self.models):
            dup = sorted({m for m in self.models if self.models.count(m) > 1})
            raise ValueError(f"models must be unique, duplicated: {dup}")
        P, N = len(self.prompts), len(self.models)

        self.scores = _as_float_array("scores", self.scores, np.float32, (P, N))
        bad = ~np.isnan(self.scores) & ((self.scores < 0) | (self.scores > 1))
        if bad.any():
            p, n = np.argwhere(bad)[0]
            raise ValueError(
                f"scores must lie in [0, 1] or be NaN; scores[{p}, {n}] = {self.scores[p, n]} (model {self.models[n]!r})"
            )
        if self.cost is not None:
            self.cost = _as_float_array("cost", self.cost, np.float64, (P, N))
            if np.isinf(self.cost).any() or (self.cost < 0).any():
                p, n = np.argwhere(np.isinf(self.cost) | (self.cost < 0))[0]
                raise ValueError(f"cost must be finite and >= 0 or NaN; cost[{p}, {n}] = {self.cost[p, n]}")
        if self.input_tokens is not None:
            arr = np.asarray(self.input_tokens)
            if arr.dtype.kind not in "iu" and not (arr.dtype.kind == "f" and np.all(np.isfinite(arr)) and np.all(arr == np.round(arr))):
                raise TypeError(f"input_tokens must be integer counts, got dtype {arr.dtype}")
            if arr.shape != (P,):
                raise ValueError(f"input_tokens must have shape ({P},), got {arr.shape}")
            if (arr < 0).any():
                raise ValueError(f"input_tokens must be >= 0, got min {arr.min()}")
            self.input_tokens = np.ascontiguousarray(arr, dtype=np.int32)
        if self.output_tokens is not None:
            self.output_tokens = _as_float_array("output_tokens", self.output_tokens, np.float32, (P, N))
            if np.isinf(self.output_tokens).any() or (self.output_tokens < 0).any():
                raise ValueError("output_tokens must be finite and >= 0 or NaN")
        if not isinstance(self.meta, dict):
            raise TypeError(f"meta must be a dict of per-prompt arrays, got {type(self.meta).__name__}")
        meta = {}
        for key, col in self.meta.items():
            if not isinstance(key, str):
                raise TypeError(f"meta keys must be str, got {key!r}")
            arr = np.asarray(col)
            if arr.shape != (P,):
                raise ValueError(f"meta[{key!r}] must have shape ({P},), got {arr.shape}")
            meta[key] = arr
        self.meta = meta

    @property
    def n_prompts(self) -> int:
        return len(self.prompts)

    @property
    def n_models(self) -> int:
        return len(self.models)

    def model_index(self, name: str) -> int:
        """Column of model `name`; ValueError naming it if it is not in the table."""
        try:
            return self.models.index(name)
        except ValueError:
            raise ValueError(f"unknown model {name!r}; the table has {self.models}") from None

    def subset(self, rows) -> "OutcomeTable":
        """The table restricted to `rows` (integer indices or a boolean mask of length P), in that order."""
        idx = np.asarray(rows)
        if idx.size == 0 and idx.dtype != bool:
            idx = idx.astype(np.intp)  # an empty list arrives as float64
        if idx.dtype == bool:
            if idx.shape != (self.n_prompts,):
                raise ValueError(f"boolean rows must have shape ({self.n_prompts},), got {idx.shape}")
            idx = np.flatnonzero(idx)
        elif idx.dtype.kind in "iu" and idx.ndim == 1:
            if idx.size and (idx.min() < -self.n_prompts or idx.max() >= self.n_prompts):
                raise ValueError(f"row index out of range for {self.n_prompts} prompts")
        else:
            raise TypeError(f"rows must be a 1-D integer index or boolean mask, got dtype {idx.dtype} ndim {idx.ndim}")
        return OutcomeTable(
            prompts=[self.prompts[i] for i in idx],
            models=list(self.models),
            scores=self.scores[idx],
            cost=None if self.cost is None else self.cost[idx],
            input_tokens=None if self.input_tokens is None else self.input_tokens[idx],
            output_tokens=None if self.output_tokens is None else self.output_tokens[idx],
            meta={k: v[idx] for k, v in self.meta.items()},
        )

    def select_models(self, names: Iterable[str]) -> "OutcomeTable":
        """The table with only the models `names`, in that order (unknown name -> ValueError naming it)."""
        names = [names] if isinstance(names, str) else list(names)
        cols = [self.model_index(n) for n in names]
        return OutcomeTable(
            prompts=list(self.prompts),
            models=names,
            scores=self.scores[:, cols],
            cost=None if self.cost is None else self.cost[:, cols],
            input_tokens=None if self.input_tokens is None else self.input_tokens.copy(),
            output_tokens=None if self.output_tokens is None else self.output_tokens[:, cols],
            meta={k: v.copy() for k, v in self.meta.items()},
        )

    def split(self, name: str) -> "OutcomeTable":
        """Rows whose meta['split'] == name (compute it with `split_by_hash(table.prompts)` if absent)."""
        if "split" not in self.meta:
            raise ValueError("table has no meta['split']; set it with split_by_hash(table.prompts)")
        return self.subset(self.meta["split"] == name)

    def __repr__(self) -> str:
        seen = np.isfinite(self.scores).mean() if self.scores.size else 0.0
        return (
            f"OutcomeTable({self.n_prompts} prompts x {self.n_models} models, {seen:.1%} observed, "
            f"cost={'yes' if self.cost is not None else 'no'}, meta={sorted(self.meta)})"
        )
