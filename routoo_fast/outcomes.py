"""Outcome data: which LLM got which prompt right, as a prompts x models table, and loaders for real sources.

`OutcomeTable` holds, for P prompts and N models:
  scores        float32 [P, N]  in [0, 1] (1 = correct; soft scores allowed), NaN = no outcome recorded
  cost          float64 [P, N]  real USD per call where the source has it (RouterBench), NaN elsewhere; or None
  input_tokens  int32   [P]     prompt length in tokens (an estimate unless a tokenizer was given); or None
  output_tokens float32 [P, N]  observed output length in tokens (chars / 4 where only characters are known); or None
  meta          dict of per-prompt 1-D arrays [P] (`id`, `task`, `subject`, `split`, ...)

Token estimates: without a tokenizer, tokens = ceil(chars / 4) (the usual ~4 characters per token of English BPE
vocabularies); pass `tokenizer=` (a callable text -> token ids, e.g. a Hugging Face tokenizer's `encode`) for exact
counts of the prompt. Output tokens are always chars / 4: the sources record only the length of the generated text.

Loaders validate what they read: a malformed file raises ValueError naming the file and the line (1-based, the
header is line 1) or the row.
"""
from __future__ import annotations

import ast
import csv
import gzip
import hashlib
import json
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

import numpy as np

__all__ = [
    "OutcomeTable",
    "format_mcq",
    "split_by_hash",
    "estimate_tokens",
    "count_tokens",
    "load_default",
    "load_mmlu_pro",
    "load_routellm_mmlu",
    "load_routerbench",
    "load_zeroeval",
    "load_long",
    "shared_data_dir",
]

ASSETS = Path(__file__).resolve().parent / "assets"
BUNDLE_QUESTIONS = ASSETS / "mmlu_pro_ori_questions.jsonl.gz"
BUNDLE_OUTCOMES = ASSETS / "mmlu_pro_ori_outcomes.npz"
CHARS_PER_TOKEN = 4.0
SPLIT_NAMES = ("train", "val", "test")
OPTION_LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


# --------------------------------------------------------------------------------------------------- the table
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


# --------------------------------------------------------------------------------------------- text helpers
def format_mcq(question: str, options: Sequence[str]) -> str:
    """MCQ prompt text: the question, then one line per option `"A. option"` (letters A, B, ...)."""
    if not isinstance(question, str):
        raise TypeError(f"question must be str, got {type(question).__name__}")
    if isinstance(options, str) or not isinstance(options, Sequence):
        raise TypeError(f"options must be a list of str, got {type(options).__name__}")
    if len(options) > len(OPTION_LETTERS):
        raise ValueError(f"at most {len(OPTION_LETTERS)} options, got {len(options)}")
    lines = [question]
    for letter, opt in zip(OPTION_LETTERS, options):
        if not isinstance(opt, str):
            raise TypeError(f"options must be str, got {type(opt).__name__} for option {letter}")
        lines.append(f"{letter}. {opt}")
    return "\n".join(lines)


def estimate_tokens(texts: Sequence[str]) -> np.ndarray:
    """Tokenizer-free token count estimate: ceil(len(text) / 4) per text -> int32 [B]."""
    return np.array([math.ceil(len(t) / CHARS_PER_TOKEN) for t in texts], dtype=np.int32)


def count_tokens(texts: Sequence[str], tokenizer: Callable[[str], Sequence[int]] | None = None) -> np.ndarray:
    """Token counts int32 [B]: len(tokenizer(text)) if a tokenizer is given, else `estimate_tokens`."""
    if tokenizer is None:
        return estimate_tokens(texts)
    if not callable(tokenizer):
        raise TypeError(f"tokenizer must be callable (text -> token ids), got {type(tokenizer).__name__}")
    return np.array([len(tokenizer(t)) for t in texts], dtype=np.int32)


