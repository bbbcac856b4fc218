"""MMLU-Pro outcomes (TIGER-Lab's per-model results): the shared-data loader and the bundled original-MMLU part.

Prompt text of a multiple-choice question is `format_mcq(question, options)`: the question, then one line per
option `"A. option"`. output_tokens = output characters / 4.
"""
from __future__ import annotations

import gzip
from pathlib import Path
from typing import Sequence

import numpy as np

from routoo_fast.costs import CHARS_PER_TOKEN, count_tokens
from routoo_fast.data.paths import BUNDLE_OUTCOMES, BUNDLE_QUESTIONS
from routoo_fast.data.readers import aligned_outcomes, iter_jsonl, json_field, read_jsonl, require_file
from routoo_fast.data.table import OutcomeTable

__all__ = ["format_mcq", "load_mmlu_pro", "load_default", "OPTION_LETTERS"]

OPTION_LETTERS = "ABCDEFGHIJKLMNOPQRSTUVWXYZ"


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
    json_field(row, "question_id", int, path, line_no)
    json_field(row, "question", str, path, line_no)
    options = json_field(row, "options", list, path, line_no)
    if not options or not all(isinstance(o, str) for o in options):
        raise ValueError(f"{path}:{line_no}: field 'options' must be a non-empty list of str")
    json_field(row, "category", str, path, line_no)
    json_field(row, "src", str, path, line_no)
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
    qpath = require_file(root / "questions.jsonl", "load_mmlu_pro")
    cpath = require_file(root / "correctness.csv", "load_mmlu_pro")
    opath = require_file(root / "output_chars.csv", "load_mmlu_pro")

    questions = [_validate_question(row, qpath, line_no) for line_no, row in iter_jsonl(qpath)]
    if source == "ori_mmlu":
        questions = [q for q in questions if q["src"].startswith("ori_mmlu-")]

    ids = [str(q["question_id"]) for q in questions]
    cmodels, correct, chars = aligned_outcomes(cpath, opath, "question_id", ids)
    return _mmlu_pro_table(questions, cmodels, correct, chars, tokenizer)


def load_default(tokenizer=None) -> OutcomeTable:
    """The bundled original-MMLU part of MMLU-Pro: 6,810 prompts x 29 models (routoo_fast/assets, see NOTICE)."""
    qpath = require_file(BUNDLE_QUESTIONS, "load_default (bundled data)")
    opath = require_file(BUNDLE_OUTCOMES, "load_default (bundled data)")
    questions = read_jsonl(qpath, opener=gzip.open)
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
