"""Spend caps per API key and overall, in USD per minute and per day, kept in SQLite so that every `--workers`
process and every restart sees the same totals.

Caps file (JSON, `routoo-fast serve --spend-caps FILE`):

    {
      "database": "spend.sqlite",
      "tighten_at": 0.8,
      "overall": {"usd_per_minute": 2.0, "usd_per_day": 200.0},
      "per_key": {"usd_per_minute": 0.5, "usd_per_day": 20.0},
      "keys": {"k-1a2b3c4d5e6f": {"usd_per_day": 50.0}}
    }

Every field is optional. `overall` caps the whole server; `per_key` caps each API key (the bearer token a client
presents, named by its id `routoo_fast.serve.accounting.key_id(token)`, shown in /metrics; the secret itself is
never written anywhere); `keys` gives single keys their own caps, field by field over `per_key`. A cap left out
(or null) is no cap. `database` is the SQLite file, relative to the caps file (default `routoo-spend.sqlite`
beside it). `tighten_at` in (0, 1] (default 0.8).

Windows are calendar windows in UTC: the minute (`floor(t / 60)`) and the day (`floor(t / 86400)`) a charge falls in;
a new window starts from zero.

The rule, applied to each chat request before it is forwarded:
1. If any cap that applies (overall or the caller's key) is spent (total >= cap), the request is refused with 429
   (`insufficient_quota`), a message naming the cap, and `Retry-After` = the seconds until that window ends (the
   latest end among the spent caps).
2. Else, if any applicable cap is at least `tighten_at` spent, a routed request (`model: "router..."`) is routed
   under the same policy but only among the cheaper half of its candidate models for this prompt: those whose
   expected cost is at most the median of the candidates' expected costs (`x-routoo-spend-tightened: true`). A
   request naming a model directly is not re-routed (it was asked for by name), only refused at the cap.
3. After the upstream answers, the call is charged: its actual cost from the answer's usage where known, else the
   router's expected cost of the call (a stream without `stream_options.include_usage`), else 0 (a pass-through
   model the router does not price). A call refused or failed before its answer began is not charged; a stream
   that breaks off mid-way, or that the client abandons, is charged as one without usage. Caps are checked before a call and a call may cross a cap; the calls after it are
   refused.

Storage: one SQLite database in WAL mode (readers never wait for the writer, and every worker process shares it)
with `synchronous=FULL`: a charge is one transaction (a ledger row and the four window totals it adds to), and
in WAL mode FULL fsyncs the log at every commit, so a committed charge survives a killed process and a power cut
alike (NORMAL would survive a killed process but could lose the last commits on a power cut or OS crash; one fsync
per forwarded chat, run off the event loop, is cheap beside the LLM call it pays for). Totals are never cached in
a process, so all workers agree. Minute totals older than an hour are pruned as charges come in; the ledger of
charges (time, key id, model, USD) is kept for audit.
"""
from __future__ import annotations

import json
import math
import os
import sqlite3
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

__all__ = ["Caps", "SpendConfig", "SpendLedger", "SpendGuard", "SpendCapExceeded", "SpendState", "OVERALL",
           "DEFAULT_DATABASE"]

OVERALL = "*"  # the scope of the whole server's totals (key ids start with "k-" or are "anonymous")
DEFAULT_DATABASE = "routoo-spend.sqlite"
PERIODS = {"minute": 60, "day": 86400}
_CAP_FIELDS = {"usd_per_minute": "minute", "usd_per_day": "day"}
_TOP_FIELDS = {"database", "tighten_at", "overall", "per_key", "keys"}
_PRUNE_EVERY = 100  # charges between prunes of old minute totals


@dataclass(frozen=True)
class Caps:
    """USD caps for one scope; None = no cap."""

    usd_per_minute: float | None = None
    usd_per_day: float | None = None

    def get(self, period: str) -> float | None:
        return self.usd_per_minute if period == "minute" else self.usd_per_day

    def over(self, other: "Caps") -> "Caps":
        """These caps, with `other`'s where these have none."""
        return Caps(other.usd_per_minute if self.usd_per_minute is None else self.usd_per_minute,
                    other.usd_per_day if self.usd_per_day is None else self.usd_per_day)


