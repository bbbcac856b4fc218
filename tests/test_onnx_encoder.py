"""The ONNX encoder backends against the torch Encoder (the reference): token ids equal, fp32 pooled encodings
within float tolerance, int8 close in cosine; export and quantization reproducible and atomic; the Router and the
saved config choose the backend; a clear error without onnxruntime."""
from __future__ import annotations

import hashlib
import json
import shutil
import sys

import numpy as np
import pytest

from tests._minilm import PROMPTS, shared_encoder
from tests._onnx import onnx_cache_dir, onnx_encoder

pytest.importorskip("onnxruntime")

CALIBRATION_DIGEST = "d211b6d690380a5f"  # sha256 of the calibration prompts, NUL-joined
MORE = PROMPTS + ["Which planet is known as the Red Planet?\nA. Venus\nB. Mars\nC. Jupiter",
                  "naïve café — 東京 🚀", "word " * 400, "   leading and trailing   ", "x"]


def _md5(path) -> str:
    return hashlib.md5(open(path, "rb").read()).hexdigest()


def test_token_ids_equal_the_torch_encoders():
    from routoo_fast.data import load_default

    prompts = MORE + load_default().prompts[:200]
    assert onnx_encoder(False).token_ids(prompts) == shared_encoder().token_ids(prompts)


def test_token_ids_respect_max_chars():
    enc = onnx_encoder(False)
    long = "a" * (enc.max_chars + 100)
    assert enc.token_ids([long]) == shared_encoder().token_ids([long])


@pytest.mark.parametrize("batch", [1, 2, 7])
def test_fp32_pooled_matches_torch(batch):
    prompts = (MORE * 2)[:batch]
    got = onnx_encoder(False).encode(prompts)
    want = shared_encoder().encode(prompts)
    assert got.shape == want.shape and got.dtype == np.float32
    np.testing.assert_allclose(got, want, atol=2e-5, rtol=1e-4)


def test_fp32_batched_equals_one_at_a_time():
    enc = onnx_encoder(False)
    batched = enc.encode(MORE)
    single = np.stack([enc.encode([p])[0] for p in MORE])
    np.testing.assert_allclose(batched, single, atol=2e-5, rtol=1e-4)


def test_int8_encoding_does_not_depend_on_the_batch():
    enc = onnx_encoder(True)
    batched = enc.encode(MORE)
    single = np.stack([enc.encode([p])[0] for p in MORE])
    np.testing.assert_array_equal(batched, single)  # each prompt runs alone: the same operations, the same order
    np.testing.assert_array_equal(enc.encode(MORE[::-1]), batched[::-1])


def test_int8_pooled_close_to_fp32():
    got = onnx_encoder(True).encode(MORE)
    want = shared_encoder().encode(MORE)
    cos = (got * want).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)
    assert cos.min() > 0.98, cos
    assert not np.allclose(got, want, atol=1e-4)  # it is a different graph: the test would notice an fp32 one


def test_last_pooling_matches_torch():
    from routoo_fast.encoder import Encoder
    from routoo_fast.onnx_encoder import OnnxEncoder

    ref = Encoder(max_length=32, batch_size=3, num_threads=1, pooling="last", device="cpu")
    enc = OnnxEncoder(max_length=32, batch_size=3, num_threads=1, pooling="last", cache_dir=onnx_cache_dir())
    np.testing.assert_allclose(enc.encode(MORE), ref.encode(MORE), atol=2e-5, rtol=1e-4)


def test_identity_matches_torch_encoder():
    enc, ref = onnx_encoder(False), shared_encoder()
    assert enc.encoder_id == ref.encoder_id
    assert enc.spec() == {**ref.spec(), "batch_size": enc.batch_size}


def test_export_is_reproducible_and_atomic(tmp_path):
    from routoo_fast.encoder import default_model_path
    from routoo_fast.onnx_encoder import ensure_onnx, onnx_paths

    fp32, int8 = onnx_paths(default_model_path(), onnx_cache_dir())
    again_fp32, again_int8 = onnx_paths(default_model_path(), tmp_path)
    assert ensure_onnx(default_model_path(), quantized=True, cache_dir=tmp_path) == again_int8
    assert _md5(again_fp32) == _md5(fp32) and _md5(again_int8) == _md5(int8)
    leftovers = [p.name for p in again_fp32.parent.iterdir() if p.name not in (fp32.name, int8.name)]
    assert leftovers == []  # temporary files renamed or removed
    # keyed by the weights' hash: another weights file is another folder
    assert fp32.parent.name.startswith(hashlib.sha256(b"").hexdigest()[:4]) is False


