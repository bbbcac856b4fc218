"""Encoder on the real shipped all-MiniLM-L6-v2: pooling, order, buckets, truncation, ids and specs, bad input;
a tiny random decoder (GPT-2 layout) for last-token pooling."""
import inspect

import numpy as np
import pytest
import torch
from _minilm import PROMPTS, shared_encoder

from routoo_fast.encoder import Encoder, default_model_path


@pytest.fixture(scope="module")
def encoder():
    return shared_encoder()


def test_contract_defaults():
    params = inspect.signature(Encoder).parameters
    assert [params[k].default for k in ("path", "max_length", "batch_size", "num_threads", "pooling")] == \
        [None, 256, 64, None, "mean"]


def test_encode_is_masked_mean_of_the_hf_model(encoder):
    """Same numbers as running the HF model one prompt at a time (no padding, no buckets) and averaging."""
    tok, model = encoder.tokenizer, encoder.model
    got = encoder.encode(PROMPTS)
    assert got.dtype == np.float32 and got.shape == (len(PROMPTS), 384) and encoder.hidden_size == 384
    with torch.no_grad():
        for i, p in enumerate(PROMPTS):
            ids = tok([p], truncation=True, max_length=32, return_tensors="pt")
            expected = model(**ids).last_hidden_state[0].mean(0).numpy()
            np.testing.assert_allclose(got[i], expected, atol=2e-5, rtol=1e-4)


def test_buckets_are_length_sorted_and_order_is_restored(encoder):
    seen, widths = [], []
    for hidden, mask, index in encoder.token_states(PROMPTS):
        assert hidden.shape[:2] == mask.shape and hidden.shape[0] == len(index) <= encoder.batch_size
        assert hidden.dtype == torch.float32
        widths.append(hidden.shape[1])
        seen.extend(index.tolist())
    assert sorted(seen) == list(range(len(PROMPTS))) and widths == sorted(widths)
    together = encoder.encode(PROMPTS)
    reversed_ = encoder.encode(PROMPTS[::-1])[::-1]
    np.testing.assert_allclose(together, reversed_, atol=1e-5)


def test_long_prompts_are_truncated(encoder):
    long = "The quick brown fox jumps over the lazy dog. " * 400
    widths = [h.shape[1] for h, _, _ in encoder.token_states([long])]
    assert widths == [32]
    a, b = encoder.encode([long, long + " and then something else entirely"])
    np.testing.assert_allclose(a, b, atol=1e-6)  # past max_length nothing changes


@pytest.mark.parametrize("prompts,error,match", [
    ([], ValueError, "prompts is empty"),
    (None, TypeError, "prompts must be a list of strings"),
    ("one prompt", TypeError, "wrap one prompt in a list"),
    (["ok", None], TypeError, r"prompts\[1\] must be a str, got NoneType"),
    ([3], TypeError, r"prompts\[0\] must be a str, got int"),
])
def test_bad_prompts(encoder, prompts, error, match):
    with pytest.raises(error, match=match):
        encoder.encode(prompts)
    with pytest.raises(error, match=match):
        next(encoder.token_states(prompts))


@pytest.mark.parametrize("kwargs,error,match", [
    ({"path": "/nonexistent/model"}, FileNotFoundError, "is not a folder"),
    ({"max_length": 1}, ValueError, "max_length must be an int >= 2"),
    ({"max_length": 1000}, ValueError, "exceeds the model's max_position_embeddings=512"),
    ({"pooling": "cls"}, ValueError, "pooling must be one of"),
    ({"batch_size": 0}, ValueError, "batch_size must be an int >= 1"),
])
def test_bad_constructor_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        Encoder(**kwargs)


def test_encoder_id_and_spec_round_trip(encoder):
    eid = encoder.encoder_id
    assert eid.startswith("all-MiniLM-L6-v2@sha256:") and eid.endswith("/pool=mean/max_length=32")
    spec = encoder.spec()
    assert spec["path"] is None and spec["max_length"] == 32 and spec["encoder_id"] == eid
    import json

    rebuilt = Encoder.from_spec(json.loads(json.dumps(spec)), num_threads=None)
    assert rebuilt.encoder_id == eid and rebuilt.batch_size == 2
    np.testing.assert_allclose(rebuilt.encode(PROMPTS[:2]), encoder.encode(PROMPTS[:2]), atol=1e-6)
    with pytest.raises(ValueError, match="unknown keys"):
        Encoder.from_spec({**spec, "colour": "blue"})
    with pytest.raises(ValueError, match="was made with"):
        Encoder.from_spec({**spec, "encoder_id": "all-MiniLM-L6-v2@sha256:0000/pool=mean/max_length=32"})


