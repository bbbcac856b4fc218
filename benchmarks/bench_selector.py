"""Selector benchmarks (pytest-benchmark; run: python -m pytest benchmarks/bench_selector.py --benchmark-enable).

One group per (mode, n_prompts, n_models), providers side by side:
    cpp           routoo_fast.selector through the Python API, C of shape [P, N]
    cpp_costvec   the same with one price per model, C of shape [N] (only Q is streamed)
    cpp_mixed     budget only: float32 Q with float64 C [P, N], what a Router passes (Q is converted to float64;
                  C is used as it is)
    numpy         the numpy reference (routoo_fast._reference), same C [P, N]
    floor         one plain C++ pass summing Q and C (the memory-bandwidth floor for a pass over the data)
    floor_costvec the floor reading only Q (+ the [N] vector)
    cpp_full      budget only: the raw binding forced onto the full path (every prompt's hull + quickselect),
                  next to cpp, which takes the fast path (sampled bracket + core hulls) from 20000 prompts
    milp          scipy.optimize.milp (HiGHS), budget at 1000 x 16 only (it takes seconds)
    sorted_ref    the python reference budget solver (full sort), budget at 1000 prompts only
Inputs are float32 Q in [0, 1) and C in [0, 1). extra_info: items (prompts)/s, GB/s of the input bytes, ns per
prompt, and ratios to the floor / numpy / milp of the same group once both ran. Large sizes run few rounds.
"""
import functools

import numpy as np
import pytest

from routoo_fast import _reference as R
from routoo_fast import _selector
from routoo_fast import selector as S

_medians = {}  # (group, provider) -> median seconds
PER_PROMPT_SIZES = [(p, n) for p in (1, 1_000, 100_000) for n in (8, 16, 64)] + [(1_000_000, 64)]
BUDGET_SIZES = [(p, n) for p in (1_000, 100_000) for n in (8, 16, 64)] + [(1_000_000, 64)]


@functools.lru_cache(maxsize=2)
def _data(P, N):
    rng = np.random.default_rng(P * 1000 + N)
    Q = rng.random((P, N), dtype=np.float32)
    C = rng.random((P, N), dtype=np.float32)
    return Q, C, np.ascontiguousarray(C[0])


def _run(benchmark, fn, P):
    if P >= 1_000_000:
        return benchmark.pedantic(fn, rounds=3, iterations=1, warmup_rounds=1)
    if P >= 100_000:
        return benchmark.pedantic(fn, rounds=10, iterations=1, warmup_rounds=1)
    return benchmark(fn)


def _record(benchmark, group, provider, P, nbytes, **extra):
    if benchmark.stats is None:  # --benchmark-disable: the function ran once, nothing to record
        return
    median = benchmark.stats.stats.median
    _medians[(group, provider)] = median
    info = {"items_per_s": P / median, "GB_per_s": nbytes / median / 1e9, "ns_per_prompt": median / P * 1e9,
            "median_us": median * 1e6, "bytes_read": nbytes}
    for other in ("floor", "floor_costvec", "numpy", "milp", "sorted_ref", "cpp_full"):
        if (group, other) in _medians and other != provider:
            info[f"ratio_to_{other}"] = median / _medians[(group, other)]
    info.update(extra)
    benchmark.extra_info.update(info)


def _bytes(Q, C):
    return Q.nbytes + C.nbytes


PER_PROMPT_PROVIDERS = ["floor", "floor_costvec", "cpp", "cpp_costvec", "numpy"]


@pytest.mark.parametrize("provider", PER_PROMPT_PROVIDERS)
@pytest.mark.parametrize("P,N", PER_PROMPT_SIZES)
@pytest.mark.parametrize("mode", ["tradeoff", "max_quality"])
def test_per_prompt(benchmark, mode, P, N, provider):
    if P >= 1_000_000 and (mode != "tradeoff" or provider == "numpy"):
        pytest.skip("1e6 prompts: tradeoff only, and not the numpy reference (gigabytes of temporaries)")
    Q, C, c = _data(P, N)
    group = f"{mode} P={P} N={N}"
    benchmark.group = group
    costs = c if provider.endswith("costvec") else C
    lam = 0.3 if mode == "tradeoff" else 0.0
    if provider.startswith("floor"):
        fn = functools.partial(_selector._memory_floor, Q, costs)
    elif provider.startswith("cpp"):
        fn = functools.partial(S.tradeoff, Q, costs, lam) if mode == "tradeoff" else functools.partial(S.max_quality, Q, costs)
    else:
        fn = functools.partial(R.tradeoff_reference, Q, costs, lam)
    _run(benchmark, fn, P)
    _record(benchmark, group, provider, P, _bytes(Q, costs))


