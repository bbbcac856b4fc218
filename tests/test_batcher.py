"""MicroBatcher: every caller gets exactly its own rows, batches really form, a failing request fails alone,
big requests are split without starving small ones, the queue is bounded, and shutdown finishes queued work.
The reference is calling `fn` on each request alone. Orderings are forced with events, never with timings."""
import asyncio
import threading
import time

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from routoo_fast.serve.batcher import BatcherClosed, MicroBatcher, QueueFull, approx_tokens


def row_fn(prompts):
    """A deterministic per-prompt function: row = [len(p), hash-ish of p] so rows are distinguishable."""
    return np.array([[len(p), sum(map(ord, p)) % 9973] for p in prompts], dtype=np.float64)


class Recorder:
    """Wraps a fn and records the size of every call (thread-safe: only the worker thread calls it)."""

    def __init__(self, fn=row_fn, delay=0.0):
        self.fn, self.delay, self.sizes, self.calls = fn, delay, [], []

    def __call__(self, prompts):
        self.sizes.append(len(prompts))
        self.calls.append(list(prompts))
        if self.delay:
            time.sleep(self.delay)
        return self.fn(prompts)


def test_single_call_matches_direct():
    with MicroBatcher(row_fn) as b:
        got = b(["a", "bb", "ccc"])
    np.testing.assert_array_equal(got, row_fn(["a", "bb", "ccc"]))


