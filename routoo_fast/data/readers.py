"""One reader per file format the loaders read; every error names the file and the line (1-based, the header is
line 1) or the row.

- JSONL: `iter_jsonl` / `read_jsonl` (plain or gzip), one JSON object per non-blank line.
- wide CSV: `read_wide_csv` (`key, model_1..model_N` per row) and `aligned_outcomes`, the correctness /
  output-characters pair of CSVs of MMLU-Pro and ZeroEval.
- row tables: `iter_rows` over .csv / .jsonl / .parquet (optionally .gz for the text formats), for the long format.
"""
from __future__ import annotations

import csv
import gzip
import json
import math
import sys
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np

__all__ = ["require_file", "iter_jsonl", "read_jsonl", "json_field", "set_csv_field_limit", "read_wide_csv",
           "aligned_outcomes", "iter_rows"]


def require_file(path: Path, what: str) -> Path:
    if not path.is_file():
        raise FileNotFoundError(f"{what}: no such file {path}")
    return path


def iter_jsonl(path: Path, opener=open) -> Iterator[tuple[int, dict]]:
    """(line number, object) for each non-blank line; ValueError naming file:line for bad JSON or a non-object."""
    with opener(path, "rt", encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{line_no}: invalid JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise ValueError(f"{path}:{line_no}: expected a JSON object, got {type(row).__name__}")
            yield line_no, row


def read_jsonl(path: Path, opener=open) -> list[dict]:
    return [row for _, row in iter_jsonl(path, opener)]


def json_field(row: dict, key: str, types, path: Path, line_no: int):
    if key not in row:
        raise ValueError(f"{path}:{line_no}: missing field {key!r}")
    value = row[key]
    if not isinstance(value, types):
        raise ValueError(f"{path}:{line_no}: field {key!r} has type {type(value).__name__}")
    return value


def set_csv_field_limit() -> None:
    # RouterBench rows hold whole model responses; the csv module's default 128 KiB field limit is too small.
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))


def read_wide_csv(path: Path, key: str, parse: Callable[[str], float]) -> tuple[list[str], list[str], np.ndarray]:
    """A CSV `key, model_1..model_N` -> (keys, models, values float64 [R, N]); parse('') must give NaN."""
    with open(path, newline="", encoding="utf-8") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if not header or header[0] != key:
            raise ValueError(f"{path}:1: header must start with {key!r}, got {header[:1] if header else 'empty file'}")
        models = header[1:]
        keys, values = [], []
        for row in reader:
            line = reader.line_num
            if len(row) != len(header):
                raise ValueError(f"{path}:{line}: expected {len(header)} fields, got {len(row)}")
            try:
                values.append([parse(v) for v in row[1:]])
            except ValueError as e:
                raise ValueError(f"{path}:{line}: {e}") from None
            keys.append(row[0])
    return keys, models, np.array(values, dtype=np.float64).reshape(len(keys), len(models))


def _parse_01(value: str) -> float:
    if value == "":
        return math.nan
    if value not in ("0", "1", "0.0", "1.0"):
        raise ValueError(f"correctness must be 0, 1 or empty, got {value!r}")
    return float(value)


def _parse_count(value: str) -> float:
    if value == "":
        return math.nan
    try:
        n = int(value)
    except ValueError:
        raise ValueError(f"character count must be an integer or empty, got {value!r}") from None
    if n < 0:
        raise ValueError(f"character count must be >= 0, got {n}")
    return float(n)


def aligned_outcomes(cpath: Path, opath: Path, key: str, ids: list[str]):
    """(models, correctness [P, N], output chars [P, N]) from the wide correctness/output_chars CSVs, rows in
    `ids` order; ValueError when the model columns, the ids or the missing-entry patterns of the two disagree."""
    ckeys, models, correct = read_wide_csv(cpath, key, _parse_01)
    okeys, omodels, chars = read_wide_csv(opath, key, _parse_count)
    if omodels != models:
        raise ValueError(f"{opath}: model columns differ from {cpath}")
    crow = {k: i for i, k in enumerate(ckeys)}
    orow = {k: i for i, k in enumerate(okeys)}
    missing = [i for i in ids if i not in crow or i not in orow]
    if missing:
        raise ValueError(f"{cpath} / {opath}: no row for {key} {missing[:5]} ({len(missing)} missing)")
    correct = correct[[crow[i] for i in ids]]
    chars = chars[[orow[i] for i in ids]]
    if not np.array_equal(np.isnan(correct), np.isnan(chars)):
        raise ValueError(f"{opath}: missing entries do not match those of {cpath}")
    return models, correct, chars


def iter_rows(path: Path, required: Sequence[str] = ()):
    """Yield (location, row dict) from a CSV, JSONL or Parquet file; location names the file and line/row.
    A CSV or Parquet file without one of the `required` columns raises ValueError naming them."""
    suffix = "".join(path.suffixes[-2:]) if path.suffix == ".gz" else path.suffix
    if suffix in (".csv", ".csv.gz"):
        set_csv_field_limit()
        opener = gzip.open if suffix.endswith(".gz") else open
        with opener(path, "rt", newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            header = reader.fieldnames or []
            if not header:
                raise ValueError(f"{path}: the file is empty (expected a header with columns {list(required)})")
            missing = [c for c in required if c not in header]
            if missing:
                raise ValueError(f"{path}:1: missing columns {missing} (have {header})")
            for row in reader:
                if None in row or any(v is None for v in row.values()):
                    raise ValueError(f"{path}:{reader.line_num}: expected {len(header)} fields")
                yield f"{path}:{reader.line_num}", row
    elif suffix in (".jsonl", ".jsonl.gz", ".ndjson"):
        opener = gzip.open if suffix.endswith(".gz") else open
        for line_no, row in iter_jsonl(path, opener):
            missing = [c for c in required if c not in row]
            if missing:
                raise ValueError(f"{path}:{line_no}: missing columns {missing} (have {sorted(row)})")
            yield f"{path}:{line_no}", row
    elif suffix == ".parquet":
        import pyarrow.parquet as pq  # lazy: only parquet users need pyarrow

        data = pq.read_table(path)
        missing = [c for c in required if c not in data.column_names]
        if missing:
            raise ValueError(f"{path}: missing columns {missing} (have {data.column_names})")
        for i, row in enumerate(data.to_pylist()):
            yield f"{path} row {i}", row
    else:
        raise ValueError(f"{path}: unknown format {suffix!r}; use .csv, .jsonl or .parquet (optionally .gz for text)")
