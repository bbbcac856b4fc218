"""An upstream that closes a pooled keep-alive connection just as the server reuses it (the race between two
5-second idle timeouts that the soak test hit as 502s): the server sends the request once more on a fresh
connection, so the client gets its answer. The upstream here is a raw socket server that answers the first request
on each connection and closes the connection, unanswered, at the second."""
import json
import socket
import threading

import httpx

from routoo_fast.serve.server import create_app
from routoo_fast.serve.upstreams import Upstreams
from fake_upstream import serve_in_thread
from small_router import small_router


class ClosingUpstream:
    """Answers one chat completion per connection; a second request on the same connection is dropped."""

    def __init__(self):
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.connections = 0
        self.answered = 0
        self.dropped = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn):
        with conn, conn.makefile("rb") as rfile:
            for n in range(2):
                head = [rfile.readline()]
                while head[-1] not in (b"\r\n", b""):
                    head.append(rfile.readline())
                if head[-1] == b"":
                    return
                length = next(int(h.split(b":")[1]) for h in head if h.lower().startswith(b"content-length"))
                model = json.loads(rfile.read(length))["model"]
                if n == 1:
                    self.dropped += 1
                    return  # closed without a response byte, as an idle-timeout close racing the reuse does
                body = json.dumps({"id": "c1", "object": "chat.completion", "created": 0, "model": model,
                                   "choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"},
                                                "finish_reason": "stop"}]}).encode()
                conn.sendall(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: "
                             + str(len(body)).encode() + b"\r\n\r\n" + body)
                self.answered += 1

    def close(self):
        self.sock.close()


def test_reused_connection_closed_by_upstream_is_retried_on_a_fresh_one():
    upstream = ClosingUpstream()
    try:
        upstreams = Upstreams.from_dict({"defaults": {"base_url": upstream.url + "/v1", "api_key_env": None},
                                         "models": {"direct-model": {"model": "upstream-id"}}})
        app = create_app(small_router(), upstreams)
        with serve_in_thread(app) as url, httpx.Client(base_url=url, timeout=30) as client:
            for _ in range(3):
                r = client.post("/v1/chat/completions",
                                json={"model": "direct-model", "messages": [{"role": "user", "content": "hi"}]})
                assert r.status_code == 200, r.text
                assert r.json()["choices"][0]["message"]["content"] == "ok"
        # each call after the first met a dropped connection and went through on a new one
        assert upstream.answered == 3
        assert upstream.dropped == 2
        assert upstream.connections == 3
    finally:
        upstream.close()
