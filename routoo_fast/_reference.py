# --- predictor references ---


def pool_score_reference(hidden, mask=None, *, cu_seqlens=None, W1=None, b1=None, E, b, act="gelu",
                         compute_dtype=None):
    """Plain eager torch oracle for `routoo_fast.pool_score.pool_score`, step by step.

    Padded: hidden [B, T, D] with mask [B, T] (nonzero = real token; None = every token real).
    Ragged: hidden [total_tokens, D] with cu_seqlens [B + 1] (row i = tokens cu_seqlens[i]:cu_seqlens[i+1]).
    pooled = sum(mask * h) / count, and 0 for a row with no tokens; z = act(pooled W1^T + b1) (z = pooled when W1
    is None); Q = sigmoid(z E^T + b) -> [B, N] in compute_dtype (default float32).
    """
    import torch
    import torch.nn.functional as F

    dtype = torch.float32 if compute_dtype is None else compute_dtype
    h = hidden.to(dtype)
    if cu_seqlens is None:
        if mask is None:
            m = torch.ones(h.shape[0], h.shape[1], dtype=dtype, device=h.device)
        else:
            m = (mask != 0).to(dtype)
        masked = h * m.unsqueeze(-1)
        summed = masked.sum(dim=1)
        count = m.sum(dim=1, keepdim=True)
    else:
        bounds = [int(v) for v in cu_seqlens.tolist()]
        summed = torch.stack([h[lo:hi].sum(dim=0) for lo, hi in zip(bounds[:-1], bounds[1:])]) if len(bounds) > 1 \
            else h.new_zeros(0, h.shape[-1])
        count = torch.tensor([[hi - lo] for lo, hi in zip(bounds[:-1], bounds[1:])], dtype=dtype,
                             device=h.device).reshape(-1, 1)
    pooled = summed / count.clamp(min=1)  # a row with no tokens has summed = 0 -> pooled = 0
    if W1 is None:
        z = pooled
    else:
        z = F.linear(pooled, W1.to(dtype), b1.to(dtype))
        if act == "gelu":
            z = F.gelu(z)
        elif act == "relu":
            z = torch.relu(z)
        elif act == "tanh":
            z = torch.tanh(z)
        elif act != "identity":
            raise ValueError(f"unknown act {act!r}")
    logits = F.linear(z, E.to(dtype), b.to(dtype))
    return torch.sigmoid(logits)
