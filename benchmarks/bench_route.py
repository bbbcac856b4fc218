"""Routing latency and throughput per encoder backend, side by side in one run (pytest-benchmark):

    pytest benchmarks/bench_route.py --benchmark-enable -s       (-s prints the summary table at the end)

Groups, each with the backends torch / onnx / onnx-int8 at 1 thread and at all threads:
  "route B=1 short"   `Router.route([prompt])` of a 9-token prompt (special tokens included); 200 rounds
  "route B=1 mmlu"    the same for a bundled MMLU question of 107 tokens (the issue's); 40 rounds
  "route B=64 mmlu"   `Router.route` of 64 bundled MMLU questions drawn at random (seed 0); 3 rounds
  "session B=1 short" the onnxruntime session's own run for the 9-token prompt (no tokenizing, no head, no
                      selector): the floor the issue's "route within 1.3x of the session" is measured against;
  "session B=1 mmlu"  the same for the MMLU question (how much of its route is the encoder's arithmetic)
  "route/session"     the 9-token session run and its route alternated in one loop (400 pairs), each timed: the
                      ratio of their medians, which machine drift between the two groups above cannot move (on a
                      shared machine the separate groups' ratio moved by 0.05-0.1 between runs)
extra_info: p50_ms and p99_ms of the rounds, prompts_per_s (throughput next to time), tokens, threads, load1 (the
1-minute load average when the case ended: on a shared machine, compare ratios within a run). The summary
(and $ROUTOO_BENCH_SUMMARY as JSON when set) gives the medians and the ratios of the issue's targets: batch-1 route
<= 2 ms short and <= 12 ms MMLU at 1 thread, batch-64 throughput >= 2x torch's, route <= 1.3x session. The shipped
default router, its exact-repeat cache off (the library default), policy "lambda=100".
"""
from __future__ import annotations

import json
import os

import numpy as np
import pytest

BACKENDS = ("torch", "onnx", "onnx-int8")
THREADS = (1, os.cpu_count() or 1)
SHORT = "What is the capital of France?"  # [CLS] what is the capital of france ? [SEP]: 9 tokens
MMLU_TOKENS = 107  # the issue's MMLU question; the bundled questions' median is 125 tokens, 19% reach the 256 cap
POLICY = "lambda=100"
RESULTS: dict = {}


@pytest.fixture(scope="module")
def prompts():
    from routoo_fast.data import load_default
    from routoo_fast.encoder import Encoder

    table = load_default()
    enc = Encoder(num_threads=1, device="cpu")
    order = np.random.default_rng(0).permutation(len(table.prompts))
    batch = [table.prompts[i] for i in order[:64]]  # a random 64 of the bundled questions
    lengths = np.array([len(x) for x in enc.token_ids([table.prompts[i] for i in order[:2000]])])
    mmlu = table.prompts[order[int(np.flatnonzero(lengths == MMLU_TOKENS)[0])]]
    assert len(enc.token_ids([SHORT])[0]) == 9
    return {"short": SHORT, "mmlu": mmlu, "batch": batch, "tokens": {"short": 9, "mmlu": MMLU_TOKENS}}


@pytest.fixture(scope="module")
def routers():
    from routoo_fast.router import Router

    cache: dict = {}

    def get(backend: str, threads: int):
        key = (backend, threads)
        if key not in cache:
            if backend != "torch":
                pytest.importorskip("onnxruntime")
            cache[key] = Router.from_pretrained("default", encoder_backend=backend, num_threads=threads,
                                                device="cpu" if backend == "torch" else None)
            cache[key].route([SHORT], POLICY)  # one-time costs out of the way
        _set_threads(threads if backend == "torch" else 1)  # what building the router set (the onnx backends
        return cache[key]                                   # run their torch head on one thread)

    yield get
    _summary()


def _set_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(threads)  # torch's count is process-wide: reset it for each case


def _record(benchmark, group: str, backend: str, threads: int, prompts_per_call: int, tokens: int) -> None:
    data = np.asarray(benchmark.stats.stats.data, dtype=np.float64) if benchmark.stats else np.array([np.nan])
    p50, p99 = float(np.median(data)) * 1e3, float(np.percentile(data, 99)) * 1e3
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")  # the machine may be shared
    benchmark.extra_info.update({"p50_ms": p50, "p99_ms": p99, "prompts_per_s": prompts_per_call * 1e3 / p50,
                                 "tokens": tokens, "threads": threads, "backend": backend, "load1": load})
    RESULTS[(group, backend, threads)] = benchmark.extra_info.copy()


@pytest.mark.parametrize("threads", THREADS)
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("kind", ["short", "mmlu"])
def test_route_batch1(benchmark, routers, prompts, backend, threads, kind):
    router = routers(backend, threads)
    benchmark.group = f"route B=1 {kind} ({prompts['tokens'][kind]} tokens), {threads} thread(s)"
    batch = [prompts[kind]]
    benchmark.pedantic(router.route, args=(batch, POLICY), rounds=200 if kind == "short" else 40,
                       iterations=1, warmup_rounds=5)
    _record(benchmark, f"B=1 {kind}", backend, threads, 1, prompts["tokens"][kind])