def split_by_hash(
    prompts: Sequence[str], fractions: tuple[float, float, float] = (0.7, 0.1, 0.2), salt: str = "routoo-split"
) -> np.ndarray:
    """Assign each prompt to "train" / "val" / "test" by a stable hash of its text -> np.str_ array [P].

    u = blake2b(salt NUL text) as a 64-bit integer / 2**64, uniform in [0, 1); the split is the first whose cumulative
    fraction exceeds u. Identical texts always land in the same split, on every machine and Python version.
    """
    if len(fractions) != 3:
        raise ValueError(f"fractions must be 3 numbers (train, val, test), got {fractions!r}")
    f = np.asarray(fractions, dtype=np.float64)
    if not np.all(np.isfinite(f)) or (f < 0).any() or abs(f.sum() - 1.0) > 1e-9:
        raise ValueError(f"fractions must be >= 0 and sum to 1, got {fractions!r}")
    if isinstance(prompts, str):
        raise TypeError("prompts must be a sequence of str, not a single str")
    prefix = salt.encode("utf-8") + b"\0"
    u = np.empty(len(prompts), dtype=np.float64)
    for i, p in enumerate(prompts):
        if not isinstance(p, str):
            raise TypeError(f"prompts[{i}] must be str, got {type(p).__name__}")
        digest = hashlib.blake2b(prefix + p.encode("utf-8"), digest_size=8).digest()
        u[i] = int.from_bytes(digest, "big") / 2.0**64
    edges = np.cumsum(f)[:2]
    which = np.searchsorted(edges, u, side="right")
    return np.asarray(SPLIT_NAMES)[which]


# ---------------------------------------------------------------------------------------------- file helpers
def shared_data_dir() -> Path | None:
    """The real-data folder: $ROUTOO_SHARED_DATA, else ../shared/data beside the repository; None if absent."""
    env = os.environ.get("ROUTOO_SHARED_DATA")
    if env:
        return Path(env)
    candidate = Path(__file__).resolve().parent.parent.parent / "shared" / "data"  # <repo>/../shared/data
    return candidate if candidate.is_dir() else None


def _require_file(path: Path, what: str) -> Path:
    if not path.is_file():
        raise FileNotFoundError(f"{what}: no such file {path}")
    return path


def _iter_jsonl(path: Path, opener=open) -> Iterator[tuple[int, dict]]:
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


def _read_jsonl(path: Path, opener=open) -> list[dict]:
    return [row for _, row in _iter_jsonl(path, opener)]


def _field(row: dict, key: str, types, path: Path, line_no: int):
    if key not in row:
        raise ValueError(f"{path}:{line_no}: missing field {key!r}")
    value = row[key]
    if not isinstance(value, types):
        raise ValueError(f"{path}:{line_no}: field {key!r} has type {type(value).__name__}")
    return value


def _set_csv_field_limit() -> None:
    # RouterBench rows hold whole model responses; the csv module's default 128 KiB field limit is too small.
    csv.field_size_limit(min(sys.maxsize, 2**31 - 1))


def _read_wide_csv(path: Path, key: str, parse: Callable[[str], float]) -> tuple[list[str], list[str], np.ndarray]:
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


# ------------------------------------------------------------------------------------------------- MMLU-Pro
def _mmlu_pro_table(
    questions: list[dict], models: list[str], correct: np.ndarray, chars: np.ndarray, tokenizer=None
) -> OutcomeTable:
    """Build the table from question records and [P, N] correctness (NaN = missing) and output characters."""
    prompts = [format_mcq(q["question"], q["options"]) for q in questions]
    src = np.array([q["src"] for q in questions])
    subject = np.array([s[len("ori_mmlu-"):] if s.startswith("ori_mmlu-") else s for s in src])
    return OutcomeTable(
        prompts=prompts,
        models=list(models),
        scores=correct.astype(np.float32),
        input_tokens=count_tokens(prompts, tokenizer),
        output_tokens=(chars / CHARS_PER_TOKEN).astype(np.float32),
        meta={
            "id": np.array([q["question_id"] for q in questions], dtype=np.int64),
            "subject": subject,
            "category": np.array([q["category"] for q in questions]),
            "src": src,
            "task": np.full(len(questions), "mmlu_pro"),
        },
    )


