"""The encoder in ONNX Runtime: prompts -> pooled encodings [B, D], the pooling inside the graph.

Encoder backends (`ENCODER_BACKENDS`, chosen by `Router.from_pretrained(encoder_backend=...)`, `--encoder-backend`):
  torch      routoo_fast.encoder.Encoder: transformers on CPU or CUDA (token states, then pool+score)
  onnx       this module, fp32: the same weights exported to ONNX, run by onnxruntime on the CPU
  onnx-int8  this module, int8: the fp32 graph with every weight MatMul int8, a few outlier input channels split
             off into fp32 (see QUANTIZATION)

The graph, exported offline from the router's own encoder weights (never fetched):

    inputs   input_ids [b, T] int64, attention_mask [b, T] int64, pool_mask [b, T] float32
    hidden   = transformer(input_ids, attention_mask).last_hidden_state                     [b, T, D]
    output   pooled = sum_t pool_mask[t] hidden[t] / max(sum_t pool_mask[t], 1)             [b, D] float32

pool_mask is Encoder.pooling_mask's (the attention mask for "mean", one-hot at the last real token for "last"), so
the pooled output is what the torch path's masked mean gives, and the scoring head runs on it unchanged (in torch,
on the CPU). Files live in `<cache>/onnx/<key>/encoder.fp32.onnx` and `encoder.int8.onnx`, cache = the argument,
else $ROUTOO_CACHE_DIR, else ~/.cache/routoo_fast; key = sha256 of the weight files + the export recipe's version
+ the torch and onnxruntime versions that wrote them. Every file is written atomically (temporary file + rename),
so concurrent workers exporting at once each see a whole file; the export and the quantization are deterministic
(same inputs, same bytes; tested). The int8 graph also depends on the bundled calibration prompts its outlier
channels are measured on (calibration_prompts(), pinned by a test: changing them is a recipe change).

Tokenizing uses the model's fast tokenizer (`tokenizers.Tokenizer` from tokenizer.json, truncation set once, no
padding) directly: no transformers call per prompt. Token ids equal the torch Encoder's (tested).
"""
from __future__ import annotations

import os
import threading
from functools import cached_property
from pathlib import Path
from typing import Iterator

import numpy as np

from routoo_fast._atomic import atomic_write_bytes
from routoo_fast.encoder import (CHARS_PER_TOKEN, DEFAULT_NAME, POOLINGS, build_from_spec, check_prompts,
                                 default_model_path, encoder_id_of, weights_digest)
from routoo_fast.onnx_graph import (blockwise_int8, matmul_roles, plain_attention, smooth_inputs, split_outliers,
                                    unfuse_attention, unfuse_skip_layernorm)

__all__ = ["ENCODER_BACKENDS", "OnnxEncoder", "check_encoder_backend", "onnx_paths", "export_onnx",
           "quantize_onnx", "ensure_onnx", "QUANTIZATION", "EXPORT_VERSION"]