@settings(max_examples=25, deadline=None)
@given(st.lists(st.lists(st.text(min_size=0, max_size=12), min_size=1, max_size=5), min_size=1, max_size=30))
def test_threads_each_get_their_own_rows(requests):
    rec = Recorder(delay=0.001)
    results = [None] * len(requests)
    with MicroBatcher(rec, max_wait=0.005, max_batch_prompts=3, max_batch_tokens=6) as b:
        def call(i):
            results[i] = b(requests[i])
        threads = [threading.Thread(target=call, args=(i,)) for i in range(len(requests))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    for req, got in zip(requests, results):
        np.testing.assert_array_equal(got, row_fn(req))
    assert sum(rec.sizes) == sum(map(len, requests))
    # requests larger than a pass are split: no pass is over either budget (a lone prompt may pass the tokens)
    assert all(len(c) <= 3 and (len(c) == 1 or sum(map(approx_tokens, c)) <= 6) for c in rec.calls)


def test_concurrent_callers_share_batches():
    """Requests from 31 threads that queue while the worker is busy share its next pass (gated, not timed)."""
    entered, gate = threading.Event(), threading.Event()

    def gated(prompts):
        entered.set()
        gate.wait(30)
        return row_fn(prompts)

    rec = Recorder(fn=gated)
    with MicroBatcher(rec, max_wait=0.0, max_batch_prompts=64) as b:
        first = b.submit(["p0"])
        assert entered.wait(30)  # the worker is inside fn with p0 alone
        futures = [None] * 31

        def call(i):
            futures[i] = b.submit([f"p{i + 1}"])
        threads = [threading.Thread(target=call, args=(i,)) for i in range(31)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        gate.set()
        np.testing.assert_array_equal(first.result(30), row_fn(["p0"]))
        for i, f in enumerate(futures):
            np.testing.assert_array_equal(f.result(30), row_fn([f"p{i + 1}"]))
    assert rec.sizes == [1, 31]


def test_batch_prompt_limit_respected():
    rec = Recorder(delay=0.01)
    with MicroBatcher(rec, max_wait=0.05, max_batch_prompts=4) as b:
        futures = [b.submit([f"p{i}"]) for i in range(20)]
        for f in futures:
            f.result(5)
    assert max(rec.sizes) <= 4 and sum(rec.sizes) == 20


def test_token_budget_respected():
    rec = Recorder()
    prompt = "x" * 40  # 10 estimated tokens
    with MicroBatcher(rec, max_wait=0.05, max_batch_tokens=30, max_batch_prompts=100) as b:
        futures = [b.submit([prompt]) for _ in range(12)]
        for f in futures:
            f.result(5)
    assert max(rec.sizes) <= 3 and sum(rec.sizes) == 12


def test_lone_request_is_served_alone_once_max_wait_passes():
    """A lone request does not wait for a full batch: it is served by itself, and so is the next one.
    The timeout only guards against a hang (15,000x max_wait); no elapsed time is asserted."""
    rec = Recorder()
    with MicroBatcher(rec, max_wait=0.002, max_batch_prompts=64) as b:
        np.testing.assert_array_equal(b(["hello"], timeout=30), row_fn(["hello"]))
        assert rec.sizes == [1] and b.batches == 1
        np.testing.assert_array_equal(b(["again"], timeout=30), row_fn(["again"]))
    assert rec.sizes == [1, 1]


def test_max_wait_holds_the_batch_open_for_company():
    """The other side of max_wait: while it has not passed, later requests join the oldest one's batch."""
    rec = Recorder()
    b = MicroBatcher(rec, max_wait=3600.0, max_batch_prompts=64)
    futures = [b.submit(["first"]), b.submit(["second", "third"])]
    assert not any(f.done() for f in futures)  # an hour of max_wait: nothing is served before close()
    b.close()  # close() ends the wait and serves what is queued
    assert rec.sizes == [3]
    np.testing.assert_array_equal(futures[1].result(), row_fn(["second", "third"]))


def test_failing_request_fails_alone_and_worker_survives():
    """One bad prompt in a shared pass: its request gets the exception, its neighbours their rows."""
    started, gate = threading.Event(), threading.Event()

    def failing(prompts):
        if prompts == ["first"]:  # holds the worker until the others are queued, so they share the next pass
            started.set()
            gate.wait(5)
        if any(p == "boom" for p in prompts):
            raise ValueError("bad prompt in batch")
        return row_fn(prompts)

    rec = Recorder(failing)
    with MicroBatcher(rec, max_wait=0.0) as b:
        first = b.submit(["first"])
        assert started.wait(5)
        futures = [b.submit(["ok", "also ok"]), b.submit(["boom"]), b.submit(["fine"])]
        gate.set()
        with pytest.raises(ValueError, match="bad prompt"):
            futures[1].result(5)
        np.testing.assert_array_equal(futures[0].result(5), row_fn(["ok", "also ok"]))
        np.testing.assert_array_equal(futures[2].result(5), row_fn(["fine"]))
        np.testing.assert_array_equal(first.result(5), row_fn(["first"]))
        np.testing.assert_array_equal(b(["after"], timeout=5), row_fn(["after"]))
        stats = b.stats()
    # the shared pass really formed and failed, then each request ran alone
    assert rec.calls[1] == ["ok", "also ok", "boom", "fine"]
    assert rec.calls[2:5] == [["ok", "also ok"], ["boom"], ["fine"]]
    assert stats["failed_passes"] == 2 and stats["failed_requests"] == 1


def test_fn_that_always_fails_reaches_every_caller():
    started, gate = threading.Event(), threading.Event()

    def broken(prompts):
        if prompts == ["first"]:
            started.set()
            gate.wait(5)
        raise RuntimeError("predictor is down")

    with MicroBatcher(broken, max_wait=0.0) as b:
        futures = [b.submit(["first"])]
        assert started.wait(5)
        futures += [b.submit([f"p{i}"]) for i in range(3)]
        gate.set()
        for f in futures:
            with pytest.raises(RuntimeError, match="predictor is down"):
                f.result(5)
        assert b.stats()["failed_requests"] == 4


def test_wrong_row_count_is_an_error_not_a_silent_misassignment():
    with MicroBatcher(lambda ps: np.zeros((len(ps) + 1, 2))) as b:
        with pytest.raises(RuntimeError, match="rows"):
            b(["a"], timeout=5)


def test_queue_full_back_pressure():
    gate = threading.Event()

    def blocked(prompts):
        gate.wait(5)
        return row_fn(prompts)

    b = MicroBatcher(blocked, max_wait=0.0, max_batch_prompts=1, max_queue=3)
    try:
        first = b.submit(["in-flight"])
        deadline = time.monotonic() + 5
        while b.queue_depth and time.monotonic() < deadline:  # wait until the worker holds it
            time.sleep(0.001)
        waiting = [b.submit([f"q{i}"]) for i in range(3)]
        with pytest.raises(QueueFull):
            b.submit(["one too many"])
        gate.set()
        for f in [first] + waiting:
            assert f.result(5).shape == (1, 2)
        b(["room again"], timeout=5)
    finally:
        gate.set()
        b.close()


def test_close_serves_queued_work_then_refuses():
    rec = Recorder(delay=0.01)
    b = MicroBatcher(rec, max_wait=0.0, max_batch_prompts=1)
    futures = [b.submit([f"p{i}"]) for i in range(5)]
    b.close()
    assert all(f.done() for f in futures)
    assert [f.result().shape for f in futures] == [(1, 2)] * 5
    with pytest.raises(BatcherClosed):
        b.submit(["late"])
    b.close()  # idempotent


def test_asyncio_callers():
    """40 coroutines that call while the worker is busy share one pass and each get their own rows (gated)."""
    entered, gate = threading.Event(), threading.Event()

    def gated(prompts):
        entered.set()
        gate.wait(30)
        return row_fn(prompts)

    rec = Recorder(fn=gated)

    async def main(b):
        prompts = [[f"prompt {i}", "x" * i] for i in range(40)]
        tasks = [asyncio.ensure_future(b.acall(p)) for p in prompts]
        for _ in range(1000):  # let every task reach its submit
            if b.queue_depth == 40:
                break
            await asyncio.sleep(0)
        assert b.queue_depth == 40
        gate.set()
        results = await asyncio.gather(*tasks)
        for p, r in zip(prompts, results):
            np.testing.assert_array_equal(r, row_fn(p))

    with MicroBatcher(rec, max_wait=0.0, max_batch_prompts=128, max_batch_tokens=10_000) as b:
        first = b.submit(["warm"])
        assert entered.wait(30)  # the worker is inside fn with one prompt
        asyncio.run(main(b))
        first.result(30)
    assert rec.sizes == [1, 80]


def test_cancelled_async_caller_does_not_break_others():
    gate = threading.Event()

    def slow(prompts):
        gate.wait(5)
        return row_fn(prompts)

    async def main(b):
        first = asyncio.ensure_future(b.acall(["first"]))   # occupies the worker
        await asyncio.sleep(0.02)
        doomed = asyncio.ensure_future(b.acall(["doomed"]))
        kept = asyncio.ensure_future(b.acall(["kept"]))
        await asyncio.sleep(0.01)
        doomed.cancel()
        gate.set()
        np.testing.assert_array_equal(await kept, row_fn(["kept"]))
        np.testing.assert_array_equal(await first, row_fn(["first"]))
        with pytest.raises(asyncio.CancelledError):
            await doomed

    with MicroBatcher(slow, max_wait=0.0, max_batch_prompts=1) as b:
        asyncio.run(main(b))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"max_wait": -1}, "max_wait"),
        ({"max_wait": float("nan")}, "max_wait"),
        ({"max_batch_prompts": 0}, "max_batch_prompts"),
        ({"max_queue": 0}, "max_queue"),
        ({"max_batch_tokens": 0}, "max_batch_tokens"),
    ],
)
def test_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MicroBatcher(row_fn, **kwargs)