@pytest.mark.parametrize("provider", ["cpp", "numpy"])
@pytest.mark.parametrize("P,N", [(1_000, 16), (100_000, 64)])
def test_min_cost(benchmark, P, N, provider):
    Q, C, _ = _data(P, N)
    group = f"min_cost P={P} N={N}"
    benchmark.group = group
    fn = S.min_cost if provider == "cpp" else R.min_cost_reference
    _run(benchmark, functools.partial(fn, Q, C, 0.9), P)
    _record(benchmark, group, provider, P, _bytes(Q, C))


def _budget_of(Q, C, fraction=0.3):
    lo = float(C.min(1).sum(dtype=np.float64))
    hi = float(C[np.arange(len(Q)), Q.argmax(1)].sum(dtype=np.float64))
    return lo + fraction * (hi - lo)


@pytest.mark.parametrize("provider", ["cpp", "cpp_costvec", "cpp_mixed", "cpp_full", "sorted_ref", "milp"])
@pytest.mark.parametrize("P,N", BUDGET_SIZES)
def test_budget(benchmark, P, N, provider):
    if provider == "milp" and (P, N) != (1_000, 16):
        pytest.skip("milp only at 1000 x 16")
    if provider == "sorted_ref" and P > 1_000:
        pytest.skip("python reference only at 1000 prompts")
    Q, C, c = _data(P, N)
    costs = c if provider == "cpp_costvec" else C.astype(np.float64) if provider == "cpp_mixed" else C
    B = _budget_of(Q, np.broadcast_to(costs, Q.shape))
    group = f"budget P={P} N={N}"
    benchmark.group = group
    extra = {}
    if provider in ("cpp", "cpp_costvec", "cpp_mixed"):
        sel = _run(benchmark, functools.partial(S.budget, Q, costs, B), P)
        extra = {"total_quality": sel.total_quality, "lp_bound": sel.lp_bound, "break_gain": sel.break_gain}
    elif provider == "cpp_full":
        _run(benchmark, functools.partial(_selector.budget, Q, costs, B, None, fast_min_prompts=2**62), P)
    elif provider == "sorted_ref":
        _run(benchmark, functools.partial(R.budget_reference, Q, costs, B), P)
    else:
        opt, _ = benchmark.pedantic(R.budget_milp, (Q, costs, B), rounds=1, iterations=1)
        sel = S.budget(Q, costs, B)
        extra = {"milp_optimum": opt, "cpp_total_quality": sel.total_quality, "cpp_break_gain": sel.break_gain,
                 "gap_in_break_edges": (opt - sel.total_quality) / sel.break_gain if sel.break_gain else 0.0}
        if benchmark.stats is not None and (group, "cpp") in _medians:
            extra["milp_over_cpp"] = benchmark.stats.stats.median / _medians[(group, "cpp")]
    _record(benchmark, group, provider, P, _bytes(Q, costs), **extra)


@pytest.mark.parametrize("mode", ["calibrate_lambda", "frontier"])
@pytest.mark.parametrize("P,N", [(1_000, 16), (100_000, 64)])
def test_calibrate_and_frontier(benchmark, mode, P, N):
    Q, C, _ = _data(P, N)
    group = f"{mode} P={P} N={N}"
    benchmark.group = group
    if mode == "calibrate_lambda":
        fn = functools.partial(S.calibrate_lambda, Q, C, float(C.min(1).mean()) * 2)
    else:
        fn = functools.partial(S.frontier, Q, C)
    _run(benchmark, fn, P)
    _record(benchmark, group, "cpp", P, _bytes(Q, C))
