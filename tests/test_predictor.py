"""Predictor end to end on the shipped MiniLM: fused token-state scoring equals pooling then the head, on every
backend; predict_pooled; argument and input checks."""
import numpy as np
import pytest
import torch
from _minilm import PROMPTS, shared_encoder

from routoo_fast.head import ScoringHead
from routoo_fast.predictor import Predictor

NAMES = ["gpt-4o", "llama-3-8b", "mixtral-8x7b", "claude-3-haiku", "qwen2-72b"]


@pytest.fixture(scope="module")
def encoder():
    return shared_encoder()


@pytest.fixture(scope="module")
def head():
    torch.manual_seed(0)
    h = ScoringHead(384, len(NAMES), hidden=16, act="gelu")
    with torch.no_grad():
        h.E.mul_(20.0)  # spread the probabilities so that a wrong row order could not hide
    return h


def test_predict_is_pool_then_head(encoder, head):
    q = Predictor(encoder, head, NAMES).predict(PROMPTS)
    assert q.dtype == np.float32 and q.shape == (len(PROMPTS), len(NAMES))
    assert ((q >= 0) & (q <= 1)).all()
    with torch.no_grad():
        expected = head.probs(torch.from_numpy(encoder.encode(PROMPTS))).numpy()
    np.testing.assert_allclose(q, expected, atol=1e-5)
    assert np.ptp(q, axis=0).max() > 0.05  # rows really differ, so the order check above means something


@pytest.mark.parametrize("backend", ["cpu", "torch", "triton"])  # triton: the interpreter on CPU
def test_backends_agree(encoder, head, backend):
    prompts = PROMPTS[:3]
    got = Predictor(encoder, head, NAMES, backend=backend).predict(prompts)
    expected = Predictor(encoder, head, NAMES, backend="torch").predict(prompts)
    np.testing.assert_allclose(got, expected, atol=1e-5)


def test_identity_head_and_predict_pooled(encoder):
    torch.manual_seed(1)
    head = ScoringHead(384, 3, hidden=None)
    pred = Predictor(encoder, head, NAMES[:3])
    pooled = encoder.encode(PROMPTS)
    q = pred.predict(PROMPTS)
    np.testing.assert_allclose(pred.predict_pooled(pooled), q, atol=1e-5)
    np.testing.assert_allclose(pred.predict_pooled(torch.from_numpy(pooled).double()), q, atol=1e-5)
    assert pred.predict_pooled(pooled).dtype == np.float32


def test_long_prompt_is_truncated_not_an_error(encoder, head):
    q = Predictor(encoder, head, NAMES).predict(["word " * 20000])
    assert q.shape == (1, len(NAMES)) and np.isfinite(q).all()


@pytest.mark.parametrize("prompts,error,match", [
    ([], ValueError, "prompts is empty"),
    (None, TypeError, "prompts must be a list of strings"),
    ("just one", TypeError, "wrap one prompt in a list"),
    (["fine", 42], TypeError, r"prompts\[1\] must be a str"),
])
def test_bad_prompts(encoder, head, prompts, error, match):
    with pytest.raises(error, match=match):
        Predictor(encoder, head, NAMES).predict(prompts)


@pytest.mark.parametrize("pooled,error,match", [
    (np.zeros((2, 383), np.float32), ValueError, r"pooled must have shape \[B, 384\]"),
    (np.zeros((0, 384), np.float32), ValueError, "pooled is empty"),
    (np.full((1, 384), np.nan, np.float32), ValueError, "NaN or infinite"),
    (np.zeros((1, 384), np.int64), TypeError, "float array"),
    ([[0.0] * 384], TypeError, "numpy array or torch.Tensor"),
])
def test_bad_pooled(encoder, head, pooled, error, match):
    with pytest.raises(error, match=match):
        Predictor(encoder, head, NAMES).predict_pooled(pooled)


def test_bad_construction(encoder, head):
    with pytest.raises(ValueError, match="head scores 5 models but model_names has 4"):
        Predictor(encoder, head, NAMES[:4])
    with pytest.raises(ValueError, match="duplicates"):
        Predictor(encoder, head, NAMES[:4] + ["gpt-4o"])
    with pytest.raises(TypeError, match=r"model_names\[2\] must be a non-empty str"):
        Predictor(encoder, head, NAMES[:2] + [""] + NAMES[3:])
    with pytest.raises(TypeError, match="model_names must be a list"):
        Predictor(encoder, head, "gpt-4o")
    with pytest.raises(ValueError, match="head expects d_in=128"):
        Predictor(encoder, ScoringHead(128, 5), NAMES)
    with pytest.raises(TypeError, match="head must be a ScoringHead"):
        Predictor(encoder, torch.nn.Linear(384, 5), NAMES)
    with pytest.raises(ValueError, match="backend must be one of"):
        Predictor(encoder, head, NAMES, backend="gpu")


def test_unknown_env_backend_is_a_clear_error(encoder, head, monkeypatch):
    monkeypatch.setenv("ROUTOO_BACKEND", "fast")
    with pytest.raises(ValueError, match="ROUTOO_BACKEND"):
        Predictor(encoder, head, NAMES).predict(PROMPTS[:1])
