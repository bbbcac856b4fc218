"""HTTP server for routing at high QPS (Starlette on uvicorn).

Endpoints:
- `POST /v1/route`: `{"prompts": [...] | "prompt": "...", "policy": "lambda=0.5" | {...}}` ->
  `{"decisions": [{"model", "predicted_quality", "expected_cost", "policy", "feasible"}, ...]}`.
- `POST /v1/chat/completions`: OpenAI-compatible. `model: "router"` (server default policy), `"router:<policy>"`
  or the extra field `routoo_policy` routes the last user message, then forwards the request to the chosen model's
  upstream (see `routoo_fast.upstreams`), streaming passed through as Server-Sent Events. The answer names the
  model in the `x-routoo-model` header, and in the `model` field of non-streamed answers. Any other model name
  configured in the upstreams file passes straight through.
- `GET /healthz`, `GET /metrics` (Prometheus text format).

Concurrent route requests share predictor passes through a `MicroBatcher` (unless `batching=False`). Errors are
OpenAI-style `{"error": {"message", "type"}}`: bad input 400, bad/missing token 401, upstream down or failing 502,
queue full 503 + Retry-After. The one `httpx.AsyncClient` and the batcher live in the app's lifespan.
"""
from __future__ import annotations

import contextlib
import hmac
import json
import logging
import math
import time
from dataclasses import replace
from typing import Any

import httpx
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.utils import floatToGoString
from starlette.applications import Starlette
from starlette.background import BackgroundTask
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from .batcher import DEFAULT_MAX_BATCH_TOKENS, BatcherClosed, QueueFull
from .encoder import InvalidPrompt, check_prompts
from .policies import parse_policy
from .upstreams import MissingAPIKey, Upstreams

__all__ = ["create_app", "ROUTER_MODEL"]

log = logging.getLogger("routoo_fast.server")

ROUTER_MODEL = "router"
_PATHS = ("/v1/route", "/v1/chat/completions", "/healthz", "/metrics")
_OPEN_PATHS = ("/healthz",)  # reachable without the bearer token (load balancer probes)


