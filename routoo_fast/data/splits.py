"""Train / val / test splits of prompts by a stable hash of their text."""
from __future__ import annotations

import hashlib
from typing import Sequence

import numpy as np

__all__ = ["SPLIT_NAMES", "hash_unit", "split_by_hash"]

SPLIT_NAMES = ("train", "val", "test")


def hash_unit(prompts: Sequence[str], salt: str) -> np.ndarray:
    """u = blake2b(salt NUL text) as a 64-bit integer / 2**64, uniform in [0, 1), float64 [P]: the same for
    identical texts on every machine and Python version (what every hash split of the package draws from)."""
    if isinstance(prompts, str):
        raise TypeError("prompts must be a sequence of str, not a single str")
    prefix = salt.encode("utf-8") + b"\0"
    u = np.empty(len(prompts), dtype=np.float64)
    for i, p in enumerate(prompts):
        if not isinstance(p, str):
            raise TypeError(f"prompts[{i}] must be str, got {type(p).__name__}")
        digest = hashlib.blake2b(prefix + p.encode("utf-8"), digest_size=8).digest()
        u[i] = int.from_bytes(digest, "big") / 2.0**64
    return u


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
    u = hash_unit(prompts, salt)
    edges = np.cumsum(f)[:2]
    which = np.searchsorted(edges, u, side="right")
    return np.asarray(SPLIT_NAMES)[which]


DEFAULT_TEST_FRACTION = 0.2


def split_fractions(test_fraction: float = DEFAULT_TEST_FRACTION) -> tuple[float, float, float]:
    """(train, val, test) fractions for a held-out `test_fraction`: val is 1/8 of the rest (early stopping and the
    recipe's choices), train the other 7/8. The default 0.2 gives (0.7, 0.1, 0.2), the bundled reproduction's
    split; 0 holds nothing out."""
    f = float(test_fraction)
    if not (0.0 <= f < 1.0):
        raise ValueError(f"test fraction must be in [0, 1), got {test_fraction}")
    val = round((1.0 - f) / 8.0, 12)
    return round(1.0 - f - val, 12), val, f


def split_counts(split) -> dict[str, int]:
    """{"train": n, "val": n, "test": n} of a split array."""
    s = np.asarray(split)
    return {name: int((s == name).sum()) for name in SPLIT_NAMES}


def unseen_test_rows(prompts: Sequence[str], split) -> tuple[np.ndarray, np.ndarray, int]:
    """Rows to fit on and rows to score, with every exact prompt text scored once and only where unseen.

    A text that is in the test split AND in train or val (possible when the split comes from the data, not from
    `split_by_hash`) is dropped from train / val; a text repeated within test is scored once (its first row).
    Returns (fit rows [train + val], test rows, number of test texts that were also in train / val).
    """
    s = np.asarray(split)
    test_texts = {prompts[i] for i in np.flatnonzero(s == "test")}
    fit = np.array([i for i in np.flatnonzero((s == "train") | (s == "val")) if prompts[i] not in test_texts],
                   dtype=np.int64)
    seen_in_fit = {prompts[i] for i in np.flatnonzero((s == "train") | (s == "val"))} & test_texts
    first: dict[str, int] = {}
    for i in np.flatnonzero(s == "test"):
        first.setdefault(prompts[i], int(i))
    return fit, np.array(sorted(first.values()), dtype=np.int64), len(seen_in_fit)
