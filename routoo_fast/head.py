"""ScoringHead: predicted probability that each of N LLMs answers a prompt well.

    z      = act(W1 x + b1)        x = pooled encoder output [B, D], W1 [H, D], b1 [H]  -> z [B, H]
    logits = z E^T + b             E [N, H] (one embedding per model), b [N]            -> [B, N]
    Q      = sigmoid(logits)

`hidden=None` drops the projection: z = x (H = D, no W1/b1). The parameter names W1, b1, E, b are the safetensors
keys of a saved router; any feature standardisation used in training is folded into W1/b1 before saving, so
inference only needs the raw masked-mean pooled encoder output.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

ACTIVATIONS = ("gelu", "relu", "tanh", "identity")


def apply_activation(x: torch.Tensor, act: str, inplace: bool = False) -> torch.Tensor:
    """act(x) for act in ACTIVATIONS; gelu is the exact erf form."""
    if act == "gelu":
        return F.gelu(x)  # no in-place gelu in torch; the erf form is the default
    if act == "relu":
        return x.relu_() if inplace else x.relu()
    if act == "tanh":
        return x.tanh_() if inplace else x.tanh()
    if act == "identity":
        return x
    raise ValueError(f"act must be one of {ACTIVATIONS}, got {act!r}")


class ScoringHead(nn.Module):
    """`forward(pooled [B, D]) -> logits [B, N]`; `probs(pooled) -> sigmoid(logits)`.

    d_in: encoder width D. n_models: N. hidden: H, or None for no projection (then `act` is ignored and stored as
    "identity"). Initialisation follows nn.Linear (uniform in +-1/sqrt(fan_in)), with b = 0.
    """

    def __init__(self, d_in: int, n_models: int, hidden: int | None = 64, act: str = "gelu"):
        super().__init__()
        for name, value in (("d_in", d_in), ("n_models", n_models)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if hidden is not None and (isinstance(hidden, bool) or not isinstance(hidden, int) or hidden < 1):
            raise ValueError(f"hidden must be a positive int or None, got {hidden!r}")
        if act not in ACTIVATIONS:
            raise ValueError(f"act must be one of {ACTIVATIONS}, got {act!r}")
        self.d_in = d_in
        self.n_models = n_models
        self.hidden = hidden
        self.act = act if hidden is not None else "identity"
        width = d_in if hidden is None else hidden
        if hidden is not None:
            bound = 1.0 / math.sqrt(d_in)
            self.W1 = nn.Parameter(torch.empty(hidden, d_in).uniform_(-bound, bound))
            self.b1 = nn.Parameter(torch.empty(hidden).uniform_(-bound, bound))
        else:
            self.register_parameter("W1", None)
            self.register_parameter("b1", None)
        bound = 1.0 / math.sqrt(width)
        self.E = nn.Parameter(torch.empty(n_models, width).uniform_(-bound, bound))
        self.b = nn.Parameter(torch.zeros(n_models))

    @property
    def width(self) -> int:
        """H: the size of the features that E scores (D when there is no hidden layer)."""
        return self.d_in if self.hidden is None else self.hidden

    def features(self, pooled: torch.Tensor) -> torch.Tensor:
        """z = act(W1 pooled + b1) [B, H] (pooled itself when hidden is None)."""
        self._check_pooled(pooled)
        if self.W1 is None:
            return pooled
        return apply_activation(F.linear(pooled, self.W1, self.b1), self.act)

    def forward(self, pooled: torch.Tensor) -> torch.Tensor:
        """logits [B, N] = features(pooled) E^T + b."""
        return F.linear(self.features(pooled), self.E, self.b)

    def probs(self, pooled: torch.Tensor) -> torch.Tensor:
        """Q [B, N] = sigmoid(forward(pooled))."""
        return torch.sigmoid(self.forward(pooled))

    def probs_numpy(self, pooled) -> np.ndarray:
        """`probs` in numpy on the CPU, float32 [B, N] from pooled float32 [B, D]: the same math on the same
        weights, for small batches where torch's per-op overhead is most of the head's time (~0.1-0.2 ms per call
        at batch 1). gelu and sigmoid come from scipy.special (erf, expit). The weights are numpy views of the
        parameters (shared memory: training in place shows at once), made once and kept (`_numpy_weights`)."""
        from scipy.special import erf, expit

        x = np.asarray(pooled)
        if x.dtype != np.float32 or x.ndim != 2 or x.shape[1] != self.d_in:
            raise ValueError(f"pooled must be float32 [B, {self.d_in}], got {x.dtype} {list(x.shape)}")
        W1T, b1, ET, b = self._numpy_weights()
        z = x
        if W1T is not None:
            z = x @ W1T + b1
            if self.act == "gelu":  # the exact erf form, as torch's default gelu
                z = 0.5 * z * (1.0 + erf(z * np.float32(1.0 / math.sqrt(2.0))))
            elif self.act == "relu":
                z = np.maximum(z, 0.0)
            elif self.act == "tanh":
                z = np.tanh(z)
        return expit(z @ ET + b).astype(np.float32, copy=False)

    def _numpy_weights(self) -> tuple:
        """(W1^T, b1, E^T, b) as numpy views of the parameters. Made on first use and kept while the same Parameter
        objects are in place: making them goes through torch (~50 us per call measured right after an onnxruntime
        run, its code cold in the caches, a quarter of a 9-token route's overhead); checking is plain Python.
        Module.to/.float/... (`_apply`, which may swap a parameter's storage) drop them."""
        params = self._parameters
        kept = self.__dict__.get("_numpy_cache")
        if kept is not None and all(params[k] is p for k, p in kept[0].items()):
            return kept[1]
        if self.E.device.type != "cpu" or self.E.dtype != torch.float32:
            raise RuntimeError(f"probs_numpy needs a float32 head on the CPU, it is {self.E.dtype} on {self.E.device}")
        view = lambda t: None if t is None else t.detach().numpy()  # noqa: E731  (shares memory with the parameter)
        W1 = view(self.W1)
        arrays = (None if W1 is None else W1.T, view(self.b1), view(self.E).T, view(self.b))
        self.__dict__["_numpy_cache"] = ({k: params[k] for k in ("W1", "b1", "E", "b")}, arrays)
        return arrays

    def _apply(self, fn, *args, **kwargs):
        self.__dict__.pop("_numpy_cache", None)
        return super()._apply(fn, *args, **kwargs)

    def scoring_weights(self) -> dict:
        """The keyword arguments `pool_score` takes: W1, b1, E, b (detached) and act."""
        detach = lambda t: None if t is None else t.detach()  # noqa: E731
        return {"W1": detach(self.W1), "b1": detach(self.b1), "E": self.E.detach(), "b": self.b.detach(),
                "act": self.act}

    def extra_repr(self) -> str:
        return f"d_in={self.d_in}, n_models={self.n_models}, hidden={self.hidden}, act={self.act!r}"

    def _check_pooled(self, pooled) -> None:
        if not isinstance(pooled, torch.Tensor):
            raise TypeError(f"pooled must be a torch.Tensor [B, {self.d_in}], got {type(pooled).__name__}")
        if pooled.dim() != 2 or pooled.shape[1] != self.d_in:
            raise ValueError(f"pooled must have shape [B, {self.d_in}], got {list(pooled.shape)}")
        if not pooled.is_floating_point():
            raise TypeError(f"pooled must be a floating-point tensor, got {pooled.dtype}")
