"""Exact-repeat cache of predicted qualities: Q rows [N] keyed by a hash of the prompt's text, least recently used
out first, bounded in bytes.

A retried request or a repeated prompt then skips the encoder. The key is blake2b-128 of the prompt's UTF-8 bytes
(surrogates passed through, so every str has a key), so two different prompts share a row only on a 128-bit hash
collision. Rows live in one preallocated float32 array [capacity, N] (pages are touched only as rows fill), with
capacity = max_bytes // (4 N + ENTRY_OVERHEAD): ENTRY_OVERHEAD covers the key and the LRU's bookkeeping per
entry, so the cache's memory stays within about max_bytes. Safe to share between threads (one lock).

A cache belongs to one predictor: anything that changes Q for a prompt (other weights, another max_length or
max_chars) needs a fresh cache (`Router.enable_q_cache` makes one).
"""
from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict

import numpy as np

__all__ = ["QCache", "prompt_key", "ENTRY_OVERHEAD"]

ENTRY_OVERHEAD = 160  # bytes per entry besides its row: a 16-byte key object, an OrderedDict node, a slot int


def prompt_key(prompt: str) -> bytes:
    """blake2b-128 of the prompt's UTF-8 bytes (lone surrogates passed through): the cache key."""
    return hashlib.blake2b(prompt.encode("utf-8", "surrogatepass"), digest_size=16).digest()


class QCache:
    """LRU of Q rows. max_bytes: the memory bound (> 0); n_models: N, the width of a row.

    `lookup(prompts)` -> (keys, Q [B, N] with hit rows filled, indices of the misses); `store(keys, Q)` inserts
    rows; `stats()` -> hits, misses, evictions, entries, capacity, bytes, max_bytes.
    """

    def __init__(self, max_bytes: int, n_models: int):
        for name, value in (("max_bytes", max_bytes), ("n_models", n_models)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        self.n_models = n_models
        self.max_bytes = max_bytes
        self.entry_bytes = 4 * n_models + ENTRY_OVERHEAD
        self.capacity = max_bytes // self.entry_bytes
        if self.capacity < 1:
            raise ValueError(f"max_bytes={max_bytes} holds no entry: one takes {self.entry_bytes} bytes at "
                             f"{n_models} models")
        self._rows = np.empty((self.capacity, n_models), dtype=np.float32)
        self._slots: OrderedDict[bytes, int] = OrderedDict()  # key -> row, least recently used first
        self._free = list(range(self.capacity - 1, -1, -1))
        self._lock = threading.Lock()
        self.hits = self.misses = self.evictions = 0

    def lookup(self, prompts) -> tuple[list[bytes], np.ndarray, list[int]]:
        """(keys [B], Q np.float32 [B, N] with the hit rows filled and the rest undefined, miss indices)."""
        keys = [prompt_key(p) for p in prompts]
        Q = np.empty((len(keys), self.n_models), dtype=np.float32)
        misses = []
        with self._lock:
            slots = self._slots
            for i, key in enumerate(keys):
                slot = slots.get(key)
                if slot is None:
                    misses.append(i)
                else:
                    slots.move_to_end(key)
                    Q[i] = self._rows[slot]
            self.hits += len(keys) - len(misses)
            self.misses += len(misses)
        return keys, Q, misses

    def store(self, keys, Q) -> None:
        """Insert (or refresh) the rows Q [len(keys), N] under keys, evicting the least recently used."""
        Q = np.asarray(Q, dtype=np.float32)
        if Q.shape != (len(keys), self.n_models):
            raise ValueError(f"Q must have shape ({len(keys)}, {self.n_models}), got {Q.shape}")
        with self._lock:
            slots = self._slots
            for key, row in zip(keys, Q):
                slot = slots.get(key)
                if slot is not None:
                    slots.move_to_end(key)
                else:
                    if self._free:
                        slot = self._free.pop()
                    else:
                        _, slot = slots.popitem(last=False)
                        self.evictions += 1
                    slots[key] = slot
                self._rows[slot] = row

    def clear(self) -> None:
        """Drop every entry (counters kept)."""
        with self._lock:
            self._slots.clear()
            self._free = list(range(self.capacity - 1, -1, -1))

    def __len__(self) -> int:
        return len(self._slots)

    def stats(self) -> dict:
        with self._lock:
            entries = len(self._slots)
            return {"hits": self.hits, "misses": self.misses, "evictions": self.evictions, "entries": entries,
                    "capacity": self.capacity, "bytes": entries * self.entry_bytes, "max_bytes": self.max_bytes}

    def __repr__(self) -> str:
        return f"QCache({len(self)}/{self.capacity} entries, max_bytes={self.max_bytes})"


def prometheus_collector(router):
    """A prometheus_client collector reading `router.q_cache` at scrape time (zeros while it is off)."""
    from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

    class _QCacheCollector:
        def collect(self):
            cache = getattr(router, "q_cache", None)
            stats = cache.stats() if cache is not None else {}
            out = []
            for name, doc, key, family in (
                    ("routoo_q_cache_hits", "Prompts whose Q came from the exact-repeat cache", "hits",
                     CounterMetricFamily),
                    ("routoo_q_cache_misses", "Prompts looked up in the exact-repeat cache and not found", "misses",
                     CounterMetricFamily),
                    ("routoo_q_cache_evictions", "Entries evicted from the exact-repeat cache", "evictions",
                     CounterMetricFamily),
                    ("routoo_q_cache_entries", "Entries in the exact-repeat cache", "entries", GaugeMetricFamily),
                    ("routoo_q_cache_bytes", "Bytes the exact-repeat cache's entries take", "bytes",
                     GaugeMetricFamily),
                    ("routoo_q_cache_max_bytes", "The exact-repeat cache's bound in bytes (0: off)", "max_bytes",
                     GaugeMetricFamily)):
                metric = family(name, doc)
                metric.add_metric([], stats.get(key, 0))
                out.append(metric)
            return out

    return _QCacheCollector()
