"""One bad request must fail alone: the real server (uvicorn on loopback) in front of a small real Router.

A prompt that is not valid text is refused with 400 before it joins a shared predictor pass; a request that makes
a shared pass fail anyway gets its own error (400 for an InvalidPrompt, 500 for anything else) while every other
request of that pass gets its decisions. Sharing is forced with a gate (the first pass holds the worker until the
others are queued), never by timing. The batcher's scrape-time metrics are checked on the same server."""
import asyncio
import json
import threading
import time

import httpx
import pytest

from routoo_fast.encoder import InvalidPrompt
from routoo_fast.serve.server import create_app
from fake_upstream import serve_in_thread
from small_router import small_router

GOOD = ["What is the capital of France?", "Integrate x^2 sin x dx.", "Write a haiku about rain.",
        "Explain TCP slow start.", "hello"]


class GatedPredict:
    """Stands in for router.predict_rows: the pass holding HOLD waits for `gate`; a pass holding "poison" raises
    InvalidPrompt, one holding "crash" raises RuntimeError; every call's prompts are recorded."""

    def __init__(self, predict):
        self.predict, self.gate, self.holding, self.calls = predict, threading.Event(), threading.Event(), []

    def __call__(self, prompts):
        self.calls.append(list(prompts))
        if "HOLD" in prompts:
            self.holding.set()
            self.gate.wait(30)
        if any("poison" in p for p in prompts):
            raise InvalidPrompt("prompt is poison")
        if any("crash" in p for p in prompts):
            raise RuntimeError("predictor crashed")
        return self.predict(prompts)


@pytest.fixture()
def gated_server():
    router = small_router()
    gated = GatedPredict(router.predict_rows)
    router.predict_rows = gated  # the batcher's pass calls router.predict_rows: the instance attribute wins
    app = create_app(router, None, max_wait=0.0)
    with serve_in_thread(app) as url:
        yield url, router, gated


def wait_until(condition, what: str, limit: float = 30.0) -> None:
    """Poll a condition; the limit only guards against a hang."""
    deadline = time.monotonic() + limit
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.005)


async def _post_all(url: str, bodies: list[dict]) -> list[httpx.Response]:
    """POST each body to /v1/route concurrently, as ASCII JSON (a lone surrogate goes as the escape "\\ud800",
    as the openai client and json.dumps send it)."""
    headers = {"content-type": "application/json"}
    async with httpx.AsyncClient(base_url=url, timeout=60) as client:
        return await asyncio.gather(*(client.post("/v1/route", content=json.dumps(b), headers=headers)
                                      for b in bodies))


def test_failure_inside_a_shared_pass_fails_only_its_request(gated_server):
    url, router, gated = gated_server
    direct = small_router()  # same predictor, no batcher: the unbatched answers
    expected = {p: direct.route([p])[0].model for p in GOOD + ["fine"]}
    holder = threading.Thread(target=lambda: httpx.post(url + "/v1/route", json={"prompt": "HOLD"}, timeout=60))
    holder.start()
    assert gated.holding.wait(30)
    bodies = ([{"prompt": p} for p in GOOD[:2]] + [{"prompts": ["fine", "poison pill"]}, {"prompt": "crash now"}]
              + [{"prompts": GOOD[2:]}])
    results = {}

    def run():
        results["responses"] = asyncio.run(_post_all(url, bodies))

    sender = threading.Thread(target=run)
    sender.start()
    wait_until(lambda: router.batcher.queue_depth == len(bodies), "all requests to queue behind the held pass")
    gated.gate.set()
    sender.join(60)
    holder.join(60)
    responses = results["responses"]
    # they really shared one pass, which failed
    assert sorted(gated.calls[1]) == sorted(GOOD + ["fine", "poison pill", "crash now"])
    ok = [r for b, r in zip(bodies, responses) if "poison pill" not in b.get("prompts", []) and
          b.get("prompt") != "crash now"]
    for body, r in zip(bodies, responses):
        if body.get("prompt") == "crash now":
            assert r.status_code == 500 and "predictor crashed" in r.json()["error"]["message"]
        elif "poison pill" in body.get("prompts", []):
            assert r.status_code == 400 and r.json()["error"]["message"] == "prompt is poison"
        else:
            assert r.status_code == 200, r.text
            prompts = body.get("prompts") or [body["prompt"]]
            assert [d["model"] for d in r.json()["decisions"]] == [expected[p] for p in prompts]
    assert len(ok) == 3
    metrics = httpx.get(url + "/metrics", timeout=30).text
    assert "routoo_predictor_failed_passes_total 3.0" in metrics  # the shared pass, then the two culprits alone
    assert "routoo_predictor_failed_requests_total 2.0" in metrics


def test_lone_surrogate_is_a_400_before_the_pass_and_neighbours_succeed(gated_server):
    url, router, gated = gated_server
    gated.gate.set()
    bodies = [{"prompt": p} for p in GOOD] + [{"prompts": ["fine", "x \ud800"]}]
    responses = asyncio.run(_post_all(url, bodies))
    for r in responses[:-1]:
        assert r.status_code == 200, r.text
    bad = responses[-1]
    assert bad.status_code == 400
    assert bad.json()["error"]["message"].startswith("prompts[1] is not valid Unicode text: lone surrogate U+D800")
    assert not any("x \ud800" in call for call in gated.calls)  # refused before it reached a pass


def test_batcher_metrics_at_scrape_time(gated_server):
    url, router, gated = gated_server
    gated.gate.set()
    assert httpx.post(url + "/v1/route", json={"prompts": GOOD}, timeout=60).status_code == 200
    text = httpx.get(url + "/metrics", timeout=30).text
    lines = dict(line.rsplit(" ", 1) for line in text.splitlines() if line and not line.startswith("#"))
    passes = float(lines["routoo_predictor_passes_total"])
    assert passes >= 1
    assert float(lines["routoo_predictor_pass_prompts_count"]) == passes
    assert float(lines["routoo_predictor_pass_prompts_sum"]) == float(lines["routoo_predictor_prompts_total"])
    assert float(lines['routoo_predictor_pass_prompts_bucket{le="8.0"}']) == passes  # passes of <= 5 prompts
    assert float(lines['routoo_predictor_pass_seconds_bucket{le="+Inf"}']) == passes
    assert float(lines["routoo_predictor_pass_seconds_sum"]) > 0
    assert lines["routoo_batcher_queue_capacity"] == "1024.0"
    assert lines["routoo_batcher_queue_depth"] == "0.0"
