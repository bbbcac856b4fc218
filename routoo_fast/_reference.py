"""Slow, obviously-correct references used as test oracles and benchmark baselines.

Selector references take the same inputs as routoo_fast.selector (Q [P, N], C [P, N] or [N], optional bool
`allowed`) and follow the same rules: scores in Q's dtype (float32 stays float32), ties to the cheaper model
then the lower index. Plain numpy for the per-prompt modes, per-prompt python hulls + a full sort for the
budget LP, brute force over all assignments and scipy's MILP (HiGHS) for the exact knapsack optimum.
"""
from __future__ import annotations

import itertools

import numpy as np


# ------------------------------------------------------------------------------------- selector references
def _full(C: np.ndarray, shape) -> np.ndarray:
    return np.broadcast_to(C, shape)


def _argbest(score: np.ndarray, tie_key: np.ndarray, ok: np.ndarray) -> np.ndarray:
    """Per row: max score among ok, ties -> smallest tie_key, then lowest index; -1 where nothing is ok."""
    s = np.where(ok, score, -np.inf)
    best = s.max(axis=1, keepdims=True)
    cand = ok & (s == best)
    key = np.where(cand, tie_key, np.inf)
    win = cand & (key == key.min(axis=1, keepdims=True))
    choice = np.argmax(win, axis=1).astype(np.int32)
    choice[~ok.any(axis=1)] = -1
    return choice


def _gather(Q, C, choice):
    rows = np.arange(Q.shape[0])
    j = np.maximum(choice, 0)
    quality = Q[rows, j].astype(np.float64)
    cost = _full(C, Q.shape)[rows, j].astype(np.float64)
    quality[choice < 0] = np.nan
    cost[choice < 0] = np.nan
    return quality, cost


def tradeoff_reference(Q, C, lam, allowed=None):
    """argmax_j Q - lam * C per prompt (in Q's dtype) -> (choice int32 [P], quality [P], cost [P])."""
    lam = Q.dtype.type(lam)
    score = Q - lam * C
    Cf = _full(C, Q.shape)
    ok = np.ones(Q.shape, bool) if allowed is None else _full(allowed, Q.shape)
    choice = _argbest(score, Cf, ok)
    return (choice, *_gather(Q, C, choice))


def max_quality_reference(Q, C, max_cost=None, max_latency=None, latency=None, allowed=None):
    """argmax_j Q within cost/latency caps and the mask -> (choice, quality, cost); -1 where none passes."""
    ok = np.ones(Q.shape, bool) if allowed is None else _full(allowed, Q.shape).copy()
    if max_cost is not None:
        ok &= _full(C, Q.shape) <= np.broadcast_to(np.asarray(max_cost, float), (Q.shape[0],))[:, None]
    if max_latency is not None:
        ok &= _full(latency, Q.shape) <= np.broadcast_to(np.asarray(max_latency, float), (Q.shape[0],))[:, None]
    return tradeoff_reference(Q, C, 0.0, ok)


def min_cost_reference(Q, C, min_quality, allowed=None):
    """Cheapest model with Q >= floor (ties: higher Q, lower index), else max quality flagged.

    -> (choice, quality, cost, flagged bool [P])."""
    Cf = _full(C, Q.shape)
    ok = np.ones(Q.shape, bool) if allowed is None else _full(allowed, Q.shape)
    floor = np.broadcast_to(np.asarray(min_quality, np.float64), (Q.shape[0],))[:, None]
    meets = ok & (Q.astype(np.float64) >= floor)
    # cheapest first = max of -C; its tie key is -Q (higher quality wins)
    cheap = _argbest(-Cf, -Q, meets)
    best = _argbest(Q, Cf, ok)
    flagged = cheap < 0
    choice = np.where(flagged, best, cheap).astype(np.int32)
    return (choice, *_gather(Q, C, choice), flagged)


def upper_hull_reference(c, q, allowed=None):
    """Model indices of one prompt's upper convex hull over (cost, quality), cheapest first.

    Dominated models (another costs no more and scores no less) are dropped; collinear middle points are kept.
    """
    c = np.asarray(c, np.float64)
    q = np.asarray(q, np.float64)
    js = [j for j in range(len(c)) if allowed is None or allowed[j]]
    js.sort(key=lambda j: (c[j], -q[j], j))
    hull = []
    for j in js:
        if hull and q[j] <= q[hull[-1]]:
            continue
        while len(hull) >= 2:
            a, b = hull[-2], hull[-1]
            if (q[b] - q[a]) * (c[j] - c[a]) < (q[j] - q[a]) * (c[b] - c[a]):  # b strictly below a -> j
                hull.pop()
            else:
                break
        hull.append(j)
    return hull


