"""Session affinity: the session key (x-session-id, then `user`, then the conversation's opening), the LRU bound and
the TTL on a fake clock, and the rule through the official `openai` client against the real server and the fake
upstream: a conversation keeps its first turn's model when a later turn's policy would pick a weaker one, moves
to a stronger one when the policy asks for it, is reset (and says so) when the policy leaves its model out, and
the outcomes are counted in /metrics."""
import httpx
import numpy as np
import pytest

openai = pytest.importorskip("openai")
from prometheus_client.parser import text_string_to_metric_families  # noqa: E402

from routoo_fast.router import Decision  # noqa: E402
from routoo_fast.serve.affinity import SessionAffinity, session_of  # noqa: E402
from routoo_fast.serve.server import create_app  # noqa: E402
from routoo_fast.serve.upstreams import Upstreams  # noqa: E402
from fake_upstream import FakeUpstream, reply_text, serve_in_thread  # noqa: E402
from small_router import MODELS, small_router  # noqa: E402

FIRST = "Explain how a heat pump moves heat from a cold place to a warm one."
SECOND = "And why does its efficiency drop when it is very cold outside?"
CHEAP = "lambda=1000000"  # cost dominates: the cheapest model


class Clock:
    def __init__(self):
        self.t = 1000.0

    def __call__(self):
        return self.t


# ---- the session key and the map -----------------------------------------------------------------------------------
def test_session_key_sources_and_scoping():
    turn1 = {"messages": [{"role": "system", "content": "s"}, {"role": "user", "content": FIRST}]}
    turn2 = {"messages": turn1["messages"] + [{"role": "assistant", "content": "a"},
                                              {"role": "user", "content": SECOND}]}
    assert session_of(turn1, {}, "k-a") == session_of(turn2, {}, "k-a")  # the opening names the conversation
    assert session_of(turn1, {}, "k-a")[1] == "opening"
    assert session_of(turn1, {}, "k-a") != session_of(turn1, {}, "k-b")  # callers never share a session
    other = {"messages": [{"role": "user", "content": SECOND}]}
    assert session_of(other, {}, "k-a") != session_of(turn1, {}, "k-a")
    assert session_of({**turn1, "user": "u1"}, {}, "k-a") == session_of({**other, "user": "u1"}, {}, "k-a")
    with_header = session_of({**turn1, "user": "u1"}, {"x-session-id": "s1"}, "k-a")
    assert with_header[1] == "header" and with_header == session_of(other, {"x-session-id": "s1"}, "k-a")
    assert len(session_of(turn1, {"x-session-id": "x" * 100_000}, "k-a")[0]) == 16  # bounded per session


def decision(model, quality):
    return Decision(model, quality, 0.001, "p")


def test_lru_bound_ttl_and_the_rule():
    clock = Clock()
    aff = SessionAffinity(max_sessions=2, ttl_s=60, clock=clock)
    q = {"a": 0.5, "b": 0.7, "c": 0.9}
    resolve = lambda s, d: aff.resolve(s, d, ("a", "b", "c"), q.get, lambda m: 0.002)  # noqa: E731
    assert resolve(b"s1", decision("b", 0.7)) == (decision("b", 0.7), "new")
    kept, outcome = resolve(b"s1", decision("a", 0.5))  # a weaker pick: stay on b
    assert outcome == "kept" and (kept.model, kept.predicted_quality, kept.expected_cost) == ("b", 0.7, 0.002)
    assert resolve(b"s1", decision("c", 0.9)) == (decision("c", 0.9), "upgraded")
    assert aff.resolve(b"s1", decision("a", 0.5), ("a", "b"), q.get, lambda m: 0.0)[1] == "reset"
    resolve(b"s2", decision("b", 0.7))
    resolve(b"s3", decision("b", 0.7))  # s1 was least recently used: evicted
    assert len(aff) == 2 and aff.evicted == 1 and aff.pinned(b"s1") is None
    clock.t += 61
    assert aff.pinned(b"s2") is None and aff.counts["expired"] == 1
    with pytest.raises(ValueError, match="max_sessions"):
        SessionAffinity(max_sessions=0)
    with pytest.raises(ValueError, match="ttl_s"):
        SessionAffinity(ttl_s=float("nan"))