ENCODER_BACKENDS = ("torch", "onnx", "onnx-int8")
EXPORT_VERSION = 5  # bump when the export or quantization recipe changes: a new cache key, nothing stale is read
OPSET = 17
INSTALL_HINT = "pip install 'routoo_fast[onnx]' (onnxruntime and onnx)"
# Both graphs: after onnxruntime's BERT fusions, SkipLayerNormalization is rewritten back to Add + LayerNormalization
# (onnx_graph.unfuse_skip_layernorm) and sessions open with SESSION_DISABLED_OPTIMIZERS so it stays so: onnxruntime
# 1.32's CPU SkipLayerNormalization was ~20 % of the int8 session's time (12 calls, ~0.22 ms each at 107 tokens).
# Measured, 1 thread, 107-token MMLU question: fp32 24.5 -> 21.9 ms, int8 (v4 recipe) 13.1 -> 11.2 ms.
#
# What onnx-int8 quantizes, and how, chosen by the parity gate (routoo_fast.evaluation.encoder_parity, all 1,304
# held-out MMLU prompts against torch fp32, shipped router) and by speed. Every weight MatMul is int8 with the
# fastest int8 kernel onnxruntime has on a CPU, DynamicQuantizeMatMul (weights int8 per output channel, the input
# uint8 with one scale per call). One scale per input tensor is what costs accuracy: the inputs of the QKV, FFN up-
# and down-projections (LayerNorm and GELU outputs) have a few channels at 10-15x the median channel's range, and
# the uint8 steps sized for them leave the other channels ~10 levels. The per-input-channel max |x| is measured on
# the bundled train-split prompts (calibration_prompts), then:
#   QKV and up (LayerNorm outputs): SmoothQuant (onnx_graph.smooth_inputs, alpha SMOOTH_ALPHA): x / s and the
#       weight rows * s, so the outliers move into the per-channel weight scales; one Mul per MatMul.
#   down (GELU output): the OUTLIER_CHANNELS channels of largest range split off into a small fp32 MatMul
#       (onnx_graph.split_outliers: Mul + Gather + MatMul + Add), the rest per tensor; smoothing it fails the gate.
#   out (attention output, no such channels): per tensor as it is.
# The fused attention is split into one QKV MatMul (quantized) and the attention itself, which is then written in
# plain ops (onnx_graph.plain_attention: faster than MultiHeadAttention here). Embeddings, LayerNorms, softmax and
# pooling stay fp32. Measured (mean |dQ|, same decision at the default lambda / at half its spend (the smaller),
# max AUC delta, quality at the best model's cost; 1,304 prompts unless noted; the session's p50 on a 9-token /
# 107-token prompt, 1 thread, ms, measured in one run with the LayerNorms unfused and attention in plain ops unless
# noted):
#   this recipe (v5): smooth QKV, up (alpha 0.6); split down 0.0021  98.9%  0.0013  0.00 pt  passes  1.37 / 8.3
#       the shipped export of it (scripts/onnx_parity.py)  0.0021  98.5%  0.0013  0.00 pt  passes
#   alpha 0.5 / 0.7 / 0.8 on QKV and up                 0.0023  98.5%  0.0009  0.00 pt  passes  1.32 / 8.0
#                                                       0.0021  98.6%  0.0014  0.08 pt  passes  1.37 / 8.1
#                                                       0.0021  98.5%  0.0017  0.08 pt  passes
#   alpha 0.4                                           0.0025  97.7%  0.0012  0.00 pt  fails
#   smooth down too (alpha 0.5, 0.3, 0.15)              0.0090  93.2%  0.0049  0.32 pt  fails   1.25 / 7.7
#                                                       0.0383  76.0%  0.0328  0.56 pt  fails
#                                                       0.0418  70.2%  0.0391  0.16 pt  fails
#   v4: 8 outlier channels split on QKV, up and down    0.0019  98.7%  0.0011  0.00 pt  passes  1.45 / 10.0
#       the same with SkipLayerNormalization and MultiHeadAttention (as shipped in v4)
#                                                       0.0019  98.3%  0.0011  0.00 pt  passes  1.67 / 13.0
# Earlier recipes (v4 notes; time relative to v2, which kept QKV and down fp32): 16 / 32 outlier channels
# 0.0018 / 0.0018, 98.4 / 98.8 %, pass; v3 blockwise int8 (MatMulNBits) on QKV, up and down 0.0022, 98.7 %, passes,
# 0.74x / 1.1x of v2's time; v2 0.0031, 98.0 %, passes; per tensor on every MatMul, nothing split or smoothed
# (300-prompt sample) 0.0059, 97.7 %, AUC 0.0072, fails.
# A graph the BERT fusions do not recognise (another model type) has no roles: its weight MatMuls ("other") are
# quantized blockwise (blockwise_int8), which needs no calibration.
OUTLIER_CHANNELS = 8
SMOOTH_ALPHA = 0.6
QUANTIZATION = {"weights": "int8", "smoothed, per tensor": ("qkv", "up"), "per tensor, outliers fp32": ("down",),
                "per tensor": ("out",), "blockwise": ("other",), "smooth_alpha": SMOOTH_ALPHA,
                "outlier_channels": OUTLIER_CHANNELS, "block_size": 128, "calibration_prompts": "calibration_prompts()"}
