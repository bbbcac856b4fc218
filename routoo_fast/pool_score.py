"""pool_score: masked mean pool + scoring head + sigmoid in one call, on the best backend for the tensors.

    pooled[i] = sum_t m[i,t] h[i,t,:] / max(sum_t m[i,t], 1)     [B, D]   (0 for a row with no real tokens)
    z         = act(pooled W1^T + b1)                            [B, H]   (z = pooled when W1 is None)
    Q         = sigmoid(z E^T + b)                               [B, N]   float32

Layouts: padded hidden [B, T, D] + mask [B, T] (nonzero = real token; None = all real), or ragged
hidden [total_tokens, D] + cu_seqlens [B + 1] (int, cu_seqlens[0] = 0, non-decreasing, last = total_tokens).
Backends (routoo_fast._backend): "triton" fused kernel, "cpu" torch fast path, "torch" eager reference.
"""
from __future__ import annotations

import torch

from routoo_fast._backend import choose_backend
from routoo_fast.head import ACTIVATIONS, apply_activation


def pool_score(hidden, mask=None, *, cu_seqlens=None, E, b, W1=None, b1=None, act="gelu", backend=None):
    """Q [B, N] float32 on hidden's device; see the module docstring for the math and layouts."""
    check_inputs(hidden, mask, cu_seqlens, W1, b1, E, b, act)
    choice = choose_backend(hidden.device, backend)
    if choice == "triton":
        from routoo_fast.kernels.pool_score import pool_score_triton

        return pool_score_triton(hidden, mask, cu_seqlens=cu_seqlens, W1=W1, b1=b1, E=E, b=b, act=act)
    if choice == "torch":
        from routoo_fast._reference import pool_score_reference

        return pool_score_reference(hidden, mask, cu_seqlens=cu_seqlens, W1=W1, b1=b1, E=E, b=b, act=act)
    return _pool_score_fast(hidden, mask, cu_seqlens, W1, b1, E, b, act)


def masked_mean(hidden, mask=None, *, cu_seqlens=None) -> torch.Tensor:
    """pooled [B, D] float32: masked mean over tokens (0 for rows with no real tokens), without materialising
    mask * hidden: padded = one bmm of mask [B, 1, T] @ hidden [B, T, D]; ragged = one index_add over tokens."""
    h = hidden if hidden.dtype == torch.float32 else hidden.float()
    if cu_seqlens is None:
        batch, seq = h.shape[0], h.shape[1]
        if mask is None:
            return h.mean(dim=1) if seq > 0 else h.new_zeros(batch, h.shape[2])
        m = (mask != 0).to(torch.float32)
        summed = torch.bmm(m.unsqueeze(1), h).squeeze(1)
        count = m.sum(dim=1, keepdim=True)
    else:
        lengths = (cu_seqlens[1:] - cu_seqlens[:-1]).long()
        rows = torch.repeat_interleave(torch.arange(lengths.numel(), device=h.device), lengths)
        summed = h.new_zeros(lengths.numel(), h.shape[1]).index_add_(0, rows, h)
        count = lengths.to(torch.float32).unsqueeze(1)
    return summed.div_(count.clamp_(min=1.0))


def _pool_score_fast(hidden, mask, cu_seqlens, W1, b1, E, b, act) -> torch.Tensor:
    """The CPU fast path: masked_mean, then one addmm for W1 and one for E over all models' stacked weights."""
    pooled = masked_mean(hidden, mask, cu_seqlens=cu_seqlens)
    f32 = lambda t: t if t.dtype == torch.float32 else t.float()  # noqa: E731
    if W1 is None:
        z = pooled
    else:
        z = apply_activation(torch.addmm(f32(b1), pooled, f32(W1).t()), act, inplace=True)
    return torch.addmm(f32(b), z, f32(E).t()).sigmoid_()


