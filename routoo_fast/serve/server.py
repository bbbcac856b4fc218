"""HTTP server for routing at high QPS (Starlette on uvicorn).

Endpoints:
- `POST /v1/route`: `{"prompts": [...] | "prompt": "...", "policy": "lambda=0.5" | {...}}` ->
  `{"decisions": [{"model", "predicted_quality", "expected_cost", "policy", "feasible"}, ...]}`.
- `POST /v1/chat/completions`: OpenAI-compatible. `model: "router"` (server default policy), `"router:<policy>"`
  or the extra field `routoo_policy` routes the last user message, then forwards the request to the chosen model's
  upstream (see `routoo_fast.serve.upstreams`), streaming relayed as Server-Sent Events (decoded: an upstream's gzip is
  undone, never passed on). One rule for `model`, streamed or not: the answer's `model` field is the upstream's
  own, untouched; the router model name that was chosen is in the `x-routoo-model` header, with
  `x-routoo-expected-cost`, `x-routoo-predicted-quality` and `x-routoo-route-ms` (the routing decision's time) on a
  routed answer, streamed or not. Any other model name configured in the upstreams file passes straight through.
  What each forwarded call really cost (its `usage` x the model's prices) is counted per model and per API key
  in /metrics (`routoo_fast.serve.accounting`).
- `GET /v1/models` (OpenAI's list format: `router`, example `router:<policy>` names, the upstream models),
  `GET /healthz`, `GET /metrics` (Prometheus text format).

Concurrent route requests share predictor passes through a `MicroBatcher` (unless `batching=False`). Every error
is JSON in OpenAI's format `{"error": {"message", "type", "param", "code"}}`: bad input 400 (bad JSON, NaN,
nesting too deep, a lone surrogate...), bad/missing token 401, unknown path 404, wrong method 405, body over
`max_body_bytes` 413 (counted while reading), upstream down or failing 502, upstream timeout 504, queue full 503 +
Retry-After, an upstream's own 4xx (429 with its Retry-After) passed through, anything unexpected 500 (logged). A
stream whose upstream fails after the 200 ends with `data: {"error": {...}}` instead of `data: [DONE]`. A client
that leaves while a non-streamed upstream call runs cancels that call. The one `httpx.AsyncClient` and the batcher
live in the app's lifespan.
"""
from __future__ import annotations

import contextlib
import hmac
import json
import logging
import asyncio
import math
import re
import time
from dataclasses import replace
from typing import Any

import httpx
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.utils import floatToGoString
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from .batcher import DEFAULT_MAX_BATCH_TOKENS, BatcherClosed, QueueFull
from ..encoder import InvalidPrompt, check_prompts
from ..policies import parse_policy
from ..q_cache import prometheus_collector as q_cache_collector
from .accounting import Accounting, bearer_key_id, usage_from_events
from .affinity import SessionAffinity, session_of
from .spend import SpendCapExceeded, SpendGuard, cheaper_half
from .upstreams import MissingAPIKey, Upstreams

__all__ = ["create_app", "ROUTER_MODEL"]

log = logging.getLogger("routoo_fast.serve.server")

ROUTER_MODEL = "router"
EXAMPLE_POLICIES = ("max_quality", "lambda=100", "min_quality=0.8", "max_cost=0.001")  # listed by /v1/models
_PATHS = ("/v1/route", "/v1/chat/completions", "/v1/models", "/healthz", "/metrics")
_OPEN_PATHS = ("/healthz",)  # reachable without the bearer token (load balancer probes)
_MAX_MESSAGE_CHARS = 2000  # error messages echo client input: keep them short
# upstream response headers a client needs, passed on with an upstream's own 4xx (429's Retry-After above all)
# Idle upstream connections are let go after 4 s, before the 5 s after which uvicorn-based upstreams (vLLM among
# them) close theirs: httpx's default of 5 s raced them and lost about 1 request in 3,000 in the soak test.
_UPSTREAM_POOL = httpx.Limits(max_connections=1000, max_keepalive_connections=100, keepalive_expiry=4.0)
_PASSED_HEADERS = ("retry-after", "retry-after-ms", "x-request-id")
_PASSED_PREFIXES = ("x-ratelimit-",)