@dataclass(frozen=True)
class SpendConfig:
    overall: Caps = Caps()
    per_key: Caps = Caps()
    keys: Mapping[str, Caps] = field(default_factory=dict)
    tighten_at: float = 0.8
    database: Path | None = None  # None: DEFAULT_DATABASE in the working directory

    def caps_for(self, key: str) -> Caps:
        own = self.keys.get(key)
        return self.per_key if own is None else own.over(self.per_key)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "SpendConfig":
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"spend caps file {str(path)!r} does not exist")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ValueError(f"spend caps file {str(path)!r} is not valid JSON: {exc}") from None
        return cls.from_dict(data, source=str(path), base=path.resolve().parent)

    @classmethod
    def from_dict(cls, data: Any, source: str = "spend caps", base: Path | None = None) -> "SpendConfig":
        if not isinstance(data, Mapping):
            raise ValueError(f"{source} must be a JSON object (fields: {sorted(_TOP_FIELDS)})")
        unknown = set(data) - _TOP_FIELDS
        if unknown:
            raise ValueError(f"{source} has unknown fields {sorted(unknown)} (allowed: {sorted(_TOP_FIELDS)})")
        tighten = data.get("tighten_at", 0.8)
        if isinstance(tighten, bool) or not isinstance(tighten, (int, float)) or not 0 < tighten <= 1:
            raise ValueError(f"{source}: tighten_at must be a number in (0, 1], got {tighten!r}")
        database = data.get("database", DEFAULT_DATABASE)
        if not isinstance(database, str) or not database:
            raise ValueError(f"{source}: database must be a file path, got {database!r}")
        db = Path(database)
        if base is not None and not db.is_absolute():
            db = base / db
        keys = data.get("keys", {})
        if not isinstance(keys, Mapping):
            raise ValueError(f"{source}: keys must be an object mapping key ids (k-...) to caps")
        parsed = {}
        for kid, caps in keys.items():
            if not (isinstance(kid, str) and kid.startswith("k-") and len(kid) == 14):
                raise ValueError(f"{source}: keys[{kid!r}] is not a key id: use the 'k-' + 12 hex digits id that "
                                 "routoo_fast.serve.accounting.key_id(token) gives (never the key itself)")
            parsed[kid] = _caps(caps, f"{source}: keys[{kid!r}]")
        return cls(_caps(data.get("overall"), f"{source}: overall"), _caps(data.get("per_key"), f"{source}: per_key"),
                   parsed, float(tighten), db)


def _caps(value: Any, where: str) -> Caps:
    if value is None:
        return Caps()
    if not isinstance(value, Mapping):
        raise ValueError(f"{where} must be an object with usd_per_minute and/or usd_per_day")
    unknown = set(value) - set(_CAP_FIELDS)
    if unknown:
        raise ValueError(f"{where} has unknown fields {sorted(unknown)} (allowed: {sorted(_CAP_FIELDS)})")
    out = {}
    for name in _CAP_FIELDS:
        cap = value.get(name)
        if cap is not None and (isinstance(cap, bool) or not isinstance(cap, (int, float))
                                or not 0 <= cap < math.inf):
            raise ValueError(f"{where}.{name} must be a finite number of USD >= 0 (or null), got {cap!r}")
        out[name] = None if cap is None else float(cap)
    return Caps(**out)