def check_inputs(hidden, mask, cu_seqlens, W1, b1, E, b, act) -> None:
    """Shape/dtype/device checks shared by every backend; ValueError/TypeError naming the argument."""
    if not isinstance(hidden, torch.Tensor):
        raise TypeError(f"hidden must be a torch.Tensor, got {type(hidden).__name__}")
    if hidden.dtype not in (torch.float32, torch.float16, torch.bfloat16):
        raise TypeError(f"hidden must be float32, float16 or bfloat16, got {hidden.dtype}")
    if act not in ACTIVATIONS:
        raise ValueError(f"act must be one of {ACTIVATIONS}, got {act!r}")
    if cu_seqlens is None:
        if hidden.dim() != 3:
            raise ValueError(f"padded hidden must be [B, T, D], got shape {list(hidden.shape)} "
                             "(pass cu_seqlens for the ragged [total_tokens, D] layout)")
        if mask is not None:
            if not isinstance(mask, torch.Tensor):
                raise TypeError(f"mask must be a torch.Tensor [B, T], got {type(mask).__name__}")
            if mask.shape != hidden.shape[:2]:
                raise ValueError(f"mask must have shape {list(hidden.shape[:2])} (hidden's [B, T]), "
                                 f"got {list(mask.shape)}")
            if mask.device != hidden.device:
                raise ValueError(f"mask is on {mask.device} but hidden is on {hidden.device}")
    else:
        if mask is not None:
            raise ValueError("pass either mask (padded layout) or cu_seqlens (ragged layout), not both")
        if hidden.dim() != 2:
            raise ValueError(f"ragged hidden must be [total_tokens, D], got shape {list(hidden.shape)}")
        if not isinstance(cu_seqlens, torch.Tensor):
            raise TypeError(f"cu_seqlens must be a torch.Tensor [B + 1], got {type(cu_seqlens).__name__}")
        if cu_seqlens.dim() != 1 or cu_seqlens.numel() < 1:
            raise ValueError(f"cu_seqlens must be 1-D with B + 1 >= 1 entries, got shape {list(cu_seqlens.shape)}")
        if cu_seqlens.dtype not in (torch.int32, torch.int64):
            raise TypeError(f"cu_seqlens must be int32 or int64, got {cu_seqlens.dtype}")
        if cu_seqlens.device != hidden.device:
            raise ValueError(f"cu_seqlens is on {cu_seqlens.device} but hidden is on {hidden.device}")
        # one host sync on GPU; a bad offset would otherwise read out of bounds
        bad = (cu_seqlens[0] != 0) | (cu_seqlens[-1] != hidden.shape[0])
        if cu_seqlens.numel() > 1:
            bad = bad | (cu_seqlens[1:] < cu_seqlens[:-1]).any()
        if bool(bad):
            raise ValueError(f"cu_seqlens must start at 0, be non-decreasing and end at total_tokens = "
                             f"{hidden.shape[0]}, got {cu_seqlens.tolist()[:8]}...")
    d_in = hidden.shape[-1]
    if W1 is None:
        if b1 is not None:
            raise ValueError("b1 given without W1")
        width = d_in
    else:
        _check_weight("W1", W1, hidden, 2)
        if W1.shape[1] != d_in:
            raise ValueError(f"W1 must be [H, {d_in}] (D from hidden), got {list(W1.shape)}")
        width = W1.shape[0]
        _check_weight("b1", b1, hidden, 1)
        if b1.shape[0] != width:
            raise ValueError(f"b1 must be [{width}] (H from W1), got {list(b1.shape)}")
    _check_weight("E", E, hidden, 2)
    if E.shape[1] != width:
        raise ValueError(f"E must be [N, {width}] (H from W1, or D when W1 is None), got {list(E.shape)}")
    _check_weight("b", b, hidden, 1)
    if b.shape[0] != E.shape[0]:
        raise ValueError(f"b must be [{E.shape[0]}] (N from E), got {list(b.shape)}")


def _check_weight(name, w, hidden, ndim) -> None:
    if not isinstance(w, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(w).__name__}")
    if w.dim() != ndim or not w.is_floating_point():
        raise ValueError(f"{name} must be a {ndim}-D floating-point tensor, got shape {list(w.shape)} {w.dtype}")
    if w.device != hidden.device:
        raise ValueError(f"{name} is on {w.device} but hidden is on {hidden.device}")