def test_empty_submit_rejected():
    with MicroBatcher(row_fn) as b:
        with pytest.raises(ValueError, match="empty"):
            b.submit([])


def test_approx_tokens():
    assert approx_tokens("") == 1
    assert approx_tokens("abcd" * 10) == 10


def test_big_request_is_split_and_a_short_one_is_answered_in_between():
    """A request of 12 prompts with 4 per pass takes 3 passes; a short request that arrives during the first one
    is answered before the big one's last chunk is even computed (the last chunk is held on an event)."""
    started, gate, last_chunk = threading.Event(), threading.Event(), threading.Event()
    big_prompts = [f"big {i}" for i in range(12)]

    def fn(prompts):
        if prompts[0] == "big 0":
            started.set()
            gate.wait(5)
        if "big 11" in prompts:
            last_chunk.wait(5)
        return row_fn(prompts)

    rec = Recorder(fn)
    with MicroBatcher(rec, max_wait=0.0, max_batch_prompts=4, max_batch_tokens=None) as b:
        big = b.submit(big_prompts)
        assert started.wait(5)
        short = b.submit(["short"])
        gate.set()
        np.testing.assert_array_equal(short.result(5), row_fn(["short"]))
        assert not big.done()  # the big request is still being processed while the short one has its answer
        last_chunk.set()
        np.testing.assert_array_equal(big.result(5), row_fn(big_prompts))
    assert rec.calls[0] == big_prompts[:4]
    assert rec.calls[1] == ["short"] + big_prompts[4:7]  # the short request goes first; the big one fills the pass
    assert rec.calls[2:] == [big_prompts[7:11], big_prompts[11:]]


