"""A small, real OpenAI-compatible chat-completions server for tests, plus a helper that runs any ASGI app
on uvicorn in a background thread on 127.0.0.1 with a free port.

The "LLM" is deterministic so tests can check exactly what came back: it answers
`"<model> says: <last user message reversed word by word>"`, non-streamed as one chat.completion object or
streamed as Server-Sent Events (one chunk per word, then `data: [DONE]`), like the OpenAI API.

Behaviour switches, chosen by the upstream model id the request names:
- `*-fail`: answers 500 with an OpenAI-style error (the router server must turn this into 502);
- `*-badjson`: answers 200 with a body that is not JSON;
- `*-slow`: waits `slow_s` seconds before answering.
If started with `api_key`, requests without `Authorization: Bearer <api_key>` get 401.
Every request body received is kept in `.received` so tests can check what the router forwarded.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
import time
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


class FakeUpstream:
    def __init__(self, api_key: str | None = None, slow_s: float = 2.0):
        self.api_key = api_key
        self.slow_s = slow_s
        self.received: list[dict] = []
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
        user = [m for m in messages if m.get("role") == "user"]
        content = user[-1]["content"] if user else ""
        if isinstance(content, list):  # OpenAI content parts
            content = "\n".join(p["text"] for p in content if p.get("type") == "text")
        text = reply_text(model, content)
        created = int(time.time())
        if body.get("stream"):
            return StreamingResponse(_sse(model, text, created), media_type="text/event-stream")
        return JSONResponse(
            {
                "id": "chatcmpl-fake",
                "object": "chat.completion",
                "created": created,
                "model": model,
                "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
                "usage": {"prompt_tokens": 7, "completion_tokens": len(text.split()),
                          "total_tokens": 7 + len(text.split())},
            }
        )


async def _sse(model: str, text: str, created: int):
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
    yield "data: [DONE]\n\n"


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": {"message": message, "type": "fake_upstream_error"}}, status_code=status)


def free_port() -> int:
    """A port on 127.0.0.1 that nothing listens on right now (for 'upstream is down' tests)."""
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serve_in_thread(app, timeout: float = 20.0) -> Iterator[str]:
    """Run `app` on uvicorn in a daemon thread on 127.0.0.1:<free port>; yield its base URL; shut it down."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((LOOPBACK, 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(app, log_level="warning", access_log=False, lifespan="on")
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
        yield f"http://{LOOPBACK}:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout)
        sock.close()
