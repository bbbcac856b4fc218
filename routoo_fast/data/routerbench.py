"""RouterBench 0-shot outcomes (RouterDC's copy): scores, real per-call costs and responses per model.
NOTE: this data has no license; use it for evaluation only, never bundle it."""
from __future__ import annotations

import ast
import csv
import math
import os
from pathlib import Path

import numpy as np

from routoo_fast.costs import CHARS_PER_TOKEN, count_tokens
from routoo_fast.data.readers import require_file, set_csv_field_limit
from routoo_fast.data.table import OutcomeTable

__all__ = ["load_routerbench"]


_ROUTERBENCH_FIXED = {"", "sample_id", "prompt", "eval_name", "oracle_model_to_route_to"}


def _literal_text(value: str, what: str) -> str:
    """RouterBench stores texts as the repr of a python list of strings; join its items with blank lines."""
    try:
        parsed = ast.literal_eval(value)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        raise ValueError(f"{what} is not a python list literal: {value[:60]!r}") from None
    if isinstance(parsed, str):
        return parsed
    if not isinstance(parsed, (list, tuple)) or not all(isinstance(s, str) for s in parsed):
        raise ValueError(f"{what} must be a list of str, got {type(parsed).__name__}")
    return "\n\n".join(parsed)


def _parse_unit_float(value: str, what: str, upper: float | None = 1.0) -> float:
    if value == "":
        return math.nan
    try:
        x = float(value)
    except ValueError:
        raise ValueError(f"{what} must be a number or empty, got {value!r}") from None
    if math.isnan(x):
        return x
    if x < 0 or math.isinf(x) or (upper is not None and x > upper):
        raise ValueError(f"{what} out of range: {x}")
    return x


def load_routerbench(path, tokenizer=None) -> OutcomeTable:
    """Load RouterBench 0-shot CSVs (RouterDC's `routerbench_zs/*.csv`): a folder, one file, or a list of files.

    Per row: prompt (repr of a python list of str, parsed with ast.literal_eval), eval_name -> meta['task'],
    `<model>` score in [0, 1], `<model>|total_cost` real USD -> table.cost, `<model>|model_response` whose length
    / 4 -> output_tokens. meta['split'] = "train"/"test" from a file name ending in _train/_test (else ""),
    meta['id'] = sample_id. Models are the union over files in first-seen order (NaN where a file lacks one).
    NOTE: this data has no license; use it for evaluation only, never bundle it.
    """
    if isinstance(path, (str, os.PathLike)):
        p = Path(path)
        files = sorted(p.glob("*.csv")) if p.is_dir() else [p]
    else:
        files = [Path(f) for f in path]
    if not files:
        raise FileNotFoundError(f"load_routerbench: no CSV files in {path}")
    set_csv_field_limit()
    models: list[str] = []
    records = []  # (prompt, id, task, split, {model: (score, cost, out_chars)})
    for fpath in files:
        require_file(fpath, "load_routerbench")
        split = next((s for s in ("train", "test", "val") if fpath.stem.endswith("_" + s)), "")
        with open(fpath, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            header = reader.fieldnames or []
            missing = {"sample_id", "prompt", "eval_name"} - set(header)
            if missing:
                raise ValueError(f"{fpath}:1: missing columns {sorted(missing)}")
            file_models = [c for c in header if c not in _ROUTERBENCH_FIXED and "|" not in c]
            for m in file_models:
                if f"{m}|total_cost" not in header:
                    raise ValueError(f"{fpath}:1: model column {m!r} has no {m}|total_cost column")
                if m not in models:
                    models.append(m)
            for row in reader:
                where = f"{fpath}:{reader.line_num}"
                if None in row or any(v is None for v in row.values()):
                    raise ValueError(f"{where}: expected {len(header)} fields")
                try:
                    prompt = _literal_text(row["prompt"], "prompt")
                    outcome = {}
                    for m in file_models:
                        score = _parse_unit_float(row[m], f"score of {m}")
                        cost = _parse_unit_float(row[f"{m}|total_cost"], f"{m}|total_cost", upper=None)
                        resp = row.get(f"{m}|model_response", "")
                        chars = math.nan
                        if resp:
                            try:
                                chars = float(len(_literal_text(resp, f"{m}|model_response")))
                            except ValueError:
                                chars = float(len(resp))  # an unparsable response still has a length
                        outcome[m] = (score, cost, chars)
                except ValueError as e:
                    raise ValueError(f"{where}: {e}") from None
                records.append((prompt, row["sample_id"], row["eval_name"], split, outcome))
    P, N = len(records), len(models)
    scores = np.full((P, N), np.nan, dtype=np.float32)
    cost = np.full((P, N), np.nan, dtype=np.float64)
    out = np.full((P, N), np.nan, dtype=np.float32)
    col = {m: j for j, m in enumerate(models)}
    for i, (_, _, _, _, outcome) in enumerate(records):
        for m, (s, c, ch) in outcome.items():
            scores[i, col[m]], cost[i, col[m]], out[i, col[m]] = s, c, ch / CHARS_PER_TOKEN
    prompts = [r[0] for r in records]
    return OutcomeTable(
        prompts=prompts,
        models=models,
        scores=scores,
        cost=cost,
        input_tokens=count_tokens(prompts, tokenizer),
        output_tokens=out,
        meta={
            "id": np.array([r[1] for r in records]),
            "task": np.array([r[2] for r in records]),
            "split": np.array([r[3] for r in records]),
        },
    )
