"""Bounded load test (slow): 2,000 single-prompt /v1/route requests from 64 concurrent clients against
`routoo-fast serve` on loopback, with and without micro-batching. No request may fail, and batched passes must
really serve several callers at once. Throughput and latency are printed (run with -s), never asserted: a timing
never decides a test; `python scripts/load_test.py` is the measurement."""
import importlib.util
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "load_test.py"


def load_script():
    spec = importlib.util.spec_from_file_location("routoo_load_test", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_load_batched_vs_unbatched():
    run_load_test = load_script().run_load_test
    results = {r.mode: r for r in run_load_test("default", requests=2000, concurrency=64, max_length=64)}
    for r in results.values():
        print(f"\n{r.mode}: {r.requests_per_s:.1f} req/s, p50 {r.p50_ms:.1f} ms, p99 {r.p99_ms:.1f} ms, "
              f"status {r.status_counts}")
    assert all(r.errors == 0 and r.status_counts == {"200": 2000} for r in results.values())
    assert results["batched"].mean_pass_prompts > 1.0  # passes were shared by concurrent callers


def test_load_one_and_two_workers():
    """`serve --workers 2` answers every request on one port (the speed-up is printed, never asserted)."""
    pytest.importorskip("onnxruntime")
    run_load_test = load_script().run_load_test
    results = run_load_test("default", requests=1000, concurrency=32, max_length=None, modes=("batched",),
                            workers=(1, 2), encoder_backend="onnx-int8", prompt_kind="short", client="raw")
    for r in results:
        print(f"\n{r.workers} worker(s): {r.requests_per_s:.1f} req/s, p50 {r.p50_ms:.1f} ms, p99 {r.p99_ms:.1f} ms")
    assert [r.workers for r in results] == [1, 2]
    assert all(r.errors == 0 and r.status_counts == {"200": 1000} for r in results)
