"""The exact-repeat cache of Q: an LRU bounded in bytes, checked against a plain dict + list model of LRU, and the
Router with the cache on against the router without it (same Q, fewer predictor calls)."""
from __future__ import annotations

import asyncio

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from routoo_fast.q_cache import ENTRY_OVERHEAD, QCache, prompt_key


def test_capacity_follows_the_byte_bound():
    cache = QCache(10 * (4 * 29 + ENTRY_OVERHEAD), 29)
    assert cache.capacity == 10
    with pytest.raises(ValueError, match="holds no entry"):
        QCache(100, 29)
    for bad in (0, -1, 1.5, True):
        with pytest.raises(ValueError, match="max_bytes"):
            QCache(bad, 3)


def test_hits_misses_and_eviction_order():
    cache = QCache(3 * (4 * 2 + ENTRY_OVERHEAD), 2)
    rows = {p: np.array([i, -i], dtype=np.float32) for i, p in enumerate("abcd")}
    keys, _, misses = cache.lookup(["a", "b", "c"])
    assert misses == [0, 1, 2]
    cache.store(keys, np.stack([rows[p] for p in "abc"]))
    cache.lookup(["a"])  # a is now the most recently used; b the least
    keys, _, _ = cache.lookup(["d"])
    cache.store(keys, rows["d"][None])
    _, Q, misses = cache.lookup(["a", "b", "c", "d"])
    assert misses == [1]
    np.testing.assert_array_equal(Q[[0, 2, 3]], np.stack([rows[p] for p in "acd"]))
    s = cache.stats()
    assert (s["hits"], s["misses"], s["evictions"], s["entries"]) == (4, 5, 1, 3)
    assert s["bytes"] <= s["max_bytes"]


def test_keys_cover_every_str():
    assert prompt_key("a\ud800b") != prompt_key("a\ufffdb")  # a lone surrogate has a key of its own
    assert prompt_key("") == prompt_key("")
    assert len(prompt_key("x" * 100000)) == 16


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["get", "put"]), st.lists(st.integers(0, 7), min_size=1, max_size=5)),
                max_size=40), st.integers(1, 5))
def test_matches_a_model_lru(ops, capacity):
    cache = QCache(capacity * (4 * 1 + ENTRY_OVERHEAD), 1)
    model: list[int] = []  # least recently used first
    values: dict[int, float] = {}
    for op, items in ops:
        prompts = [f"p{i}" for i in items]
        if op == "get":
            _, Q, misses = cache.lookup(prompts)
            want_misses = []
            for j, i in enumerate(items):
                if i in model:
                    model.remove(i)
                    model.append(i)
                    assert Q[j, 0] == values[i]
                else:
                    want_misses.append(j)
            assert misses == want_misses
        else:
            keys = [prompt_key(p) for p in prompts]
            cache.store(keys, np.array([[i * 1.5] for i in items], dtype=np.float32))
            for i in items:
                if i in model:
                    model.remove(i)
                model.append(i)
                values[i] = i * 1.5
                if len(model) > capacity:
                    model.pop(0)
        assert len(cache) == len(model)


def test_router_with_cache_gives_the_same_q_and_skips_the_predictor():
    from tests.small_router import small_router

    plain, cached = small_router(), small_router()
    calls = []
    predict = cached._predict_uncached  # the predictor is shared between small routers: count on this router
    cached._predict_uncached = lambda prompts: calls.append(list(prompts)) or predict(prompts)
    cached.enable_q_cache(1 << 20)
    prompts = ["What is 2 + 2?", "hi", "What is 2 + 2?", "Name a prime."]
    want = plain.predict(prompts)
    first = cached.predict(prompts)
    # the cached router encodes 3 unique prompts, the plain one 4: matmuls of other shapes, so fp32 tolerances
    np.testing.assert_allclose(first, want, rtol=1e-5, atol=1e-6)
    assert calls == [["What is 2 + 2?", "hi", "Name a prime."]]  # a repeat inside one call is predicted once
    np.testing.assert_array_equal(cached.predict(prompts[::-1]), first[::-1])  # hits: the stored rows, bit for bit
    assert len(calls) == 1
    assert [d.model for d in cached.route(prompts, "lambda=100")] == [d.model for d in plain.route(prompts, "lambda=100")]
    assert len(calls) == 1
    s = cached.q_cache.stats()
    assert (s["hits"], s["misses"]) == (8, 4)


def test_router_cache_with_the_batcher():
    from tests.small_router import small_router

    plain, cached = small_router(), small_router()
    cached.enable_q_cache(1 << 20)
    cached.enable_batching(max_wait=0.0)
    try:
        prompts = ["a b c", "d e f", "a b c"]
        want = plain.predict(prompts)
        got = asyncio.run(cached.apredict(prompts))
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)  # 2 unique prompts encoded against 3
        np.testing.assert_array_equal(asyncio.run(cached.apredict(prompts[:1])), got[:1])  # hits: the stored rows
        np.testing.assert_array_equal(np.stack([np.asarray(cached.predict(["d e f"]))[0]]), got[1:2])
        assert [d.model for d in cached.route(prompts, "max_quality")] == \
            [d.model for d in plain.route(prompts, "max_quality")]
        assert cached.q_cache.stats()["misses"] == 3  # lookups not found; the repeat was predicted once:
        assert cached.batcher.stats()["prompts"] == 2
    finally:
        cached.disable_batching()


def test_cache_is_off_by_default():
    from tests.small_router import small_router

    assert small_router().q_cache is None


def test_policy_text_is_parsed_once():
    from tests.small_router import small_router

    router = small_router()
    first = router.check_policy("lambda=100")
    assert router.check_policy("lambda=100") is first
    with pytest.raises(ValueError, match="unknown models"):
        router.check_policy("max_quality,models=nope")
    with pytest.raises(ValueError, match="unknown models"):  # a failed check is not cached
        router.check_policy("max_quality,models=nope")
