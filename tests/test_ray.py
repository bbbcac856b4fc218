"""Ray (slow; skipped without `pip install 'routoo_fast[ray]'`): a local Ray started here (2 CPUs).

Offline: `route_batch_ray` on Ray Data gives exactly the in-process decisions (same chunks, same Q bits); the
distributed budget (k-section on the workers' cost sums) stays under the budget and within one hull edge of the
exact solution. Online: the Ray Serve application answers the same requests as the plain server (create_app on
uvicorn) with the same bodies and status codes, including a streamed chat through a fake upstream started here,
bad input, and shares predictor passes between concurrent requests through @serve.batch."""
import asyncio
import json
import os

import numpy as np
import pytest

ray = pytest.importorskip("ray")
pytest.importorskip("ray.serve")

import httpx  # noqa: E402

from routoo_fast import cli, selector  # noqa: E402
from routoo_fast.router import Router  # noqa: E402
from routoo_fast.serve.route_batch import route_batch, route_batch_ray  # noqa: E402
from fake_upstream import FakeUpstream, free_port, reply_text, serve_in_thread  # noqa: E402
from small_router import MODELS, save_small_router  # noqa: E402

pytestmark = pytest.mark.slow

KEY_ENV = "ROUTOO_TEST_RAY_UPSTREAM_KEY"
SECRET = "sk-test-ray-not-a-real-key-5521"
os.environ[KEY_ENV] = SECRET  # before ray.init: the local Ray's workers inherit this process's environment
PROMPT = "What is the boiling point of water at sea level in Celsius?"
PROMPTS = [f"Question {i}: what is {i} times {i + 7}, and why does it matter?" for i in range(37)] + [
    "Write a sonnet about the sea.", "Prove that sqrt(2) is irrational.", PROMPT]


@pytest.fixture(scope="module")
def saved_router(tmp_path_factory):
    # with a per-prompt output-length model, as the shipped default: the rows [Q | lengths] cross Ray's batching
    return str(save_small_router(tmp_path_factory.mktemp("ray") / "router", lengths=True))


def test_cli_serve_ray_starts_answers_and_stops_on_ctrl_c(saved_router, in_process, capsys):
    """`routoo-fast serve --ray` in a subprocess (its own local Ray; first in this file, before the test Ray)."""
    import signal
    import subprocess
    import sys
    import time

    assert cli.main(["serve", "--ray", "--workers", "2"]) == 1
    assert "use --replicas N or --autoscale MIN:MAX" in capsys.readouterr().err
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "routoo_fast.cli", "serve", "--ray", "--router", saved_router,
                             "--port", str(port), "--replicas", "1", "--threads", "1", "--quiet"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline, up = time.monotonic() + 180, False
        while time.monotonic() < deadline and proc.poll() is None and not up:
            try:
                up = httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200
            except httpx.HTTPError:
                time.sleep(1)
        assert up, f"serve --ray did not come up (exit code {proc.poll()})"
        r = httpx.post(f"http://127.0.0.1:{port}/v1/route", json={"prompt": PROMPT, "policy": "lambda=2000"},
                       timeout=60)
        assert r.status_code == 200
        assert r.json()["decisions"][0]["model"] == in_process.route([PROMPT], "lambda=2000")[0].model
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            _, err = proc.communicate(timeout=90)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
    assert proc.returncode == 130, err[-2000:]


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, logging_level="WARNING", log_to_driver=False)
    yield
    from ray import serve

    serve.shutdown()
    ray.shutdown()


@pytest.fixture(scope="module")
def in_process(saved_router):
    return Router.from_pretrained(saved_router, num_threads=1)


# ---- offline: Ray Data ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("policy", ["lambda=2000", "max_cost=0.0002,models=Qwen2-7B-Instruct|gpt-4o-2024-05-13",
                                    "budget"])
def test_ray_decisions_equal_in_process(local_ray, saved_router, in_process, policy):
    if policy == "budget":  # gathered to the driver: the exact knapsack, the same call as in-process
        policy = f"budget={float(in_process.costs(PROMPTS).min(axis=1).sum() * 1.4)!r}"
    expected = route_batch(in_process, PROMPTS, policy, batch_size=8, with_q=True)
    got = route_batch_ray({"path": saved_router, "num_threads": 1}, PROMPTS, policy, actors=2, batch_size=8,
                          with_q=True)
    assert got.model == expected.model
    np.testing.assert_array_equal(got.Q, expected.Q)
    np.testing.assert_array_equal(got.predicted_quality, expected.predicted_quality)
    np.testing.assert_array_equal(got.expected_cost, expected.expected_cost)
    np.testing.assert_array_equal(got.feasible, expected.feasible)
    assert got.method == ("gather" if policy.startswith("budget") else "per-prompt")


