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

__all__ = ["ENCODER_BACKENDS", "OnnxEncoder", "check_encoder_backend", "onnx_paths", "export_onnx",
           "quantize_onnx", "QUANTIZATION", "EXPORT_VERSION"]

ENCODER_BACKENDS = ("torch", "onnx", "onnx-int8")
EXPORT_VERSION = 4  # bump when the export or quantization recipe changes: a new cache key, nothing stale is read
OPSET = 17
INSTALL_HINT = "pip install 'routoo_fast[onnx]' (onnxruntime and onnx)"
# What onnx-int8 quantizes, and how, chosen by the parity gate (routoo_fast.evaluation.encoder_parity, all 1,304
# held-out MMLU prompts against torch fp32, shipped router) and by speed. Every weight MatMul is int8 with the
# fastest int8 kernel onnxruntime has on a CPU, DynamicQuantizeMatMul (weights int8 per output channel, the input
# uint8 with one scale per call). One scale per input tensor is what cost accuracy: the inputs of the QKV, FFN up-
# and down-projections (LayerNorm and GELU outputs) have a few channels at 10-15x the median channel's range, and
# the uint8 steps sized for them leave the other channels ~10 levels. So for those three MatMuls the OUTLIER_CHANNELS
# input channels of largest range (measured on the bundled train-split prompts, calibration_prompts) are split off
# into a small fp32 MatMul (split_outliers) and the rest is quantized per tensor; the attention output projection,
# whose input has no such channels, is quantized as it is. The fused attention is split into one QKV MatMul +
# MultiHeadAttention so the QKV projection is one of these MatMuls. Embeddings, LayerNorms, softmax and pooling
# stay fp32. Measured (mean |dQ|, same decision at the default lambda / at half its spend (the smaller), max AUC
# delta, quality at the best model's cost; 1,304 prompts unless noted; time of the session, 1 thread, relative to
# v2 in the same run, 9 tokens / 107 tokens; the 16- and 32-channel rows, measured before the 1/16-octave rounding
# of the channel choice, show how much the same decision moves between near-equal recipes):
#   this recipe (v4), 8 outlier channels                0.0019  98.3%  0.0011  0.00 pt  passes   0.6x / 0.78x
#   16 outlier channels                                 0.0018  98.4%  0.0013  0.08 pt  passes
#   32 outlier channels                                 0.0018  98.8%  0.0008  0.00 pt  passes   0.66x / 0.80x
#   v3: blockwise int8 (MatMulNBits, 128-weight blocks, input quantized per row and block) on QKV, up and down,
#       per tensor on the output projection             0.0022  98.7%  0.0012  0.16 pt  passes   0.74x / 1.1x
#   v2: per tensor on the output and up-projections, QKV and down fp32
#                                                       0.0031  98.0%  0.0018  0.08 pt  passes   1 / 1
#   per tensor on every MatMul, no outliers split (300-prompt sample)
#                                                       0.0059  97.7%  0.0072           fails
# A graph the BERT fusions do not recognise (another model type) has no roles: its weight MatMuls ("other") are
# quantized blockwise (blockwise_int8), which needs no calibration.
OUTLIER_CHANNELS = 8
QUANTIZATION = {"weights": "int8", "per tensor, outliers fp32": ("qkv", "up", "down"), "per tensor": ("out",),
                "blockwise": ("other",), "outlier_channels": OUTLIER_CHANNELS, "block_size": 128,
                "calibration_prompts": "calibration_prompts()"}
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
    atomically; BERT-family graphs are then fused by onnxruntime's transformer optimizer (attention, LayerNorm,
    GELU), which the int8 graph builds on. Deterministic: the same weights give the same bytes."""
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
    return fused.model.SerializeToString()


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
    model = _unfuse_attention(onnx.load(str(src)))
    roles = matmul_roles(model)
    split = [name for name, role in roles.items() if role in QUANTIZATION["per tensor, outliers fp32"]]
    per_tensor = [name for name, role in roles.items() if role in QUANTIZATION["per tensor"]]
    blockwise = [name for name, role in roles.items() if role in QUANTIZATION["blockwise"]]
    if split:
        inputs = {n.name: n.input[0] for n in model.graph.node if n.name in set(split)}
        amax = channel_amax(model, sorted(set(inputs.values())), folder,
                            calibration_prompts() if calibration is None else calibration)
        model, main = split_outliers(model, {name: amax[inputs[name]] for name in split},
                                     QUANTIZATION["outlier_channels"])
        per_tensor = per_tensor + main
    model = blockwise_int8(model, blockwise, QUANTIZATION["block_size"])
    with tempfile.TemporaryDirectory(dir=out.parent, prefix=".quantize-") as tmp:
        staged, tmp_out = Path(tmp) / "staged.onnx", Path(tmp) / "int8.onnx"
        onnx.save(model, str(staged))
        if per_tensor:
            quantize_dynamic(str(staged), str(tmp_out), weight_type=QuantType.QInt8, per_channel=True,
                             op_types_to_quantize=["MatMul"], nodes_to_quantize=per_tensor,
                             extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT})
        else:
            tmp_out = staged
        atomic_write_bytes(out, tmp_out.read_bytes())
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
    session = ort.InferenceSession(probe.SerializeToString(), options, providers=["CPUExecutionProvider"])
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


def split_outliers(model, amax_by_node: dict, k: int):
    """Each MatMul named in `amax_by_node` (input x [..., K], constant weight W [K, N]) becomes
        Mul(x, m) @ W'  +  Gather(x, O) @ W[O]          (the sum is exactly x @ W in real arithmetic)
    with O the k input channels of largest calibrated max |x| (amax_by_node[name] [K]), m zero on O, W' = W with the
    rows O zeroed. The first product is the one quantized per tensor: without its outlier channels, one uint8 scale
    for the input resolves the others ~5x finer; the second stays fp32 (k x N weights). O is chosen on max |x|
    rounded to 1/16 octave (ties by channel order), so float noise in the calibration rarely changes it. Returns
    (model, names of the first products' MatMuls)."""
    from onnx import helper, numpy_helper

    inits = {init.name: init for init in model.graph.initializer}
    nodes, main = [], []
    for node in model.graph.node:
        if node.name not in amax_by_node:
            nodes.append(node)
            continue
        x, w = node.input
        W = numpy_helper.to_array(inits[w]).astype(np.float32)
        level = np.round(np.log2(np.maximum(np.asarray(amax_by_node[node.name], dtype=np.float64), 1e-30)) * 16)
        outliers = np.sort(np.lexsort((np.arange(W.shape[0]), -level))[:k]).astype(np.int64)
        keep = np.ones(W.shape[0], dtype=np.float32)
        keep[outliers] = 0
        inner = W.copy()
        inner[outliers] = 0
        pre = f"{node.name}_outliers"
        model.graph.initializer.extend([numpy_helper.from_array(keep, f"{pre}_keep"),
                                        numpy_helper.from_array(outliers, f"{pre}_index"),
                                        numpy_helper.from_array(W[outliers], f"{pre}_weight"),
                                        numpy_helper.from_array(inner, f"{pre}_inner_weight")])
        nodes += [helper.make_node("Mul", [x, f"{pre}_keep"], [f"{pre}_x_inner"], name=f"{pre}/Mul"),
                  helper.make_node("MatMul", [f"{pre}_x_inner", f"{pre}_inner_weight"], [f"{pre}_y_inner"],
                                   name=f"{node.name}/inner"),
                  helper.make_node("Gather", [x, f"{pre}_index"], [f"{pre}_x"], name=f"{pre}/Gather", axis=-1),
                  helper.make_node("MatMul", [f"{pre}_x", f"{pre}_weight"], [f"{pre}_y"], name=f"{pre}/MatMul"),
                  helper.make_node("Add", [f"{pre}_y_inner", f"{pre}_y"], list(node.output), name=f"{pre}/Add")]
        main.append(f"{node.name}/inner")
        if sum(w in n.input for n in model.graph.node) == 1:
            model.graph.initializer.remove(inits[w])
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return model, main


def _unfuse_attention(model):
    """Each fused Attention node (input, packed QKV weight [D, 3D], bias, mask) becomes MatMul(input, weight) ->
    Split -> MultiHeadAttention(q, k, v, bias, mask): the same arithmetic, with the QKV projection a plain MatMul
    that can be quantized like the others (Attention's own int8 form quantizes its input per tensor)."""
    from onnx import helper, numpy_helper

    shapes = {init.name: tuple(init.dims) for init in model.graph.initializer}
    nodes = []
    for node in model.graph.node:
        if node.op_type != "Attention" or node.domain != "com.microsoft" or len(node.input) < 3:
            nodes.append(node)
            continue
        x, weight, bias = node.input[:3]
        mask = node.input[3] if len(node.input) > 3 else ""
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if set(attrs) - {"num_heads", "mask_filter_value", "scale"} or len(node.input) > 4 \
                or len(shapes.get(weight, ())) != 2 or shapes[weight][1] % 3:
            nodes.append(node)  # a form MultiHeadAttention does not take (past state, attention bias, ...)
            continue
        hidden = shapes[weight][1] // 3
        qkv = f"{node.name}_qkv"
        sizes = numpy_helper.from_array(np.array([hidden] * 3, dtype=np.int64), f"{node.name}_qkv_sizes")
        model.graph.initializer.append(sizes)
        q, k, v = (f"{node.name}_{part}" for part in "qkv")
        nodes.append(helper.make_node("MatMul", [x, weight], [qkv], name=f"{node.name}/qkv/MatMul"))
        nodes.append(helper.make_node("Split", [qkv, sizes.name], [q, k, v], name=f"{node.name}/qkv/Split", axis=-1))
        nodes.append(helper.make_node("MultiHeadAttention", [q, k, v, bias] + ([mask] if mask else []),
                                      list(node.output), name=node.name, domain="com.microsoft", **attrs))
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return model


def matmul_roles(model) -> dict:
    """{MatMul node name: role} for the MatMuls with a constant 2-D weight, by where they sit in a BERT layer:
    "qkv" (feeds the attention through a Split), "out" (the attention's output projection), "up" (feeds the
    GELU), "down" (takes the GELU's output); "other" for anything else (the pooling MatMul has no weight)."""
    shapes = {init.name: tuple(init.dims) for init in model.graph.initializer}
    producer = {o: n for n in model.graph.node for o in n.output}
    consumers: dict = {}
    for n in model.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    attention = {"MultiHeadAttention", "Attention"}
    gelu = {"BiasGelu", "Gelu", "FastGelu"}
    roles = {}
    for node in model.graph.node:
        if node.op_type != "MatMul" or len(node.input) != 2 or len(shapes.get(node.input[1], ())) != 2:
            continue
        src = producer.get(node.input[0])
        users = consumers.get(node.output[0], [])
        if any(u.op_type == "Split" and any(c.op_type in attention for o in u.output for c in consumers.get(o, []))
               for u in users):
            roles[node.name] = "qkv"
        elif src is not None and src.op_type in attention:
            roles[node.name] = "out"
        elif any(u.op_type in gelu for u in users):
            roles[node.name] = "up"
        elif src is not None and src.op_type in gelu:
            roles[node.name] = "down"
        else:
            roles[node.name] = "other"
    return roles


def blockwise_int8(model, names, block_size: int):
    """The MatMuls `names` (constant weight [K, N]) as com.microsoft MatMulNBits, 8 bits: each run of block_size
    weights along K of one output column shares a float scale, symmetric (q = round(w / scale) + 128, scale =
    max|w| / 127, the default zero point 128); accuracy_level 4 lets onnxruntime quantize the input the same way,
    per row and block, and multiply in int8 (a per-tensor input scale loses the channels next to an outlier one).
    Plain numpy, so the bytes depend on the fp32 weights only."""
    from onnx import helper, numpy_helper

    names = set(names)
    inits = {init.name: init for init in model.graph.initializer}
    uses: dict = {}
    for n in model.graph.node:
        for i in n.input:
            uses[i] = uses.get(i, 0) + 1
    nodes = []
    for node in model.graph.node:
        if node.name not in names:
            nodes.append(node)
            continue
        w = inits[node.input[1]]
        W = numpy_helper.to_array(w).astype(np.float32)
        K, N = W.shape
        blocks = -(-K // block_size)
        padded = np.zeros((blocks * block_size, N), dtype=np.float32)
        padded[:K] = W
        grouped = padded.T.reshape(N, blocks, block_size)
        scale = (np.abs(grouped).max(axis=2) / np.float32(127)).astype(np.float32)
        safe = np.where(scale > 0, scale, np.float32(1))
        q = (np.clip(np.rint(grouped / safe[:, :, None]), -127, 127) + 128).astype(np.uint8)
        qw = numpy_helper.from_array(q, f"{w.name}_int8_blocks")
        qs = numpy_helper.from_array(scale, f"{w.name}_int8_scales")
        model.graph.initializer.extend([qw, qs])
        nodes.append(helper.make_node("MatMulNBits", [node.input[0], qw.name, qs.name], list(node.output),
                                      name=f"{node.name}_int8", domain="com.microsoft", K=K, N=N, bits=8,
                                      block_size=block_size, accuracy_level=4))
        uses[w.name] -= 1
        if uses[w.name] == 0:
            model.graph.initializer.remove(w)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    if names and not any(op.domain == "com.microsoft" for op in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    return model


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
        self.path = None if path is None else str(path)
        folder = Path(default_model_path() if path is None else path)
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
        self.session = ort.InferenceSession(str(self.onnx_path), options, providers=["CPUExecutionProvider"])
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
        prompts = check_prompts(prompts)
        texts = [p if len(p) <= self.max_chars else p[:self.max_chars] for p in prompts]
        if len(texts) == 1:
            ids = [self.tokenizer.encode(texts[0]).ids]
        else:
            ids = [e.ids for e in self.tokenizer.encode_batch(texts)]
        return [x if len(x) else [self.pad_id] for x in ids]

    def encode(self, prompts) -> np.ndarray:
        """Pooled encodings np.float32 [B, D] in the order of `prompts`."""
        prompts = check_prompts(prompts)
        ids = self.token_ids(prompts)
        if len(ids) == 1:  # the latency path: no sorting, no padding
            x = np.asarray(ids, dtype=np.int64)
            n = x.shape[1]
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
