"""Where the data lives: the bundled assets and the shared real-data folder."""
from __future__ import annotations

import os
from pathlib import Path

__all__ = ["ASSETS", "BUNDLE_QUESTIONS", "BUNDLE_OUTCOMES", "shared_data_dir"]

ASSETS = Path(__file__).resolve().parent.parent / "assets"
BUNDLE_QUESTIONS = ASSETS / "mmlu_pro_ori_questions.jsonl.gz"
BUNDLE_OUTCOMES = ASSETS / "mmlu_pro_ori_outcomes.npz"


def shared_data_dir() -> Path | None:
    """The real-data folder: $ROUTOO_SHARED_DATA, else ../shared/data beside the repository; None if absent."""
    env = os.environ.get("ROUTOO_SHARED_DATA")
    if env:
        return Path(env)
    candidate = Path(__file__).resolve().parents[3] / "shared" / "data"  # <repo>/../shared/data
    return candidate if candidate.is_dir() else None
