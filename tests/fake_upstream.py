"""A small, real OpenAI-compatible chat-completions server for tests, plus a helper that runs any ASGI app
on uvicorn in a background thread on 127.0.0.1 with a free port.

The "LLM" is deterministic so tests can check exactly what came back: it answers
`"<model> says: <last user message reversed word by word>"`, non-streamed as one chat.completion object or
streamed as Server-Sent Events (one chunk per word, then `data: [DONE]`), like the OpenAI API. Its `usage` is
`fake_usage(text)` (7 prompt tokens, one completion token per word); a stream carries it in a last chunk with no
choices only when asked with `"stream_options": {"include_usage": true}`, as OpenAI's does.

Behaviour switches (faults to inject), chosen by the suffix of the upstream model id the request names:
- `*-fail`: answers 500 with an OpenAI-style error (the router server must turn this into 502);
- `*-badjson`: answers 200 with a body that is not JSON;
- `*-slow`: waits `slow_s` seconds before answering;
- `*-ratelimit`: answers 429 with `Retry-After: 7`;
- `*-gzip`: the answer (streamed or not) is gzip-compressed, with `Content-Encoding: gzip`; a stream is
  compressed chunk by chunk (sync flushes), so it really arrives in pieces;
- `*-drop`: sends the status line and part of the body (streamed: two whole events and half of a third), then
  drops the connection;
- `*-stall`: streams two events, then sends nothing more until the client goes away (non-streamed: never answers);
- `*-nodone`: streams every event but ends cleanly without `data: [DONE]`;
- `*-hang`: never answers; waits (at most `hang_s`) for the client to disconnect and records that in
  `.disconnects`. A stalled stream that the client abandons is recorded there too.
If started with `api_key`, requests without `Authorization: Bearer <api_key>` get 401.
Every request body received is kept in `.received` so tests can check what the router forwarded.
"""
from __future__ import annotations

import asyncio
import contextlib
import gzip
import json
import socket
import threading
import time
import zlib
from typing import Iterator

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

LOOPBACK = "127.0.0.1"


def reply_text(model: str, user_text: str) -> str:
    """The fake model's answer, reproducible by tests."""
    return f"{model} says: " + " ".join(reversed(user_text.split()))


def fake_usage(text: str) -> dict:
    """The usage the fake upstream reports for an answer `text`."""
    completion = len(text.split())
    return {"prompt_tokens": 7, "completion_tokens": completion, "total_tokens": 7 + completion}


class FakeUpstream:
    def __init__(self, api_key: str | None = None, slow_s: float = 2.0, hang_s: float = 60.0):
        self.api_key = api_key
        self.slow_s = slow_s
        self.hang_s = hang_s
        self.received: list[dict] = []
        self.disconnects: list[str] = []  # upstream model ids of requests whose client went away mid-answer
        self.app = Starlette(routes=[Route("/v1/chat/completions", self.chat, methods=["POST"])])

    async def chat(self, request: Request) -> Response:
        if self.api_key is not None and request.headers.get("authorization") != f"Bearer {self.api_key}":
            return _error(401, "invalid api key")
        try:
            body = await request.json()
        except json.JSONDecodeError:
            return _error(400, "body is not JSON")
        self.received.append(body)
        model, messages = body.get("model"), body.get("messages")
        if not isinstance(model, str) or not isinstance(messages, list) or not messages:
            return _error(400, "model and messages are required")
        if model.endswith("-fail"):
            return _error(500, "the model crashed")
        if model.endswith("-badjson"):
            return Response("<html>gateway error</html>", media_type="text/html")
        if model.endswith("-slow"):
            await asyncio.sleep(self.slow_s)
        if model.endswith("-ratelimit"):
            return _error(429, "rate limit reached, retry later", headers={"Retry-After": "7"})
        if model.endswith("-hang") or (model.endswith("-stall") and not body.get("stream")):
            deadline = time.monotonic() + self.hang_s
            while time.monotonic() < deadline:
                if await request.is_disconnected():
                    self.disconnects.append(model)
                    break
                await asyncio.sleep(0.01)
            return _error(504, "hung request ended")
        user = [m for m in messages if m.get("role") == "user"]
        content = user[-1]["content"] if user else ""
        if isinstance(content, list):  # OpenAI content parts
            content = "\n".join(p["text"] for p in content if p.get("type") == "text")
        text = reply_text(model, content)
        created = int(time.time())
        if body.get("stream"):
            options = body.get("stream_options")
            with_usage = isinstance(options, dict) and options.get("include_usage") is True
            events = _sse(model, text, created, fake_usage(text) if with_usage else None)
            if model.endswith("-gzip"):
                return StreamingResponse(_gzip_stream(events), media_type="text/event-stream",
                                         headers={"Content-Encoding": "gzip"})
            if model.endswith("-drop"):
                events = _drop_after(events, 2)
            elif model.endswith("-stall"):
                events = self._stall_after(events, 2, model)
            elif model.endswith("-nodone"):
                events = _without_done(events)
            return StreamingResponse(events, media_type="text/event-stream")
        answer = {
            "id": "chatcmpl-fake",
            "object": "chat.completion",
            "created": created,
            "model": model,
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
            "usage": fake_usage(text),
        }
        raw = json.dumps(answer).encode()
        if model.endswith("-gzip"):
            return Response(gzip.compress(raw), media_type="application/json", headers={"Content-Encoding": "gzip"})
        if model.endswith("-drop"):
            return StreamingResponse(_drop_after(_pieces(raw), 1), media_type="application/json",
                                     headers={"Content-Length": str(len(raw))})
        return Response(raw, media_type="application/json")

    async def _stall_after(self, events, n: int, model: str):
        """The first n events, then silence until the client goes away (the response task is cancelled)."""
        async for i, event in _enumerate(events):
            if i == n:
                try:
                    await asyncio.sleep(self.hang_s)
                except asyncio.CancelledError:
                    self.disconnects.append(model)
                    raise
                return
            yield event


