"""Cost model: what one call of each LLM on each prompt is expected to cost, in USD.

Prices are USD per 1M tokens (input and output separately), from `assets/prices.csv`
(columns model, input_usd_per_mtok, output_usd_per_mtok, open_weights, source; `source` names where each price comes
from, and says "estimate" where it is one).

For a prompt p and model n, with per-token prices pi[n] = input_usd_per_mtok / 1e6 and po[n] = output / 1e6:
    C[p, n] = table.cost[p, n]                                    where the data has a real per-call cost (RouterBench)
            = input_tokens[p] * pi[n] + expected_output_tokens[n] * po[n]     elsewhere
expected_output_tokens[n] is model n's mean observed output length over the table (NaN entries ignored): a router
does not know how long an answer will be before the call, only how verbose each model tends to be.
"""
from __future__ import annotations

import csv
import dataclasses
import io
import math
import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np

from ._atomic import atomic_write_text

__all__ = ["ModelPrice", "PriceTable", "expected_cost", "expected_output_tokens", "call_costs", "costs_for_prompts",
           "DEFAULT_PRICES", "CHARS_PER_TOKEN", "prompt_tokens", "estimate_tokens", "count_tokens"]

DEFAULT_PRICES = Path(__file__).resolve().parent / "assets" / "prices.csv"
COLUMNS = ("model", "input_usd_per_mtok", "output_usd_per_mtok", "open_weights", "source")
CHARS_PER_TOKEN = 4.0


# ------------------------------------------------------------------------------------------ the token counter
def prompt_tokens(text: str) -> int:
    """Tokenizer-free token estimate of one text: ceil(len(text) / 4) (about 4 characters per token of English
    BPE vocabularies). The one estimate of the package: costs, the data loaders and the micro-batcher use it."""
    return math.ceil(len(text) / CHARS_PER_TOKEN)


def estimate_tokens(texts: Sequence[str]) -> np.ndarray:
    """`prompt_tokens` of each text -> int32 [B]."""
    return np.array([prompt_tokens(t) for t in texts], dtype=np.int32)


def count_tokens(texts: Sequence[str], tokenizer: Callable[[str], Sequence[int]] | None = None) -> np.ndarray:
    """Token counts int32 [B]: len(tokenizer(text)) if a tokenizer is given, else `estimate_tokens`."""
    if tokenizer is None:
        return estimate_tokens(texts)
    if not callable(tokenizer):
        raise TypeError(f"tokenizer must be callable (text -> token ids), got {type(tokenizer).__name__}")
    return np.array([len(tokenizer(t)) for t in texts], dtype=np.int32)


