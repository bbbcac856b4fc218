"""Rewrites of the exported encoder graph (an onnx ModelProto in, the same ModelProto changed in place and
returned). Each is either the same arithmetic in other ops (unfuse_attention, unfuse_skip_layernorm,
plain_attention, split_outliers, smooth_inputs: tested against the graph before it) or a stated quantization step
(blockwise_int8). onnx_encoder.export_onnx and quantize_onnx compose them into the recipe QUANTIZATION names.

Why rewrite fused ops back into plain ones: measured with onnxruntime 1.32 on this CPU (1 thread), its
SkipLayerNormalization kernel takes ~0.2 ms per [107, 384] call where Add + LayerNormalization take a fraction, and
the decomposed attention (MatMul, Softmax) beats MultiHeadAttention for the int8 graph's unfused Q, K, V; the
figures are in onnx_encoder's QUANTIZATION notes. A session must then be opened with the SkipLayerNormFusion
optimizer disabled (onnx_encoder.SESSION_DISABLED_OPTIMIZERS), or onnxruntime fuses Add + LayerNormalization back.
"""
from __future__ import annotations

import numpy as np

__all__ = ["unfuse_attention", "unfuse_skip_layernorm", "plain_attention", "matmul_roles", "split_outliers",
           "smooth_inputs", "smoothing_scales", "blockwise_int8", "drop_unused_initializers"]


def split_outliers(model, amax_by_node: dict, k: int):
    """Each MatMul named in `amax_by_node` (input x [..., K], constant weight W [K, N]) becomes
        Mul(x, m) @ W'  +  Gather(x, O) @ W[O]          (the sum is exactly x @ W in real arithmetic)
    with O the k input channels of largest calibrated max |x| (amax_by_node[name] [K]), m zero on O, W' = W with the
    rows O zeroed. The first product is the one quantized per tensor: without its outlier channels, one uint8 scale
    for the input resolves the others ~5x finer; the second stays fp32 (k x N weights). O is chosen on max |x|
    rounded to 1/16 octave (ties by channel order), so float noise in the calibration rarely changes it. Returns
    (model, names of the first products' MatMuls)."""
    from onnx import helper, numpy_helper

    main = []

    def rewrite(node, x, W):
        level = np.round(np.log2(np.maximum(np.asarray(amax_by_node[node.name], dtype=np.float64), 1e-30)) * 16)
        outliers = np.sort(np.lexsort((np.arange(W.shape[0]), -level))[:k]).astype(np.int64)
        keep = np.ones(W.shape[0], dtype=np.float32)
        keep[outliers] = 0
        inner = W.copy()
        inner[outliers] = 0
        pre = f"{node.name}_outliers"
        main.append(f"{node.name}/inner")
        return ([helper.make_node("Mul", [x, f"{pre}_keep"], [f"{pre}_x_inner"], name=f"{pre}/Mul"),
                 helper.make_node("MatMul", [f"{pre}_x_inner", f"{pre}_inner_weight"], [f"{pre}_y_inner"],
                                  name=f"{node.name}/inner"),
                 helper.make_node("Gather", [x, f"{pre}_index"], [f"{pre}_x"], name=f"{pre}/Gather", axis=-1),
                 helper.make_node("MatMul", [f"{pre}_x", f"{pre}_weight"], [f"{pre}_y"], name=f"{pre}/MatMul"),
                 helper.make_node("Add", [f"{pre}_y_inner", f"{pre}_y"], list(node.output), name=f"{pre}/Add")],
                [numpy_helper.from_array(keep, f"{pre}_keep"), numpy_helper.from_array(outliers, f"{pre}_index"),
                 numpy_helper.from_array(W[outliers], f"{pre}_weight"),
                 numpy_helper.from_array(inner, f"{pre}_inner_weight")])

    return _rewrite_weight_matmuls(model, amax_by_node, rewrite), main

