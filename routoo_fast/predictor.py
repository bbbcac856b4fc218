"""Predictor: prompts -> Q [B, N], the predicted probability that each of N LLMs answers each prompt well.

    token states, pooling mask = Encoder.token_states(prompts)            per length bucket
    Q = pool_score(token states, mask, head weights)                      fused: pooled once, scored once

An encoder with `pools_inside` (routoo_fast.onnx_encoder.OnnxEncoder) pools inside its graph: Q = head(pooled [B, D]),
the head's own forward (`ScoringHead.probs`, the reference pool_score is tested against).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

from routoo_fast._backend import check_backend

NUMPY_HEAD_MAX_BATCH = 16  # ONNX encoders: up to this many prompts the head runs in numpy (ScoringHead.probs_numpy)


class Predictor:
    """Encoder + ScoringHead + model names. The head is moved to the encoder's device.

    backend: "triton", "cpu", "torch" or None (automatic / ROUTOO_BACKEND), see routoo_fast._backend.
    """

    def __init__(self, encoder, head, model_names: Sequence[str], backend: str | None = None):
        from routoo_fast.head import ScoringHead

        if not isinstance(head, ScoringHead):
            raise TypeError(f"head must be a ScoringHead, got {type(head).__name__}")
        if isinstance(model_names, str) or not isinstance(model_names, Sequence):
            raise TypeError(f"model_names must be a list of str, got {type(model_names).__name__}")
        names = list(model_names)
        for i, name in enumerate(names):
            if not isinstance(name, str) or not name:
                raise TypeError(f"model_names[{i}] must be a non-empty str, got {name!r}")
        if len(set(names)) != len(names):
            dupes = sorted({n for n in names if names.count(n) > 1})
            raise ValueError(f"model_names has duplicates: {dupes}")
        if len(names) != head.n_models:
            raise ValueError(f"head scores {head.n_models} models but model_names has {len(names)}")
        hidden_size = getattr(encoder, "hidden_size", None)
        if hidden_size != head.d_in:
            raise ValueError(f"head expects d_in={head.d_in} but the encoder's hidden_size is {hidden_size}")
        self.encoder = encoder
        self.head = head.to(encoder.device).eval()
        self.model_names = tuple(names)
        self.backend = check_backend(backend)

    @property
    def n_models(self) -> int:
        return len(self.model_names)

    def predict(self, prompts, return_pooled: bool = False):
        """Q np.float32 [B, N] in [0, 1], rows in the order of `prompts`, columns in the order of model_names.
        return_pooled: return (Q, pooled np.float32 [B, D]), the masked-mean encodings Q was scored from (what a
        cost model's output-length model reads)."""
        from routoo_fast.encoder import check_prompts
        from routoo_fast.pool_score import masked_mean, pool_score

        prompts = check_prompts(prompts)
        if getattr(self.encoder, "pools_inside", False):  # an ONNX encoder: pooled [B, D] in one call
            import torch

            # nothing left to pool: the head on [B, D] directly, in numpy while batches are small (torch's per-op
            # overhead was 0.1-0.2 ms of a 2.3 ms 9-token onnx-int8 route)
            pooled = self.encoder.encode(prompts)
            if len(prompts) <= NUMPY_HEAD_MAX_BATCH and self.head.E.device.type == "cpu":
                Q = self.head.probs_numpy(pooled)
            else:
                with torch.inference_mode():
                    Q = self.head.probs(torch.from_numpy(pooled)).numpy()
            return (Q, pooled) if return_pooled else Q
        weights = self.head.scoring_weights()
        out = np.empty((len(prompts), self.n_models), dtype=np.float32)
        pooled = np.empty((len(prompts), self.head.d_in), dtype=np.float32) if return_pooled else None
        for hidden, mask, index in self.encoder.token_states(prompts):
            out[index] = pool_score(hidden, mask, backend=self.backend, **weights).cpu().numpy()
            if return_pooled:  # a second, plain pooling pass: microseconds next to the encoder forward
                pooled[index] = masked_mean(hidden, mask).cpu().numpy()
        return (out, pooled) if return_pooled else out

    def predict_pooled(self, pooled) -> np.ndarray:
        """Q np.float32 [B, N] from cached pooled encodings [B, D] (numpy or torch; e.g. Encoder.encode output)."""
        import torch

        if isinstance(pooled, np.ndarray):
            if not np.issubdtype(pooled.dtype, np.floating):
                raise TypeError(f"pooled must be a float array [B, {self.head.d_in}], got dtype {pooled.dtype}")
            pooled = torch.from_numpy(np.ascontiguousarray(pooled, dtype=np.float32))
        elif not isinstance(pooled, torch.Tensor):
            raise TypeError(f"pooled must be a numpy array or torch.Tensor [B, {self.head.d_in}], "
                            f"got {type(pooled).__name__}")
        if pooled.dim() != 2 or pooled.shape[1] != self.head.d_in:
            raise ValueError(f"pooled must have shape [B, {self.head.d_in}], got {list(pooled.shape)}")
        if pooled.shape[0] == 0:
            raise ValueError("pooled is empty: pass at least one row")
        pooled = pooled.to(device=self.head.E.device, dtype=torch.float32)
        if not bool(torch.isfinite(pooled).all()):
            raise ValueError("pooled contains NaN or infinite values")
        with torch.inference_mode():
            return self.head.probs(pooled).cpu().numpy()

    def __repr__(self) -> str:
        return f"Predictor({self.encoder!r}, {self.head!r}, n_models={self.n_models}, backend={self.backend!r})"