@pytest.mark.parametrize("factor, models", [(1.25, None), (2.0, None), (1.5, (MODELS[0], MODELS[2], MODELS[3]))])
def test_distributed_budget_within_one_hull_edge_and_under_budget(local_ray, saved_router, in_process, factor,
                                                                   models):
    C = in_process.costs(PROMPTS)
    allowed = None if models is None else np.array([m in models for m in MODELS])
    cheapest = np.where(allowed if allowed is not None else True, C, np.inf).min(axis=1).sum()
    total = float(cheapest * factor)
    policy = f"budget={total!r}" + ("" if models is None else ",models=" + "|".join(models))
    exact_run = route_batch(in_process, PROMPTS, policy, batch_size=8, with_q=True)
    exact = selector.budget(exact_run.Q, C, total, allowed=allowed)
    got = route_batch_ray({"path": saved_router, "num_threads": 1}, PROMPTS, policy, actors=2, batch_size=8,
                          gather_max_cells=0)  # force the k-section
    assert got.method == "k-section"
    assert got.total_cost <= total
    assert got.total_quality >= exact.lp_bound - exact.break_gain - 1e-9  # within one hull edge of the LP optimum
    assert got.total_quality <= exact.total_quality + 1e-9
    assert exact.lambda_star <= got.lambda_star <= exact.lambda_star * (1 + 1e-9) + 1e-300
    if models is not None:
        assert set(got.model) <= set(models)


def test_distributed_budget_below_the_cheapest_total(local_ray, saved_router):
    with pytest.raises(ValueError, match="below the cheapest possible total"):
        route_batch_ray({"path": saved_router, "num_threads": 1}, PROMPTS[:5], "budget=1e-9", actors=1,
                        gather_max_cells=0)