def unfuse_attention(model):
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
    _set_nodes(model, nodes)
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

    def rewrite(node, x, W):
        K, N = W.shape
        blocks = -(-K // block_size)
        padded = np.zeros((blocks * block_size, N), dtype=np.float32)
        padded[:K] = W
        grouped = padded.T.reshape(N, blocks, block_size)
        scale = (np.abs(grouped).max(axis=2) / np.float32(127)).astype(np.float32)
        safe = np.where(scale > 0, scale, np.float32(1))
        q = (np.clip(np.rint(grouped / safe[:, :, None]), -127, 127) + 128).astype(np.uint8)
        qw = numpy_helper.from_array(q, f"{node.input[1]}_int8_blocks")
        qs = numpy_helper.from_array(scale, f"{node.input[1]}_int8_scales")
        return ([helper.make_node("MatMulNBits", [x, qw.name, qs.name], list(node.output), name=f"{node.name}_int8",
                                  domain="com.microsoft", K=K, N=N, bits=8, block_size=block_size,
                                  accuracy_level=4)], [qw, qs])

    names = set(names)
    model = _rewrite_weight_matmuls(model, names, rewrite)
    if names and not any(op.domain == "com.microsoft" for op in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    return model

def unfuse_skip_layernorm(model):
    """Each com.microsoft SkipLayerNormalization(x, skip, gamma, beta[, bias]) with one output becomes
        LayerNormalization(x + bias + skip, gamma, beta)          (the last axis, the same epsilon)
    The same arithmetic up to float rounding order."""
    from onnx import helper

    nodes = []
    for node in model.graph.node:
        if node.op_type != "SkipLayerNormalization" or len([o for o in node.output if o]) != 1:
            nodes.append(node)
            continue
        x, skip, gamma, beta = node.input[:4]
        bias = node.input[4] if len(node.input) > 4 else ""
        eps = [helper.get_attribute_value(a) for a in node.attribute if a.name == "epsilon"]
        if bias:
            nodes.append(helper.make_node("Add", [x, bias], [f"{node.name}_biased"], name=f"{node.name}/bias"))
            x = f"{node.name}_biased"
        nodes.append(helper.make_node("Add", [x, skip], [f"{node.name}_sum"], name=f"{node.name}/skip"))
        nodes.append(helper.make_node("LayerNormalization", [f"{node.name}_sum", gamma, beta], [node.output[0]],
                                      name=node.name, axis=-1, epsilon=eps[0] if eps else 1e-12))
    _set_nodes(model, nodes)
    return model


def plain_attention(model, mask_input: str = "attention_mask"):
    """Each com.microsoft MultiHeadAttention(q, k, v, bias[, key lengths]) ([b, T, D] each, bias [3D] constant,
    num_heads H, head size d = D / H) becomes standard ops:
        Q = (q + bq) / sqrt(d), K = k + bk, V = v + bv, each reshaped [b, T, H, d] and moved to [b, H, T, d]
        out = softmax(Q K^T + M) V   back to [b, T, D],   M[b, 1, 1, t] = -10000 where mask_input[b, t] == 0
    The key-padding mask comes from the graph input `mask_input` (0/1 [b, T]), which is what the key lengths the
    fused op takes were computed from (right padding), so padded keys get no weight either way. A graph without
    that input is returned unchanged."""
    from onnx import TensorProto, helper, numpy_helper

    inits = {i.name: i for i in model.graph.initializer}
    targets = [n for n in model.graph.node if n.op_type == "MultiHeadAttention" and n.domain == "com.microsoft"]
    ok = [n for n in targets if len(n.input) >= 4 and n.input[3] in inits
          and not set(a.name for a in n.attribute) - {"num_heads", "scale", "mask_filter_value"}
          and len([o for o in n.output if o]) == 1]
    if not ok or mask_input not in {i.name for i in model.graph.input}:
        return model  # nothing to rewrite, or no key-padding mask to rebuild the additive mask from

    def const(name, value):
        model.graph.initializer.append(numpy_helper.from_array(np.asarray(value), name))
        return name

    nodes = []
    mask = "plain_attention_mask"
    nodes += [helper.make_node("Cast", [mask_input], [f"{mask}_f"], to=TensorProto.FLOAT, name=f"{mask}/Cast"),
              helper.make_node("Sub", [f"{mask}_f", const(f"{mask}_one", np.float32(1))], [f"{mask}_off"],
                               name=f"{mask}/Sub"),
              helper.make_node("Mul", [f"{mask}_off", const(f"{mask}_big", np.float32(10000))], [f"{mask}_2d"],
                               name=f"{mask}/Mul"),
              helper.make_node("Unsqueeze", [f"{mask}_2d", const(f"{mask}_axes", np.array([1, 2], np.int64))],
                               [mask], name=f"{mask}/Unsqueeze")]
    ok_names = {n.name for n in ok}
    for node in model.graph.node:
        if node.name not in ok_names:
            nodes.append(node)
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        heads = int(attrs["num_heads"])
        bias = numpy_helper.to_array(inits[node.input[3]]).astype(np.float32)
        hidden = bias.shape[0] // 3
        size = hidden // heads
        scale = np.float32(attrs.get("scale", 1.0 / np.sqrt(size)) or 1.0 / np.sqrt(size))
        p = node.name
        shape = const(f"{p}_heads_shape", np.array([0, -1, heads, size], np.int64))
        moved = []
        for part, x, b, perm in (("q", node.input[0], bias[:hidden] * scale, [0, 2, 1, 3]),
                                 ("k", node.input[1], bias[hidden:2 * hidden], [0, 2, 3, 1]),
                                 ("v", node.input[2], bias[2 * hidden:], [0, 2, 1, 3])):
            if part == "q":
                nodes.append(helper.make_node("Mul", [x, const(f"{p}_scale", scale)], [f"{p}_q_scaled"],
                                              name=f"{p}/q/Mul"))
                x = f"{p}_q_scaled"
            nodes += [helper.make_node("Add", [x, const(f"{p}_{part}_bias", b.astype(np.float32))],
                                       [f"{p}_{part}_biased"], name=f"{p}/{part}/Add"),
                      helper.make_node("Reshape", [f"{p}_{part}_biased", shape], [f"{p}_{part}_heads"],
                                       name=f"{p}/{part}/Reshape"),
                      helper.make_node("Transpose", [f"{p}_{part}_heads"], [f"{p}_{part}_t"], perm=perm,
                                       name=f"{p}/{part}/Transpose")]
            moved.append(f"{p}_{part}_t")
        nodes += [helper.make_node("MatMul", moved[:2], [f"{p}_scores"], name=f"{p}/scores"),
                  helper.make_node("Add", [f"{p}_scores", mask], [f"{p}_masked"], name=f"{p}/mask"),
                  helper.make_node("Softmax", [f"{p}_masked"], [f"{p}_probs"], axis=-1, name=f"{p}/Softmax"),
                  helper.make_node("MatMul", [f"{p}_probs", moved[2]], [f"{p}_context"], name=f"{p}/context"),
                  helper.make_node("Transpose", [f"{p}_context"], [f"{p}_context_t"], perm=[0, 2, 1, 3],
                                   name=f"{p}/context/Transpose"),
                  helper.make_node("Reshape", [f"{p}_context_t", const(f"{p}_out_shape",
                                                                        np.array([0, -1, hidden], np.int64))],
                                   list(node.output), name=f"{p}/context/Reshape")]
    _set_nodes(model, nodes)
    return drop_unused_initializers(model)


def smoothing_scales(amax, weight, alpha: float) -> np.ndarray:
    """SmoothQuant's per-input-channel scales s [K] for x [.., K] @ W [K, N]:
        s_j = amax_j^alpha / max_n |W_jn|^(1 - alpha),  normalised to geometric mean 1
    so x / s has its large channels shrunk and W * s (rows) grown to match: the product is unchanged."""
    a = np.maximum(np.asarray(amax, dtype=np.float64), 1e-5)
    w = np.maximum(np.abs(np.asarray(weight, dtype=np.float64)).max(axis=1), 1e-5)
    s = a ** alpha / w ** (1.0 - alpha)
    return (s / np.exp(np.mean(np.log(s)))).astype(np.float32)


def smooth_inputs(model, amax_by_node: dict, alpha: float):
    """Each MatMul named in `amax_by_node` (input x [..., K], constant weight W [K, N]) becomes
        Mul(x, 1 / s) @ (s * W)          s = smoothing_scales(amax [K], W, alpha)
    (the same product in real arithmetic): the input's outlier channels, which would size the one uint8 step of a
    per-tensor input quantization, are scaled down and the weight rows that meet them scaled up, where per-output-
    channel weight quantization absorbs them. Returns (model, names of the MatMuls, now with the scaled weights)."""
    from onnx import helper, numpy_helper

    def rewrite(node, x, W):
        s = smoothing_scales(amax_by_node[node.name], W, alpha)
        pre = f"{node.name}_smooth"
        return ([helper.make_node("Mul", [x, f"{pre}_inv_scale"], [f"{pre}_x"], name=f"{pre}/Mul"),
                 helper.make_node("MatMul", [f"{pre}_x", f"{pre}_weight"], list(node.output), name=node.name)],
                [numpy_helper.from_array((1.0 / s).astype(np.float32), f"{pre}_inv_scale"),
                 numpy_helper.from_array((W * s[:, None]).astype(np.float32), f"{pre}_weight")])

    names = [n.name for n in model.graph.node if n.name in amax_by_node]
    return _rewrite_weight_matmuls(model, amax_by_node, rewrite), names

def _rewrite_weight_matmuls(model, names, rewrite):
    """Each node named in `names` (a MatMul x @ W with W a constant initializer) becomes the nodes
    rewrite(node, x, W float32 [K, N]) returns, as (nodes, new initializers), in its place; initializers no node
    reads any more (the replaced weights) are dropped."""
    from onnx import numpy_helper

    inits = {init.name: init for init in model.graph.initializer}
    nodes = []
    for node in model.graph.node:
        if node.name not in names:
            nodes.append(node)
            continue
        x, w = node.input
        replaced, added = rewrite(node, x, numpy_helper.to_array(inits[w]).astype(np.float32))
        nodes += replaced
        model.graph.initializer.extend(added)
    _set_nodes(model, nodes)
    return drop_unused_initializers(model)


def _set_nodes(model, nodes) -> None:
    del model.graph.node[:]
    model.graph.node.extend(nodes)


def drop_unused_initializers(model):
    """Remove initializers no node reads (and that are not graph outputs)."""
    used = {i for n in model.graph.node for i in n.input} | {o.name for o in model.graph.output}
    keep = [init for init in model.graph.initializer if init.name in used]
    if len(keep) != len(model.graph.initializer):
        del model.graph.initializer[:]
        model.graph.initializer.extend(keep)
    return model