def test_cache_key_follows_the_recipe_version(monkeypatch, tmp_path):
    """A graph written by an older export or quantization recipe is never read: the version is in the key."""
    from routoo_fast import onnx_encoder as mod
    from routoo_fast.encoder import default_model_path

    fp32, int8 = mod.onnx_paths(default_model_path(), tmp_path)
    assert f"-v{mod.EXPORT_VERSION}-" in fp32.parent.name and fp32.parent == int8.parent
    monkeypatch.setattr(mod, "EXPORT_VERSION", mod.EXPORT_VERSION - 1)
    assert mod.onnx_paths(default_model_path(), tmp_path)[1] != int8


def _graph(path):
    import onnx

    return onnx.load(str(path))


def test_int8_graph_quantizes_every_weight_matmul():
    """The recipe as QUANTIZATION states it: the 24 weight MatMuls int8 per tensor; QKV and up-projections smoothed
    (one Mul each, no fp32 weight MatMul), the down-projections with OUTLIER_CHANNELS input channels split off into
    an fp32 MatMul; attention in plain ops, LayerNorms unfused."""
    from collections import Counter

    from onnx import numpy_helper

    from routoo_fast.encoder import default_model_path
    from routoo_fast.onnx_encoder import OUTLIER_CHANNELS, QUANTIZATION, onnx_paths
    from routoo_fast.onnx_graph import matmul_roles, unfuse_attention

    fp32, int8 = onnx_paths(default_model_path(), onnx_cache_dir())
    roles = Counter(matmul_roles(unfuse_attention(_graph(fp32))).values())
    assert roles == {"qkv": 6, "out": 6, "up": 6, "down": 6}
    model = _graph(int8)
    ops = Counter(n.op_type for n in model.graph.node)
    assert ops["MatMulInteger"] + ops["DynamicQuantizeMatMul"] == 24 and ops["MatMulNBits"] == 0
    assert ops["Attention"] == ops["MultiHeadAttention"] == ops["SkipLayerNormalization"] == 0
    assert ops["LayerNormalization"] == 12 and ops["Softmax"] == 6
    split = sum(roles[r] for r in QUANTIZATION["per tensor, outliers fp32"])
    smoothed = sum(roles[r] for r in QUANTIZATION["smoothed, per tensor"])
    assert split == 6 and smoothed == 12
    assert sum(n.op_type == "Mul" and n.name.endswith("_smooth/Mul") for n in model.graph.node) == smoothed
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    fp32_weights = [inits[n.input[1]].shape for n in model.graph.node if n.op_type == "MatMul" and n.input[1] in inits]
    assert len(fp32_weights) == split and all(shape[0] == OUTLIER_CHANNELS for shape in fp32_weights)
    assert ops["MatMul"] == split + 2 * 6 + 1  # + the attention's two products per layer + the pooling


def test_fp32_graph_has_plain_layernorms_and_sessions_keep_them(tmp_path):
    """The exported fp32 graph carries Add + LayerNormalization, not SkipLayerNormalization; a session opened with
    SESSION_DISABLED_OPTIMIZERS keeps them so, while a default session would fuse them back (so the option's
    name is the one onnxruntime knows)."""
    from collections import Counter

    import onnxruntime as ort

    from routoo_fast.encoder import default_model_path
    from routoo_fast.onnx_encoder import SESSION_DISABLED_OPTIMIZERS, onnx_paths

    fp32 = onnx_paths(default_model_path(), onnx_cache_dir())[0]
    ops = Counter(n.op_type for n in _graph(fp32).graph.node)
    assert ops["SkipLayerNormalization"] == 0 and ops["LayerNormalization"] == 12 and ops["Attention"] == 6

    def optimized(disabled):
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.optimized_model_filepath = str(tmp_path / f"opt{len(disabled)}.onnx")
        ort.InferenceSession(str(fp32), options, providers=["CPUExecutionProvider"], disabled_optimizers=disabled)
        return Counter(n.op_type for n in _graph(options.optimized_model_filepath).graph.node)

    assert optimized(SESSION_DISABLED_OPTIMIZERS)["SkipLayerNormalization"] == 0
    assert optimized([])["SkipLayerNormalization"] == 12


