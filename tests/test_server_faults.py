"""The server against injected faults: malformed bodies, oversized bodies, upstreams that drop, stall, gzip, rate
limit or hang, clients that leave, a crash inside a handler. Each fault goes through the real server (uvicorn on
loopback) and, where the fault is the upstream's, through the test-started fake upstream's fault modes
(`tests/fake_upstream.py`). Every error must be JSON in OpenAI's format, on a connection that stays open."""
import asyncio
import json
import threading
import time

import httpx
import pytest

from routoo_fast.serve.server import create_app
from routoo_fast.serve.upstreams import Upstreams
from fake_upstream import FakeUpstream, reply_text, running_server, serve_in_thread
from small_router import MODELS, small_router

PROMPT = "What is the boiling point of water at sea level in Celsius?"
FAULTS = ("gzip", "drop", "stall", "nodone", "ratelimit", "hang", "slow")


@pytest.fixture(scope="module")
def upstream():
    fake = FakeUpstream(slow_s=3.0, hang_s=60.0)
    with serve_in_thread(fake.app) as url:
        fake.url = url
        yield fake


def make_upstreams(url: str) -> Upstreams:
    models = {m: {} for m in MODELS}
    models["direct-model"] = {"model": "direct-upstream-id"}
    for fault in FAULTS:  # "<fault>-model" is served by upstream model id "x-<fault>", which injects that fault
        models[f"{fault}-model"] = {"model": f"x-{fault}"}
    models["stall-model"]["timeout_s"] = 0.5  # its read timeout: the stall is noticed after 0.5 s
    models["longstall-model"] = {"model": "z-stall"}  # stalls under the server's read timeout (30 s here)
    models["slow-model"]["timeout_s"] = 0.5
    return Upstreams.from_dict({"defaults": {"base_url": url + "/v1", "api_key_env": None}, "models": models})


@pytest.fixture(scope="module")
def server(upstream):
    router = small_router()
    app = create_app(router, make_upstreams(upstream.url), max_wait=0.002, max_body_bytes=1_000_000,
                     max_prompts_per_request=8, upstream_read_timeout=30.0)
    with serve_in_thread(app) as url:
        yield url, router


@pytest.fixture()
def client(server):
    # one connection: every request below must leave it open for the next (no dropped keep-alive)
    with httpx.Client(base_url=server[0], timeout=30, limits=httpx.Limits(max_connections=1)) as c:
        yield c


def local_addr(response):
    return response.extensions["network_stream"].get_extra_info("client_addr")


def error_of(response) -> dict:
    assert response.headers["content-type"] == "application/json", response.text
    body = response.json()
    assert set(body) == {"error"} and {"message", "type"} <= set(body["error"]), body
    return body["error"]


def messages(text=PROMPT):
    return [{"role": "system", "content": "be brief"}, {"role": "user", "content": text}]


def sse_events(response) -> list[str]:
    return [line[len("data: "):] for line in response.iter_lines() if line.startswith("data: ")]