def hull_edges_reference(Q, C, allowed=None):
    """All prompts' hulls -> (hulls list, edges sorted in LP order as (slope, dc, dq, prompt, pos) rows)."""
    Cf = _full(C, Q.shape)
    hulls, edges = [], []
    for i in range(Q.shape[0]):
        h = upper_hull_reference(Cf[i], Q[i], None if allowed is None else _full(allowed, Q.shape)[i])
        hulls.append(h)
        for pos in range(1, len(h)):
            dc = float(Cf[i, h[pos]]) - float(Cf[i, h[pos - 1]])
            dq = float(Q[i, h[pos]]) - float(Q[i, h[pos - 1]])
            edges.append((dq / dc, dc, dq, i, pos))
    edges.sort(key=lambda e: (-e[0], e[3], e[4]))
    return hulls, edges


BUDGET_REL_SLACK = 1e-9  # written out, not imported: the oracle states the rule independently of the core


def budget_reference(Q, C, total_budget, allowed=None):
    """The same LP + round-down + greedy fill as the C++ solver, with a full sort instead of quickselect.

    -> dict(choice, total_quality, total_cost, lambda_star, lp_bound, break_gain)."""
    Cf = _full(C, Q.shape)
    hulls, edges = hull_edges_reference(Q, C, allowed)
    P = Q.shape[0]
    level = [0] * P
    base = sum(float(Cf[i, h[0]]) for i, h in enumerate(hulls))
    # the core's rule: a budget within BUDGET_REL_SLACK below the cheapest total is that total
    if total_budget < base * (1.0 - BUDGET_REL_SLACK):
        raise ValueError("total_budget below the cheapest possible total")
    residual = max(total_budget - base, 0.0)
    lam, gain, frac_q, t = 0.0, 0.0, 0.0, len(edges)
    for k, (slope, dc, dq, i, pos) in enumerate(edges):
        if dc > residual:
            lam, gain, frac_q, t = slope, dq, dq * residual / dc, k
            break
        residual -= dc
        level[i] += 1
    lp = sum(float(Q[i, h[level[i]]]) for i, h in enumerate(hulls)) + frac_q
    spent = sum(float(Cf[i, h[level[i]]]) for i, h in enumerate(hulls))
    left = total_budget - spent
    for slope, dc, dq, i, pos in edges[t:]:
        if dc <= left and level[i] + 1 == pos:
            level[i] += 1
            left -= dc
    choice = np.array([h[level[i]] for i, h in enumerate(hulls)], np.int32)
    quality, cost = _gather(Q, C, choice)
    return dict(choice=choice, total_quality=float(quality.sum()), total_cost=float(cost.sum()),
                lambda_star=lam, lp_bound=lp, break_gain=gain)


def budget_bruteforce(Q, C, total_budget, allowed=None):
    """Exact knapsack optimum by trying every assignment (tiny P only) -> (best total quality, choice)."""
    Cf = _full(C, Q.shape).astype(np.float64)
    Qd = Q.astype(np.float64)
    P, N = Q.shape
    options = [[j for j in range(N) if allowed is None or _full(allowed, Q.shape)[i, j]] for i in range(P)]
    best, best_choice = -np.inf, None
    for choice in itertools.product(*options):
        rows = np.arange(P)
        if Cf[rows, choice].sum() <= total_budget:
            value = Qd[rows, choice].sum()
            if value > best:
                best, best_choice = value, np.array(choice, np.int32)
    return best, best_choice


def budget_milp(Q, C, total_budget, time_limit=60.0):
    """Exact knapsack optimum with scipy.optimize.milp (HiGHS) -> (total quality, choice)."""
    from scipy.optimize import Bounds, LinearConstraint, milp
    from scipy.sparse import csr_array, kron

    P, N = Q.shape
    Cf = _full(C, Q.shape).astype(np.float64).ravel()
    one_each = kron(csr_array(np.eye(P)), csr_array(np.ones((1, N))))  # sum_j x_ij = 1
    constraints = [LinearConstraint(one_each, 1, 1), LinearConstraint(Cf[None, :], -np.inf, total_budget)]
    res = milp(-Q.astype(np.float64).ravel(), constraints=constraints, integrality=np.ones(P * N),
               bounds=Bounds(0, 1), options={"time_limit": time_limit, "mip_rel_gap": 0.0})
    if res.x is None:
        raise RuntimeError(f"milp failed: {res.message}")
    choice = res.x.reshape(P, N).argmax(axis=1).astype(np.int32)
    return -res.fun, choice


def frontier_reference(Q, C, allowed=None):
    """(slopes [K], total cost [K+1], total quality [K+1]) from the reference hulls."""
    Cf = _full(C, Q.shape)
    hulls, edges = hull_edges_reference(Q, C, allowed)
    c0 = sum(float(Cf[i, h[0]]) for i, h in enumerate(hulls))
    q0 = sum(float(Q[i, h[0]]) for i, h in enumerate(hulls))
    slopes = np.array([e[0] for e in edges])
    cost = np.concatenate(([c0], c0 + np.cumsum([e[1] for e in edges])))
    quality = np.concatenate(([q0], q0 + np.cumsum([e[2] for e in edges])))
    return slopes, cost, quality


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