def _one_op_model(nodes, inputs, outputs, inits, ms_domain=False):
    from onnx import helper

    graph = helper.make_graph(nodes, "g", inputs, outputs, inits)
    opsets = [helper.make_opsetid("", 17)] + ([helper.make_opsetid("com.microsoft", 1)] if ms_domain else [])
    return helper.make_model(graph, opset_imports=opsets)


def test_unfused_skip_layernorm_is_the_same_arithmetic():
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from routoo_fast.onnx_graph import unfuse_skip_layernorm

    rng = np.random.default_rng(2)
    D = 16
    inits = [numpy_helper.from_array(rng.standard_normal(D).astype(np.float32), n) for n in ("g", "b", "bias")]
    node = helper.make_node("SkipLayerNormalization", ["x", "s", "g", "b", "bias"], ["y"], name="sln",
                            domain="com.microsoft", epsilon=1e-12)
    io = [helper.make_tensor_value_info(n, TensorProto.FLOAT, ["b", "t", D]) for n in ("x", "s", "y")]
    model = _one_op_model([node], io[:2], io[2:], inits, ms_domain=True)
    feed = {"x": rng.standard_normal((2, 5, D)).astype(np.float32) * 3,
            "s": rng.standard_normal((2, 5, D)).astype(np.float32)}
    want = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feed)[0]
    plain = unfuse_skip_layernorm(model)
    assert [n.op_type for n in plain.graph.node] == ["Add", "Add", "LayerNormalization"]
    got = ort.InferenceSession(plain.SerializeToString(), providers=["CPUExecutionProvider"],
                               disabled_optimizers=["SkipLayerNormFusion"]).run(None, feed)[0]
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)


def test_plain_attention_computes_what_multihead_attention_does(tmp_path):
    """The fp32 graph with its attention split into QKV MatMul + MultiHeadAttention, and then written in plain ops,
    gives the same pooled encodings within float tolerance, padded batches included."""
    import onnx
    import onnxruntime as ort

    from routoo_fast.encoder import default_model_path
    from routoo_fast.onnx_encoder import SESSION_DISABLED_OPTIMIZERS, onnx_paths
    from routoo_fast.onnx_graph import plain_attention, unfuse_attention

    fp32 = onnx_paths(default_model_path(), onnx_cache_dir())[0]
    mha = unfuse_attention(_graph(fp32))
    onnx.save(mha, str(tmp_path / "mha.onnx"))
    plain = plain_attention(_graph(tmp_path / "mha.onnx"))
    assert not any(n.op_type == "MultiHeadAttention" for n in plain.graph.node)
    untouched = plain_attention(_graph(tmp_path / "mha.onnx"), mask_input="no_such_input")
    assert sum(n.op_type == "MultiHeadAttention" for n in untouched.graph.node) == 6  # no mask input: left alone
    onnx.save(plain, str(tmp_path / "plain.onnx"))
    feed = _padded_feed(MORE[:5])
    want, got = (ort.InferenceSession(str(tmp_path / f), providers=["CPUExecutionProvider"],
                                      disabled_optimizers=SESSION_DISABLED_OPTIMIZERS).run(None, feed)[0]
                 for f in ("mha.onnx", "plain.onnx"))
    np.testing.assert_allclose(got, want, atol=2e-5, rtol=1e-4)


def _padded_feed(prompts):
    enc = onnx_encoder(False)
    ids = enc.token_ids(prompts)
    width = max(len(x) for x in ids)
    x = np.full((len(ids), width), enc.pad_id, dtype=np.int64)
    mask = np.zeros((len(ids), width), dtype=np.int64)
    for i, row in enumerate(ids):
        x[i, :len(row)], mask[i, :len(row)] = row, 1
    assert not mask.all()  # some rows padded
    return {"input_ids": x, "attention_mask": mask, "pool_mask": mask.astype(np.float32)}