def wait_for(predicate, timeout=20.0):
    """Poll a condition that the fault makes true eventually (bounded; the bound never decides a pass)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    return 0.0


# ---- item 2: malformed bodies are 400s, never plain-text 500s or dropped connections ---------------------------
DIGITS_5000 = "9" * 5000
DIGITS_4000 = "9" * 4000
NESTED = "[" * 50_000 + "]" * 50_000


@pytest.mark.parametrize(
    "path, body, match",
    [
        ("/v1/route", '{"prompt": "a", "policy": ' + NESTED + "}", "nested too deeply"),
        ("/v1/chat/completions", '{"model": "direct-model", "messages": ' + NESTED + "}", "nested too deeply"),
        ("/v1/route", '{"prompt": "a", "policy": {"lambda": ' + DIGITS_5000 + "}}", "integer string conversion"),
        ("/v1/route", '{"prompt": "a", "policy": {"lambda": ' + DIGITS_4000 + "}}", "int too large"),
        ("/v1/chat/completions", '{"model": "router", "routoo_policy": {"max_cost": ' + DIGITS_4000 + '}, '
         '"messages": [{"role": "user", "content": "hi"}]}', "int too large"),
        ("/v1/route", '{"prompt": "a", "policy": {"lambda": NaN}}', "NaN is not a JSON value"),
        ("/v1/route", '{"prompt": "a", "policy": {"budget": -Infinity}}', "-Infinity is not a JSON value"),
        ("/v1/chat/completions", '{"model": "direct-model", "temperature": NaN, '
         '"messages": [{"role": "user", "content": "hi"}]}', "NaN is not a JSON value"),
        ("/v1/chat/completions", '{"model": "direct-model", "top_p": Infinity, '
         '"messages": [{"role": "user", "content": "hi"}]}', "Infinity is not a JSON value"),
        # a lone surrogate in a forwarded field: the upstream request cannot be encoded
        ("/v1/chat/completions", '{"model": "direct-model", "messages": [{"role": "system", "content": "x \\ud800"}, '
         '{"role": "user", "content": "hi"}]}', "lone UTF-16 surrogate"),
        ("/v1/chat/completions", '{"model": "direct-model", "user": "\\udfff", '
         '"messages": [{"role": "user", "content": "hi"}]}', "lone UTF-16 surrogate"),
        # ... and in the text the router scores: refused before it reaches the predictor
        ("/v1/chat/completions", '{"model": "router", "messages": [{"role": "user", "content": "x \\ud800"}]}',
         "the last user message holds a lone UTF-16 surrogate"),
        ("/v1/chat/completions", '{"model": "direct-model", "stream": "yes", '
         '"messages": [{"role": "user", "content": "hi"}]}', "'stream' must be true or false"),
    ],
)
def test_malformed_body_is_a_json_400_on_a_kept_connection(client, upstream, path, body, match):
    before = len(upstream.received)
    r = client.post(path, content=body.encode(), headers={"content-type": "application/json"})
    assert r.status_code == 400, r.text
    err = error_of(r)
    assert err["type"] == "invalid_request_error" and match in err["message"], err
    assert len(err["message"]) <= 2003  # an echoed 4,000-digit number is cut short
    assert len(upstream.received) == before  # nothing was forwarded
    after = client.post("/v1/route", json={"prompt": PROMPT})
    assert after.status_code == 200 and local_addr(after) == local_addr(r)  # same connection: keep-alive held


def test_invalid_utf8_body_is_400(client):
    r = client.post("/v1/route", content=b'{"prompt": "caf\xe9"}', headers={"content-type": "application/json"})
    assert r.status_code == 400 and "not valid JSON" in error_of(r)["message"]


def test_unexpected_exception_is_a_logged_json_500_on_a_kept_connection(server, client, monkeypatch, caplog):
    _, router = server
    real_decide = router.decide

    def decide(prompts, Q, policy, C=None):
        if "BOOM" in prompts:
            raise KeyError("simulated bug")
        return real_decide(prompts, Q, policy, C)

    monkeypatch.setattr(router, "decide", decide)
    caplog.set_level("ERROR", logger="routoo_fast.serve.server")
    r = client.post("/v1/route", json={"prompt": "BOOM"})
    assert r.status_code == 500
    err = error_of(r)
    assert err["type"] == "server_error" and "simulated bug" not in err["message"]  # details go to the log only
    assert "unhandled error in POST /v1/route" in caplog.text and "KeyError: 'simulated bug'" in caplog.text
    after = client.post("/v1/route", json={"prompt": PROMPT})
    assert after.status_code == 200 and local_addr(after) == local_addr(r)


# ---- limits: body bytes (413), prompts per request -------------------------------------------------------------
@pytest.fixture(scope="module")
def small_limits(upstream):
    app = create_app(small_router(), make_upstreams(upstream.url), max_body_bytes=2048, max_prompts_per_request=4)
    with serve_in_thread(app) as url, httpx.Client(base_url=url, timeout=30) as c:
        yield c


def test_body_over_the_limit_is_413_by_content_length(small_limits):
    r = small_limits.post("/v1/route", json={"prompt": "x" * 4000})
    assert r.status_code == 413
    err = error_of(r)
    assert err["type"] == "request_too_large" and "over the limit of 2048 bytes" in err["message"]
    assert small_limits.post("/v1/route", json={"prompt": "x" * 1000}).status_code == 200


def test_body_over_the_limit_is_413_while_reading_a_chunked_body(small_limits):
    def chunks():  # no Content-Length: the limit must be enforced as the bytes arrive
        yield b'{"prompt": "'
        for _ in range(10):
            yield b"y" * 500
        yield b'"}'

    r = small_limits.post("/v1/chat/completions", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413 and "--max-body-bytes" in error_of(r)["message"]


def test_too_many_prompts_is_400(small_limits):
    r = small_limits.post("/v1/route", json={"prompts": ["a", "b", "c", "d", "e"]})
    assert r.status_code == 400 and "at most 4 prompts per request, got 5" in error_of(r)["message"]
    assert small_limits.post("/v1/route", json={"prompts": ["a", "b", "c", "d"]}).status_code == 200


def test_bad_limits_are_refused_at_creation():
    with pytest.raises(ValueError, match="max_body_bytes must be a positive integer"):
        create_app(small_router(), None, max_body_bytes=0)
    with pytest.raises(ValueError, match="upstream_read_timeout must be a positive number"):
        create_app(small_router(), None, upstream_read_timeout=float("inf"))


# ---- item 3: an upstream that fails mid-stream ends the stream with an error event, never a clean end -----------
@pytest.mark.parametrize(
    "model, kind, match",
    [
        ("drop-model", "upstream_error", "broke off mid-stream"),
        ("stall-model", "upstream_timeout", "stalled mid-stream: it sent nothing for 0.5 s"),
        ("nodone-model", "upstream_error", "ended the stream without [DONE]"),
    ],
)
def test_midstream_upstream_failure_ends_with_an_sse_error_event(client, upstream, model, kind, match):
    with client.stream("POST", "/v1/chat/completions",
                       json={"model": model, "stream": True, "messages": messages()}) as r:
        assert r.status_code == 200
        events = sse_events(r)
    assert "[DONE]" not in events
    *chunks, last = events
    assert chunks and all(json.loads(c)["object"] == "chat.completion.chunk" for c in chunks)  # no half event
    err = json.loads(last)["error"]
    assert err["type"] == kind and match in err["message"], err
    if model == "stall-model":  # the stalled upstream connection was let go
        assert wait_for(lambda: "x-stall" in upstream.disconnects)
    assert client.post("/v1/route", json={"prompt": PROMPT}).status_code == 200


def test_client_abandoning_a_stream_frees_the_upstream(server, upstream):
    with httpx.Client(base_url=server[0], timeout=30) as c:
        with c.stream("POST", "/v1/chat/completions",
                      json={"model": "longstall-model", "stream": True, "messages": messages()}) as r:
            assert next(r.iter_lines()).startswith("data: ")
        # leaving the block closed the connection mid-stream, well before the 30 s read timeout
    assert wait_for(lambda: "z-stall" in upstream.disconnects, timeout=20), "the upstream stream kept running"


@pytest.mark.parametrize("boundary", [b"\n\n", b"\r\n\r\n"])
def test_relay_passes_whole_events_and_finds_done_across_chunk_splits(boundary):
    """The relay cuts at event boundaries (LF or CRLF), even one split across chunks, and passes the bytes on
    unchanged; a half event at a failure is held back, not sent as garbage."""
    from routoo_fast.serve.server import Metrics, _relay, _Timeouts
    from routoo_fast.serve.upstreams import Upstream

    events = [b'data: {"n": 1}', b'data: {"n": 2}', b"data: [DONE]"]
    raw = b"".join(e + boundary for e in events)

    async def relay(pieces, fail_at_end=False):
        async def body():
            for piece in pieces:
                yield piece
            if fail_at_end:
                raise httpx.ReadError("connection reset")

        def handler(request):
            return httpx.Response(200, content=body(), headers={"content-type": "text/event-stream"})

        async with httpx.AsyncClient(transport=httpx.MockTransport(handler)) as c:
            response = await c.send(c.build_request("POST", "http://upstream/v1/chat/completions"), stream=True)
            up = Upstream("m", "http://upstream/v1", "m")
            return [out async for out in _relay(response, up, Metrics(), _Timeouts(1.0, 1.0), time.perf_counter())]

    for cut in range(1, len(raw)):  # every split point, including inside a boundary
        out = asyncio.run(relay([raw[:cut], raw[cut:]]))
        assert b"".join(out) == raw, cut
        assert all(o.endswith(boundary) for o in out), (cut, out)
    half = raw[: raw.index(b"[DONE]") - 4]  # two whole events and the start of the third
    out = b"".join(asyncio.run(relay([half], fail_at_end=True)))
    assert out.startswith(b"".join(e + boundary for e in events[:2]))
    tail = out[len(b"".join(e + boundary for e in events[:2])):]
    assert tail.startswith(b'data: {"error": ') and b"broke off mid-stream" in tail
    out = b"".join(asyncio.run(relay([b"".join(e + boundary for e in events[:2])])))  # clean end, no [DONE]
    assert b"without [DONE]" in out


def test_upstream_dropping_a_non_streamed_answer_is_502(client):
    r = client.post("/v1/chat/completions", json={"model": "drop-model", "messages": messages()})
    assert r.status_code == 502 and "broke off" in error_of(r)["message"]


# ---- item 4: gzip from the upstream is decoded, not relayed raw -------------------------------------------------
@pytest.mark.parametrize("stream", [False, True])
def test_gzip_upstream_is_relayed_decoded(client, stream):
    with client.stream("POST", "/v1/chat/completions",
                       json={"model": "gzip-model", "stream": stream, "messages": messages()}) as r:
        assert r.status_code == 200
        assert "content-encoding" not in r.headers  # the bytes we send are plain: no stale header either
        if stream:
            assert "content-length" not in r.headers
            events = sse_events(r)
            assert events[-1] == "[DONE]"
            text = "".join(json.loads(e)["choices"][0]["delta"].get("content", "") for e in events[:-1])
        else:
            r.read()
            assert int(r.headers["content-length"]) == len(r.content)
            text = r.json()["choices"][0]["message"]["content"]
    assert text == reply_text("x-gzip", PROMPT)


# ---- item 7: a client that leaves cancels its non-streamed upstream call -----------------------------------------
def test_client_leaving_cancels_the_upstream_call(server, upstream):
    url, _ = server
    with httpx.Client(base_url=url, timeout=30) as watcher:
        async def leave_early():
            async with httpx.AsyncClient(base_url=url, timeout=30) as c:
                call = asyncio.ensure_future(c.post("/v1/chat/completions",
                                                    json={"model": "hang-model", "messages": messages()}))
                in_flight = 'routoo_requests_in_flight{path="/v1/chat/completions"}'
                seen = await asyncio.to_thread(wait_for, lambda: metric(watcher.get("/metrics").text, in_flight) == 1)
                call.cancel()  # the client gives up and closes its connection
                with pytest.raises(asyncio.CancelledError):
                    await call
                return seen

        assert asyncio.run(leave_early()), "the hanging call never showed as in flight"
        assert wait_for(lambda: "x-hang" in upstream.disconnects), "the upstream call kept running"
        assert wait_for(lambda: metric(watcher.get("/metrics").text,
                                       'routoo_upstream_cancelled_total{model="hang-model"}') == 1)
        assert metric(watcher.get("/metrics").text, 'routoo_requests_in_flight{path="/v1/chat/completions"}') == 0


# ---- item 8: a rate-limited upstream's 429 keeps its Retry-After --------------------------------------------------
def test_upstream_429_passes_retry_after_through(client):
    r = client.post("/v1/chat/completions", json={"model": "ratelimit-model", "messages": messages()})
    assert r.status_code == 429 and r.headers["retry-after"] == "7"
    assert r.headers["x-routoo-model"] == "ratelimit-model" and "rate limit" in error_of(r)["message"]


# ---- item 9: `model` follows one rule, streamed or not -----------------------------------------------------------
def test_model_field_is_the_upstreams_streamed_or_not(client):
    r = client.post("/v1/chat/completions", json={"model": "direct-model", "messages": messages()})
    assert r.status_code == 200 and r.json()["model"] == "direct-upstream-id"
    assert r.headers["x-routoo-model"] == "direct-model"
    with client.stream("POST", "/v1/chat/completions",
                       json={"model": "direct-model", "stream": True, "messages": messages()}) as s:
        assert s.headers["x-routoo-model"] == "direct-model"
        chunks = [json.loads(e) for e in sse_events(s)[:-1]]
    assert {c["model"] for c in chunks} == {"direct-upstream-id"}


# ---- item 10: the bearer scheme is case-insensitive --------------------------------------------------------------
def test_bearer_scheme_is_case_insensitive(upstream):
    app = create_app(small_router(), make_upstreams(upstream.url), auth_token="tok-123")
    with serve_in_thread(app) as url, httpx.Client(base_url=url, timeout=30) as c:
        for value in ("Bearer tok-123", "bearer tok-123", "BEARER tok-123", "bEaReR  tok-123"):
            assert c.get("/v1/models", headers={"Authorization": value}).status_code == 200, value
        for value in ("Bearer tok-12", "Basic tok-123", "tok-123", "Bearer", "bearer tok-123x"):
            r = c.get("/v1/models", headers={"Authorization": value})
            assert r.status_code == 401 and error_of(r)["type"] == "authentication_error", value


# ---- item 11: /v1/models, and 404/405 as JSON --------------------------------------------------------------------
def test_models_list(client):
    r = client.get("/v1/models")
    assert r.status_code == 200
    body = r.json()
    assert body["object"] == "list"
    ids = [m["id"] for m in body["data"]]
    assert ids[0] == "router" and "router:max_quality" in ids and "router:lambda=100" in ids
    assert set(MODELS) | {"direct-model"} <= set(ids)
    assert all(m["object"] == "model" and isinstance(m["created"], int) and m["owned_by"] for m in body["data"])
    for model_id in ids:  # every listed name is accepted by the chat endpoint
        if not model_id.startswith("router") and model_id not in MODELS and model_id != "direct-model":
            continue
        r = client.post("/v1/chat/completions", json={"model": model_id, "messages": messages()})
        assert r.status_code == 200, (model_id, r.text)
    assert client.get("/v1/models/direct-model").json()["id"] == "direct-model"
    r = client.get("/v1/models/no-such-model")
    assert r.status_code == 404 and error_of(r)["type"] == "not_found_error"


def test_models_without_upstreams_lists_nothing_to_chat_with():
    app = create_app(small_router(), None)
    with serve_in_thread(app) as url, httpx.Client(base_url=url, timeout=30) as c:
        assert c.get("/v1/models").json() == {"object": "list", "data": []}


def test_unknown_path_and_wrong_method_are_json(client):
    r = client.get("/v1/nope")
    assert r.status_code == 404 and "no such endpoint: GET /v1/nope" in error_of(r)["message"]
    r = client.get("/v1/chat/completions")
    assert r.status_code == 405 and r.headers["allow"] == "POST"
    assert "method GET is not allowed on /v1/chat/completions" in error_of(r)["message"]
    assert client.post("/v1/route", json={"prompt": PROMPT}).status_code == 200


# ---- metrics: upstream latency and TTFB, in flight, spend only for forwarded chats -------------------------------
def test_upstream_latency_ttfb_and_spend_metrics(upstream):
    router = small_router()
    app = create_app(router, make_upstreams(upstream.url))
    with serve_in_thread(app) as url, httpx.Client(base_url=url, timeout=30) as c:
        policy = "models=" + MODELS[1]
        assert c.post("/v1/route", json={"prompt": PROMPT, "policy": policy}).status_code == 200
        text = c.get("/metrics").text
        assert f'routoo_chosen_model_total{{model="{MODELS[1]}"}} 1.0' in text
        assert "routoo_estimated_spend_usd_total{" not in text  # a routing decision alone is not spend
        assert c.post("/v1/chat/completions", json={"model": "router:" + policy, "messages": messages()}
                      ).status_code == 200
        with c.stream("POST", "/v1/chat/completions", json={"model": "direct-model", "stream": True,
                                                             "messages": messages()}) as s:
            assert sse_events(s)[-1] == "[DONE]"
        r = c.post("/v1/chat/completions", json={"model": "router:" + policy, "messages": messages(), "stream": True})
        assert r.status_code == 200
        # the gauge drops after the server's last body byte, which can be just after the client has read it: scrape
        # until the chat requests have left (a deadline, not a timing: a gauge stuck at 1 still fails below)
        deadline = time.monotonic() + 10
        while True:
            text = c.get("/metrics").text
            if metric(text, 'routoo_requests_in_flight{path="/v1/chat/completions"}') == 0 or \
                    time.monotonic() > deadline:
                break
            time.sleep(0.01)
    expected = 2 * router.decide([PROMPT], router.predict([PROMPT]), policy)[0].expected_cost
    assert metric(text, f'routoo_estimated_spend_usd_total{{model="{MODELS[1]}"}}') == pytest.approx(expected)
    for model, calls in ((MODELS[1], 2), ("direct-model", 1)):
        assert metric(text, f'routoo_upstream_latency_seconds_count{{model="{model}"}}') == calls
        assert metric(text, f'routoo_upstream_ttfb_seconds_count{{model="{model}"}}') == calls
    assert metric(text, 'routoo_requests_in_flight{path="/metrics"}') == 1  # the scrape itself
    assert metric(text, 'routoo_requests_in_flight{path="/v1/chat/completions"}') == 0


# ---- item 6: a graceful-shutdown limit ends slow streams -------------------------------------------------------
def test_graceful_shutdown_timeout_ends_a_stalled_stream(upstream):
    """A stream whose upstream stalls (and whose read timeout is far off) would hold shutdown open; with
    timeout_graceful_shutdown the server stops anyway."""
    ups = Upstreams.from_dict({"defaults": {"base_url": upstream.url + "/v1", "api_key_env": None},
                               "models": {"long-stall": {"model": "y-stall"}}})
    app = create_app(small_router(), ups, upstream_read_timeout=600.0)
    with running_server(app, timeout_graceful_shutdown=1) as (url, uvicorn_server, thread):
        got_first, outcome = threading.Event(), []

        def consume():
            try:
                with httpx.Client(base_url=url, timeout=600) as c, c.stream(
                        "POST", "/v1/chat/completions",
                        json={"model": "long-stall", "stream": True, "messages": messages()}) as r:
                    for line in r.iter_lines():
                        if line.startswith("data: "):
                            got_first.set()
                outcome.append("ended")
            except httpx.HTTPError as exc:
                outcome.append(type(exc).__name__)

        reader = threading.Thread(target=consume, daemon=True)
        reader.start()
        assert got_first.wait(20), "the stream never started"
        uvicorn_server.should_exit = True
        thread.join(30)
        assert not thread.is_alive(), "the server did not stop: no graceful-shutdown limit"
        reader.join(30)
        assert outcome, "the client is still waiting on a stream of a stopped server"
    assert wait_for(lambda: "y-stall" in upstream.disconnects)


# ---- timeouts described by phase --------------------------------------------------------------------------------
def test_timeouts_name_the_phase():
    from routoo_fast.serve.server import _Timeouts
    from routoo_fast.serve.upstreams import Upstream

    t = _Timeouts(connect=3.0, read=40.0)
    up, own = Upstream("m", "http://127.0.0.1:9/v1", "m"), Upstream("m", "http://127.0.0.1:9/v1", "m", None, 7.5)
    assert t.describe(httpx.ConnectTimeout("x"), up) == "could not connect within 3 s"
    assert t.describe(httpx.ReadTimeout("x"), up) == "sent nothing for 40 s"
    assert t.describe(httpx.ReadTimeout("x"), own) == "sent nothing for 7.5 s"
    assert t.for_upstream(own).read == 7.5 and t.for_upstream(own).connect == 3.0
