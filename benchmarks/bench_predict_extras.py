"""What a kNN or MF component would add at predict time, against the head alone and the encoder (issue 11).

pytest benchmarks/bench_predict_extras.py --benchmark-enable

At batch 64, from pooled encodings [64, 384] (the encoder's output), with N = 29 models:
- head alone: the shipped recipe's ScoringHead (4 seeds x 128 hidden = 512 wide);
- + kNN: cosine top-k (k = 80) over M reference prompts (M = 5,500, the bundled train + val; and 100,000), then
  the per-model mean of the neighbours' outcomes (`train.knn.KNNPredictor`);
- + kNN + MF: and a second, linear head of width 128 (`evaluation.baselines.MFRouter`'s shape).
The encoder's own forward at batch 64 on MMLU-length prompts is measured in the same run; each row's extra_info
gives its time as a fraction of the encoder's (the issue's bar: < 5 %).
ROUTOO_BENCH_THREADS sets torch's CPU threads (default 1).
"""
import os

import numpy as np
import pytest
import torch

from routoo_fast.head import ScoringHead
from routoo_fast.train.knn import KNNPredictor

B, D, N, K = 64, 384, 29, 80
THREADS = int(os.environ.get("ROUTOO_BENCH_THREADS", "1"))
_encoder_seconds = {}


@pytest.fixture(scope="module")
def pooled():
    torch.set_num_threads(THREADS)
    return np.random.default_rng(0).normal(size=(B, D)).astype(np.float32)


@pytest.fixture(scope="module")
def heads():
    torch.manual_seed(0)
    return ScoringHead(D, N, hidden=512).eval(), ScoringHead(D, N, hidden=128, act="identity").eval()


def _knn(m: int) -> KNNPredictor:
    rng = np.random.default_rng(1)
    y = (rng.uniform(size=(m, N)) < 0.6).astype(np.float32)
    return KNNPredictor(K).fit(rng.normal(size=(m, D)).astype(np.float32), y)


def _record(benchmark, name):
    median = benchmark.stats.stats.median
    enc = _encoder_seconds.get("batch64")
    benchmark.extra_info.update({"what": name, "p50_ms": median * 1e3, "prompts_per_s": B / median,
                                 "share_of_encoder": (median / enc) if enc else None, "threads": THREADS})


def test_encoder_forward_batch64(benchmark):
    """The reference: MiniLM's forward + pooling on 64 MMLU-Pro questions (the bundled prompts)."""
    from routoo_fast.data import load_default
    from routoo_fast.encoder import Encoder

    benchmark.group = "predict-time extras at batch 64"
    encoder = Encoder(num_threads=THREADS)
    prompts = load_default().prompts[:B]
    encoder.encode(prompts)
    benchmark.pedantic(encoder.encode, args=(prompts,), rounds=3, warmup_rounds=1)
    _encoder_seconds["batch64"] = benchmark.stats.stats.median
    _record(benchmark, "encoder")


def test_head_alone(benchmark, pooled, heads):
    benchmark.group = "predict-time extras at batch 64"
    x = torch.from_numpy(pooled)

    def run():
        with torch.inference_mode():
            return heads[0].probs(x).numpy()
    assert benchmark(run).shape == (B, N)
    _record(benchmark, "head")


@pytest.mark.parametrize("refs", [5_500, 100_000])
def test_head_plus_knn(benchmark, pooled, heads, refs):
    benchmark.group = "predict-time extras at batch 64"
    knn = _knn(refs)
    x = torch.from_numpy(pooled)

    def run():
        with torch.inference_mode():
            q = heads[0].probs(x).numpy()
        return 0.8 * q + 0.2 * knn.predict(pooled)
    assert benchmark(run).shape == (B, N)
    _record(benchmark, f"head + kNN over {refs}")


def test_head_plus_knn_plus_mf(benchmark, pooled, heads):
    benchmark.group = "predict-time extras at batch 64"
    knn = _knn(5_500)
    x = torch.from_numpy(pooled)

    def run():
        with torch.inference_mode():
            q, m = heads[0].probs(x).numpy(), heads[1].probs(x).numpy()
        return (q + m + knn.predict(pooled)) / 3
    assert benchmark(run).shape == (B, N)
    _record(benchmark, "head + kNN over 5500 + MF")


def test_head_plus_output_lengths(benchmark, pooled, heads):
    """What the shipped router adds: the cost model's per-prompt output lengths (`output_length.OutputLengthModel`,
    a [D, N] ridge) and the per-prompt costs built from them (`CostModel.costs(output_tokens=)`)."""
    from routoo_fast.costs import CostModel, PriceTable
    from routoo_fast.output_length import OutputLengthModel

    benchmark.group = "predict-time extras at batch 64"
    rng = np.random.default_rng(2)
    length = OutputLengthModel(rng.normal(size=(D, N)) * 0.01, np.full(N, 5.0), np.ones(N))
    prices = PriceTable.load()
    models = prices.models[:N]
    cm = CostModel(models, prices, np.full(N, 300.0), output_length=length)
    prompts = ["a prompt of a few words"] * B
    tokens = np.full(B, 120)
    x = torch.from_numpy(pooled)

    def run():
        with torch.inference_mode():
            q = heads[0].probs(x).numpy()
        return q, cm.costs(prompts, input_tokens=tokens, output_tokens=cm.output_tokens_of(pooled))
    q, c = benchmark(run)
    assert q.shape == c.shape == (B, N)
    _record(benchmark, "head + output lengths + costs")
