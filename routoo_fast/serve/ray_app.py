"""The routing server as a Ray Serve application: N replicas behind Ray's HTTP proxy, one router per replica.

    HTTP -> Ray Serve proxy -> a replica (a Ray actor)
            the replica's ASGI app is `create_app(...)`, the same Starlette app `routoo-fast serve` runs (one
            implementation of /v1/route, /v1/chat/completions with streaming, /v1/models, /healthz, /metrics)
            predictor passes: `@serve.batch` gathers concurrent requests of this replica into one pass

Start it with `routoo-fast serve --ray [--replicas N | --autoscale MIN:MAX] ...` (the same flags as `serve`), or
with Ray's own tools on the application builder:

    serve run routoo_fast.serve.ray_app:build_app router=default num_replicas=2 upstreams=upstreams.json
    serve deploy docs/ray/serve_config.yaml        # import_path: routoo_fast.serve.ray_app:build_app, args: {...}

`build_app(args)` takes the options of `RAY_OPTIONS` (the `routoo-fast serve` flags, with underscores) plus the
deployment's: num_replicas, autoscaling (min_replicas / max_replicas / target_ongoing_requests), num_cpus per
replica, max_ongoing_requests, max_queued_requests.

How the work is divided on a replica: `create_app` asks the router for Q (`Router.apredict`); on a replica the
router's batcher is `ServeBatching`, which cuts each request into chunks of at most --max-batch prompts and
--max-batch-tokens estimated tokens, and hands the chunks to the replica's `@serve.batch` method. Ray gathers
chunks of concurrent requests for up to --max-wait-ms, up to one pass's worth (`batch_size_fn`: a chunk counts
max(prompts, tokens x max_batch / max_batch_tokens), so a pass never holds more than either limit), and the
replica runs one predictor pass on them in its worker thread. A pass that fails is re-run chunk by chunk so only
the failing request gets the error. More than --max-queue requests waiting on a replica is 503 + Retry-After, as
with the in-process micro-batcher (`routoo_fast.serve.batcher.MicroBatcher`, which replicas do not use).
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import math
import os
import time
from dataclasses import dataclass

import numpy as np
from ray import serve

from ..router import Router
from .batcher import (DEFAULT_MAX_BATCH_TOKENS, DEFAULT_MMAP_THRESHOLD, PASS_PROMPTS_BUCKETS, PASS_SECONDS_BUCKETS,
                      BatcherClosed, Histogram, QueueFull, approx_tokens)

__all__ = ["RoutooDeployment", "ServeBatching", "build_app", "app", "RAY_OPTIONS", "DEPLOYMENT_OPTIONS"]

# the replica's options: the `routoo-fast serve` flags (dest names) and their defaults
RAY_OPTIONS = {
    "router": "default", "max_length": None, "backend": None, "threads": None, "encoder_batch": None,
    "encoder_backend": None, "upstreams": None, "policy": "max_quality", "no_batching": False, "max_wait_ms": 2.0,
    "max_batch": 64, "max_batch_tokens": DEFAULT_MAX_BATCH_TOKENS, "max_prompt_chars": None,
    "malloc_mmap_threshold": DEFAULT_MMAP_THRESHOLD, "max_queue": 1024, "q_cache_bytes": 64 * 1024 * 1024,
    "max_body_bytes": 8 * 1024 * 1024, "max_prompts_per_request": 1024, "upstream_connect_timeout": 10.0,
    "upstream_read_timeout": 120.0, "auth_token_env": None, "spend_caps": None, "spend_db": None,
    "affinity_ttl": 3600.0, "affinity_max_sessions": 100_000,
}
# the deployment's options (Ray Serve's): replicas, autoscaling, resources, per-replica concurrency
DEPLOYMENT_OPTIONS = {
    "num_replicas": 1, "min_replicas": None, "max_replicas": None, "target_ongoing_requests": 32,
    "num_cpus": 1.0, "max_ongoing_requests": 256, "max_queued_requests": -1, "name": "routoo",
}


@dataclass(frozen=True)
class _Chunk:
    """Part of one request's prompts, small enough for one pass; `units` is what it takes of a pass."""

    prompts: list
    units: int