def _validate_question(row: dict, path: Path, line_no: int) -> dict:
    _field(row, "question_id", int, path, line_no)
    _field(row, "question", str, path, line_no)
    options = _field(row, "options", list, path, line_no)
    if not options or not all(isinstance(o, str) for o in options):
        raise ValueError(f"{path}:{line_no}: field 'options' must be a non-empty list of str")
    _field(row, "category", str, path, line_no)
    _field(row, "src", str, path, line_no)
    return row


def load_mmlu_pro(path, source: str = "ori_mmlu", tokenizer=None) -> OutcomeTable:
    """Load ../shared/data/mmlu_pro_outputs (questions.jsonl, correctness.csv, output_chars.csv).

    source="ori_mmlu" keeps the 6,810 questions taken from original MMLU (src "ori_mmlu-<subject>"); "all" keeps all
    12,032. Prompts are `format_mcq(question, options)`; output_tokens = output_chars / 4; input_tokens from
    `count_tokens(prompts, tokenizer)`. Rows keep the order of questions.jsonl, models the order of correctness.csv.
    The models answered a 5-shot chain-of-thought version; input_tokens count the zero-shot prompt a router sends.
    """
    if source not in ("ori_mmlu", "all"):
        raise ValueError(f"source must be 'ori_mmlu' or 'all', got {source!r}")
    root = Path(path)
    qpath = _require_file(root / "questions.jsonl", "load_mmlu_pro")
    cpath = _require_file(root / "correctness.csv", "load_mmlu_pro")
    opath = _require_file(root / "output_chars.csv", "load_mmlu_pro")

    questions = []
    with open(qpath, encoding="utf-8") as f:
        for line_no, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{qpath}:{line_no}: invalid JSON ({e.msg})") from None
            if not isinstance(row, dict):
                raise ValueError(f"{qpath}:{line_no}: expected a JSON object")
            questions.append(_validate_question(row, qpath, line_no))
    if source == "ori_mmlu":
        questions = [q for q in questions if q["src"].startswith("ori_mmlu-")]

    ids = [str(q["question_id"]) for q in questions]
    cmodels, correct, chars = _aligned_outcomes(cpath, opath, "question_id", ids)
    return _mmlu_pro_table(questions, cmodels, correct, chars, tokenizer)


def _aligned_outcomes(cpath: Path, opath: Path, key: str, ids: list[str]):
    """(models, correctness [P, N], output chars [P, N]) from the wide correctness/output_chars CSVs, rows in
    `ids` order; ValueError when the model columns, the ids or the missing-entry patterns of the two disagree."""
    ckeys, models, correct = _read_wide_csv(cpath, key, _parse_01)
    okeys, omodels, chars = _read_wide_csv(opath, key, _parse_count)
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


def load_default(tokenizer=None) -> OutcomeTable:
    """The bundled original-MMLU part of MMLU-Pro: 6,810 prompts x 29 models (routoo_fast/assets, see NOTICE)."""
    qpath = _require_file(BUNDLE_QUESTIONS, "load_default (bundled data)")
    opath = _require_file(BUNDLE_OUTCOMES, "load_default (bundled data)")
    questions = _read_jsonl(qpath, opener=gzip.open)
    for line_no, row in enumerate(questions, 1):
        _validate_question(row, qpath, line_no)
    with np.load(opath, allow_pickle=False) as z:
        ids, models = z["question_id"], [str(m) for m in z["models"]]
        correct8, chars32 = z["correctness"], z["output_chars"]
    if [q["question_id"] for q in questions] != ids.tolist():
        raise ValueError(f"{opath}: question_id order differs from {qpath}")
    if correct8.shape != (len(ids), len(models)) or chars32.shape != correct8.shape:
        raise ValueError(f"{opath}: array shapes {correct8.shape}, {chars32.shape} do not match {len(ids)} x {len(models)}")
    correct = np.where(correct8 < 0, np.nan, correct8.astype(np.float64))
    chars = np.where(chars32 < 0, np.nan, chars32.astype(np.float64))
    return _mmlu_pro_table(questions, models, correct, chars, tokenizer)


