"""Micro-batching: many concurrent callers, one predictor pass.

Callers submit lists of prompts from any thread or event loop. One worker thread takes the oldest request, then
keeps collecting requests until `max_wait` seconds have passed since that request arrived, or the batch would
exceed `max_batch_prompts` prompts or `max_batch_tokens` estimated tokens. It then calls `fn(all_prompts)` once
(`fn: list[str] -> array [B, ...]`) and hands each caller its own rows. If `fn` raises, every caller in that batch
gets the exception.

The queue is bounded (`max_queue` requests): `submit` raises `QueueFull` instead of letting memory grow, so a
server can answer 503 + Retry-After. `close()` stops accepting work, finishes what is queued, and joins the worker.
"""
from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import threading
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

__all__ = ["MicroBatcher", "QueueFull", "BatcherClosed", "approx_tokens"]


class QueueFull(RuntimeError):
    """The batcher's queue holds `max_queue` requests already; retry later."""


class BatcherClosed(RuntimeError):
    """The batcher was closed; it takes no new work."""


def approx_tokens(prompt: str) -> int:
    """Cheap token estimate used for the batch token budget: about 4 characters per token, at least 1."""
    return max(1, len(prompt) // 4)


@dataclass
class _Request:
    prompts: list[str]
    tokens: int
    arrived: float
    future: concurrent.futures.Future


class MicroBatcher:
    """Group concurrent `fn(prompts)` calls into one call per batch (see the module docstring).

    Args:
        fn: `list[str] -> np.ndarray` with one row per prompt (e.g. `Predictor.predict`), called from one thread.
        max_wait: seconds the oldest request in a batch may wait for company (default 2 ms).
        max_batch_prompts: most prompts in one `fn` call (a single larger request runs alone, unsplit).
        max_batch_tokens: most estimated tokens in one `fn` call (None = no token budget).
        max_queue: most requests waiting; beyond it `submit` raises `QueueFull`.
        token_estimate: `str -> int` used for the token budget.
    """

    def __init__(
        self,
        fn: Callable[[list[str]], np.ndarray],
        max_wait: float = 0.002,
        max_batch_prompts: int = 64,
        max_batch_tokens: int | None = None,
        max_queue: int = 1024,
        token_estimate: Callable[[str], int] = approx_tokens,
        name: str = "routoo-batcher",
    ):
        if not callable(fn):
            raise TypeError(f"fn must be callable, got {type(fn).__name__}")
        if not (isinstance(max_wait, (int, float)) and 0 <= max_wait < float("inf")):
            raise ValueError(f"max_wait must be a finite number of seconds >= 0, got {max_wait!r}")
        for arg, value in (("max_batch_prompts", max_batch_prompts), ("max_queue", max_queue)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{arg} must be an integer >= 1, got {value!r}")
        if max_batch_tokens is not None and (not isinstance(max_batch_tokens, int) or max_batch_tokens < 1):
            raise ValueError(f"max_batch_tokens must be an integer >= 1 or None, got {max_batch_tokens!r}")
        self.fn = fn
        self.max_wait = float(max_wait)
        self.max_batch_prompts = max_batch_prompts
        self.max_batch_tokens = max_batch_tokens
        self.max_queue = max_queue
        self.token_estimate = token_estimate
        self._queue: collections.deque[_Request] = collections.deque()
        self._cond = threading.Condition()
        self._closed = False
        # counters for metrics / tests: number of fn calls and prompts served
        self.batches = 0
        self.prompts_served = 0
        self._worker = threading.Thread(target=self._run, name=name, daemon=True)
        self._worker.start()

    # ---- caller side -------------------------------------------------------------------------------------
    def submit(self, prompts: Sequence[str]) -> concurrent.futures.Future:
        """Queue `prompts`; the future resolves to `fn`'s rows for them. Thread-safe; never blocks.

        Raises QueueFull when `max_queue` requests are waiting, BatcherClosed after `close()`.
        """
        prompts = list(prompts)
        if not prompts:
            raise ValueError("prompts is empty: submit at least one prompt")
        tokens = sum(self.token_estimate(p) for p in prompts)
        request = _Request(prompts, tokens, time.monotonic(), concurrent.futures.Future())
        with self._cond:
            if self._closed:
                raise BatcherClosed("the batcher is closed")
            if len(self._queue) >= self.max_queue:
                raise QueueFull(f"batcher queue is full ({self.max_queue} requests waiting)")
            self._queue.append(request)
            self._cond.notify()
        return request.future

    def __call__(self, prompts: Sequence[str], timeout: float | None = None) -> np.ndarray:
        """Blocking call from any thread: `fn`'s rows for `prompts`, computed in a shared batch."""
        return self.submit(prompts).result(timeout)

    async def acall(self, prompts: Sequence[str]) -> np.ndarray:
        """Awaitable call from an event loop; does not block the loop."""
        return await asyncio.wrap_future(self.submit(prompts))

    @property
    def queue_depth(self) -> int:
        """Requests waiting for a batch right now."""
        return len(self._queue)

    def close(self, timeout: float | None = None) -> None:
        """Stop taking work, serve what is queued, join the worker. Idempotent."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        if threading.current_thread() is not self._worker:
            self._worker.join(timeout)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ---- worker side -------------------------------------------------------------------------------------
    def _run(self) -> None:
        while True:
            batch = self._next_batch()
            if batch is None:
                return
            self._serve(batch)

    def _next_batch(self) -> list[_Request] | None:
        """Block for the oldest request, then gather more until max_wait has passed or a budget is full."""
        with self._cond:
            while not self._queue:
                if self._closed:
                    return None
                self._cond.wait()
            first = self._queue.popleft()
            batch, n_prompts, n_tokens = [first], len(first.prompts), first.tokens
            deadline = first.arrived + self.max_wait
            while True:
                if self._queue:
                    nxt = self._queue[0]
                    if not self._fits(n_prompts + len(nxt.prompts), n_tokens + nxt.tokens):
                        break
                    batch.append(self._queue.popleft())
                    n_prompts += len(nxt.prompts)
                    n_tokens += nxt.tokens
                    continue
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._closed:
                    break
                self._cond.wait(remaining)
            return batch

    def _fits(self, n_prompts: int, n_tokens: int) -> bool:
        if n_prompts > self.max_batch_prompts:
            return False
        return self.max_batch_tokens is None or n_tokens <= self.max_batch_tokens

    def _serve(self, batch: list[_Request]) -> None:
        # a caller may have cancelled its future (e.g. a client that went away): skip its prompts
        batch = [r for r in batch if r.future.set_running_or_notify_cancel()]
        if not batch:
            return
        prompts = [p for r in batch for p in r.prompts]
        try:
            out = np.asarray(self.fn(prompts))
            if out.ndim == 0 or len(out) != len(prompts):
                raise RuntimeError(f"batched fn returned {len(out)} rows for {len(prompts)} prompts")
        except BaseException as exc:  # delivered to every caller; the worker keeps running
            for r in batch:
                r.future.set_exception(exc)
            return
        self.batches += 1
        self.prompts_served += len(prompts)
        start = 0
        for r in batch:
            stop = start + len(r.prompts)
            r.future.set_result(out[start:stop].copy())  # no caller aliases another's rows
            start = stop