class HTTPError(Exception):
    """An error answer: status, message, OpenAI-style error type, extra headers."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error", headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.kind, self.headers = status, message, kind, headers or {}


def _error_body(message: str, kind: str) -> dict:
    if len(message) > _MAX_MESSAGE_CHARS:
        message = message[:_MAX_MESSAGE_CHARS] + "..."
    return {"error": {"message": message, "type": kind, "param": None, "code": None}}


def _error_response(err: HTTPError) -> JSONResponse:
    return JSONResponse(_error_body(err.message, err.kind), status_code=err.status, headers=err.headers)


class Metrics:
    """The server's Prometheus metrics, in a registry of its own (so several apps can live in one process)."""

    def __init__(self):
        self.registry = CollectorRegistry()
        self.requests = Counter("routoo_requests", "HTTP requests by path and status", ["path", "status"],
                                registry=self.registry)
        self.latency = Histogram(
            "routoo_request_latency_seconds", "HTTP request latency, until the last body byte", ["path"],
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
            registry=self.registry,
        )
        self.in_flight = Gauge("routoo_requests_in_flight", "HTTP requests being served, until the last body byte",
                               ["path"], registry=self.registry)
        self.chosen = Counter("routoo_chosen_model", "Prompts routed to each model", ["model"], registry=self.registry)
        self.spend = Counter("routoo_estimated_spend_usd",
                             "Expected USD of routed chat completions forwarded upstream (not /v1/route decisions)",
                             ["model"], registry=self.registry)
        self.batch_size = Histogram(
            "routoo_route_batch_prompts", "Prompts per route request", buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
            registry=self.registry,
        )
        self.upstream_errors = Counter("routoo_upstream_errors", "Failed upstream calls by model", ["model"],
                                       registry=self.registry)
        self.upstream_latency = Histogram(
            "routoo_upstream_latency_seconds", "Upstream chat calls, from sending the request to the last body byte",
            ["model"], buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 30, 60, 120, 300), registry=self.registry,
        )
        self.upstream_ttfb = Histogram(
            "routoo_upstream_ttfb_seconds",
            "Upstream time to first body byte (for a stream: its first event), from sending the request",
            ["model"], buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60), registry=self.registry,
        )
        self.upstream_cancelled = Counter(
            "routoo_upstream_cancelled", "Non-streamed upstream calls cancelled because the client went away",
            ["model"], registry=self.registry)


class _BatcherCollector:
    """Reads the router's micro-batcher at scrape time (`MicroBatcher.stats()`): predictor passes, their sizes and
    latencies, prompts served, failed passes and the requests they failed, queue depth and capacity."""

    def __init__(self, router):
        self.router = router

    def collect(self):
        batcher = getattr(self.router, "batcher", None)
        stats = batcher.stats() if batcher is not None else None
        empty = {"buckets": [], "sum": 0.0}

        def counter(name, doc, key):
            family = CounterMetricFamily(name, doc)
            family.add_metric([], stats[key] if stats else 0)
            return family

        def gauge(name, doc, key):
            family = GaugeMetricFamily(name, doc)
            family.add_metric([], stats[key] if stats else 0)
            return family

        def histogram(name, doc, key):
            hist = stats[key] if stats else empty
            buckets = [(floatToGoString(bound), count) for bound, count in hist["buckets"]] or [("+Inf", 0)]
            return HistogramMetricFamily(name, doc, buckets=buckets, sum_value=hist["sum"])

        return [
            counter("routoo_predictor_passes", "Predictor passes run by the micro-batcher", "passes"),
            counter("routoo_predictor_prompts", "Prompts scored by the micro-batcher's passes", "prompts"),
            counter("routoo_predictor_failed_passes", "Predictor passes that raised (a shared one is then re-run "
                    "per request to isolate the failure)", "failed_passes"),
            counter("routoo_predictor_failed_requests", "Route requests failed by the predictor", "failed_requests"),
            histogram("routoo_predictor_pass_prompts", "Prompts per predictor pass", "pass_prompts"),
            histogram("routoo_predictor_pass_seconds", "Predictor pass latency", "pass_seconds"),
            gauge("routoo_batcher_queue_depth", "Requests waiting in the micro-batcher", "queue_depth"),
            gauge("routoo_batcher_queue_capacity", "Most requests the micro-batcher queues before answering 503",
                  "queue_capacity"),
        ]


class _Instrument:
    """Pure ASGI middleware: bearer-token check, then request count, in-flight gauge and latency (until the last
    body byte, so a streamed answer is timed whole); an exception no handler caught becomes a logged JSON 500 on a
    connection that stays open. Pure ASGI rather than BaseHTTPMiddleware to keep streaming and speed intact."""

    def __init__(self, app, metrics: Metrics, auth_token: str | None):
        self.app, self.metrics = app, metrics
        self.token = None if auth_token is None else auth_token.encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope["path"] if scope["path"] in _PATHS else "other"
        status, started = 500, False
        start = time.perf_counter()
        in_flight = self.metrics.in_flight.labels(path)
        in_flight.inc()

        async def send_wrapper(message):
            nonlocal status, started
            if message["type"] == "http.response.start":
                status, started = message["status"], True
            await send(message)

        try:
            if self.token is not None and path not in _OPEN_PATHS and not self._authorised(scope):
                response = _error_response(HTTPError(401, "missing or invalid bearer token", "authentication_error",
                                                     {"WWW-Authenticate": "Bearer"}))
                return await response(scope, receive, send_wrapper)
            await self.app(scope, receive, send_wrapper)
        except Exception:
            if started:  # mid-body: let the server drop the connection, so the answer cannot look complete
                raise
            log.exception("unhandled error in %s %s", scope.get("method"), scope["path"])
            response = _error_response(HTTPError(500, "internal server error (logged on the server)", "server_error"))
            await response(scope, receive, send_wrapper)
        finally:
            in_flight.dec()
            self.metrics.requests.labels(path, str(status)).inc()
            self.metrics.latency.labels(path).observe(time.perf_counter() - start)

    def _authorised(self, scope) -> bool:
        """`Authorization: Bearer <token>`, the scheme matched case-insensitively (RFC 7235 section 2.1)."""
        for key, value in scope["headers"]:
            if key == b"authorization":
                scheme, _, token = value.strip().partition(b" ")
                return scheme.lower() == b"bearer" and hmac.compare_digest(token.strip(), self.token)
        return False