# the fusion that would turn the graphs' Add + LayerNormalization back into the slower SkipLayerNormalization
SESSION_DISABLED_OPTIMIZERS = ["SkipLayerNormFusion"]
_BERT_TYPES = {"bert", "roberta", "xlm-roberta", "camembert", "distilbert", "electra", "mpnet"}


def check_encoder_backend(name, source: str = "encoder_backend") -> str:
    """`name` if it is one of ENCODER_BACKENDS, else ValueError naming `source`."""
    if not isinstance(name, str) or name not in ENCODER_BACKENDS:
        raise ValueError(f"{source} must be one of {list(ENCODER_BACKENDS)}, got {name!r}")
    return name


def _import_ort():
    try:
        import onnxruntime
    except ImportError as err:
        raise ImportError(f"the onnx encoder backends need onnxruntime: {INSTALL_HINT}; or use encoder "
                          "backend 'torch'") from err
    return onnxruntime


def default_cache_dir() -> Path:
    return Path(os.environ.get("ROUTOO_CACHE_DIR") or Path.home() / ".cache" / "routoo_fast")


def onnx_paths(folder, cache_dir=None) -> tuple[Path, Path]:
    """(fp32 graph, int8 graph) paths for the model in `folder` under the cache (neither need exist yet)."""
    import torch

    ort = _import_ort()
    key = (f"{weights_digest(folder)[:24]}-v{EXPORT_VERSION}-torch{torch.__version__.split('+')[0]}"
           f"-ort{ort.__version__}")
    root = (Path(cache_dir) if cache_dir is not None else default_cache_dir()) / "onnx" / key
    return root / "encoder.fp32.onnx", root / "encoder.int8.onnx"


# ---- export ----------------------------------------------------------------------------------------------------
def _pooled_module(model):
    import torch

    class Pooled(torch.nn.Module):
        """hidden states -> pooled [b, D] with the pooling mask, the math of pool_score.masked_mean."""

        def __init__(self, model):
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask, pool_mask):
            hidden = self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            summed = torch.bmm(pool_mask.unsqueeze(1), hidden).squeeze(1)
            return summed / pool_mask.sum(dim=1, keepdim=True).clamp(min=1.0)

    return Pooled(model).eval()


def export_onnx(folder, out) -> Path:
    """Export the transformer in `folder` (a local HF model folder) with the pooling in the graph to `out`, fp32,
    atomically; BERT-family graphs are then fused by onnxruntime's transformer optimizer (attention, GELU), with
    the LayerNorms left as Add + LayerNormalization (see the notes above QUANTIZATION); the int8 graph builds on
    this one. Deterministic: the same weights give the same bytes."""
    import io

    import torch
    from transformers import AutoConfig, AutoModel

    _import_ort()
    folder, out = Path(folder), Path(out)
    config = AutoConfig.from_pretrained(folder, local_files_only=True)
    # eager attention: the SDPA path traces Python branches on shapes into constants
    model = AutoModel.from_pretrained(folder, config=config, local_files_only=True,
                                      attn_implementation="eager").eval()
    ids = torch.tensor([[1, 2, 3, 4, 5], [1, 2, 3, 0, 0]], dtype=torch.int64)
    attention = torch.tensor([[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]], dtype=torch.int64)
    buf = io.BytesIO()
    dyn = {0: "batch", 1: "tokens"}
    with torch.no_grad():
        torch.onnx.export(_pooled_module(model), (ids, attention, attention.float()), buf,
                          input_names=["input_ids", "attention_mask", "pool_mask"], output_names=["pooled"],
                          dynamic_axes={"input_ids": dyn, "attention_mask": dyn, "pool_mask": dyn,
                                        "pooled": {0: "batch"}},
                          opset_version=OPSET, do_constant_folding=True, dynamo=False)
    data = buf.getvalue()
    if getattr(config, "model_type", None) in _BERT_TYPES:
        data = _fuse_bert(data, config)
    atomic_write_bytes(out, data)
    return out