def test_smoothing_is_the_same_product():
    """x @ W = Mul(x, 1/s) @ (s W) in fp32; the large input channels are the ones scaled down."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from routoo_fast.onnx_graph import smooth_inputs, smoothing_scales

    rng = np.random.default_rng(3)
    K, N = 32, 12
    W = rng.standard_normal((K, N)).astype(np.float32)
    amax = np.ones(K)
    amax[[4, 9]] = [30.0, 12.0]
    model = _one_op_model([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")],
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", K])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", N])],
                          [numpy_helper.from_array(W, "w")])
    smoothed, names = smooth_inputs(model, {"mm": amax}, 0.6)
    assert names == ["mm"] and [n.op_type for n in smoothed.graph.node] == ["Mul", "MatMul"]
    assert "w" not in {i.name for i in smoothed.graph.initializer}
    inv = numpy_helper.to_array([i for i in smoothed.graph.initializer if i.name.endswith("inv_scale")][0])
    assert inv[4] < inv[9] < np.median(inv)  # the outliers shrink most
    x = rng.standard_normal((6, K)).astype(np.float32) * amax.astype(np.float32)
    got = ort.InferenceSession(smoothed.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(got, x @ W, rtol=1e-4, atol=1e-4)
    s = smoothing_scales(amax, W, 0.6)
    assert abs(float(np.mean(np.log(s)))) < 1e-5 and s.dtype == np.float32


def test_outlier_split_is_the_same_product():
    """x @ W = Mul(x, keep) @ W' + Gather(x, O) @ W[O] in fp32 (nothing quantized yet), O the largest channels."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from routoo_fast.onnx_graph import split_outliers

    rng = np.random.default_rng(1)
    K, N, k = 48, 20, 4
    W = rng.standard_normal((K, N)).astype(np.float32)
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", "t", K])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", "t", N])],
                              [numpy_helper.from_array(W, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    amax = np.ones(K)
    amax[[5, 17, 30, 31]] = [40.0, 12.0, 9.0, 25.0]
    amax[7] = 8.0  # the fifth largest: stays in the quantized product
    split, main = split_outliers(model, {"mm": amax}, k)
    assert main == ["mm/inner"]
    inits = {i.name: numpy_helper.to_array(i) for i in split.graph.initializer}
    assert inits["mm_outliers_index"].tolist() == [5, 17, 30, 31] and "w" not in inits
    x = rng.standard_normal((2, 3, K)).astype(np.float32)
    x[..., 5] *= 40
    got = ort.InferenceSession(split.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(got, x @ W, rtol=1e-5, atol=1e-4)


def test_calibration_prompts_are_pinned():
    """The int8 graph depends on the calibration prompts: a change to them is a recipe change (bump
    EXPORT_VERSION, then this digest). They are train-split prompts, none held out."""
    from routoo_fast.data import load_default
    from routoo_fast.data.splits import split_by_hash, split_fractions
    from routoo_fast.onnx_encoder import CALIBRATION_PROMPTS, calibration_prompts

    prompts = calibration_prompts()
    assert len(prompts) == CALIBRATION_PROMPTS
    assert set(split_by_hash(prompts, split_fractions())) == {"train"}
    assert len(set(prompts) & set(load_default().prompts)) == CALIBRATION_PROMPTS
    digest = hashlib.sha256("\0".join(prompts).encode()).hexdigest()[:16]
    assert digest == CALIBRATION_DIGEST, digest


def test_unfused_attention_computes_what_the_fused_one_does(tmp_path):
    """Attention -> QKV MatMul + Split + MultiHeadAttention is the same arithmetic: the fp32 graph split apart gives
    the fp32 graph's pooled encodings within float tolerance, padded batches included."""
    import onnx
    import onnxruntime as ort

    from routoo_fast.encoder import default_model_path
    from routoo_fast.onnx_encoder import SESSION_DISABLED_OPTIMIZERS, onnx_paths
    from routoo_fast.onnx_graph import unfuse_attention

    fp32 = onnx_paths(default_model_path(), onnx_cache_dir())[0]
    split = tmp_path / "split.onnx"
    onnx.save(unfuse_attention(_graph(fp32)), str(split))
    feed = _padded_feed(MORE[:4])
    want, got = (ort.InferenceSession(str(f), providers=["CPUExecutionProvider"],
                                      disabled_optimizers=SESSION_DISABLED_OPTIMIZERS).run(None, feed)[0]
                 for f in (fp32, split))
    np.testing.assert_allclose(got, want, atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("K, N, block", [(384, 96, 128), (200, 40, 128), (64, 8, 32)])
def test_blockwise_int8_is_a_close_matmul(K, N, block):
    """A lone MatMul made MatMulNBits: its weights come back within half a block's step, its product is the fp32
    one within int8 error (K not a multiple of the block pads the last block)."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from routoo_fast.onnx_graph import blockwise_int8

    rng = np.random.default_rng(K)
    W = rng.standard_normal((K, N)).astype(np.float32)
    W[3, :] *= 20  # an outlier row: only its own blocks lose resolution
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", K])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["b", N])],
                              [numpy_helper.from_array(W, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17),
                                                    helper.make_opsetid("com.microsoft", 1)])
    q = blockwise_int8(model, ["mm"], block)
    assert [n.op_type for n in q.graph.node] == ["MatMulNBits"] and len(q.graph.initializer) == 2
    inits = {i.name: numpy_helper.to_array(i) for i in q.graph.initializer}
    blocks, scales = inits["w_int8_blocks"], inits["w_int8_scales"]
    nb = -(-K // block)
    assert blocks.shape == (N, nb, block) and blocks.dtype == np.uint8 and scales.shape == (N, nb)
    back = ((blocks.astype(np.float32) - 128) * scales[:, :, None]).reshape(N, nb * block)[:, :K].T
    step = np.repeat(scales.T, block, axis=0)[:K]
    assert np.all(np.abs(back - W) <= step / 2 + 1e-6)
    x = rng.standard_normal((5, K)).astype(np.float32)
    got = ort.InferenceSession(q.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    want = x @ W
    rms = lambda a: float(np.sqrt(np.mean(np.square(a))))  # noqa: E731
    assert rms(got - want) <= 0.02 * rms(want), (rms(got - want), rms(want))
    # the error is int8 rounding, not a wrong layout: a transposed or shifted weight would be off by ~rms(want)
    assert rms(got - x @ back) <= 0.01 * rms(want)


def test_a_graph_without_bert_fusions_is_quantized_blockwise(tmp_path):
    """Another model type (no fused attention, no GELU found): every weight MatMul is still int8, blockwise."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from routoo_fast.onnx_encoder import quantize_onnx

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((16, 32)).astype(np.float32), "w1"),
             numpy_helper.from_array(rng.standard_normal((32, 8)).astype(np.float32), "w2")]
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], name="a"), helper.make_node("Relu", ["h"], ["r"]),
             helper.make_node("MatMul", ["r", "w2"], ["y"], name="b")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 16])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 8])], inits)
    src = tmp_path / "fp32.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(src))
    out = quantize_onnx(src, tmp_path / "int8.onnx")
    assert [n.op_type for n in onnx.load(str(out)).graph.node] == ["MatMulNBits", "Relu", "MatMulNBits"]
    import onnxruntime as ort

    x = rng.standard_normal((3, 16)).astype(np.float32)
    want = np.maximum(x @ numpy_helper.to_array(inits[0]), 0) @ numpy_helper.to_array(inits[1])
    got = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    assert np.sqrt(np.mean((got - want) ** 2)) <= 0.03 * np.sqrt(np.mean(want ** 2))


