"""Predictor end to end on CPU (pytest-benchmark; run: pytest benchmarks/bench_predictor.py --benchmark-enable).

encode + score with the shipped all-MiniLM-L6-v2 (max_length 256) and a ScoringHead (H=64, N=64) on real
MMLU-Pro questions, at batch 1 and batch 64: p50 latency (the median) and prompts/s in extra_info.
The overhead test measures, at batch 64, the fraction of predict() time spent outside the encoder's forward pass
(tokenization, padding, pool_score, copies): forward hooks on the model time the forward itself.
ROUTOO_BENCH_THREADS sets torch's CPU threads (default 1: stable on shared machines).
"""
import json
import os
import time
from pathlib import Path

import pytest
import torch

from routoo_fast.encoder import Encoder
from routoo_fast.head import ScoringHead
from routoo_fast.pool_score import pool_score
from routoo_fast.predictor import Predictor

QUESTIONS = Path(os.environ.get("ROUTOO_DATA", "/work/shared/data")) / "mmlu_pro_outputs" / "questions.jsonl"
N_MODELS = 64
ROUNDS = 5  # batch-64 rounds: each is seconds on a CPU


def _prompts(n):
    from routoo_fast.data import format_mcq

    prompts = []
    with open(QUESTIONS) as f:
        for line in f:
            row = json.loads(line)
            prompts.append(format_mcq(row["question"], row["options"]))
            if len(prompts) == n:
                return prompts
    raise ValueError(f"{QUESTIONS} has fewer than {n} questions")


@pytest.fixture(scope="module")
def predictor():
    if not QUESTIONS.is_file():
        pytest.skip(f"benchmark prompts not found at {QUESTIONS} (set ROUTOO_DATA)")
    encoder = Encoder(num_threads=int(os.environ.get("ROUTOO_BENCH_THREADS", "1")), device="cpu")
    torch.manual_seed(0)
    head = ScoringHead(encoder.hidden_size, N_MODELS, hidden=64)
    return Predictor(encoder, head, [f"model-{i}" for i in range(N_MODELS)])


@pytest.mark.parametrize("batch", [1, 64])
def test_predict_cpu(benchmark, predictor, batch):
    benchmark.group = "predictor CPU encode+score (MiniLM, max_length 256, H=64, N=64)"
    prompts = _prompts(batch)
    predictor.predict(prompts)  # warm-up
    q = benchmark.pedantic(predictor.predict, args=(prompts,), rounds=5 if batch == 64 else 30, warmup_rounds=1)
    assert q.shape == (batch, N_MODELS)
    median = benchmark.stats.stats.median
    benchmark.extra_info.update({"batch": batch, "p50_ms": median * 1e3, "prompts_per_s": batch / median,
                                 "threads": torch.get_num_threads()})


def test_time_outside_encoder_forward_batch64(benchmark, predictor):
    """fraction_outside_forward = 1 - (time inside model.forward) / (time of predict), summed over rounds;
    pool_score_fraction = time of pool_score on the same token states / time of predict."""
    benchmark.group = "predictor CPU overhead at batch 64"
    prompts = _prompts(64)
    model = predictor.encoder.model
    inside = {"total": 0.0, "start": 0.0}

    def pre_hook(module, args, kwargs):
        inside["start"] = time.perf_counter()

    def post_hook(module, args, kwargs, output):
        inside["total"] += time.perf_counter() - inside["start"]

    handles = [model.register_forward_pre_hook(pre_hook, with_kwargs=True),
               model.register_forward_hook(post_hook, with_kwargs=True)]
    wall = {"total": 0.0}

    def timed_predict():
        t0 = time.perf_counter()
        predictor.predict(prompts)
        wall["total"] += time.perf_counter() - t0

    try:
        predictor.predict(prompts)  # warm-up, not counted
        inside["total"] = 0.0
        benchmark.pedantic(timed_predict, rounds=ROUNDS, warmup_rounds=0)
    finally:
        for h in handles:
            h.remove()
    states = list(predictor.encoder.token_states(prompts))
    weights = predictor.head.scoring_weights()
    t0 = time.perf_counter()
    reps = 20
    for _ in range(reps):
        for hidden, mask, _ in states:
            pool_score(hidden, mask, **weights)
    pool_score_s = (time.perf_counter() - t0) / reps
    fraction = 1.0 - inside["total"] / wall["total"]
    benchmark.extra_info.update({
        "fraction_outside_forward": fraction, "target_fraction": 0.05,
        "forward_s_per_batch": inside["total"] / ROUNDS, "predict_s_per_batch": wall["total"] / ROUNDS,
        "pool_score_s_per_batch": pool_score_s, "pool_score_fraction": pool_score_s / (wall["total"] / ROUNDS),
        "threads": torch.get_num_threads(),
    })
    print(f"\nbatch 64: {fraction:.2%} of predict() outside the encoder forward; pool_score "
          f"{pool_score_s * 1e3:.2f} ms of {wall['total'] / ROUNDS * 1e3:.1f} ms")
