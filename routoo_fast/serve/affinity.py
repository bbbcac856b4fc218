"""Session affinity: a conversation stays on the model chosen for its first turn.

A chat request's session is, in this order: its `x-session-id` header; its `user` field; else the hash of the
conversation's opening (every message up to and including the first user message, which every later turn of the
same conversation repeats, so turn 1 and turn 5 find the same session; two conversations that open with the very
same messages share one). Sessions are scoped by the caller's API key id, and stored as 128-bit BLAKE2b digests, so
memory per session is bounded whatever the client sends.

The rule, after the policy has routed this turn's last user message to model D, where the session is pinned to P:
- no pin (first turn, evicted, or older than the TTL): D, and the session is pinned to D ("new");
- D == P, or D's predicted quality on this turn is not above P's: P ("kept"); P's own predicted quality and
  expected cost go in the headers;
- D's predicted quality is above P's (the policy asks for a stronger model): D, and the pin moves to D
  ("upgraded"); never a silent downgrade mid-conversation;
- P is not among this turn's candidate models (the policy's `models=` leaves it out, or spend caps narrowed the
  candidates): D, pinned from now on ("reset", said in the `x-routoo-affinity` header).
Memory is a least-recently-used map of at most `max_sessions` entries; an entry unused for `ttl_s` seconds is
gone. Counts of each outcome and the number of entries are in /metrics. The map lives in each server process: with
`--workers N` a session is kept per worker (the kernel spreads connections across workers, so a client that keeps
its connection open keeps its worker).
"""
from __future__ import annotations

import hashlib
import json
import time
from collections import OrderedDict
from typing import Callable, Mapping

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

__all__ = ["SessionAffinity", "session_of", "OUTCOMES"]

OUTCOMES = ("new", "kept", "upgraded", "reset", "expired")


def session_of(body: Mapping, headers: Mapping, key: str) -> tuple[bytes, str]:
    """(session digest, where it came from: "header", "user" or "opening") of a chat request from caller `key`."""
    header = headers.get("x-session-id")
    user = body.get("user")
    if header:
        source, value = "header", header
    elif isinstance(user, str) and user:
        source, value = "user", user
    else:
        messages = body.get("messages") or []
        opening = []
        for message in messages:
            opening.append(message)
            if isinstance(message, dict) and message.get("role") == "user":
                break
        source = "opening"
        value = json.dumps(opening, sort_keys=True, ensure_ascii=True, separators=(",", ":"))
    digest = hashlib.blake2b(f"{key}\0{source}\0{value}".encode("utf-8", "surrogatepass"), digest_size=16).digest()
    return digest, source


class SessionAffinity:
    """Session -> pinned model, LRU-bounded with a TTL. Used from the server's event loop (one thread)."""

    def __init__(self, max_sessions: int = 100_000, ttl_s: float = 3600.0, clock: Callable[[], float] = time.monotonic):
        if isinstance(max_sessions, bool) or not isinstance(max_sessions, int) or max_sessions < 1:
            raise ValueError(f"max_sessions must be a positive integer, got {max_sessions!r}")
        if isinstance(ttl_s, bool) or not isinstance(ttl_s, (int, float)) or not 0 < ttl_s < float("inf"):
            raise ValueError(f"ttl_s must be a positive number of seconds, got {ttl_s!r}")
        self.max_sessions, self.ttl_s, self.clock = max_sessions, float(ttl_s), clock
        self._pins: OrderedDict[bytes, tuple[str, float]] = OrderedDict()  # digest -> (model, last used)
        self.counts = dict.fromkeys(OUTCOMES, 0)
        self.evicted = 0

    def __len__(self) -> int:
        return len(self._pins)

    def pinned(self, session: bytes) -> str | None:
        """The session's model, or None (never seen, evicted, or expired: counted as "expired")."""
        entry = self._pins.get(session)
        if entry is None:
            return None
        model, used = entry
        if self.clock() - used > self.ttl_s:
            del self._pins[session]
            self.counts["expired"] += 1
            return None
        return model

    def resolve(self, session: bytes, decision, candidates, quality_of, cost_of):
        """The decision this turn stands by and its outcome (see the module's rule). `decision` is the policy's
        (a `routoo_fast.Decision`), `candidates` the models this turn may use, `quality_of(model)` /
        `cost_of(model)` that model's predicted quality / expected cost on this turn."""
        from dataclasses import replace

        pin = self.pinned(session)
        if pin is None:
            outcome = "new"
        elif pin == decision.model:
            outcome = "kept"
        elif pin not in candidates:
            outcome = "reset"
        elif decision.predicted_quality > quality_of(pin):
            outcome = "upgraded"
        else:
            outcome = "kept"
            decision = replace(decision, model=pin, predicted_quality=float(quality_of(pin)),
                               expected_cost=float(cost_of(pin)))
        self.counts[outcome] += 1
        self._remember(session, decision.model)
        return decision, outcome

    def _remember(self, session: bytes, model: str) -> None:
        self._pins[session] = (model, self.clock())
        self._pins.move_to_end(session)
        while len(self._pins) > self.max_sessions:
            self._pins.popitem(last=False)
            self.evicted += 1

    def collect(self):
        """Prometheus families (register the object itself in a CollectorRegistry)."""
        lookups = CounterMetricFamily("routoo_affinity_turns", "Routed chat turns by session-affinity outcome: new "
                                      "session, kept its model, upgraded to a stronger one, reset by the policy; "
                                      "expired counts pins dropped after the TTL", labels=["outcome"])
        for outcome in OUTCOMES:
            lookups.add_metric([outcome], self.counts[outcome])
        evicted = CounterMetricFamily("routoo_affinity_evicted", "Sessions dropped to stay within max_sessions")
        evicted.add_metric([], self.evicted)
        entries = GaugeMetricFamily("routoo_affinity_sessions", "Sessions pinned to a model now")
        entries.add_metric([], len(self._pins))
        return [lookups, evicted, entries]
