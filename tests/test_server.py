"""The real server (uvicorn, loopback, free port) in front of a real Router and a real OpenAI-compatible fake
upstream on loopback: every endpoint, policy syntax, streaming, each error path, auth, back-pressure, metrics."""
import asyncio
import json
import os

import httpx
import pytest

from routoo_fast.serve.server import create_app
from routoo_fast.serve.upstreams import Upstreams
from fake_upstream import FakeUpstream, free_port, reply_text, serve_in_thread
from small_router import MODELS, small_router

KEY_ENV = "ROUTOO_TEST_UPSTREAM_KEY"
SECRET = "sk-test-not-a-real-key-93f1"
PROMPT = "What is the boiling point of water at sea level in Celsius?"


@pytest.fixture(scope="module")
def upstream():
    fake = FakeUpstream(api_key=SECRET, slow_s=3.0)
    with serve_in_thread(fake.app) as url:
        fake.url = url
        yield fake


@pytest.fixture(scope="module")
def upstreams(upstream):
    old = os.environ.get(KEY_ENV)
    os.environ[KEY_ENV] = SECRET
    models = {m: {} for m in MODELS}
    models[MODELS[3]] = {"model": "qwen-upstream-fail"}  # routing to this model meets a failing upstream
    models["direct-model"] = {"model": "direct-upstream-id"}
    models["badjson-model"] = {"model": "x-badjson"}
    models["slow-model"] = {"model": "x-slow", "timeout_s": 0.5}
    models["down-model"] = {"base_url": f"http://127.0.0.1:{free_port()}/v1"}
    models["nokey-model"] = {"api_key_env": "ROUTOO_TEST_UNSET_KEY_VARIABLE"}
    os.environ.pop("ROUTOO_TEST_UNSET_KEY_VARIABLE", None)
    defaults = {"base_url": upstream.url + "/v1", "api_key_env": KEY_ENV}
    yield Upstreams.from_dict({"defaults": defaults, "models": models})
    if old is None:
        os.environ.pop(KEY_ENV, None)
    else:
        os.environ[KEY_ENV] = old


@pytest.fixture(scope="module")
def server(upstreams):
    router = small_router()
    app = create_app(router, upstreams, default_policy="max_quality", max_wait=0.005)
    with serve_in_thread(app) as url:
        yield url, router, app


@pytest.fixture(scope="module")
def client(server):
    with httpx.Client(base_url=server[0], timeout=30) as c:
        yield c


def error_message(response) -> str:
    return response.json()["error"]["message"]


# ---- /healthz, /v1/route ---------------------------------------------------------------------------------------
def test_healthz(client):
    r = client.get("/healthz")
    assert r.status_code == 200
    assert r.json()["status"] == "ok" and r.json()["models"] == len(MODELS) and r.json()["batching"] is True


@pytest.mark.parametrize("policy", ["max_quality", "lambda=2000", {"min_quality": 0.6}, "max_cost=0.001",
                                    "max_quality,models=Qwen2-7B-Instruct|Mixtral-8x7B-Instruct-v0.1"])
def test_route_matches_router(server, client, policy):
    _, router, _ = server
    prompts = [PROMPT, "Write a sonnet about the sea.", "Integrate x^2 sin x dx."]
    r = client.post("/v1/route", json={"prompts": prompts, "policy": policy})
    assert r.status_code == 200, r.text
    got = r.json()["decisions"]
    expected = router.decide(prompts, router.predict(prompts), policy)
    assert [d["model"] for d in got] == [d.model for d in expected]
    for g, e in zip(got, expected):
        assert g["predicted_quality"] == pytest.approx(e.predicted_quality, rel=1e-6)
        assert g["expected_cost"] == pytest.approx(e.expected_cost, rel=1e-12)
        assert g["policy"] == e.policy and g["feasible"] == e.feasible


def test_route_single_prompt_and_default_policy(server, client):
    r = client.post("/v1/route", json={"prompt": PROMPT})
    assert r.status_code == 200
    (d,) = r.json()["decisions"]
    assert d["policy"] == "max_quality" and d["model"] in MODELS


def test_route_budget_spans_the_request(server, client):
    _, router, _ = server
    prompts = [f"question number {i}: what is {i} squared?" for i in range(6)]
    C = router.costs(prompts)
    total = float(C.min(axis=1).sum() * 1.5)
    r = client.post("/v1/route", json={"prompts": prompts, "policy": {"budget": total}})
    assert r.status_code == 200, r.text
    spent = sum(d["expected_cost"] for d in r.json()["decisions"])
    assert spent <= total * (1 + 1e-9)


