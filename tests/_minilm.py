"""One shipped all-MiniLM-L6-v2 Encoder per test session, shared by test_encoder.py and test_predictor.py
(loading it costs seconds on this machine). Short max_length and small batches keep forward passes cheap."""
from functools import lru_cache


@lru_cache(maxsize=None)
def shared_encoder():
    from routoo_fast.encoder import Encoder

    # one thread: on a shared 2-core machine two OpenMP threads spin against other processes (30x slower)
    return Encoder(max_length=32, batch_size=2, num_threads=1, device="cpu")


PROMPTS = [
    "What is the capital of France?",
    "Solve for x: 3x + 7 = 22.",
    "hi",
    "Explain, step by step, why the sky is blue during the day and red at sunset.",
    "",
]