class HTTPError(Exception):
    """An error answer: status, message, OpenAI-style error type, extra headers."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error", headers: dict | None = None):
        super().__init__(message)
        self.status, self.message, self.kind, self.headers = status, message, kind, headers or {}


def _error_response(err: HTTPError) -> JSONResponse:
    return JSONResponse({"error": {"message": err.message, "type": err.kind}}, status_code=err.status,
                        headers=err.headers)


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
        self.chosen = Counter("routoo_chosen_model", "Prompts routed to each model", ["model"], registry=self.registry)
        self.spend = Counter("routoo_estimated_spend_usd", "Expected USD of routed calls, by model", ["model"],
                             registry=self.registry)
        self.batch_size = Histogram(
            "routoo_route_batch_prompts", "Prompts per route request", buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
            registry=self.registry,
        )
        self.upstream_errors = Counter("routoo_upstream_errors", "Failed upstream calls by model", ["model"],
                                       registry=self.registry)


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
    """Pure ASGI middleware: bearer-token check, then request count + latency (until the last body byte, so a
    streamed answer is timed whole). Pure ASGI rather than BaseHTTPMiddleware to keep streaming and speed intact."""

    def __init__(self, app, metrics: Metrics, auth_token: str | None):
        self.app, self.metrics = app, metrics
        self.auth = None if auth_token is None else f"Bearer {auth_token}".encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        path = scope["path"] if scope["path"] in _PATHS else "other"
        status = 500
        start = time.perf_counter()

        async def send_wrapper(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            if self.auth is not None and path not in _OPEN_PATHS and not self._authorised(scope):
                response = _error_response(HTTPError(401, "missing or invalid bearer token", "authentication_error",
                                                     {"WWW-Authenticate": "Bearer"}))
                return await response(scope, receive, send_wrapper)
            await self.app(scope, receive, send_wrapper)
        finally:
            self.metrics.requests.labels(path, str(status)).inc()
            self.metrics.latency.labels(path).observe(time.perf_counter() - start)

    def _authorised(self, scope) -> bool:
        for key, value in scope["headers"]:
            if key == b"authorization":
                return hmac.compare_digest(value, self.auth)
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
    auth_token: str | None = None,
    retry_after_s: int = 1,
    transport: httpx.AsyncBaseTransport | None = None,
):
    """The ASGI app: `uvicorn.run(create_app(Router.from_pretrained("default"), Upstreams.load(path)))`.

    router: a `routoo_fast.Router` (uses `model_names`, `check_policy`, `apredict`, `decide`, `enable_batching`,
    `disable_batching`).
    upstreams: where chat completions go (None: /v1/chat/completions answers 501).
    default_policy: the policy for model "router" with none given. batching, max_wait, max_batch_prompts,
    max_batch_tokens, max_queue: the micro-batcher (see `routoo_fast.batcher`). auth_token: if set, every path
    but /healthz needs `Authorization: Bearer <auth_token>`. transport: httpx transport for the upstream client.
    """
    default_policy = parse_policy(default_policy)
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
    metrics = Metrics()
    metrics.registry.register(_BatcherCollector(router))

    @contextlib.asynccontextmanager
    async def lifespan(app):
        if batching:
            router.enable_batching(max_wait=max_wait, max_batch_prompts=max_batch_prompts,
                                   max_batch_tokens=max_batch_tokens, max_queue=max_queue)
        app.state.client = httpx.AsyncClient(transport=transport, timeout=httpx.Timeout(60.0),
                                             limits=httpx.Limits(max_connections=1000, max_keepalive_connections=100))
        try:
            yield
        finally:
            await app.state.client.aclose()
            if batching:
                await run_in_threadpool(router.disable_batching)

    async def decide(prompts: list[str], policy) -> list:
        """Route prompts: bad policy or budget -> 400, a prompt that is not valid text -> 400 before it joins a
        shared pass, full queue -> 503; a predictor failure -> 500 for the request it fails on alone (the batcher
        re-runs a failed shared pass per request, so the neighbours get their answers)."""
        try:
            policy = router.check_policy(policy)
        except (ValueError, TypeError) as exc:
            raise HTTPError(400, str(exc)) from None
        try:
            check_prompts(prompts)
            Q = await router.apredict(prompts)
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
            return router.decide(prompts, Q, policy)
        except (ValueError, TypeError) as exc:  # e.g. a budget below the cheapest possible total
            raise HTTPError(400, str(exc)) from None

    def record(decisions) -> None:
        for d in decisions:
            metrics.chosen.labels(d.model).inc()
            if math.isfinite(d.expected_cost):
                metrics.spend.labels(d.model).inc(d.expected_cost)

    async def route_endpoint(request: Request) -> Response:
        try:
            body = await _json_object(request)
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
            record(decisions)
            return JSONResponse({"decisions": [d.to_dict() for d in decisions]})
        except HTTPError as err:
            return _error_response(err)

    async def chat_endpoint(request: Request) -> Response:
        try:
            body = await _json_object(request)
            model = body.get("model")
            if not isinstance(model, str) or not model:
                raise HTTPError(400, "missing field 'model' (a string: 'router', 'router:<policy>' or a model name)")
            messages = body.get("messages")
            if not isinstance(messages, list) or not messages:
                raise HTTPError(400, "missing field 'messages' (a non-empty list of chat messages)")
            if upstreams is None:
                raise HTTPError(501, "this server has no upstreams configured (start it with --upstreams FILE)",
                                "not_configured")
            headers = {}
            if model == ROUTER_MODEL or model.startswith(ROUTER_MODEL + ":"):
                spec = model[len(ROUTER_MODEL) + 1:] if ":" in model else None
                if spec is not None and "routoo_policy" in body:
                    raise HTTPError(400, "give the policy in the model name or in 'routoo_policy', not both")
                if spec is None:
                    spec = body.get("routoo_policy")
                policy = _policy(spec, default_policy)
                policy = _restrict_to_upstreams(policy, routable, upstreams)
                decision = (await decide([_last_user_text(messages)], policy))[0]
                chosen = decision.model
                headers = {"x-routoo-policy": decision.policy,
                           "x-routoo-predicted-quality": f"{decision.predicted_quality:.6g}",
                           "x-routoo-expected-cost": f"{decision.expected_cost:.6g}",
                           "x-routoo-feasible": str(decision.feasible).lower()}
            elif "routoo_policy" in body:
                raise HTTPError(400, f"'routoo_policy' applies only to model 'router', not to {model!r}")
            elif model in upstreams:
                chosen, decision = model, None
            else:
                raise HTTPError(400, f"unknown model {model!r}: use 'router', 'router:<policy>' or one of "
                                     f"{sorted(upstreams)}")
            headers["x-routoo-model"] = chosen
            response = await _forward(request.app.state.client, upstreams[chosen], body, headers, metrics)
            if decision is not None and response.status_code < 400:  # spend counts calls that were made
                record([decision])
            return response
        except HTTPError as err:
            return _error_response(err)

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok", "models": len(router.model_names), "batching": batching,
                             "upstreams": len(upstreams) if upstreams is not None else 0})

    async def metrics_endpoint(request: Request) -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    app = Starlette(
        routes=[
            Route("/v1/route", route_endpoint, methods=["POST"]),
            Route("/v1/chat/completions", chat_endpoint, methods=["POST"]),
            Route("/healthz", healthz, methods=["GET"]),
            Route("/metrics", metrics_endpoint, methods=["GET"]),
        ],
        lifespan=lifespan,
    )
    app.state.metrics = metrics
    app.add_middleware(_Instrument, metrics=metrics, auth_token=auth_token)
    return app


async def _json_object(request: Request) -> dict:
    raw = await request.body()
    try:
        body = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise HTTPError(400, f"request body is not valid JSON: {exc}") from None
    if not isinstance(body, dict):
        raise HTTPError(400, f"request body must be a JSON object, got {type(body).__name__}")
    return body


def _policy(spec, default):
    if spec is None:
        return default
    try:
        return parse_policy(spec)
    except (ValueError, TypeError) as exc:
        raise HTTPError(400, f"invalid policy: {exc}") from None


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


async def _relay(response: httpx.Response, name: str, metrics: Metrics):
    """The upstream's SSE bytes, unchanged; an upstream that breaks off mid-stream ends the stream (logged)."""
    try:
        async for chunk in response.aiter_raw():
            yield chunk
    except httpx.HTTPError as exc:
        metrics.upstream_errors.labels(name).inc()
        log.warning("upstream for %s broke off mid-stream: %s", name, type(exc).__name__)


