"""Router: prompts in, one LLM per prompt out.

    Q, pooled = Predictor.predict(prompts)                              [B, N] predicted P(correct) per model
    out = CostModel.output_length(pooled)      [B, N] expected output tokens (per model's mean without a length model)
    C = input tokens * input_price + out * output_price                 [B, N] expected USD per call
    choice = selector mode of the policy (caps, floor, lambda, batch budget) on (Q, C)   [B]

`Router.estimate(prompts)` gives (Q, C) from one predictor pass; `predict` gives Q alone.

`Router.route` returns one `Decision` per prompt. `Router.aroute` is the same for an event loop: the predictor
pass runs in a worker thread, shared with concurrent callers through a `MicroBatcher` once `enable_batching()`
was called (the server does this), else alone in the loop's default executor. With `enable_q_cache(max_bytes)`
(off by default; the server turns it on) an exact repeat of a prompt takes its Q from an LRU (routoo_fast.q_cache)
and skips the encoder and the batcher. Policies given as text are parsed once per router and reused.
"""
from __future__ import annotations

import asyncio
import re
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

from .policies import Budget, MaxQuality, MinCost, Policy, Tradeoff, parse_policy

if TYPE_CHECKING:  # the batcher is serving machinery, imported only when batching is enabled
    from .serve.batcher import MicroBatcher

__all__ = ["Router", "Decision", "DEFAULT_ROUTER"]

DEFAULT_ROUTER = Path(__file__).resolve().parent / "assets" / "default_router"
_POLICY_CACHE = 256  # distinct policy texts kept parsed per router


@dataclass(frozen=True)
class Decision:
    """The routing decision for one prompt.

    model: chosen model name. predicted_quality: its predicted P(correct). expected_cost: its expected USD for
    this prompt. policy: the policy's text form. feasible: False when the policy could not be met for this prompt
    (no model under the cost cap: the cheapest model is taken; none reaching the quality floor: the best one).
    """

    model: str
    predicted_quality: float
    expected_cost: float
    policy: str
    feasible: bool = True

    def to_dict(self) -> dict:
        return {"model": self.model, "predicted_quality": self.predicted_quality,
                "expected_cost": self.expected_cost, "policy": self.policy, "feasible": self.feasible}


