"""Micro-batching: many concurrent callers, one predictor pass.

Callers submit lists of prompts from any thread or event loop. One worker thread takes the oldest request, then
keeps collecting requests until `max_wait` seconds have passed since that request arrived, or the pass would
exceed `max_batch_prompts` prompts or `max_batch_tokens` estimated tokens. It then calls `fn(all_prompts)` once
(`fn: list[str] -> array [B, ...]`) and hands each caller its own rows.

Fairness: a request too big for one pass (more prompts or estimated tokens than a pass takes) is served a chunk
per pass; after each chunk its remainder goes to the back of the queue, so requests that arrived meanwhile are
served before its next chunk (round robin) instead of waiting for all of it. A request that fits in one pass is
never split. A single prompt over the token budget runs alone.

Failure isolation: if `fn` raises on a pass shared by several requests, each request's part is run again alone,
so only the request(s) that fail on their own get the exception and the others get their rows. A failure costs
at most one extra pass's worth of prompts.

The queue is bounded (`max_queue` requests): `submit` raises `QueueFull` instead of letting memory grow, so a
server can answer 503 + Retry-After. `close()` stops accepting work, finishes what is queued, and joins the worker.

`stats()` gives counters and histograms (prompts per pass, pass latency) for a metrics scrape.

Memory: `limit_malloc_growth()` (called by `routoo-fast serve`) fixes glibc's mmap threshold, so the activations
of each pass, whose shapes vary with the length buckets, go back to the OS when freed instead of staying in the
heap. Measured with the shipped router, 64 callers, 3 x 1,500 MMLU-length requests: RSS 495 MB -> 1,168 MB within
the first 1,500 and level after (1,170 MB); a final malloc_trim(0) gave 580 MB back, so it was free memory kept by
the allocator, not a leak. MALLOC_ARENA_MAX=2 did not help (1,264 MB); malloc_trim(0) after every pass did
(600 MB) but costs tens of ms per call with a grown heap; a fixed 1 MiB mmap threshold kept RSS at 599 MB at the
same throughput.
"""
from __future__ import annotations

import asyncio
import bisect
import collections
import concurrent.futures
import threading
import time
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from ..costs import prompt_tokens

__all__ = ["MicroBatcher", "QueueFull", "BatcherClosed", "Histogram", "approx_tokens", "limit_malloc_growth",
           "DEFAULT_MAX_BATCH_TOKENS", "DEFAULT_MMAP_THRESHOLD"]

# Estimated tokens (characters / 4) per predictor pass, unless told otherwise. With the shipped router on one
# (shared) CPU thread: 19 MMLU-Pro prompts long enough to fill 256 tokens fit, a 2.3 s pass; 64 median-length ones
# (the 64-prompt cap binds first) took 4.0 s. A request bigger than this is served in chunks, so a short request
# waits for about one such pass behind it, not for all of it (1,024 x 2 KB prompts held the predictor 51 s).
DEFAULT_MAX_BATCH_TOKENS = 8192

DEFAULT_MMAP_THRESHOLD = 1 << 20  # bytes: blocks this big or bigger are mmapped and unmapped on free
_M_MMAP_THRESHOLD = -3  # glibc's mallopt parameter number

PASS_PROMPTS_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
PASS_SECONDS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class QueueFull(RuntimeError):
    """The batcher's queue holds `max_queue` requests already; retry later."""


class BatcherClosed(RuntimeError):
    """The batcher was closed; it takes no new work."""


def approx_tokens(prompt: str) -> int:
    """Token estimate for the batch token budget: the package's one estimate (`costs.prompt_tokens`,
    ceil(chars / 4)), at least 1."""
    return max(1, prompt_tokens(prompt))


class Histogram:
    """Fixed-bucket histogram written by the worker, read by a scrape (both under the batcher's stats lock)."""

    def __init__(self, bounds: Sequence[float]):
        self.bounds = tuple(bounds)
        self.counts = [0] * (len(self.bounds) + 1)  # last slot: above every bound (+Inf)
        self.sum = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value

    def snapshot(self) -> dict:
        """{"buckets": [(upper bound, cumulative count), ..., (inf, total)], "sum": float, "count": int}."""
        cumulative, total = [], 0
        for bound, n in zip(self.bounds + (float("inf"),), self.counts):
            total += n
            cumulative.append((bound, total))
        return {"buckets": cumulative, "sum": self.sum, "count": total}


