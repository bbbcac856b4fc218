"""Fused masked-mean pool + scoring head + sigmoid: one Triton launch, one program per batch row.

    pooled[i] = sum_t m[i,t] h[i,t,:] / max(sum_t m[i,t], 1)     [B, D]   (0 for a row with no real tokens)
    z         = act(W1 pooled + b1)                              [B, H]   (z = pooled when there is no W1)
    Q         = sigmoid(E z + b)                                 [B, N]   float32 out

Inputs: hidden fp32/fp16/bf16, padded [B, T, D] + mask [B, T] (nonzero = real token) or ragged
[total_tokens, D] + cu_seqlens [B + 1]; weights W1 [H, D], b1 [H], E [N, H], b [N] (any float dtype).
All accumulation is fp32. Because W1 is linear, the program walks D in chunks: each chunk of token sums is pooled
and immediately folded into z (or straight into the logits when there is no W1), so neither the pooled vector
nor the hidden states ever go back to memory: hidden is read exactly once. The op is memory-bound
(about 0.5 FLOP/byte), so the one read of hidden is what the kernel is measured against.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

_ACT_CODES = {"identity": 0, "relu": 1, "gelu": 2, "tanh": 3}
# Block sizes: a weights tile [BLOCK_W, BLOCK_D] holds at most _TILE elements; with 8 warps this compiles for sm_90
# without register spills at H = 64 (ptxas -v: ~120-150 registers) and with small spills at the H = 1024 limit.
_TILE = 4096
_NUM_WARPS = 8
MAX_WIDTH = 1024  # largest H (or N when there is no W1): z (or the logits) stays in registers for the whole row


@triton.jit
def _activation(x, ACT: tl.constexpr):
    if ACT == 1:
        x = tl.maximum(x, 0.0)
    elif ACT == 2:
        x = 0.5 * x * (1.0 + tl.math.erf(x * 0.7071067811865476))
    elif ACT == 3:
        x = 2.0 / (1.0 + tl.exp(-2.0 * x)) - 1.0  # tanh, written with exp for the interpreter and every backend
    return x


@triton.jit(do_not_specialize=["T"])  # T == 1 must stay a runtime int: it is the token count when there is no mask
def _pool_score_fwd_kernel(
    h_ptr, mask_ptr, cu_ptr, w1_ptr, b1_ptr, e_ptr, b_ptr, out_ptr,
    T, D, H, N,
    stride_hb, stride_ht, stride_hd,
    stride_mb, stride_mt,
    stride_w1h, stride_w1d,
    stride_en, stride_eh,
    stride_ob, stride_on,
    RAGGED: tl.constexpr, HAS_MASK: tl.constexpr, HAS_W1: tl.constexpr, ACT: tl.constexpr,
    BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_W: tl.constexpr, BLOCK_N: tl.constexpr,
):
    row = tl.program_id(0).to(tl.int64)
    offs_t = tl.arange(0, BLOCK_T)
    offs_d = tl.arange(0, BLOCK_D)
    offs_w = tl.arange(0, BLOCK_W)  # over H (HAS_W1) or over N (no W1: logits accumulate directly)

    # this row's tokens: [start, start + length)
    if RAGGED:
        start = tl.load(cu_ptr + row).to(tl.int64)
        length = tl.load(cu_ptr + row + 1).to(tl.int64) - start
        h_row = h_ptr + start * stride_ht
    else:
        length = T
        h_row = h_ptr + row * stride_hb

    # token count (mask sum), fp32
    if HAS_MASK:
        count_vec = tl.zeros([BLOCK_T], dtype=tl.float32)
        for t0 in range(0, length, BLOCK_T):
            t = t0 + offs_t
            m = tl.load(mask_ptr + row * stride_mb + t * stride_mt, mask=t < length, other=0)
            count_vec += tl.where(m != 0, 1.0, 0.0)
        count = tl.sum(count_vec, axis=0)
    else:
        count = length.to(tl.float32)
    inv_count = 1.0 / tl.maximum(count, 1.0)

    # pool D-chunk by D-chunk and fold each chunk into acc = W1 pooled (or E pooled when there is no W1)
    acc = tl.zeros([BLOCK_W], dtype=tl.float32)
    for d0 in range(0, D, BLOCK_D):
        d = d0 + offs_d
        d_ok = d < D
        sums = tl.zeros([BLOCK_D], dtype=tl.float32)
        for t0 in range(0, length, BLOCK_T):
            t = t0 + offs_t
            t_ok = t < length
            ptrs = h_row + t[:, None] * stride_ht + d[None, :] * stride_hd
            x = tl.load(ptrs, mask=t_ok[:, None] & d_ok[None, :], other=0.0).to(tl.float32)
            if HAS_MASK:
                m = tl.load(mask_ptr + row * stride_mb + t * stride_mt, mask=t_ok, other=0)
                x = tl.where((m != 0)[:, None], x, 0.0)
            sums += tl.sum(x, axis=0)
        pooled = sums * inv_count
        if HAS_W1:
            w_ptrs = w1_ptr + offs_w[:, None] * stride_w1h + d[None, :] * stride_w1d
            w_ok = (offs_w < H)[:, None] & d_ok[None, :]
        else:
            w_ptrs = e_ptr + offs_w[:, None] * stride_en + d[None, :] * stride_eh
            w_ok = (offs_w < N)[:, None] & d_ok[None, :]
        w = tl.load(w_ptrs, mask=w_ok, other=0.0).to(tl.float32)
        acc += tl.sum(w * pooled[None, :], axis=1)

    if HAS_W1:
        z = acc + tl.load(b1_ptr + offs_w, mask=offs_w < H, other=0.0).to(tl.float32)
        z = _activation(z, ACT)
        z = tl.where(offs_w < H, z, 0.0)
        offs_n = tl.arange(0, BLOCK_N)
        for n0 in range(0, N, BLOCK_N):
            n = n0 + offs_n
            n_ok = n < N
            e = tl.load(e_ptr + n[:, None] * stride_en + offs_w[None, :] * stride_eh,
                        mask=n_ok[:, None] & (offs_w < H)[None, :], other=0.0).to(tl.float32)
            logits = tl.sum(e * z[None, :], axis=1) + tl.load(b_ptr + n, mask=n_ok, other=0.0).to(tl.float32)
            tl.store(out_ptr + row * stride_ob + n * stride_on, tl.sigmoid(logits), mask=n_ok)
    else:
        n_ok = offs_w < N
        logits = acc + tl.load(b_ptr + offs_w, mask=n_ok, other=0.0).to(tl.float32)
        tl.store(out_ptr + row * stride_ob + offs_w * stride_on, tl.sigmoid(logits), mask=n_ok)


def pool_score_triton(hidden, mask=None, *, cu_seqlens=None, W1=None, b1=None, E, b, act="gelu"):
    """Host launcher: validate, pick block sizes, allocate out [B, N] float32, launch one program per row.

    Expects inputs already checked by routoo_fast.pool_score.check_inputs (shapes, devices, dtypes); checks here
    only what is specific to the kernel.
    """
    if act not in _ACT_CODES:
        raise ValueError(f"act must be one of {tuple(_ACT_CODES)}, got {act!r}")
    ragged = cu_seqlens is not None
    if ragged:
        batch, seq = cu_seqlens.numel() - 1, 0
        stride_hb = 0
        stride_ht, stride_hd = hidden.stride()
    else:
        batch, seq = hidden.shape[0], hidden.shape[1]
        stride_hb, stride_ht, stride_hd = hidden.stride()
    d_in = hidden.shape[-1]
    n_models = E.shape[0]
    has_w1 = W1 is not None
    width = W1.shape[0] if has_w1 else n_models
    if width > MAX_WIDTH:
        what = "hidden size H" if has_w1 else "number of models N (no hidden layer)"
        raise ValueError(f"the Triton pool_score kernel supports {what} <= {MAX_WIDTH}, got {width}; "
                         "use backend='cpu'")
    out = torch.empty(batch, n_models, dtype=torch.float32, device=hidden.device)
    if batch == 0:
        return out

    has_mask = mask is not None and not ragged
    if has_mask and mask.dtype == torch.bool:
        mask = mask.view(torch.uint8)  # same bytes; triton loads bool pointers awkwardly
    config = launch_config(d_in, width, n_models, has_w1)
    dummy = out  # never read: the matching constexpr switch is off
    _pool_score_fwd_kernel[(batch,)](
        hidden, mask if has_mask else dummy, cu_seqlens if ragged else dummy,
        W1 if has_w1 else dummy, b1 if has_w1 else dummy, E, b, out,
        seq, d_in, width if has_w1 else d_in, n_models,
        stride_hb, stride_ht, stride_hd,
        mask.stride(0) if has_mask else 0, mask.stride(1) if has_mask else 0,
        W1.stride(0) if has_w1 else 0, W1.stride(1) if has_w1 else 0,
        E.stride(0), E.stride(1),
        out.stride(0), out.stride(1),
        RAGGED=ragged, HAS_MASK=has_mask, HAS_W1=has_w1, ACT=_ACT_CODES[act],
        **config,
    )
    return out


def launch_config(d_in: int, width: int, n_models: int, has_w1: bool) -> dict:
    """Block sizes and warps for D = d_in, width = H (or N without W1): BLOCK_W covers the width in one block."""
    block_w = max(16, triton.next_power_of_2(width))
    return {
        "BLOCK_T": 32,
        "BLOCK_D": max(16, min(triton.next_power_of_2(d_in), _TILE // block_w, 64)),
        "BLOCK_W": block_w,
        "BLOCK_N": max(16, min(triton.next_power_of_2(n_models), _TILE // block_w)) if has_w1 else 16,
        "num_warps": _NUM_WARPS,
    }