@pytest.mark.parametrize(
    "body, match",
    [
        (b"{not json", "not valid JSON"),
        (b"[1, 2]", "must be a JSON object"),
        (b"{}", "missing field 'prompts'"),
        (json.dumps({"prompts": "one string"}).encode(), "must be a list of strings"),
        (json.dumps({"prompts": ["ok", 3]}).encode(), "must be a list of strings"),
        (json.dumps({"prompts": []}).encode(), "empty"),
        (json.dumps({"prompt": "a", "prompts": ["b"]}).encode(), "not both"),
        (json.dumps({"prompt": "a", "policy": "temperature=3"}).encode(), "unknown policy key 'temperature'"),
        (json.dumps({"prompt": "a", "policy": "lambda=-1"}).encode(), "lambda must be >= 0"),
        (json.dumps({"prompt": "a", "policy": {"models": ["no-such-model"]}}).encode(), "unknown models"),
        (json.dumps({"prompt": "a", "policy": "budget=0"}).encode(), "below the cheapest possible total"),
    ],
)
def test_route_bad_input_is_400_and_server_keeps_serving(client, body, match):
    r = client.post("/v1/route", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 400
    assert match in error_message(r)
    assert client.post("/v1/route", json={"prompt": PROMPT}).status_code == 200


def test_concurrent_route_requests_are_batched(server):
    url, router, _ = server
    prompts = [f"Explain topic number {i} in one sentence." for i in range(48)]
    expected = [d.model for d in router.decide(prompts, router.predict(prompts), "lambda=500")]
    batches_before = router.batcher.batches

    async def main():
        async with httpx.AsyncClient(base_url=url, timeout=30) as c:
            rs = await asyncio.gather(*(c.post("/v1/route", json={"prompt": p, "policy": "lambda=500"})
                                        for p in prompts))
        return rs

    responses = asyncio.run(main())
    assert all(r.status_code == 200 for r in responses)
    assert [r.json()["decisions"][0]["model"] for r in responses] == expected
    assert router.batcher.batches - batches_before < len(prompts)  # at least two requests shared a pass


# ---- /v1/chat/completions --------------------------------------------------------------------------------------
def chat(client, model, text=PROMPT, **extra):
    return client.post("/v1/chat/completions", json={"model": model, "messages": [
        {"role": "system", "content": "be brief"}, {"role": "user", "content": text}], **extra})


def routed_model(router, policy, text=PROMPT):
    """What the router picks for `text` (every test model has an upstream, so no restriction applies)."""
    return router.route([text], policy)[0].model


def test_chat_routed_non_streaming(server, client, upstream):
    _, router, _ = server
    policy = "max_quality,models=Mixtral-8x7B-Instruct-v0.1|Meta-Llama-3-70B-Instruct|gpt-4o-2024-05-13"
    expected = routed_model(router, policy)
    r = chat(client, "router:" + policy, temperature=0.2)
    assert r.status_code == 200, r.text
    body = r.json()
    assert r.headers["x-routoo-model"] == expected and body["model"] == expected
    assert body["choices"][0]["message"]["content"] == reply_text(expected, PROMPT)
    assert r.headers["x-routoo-policy"] == policy
    sent = upstream.received[-1]
    assert sent["model"] == expected and sent["temperature"] == 0.2 and "routoo_policy" not in sent


def test_chat_policy_in_extra_field(server, client, upstream):
    _, router, _ = server
    policy = {"lambda": 1000.0, "models": [MODELS[0], MODELS[1]]}
    expected = routed_model(router, policy)
    r = chat(client, "router", routoo_policy=policy)
    assert r.status_code == 200, r.text
    assert r.headers["x-routoo-model"] == expected
    assert "routoo_policy" not in upstream.received[-1]


def test_chat_streaming_passes_sse_through(server, client):
    _, router, _ = server
    policy = f"min_quality=0.5,models={MODELS[1]}|{MODELS[2]}"
    expected = routed_model(router, policy)
    with client.stream("POST", "/v1/chat/completions", json={
            "model": "router:" + policy, "stream": True,
            "messages": [{"role": "user", "content": [{"type": "text", "text": PROMPT}]}]}) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        assert r.headers["x-routoo-model"] == expected
        events = [line[len("data: "):] for line in r.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert len(chunks) > 2  # really streamed in pieces
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks)
    assert text == reply_text(expected, PROMPT)


def test_chat_direct_model_passes_through(client, upstream):
    r = chat(client, "direct-model")
    assert r.status_code == 200
    # the answer's `model` is the upstream's own id (as in streamed chunks); the router's name is in the header
    assert r.headers["x-routoo-model"] == "direct-model" and r.json()["model"] == "direct-upstream-id"
    assert upstream.received[-1]["model"] == "direct-upstream-id"
    assert r.json()["choices"][0]["message"]["content"] == reply_text("direct-upstream-id", PROMPT)


@pytest.mark.parametrize(
    "payload, match",
    [
        ({"messages": [{"role": "user", "content": "hi"}]}, "missing field 'model'"),
        ({"model": "router"}, "missing field 'messages'"),
        ({"model": "router", "messages": []}, "missing field 'messages'"),
        ({"model": "no-such-llm", "messages": [{"role": "user", "content": "hi"}]}, "unknown model 'no-such-llm'"),
        ({"model": "router:lambda=oops", "messages": [{"role": "user", "content": "hi"}]}, "invalid policy"),
        ({"model": "router:lambda=1", "routoo_policy": "lambda=2", "messages": [{"role": "user", "content": "hi"}]},
         "not both"),
        ({"model": "router", "messages": [{"role": "system", "content": "only system"}]}, "no user message"),
        ({"model": "router:models=nokey-model|no-such", "messages": [{"role": "user", "content": "hi"}]},
         "have no upstream configured"),
        ({"model": "direct-model", "routoo_policy": "lambda=1", "messages": [{"role": "user", "content": "hi"}]},
         "applies only to model 'router'"),
    ],
)
def test_chat_bad_input_is_400(client, payload, match):
    r = client.post("/v1/chat/completions", json=payload)
    assert r.status_code == 400, r.text
    assert match in error_message(r)


def test_chat_invalid_json_is_400(client):
    r = client.post("/v1/chat/completions", content=b'{"model": "router", ',
                    headers={"content-type": "application/json"})
    assert r.status_code == 400 and "not valid JSON" in error_message(r)


@pytest.mark.parametrize(
    "model, match",
    [
        ("router:models=" + MODELS[3], "failed with HTTP 500"),  # routed to a failing upstream
        ("badjson-model", "not JSON"),
        ("down-model", "unreachable"),
        ("nokey-model", "ROUTOO_TEST_UNSET_KEY_VARIABLE"),
    ],
)
def test_upstream_failures_are_502_and_server_keeps_serving(client, model, match):
    r = chat(client, model)
    assert r.status_code == 502, r.text
    assert match in error_message(r)
    assert SECRET not in r.text
    assert chat(client, "direct-model").status_code == 200


def test_upstream_timeout_is_504(client):
    r = chat(client, "slow-model")  # its timeout_s (0.5 s) is shorter than the fake's delay (3 s)
    assert r.status_code == 504, r.text
    assert r.json()["error"]["type"] == "upstream_timeout" and "sent nothing for 0.5 s" in error_message(r)
    assert chat(client, "direct-model").status_code == 200


def test_streaming_upstream_failure_is_502(client):
    r = chat(client, "router:models=" + MODELS[3], stream=True)
    assert r.status_code == 502 and "failed with HTTP 500" in error_message(r)


def test_upstream_key_never_leaks(client, upstreams, caplog):
    caplog.set_level("DEBUG")
    for model in ("nokey-model", "down-model", "direct-model", "router:models=" + MODELS[3]):
        assert SECRET not in chat(client, model).text
    assert SECRET not in client.get("/metrics").text
    assert SECRET not in repr(upstreams) and SECRET not in repr(upstreams["direct-model"])
    assert SECRET not in caplog.text


# ---- metrics ---------------------------------------------------------------------------------------------------
def test_metrics(client):
    chat(client, "router:models=" + MODELS[0])
    client.post("/v1/route", json={"prompt": PROMPT, "policy": "models=" + MODELS[1]})
    client.post("/v1/route", content=b"nope")
    text = client.get("/metrics").text
    assert 'routoo_requests_total{path="/v1/route",status="200"}' in text
    assert 'routoo_requests_total{path="/v1/route",status="400"}' in text
    assert 'routoo_requests_total{path="/v1/chat/completions",status="200"}' in text
    assert 'routoo_request_latency_seconds_bucket{le="0.005",path="/v1/route"}' in text
    assert f'routoo_chosen_model_total{{model="{MODELS[0]}"}}' in text
    assert f'routoo_chosen_model_total{{model="{MODELS[1]}"}}' in text
    assert f'routoo_estimated_spend_usd_total{{model="{MODELS[0]}"}}' in text  # a forwarded chat is spend
    values = dict(ln.rsplit(" ", 1) for ln in text.splitlines() if ln and not ln.startswith("#"))
    passes = float(values["routoo_predictor_passes_total"])
    prompts = float(values["routoo_predictor_prompts_total"])
    assert 1 <= passes <= prompts
    assert "routoo_batcher_queue_depth 0.0" in text
    assert float(values[f'routoo_estimated_spend_usd_total{{model="{MODELS[0]}"}}']) > 0


# ---- auth, back-pressure, no batching --------------------------------------------------------------------------
def test_bearer_auth(upstreams):
    app = create_app(small_router(), upstreams, auth_token="let-me-in")
    with serve_in_thread(app) as url, httpx.Client(base_url=url, timeout=30) as c:
        assert c.get("/healthz").status_code == 200  # probes stay open
        r = c.post("/v1/route", json={"prompt": PROMPT})
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
        wrong = {"Authorization": "Bearer wrong"}
        assert c.post("/v1/route", json={"prompt": PROMPT}, headers=wrong).status_code == 401
        assert c.get("/metrics").status_code == 401
        ok = {"Authorization": "Bearer let-me-in"}
        assert c.post("/v1/route", json={"prompt": PROMPT}, headers=ok).status_code == 200
        assert chat(c, "direct-model").status_code == 401
        r = c.post("/v1/chat/completions", headers=ok,
                   json={"model": "direct-model", "messages": [{"role": "user", "content": "hi"}]})
        assert r.status_code == 200


def test_queue_full_is_503_with_retry_after(upstreams):
    router = small_router()
    app = create_app(router, upstreams, max_wait=0.0, max_batch_prompts=1, max_queue=2)
    with serve_in_thread(app) as url:
        async def main():
            async with httpx.AsyncClient(base_url=url, timeout=30) as c:
                router._predict_lock.acquire()  # hold the one predictor pass: requests pile up in the queue
                try:
                    tasks = [asyncio.ensure_future(c.post("/v1/route", json={"prompt": "first"}))]
                    await asyncio.sleep(0.5)  # the worker has taken it and waits on the held lock
                    tasks += [asyncio.ensure_future(c.post("/v1/route", json={"prompt": f"p{i}"})) for i in range(7)]
                    await asyncio.wait(tasks, timeout=10, return_when=asyncio.FIRST_COMPLETED)
                    await asyncio.sleep(0.5)
                finally:
                    router._predict_lock.release()
                rs = await asyncio.gather(*tasks)
                after = await c.post("/v1/route", json={"prompt": PROMPT})
            return rs, after

        responses, after = asyncio.run(main())
    codes = sorted(r.status_code for r in responses)
    busy = [r for r in responses if r.status_code == 503]
    # one request is inside the held pass, two wait in the queue; the other five are turned away
    assert codes == [200] * 3 + [503] * 5, codes
    assert all(r.headers["retry-after"] == "1" and "queue is full" in error_message(r) for r in busy)
    assert after.status_code == 200


def test_without_batching(upstreams):
    router = small_router()
    app = create_app(router, upstreams, batching=False)
    with serve_in_thread(app) as url, httpx.Client(base_url=url, timeout=30) as c:
        assert c.get("/healthz").json()["batching"] is False
        r = c.post("/v1/route", json={"prompts": [PROMPT, "hello"], "policy": "lambda=100"})
        assert r.status_code == 200 and len(r.json()["decisions"]) == 2
        assert router.batcher is None


def test_server_without_upstreams_answers_501_for_chat():
    app = create_app(small_router(), None)
    with serve_in_thread(app) as url, httpx.Client(base_url=url, timeout=30) as c:
        r = chat(c, "router")
        assert r.status_code == 501 and "no upstreams" in error_message(r)
        assert c.post("/v1/route", json={"prompt": PROMPT}).status_code == 200


def test_client_and_batcher_live_in_lifespan(upstreams):
    router = small_router()
    app = create_app(router, upstreams)
    assert router.batcher is None and not hasattr(app.state, "client")  # nothing built at creation
    with serve_in_thread(app):
        assert router.batcher is not None and isinstance(app.state.client, httpx.AsyncClient)
    assert router.batcher is None and app.state.client.is_closed


def test_predictor_failure_is_500_for_that_batch_only(upstreams, monkeypatch):
    """A predictor pass that raises is the server's fault (500, logged), not the client's; serving continues."""
    router = small_router()
    real_predict = router.predictor.predict

    def predict(prompts):
        if "EXPLODE" in prompts:
            raise RuntimeError("simulated predictor crash")
        return real_predict(prompts)

    monkeypatch.setattr(router.predictor, "predict", predict)
    app = create_app(router, upstreams)
    with serve_in_thread(app) as url, httpx.Client(base_url=url, timeout=30) as c:
        r = c.post("/v1/route", json={"prompt": "EXPLODE"})
        assert r.status_code == 500 and "simulated predictor crash" in error_message(r)
        assert c.post("/v1/route", json={"prompt": PROMPT}).status_code == 200
