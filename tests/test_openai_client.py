"""The official `openai` Python client against the real server (uvicorn on loopback) in front of the fake upstream:
sync, async and streaming answers, the models list, and the error types a client program catches (APIError on a
mid-stream failure, RateLimitError on an upstream 429, InternalServerError 504 on an upstream timeout,
APITimeoutError on the client's own timeout, BadRequestError on bad input, AuthenticationError, NotFoundError).
Retries are off everywhere, so each error is seen once and no test waits on a back-off."""
import asyncio
import os
import time

import pytest

openai = pytest.importorskip("openai")

from routoo_fast.serve.server import create_app  # noqa: E402
from routoo_fast.serve.upstreams import Upstreams  # noqa: E402
from fake_upstream import FakeUpstream, reply_text, serve_in_thread  # noqa: E402
from small_router import MODELS, small_router  # noqa: E402

TOKEN = "routoo-test-token"
KEY_ENV = "ROUTOO_OPENAI_TEST_UPSTREAM_KEY"
UPSTREAM_KEY = "sk-fake-upstream-key-5d1c"
PROMPT = "Name the largest planet in the solar system."
MESSAGES = [{"role": "system", "content": "be brief"}, {"role": "user", "content": PROMPT}]


@pytest.fixture(scope="module")
def upstream():
    fake = FakeUpstream(api_key=UPSTREAM_KEY, slow_s=3.0, hang_s=60.0)
    with serve_in_thread(fake.app) as url:
        fake.url = url
        yield fake


@pytest.fixture(scope="module")
def base_url(upstream):
    old = os.environ.get(KEY_ENV)
    os.environ[KEY_ENV] = UPSTREAM_KEY
    models = {m: {} for m in MODELS}
    models["direct-model"] = {"model": "direct-upstream-id"}
    for fault in ("gzip", "drop", "stall", "nodone", "ratelimit", "hang", "slow"):
        models[f"{fault}-model"] = {"model": f"x-{fault}"}
    models["stall-model"]["timeout_s"] = 0.5
    models["slow-model"]["timeout_s"] = 0.5
    ups = Upstreams.from_dict({"defaults": {"base_url": upstream.url + "/v1", "api_key_env": KEY_ENV},
                               "models": models})
    app = create_app(small_router(), ups, auth_token=TOKEN, max_wait=0.002)
    try:
        with serve_in_thread(app) as url:
            yield url + "/v1"
    finally:
        if old is None:
            os.environ.pop(KEY_ENV, None)
        else:
            os.environ[KEY_ENV] = old


@pytest.fixture(scope="module")
def client(base_url):
    with openai.OpenAI(base_url=base_url, api_key=TOKEN, max_retries=0, timeout=30) as c:
        yield c


def routed(policy: str) -> str:
    router = small_router()
    return router.route([PROMPT], policy)[0].model


# ---- answers: sync, streamed, async ------------------------------------------------------------------------------
def test_sync_chat(client):
    policy = f"max_quality,models={MODELS[0]}|{MODELS[2]}"
    raw = client.chat.completions.with_raw_response.create(model="router:" + policy, messages=MESSAGES)
    completion = raw.parse()
    chosen = raw.headers["x-routoo-model"]
    assert chosen == routed(policy)
    assert completion.model == chosen  # these upstream entries send the router's name as the model id
    assert completion.choices[0].message.content == reply_text(chosen, PROMPT)
    assert completion.usage.total_tokens > 0


def test_sync_stream(client):
    stream = client.chat.completions.create(model="direct-model", messages=MESSAGES, stream=True)
    chunks = list(stream)
    assert len(chunks) > 2 and {c.model for c in chunks} == {"direct-upstream-id"}
    text = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert text == reply_text("direct-upstream-id", PROMPT)


def test_gzip_upstream_stream_reaches_the_client_decoded(client):
    stream = client.chat.completions.create(model="gzip-model", messages=MESSAGES, stream=True)
    assert "".join(c.choices[0].delta.content or "" for c in stream) == reply_text("x-gzip", PROMPT)