def _pass_units(chunks) -> int:
    """@serve.batch's batch_size_fn: the pass capacity the chunks take together."""
    return sum(c.units for c in chunks)


class ServeBatching:
    """A replica's batcher, with the interface `Router` and `create_app` use of `MicroBatcher` (`acall`, a sync
    call, `stats`, `close`): requests are cut into chunks, the chunks go through the replica's `@serve.batch`
    method `submit`, which calls `run_pass` with the chunks Ray gathered."""

    def __init__(self, submit, predict):
        self.submit, self.predict = submit, predict
        self.max_batch_prompts, self.max_batch_tokens, self.max_queue = 64, None, 1024
        self.closed, self.waiting = True, 0
        self.passes = self.prompts = self.failed_passes = self.failed_requests = 0
        self.pass_prompts, self.pass_seconds = Histogram(PASS_PROMPTS_BUCKETS), Histogram(PASS_SECONDS_BUCKETS)
        self.executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="routoo-pass")

    def configure(self, max_wait: float, max_batch_prompts: int, max_batch_tokens: int | None,
                  max_queue: int) -> None:
        """Take create_app's batching options (called by the router's enable_batching in the app's lifespan)."""
        self.max_batch_prompts, self.max_batch_tokens, self.max_queue = max_batch_prompts, max_batch_tokens, max_queue
        self.submit.set_max_batch_size(max_batch_prompts)
        self.submit.set_batch_wait_timeout_s(max_wait)
        self.closed = False

    def chunks(self, prompts: list) -> list:
        """The request cut into chunks of at most max_batch_prompts prompts and max_batch_tokens tokens (a single
        prompt over the token budget alone), in order."""
        limit_p, limit_t = self.max_batch_prompts, self.max_batch_tokens
        out, current, tokens = [], [], 0
        for prompt in prompts:
            t = approx_tokens(prompt)
            if current and (len(current) >= limit_p or (limit_t is not None and tokens + t > limit_t)):
                out.append(self._chunk(current, tokens))
                current, tokens = [], 0
            current.append(prompt)
            tokens += t
        out.append(self._chunk(current, tokens))
        return out

    def _chunk(self, prompts: list, tokens: int) -> _Chunk:
        units = len(prompts)
        if self.max_batch_tokens is not None:
            units = max(units, math.ceil(tokens * self.max_batch_prompts / self.max_batch_tokens))
        return _Chunk(prompts, min(units, self.max_batch_prompts))

    async def acall(self, prompts: list) -> np.ndarray:
        if self.closed:
            raise BatcherClosed("the replica is shutting down")
        if self.waiting >= self.max_queue:
            raise QueueFull(f"{self.waiting} requests are waiting on this replica")
        self.waiting += 1
        try:
            parts = await asyncio.gather(*(self.submit(chunk) for chunk in self.chunks(list(prompts))))
        finally:
            self.waiting -= 1
        for part in parts:
            if isinstance(part, BaseException):
                raise part
        return parts[0] if len(parts) == 1 else np.concatenate(parts)

    def __call__(self, prompts: list) -> np.ndarray:
        """A synchronous caller (Router.route) is not batched: it runs its own pass."""
        return self.predict(list(prompts))

    async def run_pass(self, chunks: list) -> list:
        """One predictor pass over the gathered chunks; each chunk gets its rows of Q, or the exception of a
        re-run of it alone if the shared pass failed."""
        loop = asyncio.get_running_loop()
        prompts = [p for c in chunks for p in c.prompts]
        try:
            Q = await loop.run_in_executor(self.executor, self._timed, prompts)
        except Exception as exc:  # noqa: BLE001 - isolate the failing request(s) below
            self.failed_passes += 1
            if len(chunks) == 1:
                self.failed_requests += 1
                return [exc]
            results = []
            for chunk in chunks:
                try:
                    results.append(await loop.run_in_executor(self.executor, self._timed, chunk.prompts))
                except Exception as solo:  # noqa: BLE001
                    self.failed_passes += 1
                    self.failed_requests += 1
                    results.append(solo)
            return results
        out, start = [], 0
        for chunk in chunks:
            out.append(Q[start:start + len(chunk.prompts)])
            start += len(chunk.prompts)
        return out

    def _timed(self, prompts: list) -> np.ndarray:
        t0 = time.perf_counter()
        Q = self.predict(prompts)
        self.passes += 1
        self.prompts += len(prompts)
        self.pass_prompts.observe(len(prompts))
        self.pass_seconds.observe(time.perf_counter() - t0)
        return Q

    def stats(self) -> dict:
        """The same keys as `MicroBatcher.stats` (read by the server's /metrics)."""
        return {"passes": self.passes, "prompts": self.prompts, "failed_passes": self.failed_passes,
                "failed_requests": self.failed_requests, "queue_depth": self.waiting,
                "queue_capacity": self.max_queue, "pass_prompts": self.pass_prompts.snapshot(),
                "pass_seconds": self.pass_seconds.snapshot()}

    def close(self, timeout: float | None = None) -> None:
        self.closed = True


