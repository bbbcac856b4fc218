"""Train / val / test splits of prompts by a stable hash of their text."""
from __future__ import annotations

import hashlib
from typing import Sequence

import numpy as np

__all__ = ["SPLIT_NAMES", "split_by_hash"]

SPLIT_NAMES = ("train", "val", "test")


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
