"""End-to-end evaluation run time (pytest-benchmark; run: pytest benchmarks/bench_eval.py --benchmark-enable).

- main job: `reproduce.run_reproduction(out, datasets=("mmlu_pro",))` as `routoo-fast eval` runs it: load the
  bundled outcomes and the shipped router + encodings, fit kNN and MF on train + val, sweep every router on the
  held-out split of both pools, write report.md / results.json / 2 PNGs. One round (it takes seconds).
- curve sweep alone: `evaluate.tradeoff_curve` with the default lambda grid (256 lambdas, one selector call each)
  on the real held-out MMLU-Pro matrix (about 1,260 prompts x 29 models).
extra_info: held-out prompts, prompts scored per second (prompts x operating points / s).
"""
import numpy as np
import pytest

from routoo_fast import evaluation as ev
from routoo_fast.data import encoding_cache as ec
from routoo_fast.evaluation import reproduce as rp


@pytest.fixture(scope="module")
def held_out():
    from routoo_fast.saved import load_router
    from routoo_fast.router import DEFAULT_ROUTER
    import torch

    saved = load_router(DEFAULT_ROUTER)
    ds = rp.load_dataset("mmlu_pro")
    x = ec.load_shipped_encodings(ds.table.prompts, saved.config["encoder"]["encoder_id"])
    te = np.flatnonzero(ds.split == "test")
    sub = ds.table.subset(te)
    ok = np.isfinite(sub.scores).all(1)
    with torch.no_grad():
        q = saved.head.probs(torch.from_numpy(x[te][ok])).numpy().astype(np.float64)
    C_pred = saved.cost_model.expected(sub)[ok]
    C_true = saved.cost_model.true(sub)[ok]
    return q, C_pred, sub.scores[ok].astype(np.float64), C_true


@pytest.mark.benchmark(group="eval-end-to-end")
def test_main_job_reproduction(benchmark, tmp_path):
    report = benchmark.pedantic(rp.run_reproduction, args=(tmp_path,), kwargs={"datasets": ("mmlu_pro",)},
                                rounds=1, iterations=1)
    n = sum(p.n_prompts for p in report.pools)
    benchmark.extra_info.update(held_out_prompts=n, pools=len(report.pools),
                                prompts_per_s=n / benchmark.stats.stats.median)


@pytest.mark.benchmark(group="eval-curve")
def test_tradeoff_curve_sweep(benchmark, held_out):
    q, C_pred, Y, C_true = held_out
    curve = benchmark(ev.tradeoff_curve, "routoo", q, C_pred, Y, C_true)
    benchmark.extra_info.update(held_out_prompts=len(Y), models=Y.shape[1], lambdas=len(curve.cost),
                                prompt_decisions_per_s=len(Y) * len(curve.cost) / benchmark.stats.stats.median)
