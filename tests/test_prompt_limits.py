"""Prompt limits in the encoder: text is cut to max_chars characters before tokenizing (so a 5 MB prompt costs
what a max_length-token one does) without changing the tokens of ordinary prompts, and text that is not valid
Unicode (a lone surrogate) is refused with a clear InvalidPrompt instead of the tokenizer's TypeError."""
import numpy as np
import pytest

from routoo_fast.encoder import CHARS_PER_TOKEN, InvalidPrompt, check_prompts

from _minilm import shared_encoder

QUESTION = ("The following is a multiple choice question about physics. A ball is thrown upward with speed "
            "12 m/s from a 20 m tall building. How long until it reaches the ground? Options: A) 3.2 s "
            "B) 1.2 s C) 4.0 s D) 2.6 s. Answer with the letter of the correct option.")


@pytest.fixture(scope="module")
def encoder():
    return shared_encoder()


class RecordingTokenizer:
    """Wraps the HF tokenizer and records the longest text it was asked to read."""

    def __init__(self, tokenizer):
        self.tokenizer, self.longest = tokenizer, 0

    def __call__(self, texts, **kwargs):
        self.longest = max([self.longest] + [len(t) for t in texts])
        return self.tokenizer(texts, **kwargs)

    def __getattr__(self, name):
        return getattr(self.tokenizer, name)


def test_default_char_cap_follows_max_length(encoder):
    assert encoder.max_chars == encoder.max_length * CHARS_PER_TOKEN


def test_huge_prompt_is_cut_before_the_tokenizer_reads_it(encoder, monkeypatch):
    spy = RecordingTokenizer(encoder.tokenizer)
    monkeypatch.setattr(encoder, "tokenizer", spy)
    huge = (QUESTION + " ") * (5_000_000 // len(QUESTION))  # about 5 MB
    ids = encoder.token_ids([huge, "short one"])
    assert spy.longest == encoder.max_chars  # not 5 MB
    assert len(ids[0]) == encoder.max_length


def test_cut_leaves_the_tokens_and_encoding_of_a_long_prompt_unchanged(encoder, monkeypatch):
    long = (QUESTION + " ") * 400  # about 130,000 characters, far past max_chars
    assert len(long) > 100 * encoder.max_chars
    cut_ids = encoder.token_ids([long])
    cut = encoder.encode([long])
    monkeypatch.setattr(encoder, "max_chars", 10 ** 9)  # no cut: the tokenizer reads all of it and truncates
    assert encoder.token_ids([long]) == cut_ids
    uncut = encoder.tokenizer([long], truncation=True, max_length=encoder.max_length)["input_ids"]
    assert uncut == cut_ids
    np.testing.assert_array_equal(encoder.encode([long]), cut)  # same tokens, same operations: bit-exact


def test_cut_changes_no_bundled_prompt(encoder, monkeypatch):
    """Real prompts at this encoder's max_length (32 tokens, cut at 512 characters, so most prompts are cut):
    the token ids are those of the whole text truncated by the tokenizer."""
    from routoo_fast.data.mmlu_pro import load_default

    prompts = load_default().prompts[::7]
    assert sum(len(p) > encoder.max_chars for p in prompts) > len(prompts) // 4  # the cut really happens
    cut = encoder.token_ids(prompts)
    monkeypatch.setattr(encoder, "max_chars", 10 ** 9)
    assert encoder.token_ids(prompts) == cut


def test_lone_surrogate_is_an_invalid_prompt(encoder):
    with pytest.raises(InvalidPrompt, match=r"prompts\[1\] is not valid Unicode text: lone surrogate U\+D800"):
        check_prompts(["fine", "x \ud800"])
    with pytest.raises(ValueError, match="lone surrogate"):  # InvalidPrompt is a ValueError
        encoder.encode(["x \udfff y"])
    check_prompts(["caf\u00e9 \U0001F600"])  # non-ASCII but valid: accepted


def test_bad_max_chars_rejected():
    from routoo_fast.encoder import Encoder

    with pytest.raises(ValueError, match="max_chars"):
        Encoder(max_length=32, max_chars=0)


# ---- `routoo-fast serve` flags for these limits ----------------------------------------------------------------
def test_serve_limits_have_defaults_in_help(capsys):
    from routoo_fast.serve.batcher import DEFAULT_MAX_BATCH_TOKENS
    from routoo_fast.cli import build_parser

    args = build_parser().parse_args(["serve"])
    assert args.max_batch_tokens == DEFAULT_MAX_BATCH_TOKENS and args.max_prompt_chars is None
    with pytest.raises(SystemExit):
        build_parser().parse_args(["serve", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert f"(default: {DEFAULT_MAX_BATCH_TOKENS})" in text
    assert f"(default: {CHARS_PER_TOKEN} x the encoder's max_length" in text


@pytest.mark.parametrize("flags, tokens, chars, mmap", [
    ([], "default", None, "default"),
    (["--max-batch-tokens", "0", "--malloc-mmap-threshold", "0"], None, None, None),
    (["--max-batch-tokens", "100", "--max-prompt-chars", "77", "--malloc-mmap-threshold", "65536"], 100, 77, 65536),
])
def test_serve_passes_its_limits_on(monkeypatch, flags, tokens, chars, mmap):
    import uvicorn

    import routoo_fast.serve.batcher as batcher
    import routoo_fast.cli as cli
    import routoo_fast.serve.server as server
    from routoo_fast.serve.batcher import DEFAULT_MAX_BATCH_TOKENS, DEFAULT_MMAP_THRESHOLD
    from small_router import small_router

    router = small_router()
    encoder = router.predictor.encoder  # shared between tests: monkeypatch puts max_chars back afterwards
    monkeypatch.setattr(encoder, "max_chars", encoder.max_chars)
    seen = {}
    monkeypatch.setattr(cli, "_load_router", lambda args: router)
    monkeypatch.setattr(server, "create_app", lambda router, upstreams, **kw: seen.update(kw) or "app")
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: seen.update(app=app))
    monkeypatch.setattr(batcher, "limit_malloc_growth", lambda threshold: seen.update(mmap=threshold))
    assert cli.main(["serve"] + flags) == 0
    assert seen["app"] == "app"
    assert seen["max_batch_tokens"] == (DEFAULT_MAX_BATCH_TOKENS if tokens == "default" else tokens)
    assert encoder.max_chars == (encoder.max_length * CHARS_PER_TOKEN if chars is None else chars)
    assert seen.get("mmap") == (DEFAULT_MMAP_THRESHOLD if mmap == "default" else mmap)