def create_app(
    router,
    upstreams: Upstreams | None = None,
    *,
    default_policy: Any = "max_quality",
    batching: bool = True,
    max_wait: float = 0.002,
    max_batch_prompts: int = 64,
    max_batch_tokens: int | None = DEFAULT_MAX_BATCH_TOKENS,
    max_queue: int = 1024,
    max_prompts_per_request: int = 1024,
    max_body_bytes: int = 8 * 1024 * 1024,
    upstream_connect_timeout: float = 10.0,
    upstream_read_timeout: float = 120.0,
    auth_token: str | None = None,
    retry_after_s: int = 1,
    transport: httpx.AsyncBaseTransport | None = None,
    spend: SpendGuard | None = None,
    affinity: SessionAffinity | None = None,
):
    """The ASGI app: `uvicorn.run(create_app(Router.from_pretrained("default"), Upstreams.load(path)))`.

    router: a `routoo_fast.Router` (uses `model_names`, `check_policy`, `apredict`, `decide`, `enable_batching`,
    `disable_batching`).
    upstreams: where chat completions go (None: /v1/chat/completions answers 501).
    default_policy: the policy for model "router" with none given. batching, max_wait, max_batch_prompts,
    max_batch_tokens, max_queue: the micro-batcher (see `routoo_fast.serve.batcher`).
    max_prompts_per_request: most prompts in one /v1/route request (more: 400). max_body_bytes: most request body
    bytes (more: 413, counted while the body is read, so an oversized body is never held whole).
    upstream_connect_timeout, upstream_read_timeout: seconds to connect to an upstream, and the longest wait for its
    next bytes (an upstream's `timeout_s` overrides the read timeout); a timeout is 504, or an error event
    mid-stream. auth_token: if set, every path but /healthz needs `Authorization: Bearer <auth_token>` (scheme
    case-insensitive). transport: httpx transport for the upstream client.
    spend: spend caps per API key and overall (`routoo_fast.serve.spend.SpendGuard`): 429 at a cap, routing
    among cheaper models near one, every forwarded chat charged.
    affinity: session affinity of routed chats (`routoo_fast.serve.affinity.SessionAffinity`; None = off).
    """
    default_policy = parse_policy(default_policy)
    for name, value in (("max_prompts_per_request", max_prompts_per_request), ("max_body_bytes", max_body_bytes)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
    for name, value in (("upstream_connect_timeout", upstream_connect_timeout),
                        ("upstream_read_timeout", upstream_read_timeout)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf:
            raise ValueError(f"{name} must be a positive number of seconds, got {value!r}")
    if upstreams is not None:
        if not isinstance(upstreams, Upstreams):
            raise TypeError(f"upstreams must be an Upstreams, got {type(upstreams).__name__}")
        routable = [m for m in router.model_names if m in upstreams]
        for name, env in upstreams.missing_keys().items():
            log.warning("upstream for %s: environment variable %s is not set; calls to it will fail", name, env)
    else:
        routable = []
    if auth_token is not None and (not isinstance(auth_token, str) or not auth_token):
        raise ValueError("auth_token must be a non-empty string or None")
    if spend is not None and not isinstance(spend, SpendGuard):
        raise TypeError(f"spend must be a SpendGuard, got {type(spend).__name__}")
    if affinity is not None and not isinstance(affinity, SessionAffinity):
        raise TypeError(f"affinity must be a SessionAffinity, got {type(affinity).__name__}")
    model_index = {m: i for i, m in enumerate(router.model_names)}
    metrics = Metrics()
    metrics.registry.register(_BatcherCollector(router))
    metrics.registry.register(q_cache_collector(router))  # hits/misses of router.q_cache (zeros while it is off)
    accounting = Accounting(router.cost_model, metrics.registry)  # actual USD from usage, per model and key
    if affinity is not None:
        metrics.registry.register(affinity)
    timeouts = _Timeouts(float(upstream_connect_timeout), float(upstream_read_timeout))
    created = int(time.time())
    model_list = [{"id": ROUTER_MODEL, "object": "model", "created": created, "owned_by": "routoo-fast"}]
    model_list += [{"id": f"{ROUTER_MODEL}:{p}", "object": "model", "created": created, "owned_by": "routoo-fast"}
                   for p in EXAMPLE_POLICIES]
    if not routable:  # 'router' can only answer chats when some router model has an upstream
        model_list = []
    model_list += [{"id": name, "object": "model", "created": created, "owned_by": "upstream"}
                   for name in (upstreams or ())]

    @contextlib.asynccontextmanager
    async def lifespan(app):
        if batching:
            router.enable_batching(max_wait=max_wait, max_batch_prompts=max_batch_prompts,
                                   max_batch_tokens=max_batch_tokens, max_queue=max_queue)
        app.state.client = httpx.AsyncClient(transport=transport, timeout=timeouts.for_upstream(None),
                                             limits=_UPSTREAM_POOL)
        try:
            yield
        finally:
            await app.state.client.aclose()
            if batching:
                await run_in_threadpool(router.disable_batching)

    async def decide(prompts: list[str], policy, with_q: bool = False, restrict=None):
        """Route prompts: bad policy or budget -> 400, a prompt that is not valid text -> 400 before it joins a
        shared pass, full queue -> 503; a predictor failure -> 500 for the request it fails on alone (the batcher
        re-runs a failed shared pass per request, so the neighbours get their answers). with_q: also return Q and
        the expected costs C the decisions were made with. restrict: (policy, C) -> policy, applied once C is
        known (spend-cap tightening)."""
        try:
            policy = router.check_policy(policy)
        except (ValueError, TypeError, OverflowError) as exc:
            raise HTTPError(400, str(exc)) from None
        try:
            check_prompts(prompts)
            Q, C = await router.aestimate(prompts)
        except InvalidPrompt as exc:
            raise HTTPError(400, str(exc)) from None
        except QueueFull:
            raise HTTPError(503, "server busy: routing queue is full, retry shortly", "server_busy",
                            {"Retry-After": str(retry_after_s)}) from None
        except BatcherClosed:
            raise HTTPError(503, "server is shutting down", "server_busy",
                            {"Retry-After": str(retry_after_s)}) from None
        except Exception as exc:  # the predictor failed: our fault, not the client's
            log.exception("predictor pass failed")
            raise HTTPError(500, f"routing failed: {type(exc).__name__}: {exc}", "server_error") from None
        try:
            if restrict is not None:
                policy = restrict(policy, C)
            decisions = router.decide(prompts, Q, policy, C)
            return (decisions, Q, C) if with_q else decisions
        except (ValueError, TypeError) as exc:  # e.g. a budget below the cheapest possible total
            raise HTTPError(400, str(exc)) from None

    def record(decisions, forwarded: bool) -> None:
        """Count routing decisions; spend only for chat calls actually forwarded (a /v1/route decision costs
        nothing by itself)."""
        for d in decisions:
            metrics.chosen.labels(d.model).inc()
            if forwarded and math.isfinite(d.expected_cost):
                metrics.spend.labels(d.model).inc(d.expected_cost)

    async def route_endpoint(request: Request) -> Response:
        try:
            body = await _json_object(request, max_body_bytes)
            if "prompts" in body and "prompt" in body:
                raise HTTPError(400, "give either 'prompt' or 'prompts', not both")
            if "prompt" in body:
                prompts = [body["prompt"]]
            elif "prompts" in body:
                prompts = body["prompts"]
            else:
                raise HTTPError(400, "missing field 'prompts' (a list of strings) or 'prompt' (a string)")
            if not isinstance(prompts, list) or not all(isinstance(p, str) for p in prompts):
                raise HTTPError(400, "'prompts' must be a list of strings")
            if not prompts:
                raise HTTPError(400, "'prompts' is empty")
            if len(prompts) > max_prompts_per_request:
                raise HTTPError(400, f"at most {max_prompts_per_request} prompts per request, got {len(prompts)}")
            policy = _policy(body.get("policy"), default_policy)
            metrics.batch_size.observe(len(prompts))
            decisions = await decide(prompts, policy)
            record(decisions, forwarded=False)
            return JSONResponse({"decisions": [d.to_dict() for d in decisions]})
        except HTTPError as err:
            return _error_response(err)

    async def chat_endpoint(request: Request) -> Response:
        try:
            body = await _json_object(request, max_body_bytes)
            model = body.get("model")
            if not isinstance(model, str) or not model:
                raise HTTPError(400, "missing field 'model' (a string: 'router', 'router:<policy>' or a model name)")
            messages = body.get("messages")
            if not isinstance(messages, list) or not messages:
                raise HTTPError(400, "missing field 'messages' (a non-empty list of chat messages)")
            stream = body.get("stream", False)
            if stream is not None and not isinstance(stream, bool):
                raise HTTPError(400, f"'stream' must be true or false, got {stream!r}")
            if upstreams is None:
                raise HTTPError(501, "this server has no upstreams configured (start it with --upstreams FILE)",
                                "not_configured")
            key = bearer_key_id(request.headers.get("authorization"))
            spend_state = None
            if spend is not None:
                try:
                    spend_state = await run_in_threadpool(spend.check, key)
                except SpendCapExceeded as exc:
                    raise HTTPError(429, exc.message, "insufficient_quota",
                                    {"Retry-After": str(exc.retry_after)}) from None
            headers = {}
            if model == ROUTER_MODEL or model.startswith(ROUTER_MODEL + ":"):
                spec = model[len(ROUTER_MODEL) + 1:] if ":" in model else None
                if spec is not None and "routoo_policy" in body:
                    raise HTTPError(400, "give the policy in the model name or in 'routoo_policy', not both")
                if spec is None:
                    spec = body.get("routoo_policy")
                policy = _policy(spec, default_policy)
                policy = _restrict_to_upstreams(policy, routable, upstreams)
                route_start = time.perf_counter()
                text = _check_text(_last_user_text(messages), "the last user message")
                restrict = None
                if spend_state is not None and spend_state.tighten:  # near a cap: the cheaper half only
                    restrict = lambda p, C: cheaper_half(p, router, text, C[0])  # noqa: E731
                    headers["x-routoo-spend-tightened"] = "true"
                decisions, Q, C = await decide([text], policy, with_q=True, restrict=restrict)
                decision = decisions[0]
                if affinity is not None:  # a conversation stays on its model unless a stronger one is asked for
                    costs = C[0]
                    decision, headers["x-routoo-affinity"] = affinity.resolve(
                        session_of(body, request.headers, key)[0], decision, policy.models,
                        lambda m: float(Q[0, model_index[m]]), lambda m: float(costs[model_index[m]]))
                route_ms = (time.perf_counter() - route_start) * 1000.0
                chosen = decision.model
                headers |= {"x-routoo-policy": decision.policy,
                           "x-routoo-predicted-quality": f"{decision.predicted_quality:.6g}",
                           "x-routoo-expected-cost": f"{decision.expected_cost:.6g}",
                           "x-routoo-feasible": str(decision.feasible).lower(),
                           "x-routoo-route-ms": f"{route_ms:.3f}"}
            elif "routoo_policy" in body:
                raise HTTPError(400, f"'routoo_policy' applies only to model 'router', not to {model!r}")
            elif model in upstreams:
                chosen, decision = model, None
            else:
                raise HTTPError(400, f"unknown model {model!r}: use 'router', 'router:<policy>' or one of "
                                     f"{sorted(upstreams)}")
            headers["x-routoo-model"] = chosen
            payload = {k: v for k, v in body.items() if k != "routoo_policy"}

            async def on_usage(usage) -> None:  # once per call that answered, with its usage (None: none given)
                usd = accounting.record(chosen, key, usage)
                if spend is None:
                    return
                if usd is None or not math.isfinite(usd):  # no usage: charge what the router expected
                    usd = decision.expected_cost if decision is not None else 0.0
                try:
                    await run_in_threadpool(spend.charge, key, chosen, usd if math.isfinite(usd) else 0.0)
                except Exception:  # noqa: BLE001 - the answer stands; the failure is logged loudly
                    log.exception("charging %s for a call to %s failed", key, chosen)

            call = _forward(request.app.state.client, upstreams[chosen], payload, headers, metrics, timeouts,
                            on_usage)
            if stream:  # the relay ends when the client goes (Starlette cancels it)
                response = await call
            else:  # nothing reads from the client while we wait: watch for it leaving, and cancel the call
                response = await _unless_client_leaves(request, call)
                if response is None:
                    metrics.upstream_cancelled.labels(chosen).inc()
                    log.info("client left during a non-streamed call to %s: upstream call cancelled", chosen)
                    return Response(status_code=499)  # nginx's "client closed request"; nobody reads it
            if decision is not None and response.status_code < 400:  # spend counts calls that were made
                record([decision], forwarded=True)
            return response
        except HTTPError as err:
            return _error_response(err)

    async def models_endpoint(request: Request) -> Response:
        return JSONResponse({"object": "list", "data": model_list})

    async def model_endpoint(request: Request) -> Response:
        name = request.path_params["model"]
        for entry in model_list:
            if entry["id"] == name:
                return JSONResponse(entry)
        return _error_response(HTTPError(404, f"model {name!r} not found (GET /v1/models lists them)",
                                         "not_found_error"))

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok", "models": len(router.model_names), "batching": batching,
                             "upstreams": len(upstreams) if upstreams is not None else 0})

    async def metrics_endpoint(request: Request) -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    app = Starlette(
        routes=[
            Route("/v1/route", route_endpoint, methods=["POST"]),
            Route("/v1/chat/completions", chat_endpoint, methods=["POST"]),
            Route("/v1/models", models_endpoint, methods=["GET"]),
            Route("/v1/models/{model:path}", model_endpoint, methods=["GET"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/metrics", metrics_endpoint, methods=["GET"]),
        ],
        lifespan=lifespan,
        exception_handlers={HTTPException: _http_exception},
    )
    app.state.metrics = metrics
    app.add_middleware(_Instrument, metrics=metrics, auth_token=auth_token)
    return app


async def _json_object(request: Request, max_bytes: int) -> dict:
    """The request body as a JSON object; every way it can be bad is a 400 (413 if too big) naming the fault."""
    raw = await _read_body(request, max_bytes)
    try:
        body = json.loads(raw, parse_constant=_reject_constant)
    except RecursionError:
        raise HTTPError(400, "request body is nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as exc:  # bad JSON, NaN/Infinity, an integer over Python's digit limit
        raise HTTPError(400, f"request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise HTTPError(400, f"request body must be a JSON object, got {type(body).__name__}")
    return body


async def _read_body(request: Request, max_bytes: int) -> bytes:
    """The body, refused with 413 as soon as it is known to exceed max_bytes (Content-Length, else while reading)."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isdigit():
            raise HTTPError(400, f"invalid Content-Length header {declared[:40]!r}")
        if int(declared) > max_bytes:
            raise HTTPError(413, f"request body is {declared} bytes, over the limit of {max_bytes} bytes "
                                 "(--max-body-bytes)", "request_too_large")
    chunks, size = [], 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > max_bytes:
                raise HTTPError(413, f"request body is over the limit of {max_bytes} bytes (--max-body-bytes)",
                                "request_too_large")
            chunks.append(chunk)
    except ClientDisconnect:
        raise HTTPError(499, "client closed the request", "client_closed") from None
    return b"".join(chunks)


def _reject_constant(name: str):
    raise ValueError(f"{name} is not a JSON value (use a number or null)")


async def _http_exception(request: Request, exc: HTTPException) -> Response:
    """Starlette's 404 (no such path) and 405 (wrong method), as JSON errors like every other answer."""
    if exc.status_code == 404:
        message, kind = f"no such endpoint: {request.method} {request.url.path}", "not_found_error"
    elif exc.status_code == 405:
        allowed = (exc.headers or {}).get("Allow", "")
        message = f"method {request.method} is not allowed on {request.url.path} (allowed: {allowed})"
        kind = "invalid_request_error"
    else:
        message, kind = str(exc.detail), "invalid_request_error"
    return _error_response(HTTPError(exc.status_code, message, kind, dict(exc.headers or {})))


def _policy(spec, default):
    if spec is None:
        return default
    try:
        return parse_policy(spec)
    except (ValueError, TypeError, OverflowError) as exc:  # OverflowError: an integer too big for a float
        raise HTTPError(400, f"invalid policy: {exc}") from None
    except RecursionError:
        raise HTTPError(400, "invalid policy: nested too deeply") from None


def _restrict_to_upstreams(policy, routable: list[str], upstreams: Upstreams):
    """Chat requests may only be routed to models the server can call."""
    if policy.models is None:
        if not routable:
            raise HTTPError(501, "none of the router's models has an upstream configured", "not_configured")
        return replace(policy, models=tuple(routable))
    missing = [m for m in policy.models if m not in upstreams]
    if missing:
        raise HTTPError(400, f"policy models {missing} have no upstream configured (configured: {sorted(upstreams)})")
    return policy


def _last_user_text(messages: list) -> str:
    """The text the router scores: the last user message (string content, or the text parts of a content list)."""
    for message in reversed(messages):
        if not isinstance(message, dict):
            raise HTTPError(400, "each message must be an object with 'role' and 'content'")
        if message.get("role") != "user":
            continue
        content = message.get("content")
        if isinstance(content, str):
            return content
        if isinstance(content, list):
            texts = [p.get("text") for p in content if isinstance(p, dict) and p.get("type") == "text"]
            if texts and all(isinstance(t, str) for t in texts):
                return "\n".join(texts)
        raise HTTPError(400, "the last user message has no text content to route on")
    raise HTTPError(400, "no user message to route on")


def _check_text(text: str, what: str) -> str:
    """Text for the predictor must be valid Unicode: JSON's \\ud800 escapes can smuggle in a lone surrogate."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise HTTPError(400, f"{what} holds a lone UTF-16 surrogate ({text[exc.start]!r} at character {exc.start}), "
                             "which is not valid Unicode") from None
    return text


class _Timeouts:
    """Upstream timeouts: connect, and read (the longest wait for the next bytes; an upstream's timeout_s wins)."""

    def __init__(self, connect: float, read: float):
        self.connect, self.read = connect, read

    def for_upstream(self, upstream) -> httpx.Timeout:
        read = self.read if upstream is None or upstream.timeout_s is None else upstream.timeout_s
        return httpx.Timeout(connect=self.connect, read=read, write=read, pool=self.connect)

    def describe(self, exc: httpx.TimeoutException, upstream) -> str:
        if isinstance(exc, httpx.ConnectTimeout):
            return f"could not connect within {self.connect:g} s"
        if isinstance(exc, httpx.PoolTimeout):
            return f"no free connection within {self.connect:g} s"
        return f"sent nothing for {self.for_upstream(upstream).read:g} s"


async def _unless_client_leaves(request: Request, call):
    """Await `call`, but cancel it and return None if the client disconnects first (its body is read by now, so
    the next ASGI message can only be 'http.disconnect')."""

    async def client_gone():
        while (await request.receive())["type"] != "http.disconnect":
            pass

    task, watch = asyncio.ensure_future(call), asyncio.ensure_future(client_gone())
    try:
        await asyncio.wait((task, watch), return_when=asyncio.FIRST_COMPLETED)
    finally:
        if not task.done():
            task.cancel()
        watch.cancel()
    if task.cancelled() or not task.done():
        with contextlib.suppress(asyncio.CancelledError):
            await task
        return None
    return task.result()


_SSE_BOUNDARY = re.compile(rb"\r\n\r\n|\n\n|\r\r")
_LINE_BREAK = re.compile(rb"\r\n|\r|\n")
_MAX_PENDING = 1 << 20  # an "event" this long without a blank line is not SSE: pass it on


def _sse_error(message: str, kind: str) -> bytes:
    return b"data: " + json.dumps(_error_body(message, kind)).encode() + b"\n\n"


def _ends_with_done(events: bytes) -> bool:
    last = _LINE_BREAK.split(events.strip())[-1].strip()
    return last in (b"data: [DONE]", b"data:[DONE]")


async def _relay(response: httpx.Response, upstream, metrics: Metrics, timeouts: _Timeouts, started: float,
                 on_usage=None):
    """The upstream's Server-Sent Events, decoded (gzip undone) and passed on whole events at a time. If the
    upstream breaks off, stalls past the read timeout or ends without `data: [DONE]`, the stream ends with an
    error event in OpenAI's format, `data: {"error": {...}}`, which the openai client raises as an APIError; a
    half-sent event is dropped rather than passed on as garbage. `on_usage` is awaited with the stream's last
    `usage` (None without one) once the stream has ended: before `data: [DONE]` is passed on, so a client that
    has the whole answer has been charged for it."""
    name = upstream.name
    pending, saw_done, first, usage = b"", False, True, None

    async def report():
        nonlocal on_usage
        if on_usage is not None:
            hook, on_usage = on_usage, None
            await hook(usage)
    error = None
    try:
        async for chunk in response.aiter_bytes():
            if first and chunk:
                metrics.upstream_ttfb.labels(name).observe(time.perf_counter() - started)
                first = False
            pending += chunk
            cut = max((m.end() for m in _SSE_BOUNDARY.finditer(pending, max(0, len(pending) - len(chunk) - 3))),
                      default=0)
            if cut:
                out, pending = pending[:cut], pending[cut:]
                saw_done = _ends_with_done(out)
                usage = usage_from_events(out) or usage
                if saw_done:
                    await report()
                yield out
            elif len(pending) > _MAX_PENDING:
                out, pending, saw_done = pending, b"", False
                yield out
        if pending.strip():  # a last event without its closing blank line
            saw_done = _ends_with_done(pending)
            usage = usage_from_events(pending) or usage
            yield pending + b"\n\n"
        if not saw_done:
            error = (f"upstream for {name!r} ended the stream without [DONE]; the answer may be incomplete",
                     "upstream_error")
    except httpx.TimeoutException as exc:
        error = (f"upstream for {name!r} stalled mid-stream: it {timeouts.describe(exc, upstream)}",
                 "upstream_timeout")
    except httpx.HTTPError as exc:
        error = (f"upstream for {name!r} broke off mid-stream: {type(exc).__name__}", "upstream_error")
    except Exception as exc:  # noqa: BLE001 - the client must hear of it; the traceback goes to the log
        log.exception("relaying the stream of %s failed", name)
        error = (f"relaying the upstream's stream failed: {type(exc).__name__}", "server_error")
    except (asyncio.CancelledError, GeneratorExit):  # the client went away: the call still counts
        if on_usage is not None:
            _detached(on_usage(usage))
        raise
    finally:
        await response.aclose()
    metrics.upstream_latency.labels(name).observe(time.perf_counter() - started)
    await report()
    if error is not None:
        metrics.upstream_errors.labels(name).inc()
        log.warning("stream from %s ended with an error event: %s", name, error[0])
        yield _sse_error(*error)


_DETACHED: set = set()  # tasks that outlive the request that started them (strong references until done)


def _detached(coro) -> None:
    """Run `coro` as a task of its own, e.g. from a relay being cancelled."""
    task = asyncio.get_running_loop().create_task(coro)
    _DETACHED.add(task)
    task.add_done_callback(_DETACHED.discard)


def _upstream_failure(exc: httpx.HTTPError, name: str, upstream, metrics: Metrics, timeouts: _Timeouts,
                      during: str, broken: str) -> HTTPError:
    """The client's error for an httpx failure with an upstream, counted in upstream_errors: 504 for a timeout,
    else 502. during: where a timeout struck ("" or " mid-answer"); broken: what any other failure was."""
    metrics.upstream_errors.labels(name).inc()
    if isinstance(exc, httpx.TimeoutException):
        return HTTPError(504, f"upstream for {name!r} timed out{during}: it {timeouts.describe(exc, upstream)}",
                         "upstream_timeout")
    return HTTPError(502, f"upstream for {name!r} {broken}: {type(exc).__name__}", "upstream_error")


def _passed_headers(response: httpx.Response) -> dict:
    return {k: v for k, v in response.headers.items()
            if k in _PASSED_HEADERS or k.startswith(_PASSED_PREFIXES)}


async def _forward(client: httpx.AsyncClient, upstream, payload: dict, headers: dict, metrics: Metrics,
                   timeouts: _Timeouts, on_usage=None) -> Response:
    """POST the request to the upstream with its model id; pass the answer (or its SSE stream) back. The request
    is built here, where a body that cannot be sent (a lone surrogate, nesting too deep) is a 400. `on_usage` (an
    async callable) hears the answer's `usage` (None without one) once a 2xx answer has come back whole."""
    name = upstream.name
    try:
        content = json.dumps({**payload, "model": upstream.model}, ensure_ascii=False, allow_nan=False,
                             separators=(",", ":")).encode("utf-8")
    except UnicodeEncodeError as exc:
        bad = exc.object[exc.start] if isinstance(exc.object, str) else "?"
        raise HTTPError(400, f"request holds a lone UTF-16 surrogate ({bad!r}), which is not valid Unicode and "
                             "cannot be forwarded") from None
    except RecursionError:
        raise HTTPError(400, "request body is nested too deeply to forward") from None
    except (ValueError, TypeError) as exc:
        raise HTTPError(400, f"request cannot be forwarded as JSON: {exc}") from None
    try:
        auth = upstream.headers()
    except MissingAPIKey as exc:
        metrics.upstream_errors.labels(name).inc()
        raise HTTPError(502, str(exc), "upstream_error") from None
    request = client.build_request("POST", upstream.chat_url, content=content,
                                   headers={**auth, "content-type": "application/json"},
                                   timeout=timeouts.for_upstream(upstream))
    started = time.perf_counter()
    try:
        try:
            response = await client.send(request, stream=True)
        except (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError) as exc:
            # A pooled keep-alive connection that the upstream closed as we reused it (servers drop idle ones after
            # about 5 s, uvicorn and vLLM among them) fails before any response byte: send once more, on a fresh
            # connection, as the openai client itself does on a connection error.
            log.info("upstream %s: %s before any response byte; sending once more", name, type(exc).__name__)
            response = await client.send(request, stream=True)
    except httpx.HTTPError as exc:
        raise _upstream_failure(exc, name, upstream, metrics, timeouts, "", "unreachable") from None
    if response.status_code >= 400:
        try:
            detail = await response.aread()
        except httpx.HTTPError:
            detail = b""
        finally:
            await response.aclose()
        if response.status_code >= 500 or response.status_code in (401, 403):
            # 401/403 mean *our* upstream key is wrong: the client can do nothing about it
            metrics.upstream_errors.labels(name).inc()
            text = detail[:500].decode("utf-8", "replace")
            raise HTTPError(502, f"upstream for {name!r} failed with HTTP {response.status_code}: {text}",
                            "upstream_error")
        # any other 4xx is about the client's request (bad parameter, rate limit...): pass it on, with the headers
        # that tell the client when to retry
        return Response(detail, status_code=response.status_code, headers={**_passed_headers(response), **headers},
                        media_type=response.headers.get("content-type"))
    if payload.get("stream"):
        return StreamingResponse(_relay(response, upstream, metrics, timeouts, started, on_usage),
                                 status_code=response.status_code, headers=headers,
                                 media_type=response.headers.get("content-type", "text/event-stream"),
                                 background=BackgroundTask(response.aclose))
    chunks = []
    try:
        async for chunk in response.aiter_bytes():
            if chunk and not chunks:
                metrics.upstream_ttfb.labels(name).observe(time.perf_counter() - started)
            chunks.append(chunk)
    except httpx.HTTPError as exc:
        raise _upstream_failure(exc, name, upstream, metrics, timeouts, " mid-answer", "broke off") from None
    finally:
        await response.aclose()
    metrics.upstream_latency.labels(name).observe(time.perf_counter() - started)
    raw = b"".join(chunks)
    try:
        answer = json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError):
        metrics.upstream_errors.labels(name).inc()
        raise HTTPError(502, f"upstream for {name!r} answered with a body that is not JSON",
                        "upstream_error") from None
    if on_usage is not None:
        await on_usage(answer.get("usage") if isinstance(answer, dict) else None)
    return Response(raw, headers=headers, media_type="application/json")
