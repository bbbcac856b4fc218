"""A small but real Router for tests: the shipped MiniLM encoder at a short max_length, a ScoringHead with seeded
random weights over four priced models, the shipped price table. Everything runs the real code paths; only the
head's weights are untrained. The encoder + predictor are built once per test process (loading takes seconds)."""
from __future__ import annotations

import functools

MODELS = ("Mixtral-8x7B-Instruct-v0.1", "Meta-Llama-3-70B-Instruct", "gpt-4o-2024-05-13", "Qwen2-7B-Instruct")
EXPECTED_OUTPUT_TOKENS = {MODELS[0]: 300.0, MODELS[1]: 250.0, MODELS[2]: 400.0, MODELS[3]: 200.0}


@functools.lru_cache(maxsize=None)
def small_predictor(max_length: int = 32):
    import torch

    from routoo_fast.costs import PriceTable
    from routoo_fast.encoder import Encoder
    from routoo_fast.head import ScoringHead
    from routoo_fast.predictor import Predictor

    prices = PriceTable.load()
    missing = [m for m in MODELS if m not in prices]
    assert not missing, f"test models missing from assets/prices.csv: {missing}"
    torch.manual_seed(1234)
    # one thread: on a shared 2-core machine two OpenMP threads spin against other processes
    encoder = Encoder(max_length=max_length, batch_size=64, num_threads=1, device="cpu")
    head = ScoringHead(encoder.hidden_size, len(MODELS), hidden=16, act="gelu")
    with torch.no_grad():  # spread the biases so the models differ clearly in predicted quality
        head.b.copy_(torch.tensor([-0.5, 0.3, 1.0, -1.0]))
    return Predictor(encoder, head, list(MODELS), backend="cpu")


def small_router(max_length: int = 32):
    """A fresh Router (its own lock and batcher state) around the shared predictor."""
    from routoo_fast.costs import PriceTable
    from routoo_fast.router import Router

    return Router(small_predictor(max_length), PriceTable.load(), EXPECTED_OUTPUT_TOKENS)


def small_length_model(max_length: int = 32):
    """A per-prompt output-length model for the small router: a seeded random direction of the encoding around
    EXPECTED_OUTPUT_TOKENS, so that prompts get clearly different lengths."""
    import numpy as np

    from routoo_fast.output_length import OutputLengthModel

    d = small_predictor(max_length).head.d_in
    rng = np.random.default_rng(4321)
    return OutputLengthModel(rng.normal(size=(d, len(MODELS))) * 2.0,
                             np.log1p([EXPECTED_OUTPUT_TOKENS[m] for m in MODELS]), np.ones(len(MODELS)))


def save_small_router(path, max_length: int = 32, lengths: bool = False):
    """Write the small router as a router directory (routoo_fast.saved format) at `path`; returns the path.
    lengths: with a per-prompt output-length model in its cost model (`small_length_model`)."""
    from routoo_fast.costs import CostModel, PriceTable
    from routoo_fast.saved import save_router

    predictor = small_predictor(max_length)
    meta = {"note": "untrained test router (seeded random head)"}
    if lengths:
        cost_model = CostModel(list(MODELS), PriceTable.load(), EXPECTED_OUTPUT_TOKENS,
                               output_length=small_length_model(max_length))
        return save_router(path, predictor.head, list(MODELS), predictor.encoder.spec(), cost_model, metadata=meta)
    return save_router(path, predictor.head, list(MODELS), predictor.encoder.spec(), PriceTable.load(),
                       EXPECTED_OUTPUT_TOKENS, metadata=meta)