@pytest.mark.parametrize("threads", THREADS)
@pytest.mark.parametrize("backend", BACKENDS)
def test_route_batch64(benchmark, routers, prompts, backend, threads):
    router = routers(backend, threads)
    benchmark.group = f"route B=64 mmlu, {threads} thread(s)"
    benchmark.pedantic(router.route, args=(prompts["batch"], POLICY), rounds=3, iterations=1, warmup_rounds=1)
    _record(benchmark, "B=64 mmlu", backend, threads, 64, 0)


@pytest.mark.parametrize("threads", THREADS)
@pytest.mark.parametrize("backend", ["onnx", "onnx-int8"])
@pytest.mark.parametrize("kind", ["short", "mmlu"])
def test_session_batch1(benchmark, routers, prompts, backend, threads, kind):
    encoder = routers(backend, threads).predictor.encoder
    ids = np.asarray(encoder.token_ids([prompts[kind]]), dtype=np.int64)
    feed = {"input_ids": ids, "attention_mask": np.ones_like(ids), "pool_mask": np.ones(ids.shape, np.float32)}
    benchmark.group = f"session B=1 {kind}, {threads} thread(s)"
    benchmark.pedantic(encoder.session.run, args=(None, feed), rounds=200 if kind == "short" else 40,
                       iterations=1, warmup_rounds=5)
    _record(benchmark, f"session B=1 {kind}", backend, threads, 1, prompts["tokens"][kind])


@pytest.mark.parametrize("threads", THREADS)
@pytest.mark.parametrize("backend", ["onnx", "onnx-int8"])
def test_route_over_session_interleaved(benchmark, routers, prompts, backend, threads):
    import time

    router = routers(backend, threads)
    encoder = router.predictor.encoder
    ids = np.asarray(encoder.token_ids([prompts["short"]]), dtype=np.int64)
    feed = {"input_ids": ids, "attention_mask": np.ones_like(ids), "pool_mask": np.ones(ids.shape, np.float32)}
    batch, times = [prompts["short"]], {"session": [], "route": []}

    def pair():
        a = time.perf_counter()
        encoder.session.run(None, feed)
        b = time.perf_counter()
        router.route(batch, POLICY)
        times["session"].append(b - a)
        times["route"].append(time.perf_counter() - b)

    benchmark.group = f"route/session B=1 short, {threads} thread(s)"
    benchmark.pedantic(pair, rounds=400, iterations=1, warmup_rounds=20)
    session_ms, route_ms = (float(np.median(times[k][20:])) * 1e3 for k in ("session", "route"))
    benchmark.extra_info.update({"session_p50_ms": session_ms, "route_p50_ms": route_ms,
                                 "route_over_session": route_ms / session_ms})
    RESULTS[("route/session short", backend, threads)] = {
        "p50_ms": route_ms, "p99_ms": float(np.percentile(times["route"][20:], 99)) * 1e3,
        "prompts_per_s": 1e3 / route_ms, "load1": os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan"),
        "session_p50_ms": session_ms, "route_over_session": route_ms / session_ms, "tokens": 9, "threads": threads}


def _summary() -> None:
    if not RESULTS:
        return
    lines = [f"{'case':<22} {'backend':<10} {'thr':>3} {'p50 ms':>8} {'p99 ms':>8} {'prompts/s':>10} {'load1':>6}"]
    for (group, backend, threads), info in sorted(RESULTS.items()):
        lines.append(f"{group:<22} {backend:<10} {threads:>3} {info['p50_ms']:>8.3f} {info['p99_ms']:>8.3f} "
                     f"{info['prompts_per_s']:>10.1f} {info['load1']:>6.2f}")
    ratios = {}
    for threads in THREADS:
        torch64 = RESULTS.get(("B=64 mmlu", "torch", threads))
        for backend in ("onnx", "onnx-int8"):
            b64 = RESULTS.get(("B=64 mmlu", backend, threads))
            if torch64 and b64:
                ratios[f"B=64 throughput {backend}/torch, {threads} thr"] = b64["prompts_per_s"] / torch64["prompts_per_s"]
            route, session = RESULTS.get(("B=1 short", backend, threads)), RESULTS.get(("session B=1 short", backend,
                                                                                        threads))
            if route and session:
                ratios[f"B=1 short route/session {backend}, {threads} thr (separate groups)"] = \
                    route["p50_ms"] / session["p50_ms"]
            paired = RESULTS.get(("route/session short", backend, threads))
            if paired:
                ratios[f"B=1 short route/session {backend}, {threads} thr (interleaved)"] = paired["route_over_session"]
    lines += [f"{name}: {value:.2f}x" for name, value in ratios.items()]
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    if load:
        lines.append(f"load average at the end: {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} on {os.cpu_count()} cores")
    print("\n" + "\n".join(lines))
    out = os.environ.get("ROUTOO_BENCH_SUMMARY")
    if out:
        from routoo_fast._atomic import atomic_write_text

        rows = [{"case": g, "backend": b, "threads": t, **info} for (g, b, t), info in sorted(RESULTS.items())]
        atomic_write_text(out, json.dumps({"rows": rows, "ratios": ratios, "load": load}, indent=2))