class SpendLedger:
    """Charges and window totals in one SQLite file (WAL, synchronous=FULL), shared by processes.

    `charge(key, model, usd)` is one transaction; `totals(key)` reads the current minute's and day's totals of the
    key and of the whole server. Safe to share between threads (one connection behind a lock)."""

    def __init__(self, path: str | os.PathLike, clock: Callable[[], float] = time.time, busy_timeout_s: float = 30.0):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.clock = clock
        self._lock = threading.Lock()
        self._charges = 0
        # isolation_level=None: we issue BEGIN/COMMIT ourselves, so one charge is exactly one transaction
        self._db = sqlite3.connect(str(self.path), timeout=busy_timeout_s, isolation_level=None,
                                   check_same_thread=False)
        mode = self._db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise RuntimeError(f"spend database {str(self.path)!r} cannot use WAL mode (got {mode!r}); put it on a "
                               "local filesystem")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("BEGIN IMMEDIATE")
        try:
            self._db.execute("CREATE TABLE IF NOT EXISTS charges (id INTEGER PRIMARY KEY, at REAL NOT NULL, "
                             "key TEXT NOT NULL, model TEXT NOT NULL, usd REAL NOT NULL)")
            self._db.execute("CREATE TABLE IF NOT EXISTS totals (scope TEXT NOT NULL, period TEXT NOT NULL, "
                             "start INTEGER NOT NULL, usd REAL NOT NULL, PRIMARY KEY (scope, period, start))")
            self._db.execute("COMMIT")
        except BaseException:
            self._db.execute("ROLLBACK")
            raise

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @staticmethod
    def window(period: str, now: float) -> tuple[int, int]:
        """(start, end) in Unix seconds of the `period` window holding `now`."""
        size = PERIODS[period]
        start = int(now // size) * size
        return start, start + size

    def charge(self, key: str, model: str, usd: float, now: float | None = None) -> None:
        """Add one call's USD to the ledger and to the minute and day totals of `key` and of the server, in one
        transaction (all of it is on disk when this returns, or none of it)."""
        if isinstance(usd, bool) or not isinstance(usd, (int, float)) or not 0 <= usd < math.inf:
            raise ValueError(f"a charge must be a finite USD amount >= 0, got {usd!r}")
        now = self.clock() if now is None else now
        rows = [(scope, period, self.window(period, now)[0], float(usd))
                for scope in (OVERALL, key) for period in PERIODS]
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute("INSERT INTO charges (at, key, model, usd) VALUES (?, ?, ?, ?)",
                                 (now, key, model, float(usd)))
                self._db.executemany("INSERT INTO totals (scope, period, start, usd) VALUES (?, ?, ?, ?) "
                                     "ON CONFLICT (scope, period, start) DO UPDATE SET usd = usd + excluded.usd",
                                     rows)
                self._charges += 1
                if self._charges % _PRUNE_EVERY == 0:
                    self._db.execute("DELETE FROM totals WHERE period = 'minute' AND start < ?", (now - 3600,))
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def totals(self, key: str, now: float | None = None) -> dict[tuple[str, str], float]:
        """{(scope, period): USD spent in the current window} for scope in (OVERALL, key), period in minute/day."""
        now = self.clock() if now is None else now
        out = {}
        with self._lock:
            for scope in (OVERALL, key):
                for period in PERIODS:
                    row = self._db.execute("SELECT usd FROM totals WHERE scope = ? AND period = ? AND start = ?",
                                           (scope, period, self.window(period, now)[0])).fetchone()
                    out[(scope, period)] = 0.0 if row is None else float(row[0])
        return out


class SpendCapExceeded(Exception):
    """A cap that applies to the request is spent: answer 429 with `retry_after` seconds."""

    def __init__(self, message: str, retry_after: int):
        super().__init__(message)
        self.message, self.retry_after = message, retry_after


@dataclass(frozen=True)
class SpendState:
    """Where a request stands: the largest fraction of any applicable cap spent, and whether to tighten."""

    fraction: float
    tighten: bool


class SpendGuard:
    """The caps of a `SpendConfig` over a `SpendLedger`: `check` before a call, `tighten` the policy, `charge`
    after it."""

    def __init__(self, config: SpendConfig, ledger: SpendLedger):
        self.config, self.ledger = config, ledger

    @classmethod
    def from_file(cls, path, database: str | os.PathLike | None = None, clock: Callable[[], float] = time.time):
        config = SpendConfig.load(path)
        return cls(config, SpendLedger(database if database is not None else config.database, clock=clock))

    def check(self, key: str) -> SpendState:
        """Raise SpendCapExceeded if a cap of `key` or of the server is spent; else the state."""
        now = self.ledger.clock()
        totals = self.ledger.totals(key, now)
        fraction, spent = 0.0, []
        for scope, caps in ((OVERALL, self.config.overall), (key, self.config.caps_for(key))):
            for period in PERIODS:
                cap = caps.get(period)
                if cap is None:
                    continue
                used = totals[(scope, period)]
                share = math.inf if cap == 0 else used / cap
                fraction = max(fraction, share)
                if used >= cap:
                    spent.append((scope, period, used, cap))
        if spent:
            retry = max(math.ceil(self.ledger.window(period, now)[1] - now) for _, period, _, _ in spent)
            scope, period, used, cap = spent[0]
            who = "this server's overall" if scope == OVERALL else f"API key {scope}'s"
            raise SpendCapExceeded(
                f"spend cap reached: {who} cap of ${cap:.6g} per {period} is spent (${used:.6g} this {period}, "
                f"UTC); retry after {retry} s, when the window ends", max(1, retry))
        return SpendState(fraction, fraction >= self.config.tighten_at)

    def charge(self, key: str, model: str, usd: float) -> None:
        self.ledger.charge(key, model, usd)


def cheaper_half(policy, router, prompt: str, costs=None):
    """`policy` routed only among the cheaper half of its candidates for `prompt`: models whose expected cost is
    at most the median of the candidates' expected costs. costs [N]: the prompt's expected costs in
    router.model_names order (from `Router.estimate`, with per-prompt output lengths); None = the router's cost
    model with each model's mean output length."""
    names = list(policy.models) if policy.models is not None else list(router.model_names)
    index = {m: i for i, m in enumerate(router.model_names)}
    row = router.cost_model.costs([prompt])[0] if costs is None else np.asarray(costs, dtype=np.float64)
    costs = row[[index[m] for m in names]]
    median = float(np.median(costs))
    keep = tuple(m for m, c in zip(names, costs) if c <= median)
    return replace(policy, models=keep)