async def _forward(client: httpx.AsyncClient, upstream, body: dict, headers: dict, metrics: Metrics) -> Response:
    """POST the request to the upstream with its model id; pass the answer (or its SSE stream) back."""
    payload = {k: v for k, v in body.items() if k != "routoo_policy"}
    payload["model"] = upstream.model
    try:
        auth = upstream.headers()
    except MissingAPIKey as exc:
        metrics.upstream_errors.labels(upstream.name).inc()
        raise HTTPError(502, str(exc), "upstream_error") from None
    request = client.build_request("POST", upstream.chat_url, json=payload, headers=auth,
                                   timeout=httpx.Timeout(upstream.timeout_s))
    try:
        response = await client.send(request, stream=True)
    except httpx.HTTPError as exc:
        metrics.upstream_errors.labels(upstream.name).inc()
        raise HTTPError(502, f"upstream for {upstream.name!r} unreachable or too slow: {type(exc).__name__}",
                        "upstream_error") from None
    if response.status_code >= 400:
        try:
            detail = await response.aread()
        except httpx.HTTPError:
            detail = b""
        finally:
            await response.aclose()
        if response.status_code >= 500 or response.status_code in (401, 403):
            # 401/403 mean *our* upstream key is wrong: the client can do nothing about it
            metrics.upstream_errors.labels(upstream.name).inc()
            text = detail[:500].decode("utf-8", "replace")
            raise HTTPError(502, f"upstream for {upstream.name!r} failed with HTTP {response.status_code}: {text}",
                            "upstream_error")
        # any other 4xx is about the client's request (bad parameter...): pass it through unchanged
        return Response(detail, status_code=response.status_code, headers=headers,
                        media_type=response.headers.get("content-type"))
    if payload.get("stream"):
        return StreamingResponse(_relay(response, upstream.name, metrics), status_code=response.status_code,
                                 headers=headers, media_type=response.headers.get("content-type", "text/event-stream"),
                                 background=BackgroundTask(response.aclose))
    try:
        raw = await response.aread()
    except httpx.HTTPError as exc:
        metrics.upstream_errors.labels(upstream.name).inc()
        raise HTTPError(502, f"upstream for {upstream.name!r} broke off: {type(exc).__name__}",
                        "upstream_error") from None
    finally:
        await response.aclose()
    try:
        answer = json.loads(raw)
    except (json.JSONDecodeError, UnicodeDecodeError):
        metrics.upstream_errors.labels(upstream.name).inc()
        raise HTTPError(502, f"upstream for {upstream.name!r} answered with a body that is not JSON",
                        "upstream_error") from None
    if isinstance(answer, dict):
        answer["model"] = upstream.name
    return JSONResponse(answer, headers=headers)