# ---- through the server --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def server():
    fake = FakeUpstream()
    with serve_in_thread(fake.app) as up_url:
        ups = Upstreams.from_dict({"defaults": {"base_url": up_url + "/v1", "api_key_env": None},
                                   "models": {m: {} for m in MODELS}})
        app = create_app(small_router(), ups, affinity=SessionAffinity(max_sessions=100, ttl_s=3600))
        with serve_in_thread(app) as url:
            yield url


@pytest.fixture(scope="module")
def client(server):
    with openai.OpenAI(base_url=server + "/v1", api_key="sk-affinity", max_retries=0, timeout=30) as c:
        yield c


def quality(text: str) -> dict:
    Q = small_router().predict([text])[0]
    return dict(zip(MODELS, Q.tolist()))


def chat(client, policy, messages, session):
    raw = client.chat.completions.with_raw_response.create(
        model=f"router:{policy}", messages=messages, extra_headers={"x-session-id": session})
    model = raw.headers["x-routoo-model"]
    assert raw.parse().choices[0].message.content == reply_text(model, messages[-1]["content"])
    return model, raw.headers["x-routoo-affinity"], raw.headers


def turns(first_answer):
    one = [{"role": "user", "content": FIRST}]
    return one, one + [{"role": "assistant", "content": first_answer}, {"role": "user", "content": SECOND}]


def test_no_silent_downgrade_mid_conversation(client):
    router = small_router()
    strong = router.route([FIRST], "max_quality")[0].model
    cheap_now = router.route([SECOND], CHEAP)[0].model
    q = quality(SECOND)
    assert q[cheap_now] < q[strong]  # the second turn's policy alone would pick a weaker model
    one, two = turns("...")
    assert chat(client, "max_quality", one, "conv-keep")[:2] == (strong, "new")
    model, outcome, headers = chat(client, CHEAP, two, "conv-keep")
    assert (model, outcome) == (strong, "kept")
    assert float(headers["x-routoo-predicted-quality"]) == pytest.approx(q[strong], abs=1e-4)
    # another conversation (its own session) with the same second turn is routed by the policy alone
    assert chat(client, CHEAP, two, "conv-fresh")[:2] == (cheap_now, "new")


def test_a_stronger_model_when_the_policy_asks_for_it(client):
    router = small_router()
    cheap = router.route([FIRST], CHEAP)[0].model
    strong = router.route([SECOND], "max_quality")[0].model
    assert quality(SECOND)[strong] > quality(SECOND)[cheap]
    one, two = turns("...")
    assert chat(client, CHEAP, one, "conv-up")[:2] == (cheap, "new")
    assert chat(client, "max_quality", two, "conv-up")[:2] == (strong, "upgraded")
    assert chat(client, CHEAP, two, "conv-up")[:2] == (strong, "kept")  # pinned to the stronger one now


def test_policy_that_leaves_the_model_out_resets_and_says_so(client):
    router = small_router()
    strong = router.route([FIRST], "max_quality")[0].model
    others = [m for m in MODELS if m != strong]
    one, two = turns("...")
    chat(client, "max_quality", one, "conv-reset")
    model, outcome, _ = chat(client, "max_quality,models=" + "|".join(others), two, "conv-reset")
    assert outcome == "reset" and model == router.route([SECOND], {"max_quality": True, "models": others})[0].model


def test_outcomes_are_in_metrics(server, client):
    one, two = turns("...")
    chat(client, "max_quality", one, "conv-metrics")
    chat(client, CHEAP, two, "conv-metrics")
    samples = {}
    for family in text_string_to_metric_families(httpx.get(server + "/metrics").text):
        for s in family.samples:
            samples[(s.name, s.labels.get("outcome"))] = s.value
    assert samples[("routoo_affinity_turns_total", "kept")] >= 1
    assert samples[("routoo_affinity_turns_total", "new")] >= 1
    assert samples[("routoo_affinity_sessions", None)] >= 1
    assert np.isfinite(samples[("routoo_affinity_evicted_total", None)])