def test_cli_route_batch_ray(local_ray, saved_router, in_process, tmp_path, capsys):
    (tmp_path / "in.jsonl").write_text("".join(json.dumps({"prompt": p}) + "\n" for p in PROMPTS))
    code = cli.main(["route-batch", "--input", str(tmp_path / "in.jsonl"), "--output", str(tmp_path / "out.jsonl"),
                     "--router", saved_router, "--lambda", "2000", "--ray", "--actors", "2", "--batch-size", "8",
                     "--quiet"])
    assert code == 0, capsys.readouterr().err
    rows = [json.loads(line) for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    expected = route_batch(in_process, PROMPTS, "lambda=2000", batch_size=8)
    assert [r["model"] for r in rows] == expected.model
    assert [r["predicted_quality"] for r in rows] == expected.predicted_quality.tolist()
    code = cli.main(["route-batch", "--input", str(tmp_path / "in.jsonl"), "--output", str(tmp_path / "o.jsonl"),
                     "--router", saved_router, "--policy", "temperature=2", "--ray", "--quiet"])
    assert code == 1 and "unknown policy key" in capsys.readouterr().err


# ---- online: Ray Serve ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def upstream():
    fake = FakeUpstream(api_key=SECRET)
    with serve_in_thread(fake.app) as url:
        fake.url = url
        yield fake


@pytest.fixture(scope="module")
def upstreams_file(upstream, tmp_path_factory):
    path = tmp_path_factory.mktemp("ray_upstreams") / "upstreams.json"
    models = {m: {} for m in MODELS}
    models["direct-model"] = {"model": "direct-upstream-id"}
    path.write_text(json.dumps({"defaults": {"base_url": upstream.url + "/v1", "api_key_env": KEY_ENV},
                                "models": models}))
    return str(path)


@pytest.fixture(scope="module")
def servers(local_ray, saved_router, upstreams_file):
    """(plain server URL, Ray Serve URL): the same router directory, upstreams and limits."""
    from ray import serve

    from routoo_fast.serve.ray_app import build_app
    from routoo_fast.serve.server import create_app
    from routoo_fast.serve.upstreams import Upstreams

    port = free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    serve.run(build_app({"router": saved_router, "upstreams": upstreams_file, "max_body_bytes": 4096,
                         "max_wait_ms": 20.0, "threads": 1}), name="routoo", route_prefix="/")
    plain = create_app(Router.from_pretrained(saved_router, num_threads=1), Upstreams.load(upstreams_file),
                       max_body_bytes=4096, max_wait=0.02)
    with serve_in_thread(plain) as url:
        yield url, f"http://127.0.0.1:{port}"
    serve.delete("routoo")


def _both(servers, method, path, **kwargs):
    out = []
    for url in servers:
        with httpx.Client(base_url=url, timeout=60) as client:
            out.append(client.request(method, path, **kwargs))
    return out


def _same_json(a, b):
    """Equal JSON, floats to 1e-6 relative (two processes; the same code and weights)."""
    if isinstance(a, float) and isinstance(b, float):
        return b == pytest.approx(a, rel=1e-6)
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same_json(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same_json(x, y) for x, y in zip(a, b))
    return a == b


@pytest.mark.parametrize("body", [
    {"prompts": PROMPTS[:6], "policy": "lambda=2000"},
    {"prompt": PROMPT},
    {"prompts": PROMPTS[:4], "policy": {"min_quality": 0.6}},
    {"prompts": PROMPTS[:9], "policy": "budget=0.0007"},  # binding: cheapest total 0.00064, max_quality 0.00080
    {"prompts": PROMPTS[:3], "policy": "max_quality,models=Qwen2-7B-Instruct|Mixtral-8x7B-Instruct-v0.1"},
])
def test_route_answers_the_same(servers, body):
    plain, on_ray = _both(servers, "POST", "/v1/route", json=body)
    assert plain.status_code == on_ray.status_code == 200, on_ray.text
    assert _same_json(plain.json(), on_ray.json())


@pytest.mark.parametrize("method, path, kwargs", [
    ("POST", "/v1/route", {"content": b"{not json"}),
    ("POST", "/v1/route", {"json": {}}),
    ("POST", "/v1/route", {"json": {"prompts": []}}),
    ("POST", "/v1/route", {"json": {"prompt": "a", "policy": "temperature=3"}}),
    ("POST", "/v1/route", {"json": {"prompt": "a", "policy": "budget=0"}}),
    ("POST", "/v1/route", {"json": {"prompt": "x" * 5000}}),  # over max_body_bytes: 413
    ("POST", "/v1/route", {"content": b'{"prompt": "\\ud800 lone surrogate"}'}),
    ("POST", "/v1/chat/completions", {"json": {"model": "router"}}),
    ("POST", "/v1/chat/completions", {"json": {"model": "nope", "messages": [{"role": "user", "content": "hi"}]}}),
    ("GET", "/v1/route", {}),  # 405
    ("GET", "/no/such/path", {}),  # 404
])
def test_bad_input_gives_the_same_error(servers, method, path, kwargs):
    plain, on_ray = _both(servers, method, path, **kwargs)
    assert 400 <= plain.status_code < 500
    assert on_ray.status_code == plain.status_code
    assert on_ray.json() == plain.json()


def test_healthz_and_models_are_the_same(servers):
    plain, on_ray = _both(servers, "GET", "/healthz")
    assert plain.json() == on_ray.json() and on_ray.json()["batching"] is True
    plain, on_ray = _both(servers, "GET", "/v1/models")
    assert [m["id"] for m in plain.json()["data"]] == [m["id"] for m in on_ray.json()["data"]]


def test_chat_routed_and_direct_are_the_same(servers):
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": PROMPT}]
    for model in ("router:lambda=2000", "direct-model"):
        plain, on_ray = _both(servers, "POST", "/v1/chat/completions", json={"model": model, "messages": messages})
        assert plain.status_code == on_ray.status_code == 200, on_ray.text
        assert on_ray.headers["x-routoo-model"] == plain.headers["x-routoo-model"]
        a, b = plain.json(), on_ray.json()
        assert a["choices"][0]["message"]["content"] == b["choices"][0]["message"]["content"]


def test_streamed_chat_is_the_same(servers):
    texts, models = [], []
    for url in servers:
        with httpx.Client(base_url=url, timeout=60) as client:
            with client.stream("POST", "/v1/chat/completions", json={
                    "model": "router:max_quality", "stream": True,
                    "messages": [{"role": "user", "content": PROMPT}]}) as r:
                assert r.status_code == 200
                assert r.headers["content-type"].startswith("text/event-stream")
                models.append(r.headers["x-routoo-model"])
                events = [line[len("data: "):] for line in r.iter_lines() if line.startswith("data: ")]
        assert events[-1] == "[DONE]" and len(events) > 3  # really streamed, event by event
        texts.append("".join(json.loads(e)["choices"][0]["delta"].get("content", "") for e in events[:-1]))
    assert models[0] == models[1]
    assert texts[0] == texts[1] == reply_text(models[0], PROMPT)


def _passes(client) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith("routoo_predictor_passes_total"):
            return float(line.split()[-1])
    raise AssertionError("no routoo_predictor_passes_total in /metrics")


def test_concurrent_requests_share_passes_through_serve_batch(servers):
    url = servers[1]
    prompts = [f"concurrent question {i}: name a prime above {10 * i}" for i in range(16)]
    with httpx.Client(base_url=url, timeout=60) as client:
        before = _passes(client)

    async def main():
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            return await asyncio.gather(*(client.post("/v1/route", json={"prompt": p}) for p in prompts))

    responses = asyncio.run(main())
    assert all(r.status_code == 200 for r in responses)
    with httpx.Client(base_url=url, timeout=60) as client:
        assert _passes(client) - before < len(prompts)  # some requests shared a pass