# ------------------------------------------------------------------------------------------------- RouteLLM
ROUTELLM_MODELS = ("mistralai/Mixtral-8x7B-Instruct-v0.1", "gpt-4-1106-preview")


def _parse_bool_outcome(value: str) -> float:
    if value in ("True", "true", "1", "1.0"):
        return 1.0
    if value in ("False", "false", "0", "0.0"):
        return 0.0
    if value == "":
        return math.nan
    raise ValueError(f"correctness must be True or False, got {value!r}")


def load_routellm_mmlu(path, contaminated=None, tokenizer=None) -> OutcomeTable:
    """Load RouteLLM's MMLU responses: a folder of `mmlu_<subject>.csv` (prompt, one True/False column per model).

    subject = the file name without `mmlu_` and `.csv`; files are read in sorted name order. `contaminated`: an
    optional JSONL of {"eval_prompt": ...} rows (RouteLLM's mmlu contaminated_prompts.jsonl) whose prompts are
    dropped. No output lengths in the source: output_tokens is None, so costs need explicit output_tokens.
    """
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"load_routellm_mmlu: no such directory {root}")
    files = sorted(root.glob("mmlu_*.csv"))
    if not files:
        raise FileNotFoundError(f"load_routellm_mmlu: no mmlu_<subject>.csv files in {root}")
    drop: set[str] = set()
    if contaminated is not None:
        cpath = _require_file(Path(contaminated), "load_routellm_mmlu contaminated")
        for line_no, row in enumerate(_read_jsonl(cpath), 1):
            drop.add(_field(row, "eval_prompt", str, cpath, line_no))
    models: list[str] | None = None
    prompts, subjects, scores = [], [], []
    for fpath in files:
        with open(fpath, newline="", encoding="utf-8") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if not header or header[0] != "prompt" or len(header) < 2:
                raise ValueError(f"{fpath}:1: header must be 'prompt,<model>,...', got {header}")
            if models is None:
                models = header[1:]
            elif header[1:] != models:
                raise ValueError(f"{fpath}:1: model columns {header[1:]} differ from {files[0]}'s {models}")
            subject = fpath.stem[len("mmlu_"):]
            for row in reader:
                if len(row) != len(header):
                    raise ValueError(f"{fpath}:{reader.line_num}: expected {len(header)} fields, got {len(row)}")
                try:
                    values = [_parse_bool_outcome(v) for v in row[1:]]
                except ValueError as e:
                    raise ValueError(f"{fpath}:{reader.line_num}: {e}") from None
                if row[0] in drop:
                    continue
                prompts.append(row[0])
                subjects.append(subject)
                scores.append(values)
    return OutcomeTable(
        prompts=prompts,
        models=models,
        scores=np.array(scores, dtype=np.float32).reshape(len(prompts), len(models)),
        input_tokens=count_tokens(prompts, tokenizer),
        meta={"subject": np.array(subjects), "task": np.full(len(prompts), "mmlu")},
    )


# ----------------------------------------------------------------------------------------------- RouterBench
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
    _set_csv_field_limit()
    models: list[str] = []
    records = []  # (prompt, id, task, split, {model: (score, cost, out_chars)})
    for fpath in files:
        _require_file(fpath, "load_routerbench")
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


# -------------------------------------------------------------------------------------------------- ZeroEval
ZEROEVAL_TASKS = ("gsm", "math-l5", "crux")


