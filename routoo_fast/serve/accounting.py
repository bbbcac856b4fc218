"""What forwarded chats really cost: the upstream's `usage` priced by the router's one cost model, per model and per
API key, in /metrics.

    actual USD = prompt_tokens x input price + completion_tokens x output price     (`CostModel.call_cost`)

Non-streamed answers carry `usage` in their body. A stream carries it only when the request asked for it with
`"stream_options": {"include_usage": true}` (OpenAI's final chunk with `usage` and no choices); the server does not
add that option itself (it would change the chunks a client sees), so a stream without it counts no actual cost:
`routoo_usage_missing_total{model}` counts those calls. A model the cost model does not price (a pass-through
upstream that is not one of the router's models) counts tokens but no USD.

API keys are labelled by `key_id(secret)`: "k-" and 12 hex digits of a keyed BLAKE2b of the bearer token, short
and not reversible (the secret never reaches a label, a log line or the spend database). A request without a
bearer token is "anonymous".
"""
from __future__ import annotations

import hashlib
import json
import math
import re

from prometheus_client import Counter

__all__ = ["key_id", "bearer_key_id", "usage_from_events", "usage_tokens", "Accounting", "ANONYMOUS"]

ANONYMOUS = "anonymous"
_KEY_PERSON = b"routoo-key-id"  # BLAKE2b personalisation: these ids match no other hash of the same secret
_LINE_BREAK = re.compile(rb"\r\n|\r|\n")


def key_id(secret: str) -> str:
    """The short, non-reversible label of an API key: "k-" + 12 hex digits (48 bits of BLAKE2b)."""
    if not isinstance(secret, str) or not secret:
        raise ValueError("key_id needs a non-empty key")
    return "k-" + hashlib.blake2b(secret.encode("utf-8", "surrogatepass"), digest_size=6,
                                  person=_KEY_PERSON).hexdigest()


def bearer_key_id(authorization: str | None) -> str:
    """`key_id` of the token in an `Authorization: Bearer <token>` header value; ANONYMOUS without one."""
    if not authorization:
        return ANONYMOUS
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        return ANONYMOUS
    return key_id(token)


def usage_tokens(usage) -> tuple[int, int] | None:
    """(prompt_tokens, completion_tokens) of an OpenAI `usage` object, or None where it is absent or malformed."""
    if not isinstance(usage, dict):
        return None
    prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
    for value in (prompt, completion):
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            return None
    return prompt, completion


def usage_from_events(events: bytes):
    """The last `usage` object in a run of Server-Sent Events (whole events), or None. Only events that mention
    "usage" are parsed, so a stream without it costs one substring search per relayed piece."""
    if b'"usage"' not in events:
        return None
    found = None
    for line in _LINE_BREAK.split(events):
        line = line.strip()
        if not line.startswith(b"data:"):
            continue
        data = line[5:].strip()
        if b'"usage"' not in data:
            continue
        try:
            obj = json.loads(data)
        except (ValueError, UnicodeDecodeError, RecursionError):
            continue
        if isinstance(obj, dict) and isinstance(obj.get("usage"), dict):
            found = obj["usage"]
    return found


class Accounting:
    """Prices forwarded calls from their usage through `cost_model` and counts them in `registry`."""

    def __init__(self, cost_model, registry):
        self.cost_model = cost_model
        self.actual = Counter("routoo_actual_spend_usd",
                              "USD of forwarded chats from the upstream's usage x the model's prices",
                              ["model", "key"], registry=registry)
        self.tokens = Counter("routoo_upstream_tokens", "Tokens the upstream reported in usage",
                              ["model", "key", "kind"], registry=registry)
        self.missing = Counter("routoo_usage_missing",
                               "Forwarded chats whose answer carried no usage (a stream without "
                               "stream_options.include_usage): no actual cost counted", ["model"], registry=registry)

    def record(self, model: str, key: str, usage) -> float | None:
        """Count one forwarded call; its actual USD, or None where usage is missing or the model has no price."""
        tokens = usage_tokens(usage)
        if tokens is None:
            self.missing.labels(model).inc()
            return None
        prompt, completion = tokens
        self.tokens.labels(model, key, "prompt").inc(prompt)
        self.tokens.labels(model, key, "completion").inc(completion)
        if model not in self.cost_model.models:
            return None
        usd = self.cost_model.call_cost(model, prompt, completion)
        if math.isfinite(usd):
            self.actual.labels(model, key).inc(usd)
        return usd