def _check_price(value, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{what} must be a number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{what} must be finite and >= 0, got {value}")
    return value


@dataclass(frozen=True)
class ModelPrice:
    """One model's price: USD per 1M input tokens and per 1M output tokens."""

    input_usd_per_mtok: float
    output_usd_per_mtok: float
    open_weights: bool = False
    source: str = ""

    def __post_init__(self) -> None:
        object.__setattr__(self, "input_usd_per_mtok", _check_price(self.input_usd_per_mtok, "input_usd_per_mtok"))
        object.__setattr__(self, "output_usd_per_mtok", _check_price(self.output_usd_per_mtok, "output_usd_per_mtok"))
        if not isinstance(self.open_weights, (bool, np.bool_)):
            raise TypeError(f"open_weights must be bool, got {type(self.open_weights).__name__}")
        object.__setattr__(self, "open_weights", bool(self.open_weights))
        if not isinstance(self.source, str):
            raise TypeError(f"source must be str, got {type(self.source).__name__}")


def _parse_bool(text: str, where: str) -> bool:
    low = text.strip().lower()
    if low in ("true", "1", "yes"):
        return True
    if low in ("false", "0", "no"):
        return False
    raise ValueError(f"{where}: open_weights must be true or false, got {text!r}")


class PriceTable:
    """Prices per model name. Immutable: `with_overrides` returns a new table."""

    def __init__(self, prices: Mapping[str, ModelPrice]):
        table = {}
        for name, price in prices.items():
            if not isinstance(name, str) or not name:
                raise TypeError(f"model names must be non-empty str, got {name!r}")
            if not isinstance(price, ModelPrice):
                raise TypeError(f"price of {name!r} must be a ModelPrice, got {type(price).__name__}")
            table[name] = price
        self._prices = table

    @classmethod
    def load(cls, path: str | os.PathLike | None = None) -> "PriceTable":
        """Read a prices CSV (default: the shipped assets/prices.csv); errors name the file and line."""
        path = DEFAULT_PRICES if path is None else Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"PriceTable.load: no such file {path}")
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            if reader.fieldnames is None or list(reader.fieldnames)[: len(COLUMNS)] != list(COLUMNS):
                raise ValueError(f"{path}:1: header must be {','.join(COLUMNS)}, got {reader.fieldnames}")
            prices: dict[str, ModelPrice] = {}
            for row in reader:
                where = f"{path}:{reader.line_num}"
                if None in row or any(row[c] is None for c in COLUMNS):
                    raise ValueError(f"{where}: expected {len(COLUMNS)} fields")
                name = row["model"].strip()
                if not name:
                    raise ValueError(f"{where}: empty model name")
                if name in prices:
                    raise ValueError(f"{where}: model {name!r} listed twice")
                try:
                    pin, pout = float(row["input_usd_per_mtok"]), float(row["output_usd_per_mtok"])
                    prices[name] = ModelPrice(pin, pout, _parse_bool(row["open_weights"], where), row["source"])
                except (TypeError, ValueError) as e:
                    msg = str(e) if str(e).startswith(str(path)) else f"{where}: model {name!r}: {e}"
                    raise ValueError(msg) from None
        return cls(prices)

    def save(self, path: str | os.PathLike) -> None:
        """Write the table as a prices CSV (atomically)."""
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(COLUMNS)
        for name, p in self._prices.items():
            writer.writerow([name, repr(p.input_usd_per_mtok), repr(p.output_usd_per_mtok),
                             "true" if p.open_weights else "false", p.source])
        atomic_write_text(path, buf.getvalue())

    @property
    def models(self) -> list[str]:
        return list(self._prices)

    def __contains__(self, name: object) -> bool:
        return name in self._prices

    def __len__(self) -> int:
        return len(self._prices)

    def __repr__(self) -> str:
        return f"PriceTable({len(self)} models)"

    def get(self, model: str) -> ModelPrice:
        """The price of `model`; ValueError naming it if it has none."""
        try:
            return self._prices[model]
        except KeyError:
            raise ValueError(
                f"unknown model {model!r}: no price for it; add one with PriceTable.with_overrides"
                f"({{{model!r}: (input_usd_per_mtok, output_usd_per_mtok)}})"
            ) from None

    def with_overrides(self, overrides: Mapping[str, object]) -> "PriceTable":
        """A new table with prices replaced or added. Values: a ModelPrice, an (input, output) pair of USD per 1M
        tokens, or a dict with any of ModelPrice's fields (missing fields keep the old price's values)."""
        prices = dict(self._prices)
        for name, value in overrides.items():
            if isinstance(value, ModelPrice):
                price = value
            elif isinstance(value, Mapping):
                unknown = set(value) - set(ModelPrice.__dataclass_fields__)
                if unknown:
                    raise ValueError(f"override for {name!r}: unknown fields {sorted(unknown)}")
                if name in prices:
                    price = replace(prices[name], **value)
                else:
                    missing = {"input_usd_per_mtok", "output_usd_per_mtok"} - set(value)
                    if missing:
                        raise ValueError(f"new model {name!r} needs {sorted(missing)}")
                    price = ModelPrice(**{"source": "user override", **value})
            elif isinstance(value, (tuple, list)) and len(value) == 2:
                old = prices.get(name)
                price = ModelPrice(value[0], value[1], old.open_weights if old else False, "user override")
            else:
                raise TypeError(
                    f"override for {name!r} must be a ModelPrice, an (input, output) pair or a dict, got {value!r}"
                )
            prices[name] = price
        return PriceTable(prices)

    def to_dict(self, models: Sequence[str] | None = None) -> dict[str, dict]:
        """JSON-able {model: {input_usd_per_mtok, output_usd_per_mtok, open_weights, source}} (all or `models`)."""
        names = self.models if models is None else list(models)
        return {m: dataclasses.asdict(self.get(m)) for m in names}

    @classmethod
    def from_dict(cls, data: Mapping[str, Mapping]) -> "PriceTable":
        """Inverse of `to_dict`; each value needs input_usd_per_mtok and output_usd_per_mtok."""
        if not isinstance(data, Mapping):
            raise TypeError(f"prices must be a mapping of model -> price fields, got {type(data).__name__}")
        return cls({}).with_overrides(dict(data))

    def per_token(self, models: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """(input, output) prices in USD per token, float64 [N] each, for `models` in order."""
        ps = [self.get(m) for m in models]
        pin = np.array([p.input_usd_per_mtok for p in ps], dtype=np.float64) / 1e6
        pout = np.array([p.output_usd_per_mtok for p in ps], dtype=np.float64) / 1e6
        return pin, pout


def expected_output_tokens(table) -> np.ndarray:
    """Mean observed output tokens per model over the table -> float64 [N]; NaN where a model has none."""
    if table.output_tokens is None:
        return np.full(table.n_models, np.nan)
    out = table.output_tokens.astype(np.float64)
    seen = np.isfinite(out)
    total = np.where(seen, out, 0.0).sum(axis=0)
    count = seen.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def call_costs(input_tokens, input_usd_per_tok, output_usd_per_tok, expected_output) -> np.ndarray:
    """Expected USD per call for unseen prompts: C[b, n] = input_tokens[b] * pi[n] + expected_output[n] * po[n].

    input_tokens [B] (>= 0), prices per token [N] (>= 0), expected_output tokens [N] (>= 0) -> float64 [B, N].
    """
    tok = np.asarray(input_tokens, dtype=np.float64)
    pin = np.asarray(input_usd_per_tok, dtype=np.float64)
    pout = np.asarray(output_usd_per_tok, dtype=np.float64)
    eo = np.asarray(expected_output, dtype=np.float64)
    if tok.ndim != 1:
        raise ValueError(f"input_tokens must be 1-D [B], got shape {tok.shape}")
    if pin.ndim != 1 or pout.shape != pin.shape or eo.shape != pin.shape:
        raise ValueError(
            f"input_usd_per_tok, output_usd_per_tok, expected_output must be 1-D of one length N, got "
            f"{pin.shape}, {pout.shape}, {eo.shape}"
        )
    for name, arr in (("input_tokens", tok), ("input_usd_per_tok", pin), ("output_usd_per_tok", pout),
                      ("expected_output", eo)):
        if not np.all(np.isfinite(arr)) or (arr < 0).any():
            raise ValueError(f"{name} must be finite and >= 0")
    return tok[:, None] * pin[None, :] + (eo * pout)[None, :]


def expected_cost(table, prices: PriceTable, output_tokens=None) -> np.ndarray:
    """Expected USD per call C float64 [P, N] for an OutcomeTable (formula in the module docstring).

    output_tokens: expected output tokens per model, [N] array or {model: tokens}; default
    `expected_output_tokens(table)`. input tokens: table.input_tokens, else ceil(chars / 4) of each prompt.
    A model with no price, or needing an output-length estimate it does not have, raises ValueError naming it.
    """
    if not isinstance(prices, PriceTable):
        raise TypeError(f"prices must be a PriceTable, got {type(prices).__name__}")
    P, N = table.n_prompts, table.n_models
    pin, pout = prices.per_token(table.models)
    if output_tokens is None:
        eo = expected_output_tokens(table)
    elif isinstance(output_tokens, Mapping):
        missing = [m for m in table.models if m not in output_tokens]
        if missing:
            raise ValueError(f"output_tokens has no entry for models {missing}")
        eo = np.array([float(output_tokens[m]) for m in table.models], dtype=np.float64)
    else:
        eo = np.asarray(output_tokens, dtype=np.float64)
        if eo.shape != (N,):
            raise ValueError(f"output_tokens must have shape ({N},), got {eo.shape}")
    if output_tokens is not None and (np.isnan(eo).any() or (eo < 0).any() or np.isinf(eo).any()):
        raise ValueError("output_tokens must be finite and >= 0")

    real = np.isfinite(table.cost) if table.cost is not None else np.zeros((P, N), dtype=bool)
    need = ~real.all(axis=0) & np.isnan(eo)
    if need.any():
        names = [table.models[n] for n in np.flatnonzero(need)]
        raise ValueError(
            f"no output-length data for models {names} and some of their calls have no real cost; "
            f"pass output_tokens= (expected output tokens per model)"
        )
    tok = table.input_tokens if table.input_tokens is not None else estimate_tokens(table.prompts)
    C = call_costs(tok, pin, pout, np.nan_to_num(eo, nan=0.0))
    if real.any():
        C = np.where(real, table.cost, C)
    return C


def costs_for_prompts(prompts: Sequence[str], models: Sequence[str], prices: PriceTable, expected_output,
                      tokenizer=None) -> np.ndarray:
    """Expected USD per call of each of `models` on new `prompts` -> float64 [B, N] (`call_costs` with input tokens
    counted by `count_tokens(prompts, tokenizer)`; expected_output: [N] array or {model: tokens})."""
    eo = per_model_tokens(expected_output, models, "expected_output")
    pin, pout = prices.per_token(models)
    return call_costs(count_tokens(prompts, tokenizer), pin, pout, eo)


def per_model_tokens(values, models: Sequence[str], name: str = "expected_output_tokens") -> np.ndarray:
    """Per-model token counts as float64 [N] in `models` order, from an [N] array or a {model: tokens} mapping;
    ValueError naming `name` for a missing model, a wrong shape, or a value that is not finite and >= 0."""
    if isinstance(values, Mapping):
        missing = [m for m in models if m not in values]
        if missing:
            raise ValueError(f"{name} has no entry for models {missing}")
        values = [values[m] for m in models]
    eo = np.asarray(values, dtype=np.float64)
    if eo.shape != (len(models),):
        raise ValueError(f"{name} must have shape ({len(models)},), got {eo.shape}")
    if not np.isfinite(eo).all() or (eo < 0).any():
        raise ValueError(f"{name} must be finite and >= 0")
    return eo