def test_cache_key_follows_the_weights(tmp_path):
    from routoo_fast.encoder import default_model_path
    from routoo_fast.onnx_encoder import onnx_paths

    copy = tmp_path / "model"
    shutil.copytree(default_model_path(), copy)
    assert onnx_paths(copy, tmp_path)[0] == onnx_paths(default_model_path(), tmp_path)[0]
    weights = copy / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 1
    weights.write_bytes(bytes(data))
    assert onnx_paths(copy, tmp_path)[0] != onnx_paths(default_model_path(), tmp_path)[0]


def test_bad_arguments_are_clear_errors():
    from routoo_fast.onnx_encoder import OnnxEncoder, check_encoder_backend

    with pytest.raises(ValueError, match="encoder_backend must be one of"):
        check_encoder_backend("onnx_int8")
    with pytest.raises(ValueError, match="run on the CPU"):
        OnnxEncoder(device="cuda", cache_dir=onnx_cache_dir())
    with pytest.raises(ValueError, match="max_length"):
        OnnxEncoder(max_length=100000, cache_dir=onnx_cache_dir())
    with pytest.raises(TypeError, match="list of strings"):
        onnx_encoder(False).encode("one string")
    from routoo_fast.encoder import InvalidPrompt

    with pytest.raises(InvalidPrompt):
        onnx_encoder(False).encode(["bad \ud800 text"])


def test_missing_onnxruntime_names_the_extra(monkeypatch):
    from routoo_fast import onnx_encoder as mod
    from routoo_fast.router import Router

    cache = onnx_cache_dir()
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime now raises ImportError
    with pytest.raises(ImportError, match=r"routoo_fast\[onnx\]"):
        mod.OnnxEncoder(cache_dir=cache)
    with pytest.raises(ImportError, match=r"routoo_fast\[onnx\]"):
        Router.from_pretrained("default", encoder_backend="onnx-int8")
    assert Router.from_pretrained("default", max_length=32, num_threads=1).encoder_backend == "torch"