def test_big_request_split_by_the_token_budget():
    rec = Recorder()
    prompts = [f"{i:02d}" + "x" * 38 for i in range(12)]  # 10 estimated tokens each
    with MicroBatcher(rec, max_wait=0.0, max_batch_tokens=30, max_batch_prompts=100) as b:
        np.testing.assert_array_equal(b(prompts, timeout=5), row_fn(prompts))
    assert rec.sizes == [3, 3, 3, 3]


def test_prompt_over_the_token_budget_runs_alone():
    started, gate = threading.Event(), threading.Event()

    def fn(prompts):
        if prompts == ["first"]:
            started.set()
            gate.wait(5)
        return row_fn(prompts)

    rec = Recorder(fn)
    with MicroBatcher(rec, max_wait=0.0, max_batch_tokens=30) as b:
        first = b.submit(["first"])
        assert started.wait(5)
        huge, small = b.submit(["y" * 400]), b.submit(["z"])  # 100 estimated tokens: over the budget alone
        gate.set()
        for f, p in ((first, "first"), (huge, "y" * 400), (small, "z")):
            np.testing.assert_array_equal(f.result(5), row_fn([p]))
    assert rec.calls[1:] == [["y" * 400], ["z"]]


def test_request_that_fits_a_pass_is_never_split():
    started, gate = threading.Event(), threading.Event()

    def fn(prompts):
        if prompts == ["first"]:
            started.set()
            gate.wait(5)
        return row_fn(prompts)

    rec = Recorder(fn)
    with MicroBatcher(rec, max_wait=0.0, max_batch_prompts=4, max_batch_tokens=None) as b:
        first = b.submit(["first"])
        assert started.wait(5)
        a, c = b.submit(["a1", "a2", "a3"]), b.submit(["c1", "c2", "c3"])
        gate.set()
        np.testing.assert_array_equal(a.result(5), row_fn(["a1", "a2", "a3"]))
        np.testing.assert_array_equal(c.result(5), row_fn(["c1", "c2", "c3"]))
        first.result(5)
    assert rec.calls[1:] == [["a1", "a2", "a3"], ["c1", "c2", "c3"]]


def test_cancelled_big_request_stops_taking_passes():
    started, gate = threading.Event(), threading.Event()

    def fn(prompts):
        if prompts[0] == "big 0":
            started.set()
            gate.wait(5)
        return row_fn(prompts)

    rec = Recorder(fn)
    with MicroBatcher(rec, max_wait=0.0, max_batch_prompts=2, max_batch_tokens=None) as b:
        big = b.submit([f"big {i}" for i in range(10)])
        assert started.wait(5)
        assert big.cancel()  # still pending between chunks, so it can be cancelled
        gate.set()
        np.testing.assert_array_equal(b(["after"], timeout=5), row_fn(["after"]))
    assert rec.calls == [["big 0", "big 1"], ["after"]]


def test_stats_histograms_count_every_pass():
    rec = Recorder()
    with MicroBatcher(rec, max_wait=0.0, max_batch_prompts=3, max_queue=7) as b:
        b(["a"], timeout=5)
        b(["b", "c", "d", "e"], timeout=5)  # two passes: 3 + 1
        stats = b.stats()
    assert stats["passes"] == 3 and stats["prompts"] == 5 and stats["queue_capacity"] == 7
    hist = stats["pass_prompts"]
    assert hist["count"] == 3 and hist["sum"] == 5
    assert dict(hist["buckets"])[1] == 2 and dict(hist["buckets"])[4] == 3  # cumulative: two passes of 1, one of 3
    assert stats["pass_seconds"]["count"] == 3 and stats["pass_seconds"]["sum"] >= 0


def test_limit_malloc_growth():
    import platform

    from routoo_fast.serve.batcher import limit_malloc_growth

    for bad in (0, -1, 2 ** 31, True, 1.5):
        with pytest.raises(ValueError, match="mmap_threshold"):
            limit_malloc_growth(bad)
    result = limit_malloc_growth()
    if platform.libc_ver()[0] == "glibc":
        assert result is True
    else:
        assert result in (True, False)  # elsewhere it may have nothing to set; it must not raise