class ReplicaRouter(Router):
    """A Router whose micro-batching, once enabled, is the replica's `ServeBatching` (set as `serve_batching`);
    without one it is the plain Router."""

    serve_batching: ServeBatching | None = None

    def enable_batching(self, max_wait: float = 0.002, max_batch_prompts: int = 64,
                        max_batch_tokens: int | None = None, max_queue: int = 1024):
        if self.serve_batching is None:
            return super().enable_batching(max_wait, max_batch_prompts, max_batch_tokens, max_queue)
        if self.batcher is not None:
            raise RuntimeError("batching is already enabled; call disable_batching() first")
        self.serve_batching.configure(max_wait, max_batch_prompts, max_batch_tokens, max_queue)
        self.batcher = self.serve_batching
        return self.batcher


def _options(args: dict | None) -> tuple[dict, dict]:
    """(replica options, deployment options) from `args`, unknown keys refused."""
    args = dict(args or {})
    unknown = sorted(k for k in args if k not in RAY_OPTIONS and k not in DEPLOYMENT_OPTIONS)
    if unknown:
        raise ValueError(f"unknown option(s) {unknown}; known: {sorted(RAY_OPTIONS) + sorted(DEPLOYMENT_OPTIONS)}")
    replica = {k: _typed(k, args[k], v) if k in args else v for k, v in RAY_OPTIONS.items()}
    deployment = {k: _typed(k, args[k], v) if k in args else v for k, v in DEPLOYMENT_OPTIONS.items()}
    return replica, deployment


_INT_OPTIONS = {"max_length", "threads", "encoder_batch", "max_prompt_chars", "min_replicas", "max_replicas"}


def _typed(key: str, value, default):
    """`serve run ... key=value` passes strings: numbers and booleans are converted by the option's type."""
    if not isinstance(value, str):
        return value
    kind = bool if isinstance(default, bool) else int if key in _INT_OPTIONS else type(default)
    try:
        if kind is bool:
            if value.lower() not in ("true", "false", "1", "0"):
                raise ValueError(value)
            return value.lower() in ("true", "1")
        return kind(value) if kind in (int, float) else value
    except ValueError:
        raise ValueError(f"option {key}={value!r}: expected {kind.__name__}") from None


