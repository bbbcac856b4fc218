"""Router overhead benchmarks (pytest-benchmark; run: pytest benchmarks/bench_router.py --benchmark-enable).

Group "route B=64": where one routing call spends its time with the shipped default router: `predict` (encoder +
pool/score) vs `decide` on already-predicted Q (costs + selector + Decision objects). The point: everything but the
encoder is a small fraction, so serving throughput is the encoder's, and micro-batching is what moves it.
Group "batcher round trip": a MicroBatcher call (thread hand-off, future) around a trivial fn vs calling it directly.
extra_info: prompts/s or calls/s. ROUTOO_BENCH_THREADS sets torch's CPU threads (default 1).
"""
import os

import numpy as np
import pytest

from routoo_fast.serve.batcher import MicroBatcher
from routoo_fast.router import DEFAULT_ROUTER

B = 64


@pytest.fixture(scope="module")
def router_and_prompts():
    if not DEFAULT_ROUTER.exists():
        pytest.skip("the shipped default router is not built")
    import torch

    from routoo_fast.data import load_default
    from routoo_fast.router import Router

    torch.set_num_threads(int(os.environ.get("ROUTOO_BENCH_THREADS", "1")))
    router = Router.from_pretrained("default")
    prompts = load_default().prompts[:B]
    return router, prompts


@pytest.mark.parametrize("provider", ["predict", "decide"])
def test_route_parts(benchmark, router_and_prompts, provider):
    router, prompts = router_and_prompts
    benchmark.group = f"route B={B} N={len(router.model_names)} (default router)"
    Q = router.predict(prompts)
    if provider == "predict":
        benchmark.pedantic(router.predict, args=(prompts,), rounds=3, iterations=1)
    else:
        benchmark(router.decide, prompts, Q, "lambda=1000")
    benchmark.extra_info["prompts_per_s"] = B / benchmark.stats.stats.median


@pytest.mark.parametrize("provider", ["direct", "batcher"])
def test_batcher_round_trip(benchmark, provider):
    benchmark.group = "batcher round trip (trivial fn, 1 prompt)"

    def fn(prompts):
        return np.zeros((len(prompts), 4), dtype=np.float32)

    if provider == "direct":
        benchmark(fn, ["x"])
    else:
        with MicroBatcher(fn, max_wait=0.0) as batcher:
            benchmark(batcher, ["x"])
    benchmark.extra_info["calls_per_s"] = 1 / benchmark.stats.stats.median
