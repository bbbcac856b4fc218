"""The offline half's data room: the outcome table, splits, one loader per source, one reader per file format,
and the on-disk cache of prompt encodings.

    table.py           OutcomeTable (prompts x models scores, costs, token counts, per-prompt meta)
    splits.py          split_by_hash: train / val / test by a stable hash of the prompt text
    readers.py         JSONL, wide CSV, and row tables (CSV / JSONL / Parquet)
    mmlu_pro.py        MMLU-Pro and the bundled original-MMLU part (load_default), format_mcq
    routellm.py, routerbench.py, zeroeval.py, long.py   one loader per source
    encoding_cache.py  pooled encodings cached on disk per encoder
    paths.py           the bundled assets and the shared real-data folder

Imports nothing from train/ or evaluation/ (the arrows point down: evaluation -> train -> data).
"""
from routoo_fast.data.long import LONG_NUMERIC, LONG_REQUIRED, load_long, load_outcomes
from routoo_fast.data.mmlu_pro import format_mcq, load_default, load_mmlu_pro
from routoo_fast.data.paths import BUNDLE_OUTCOMES, BUNDLE_QUESTIONS, shared_data_dir
from routoo_fast.data.routellm import ROUTELLM_MODELS, load_routellm_mmlu
from routoo_fast.data.routerbench import load_routerbench
from routoo_fast.data.splits import SPLIT_NAMES, split_by_hash
from routoo_fast.data.table import OutcomeTable
from routoo_fast.data.zeroeval import ZEROEVAL_TASKS, load_zeroeval

__all__ = ["OutcomeTable", "split_by_hash", "SPLIT_NAMES", "format_mcq", "load_default", "load_mmlu_pro",
           "load_routellm_mmlu", "load_routerbench", "load_zeroeval", "load_long", "load_outcomes", "shared_data_dir",
           "ROUTELLM_MODELS", "ZEROEVAL_TASKS", "LONG_REQUIRED", "LONG_NUMERIC", "BUNDLE_QUESTIONS",
           "BUNDLE_OUTCOMES"]