def _replica_app(router, opts: dict):
    """The replica's ASGI app: create_app with the options `routoo-fast serve` would give it."""
    from .server import create_app
    from .upstreams import Upstreams

    token = os.environ.get(opts["auth_token_env"]) if opts["auth_token_env"] else None
    if opts["auth_token_env"] and not token:
        raise RuntimeError(f"auth_token_env {opts['auth_token_env']}: that environment variable is not set on the "
                           "replica (pass it in the runtime_env's env_vars)")
    spend = affinity = None
    if opts["spend_caps"]:
        from .spend import SpendGuard

        spend = SpendGuard.from_file(opts["spend_caps"], database=opts["spend_db"])
    if opts["affinity_ttl"]:
        from .affinity import SessionAffinity

        affinity = SessionAffinity(opts["affinity_max_sessions"], opts["affinity_ttl"])
    upstreams = Upstreams.load(opts["upstreams"]) if opts["upstreams"] else None
    return create_app(router, upstreams, default_policy=opts["policy"], batching=not opts["no_batching"],
                      max_wait=opts["max_wait_ms"] / 1000.0, max_batch_prompts=opts["max_batch"],
                      max_batch_tokens=opts["max_batch_tokens"] or None, max_queue=opts["max_queue"],
                      auth_token=token, max_body_bytes=opts["max_body_bytes"],
                      max_prompts_per_request=opts["max_prompts_per_request"],
                      upstream_connect_timeout=opts["upstream_connect_timeout"],
                      upstream_read_timeout=opts["upstream_read_timeout"], spend=spend, affinity=affinity)


@serve.deployment(name="routoo", max_ongoing_requests=256, ray_actor_options={"num_cpus": 1})
@serve.ingress()
class RoutooDeployment:
    """One replica: loads the router once, builds the server's app around it, batches passes with @serve.batch."""

    def __init__(self, options: dict | None = None, num_cpus: float = 1.0):
        opts, _ = _options(options)
        if opts["malloc_mmap_threshold"]:
            from .batcher import limit_malloc_growth

            limit_malloc_growth(opts["malloc_mmap_threshold"])
        threads = opts["threads"] if opts["threads"] is not None else max(1, int(num_cpus))
        router = ReplicaRouter.from_pretrained(opts["router"], backend=opts["backend"],
                                               max_length=opts["max_length"], num_threads=threads,
                                               batch_size=opts["encoder_batch"],
                                               encoder_backend=opts["encoder_backend"])
        if opts["max_prompt_chars"] is not None:
            router.predictor.encoder.max_chars = opts["max_prompt_chars"]
        if opts["q_cache_bytes"]:
            router.enable_q_cache(opts["q_cache_bytes"])
        router.serve_batching = ServeBatching(self.predict_pass, router.predict_rows)
        self.router = router
        self.asgi_app = _replica_app(router, opts)

    def __serve_build_asgi_app__(self):
        return self.asgi_app

    @serve.batch(max_batch_size=64, batch_wait_timeout_s=0.002, batch_size_fn=_pass_units)
    async def predict_pass(self, chunks: list) -> list:
        return await self.router.serve_batching.run_pass(chunks)


def build_app(args: dict | None = None):
    """The Ray Serve application (`serve run routoo_fast.serve.ray_app:build_app key=value ...`): options from
    RAY_OPTIONS and DEPLOYMENT_OPTIONS. Autoscaling when max_replicas is given (min_replicas default 1,
    target_ongoing_requests per replica), else num_replicas fixed replicas."""
    opts, dep = _options(args)
    num_cpus = float(dep["num_cpus"])
    deployment_args = {"name": dep["name"], "ray_actor_options": {"num_cpus": num_cpus},
                       "max_ongoing_requests": int(dep["max_ongoing_requests"]),
                       "max_queued_requests": int(dep["max_queued_requests"])}
    if dep["max_replicas"] is not None:
        deployment_args["autoscaling_config"] = {
            "min_replicas": int(dep["min_replicas"] if dep["min_replicas"] is not None else 1),
            "max_replicas": int(dep["max_replicas"]),
            "target_ongoing_requests": float(dep["target_ongoing_requests"])}
    else:
        deployment_args["num_replicas"] = int(dep["num_replicas"])
    return RoutooDeployment.options(**deployment_args).bind(opts, num_cpus)


app = build_app  # `serve run routoo_fast.serve.ray_app:app` is the same builder