def test_async_chat_and_stream(base_url):
    async def main():
        async with openai.AsyncOpenAI(base_url=base_url, api_key=TOKEN, max_retries=0, timeout=30) as c:
            plain = [c.chat.completions.create(model="router", messages=[{"role": "user", "content": f"q{i} {PROMPT}"}])
                     for i in range(6)]
            completions = await asyncio.gather(*plain)
            stream = await c.chat.completions.create(model="direct-model", messages=MESSAGES, stream=True)
            text = "".join([chunk.choices[0].delta.content or "" async for chunk in stream])
            return completions, text

    completions, text = asyncio.run(main())
    for i, completion in enumerate(completions):
        assert completion.choices[0].message.content == reply_text(completion.model, f"q{i} {PROMPT}")
    assert text == reply_text("direct-upstream-id", PROMPT)


def test_models_list_and_retrieve(client):
    ids = [m.id for m in client.models.list()]
    assert ids[0] == "router" and any(i.startswith("router:") for i in ids)
    assert set(MODELS) <= set(ids) and "direct-model" in ids
    assert client.models.retrieve("direct-model").id == "direct-model"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("no-such-model")


# ---- error types ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("model, match", [("drop-model", "broke off mid-stream"),
                                          ("stall-model", "stalled mid-stream"),
                                          ("nodone-model", "without [DONE]")])
def test_midstream_failure_raises_api_error(client, model, match):
    stream = client.chat.completions.create(model=model, messages=MESSAGES, stream=True)
    received = []
    with pytest.raises(openai.APIError, match=match.replace("[", r"\[").replace("]", r"\]")) as exc:
        for chunk in stream:
            received.append(chunk)
    assert received  # the failure came after the 200 and some chunks: not a status error
    assert not isinstance(exc.value, openai.APIStatusError)


def test_rate_limit_is_rate_limit_error_with_retry_after(client):
    with pytest.raises(openai.RateLimitError) as exc:
        client.chat.completions.create(model="ratelimit-model", messages=MESSAGES)
    assert exc.value.status_code == 429 and exc.value.response.headers["retry-after"] == "7"


def test_upstream_timeout_is_504(client):
    with pytest.raises(openai.InternalServerError) as exc:
        client.chat.completions.create(model="slow-model", messages=MESSAGES)
    assert exc.value.status_code == 504 and exc.value.body["type"] == "upstream_timeout"


def test_client_timeout_is_api_timeout_error_and_frees_the_upstream(base_url, upstream):
    with openai.OpenAI(base_url=base_url, api_key=TOKEN, max_retries=0, timeout=1.0) as impatient:
        with pytest.raises(openai.APITimeoutError):
            impatient.chat.completions.create(model="hang-model", messages=MESSAGES)
    deadline = time.monotonic() + 20
    while "x-hang" not in upstream.disconnects and time.monotonic() < deadline:
        time.sleep(0.02)
    assert "x-hang" in upstream.disconnects  # the server cancelled the call it no longer had a client for


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"model": "no-such-model"}, "unknown model 'no-such-model'"),
        ({"model": "router:lambda=-1"}, "lambda must be >= 0"),
        ({"model": "router", "extra_body": {"routoo_policy": {"temperature": 3}}}, "unknown policy key"),
        ({"model": "router", "messages": [{"role": "system", "content": "no user turn"}]}, "no user message"),
    ],
)
def test_bad_input_is_bad_request_error(client, kwargs, match):
    kwargs = {"messages": MESSAGES, **kwargs}
    with pytest.raises(openai.BadRequestError, match=match) as exc:
        client.chat.completions.create(**kwargs)
    assert exc.value.status_code == 400 and exc.value.body["type"] == "invalid_request_error"


def test_wrong_token_is_authentication_error(base_url):
    with openai.OpenAI(base_url=base_url, api_key="wrong", max_retries=0, timeout=30) as c:
        with pytest.raises(openai.AuthenticationError):
            c.models.list()