class UpstreamDropped(Exception):
    """Raised inside a fake response to make uvicorn drop the connection mid-body."""


async def _enumerate(events):
    i = 0
    async for event in events:
        yield i, event
        i += 1


async def _drop_after(pieces, n: int):
    """The first n pieces, half of the next one, then a dropped connection."""
    async for i, piece in _enumerate(pieces):
        if i == n:
            yield piece[: len(piece) // 2]
            await asyncio.sleep(0.05)  # let the half piece reach the client before the connection goes
            raise UpstreamDropped("fake upstream drops the connection mid-body")
        yield piece


async def _pieces(raw: bytes):
    half = len(raw) // 2
    yield raw[:half]
    yield raw[half:]


async def _without_done(events):
    async for event in events:
        if event != "data: [DONE]\n\n":
            yield event


async def _gzip_stream(events):
    compressor = zlib.compressobj(wbits=31)  # gzip container
    async for event in events:
        yield compressor.compress(event.encode()) + compressor.flush(zlib.Z_SYNC_FLUSH)
    yield compressor.flush()


async def _sse(model: str, text: str, created: int, usage: dict | None = None):
    words = text.split(" ")
    for i, word in enumerate(words):
        chunk = {
            "id": "chatcmpl-fake",
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": [{"index": 0, "delta": {"content": word if i == 0 else " " + word}, "finish_reason": None}],
        }
        yield f"data: {json.dumps(chunk)}\n\n"
        await asyncio.sleep(0)
    done = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": created, "model": model,
            "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
    yield f"data: {json.dumps(done)}\n\n"
    if usage is not None:
        tail = {"id": "chatcmpl-fake", "object": "chat.completion.chunk", "created": created, "model": model,
                "choices": [], "usage": usage}
        yield f"data: {json.dumps(tail)}\n\n"
    yield "data: [DONE]\n\n"


def _error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": "fake_upstream_error"}}, status_code=status,
                        headers=headers)


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on right now (for 'upstream is down' tests)."""
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serve_in_thread(app, timeout: float = 20.0, **uvicorn_config) -> Iterator[str]:
    """Run `app` on uvicorn in a daemon thread on 127.0.0.1:<free port>; yield its base URL; shut it down."""
    with running_server(app, timeout, **uvicorn_config) as (url, _server, _thread):
        yield url


@contextlib.contextmanager
def running_server(app, timeout: float = 20.0, **uvicorn_config):
    """`serve_in_thread` that also yields the `uvicorn.Server` and its thread, for tests that stop it themselves.
    `uvicorn_config` goes to `uvicorn.Config` (e.g. `timeout_graceful_shutdown`)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((LOOPBACK, 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, **{"log_level": "warning", "access_log": False, "lifespan": "on", **uvicorn_config})
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout
    while not server.started:
        if not thread.is_alive():
            raise RuntimeError("uvicorn exited during startup (see the log above)")
        if time.monotonic() > deadline:
            raise RuntimeError(f"uvicorn did not start within {timeout} s")
        time.sleep(0.01)
    try:
        yield f"http://{LOOPBACK}:{port}", server, thread
    finally:
        server.should_exit = True
        thread.join(timeout)
        sock.close()