class Router:
    """A predictor plus a cost model plus the selector.

    predictor: anything with `model_names` and `predict(prompts) -> [B, N]` (a `routoo_fast.Predictor`).
    prices: a `routoo_fast.costs.CostModel` of those models, or a `PriceTable` with a price for every model
    together with expected_output_tokens (per model, `{model: tokens}` or an array [N]) and tokenizer
    (`text -> token ids` used to count input tokens for the cost; None = ceil(chars / 4)): a CostModel is built.
    """

    def __init__(self, predictor, prices, expected_output_tokens=None, tokenizer=None):
        from .costs import CostModel

        names = tuple(predictor.model_names)
        if not names:
            raise ValueError("the predictor scores no models")
        if isinstance(prices, CostModel):
            if expected_output_tokens is not None or tokenizer is not None:
                raise TypeError("with a CostModel, pass neither expected_output_tokens nor tokenizer (it has them)")
            if prices.models != names:
                raise ValueError(f"the cost model prices {list(prices.models)}, the predictor scores {list(names)}")
            cost_model = prices
        else:
            if expected_output_tokens is None:
                raise TypeError("expected_output_tokens is required with a PriceTable (or pass a CostModel)")
            cost_model = CostModel(names, prices, expected_output_tokens, tokenizer)
        self.predictor = predictor
        self.model_names = names
        self._index = {name: i for i, name in enumerate(names)}
        self.cost_model = cost_model
        self.prices = cost_model.prices
        # one predictor pass at a time: HF fast tokenizers are not safe to share between threads
        self._predict_lock = threading.Lock()
        self.batcher: MicroBatcher | None = None
        self.q_cache = None  # a routoo_fast.q_cache.QCache once enable_q_cache() was called
        self._policies: dict = {}  # policy text -> checked Policy
        # with a per-prompt output-length model a predictor pass yields rows [Q | out] of width 2N (what the cache
        # and the batcher carry), else Q alone
        self._lengths = cost_model.output_length is not None and not cost_model.equal_cost
        self._width = 2 * len(names) if self._lengths else len(names)

    # ---- construction ------------------------------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, path="default", backend: str | None = None, max_length: int | None = None,
                        num_threads: int | None = None, device=None, batch_size: int | None = None,
                        encoder_backend: str | None = None, q_cache_bytes: int = 0) -> "Router":
        """Load a saved router directory ("default" = the shipped `assets/default_router`).

        encoder_backend: "torch" (transformers, CPU or CUDA), "onnx" (onnxruntime fp32, CPU) or "onnx-int8"
        (onnxruntime int8, CPU; validated against fp32 by scripts/onnx_parity.py); None = the one the router's
        config.json records ("torch" when it records none). The onnx backends need the extra `routoo_fast[onnx]`
        and export the router's own encoder to the cache on first use (see routoo_fast.onnx_encoder).
        q_cache_bytes: > 0 turns on the exact-repeat cache of Q with this bound (see `enable_q_cache`).

        backend: pool+score backend (see routoo_fast._backend). max_length: encoder truncation, overriding the
        saved one (shorter is faster; the head was trained at the saved length). num_threads: torch threads.
        batch_size: prompts per encoder forward (length-sorted chunks of a call), overriding the saved one; on a
        CPU, small chunks of long prompts keep activations in cache (in our loopback load test at 256 tokens,
        micro-batched serving ran 0.67x unbatched with 64-prompt forwards and 1.12x with 4-prompt ones).
        """
        if isinstance(path, str) and path == "default":
            path = DEFAULT_ROUTER
        path = Path(path)
        if not path.exists():
            hint = " (the shipped default router is missing from this install)" if path == DEFAULT_ROUTER else ""
            raise FileNotFoundError(f"router directory {str(path)!r} does not exist{hint}")
        from .encoder import Encoder
        from .predictor import Predictor
        from .saved import load_router

        saved = load_router(path)
        spec = dict(saved.config["encoder"])
        if max_length is not None:
            spec = _with_max_length(spec, max_length)
        overrides = {k: v for k, v in (("num_threads", num_threads), ("device", device), ("batch_size", batch_size))
                     if v is not None}
        from .onnx_encoder import OnnxEncoder, check_encoder_backend

        kind = check_encoder_backend(saved.encoder_backend if encoder_backend is None else encoder_backend)
        if kind == "torch":
            encoder = Encoder.from_spec(spec, **overrides)
        else:
            if backend == "triton":
                raise ValueError(f"backend 'triton' pools token states on CUDA; encoder backend {kind!r} pools "
                                 "inside its graph on the CPU (use encoder_backend='torch' for CUDA)")
            encoder = OnnxEncoder.from_spec(spec, quantized=kind == "onnx-int8", **overrides)
        predictor = Predictor(encoder, saved.head, saved.model_names, backend=backend)
        router = cls(predictor, saved.cost_model)
        if q_cache_bytes:
            router.enable_q_cache(q_cache_bytes)
        return router

    @property
    def encoder_backend(self) -> str:
        """"torch", "onnx" or "onnx-int8": what runs this router's encoder."""
        encoder = getattr(self.predictor, "encoder", None)
        if getattr(encoder, "pools_inside", False):
            return "onnx-int8" if encoder.quantized else "onnx"
        return "torch"

    # ---- exact-repeat cache ------------------------------------------------------------------------------
    def enable_q_cache(self, max_bytes: int):
        """Keep predicted Q rows of the prompts seen, least recently used out first, in at most about max_bytes
        (see routoo_fast.q_cache); replaces any earlier cache. Returns the `QCache`."""
        from .q_cache import QCache

        self.q_cache = QCache(max_bytes, self._width)
        return self.q_cache

    def disable_q_cache(self) -> None:
        self.q_cache = None

    # ---- prediction and costs ----------------------------------------------------------------------------
    def predict(self, prompts) -> np.ndarray:
        """Q np.float32 [B, N]: predicted probability that each model answers each prompt well."""
        return self._rows(_check_prompts(prompts))[:, :len(self.model_names)]

    def estimate(self, prompts) -> tuple[np.ndarray, np.ndarray]:
        """(Q np.float32 [B, N], C np.float64 [B, N]) from one predictor pass: the predicted qualities and the
        expected USD of each call (per-prompt output lengths when the cost model has a length model)."""
        prompts = _check_prompts(prompts)
        return self._split(prompts, self._predict_any_thread(prompts))

    def _rows(self, prompts: list[str]) -> np.ndarray:
        cache = self.q_cache
        if cache is None:
            return self._predict_uncached(prompts)
        keys, rows, misses = cache.lookup(prompts)
        if misses:
            rows[misses] = self._predict_unique([prompts[i] for i in misses], [keys[i] for i in misses],
                                                self._predict_uncached, cache)
        return rows

    def _predict_uncached(self, prompts: list[str]) -> np.ndarray:
        """One predictor pass: Q [B, N], or [Q | expected output tokens] [B, 2N] with a length model."""
        with self._predict_lock:
            if not self._lengths:
                return self.predictor.predict(prompts)
            Q, pooled = self.predictor.predict(prompts, return_pooled=True)
        out = self.cost_model.output_tokens_of(pooled).astype(np.float32)
        return np.concatenate([Q, out], axis=1)

    def predict_rows(self, prompts) -> np.ndarray:
        """One predictor pass, no cache: Q [B, N], or [Q | expected output tokens] [B, 2N] when the cost model has
        a length model (what the micro-batcher and the Q cache carry; `estimate` splits them into Q and C)."""
        return self._predict_uncached(_check_prompts(prompts))

    def _split(self, prompts: list[str], rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(Q, C) from predictor rows."""
        N = len(self.model_names)
        return rows[:, :N], self.cost_model.costs(prompts, output_tokens=rows[:, N:] if self._lengths else None)

    @staticmethod
    def _predict_unique(prompts, keys, predict, cache) -> np.ndarray:
        """Q of cache misses: each distinct prompt predicted once, then stored."""
        first: dict = {}
        for i, key in enumerate(keys):
            first.setdefault(key, i)
        unique = list(first.values())
        Q = predict([prompts[i] for i in unique])
        cache.store([keys[i] for i in unique], Q)
        if len(unique) == len(keys):
            return Q
        row = {keys[i]: r for r, i in enumerate(unique)}
        return Q[[row[key] for key in keys]]

    def costs(self, prompts) -> np.ndarray:
        """C np.float64 [B, N]: expected USD of calling each model on each prompt (input tokens of the prompt and
        each model's expected output tokens; with a length model this runs the predictor: prefer `estimate`)."""
        prompts = _check_prompts(prompts)
        if self._lengths:
            return self._split(prompts, self._rows(prompts))[1]
        return self.cost_model.costs(prompts)

    # ---- routing -----------------------------------------------------------------------------------------
    def route(self, prompts, policy="max_quality") -> list[Decision]:
        """One Decision per prompt under `policy` (text like "lambda=0.5", a mapping, or a policy object)."""
        prompts = _check_prompts(prompts)
        policy = self.check_policy(policy)
        return self._decide(prompts, *self._split(prompts, self._predict_any_thread(prompts)), policy)

    async def aroute(self, prompts, policy="max_quality") -> list[Decision]:
        """`route` for an event loop: the predictor runs off the loop (in the micro-batcher when enabled).

        With batching enabled, raises `routoo_fast.serve.batcher.QueueFull` when the batcher's queue is full.
        """
        prompts = _check_prompts(prompts)
        policy = self.check_policy(policy)
        return self._decide(prompts, *self._split(prompts, await self._arows(prompts)), policy)

    async def apredict(self, prompts) -> np.ndarray:
        """`predict` for an event loop: in the micro-batcher when enabled, else in the loop's default executor."""
        return (await self._arows(_check_prompts(prompts)))[:, :len(self.model_names)]

    async def aestimate(self, prompts) -> tuple[np.ndarray, np.ndarray]:
        """`estimate` for an event loop (the predictor pass as in `apredict`)."""
        prompts = _check_prompts(prompts)
        return self._split(prompts, await self._arows(prompts))

    async def _arows(self, prompts: list[str]) -> np.ndarray:
        cache = self.q_cache
        if cache is None:
            return await self._apredict_uncached(prompts)
        keys, Q, misses = cache.lookup(prompts)
        if misses:
            todo, todo_keys = [prompts[i] for i in misses], [keys[i] for i in misses]
            first: dict = {}
            for i, key in enumerate(todo_keys):
                first.setdefault(key, i)
            unique = list(first.values())
            got = await self._apredict_uncached([todo[i] for i in unique])
            cache.store([todo_keys[i] for i in unique], got)
            row = {todo_keys[i]: r for r, i in enumerate(unique)}
            Q[misses] = got[[row[key] for key in todo_keys]]
        return Q

    async def _apredict_uncached(self, prompts: list[str]) -> np.ndarray:
        batcher = self.batcher
        if batcher is not None:
            return await batcher.acall(prompts)
        return await asyncio.get_running_loop().run_in_executor(None, self._predict_uncached, prompts)

    def decide(self, prompts: Sequence[str], Q: np.ndarray, policy, C: np.ndarray | None = None) -> list[Decision]:
        """Decisions from already predicted qualities Q [B, N] (e.g. cached) and expected costs C [B, N] (from
        `estimate`; None = `costs(prompts)`) under `policy`."""
        prompts = _check_prompts(prompts)
        policy = self.check_policy(policy)
        shape = (len(prompts), len(self.model_names))
        Q = np.asarray(Q)
        if Q.shape != shape:
            raise ValueError(f"Q must have shape {shape}, got {Q.shape}")
        if C is None:
            C = self.costs(prompts)
        else:
            C = np.asarray(C, dtype=np.float64)
            if C.shape != shape:
                raise ValueError(f"C must have shape {shape}, got {C.shape}")
        return self._decide(prompts, Q, C, policy)

    def _decide(self, prompts: list[str], Q: np.ndarray, C: np.ndarray, policy: Policy) -> list[Decision]:
        choice, feasible = _select(Q, C, policy, self._allowed(policy))
        rows = np.arange(len(prompts))
        quality = Q[rows, choice].astype(np.float64)
        cost = C[rows, choice]
        text = str(policy)
        return [Decision(self.model_names[c], float(q), float(x), text, bool(f))
                for c, q, x, f in zip(choice.tolist(), quality, cost, feasible)]

    # ---- micro-batching ----------------------------------------------------------------------------------
    def enable_batching(self, max_wait: float = 0.002, max_batch_prompts: int = 64,
                        max_batch_tokens: int | None = None, max_queue: int = 1024) -> MicroBatcher:
        """Share predictor passes between concurrent `aroute` callers (see routoo_fast.serve.batcher)."""
        from .serve.batcher import MicroBatcher, approx_tokens

        if self.batcher is not None:
            raise RuntimeError("batching is already enabled; call disable_batching() first")
        self.batcher = MicroBatcher(self._batcher_pass, max_wait=max_wait, max_batch_prompts=max_batch_prompts,
                                    max_batch_tokens=max_batch_tokens, max_queue=max_queue,
                                    token_estimate=approx_tokens)
        return self.batcher

    def _batcher_pass(self, prompts: list[str]) -> np.ndarray:
        """What the batcher runs: one predictor pass (`predict_rows`; with the cache on, it was looked up before
        the prompts joined the queue)."""
        return self.predict_rows(prompts)

    def disable_batching(self) -> None:
        """Finish queued work and stop the batcher's worker. Idempotent."""
        batcher, self.batcher = self.batcher, None
        if batcher is not None:
            batcher.close()

    def _predict_any_thread(self, prompts: list[str]) -> np.ndarray:
        batcher = self.batcher
        if batcher is None:
            return self._rows(prompts)
        cache = self.q_cache
        if cache is None:
            return batcher(prompts)
        keys, Q, misses = cache.lookup(prompts)
        if misses:
            Q[misses] = self._predict_unique([prompts[i] for i in misses], [keys[i] for i in misses], batcher, cache)
        return Q

    # ---- checks ------------------------------------------------------------------------------------------
    def check_policy(self, policy) -> Policy:
        """The parsed policy, or ValueError/TypeError if it is malformed or names models this router lacks. Text is
        parsed once and the checked policy reused (policies are frozen)."""
        text = policy if isinstance(policy, str) else None
        if text is not None:
            cached = self._policies.get(text)
            if cached is not None:
                return cached
        policy = parse_policy(policy)
        if policy.models is not None:
            unknown = [m for m in policy.models if m not in self._index]
            if unknown:
                raise ValueError(f"policy names unknown models {unknown}; this router knows {list(self.model_names)}")
        if text is not None:
            if len(self._policies) >= _POLICY_CACHE:
                self._policies.clear()
            self._policies[text] = policy
        return policy

    def _allowed(self, policy: Policy) -> np.ndarray | None:
        if policy.models is None:
            return None
        allowed = np.zeros(len(self.model_names), dtype=bool)
        allowed[[self._index[m] for m in policy.models]] = True
        return allowed

    def __repr__(self) -> str:
        return f"Router({len(self.model_names)} models, batching={self.batcher is not None})"


def _select(Q: np.ndarray, C: np.ndarray, policy: Policy, allowed: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """(choice int64 [B], feasible bool [B]) from the selector mode the policy names.

    Where the policy cannot be met the prompt still gets a model, flagged infeasible: min_cost's fallback is the
    best predicted model (the selector's), max_quality's is the cheapest allowed model (the nearest to the cap).
    """
    from . import selector

    B = Q.shape[0]
    if isinstance(policy, MaxQuality):
        sel = selector.max_quality(Q, C, max_cost=policy.max_cost, allowed=allowed)
        choice, feasible = np.asarray(sel.choice, dtype=np.int64), np.asarray(sel.feasible, dtype=bool)
        if not feasible.all():
            cheapest = np.where(allowed if allowed is not None else True, C, np.inf).argmin(axis=1)
            choice = np.where(feasible, choice, cheapest)
        return choice, feasible
    if isinstance(policy, MinCost):
        sel = selector.min_cost(Q, C, policy.min_quality, allowed=allowed)
        return np.asarray(sel.choice, dtype=np.int64), ~np.asarray(sel.flagged, dtype=bool)
    if isinstance(policy, Tradeoff):
        sel = selector.tradeoff(Q, C, policy.lam, allowed=allowed)
    elif isinstance(policy, Budget):
        sel = selector.budget(Q, C, policy.total, allowed=allowed)
    else:  # parse_policy only makes the four above
        raise TypeError(f"unknown policy type {type(policy).__name__}")
    return np.asarray(sel.choice, dtype=np.int64), np.ones(B, dtype=bool)


def _check_prompts(prompts) -> list[str]:
    """A single str becomes [str]; otherwise a non-empty sequence of str, or a clear TypeError/ValueError."""
    if isinstance(prompts, str):
        return [prompts]
    if type(prompts) is not list and (isinstance(prompts, bytes) or not isinstance(prompts, Sequence)):
        raise TypeError(f"prompts must be a str or a list of str, got {type(prompts).__name__}")
    if len(prompts) == 0:
        raise ValueError("prompts is empty: pass at least one prompt")
    for i, p in enumerate(prompts):
        if not isinstance(p, str):
            raise TypeError(f"prompts[{i}] must be a str, got {type(p).__name__}")
    return list(prompts)


def _with_max_length(spec: dict, max_length: int) -> dict:
    """The encoder spec at another truncation length; its encoder_id (which names max_length) follows along, so
    Encoder.from_spec still verifies the weights."""
    if isinstance(max_length, bool) or not isinstance(max_length, int) or max_length < 2:
        raise ValueError(f"max_length must be an int >= 2, got {max_length!r}")
    spec = dict(spec, max_length=max_length)
    if spec.get("encoder_id"):
        new_id, n = re.subn(r"/max_length=\d+$", f"/max_length={max_length}", spec["encoder_id"])
        if n != 1:
            raise ValueError(f"cannot change max_length of encoder {spec['encoder_id']!r}")
        spec["encoder_id"] = new_id
    return spec
