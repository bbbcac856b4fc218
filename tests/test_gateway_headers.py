"""Routing headers and actual cost accounting, through the official `openai` client against the real server
(uvicorn on loopback) in front of the test-started fake upstream: every routed answer, streamed or not, carries
x-routoo-model / -expected-cost / -predicted-quality / -route-ms; the upstream's usage is priced by the router's
cost model and counted in /metrics per model and per API key (labelled by a short hash, never the secret)."""
import httpx
import pytest

openai = pytest.importorskip("openai")
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from routoo_fast.serve.accounting import ANONYMOUS, bearer_key_id, key_id, usage_from_events  # noqa: E402
from routoo_fast.serve.server import create_app  # noqa: E402
from routoo_fast.serve.upstreams import Upstreams  # noqa: E402
from fake_upstream import FakeUpstream, fake_usage, reply_text, serve_in_thread  # noqa: E402
from small_router import MODELS, small_router  # noqa: E402

TOKEN = "routoo-gateway-test-token-93c1"
PROMPT = "Which ocean is the deepest on Earth?"
MESSAGES = [{"role": "user", "content": PROMPT}]
HEADERS = ("x-routoo-model", "x-routoo-expected-cost", "x-routoo-predicted-quality", "x-routoo-route-ms")


@pytest.fixture(scope="module")
def server():
    fake = FakeUpstream()
    router = small_router()
    with serve_in_thread(fake.app) as up_url:
        models = {m: {} for m in MODELS}
        models["direct-model"] = {"model": "direct-upstream-id"}  # a pass-through model the router does not price
        ups = Upstreams.from_dict({"defaults": {"base_url": up_url + "/v1", "api_key_env": None}, "models": models})
        app = create_app(router, ups, auth_token=TOKEN)
        with serve_in_thread(app) as url:
            yield url, router


@pytest.fixture()
def client(server):
    with openai.OpenAI(base_url=server[0] + "/v1", api_key=TOKEN, max_retries=0, timeout=30) as c:
        yield c


def metric(url: str, name: str, **labels) -> float:
    text = httpx.get(url + "/metrics", headers={"Authorization": f"Bearer {TOKEN}"}).text
    total = 0.0
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                total += sample.value
    return total


def expected_actual(router, model: str, text: str) -> float:
    usage = fake_usage(text)
    return router.cost_model.call_cost(model, usage["prompt_tokens"], usage["completion_tokens"])


def check_headers(headers, router, policy: str):
    for name in HEADERS:
        assert name in headers, f"missing {name}"
    decision = router.route([PROMPT], policy)[0]
    assert headers["x-routoo-model"] == decision.model
    assert float(headers["x-routoo-expected-cost"]) == pytest.approx(decision.expected_cost, rel=1e-5)
    assert float(headers["x-routoo-predicted-quality"]) == pytest.approx(decision.predicted_quality, abs=1e-4)
    assert float(headers["x-routoo-route-ms"]) >= 0.0


def test_key_id_is_short_stable_and_not_the_secret():
    kid = key_id(TOKEN)
    assert kid == key_id(TOKEN) and kid != key_id(TOKEN + "x")
    assert kid.startswith("k-") and len(kid) == 14 and TOKEN not in kid
    assert bearer_key_id(f"Bearer {TOKEN}") == kid == bearer_key_id(f"bearer  {TOKEN} ")
    assert bearer_key_id(None) == ANONYMOUS == bearer_key_id("Basic abc")
    with pytest.raises(ValueError):
        key_id("")


def test_usage_from_events_takes_the_last_usage():
    events = (b'data: {"choices": [{"delta": {"content": "usage"}}]}\n\n'
              b'data: {"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 4}}\n\n'
              b"data: [DONE]\n\n")
    assert usage_from_events(events) == {"prompt_tokens": 3, "completion_tokens": 4}
    assert usage_from_events(b'data: {"choices": []}\n\n') is None


def test_routed_answer_has_headers_and_actual_cost_per_model_and_key(server, client):
    url, router = server
    policy = "max_quality"
    before = metric(url, "routoo_actual_spend_usd_total")
    raw = client.chat.completions.with_raw_response.create(model="router", messages=MESSAGES)
    completion = raw.parse()
    check_headers(raw.headers, router, policy)
    model = raw.headers["x-routoo-model"]
    text = completion.choices[0].message.content
    assert text == reply_text(model, PROMPT)
    want = expected_actual(router, model, text)
    assert want > 0
    kid = key_id(TOKEN)
    assert metric(url, "routoo_actual_spend_usd_total") - before == pytest.approx(want, rel=1e-9)
    assert metric(url, "routoo_actual_spend_usd_total", model=model, key=kid) >= want
    assert metric(url, "routoo_upstream_tokens_total", model=model, key=kid, kind="prompt") >= 7
    body = httpx.get(url + "/metrics", headers={"Authorization": f"Bearer {TOKEN}"}).text
    assert TOKEN not in body  # the secret never becomes a label


def test_streamed_answer_has_headers_and_usage_from_the_last_chunk(server, client):
    url, router = server
    before = metric(url, "routoo_actual_spend_usd_total")
    with client.chat.completions.with_streaming_response.create(
            model="router", messages=MESSAGES, stream=True, stream_options={"include_usage": True}) as response:
        check_headers(response.headers, router, "max_quality")
        model = response.headers["x-routoo-model"]
        chunks = list(response.parse())
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == reply_text(model, PROMPT)
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == len(text.split())
    want = expected_actual(router, model, text)
    assert metric(url, "routoo_actual_spend_usd_total") - before == pytest.approx(want, rel=1e-9)


def test_stream_without_usage_counts_no_actual_cost(server, client):
    url, router = server
    before = metric(url, "routoo_actual_spend_usd_total")
    missing = metric(url, "routoo_usage_missing_total")
    with client.chat.completions.with_streaming_response.create(
            model="router", messages=MESSAGES, stream=True) as response:
        check_headers(response.headers, router, "max_quality")
        chunks = list(response.parse())
    assert all(c.usage is None for c in chunks)
    assert metric(url, "routoo_actual_spend_usd_total") == before
    assert metric(url, "routoo_usage_missing_total") == missing + 1


def test_pass_through_model_counts_tokens_but_no_usd(server, client):
    url, _ = server
    before = metric(url, "routoo_actual_spend_usd_total")
    raw = client.chat.completions.with_raw_response.create(model="direct-model", messages=MESSAGES)
    assert raw.headers["x-routoo-model"] == "direct-model" and "x-routoo-route-ms" not in raw.headers
    assert metric(url, "routoo_upstream_tokens_total", model="direct-model", kind="completion") > 0
    assert metric(url, "routoo_actual_spend_usd_total") == before


def test_call_cost_is_tokens_times_prices(server):
    _, router = server
    cm = router.cost_model
    j = 2
    assert cm.call_cost(MODELS[j], 1000, 500) == pytest.approx(1000 * cm.input_price[j] + 500 * cm.output_price[j])
    with pytest.raises(KeyError):
        cm.call_cost("no-such-model", 1, 1)
    with pytest.raises(ValueError, match="output_tokens"):
        cm.call_cost(MODELS[0], 1, -1)
