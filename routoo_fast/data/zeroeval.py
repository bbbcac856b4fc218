"""ZeroEval outcomes (gsm, math-l5, crux): questions.jsonl plus wide correctness / output-characters CSVs."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from routoo_fast.costs import CHARS_PER_TOKEN, count_tokens
from routoo_fast.data.readers import aligned_outcomes, json_field, read_jsonl, require_file
from routoo_fast.data.table import OutcomeTable

__all__ = ["ZEROEVAL_TASKS", "load_zeroeval"]


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
    qpath = require_file(root / "questions.jsonl", "load_zeroeval")
    cpath = require_file(root / "correctness.csv", "load_zeroeval")
    opath = require_file(root / "output_chars.csv", "load_zeroeval")
    questions = read_jsonl(qpath)
    for line_no, q in enumerate(questions, 1):
        json_field(q, "id", (str, int), qpath, line_no)
        json_field(q, "question", str, qpath, line_no)
    ids = [str(q["id"]) for q in questions]
    models, correct, chars = aligned_outcomes(cpath, opath, "id", ids)
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
