"""RouteLLM's MMLU responses: two models (Mixtral-8x7B, GPT-4-1106), True/False per prompt, one CSV per subject."""
from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np

from routoo_fast.costs import count_tokens
from routoo_fast.data.readers import json_field, read_jsonl, require_file
from routoo_fast.data.table import OutcomeTable

__all__ = ["ROUTELLM_MODELS", "load_routellm_mmlu"]


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
        cpath = require_file(Path(contaminated), "load_routellm_mmlu contaminated")
        for line_no, row in enumerate(read_jsonl(cpath), 1):
            drop.add(json_field(row, "eval_prompt", str, cpath, line_no))
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