def _fuse_bert(data: bytes, config) -> bytes:
    import onnx
    from onnxruntime.transformers.optimizer import optimize_model

    model = onnx.load_from_string(data)
    # opt_level 0: onnxruntime's own fusions only (not a session-optimised graph tied to this CPU)
    fused = optimize_model(model, model_type="bert", num_heads=int(config.num_attention_heads),
                          hidden_size=int(config.hidden_size), opt_level=0, use_gpu=False)
    if not any(op.domain == "com.microsoft" for op in fused.model.opset_import):  # the fused ops' domain
        fused.model.opset_import.append(onnx.helper.make_opsetid("com.microsoft", 1))
    return unfuse_skip_layernorm(fused.model).SerializeToString()


def quantize_onnx(src, out, folder=None, calibration=None) -> Path:
    """The int8 graph of the fp32 graph `src`, written atomically to `out` (recipe: QUANTIZATION). The outlier
    channels are measured on `calibration` prompts (default: calibration_prompts()) tokenized by `folder`'s
    tokenizer (default: the shipped model's). Deterministic: the same inputs give the same bytes."""
    import tempfile

    import onnx

    _import_ort()
    from onnxruntime.quantization import QuantType, quantize_dynamic

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    model = unfuse_attention(onnx.load(str(src)))
    roles = matmul_roles(model)
    by_role = {kind: [name for name, role in roles.items() if role in QUANTIZATION[kind]]
               for kind in ("smoothed, per tensor", "per tensor, outliers fp32", "per tensor", "blockwise")}
    smooth, split = by_role["smoothed, per tensor"], by_role["per tensor, outliers fp32"]
    per_tensor = by_role["per tensor"]
    if smooth or split:
        inputs = {n.name: n.input[0] for n in model.graph.node if n.name in set(smooth + split)}
        amax = channel_amax(model, sorted(set(inputs.values())), folder,
                            calibration_prompts() if calibration is None else calibration)
        model, smoothed = smooth_inputs(model, {name: amax[inputs[name]] for name in smooth},
                                        QUANTIZATION["smooth_alpha"])
        model, main = split_outliers(model, {name: amax[inputs[name]] for name in split},
                                     QUANTIZATION["outlier_channels"])
        per_tensor = per_tensor + smoothed + main
    model = blockwise_int8(model, by_role["blockwise"], QUANTIZATION["block_size"])
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".quantize-") as tmp:
        staged, tmp_out = Path(tmp) / "staged.onnx", Path(tmp) / "int8.onnx"
        onnx.save(model, str(staged))
        if per_tensor:
            quantize_dynamic(str(staged), str(tmp_out), weight_type=QuantType.QInt8, per_channel=True,
                             op_types_to_quantize=["MatMul"], nodes_to_quantize=per_tensor,
                             extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
        else:
            tmp_out = staged
        # after quantizing: quantize_dynamic must not see the attention's own MatMuls as weight MatMuls' kin
        final = plain_attention(onnx.load(str(tmp_out)))
        atomic_write_bytes(out, final.SerializeToString())
    return out


CALIBRATION_PROMPTS = 128


def calibration_prompts(n: int = CALIBRATION_PROMPTS) -> list[str]:
    """The first n prompts of the bundled MMLU-Pro table's train split (`split_by_hash`, the shipped router's
    fractions): never a held-out prompt the parity gate measures."""
    from routoo_fast.data import load_default
    from routoo_fast.data.splits import split_by_hash, split_fractions

    prompts = load_default().prompts
    train = np.flatnonzero(split_by_hash(prompts, split_fractions()) == "train")[:n]
    return [prompts[i] for i in train]


def channel_amax(model, names, folder=None, prompts=()) -> dict:
    """{tensor name: max |value| per channel (last axis) over every token of `prompts`}, the fp32 `model` run by
    onnxruntime one prompt at a time (no padding), each prompt tokenized by `folder`'s tokenizer.json and cut to
    256 tokens."""
    import onnx
    from onnx import helper
    from tokenizers import Tokenizer

    ort = _import_ort()
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    for name in names:
        probe.graph.output.append(helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    session = ort.InferenceSession(probe.SerializeToString(), options, providers=["CPUExecutionProvider"],
                                   disabled_optimizers=SESSION_DISABLED_OPTIMIZERS)
    tok = Tokenizer.from_file(str(Path(default_model_path() if folder is None else folder) / "tokenizer.json"))
    tok.no_padding()
    tok.enable_truncation(256)
    amax = {name: None for name in names}
    for prompt in prompts:
        ids = np.asarray([tok.encode(prompt).ids or [0]], dtype=np.int64)
        feed = {"input_ids": ids, "attention_mask": np.ones_like(ids), "pool_mask": np.ones(ids.shape, np.float32)}
        for name, x in zip(names, session.run(list(names), feed)):
            m = np.abs(x.reshape(-1, x.shape[-1])).max(axis=0)
            amax[name] = m if amax[name] is None else np.maximum(amax[name], m)
    return amax


_EXPORT_LOCK = threading.Lock()


def ensure_onnx(folder, quantized: bool, cache_dir=None) -> Path:
    """The graph file for the model in `folder`, exported (and quantized) into the cache unless already there."""
    fp32, int8 = onnx_paths(folder, cache_dir)
    with _EXPORT_LOCK:
        if not fp32.is_file():
            export_onnx(folder, fp32)
        if quantized and not int8.is_file():
            quantize_onnx(fp32, int8, folder)
    return int8 if quantized else fp32


# ---- the encoder -----------------------------------------------------------------------------------------------
def _positive_int(name, value, minimum=1):
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return value


class OnnxEncoder:
    """`Encoder`'s interface for pooled encodings, run by onnxruntime on the CPU.

    path, max_length, batch_size, pooling, max_batch_tokens, max_chars: as `routoo_fast.encoder.Encoder`.
    quantized: the int8 graph (encoder backend "onnx-int8") instead of fp32 ("onnx").
    num_threads: onnxruntime intra-op threads for this encoder; torch's (process-wide, for the scoring head) are
    then set to 1 (None = leave both as they are: onnxruntime's choice is all cores).
    cache_dir: where the exported graphs live (None: $ROUTOO_CACHE_DIR or ~/.cache/routoo_fast). onnx_path: run
    this graph file instead (it must have the inputs and output in the module docstring).
    """

    pools_inside = True  # Predictor scores encode()'s pooled output; there are no token states to pool

    def __init__(self, path=None, max_length: int = 256, batch_size: int = 64, num_threads: int | None = None,
                 pooling: str = "mean", quantized: bool = False, cache_dir=None, onnx_path=None,
                 max_batch_tokens: int = 4096, max_chars: int | None = None, device=None):
        if device is not None and str(device) != "cpu":
            raise ValueError(f"the onnx encoder backends run on the CPU, got device={device!r} (use encoder "
                             "backend 'torch' for CUDA)")
        ort = _import_ort()
        from tokenizers import Tokenizer

        self.max_length = _positive_int("max_length", max_length, minimum=2)
        self.batch_size = _positive_int("batch_size", batch_size)
        self.max_batch_tokens = _positive_int("max_batch_tokens", max_batch_tokens)
        self.max_chars = (self.max_length * CHARS_PER_TOKEN if max_chars is None
                          else _positive_int("max_chars", max_chars))
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        self.pooling = pooling
        self.quantized = bool(quantized)
        self.num_threads = None if num_threads is None else _positive_int("num_threads", num_threads)
        if self.num_threads is not None:
            # the scoring head runs in torch (process-wide count): one thread, whatever onnxruntime gets. The head is
            # a small MLP on [B, D]; a second torch (OpenMP) thread left spinning after it takes the core that
            # onnxruntime's second thread needs: measured at 2 threads, a 9-token route 8-16 ms with torch at 2
            # threads, 3.0 ms with torch at 1
            import torch

            torch.set_num_threads(1)
        # absolute, so that a saved router's spec loads from any working directory
        self.path = None if path is None else str(Path(path).expanduser().resolve())
        folder = Path(default_model_path() if path is None else self.path)
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(f"encoder path {str(folder)!r} is not a local HF model folder with config.json")
        if not (folder / "tokenizer.json").is_file():
            raise FileNotFoundError(f"encoder path {str(folder)!r} has no tokenizer.json (the onnx backends need "
                                    "a fast tokenizer; use encoder backend 'torch')")
        self.folder = folder
        import json

        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        limit = config.get("max_position_embeddings")
        if isinstance(limit, int) and self.max_length > limit:
            raise ValueError(f"max_length={self.max_length} exceeds the model's max_position_embeddings={limit}")
        self.hidden_size = int(config["hidden_size"])
        self.device = "cpu"

        tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
        tok.no_padding()
        tok.enable_truncation(self.max_length)
        self.tokenizer = tok
        self.pad_id = self._pad_id(folder, tok)

        self.onnx_path = Path(onnx_path) if onnx_path is not None else ensure_onnx(folder, self.quantized,
                                                                                     cache_dir)
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        if self.num_threads is not None:
            options.intra_op_num_threads = self.num_threads
            # no spinning between runs: a waiting thread would burn a core another worker needs
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(self.onnx_path), options, providers=["CPUExecutionProvider"],
                                            disabled_optimizers=SESSION_DISABLED_OPTIMIZERS)
        names = [i.name for i in self.session.get_inputs()]
        if names != ["input_ids", "attention_mask", "pool_mask"]:
            raise ValueError(f"{self.onnx_path}: graph inputs {names}, expected input_ids, attention_mask, pool_mask")
        self._one = np.ones((1, self.max_length), dtype=np.int64)  # batch-1 masks are views of these
        self._one_f = np.ones((1, self.max_length), dtype=np.float32)

    @staticmethod
    def _pad_id(folder: Path, tok) -> int:
        import json

        special = folder / "special_tokens_map.json"
        pad = None
        if special.is_file():
            value = json.loads(special.read_text(encoding="utf-8")).get("pad_token")
            pad = value.get("content") if isinstance(value, dict) else value
        for name in (pad, "[PAD]", "<pad>"):
            if name is not None and tok.token_to_id(name) is not None:
                return int(tok.token_to_id(name))
        return 0  # padded positions are masked out; any id will do

    # --- identity (the same as the torch Encoder's: same weights, same head) ------------------------------------
    @cached_property
    def encoder_id(self) -> str:
        return encoder_id_of(self.path, self.folder, self.pooling, self.max_length)

    def spec(self) -> dict:
        return {"path": self.path, "max_length": self.max_length, "batch_size": self.batch_size,
                "pooling": self.pooling, "encoder_id": self.encoder_id}

    @classmethod
    def from_spec(cls, spec: dict, **overrides) -> "OnnxEncoder":
        """Rebuild from an `Encoder.spec()`; overrides: num_threads, batch_size, max_batch_tokens, max_chars,
        quantized, cache_dir, onnx_path, device ("cpu" only). The weights found must give the spec's encoder_id."""
        return build_from_spec(cls, spec, overrides, {"num_threads", "device", "batch_size", "max_batch_tokens",
                                                      "max_chars", "quantized", "cache_dir", "onnx_path"})

    def __repr__(self) -> str:
        where = DEFAULT_NAME if self.path is None else self.path
        kind = "onnx-int8" if self.quantized else "onnx"
        return (f"OnnxEncoder({where!r}, {kind}, max_length={self.max_length}, batch_size={self.batch_size}, "
                f"pooling={self.pooling!r})")

    # --- encoding -----------------------------------------------------------------------------------------------
    def token_ids(self, prompts) -> list[list[int]]:
        """Token ids per prompt: the first max_chars characters, tokenized, truncated to max_length tokens."""
        return self._token_ids(check_prompts(prompts))

    def _token_ids(self, prompts: list[str]) -> list[list[int]]:
        texts = [p if len(p) <= self.max_chars else p[:self.max_chars] for p in prompts]
        if len(texts) == 1:
            ids = [self.tokenizer.encode(texts[0]).ids]
        else:
            ids = [e.ids for e in self.tokenizer.encode_batch(texts)]
        return [x if len(x) else [self.pad_id] for x in ids]

    def encode(self, prompts) -> np.ndarray:
        """Pooled encodings np.float32 [B, D] in the order of `prompts`."""
        ids = self._token_ids(check_prompts(prompts))
        if len(ids) == 1:  # the latency path: no sorting, no padding
            x = np.array(ids, dtype=np.int64)
            n = x.shape[1]
            if self.pooling == "mean":  # the masks are views of preallocated ones
                return self._run(x, self._one[:, :n], self._one_f[:, :n])
            return self._run(x, self._one[:, :n], self._pool_mask(self._one[:, :n]))
        out = np.empty((len(ids), self.hidden_size), dtype=np.float32)
        if self.quantized:
            # one prompt per run: dynamic quantization scales activations by their range over the whole batch
            # (padding included), so a batched int8 encoding would depend on its neighbours; alone, a prompt's
            # encoding is the same in any batch, and no padding is computed
            for i, x in enumerate(ids):
                row = np.asarray([x], dtype=np.int64)
                mask = self._one[:, :row.shape[1]]
                out[i] = self._run(row, mask, self._pool_mask(mask))[0]
            return out
        for pooled, index in self._batches(ids):
            out[index] = pooled
        return out

    def _batches(self, ids) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        lengths = np.fromiter((len(x) for x in ids), dtype=np.int64, count=len(ids))
        order = np.argsort(lengths, kind="stable")
        sorted_lengths = lengths[order]
        start = 0
        for end in range(1, len(order) + 1):  # the torch Encoder's buckets: batch_size and max_batch_tokens
            full = end - start == self.batch_size
            last = end == len(order)
            too_wide = not last and (end + 1 - start) * sorted_lengths[end] > self.max_batch_tokens
            if full or last or too_wide:
                index = order[start:end]
                width = int(sorted_lengths[end - 1])
                x = np.full((len(index), width), self.pad_id, dtype=np.int64)
                mask = np.zeros((len(index), width), dtype=np.int64)
                for row, i in enumerate(index):
                    n = len(ids[i])
                    x[row, :n] = ids[i]
                    mask[row, :n] = 1
                yield self._run(x, mask, self._pool_mask(mask)), index
                start = end

    def _pool_mask(self, mask: np.ndarray) -> np.ndarray:
        if self.pooling == "mean":
            return self._one_f[:, :mask.shape[1]] if mask.shape[0] == 1 and mask.all() else mask.astype(np.float32)
        last = mask.sum(axis=1) - 1
        out = np.zeros(mask.shape, dtype=np.float32)
        out[np.arange(mask.shape[0]), last] = 1.0
        return out

    def _run(self, ids: np.ndarray, mask: np.ndarray, pool_mask: np.ndarray) -> np.ndarray:
        return self.session.run(None, {"input_ids": ids, "attention_mask": mask, "pool_mask": pool_mask})[0]
