"""The one cost model: what one call of each LLM on each prompt is expected to cost, in USD.

Prices are USD per 1M tokens (input and output separately), from `assets/prices.csv` or the user's own file with
the same columns (model, input_usd_per_mtok, output_usd_per_mtok, open_weights, source; `source` names where each
price comes from, and says "estimate" where it is one).

For a prompt p and model n, with per-token prices pi[n] = input_usd_per_mtok / 1e6 and po[n] = output / 1e6:
    C[p, n] = input_tokens[p] * pi[n] + expected_output_tokens[n] * po[n]
input_tokens from the ONE token counter below (a tokenizer's count, else ceil(chars / 4)); expected_output_tokens[n]
is model n's mean observed output length on the training prompts (a router does not know how long an answer will
be before the call, only how verbose each model tends to be), a stated default where unknown, or calibrated to the
real per-call costs where the data has them. `CostModel` holds all of it; `CostModel.true` prices what calls really
cost, for scoring: the real cost where the data has it, else the call's observed output length.
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

__all__ = ["ModelPrice", "PriceTable", "CostModel", "expected_output_tokens", "call_costs", "DEFAULT_PRICES",
           "DEFAULT_OUTPUT_TOKENS", "CHARS_PER_TOKEN", "prompt_tokens", "estimate_tokens", "count_tokens"]

DEFAULT_PRICES = Path(__file__).resolve().parent / "assets" / "prices.csv"
COLUMNS = ("model", "input_usd_per_mtok", "output_usd_per_mtok", "open_weights", "source")
CHARS_PER_TOKEN = 4.0
# expected output tokens of a model whose output lengths are unknown (a mid-length answer; set your own with
# `routoo-fast train --output-tokens N` or an output_tokens column)
DEFAULT_OUTPUT_TOKENS = 256.0


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


class CostModel:
    """THE cost model: what one call of each of N models on a prompt is expected to cost, in USD.

        C[b, n] = input_tokens(prompt b) * input_price[n] + expected_output_tokens[n] * output_price[n]

    models [N]; prices: a PriceTable with every model; expected_output_tokens: [N] or {model: tokens};
    tokenizer: `text -> token ids` to count input tokens, None = the package's estimate ceil(chars / 4).
    equal_cost: every model costs the same (quality-only routing); `true` then returns the expected costs too.
    output_length: an `output_length.OutputLengthModel` (or None): per-prompt expected output tokens from the
    pooled prompt encoding; a caller that has them passes them to `costs(..., output_tokens=)` / `expected`
    instead of the per-model means (the Router does, from the encoding its predictor computed).
    Training builds it (`from_table`), the saved router stores it (prices, expected output tokens, `describe`),
    and the router, the server, the evaluation and the reproduction all price calls through it.
    """

    def __init__(self, models: Sequence[str], prices: PriceTable, expected_output_tokens, tokenizer=None,
                 equal_cost: bool = False, output_tokens_source: Mapping[str, str] | None = None,
                 output_length=None):
        if isinstance(models, str):
            raise TypeError("models must be a list of model names, got one str")
        names = tuple(models)
        if not names:
            raise ValueError("a cost model needs at least one model")
        if not isinstance(prices, PriceTable):
            raise TypeError(f"prices must be a PriceTable, got {type(prices).__name__}")
        missing = [m for m in names if m not in prices]
        if missing:
            raise ValueError(f"no price for models {missing}")
        if tokenizer is not None and not callable(tokenizer):
            raise TypeError(f"tokenizer must be callable (text -> token ids), got {type(tokenizer).__name__}")
        self.models = names
        self.prices = PriceTable({m: prices.get(m) for m in names})
        self.expected_output_tokens = per_model_tokens(expected_output_tokens, names)
        self.input_price, self.output_price = self.prices.per_token(names)  # USD per token, [N] each
        self._output_cost = self.expected_output_tokens * self.output_price  # [N]: the prompt-independent part
        self.tokenizer = tokenizer
        self.equal_cost = bool(equal_cost)
        self.output_tokens_source = dict(output_tokens_source or {})
        if output_length is not None and getattr(output_length, "n_models", None) != len(names):
            raise ValueError(f"output_length predicts {getattr(output_length, 'n_models', None)} models, the cost "
                             f"model has {len(names)}")
        self.output_length = output_length

    def __repr__(self) -> str:
        return f"CostModel({len(self.models)} models{', equal cost' if self.equal_cost else ''})"

    # ---- building it from data -------------------------------------------------------------------------
    @classmethod
    def from_table(cls, table, prices: PriceTable | None = None, rows=None,
                   default_output_tokens: float | None = None, equal_cost: bool = False, tokenizer=None) -> "CostModel":
        """The cost model of `table`'s models, learnt from rows `rows` (default all) of the table.

        prices: the user's PriceTable (default: the shipped one); every model needs a price, except one whose calls
        all carry a real `cost`: its price is then fitted to those costs (least squares of cost on input tokens,
        both terms >= 0). Expected output tokens of a model: its mean observed output length over `rows`; where a
        model has none, `default_output_tokens` (DEFAULT_OUTPUT_TOKENS); where its calls carry real costs, the
        value that makes the mean expected cost over those calls equal their mean real cost.
        equal_cost: every model gets one price and the default output length: quality-only routing.
        A model without a price raises ValueError naming every such model.
        """
        default = DEFAULT_OUTPUT_TOKENS if default_output_tokens is None else _check_price(
            default_output_tokens, "default_output_tokens")
        models = list(table.models)
        idx = np.arange(table.n_prompts) if rows is None else np.asarray(rows, dtype=np.int64)
        if equal_cost:
            same = ModelPrice(1.0, 1.0, False, "equal cost: every model priced alike (quality-only routing)")
            return cls(models, PriceTable({m: same for m in models}), np.full(len(models), default), tokenizer,
                       equal_cost=True, output_tokens_source={m: f"default {default:g}" for m in models})
        prices = PriceTable.load() if prices is None else prices
        if not isinstance(prices, PriceTable):
            raise TypeError(f"prices must be a PriceTable, got {type(prices).__name__}")
        tok = (table.input_tokens if table.input_tokens is not None
               else count_tokens(table.prompts, tokenizer)).astype(np.float64)[idx]
        cost = None if table.cost is None else np.asarray(table.cost, dtype=np.float64)[idx]
        observed = expected_output_tokens(table.subset(idx)) if table.output_tokens is not None else \
            np.full(len(models), np.nan)
        fitted, unpriced = {}, []
        for j, m in enumerate(models):
            if m in prices:
                continue
            if cost is not None and idx.size and np.isfinite(cost[:, j]).all():
                fitted[m] = _fit_price(tok, cost[:, j], observed[j] if np.isfinite(observed[j]) else default)
            else:
                unpriced.append(m)
        if unpriced:
            raise ValueError(f"no price for models {unpriced}: give a prices file with them (--prices FILE, columns "
                             f"{','.join(COLUMNS)}), a per-call cost column for all their rows, or --equal-cost "
                             f"for quality-only routing")
        prices = prices.with_overrides(fitted) if fitted else prices
        pin, pout = prices.per_token(models)
        eo = np.where(np.isfinite(observed), observed, default)
        source = {m: ("mean of observed outputs" if np.isfinite(observed[j]) else f"default {default:g}")
                  for j, m in enumerate(models)}
        if cost is not None:
            for j, m in enumerate(models):
                real = np.isfinite(cost[:, j])
                if not real.any() or pout[j] <= 0 or m in fitted:
                    continue
                eo[j] = max(0.0, (cost[real, j].mean() - tok[real].mean() * pin[j]) / pout[j])
                source[m] = f"calibrated to the mean real cost of {int(real.sum())} calls"
        for m in fitted:
            source[m] = "price fitted to the real costs of its calls"
        return cls(models, prices, eo, tokenizer, output_tokens_source=source)

    # ---- pricing calls -----------------------------------------------------------------------------------
    def input_tokens(self, prompts: Sequence[str]) -> np.ndarray:
        """Input tokens of each prompt, int32 [B] (the tokenizer's count, else ceil(chars / 4))."""
        return count_tokens(prompts, self.tokenizer)

    def costs(self, prompts: Sequence[str], input_tokens=None, output_tokens=None) -> np.ndarray:
        """C float64 [B, N]: expected USD of calling each model on each prompt (input_tokens [B]: counted if None;
        output_tokens [B, N]: per-prompt expected output tokens, e.g. `output_length.predict`; None = each model's
        expected_output_tokens)."""
        tok = self.input_tokens(prompts) if input_tokens is None else input_tokens
        tok = np.asarray(tok, dtype=np.float64)
        if tok.shape != (len(prompts),):
            raise ValueError(f"input_tokens must have shape ({len(prompts)},), got {tok.shape}")
        if output_tokens is None or self.equal_cost:
            return tok[:, None] * self.input_price[None, :] + self._output_cost[None, :]
        out = np.asarray(output_tokens, dtype=np.float64)
        if out.shape != (len(prompts), len(self.models)):
            raise ValueError(f"output_tokens must have shape ({len(prompts)}, {len(self.models)}), got {out.shape}")
        if not np.isfinite(out).all() or (out < 0).any():
            raise ValueError("output_tokens must be finite and >= 0")
        return tok[:, None] * self.input_price[None, :] + out * self.output_price[None, :]

    def output_tokens_of(self, features) -> np.ndarray | None:
        """Per-prompt expected output tokens [B, N] from pooled encodings [B, D], or None without a length model."""
        return None if self.output_length is None or self.equal_cost else self.output_length.predict(features)

    def observed_output_tokens(self, table) -> np.ndarray:
        """Output tokens of every call of the table [P, N] (NaN = unknown): the observed count, else the count its
        real cost implies ((cost - input tokens x input price) / output price)."""
        cols = self._columns(table)
        P, N = table.n_prompts, len(self.models)
        out = np.full((P, N), np.nan) if table.output_tokens is None else \
            table.output_tokens[:, cols].astype(np.float64)
        if table.cost is not None:
            tok = self._table_input_tokens(table)
            real = np.asarray(table.cost, dtype=np.float64)[:, cols]
            with np.errstate(invalid="ignore", divide="ignore"):
                implied = np.maximum((real - tok[:, None] * self.input_price) / self.output_price, 0.0)
            use = ~np.isfinite(out) & np.isfinite(real) & (self.output_price > 0)
            out = np.where(use, implied, out)
        return out

    def fit_output_length(self, table, features, train_idx, val_idx) -> "CostModel":
        """This cost model plus an `OutputLengthModel` fitted on the table's calls (`observed_output_tokens`) over
        pooled encodings features [P, D]: ridge strength chosen on val_idx, refitted on train + val. A table without
        output lengths or real costs, or an equal-cost model, returns self unchanged."""
        from routoo_fast.output_length import OutputLengthModel

        out = self.observed_output_tokens(table)
        rows = np.concatenate([np.asarray(train_idx, dtype=np.int64), np.asarray(val_idx, dtype=np.int64)])
        if self.equal_cost or not np.isfinite(out[rows]).any():
            return self
        length = OutputLengthModel.fit(features, out, train_idx, val_idx, fallback=self.expected_output_tokens)
        return CostModel(self.models, self.prices, self.expected_output_tokens, self.tokenizer, self.equal_cost,
                         self.output_tokens_source, output_length=length)

    def call_cost(self, model: str, input_tokens: int, output_tokens: int) -> float:
        """What one call of `model` really cost, in USD, from the token counts its answer reported (an OpenAI
        `usage`): input_tokens x input price + output_tokens x output price. NaN for an equal-cost model (its
        prices are placeholders, not money). KeyError for a model this cost model does not price."""
        try:
            j = self.models.index(model)
        except ValueError:
            raise KeyError(f"the cost model has no price for model {model!r}") from None
        for name, value in (("input_tokens", input_tokens), ("output_tokens", output_tokens)):
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
                raise ValueError(f"{name} must be an integer >= 0, got {value!r}")
        if self.equal_cost:
            return math.nan
        return float(input_tokens * self.input_price[j] + output_tokens * self.output_price[j])

    def _table_input_tokens(self, table) -> np.ndarray:
        """float64 [P]: the table's input token counts, else this cost model's count of its prompts."""
        tok = table.input_tokens if table.input_tokens is not None else self.input_tokens(table.prompts)
        return np.asarray(tok, dtype=np.float64)

    def _columns(self, table) -> np.ndarray:
        try:
            return np.array([table.models.index(m) for m in self.models], dtype=np.int64)
        except ValueError:
            missing = [m for m in self.models if m not in table.models]
            raise ValueError(f"the table has no column for models {missing}") from None

    def expected(self, table, features=None) -> np.ndarray:
        """What a router expects each call of its models on `table`'s prompts to cost [P, N] (never the call's real
        cost, unknown before the call): input tokens from table.input_tokens where given; with the prompts' pooled
        encodings features [P, D] and a length model, per-prompt output lengths (what the Router prices with)."""
        out = None if features is None else self.output_tokens_of(features)
        return self.costs(table.prompts, table.input_tokens, out)

    def true(self, table) -> np.ndarray:
        """What each call really cost [P, N] (for scoring decisions): the table's real cost where it has one; else
        input tokens x input price + the call's observed output tokens x output price (NaN where that call's output
        length is unknown); a table with no output lengths at all uses the expected output tokens."""
        if self.equal_cost:
            return self.expected(table)
        cols = self._columns(table)
        tok = self._table_input_tokens(table)
        if table.output_tokens is not None:
            out = table.output_tokens[:, cols].astype(np.float64)
        else:
            out = np.broadcast_to(self.expected_output_tokens, (table.n_prompts, len(self.models)))
        C = tok[:, None] * self.input_price[None, :] + out * self.output_price[None, :]
        if table.cost is not None:
            real = table.cost[:, cols]
            C = np.where(np.isfinite(real), real, C)
        return C

    def describe(self) -> dict:
        """JSON-able summary stored in a saved router's metadata: token counter, equal cost, output-token sources."""
        out = {"token_counter": "tokenizer" if self.tokenizer is not None else "ceil(chars / 4)",
               "equal_cost": self.equal_cost, "output_tokens_source": dict(self.output_tokens_source)}
        if self.output_length is not None:
            out["output_length"] = self.output_length.describe()
        return out


def _fit_price(tokens: np.ndarray, cost: np.ndarray, output_tokens: float) -> ModelPrice:
    """A price reproducing real per-call costs: cost ~ a * input_tokens + b by least squares with a, b >= 0;
    input price a, and b spread over `output_tokens` as the output price."""
    A = np.stack([tokens, np.ones_like(tokens)], 1)
    (a, b), *_ = np.linalg.lstsq(A, cost, rcond=None)
    if a < 0:
        a, b = 0.0, float(cost.mean())
    elif b < 0:
        a, b = float((tokens @ cost) / max(tokens @ tokens, 1e-300)), 0.0
    out = max(float(output_tokens), 1.0)
    return ModelPrice(max(a, 0.0) * 1e6, max(b, 0.0) / out * 1e6, False, "fitted to the per-call cost column")


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