def limit_malloc_growth(mmap_threshold: int = DEFAULT_MMAP_THRESHOLD) -> bool:
    """Fix glibc's mmap threshold at `mmap_threshold` bytes for this process (see the module docstring).

    glibc starts at 128 KiB and raises the threshold to the size of each mmapped block that is freed (up to
    32 MiB); after that, large tensors come from the heap, and freed heap memory below its top is kept. Setting
    the threshold (mallopt M_MMAP_THRESHOLD, the same as MALLOC_MMAP_THRESHOLD_=<bytes> in the environment) also
    switches that adjustment off. Returns True if set; False where the C library has no mallopt (not glibc).
    """
    import ctypes

    if isinstance(mmap_threshold, bool) or not isinstance(mmap_threshold, int) or not 1 <= mmap_threshold < 2 ** 31:
        raise ValueError(f"mmap_threshold must be an integer in [1, 2**31) bytes, got {mmap_threshold!r}")
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return mallopt(_M_MMAP_THRESHOLD, mmap_threshold) == 1


@dataclass(eq=False)
class _Request:
    prompts: list[str]
    tokens: list[int]  # estimated tokens per prompt
    arrived: float
    future: concurrent.futures.Future
    done: int = 0  # prompts already scored (served in order, one chunk per pass)
    rows: list = field(default_factory=list)  # scored chunks, concatenated when the last one is in

    @property
    def left(self) -> int:
        return len(self.prompts) - self.done