@pytest.fixture(scope="module")
def tiny_decoder(tmp_path_factory):
    """A random 1-layer GPT-2 saved locally next to the MiniLM tokenizer (no hub access needed)."""
    from transformers import AutoTokenizer, GPT2Config, GPT2Model

    folder = tmp_path_factory.mktemp("tiny_gpt2")
    tok = AutoTokenizer.from_pretrained(default_model_path(), local_files_only=True)
    tok.save_pretrained(folder)
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=tok.vocab_size, n_positions=64, n_embd=32, n_layer=1, n_head=2)
    GPT2Model(config).save_pretrained(folder)
    return folder


def test_last_token_pooling_on_a_decoder(tiny_decoder):
    from transformers import AutoModel, AutoTokenizer

    enc = Encoder(tiny_decoder, max_length=16, batch_size=4, pooling="last", device="cpu")
    assert enc.hidden_size == 32 and enc.encoder_id.endswith("/pool=last/max_length=16")
    prompts = ["a much longer prompt than the others here", "short", "mid sized one"]
    for hidden, mask, index in enc.token_states(prompts):
        assert (mask.sum(1) == 1).all()  # one-hot pooling mask
    got = enc.encode(prompts)  # all three in one right-padded batch
    tok = AutoTokenizer.from_pretrained(tiny_decoder, local_files_only=True)
    model = AutoModel.from_pretrained(tiny_decoder, local_files_only=True).eval()
    with torch.no_grad():
        for i, p in enumerate(prompts):
            ids = tok([p], truncation=True, max_length=16, return_tensors="pt", return_token_type_ids=False)
            expected = model(**ids).last_hidden_state[0, -1].numpy()
            np.testing.assert_allclose(got[i], expected, atol=1e-5, rtol=1e-4)


def test_prompt_with_no_tokens_is_encoded_as_the_pad_token(tiny_decoder):
    """Decoder tokenizers often add no special tokens, so "" has no tokens; it must not crash the forward."""
    enc = Encoder(tiny_decoder, max_length=16, pooling="last", device="cpu")

    class NoSpecialTokens:
        def __init__(self, tok):
            self.tok = tok

        def __call__(self, texts, **kwargs):
            return self.tok(texts, add_special_tokens=False, **kwargs)

        def __getattr__(self, name):
            return getattr(self.tok, name)

    enc.tokenizer = NoSpecialTokens(enc.tokenizer)
    got = enc.encode(["", "hello world"])
    with torch.no_grad():
        pad_state = enc.model(input_ids=torch.tensor([[enc.tokenizer.pad_token_id]])).last_hidden_state[0, -1]
    np.testing.assert_allclose(got[0], pad_state.numpy(), atol=1e-5, rtol=1e-4)
    np.testing.assert_allclose(enc.encode([""])[0], pad_state.numpy(), atol=1e-5, rtol=1e-4)  # a batch of width 0
    assert np.isfinite(got).all()


@pytest.mark.parametrize("batch_size,max_batch_tokens", [(64, 4096), (3, 10**9), (64, 100), (2, 1)])
def test_buckets_respect_batch_size_and_token_budget(batch_size, max_batch_tokens):
    bare = Encoder.__new__(Encoder)  # the bucketing rule needs no weights
    bare.batch_size, bare.max_batch_tokens = batch_size, max_batch_tokens
    rng = np.random.default_rng(0)
    lengths = rng.integers(2, 257, size=50)
    order = np.argsort(lengths, kind="stable")
    batches = list(bare._buckets(lengths[order], order))
    assert np.array_equal(np.concatenate(batches), order)  # every prompt once, in sorted order
    for b in batches:
        assert 1 <= len(b) <= batch_size
        assert len(b) == 1 or len(b) * lengths[b].max() <= max_batch_tokens
    # greedy: a batch is only cut when the next prompt would break a limit
    for b, nxt in zip(batches[:-1], batches[1:]):
        assert len(b) == batch_size or (len(b) + 1) * lengths[nxt[0]] > max_batch_tokens