def load_zeroeval(path, task: str, tokenizer=None) -> OutcomeTable:
    """Load ZeroEval outcomes for `task` in gsm / math-l5 / crux from `path` (the zeroeval folder or the task folder).

    Files: questions.jsonl {id, question, ...}, correctness.csv (id x models, 1/0/empty), output_chars.csv.
    Prompt = the question text as given; output_tokens = output_chars / 4 (o1 models' hidden reasoning not included).
    """
    if task not in ZEROEVAL_TASKS:
        raise ValueError(f"task must be one of {ZEROEVAL_TASKS}, got {task!r}")
    root = Path(path)
    if (root / task).is_dir():
        root = root / task
    qpath = _require_file(root / "questions.jsonl", "load_zeroeval")
    cpath = _require_file(root / "correctness.csv", "load_zeroeval")
    opath = _require_file(root / "output_chars.csv", "load_zeroeval")
    questions = _read_jsonl(qpath)
    for line_no, q in enumerate(questions, 1):
        _field(q, "id", (str, int), qpath, line_no)
        _field(q, "question", str, qpath, line_no)
    ids = [str(q["id"]) for q in questions]
    models, correct, chars = _aligned_outcomes(cpath, opath, "id", ids)
    prompts = [q["question"] for q in questions]
    meta = {"id": np.array(ids), "task": np.full(len(ids), task)}
    if all("source" in q for q in questions):
        meta["source"] = np.array([str(q["source"]) for q in questions])
    return OutcomeTable(
        prompts=prompts,
        models=models,
        scores=correct.astype(np.float32),
        input_tokens=count_tokens(prompts, tokenizer),
        output_tokens=(chars / CHARS_PER_TOKEN).astype(np.float32),
        meta=meta,
    )


# ---------------------------------------------------------------------------------------- generic long format
LONG_REQUIRED = ("prompt", "model", "score")
LONG_NUMERIC = ("cost", "input_tokens", "output_tokens")


def _long_rows(path: Path):
    """Yield (location, row dict) from a CSV, JSONL or Parquet file; location names the file and line/row."""
    suffix = "".join(path.suffixes[-2:]) if path.suffix == ".gz" else path.suffix
    if suffix in (".csv", ".csv.gz"):
        _set_csv_field_limit()
        opener = gzip.open if suffix.endswith(".gz") else open
        with opener(path, "rt", newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            header = reader.fieldnames or []
            missing = [c for c in LONG_REQUIRED if c not in header]
            if missing:
                raise ValueError(f"{path}:1: missing columns {missing} (have {header})")
            for row in reader:
                if None in row or any(v is None for v in row.values()):
                    raise ValueError(f"{path}:{reader.line_num}: expected {len(header)} fields")
                yield f"{path}:{reader.line_num}", row
    elif suffix in (".jsonl", ".jsonl.gz", ".ndjson"):
        opener = gzip.open if suffix.endswith(".gz") else open
        for line_no, row in _iter_jsonl(path, opener):
            yield f"{path}:{line_no}", row
    elif suffix == ".parquet":
        import pyarrow.parquet as pq  # lazy: only parquet users need pyarrow

        data = pq.read_table(path)
        missing = [c for c in LONG_REQUIRED if c not in data.column_names]
        if missing:
            raise ValueError(f"{path}: missing columns {missing} (have {data.column_names})")
        for i, row in enumerate(data.to_pylist()):
            yield f"{path} row {i}", row
    else:
        raise ValueError(f"{path}: unknown format {suffix!r}; use .csv, .jsonl or .parquet (optionally .gz for text)")


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
    _require_file(path, "load_long")
    prow: dict[str, int] = {}
    mcol: dict[str, int] = {}
    cells: dict[tuple[int, int], list] = {}  # (p, n) -> [n_rows, score_sum, cost_sum, cost_n, out_sum, out_n, where]
    in_tokens: list[float] = []
    meta_rows: list[dict] = []
    extra_keys: list[str] = []
    for where, row in _long_rows(path):
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
        raise ValueError(f"{path}: no rows")
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