class MicroBatcher:
    """Group concurrent `fn(prompts)` calls into one call per batch (see the module docstring).

    Args:
        fn: `list[str] -> np.ndarray` with one row per prompt (e.g. `Predictor.predict`), called from one thread.
        max_wait: seconds the oldest request in a batch may wait for company (default 2 ms).
        max_batch_prompts: most prompts in one `fn` call (a larger request is served in several).
        max_batch_tokens: most estimated tokens in one `fn` call (None = no token budget; a single prompt over
            the budget runs alone).
        max_queue: most requests waiting; beyond it `submit` raises `QueueFull`.
        token_estimate: `str -> int` used for the token budget.
    """

    def __init__(
        self,
        fn: Callable[[list[str]], np.ndarray],
        max_wait: float = 0.002,
        max_batch_prompts: int = 64,
        max_batch_tokens: int | None = DEFAULT_MAX_BATCH_TOKENS,
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
        if max_batch_tokens is not None and (not isinstance(max_batch_tokens, int) or isinstance(max_batch_tokens, bool)
                                             or max_batch_tokens < 1):
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
        # counters for metrics / tests: successful fn calls, prompts they scored, failed calls, requests failed
        self.batches = 0
        self.prompts_served = 0
        self.failed_passes = 0
        self.failed_requests = 0
        self._stats_lock = threading.Lock()
        self._pass_prompts = Histogram(PASS_PROMPTS_BUCKETS)
        self._pass_seconds = Histogram(PASS_SECONDS_BUCKETS)
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
        tokens = [max(1, int(self.token_estimate(p))) for p in prompts]
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
        """Requests waiting for a batch right now (a big request between two of its chunks counts)."""
        return len(self._queue)

    def stats(self) -> dict:
        """Counters and histograms for a metrics scrape: passes, prompts, failed_passes, failed_requests,
        queue_depth, queue_capacity, pass_prompts and pass_seconds (see `Histogram.snapshot`). Every fn call
        counts in the histograms, including the solo re-runs that isolate a failure."""
        with self._stats_lock:
            return {"passes": self.batches, "prompts": self.prompts_served, "failed_passes": self.failed_passes,
                    "failed_requests": self.failed_requests, "queue_depth": self.queue_depth,
                    "queue_capacity": self.max_queue, "pass_prompts": self._pass_prompts.snapshot(),
                    "pass_seconds": self._pass_seconds.snapshot()}

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

    def _next_batch(self) -> list[tuple[_Request, int]] | None:
        """Block for the oldest request, then gather more until max_wait has passed or a budget is full.

        Returns (request, stop) pairs: the pass scores request.prompts[request.done:stop]."""
        with self._cond:
            while True:
                while not self._queue:
                    if self._closed:
                        return None
                    self._cond.wait()
                if self._drop_cancelled_head():
                    continue
                break
            batch: list[tuple[_Request, int]] = []
            n_prompts = n_tokens = 0
            deadline = self._queue[0].arrived + self.max_wait
            while True:
                if self._queue:
                    if self._drop_cancelled_head():
                        continue
                    r = self._queue[0]
                    stop, tokens = self._take(r, n_prompts, n_tokens)
                    if stop == r.done or (stop < len(r.prompts) and batch and self._fits_alone(r)):
                        break  # nothing fits, or a request that fits in a pass of its own waits to stay whole
                    self._queue.popleft()
                    batch.append((r, stop))
                    n_prompts += stop - r.done
                    n_tokens += tokens
                    if stop < len(r.prompts):
                        break  # a chunk of a big request filled the pass
                    continue
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._closed:
                    break
                self._cond.wait(remaining)
            return batch

    def _drop_cancelled_head(self) -> bool:
        r = self._queue[0]
        if not r.future.cancelled():
            return False
        self._queue.popleft()
        r.future.set_running_or_notify_cancel()  # False: wakes anyone waiting on the cancelled future
        return True

    def _take(self, r: _Request, n_prompts: int, n_tokens: int) -> tuple[int, int]:
        """How far into `r` a pass already holding n_prompts / n_tokens can go: (stop index, tokens taken).
        An empty pass always takes at least one prompt."""
        stop, tokens = r.done, 0
        room = self.max_batch_prompts - n_prompts
        budget = self.max_batch_tokens
        while stop < len(r.prompts) and stop - r.done < room:
            t = r.tokens[stop]
            if budget is not None and n_tokens + tokens + t > budget and (n_prompts or stop > r.done):
                break
            tokens += t
            stop += 1
        return stop, tokens

    def _fits_alone(self, r: _Request) -> bool:
        stop, _ = self._take(r, 0, 0)
        return stop == len(r.prompts)

    def _serve(self, batch: list[tuple[_Request, int]]) -> None:
        # a caller may have cancelled its future (e.g. a client that went away): skip its prompts
        live = []
        for r, stop in batch:
            if r.future.cancelled():
                r.future.set_running_or_notify_cancel()
            else:
                live.append((r, stop))
        if not live:
            return
        prompts = [p for r, stop in live for p in r.prompts[r.done:stop]]
        try:
            out = self._pass(prompts)
        except Exception as exc:
            if len(live) == 1:
                self._fail(live[0][0], exc)
                return
            # isolate the culprit: each request's part alone, so one bad prompt fails only its own request
            for r, stop in live:
                try:
                    part = self._pass(r.prompts[r.done:stop])
                except Exception as solo_exc:
                    self._fail(r, solo_exc)
                else:
                    self._deliver(r, stop, part)
            return
        except BaseException as exc:  # KeyboardInterrupt and the like: everyone hears it; the worker keeps running
            for r, _ in live:
                self._fail(r, exc)
            return
        start = 0
        for r, stop in live:
            n = stop - r.done
            self._deliver(r, stop, out[start:start + n])
            start += n

    def _pass(self, prompts: list[str]) -> np.ndarray:
        """One fn call, timed and counted."""
        t0 = time.perf_counter()
        try:
            out = np.asarray(self.fn(prompts))
            if out.ndim == 0 or len(out) != len(prompts):
                raise RuntimeError(f"batched fn returned {len(out) if out.ndim else 0} rows for {len(prompts)} "
                                   "prompts")
        except BaseException:
            with self._stats_lock:
                self.failed_passes += 1
                self._pass_prompts.observe(len(prompts))
                self._pass_seconds.observe(time.perf_counter() - t0)
            raise
        with self._stats_lock:
            self.batches += 1
            self.prompts_served += len(prompts)
            self._pass_prompts.observe(len(prompts))
            self._pass_seconds.observe(time.perf_counter() - t0)
        return out

    def _fail(self, r: _Request, exc: BaseException) -> None:
        with self._stats_lock:
            self.failed_requests += 1
        if r.future.set_running_or_notify_cancel():
            r.future.set_exception(exc)

    def _deliver(self, r: _Request, stop: int, rows: np.ndarray) -> None:
        r.rows.append(rows.copy())  # no caller aliases another's rows
        r.done = stop
        if stop < len(r.prompts):  # more chunks to go: behind whoever arrived meanwhile
            with self._cond:
                self._queue.append(r)
                self._cond.notify()
            return
        result = r.rows[0] if len(r.rows) == 1 else np.concatenate(r.rows)
        r.rows = []
        if r.future.set_running_or_notify_cancel():
            r.future.set_result(result)