# ---- Router and saved config ---------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def onnx_env(tmp_path_factory):
    import os

    old = os.environ.get("ROUTOO_CACHE_DIR")
    os.environ["ROUTOO_CACHE_DIR"] = onnx_cache_dir()
    yield
    if old is None:
        os.environ.pop("ROUTOO_CACHE_DIR", None)
    else:
        os.environ["ROUTOO_CACHE_DIR"] = old


# onnx: float tolerance everywhere; onnx-int8 on these odd prompts (one letter, one word 400 times): small on average,
# bounded at worst (the decision-level gate on real held-out prompts is tests/test_onnx_parity.py)
@pytest.mark.parametrize("kind, mean_tol, max_tol", [("onnx", 2e-6, 2e-5), ("onnx-int8", 0.02, 0.1)])
def test_router_backends_predict_like_torch(onnx_env, kind, mean_tol, max_tol):
    from routoo_fast.router import Router

    torch_router = Router.from_pretrained("default", max_length=32, num_threads=1, device="cpu")
    router = Router.from_pretrained("default", max_length=32, num_threads=1, encoder_backend=kind)
    assert router.encoder_backend == kind and torch_router.encoder_backend == "torch"
    want = torch_router.predict(MORE)
    got = router.predict(MORE)
    assert got.shape == want.shape and got.dtype == np.float32
    assert np.abs(got - want).mean() <= mean_tol and np.abs(got - want).max() <= max_tol
    np.testing.assert_allclose(router.predict(MORE[:1]), got[:1], atol=2e-5)
    assert [d.model for d in router.route(MORE[:3], "lambda=100")] == \
        [d.model for d in router.decide(MORE[:3], got[:3], "lambda=100")]


def test_saved_router_records_the_backend(onnx_env, tmp_path):
    from routoo_fast.router import DEFAULT_ROUTER, Router
    from routoo_fast.saved import load_router

    old = load_router(DEFAULT_ROUTER)
    config = dict(old.config)
    config.pop("encoder_backend", None)
    folder = tmp_path / "r"
    shutil.copytree(DEFAULT_ROUTER, folder)
    (folder / "config.json").write_text(json.dumps(config))
    assert load_router(folder).encoder_backend == "torch"  # routers saved before the field load as torch
    config["encoder_backend"] = "onnx"
    (folder / "config.json").write_text(json.dumps(config))
    assert Router.from_pretrained(folder, max_length=32, num_threads=1).encoder_backend == "onnx"
    assert Router.from_pretrained(folder, max_length=32, num_threads=1,
                                  encoder_backend="torch").encoder_backend == "torch"
    config["encoder_backend"] = "tensorrt"
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="encoder_backend must be one of"):
        load_router(folder)


def test_save_router_writes_the_backend(tmp_path):
    from routoo_fast.router import DEFAULT_ROUTER
    from routoo_fast.saved import load_router, save_router

    old = load_router(DEFAULT_ROUTER)
    save_router(tmp_path / "r", old.head, old.model_names, old.config["encoder"], old.cost_model,
                encoder_backend="onnx-int8")
    assert load_router(tmp_path / "r").encoder_backend == "onnx-int8"
    with pytest.raises(ValueError, match="encoder_backend"):
        save_router(tmp_path / "s", old.head, old.model_names, old.config["encoder"], old.cost_model,
                    encoder_backend="int8")


def test_triton_with_an_onnx_encoder_is_refused(onnx_env):
    from routoo_fast.router import Router

    with pytest.raises(ValueError, match="inside its graph"):
        Router.from_pretrained("default", backend="triton", encoder_backend="onnx")


def test_cli_route_takes_the_encoder_backend(onnx_env, capsys):
    from routoo_fast import cli

    outputs = {}
    for kind in ("torch", "onnx"):
        assert cli.main(["route", "What is 7 + 5?", "--max-length", "32", "--threads", "1", "--json", "--scores",
                         "--encoder-backend", kind]) == 0
        outputs[kind] = json.loads(capsys.readouterr().out)
    assert outputs["onnx"]["model"] == outputs["torch"]["model"]
    for m, v in outputs["torch"]["scores"].items():
        assert abs(outputs["onnx"]["scores"][m]["quality"] - v["quality"]) < 2e-5
    with pytest.raises(SystemExit):  # argparse refuses an unknown backend by name
        cli.main(["route", "hi", "--encoder-backend", "tensorrt"])
    assert "invalid choice" in capsys.readouterr().err
