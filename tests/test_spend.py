"""Spend caps: the caps file (every bad field named), the SQLite ledger (one transaction per charge: a process
killed mid-run loses no acknowledged charge and leaves no half charge; two processes writing at once lose nothing;
a restart sees the totals), and the server through the official `openai` client in front of the fake upstream:
429 + Retry-After at a cap (overall and per key), routing among the cheaper half near a cap, streams charged.
The ledger's clock is fixed in the server tests, so every window and Retry-After is exact."""
import json
import math
import os
import signal
import sqlite3
import subprocess
import sys
import time

import numpy as np
import pytest

openai = pytest.importorskip("openai")

from routoo_fast.cli import main  # noqa: E402
from routoo_fast.serve.accounting import key_id  # noqa: E402
from routoo_fast.serve.server import create_app  # noqa: E402
from routoo_fast.serve.spend import OVERALL, Caps, SpendConfig, SpendGuard, SpendLedger  # noqa: E402
from routoo_fast.serve.upstreams import Upstreams  # noqa: E402
from fake_upstream import FakeUpstream, fake_usage, reply_text, serve_in_thread  # noqa: E402
from small_router import MODELS, small_router  # noqa: E402

PROMPT = "Name three rivers that flow into the Caspian Sea."
MESSAGES = [{"role": "user", "content": PROMPT}]
NOW = 1_700_000_015.5  # the ledger's fixed clock in server tests
KEY_A, KEY_B = "sk-spend-test-key-a", "sk-spend-test-key-b"
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ---- the caps file -------------------------------------------------------------------------------------------------
def test_config_parses_and_keys_override_per_key(tmp_path):
    kid = key_id(KEY_A)
    path = tmp_path / "caps.json"
    path.write_text(json.dumps({"overall": {"usd_per_day": 10}, "per_key": {"usd_per_minute": 0.5, "usd_per_day": 2},
                                "keys": {kid: {"usd_per_day": 5}}, "tighten_at": 0.9, "database": "s.sqlite"}))
    config = SpendConfig.load(path)
    assert config.overall == Caps(None, 10.0) and config.tighten_at == 0.9
    assert config.caps_for(kid) == Caps(0.5, 5.0) and config.caps_for(key_id(KEY_B)) == Caps(0.5, 2.0)
    assert config.database == tmp_path / "s.sqlite"  # relative to the caps file


@pytest.mark.parametrize("data, match", [
    ([], "must be a JSON object"),
    ({"overal": {}}, r"unknown fields \['overal'\]"),
    ({"overall": {"usd_per_hour": 1}}, r"overall has unknown fields \['usd_per_hour'\]"),
    ({"per_key": {"usd_per_day": -1}}, r"per_key.usd_per_day must be a finite number"),
    ({"per_key": {"usd_per_day": "5"}}, r"per_key.usd_per_day"),
    ({"overall": {"usd_per_minute": True}}, r"overall.usd_per_minute"),
    ({"tighten_at": 1.5}, "tighten_at must be a number in"),
    ({"keys": {"sk-live-secret": {}}}, "is not a key id"),
    ({"keys": {"k-0123456789ab": {"usd_per_week": 1}}}, r"keys\['k-0123456789ab'\] has unknown fields"),
    ({"database": 3}, "database must be a file path"),
])
def test_bad_config_names_the_field(data, match):
    with pytest.raises(ValueError, match=match):
        SpendConfig.from_dict(data)


def test_bad_caps_file_is_a_usage_error_naming_it(tmp_path, capsys):
    bad = tmp_path / "caps.json"
    bad.write_text('{"overall": {"usd_per_day": "ten"}}')
    assert main(["serve", "--spend-caps", str(bad)]) == 1
    err = capsys.readouterr().err
    assert "overall.usd_per_day" in err and "Traceback" not in err
    bad.write_text("{not json")
    assert main(["serve", "--spend-caps", str(bad)]) == 1
    assert "not valid JSON" in capsys.readouterr().err


# ---- the ledger ----------------------------------------------------------------------------------------------------
def test_ledger_windows_and_restart(tmp_path):
    path = tmp_path / "spend.sqlite"
    ledger = SpendLedger(path)
    t0 = 86400 * 20000 + 59.0  # the last second of a minute
    ledger.charge("k-a", "m1", 0.5, now=t0)
    ledger.charge("k-a", "m1", 0.25, now=t0 + 1.0)  # the next minute, the same day
    ledger.charge("k-b", "m2", 1.0, now=t0 + 1.0)
    totals = ledger.totals("k-a", now=t0 + 1.0)
    assert totals == {(OVERALL, "minute"): 1.25, (OVERALL, "day"): 1.75, ("k-a", "minute"): 0.25,
                      ("k-a", "day"): 0.75}
    assert ledger.totals("k-a", now=t0 + 86400)[("k-a", "day")] == 0.0  # a new day starts from zero
    ledger.close()
    again = SpendLedger(path)  # a restart (or another worker) sees the same totals
    assert again.totals("k-a", now=t0 + 1.0) == totals
    mode = sqlite3.connect(path).execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"
    with pytest.raises(ValueError, match="finite USD amount"):
        again.charge("k-a", "m1", math.nan)


CHILD = """
import sys
import time
from routoo_fast.serve.spend import SpendLedger
ledger = SpendLedger(sys.argv[1])
for i in range(int(sys.argv[3])):
    ledger.charge(sys.argv[2], "m", 0.25)
    print(i + 1, flush=True)
"""


def child(path, key, n):
    return subprocess.Popen([sys.executable, "-c", CHILD, str(path), key, str(n)], stdout=subprocess.PIPE, text=True,
                            cwd=REPO)


def check_consistent(path, n_charges):
    """Every total equals the ledger's sum, which is n_charges x 0.25 (exact in binary)."""
    db = sqlite3.connect(path)
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert db.execute("SELECT COUNT(*), COALESCE(SUM(usd), 0) FROM charges").fetchone() == (n_charges,
                                                                                           0.25 * n_charges)
    for scope in (OVERALL,):
        for period in ("minute", "day"):
            total = db.execute("SELECT COALESCE(SUM(usd), 0) FROM totals WHERE scope = ? AND period = ?",
                               (scope, period)).fetchone()[0]
            assert total == 0.25 * n_charges, (scope, period)
    db.close()


def test_worker_killed_mid_run_loses_no_acknowledged_charge(tmp_path):
    path = tmp_path / "spend.sqlite"
    SpendLedger(path).close()
    proc = child(path, "k-000000000001", 100_000)
    acked = 0
    try:
        while acked < 40:  # bounded: the child prints one line per committed charge
            line = proc.stdout.readline()
            assert line, f"the child stopped after {acked} charges (rc {proc.poll()})"
            acked = int(line)
        os.kill(proc.pid, signal.SIGKILL)  # mid-run: it is charging in a loop
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    rest = proc.stdout.read().split()  # lines it printed before the kill that we had not read yet
    acked = int(rest[-1]) if rest else acked
    assert proc.returncode == -signal.SIGKILL
    n = sqlite3.connect(path).execute("SELECT COUNT(*) FROM charges").fetchone()[0]
    assert acked <= n <= acked + 1  # at most the charge committed between its commit and its print
    check_consistent(path, n)
    key_total = SpendLedger(path).totals("k-000000000001")[("k-000000000001", "day")]
    assert key_total in (0.25 * n, 0.0)  # 0.0 only if the run crossed midnight UTC (day window moved on)


def test_two_processes_charging_at_once_lose_nothing(tmp_path):
    path = tmp_path / "spend.sqlite"
    SpendLedger(path).close()
    procs = [child(path, f"k-00000000000{i}", 30) for i in (1, 2)]
    for proc in procs:
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0 and out.split()[-1] == "30"
    check_consistent(path, 60)


# ---- the server ----------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def upstream_url():
    fake = FakeUpstream()
    with serve_in_thread(fake.app) as url:
        yield url


def first_call():
    """The model max_quality picks for PROMPT and what its answer actually costs (the fake's usage)."""
    router = small_router()
    model = router.route([PROMPT])[0].model
    usage = fake_usage(reply_text(model, PROMPT))
    return model, router.cost_model.call_cost(model, usage["prompt_tokens"], usage["completion_tokens"])


@pytest.fixture()
def serve(upstream_url, tmp_path):
    def start(caps: dict):
        ups = Upstreams.from_dict({"defaults": {"base_url": upstream_url + "/v1", "api_key_env": None},
                                   "models": {m: {} for m in MODELS}})
        ledger = SpendLedger(tmp_path / "spend.sqlite", clock=lambda: NOW)
        app = create_app(small_router(), ups, spend=SpendGuard(SpendConfig.from_dict(caps), ledger))
        return serve_in_thread(app), ledger
    return start


def client(url, key):
    return openai.OpenAI(base_url=url + "/v1", api_key=key, max_retries=0, timeout=30)


def test_overall_cap_spent_is_429_with_retry_after_to_the_window_end(serve):
    model, cost = first_call()
    server, ledger = serve({"overall": {"usd_per_minute": cost / 2}})
    with server as url, client(url, KEY_A) as c:
        first = c.chat.completions.with_raw_response.create(model="router", messages=MESSAGES)
        assert first.headers["x-routoo-model"] == model
        assert ledger.totals(key_id(KEY_A))[(OVERALL, "minute")] == pytest.approx(cost)
        with pytest.raises(openai.RateLimitError, match="overall cap of .* per minute is spent") as exc:
            c.chat.completions.create(model="router", messages=MESSAGES)
        with client(url, KEY_B) as other, pytest.raises(openai.RateLimitError):  # overall: every key
            other.chat.completions.create(model=MODELS[0], messages=MESSAGES)  # named models too
    window_end = (NOW // 60 + 1) * 60
    assert exc.value.response.headers["retry-after"] == str(math.ceil(window_end - NOW))
    assert exc.value.body["type"] == "insufficient_quota"


def test_per_key_cap_stops_one_key_only(serve):
    _, cost = first_call()
    server, ledger = serve({"per_key": {"usd_per_day": cost / 2}})
    with server as url, client(url, KEY_A) as a, client(url, KEY_B) as b:
        a.chat.completions.create(model="router", messages=MESSAGES)
        with pytest.raises(openai.RateLimitError, match=f"API key {key_id(KEY_A)}'s cap of .* per day") as exc:
            a.chat.completions.create(model="router", messages=MESSAGES)
        assert KEY_A not in str(exc.value.body)  # the message names the key's id, never the key
        b.chat.completions.create(model="router", messages=MESSAGES)  # another key still has its budget
    day_end = (NOW // 86400 + 1) * 86400
    assert exc.value.response.headers["retry-after"] == str(math.ceil(day_end - NOW))
    assert ledger.totals(key_id(KEY_B))[(key_id(KEY_B), "day")] == pytest.approx(cost)


def test_near_a_cap_routing_takes_the_cheaper_half(serve):
    model, cost = first_call()
    router = small_router()
    costs = router.cost_model.costs([PROMPT])[0]
    median = sorted(costs)[1:3]
    assert costs[list(MODELS).index(model)] > sum(median) / 2  # max_quality's pick is an expensive model here
    server, _ = serve({"overall": {"usd_per_day": cost / 0.9}, "tighten_at": 0.8})  # one call spends 90 %
    with server as url, client(url, KEY_A) as c:
        first = c.chat.completions.with_raw_response.create(model="router", messages=MESSAGES)
        assert "x-routoo-spend-tightened" not in first.headers
        second = c.chat.completions.with_raw_response.create(model="router", messages=MESSAGES)
    assert second.headers["x-routoo-spend-tightened"] == "true"
    chosen = second.headers["x-routoo-model"]
    assert costs[list(MODELS).index(chosen)] <= sum(median) / 2
    cheap = [m for m, c in zip(MODELS, costs) if c <= sum(median) / 2]
    assert chosen == router.route([PROMPT], {"max_quality": True, "models": cheap})[0].model


def test_stream_without_usage_is_charged_its_expected_cost(serve):
    server, ledger = serve({"overall": {"usd_per_day": 100.0}})
    expected = small_router().route([PROMPT])[0].expected_cost
    with server as url, client(url, KEY_A) as c:
        list(c.chat.completions.create(model="router", messages=MESSAGES, stream=True))
    assert ledger.totals(key_id(KEY_A))[(OVERALL, "day")] == pytest.approx(expected)


def test_two_workers_share_the_totals(upstream_url, tmp_path):
    """Two apps, each with its own ledger connection on one file (what two --workers processes have): a call
    through one spends the cap the other enforces; nothing is cached in a process."""
    model, cost = first_call()
    ups = Upstreams.from_dict({"defaults": {"base_url": upstream_url + "/v1", "api_key_env": None},
                               "models": {m: {} for m in MODELS}})
    config = SpendConfig.from_dict({"overall": {"usd_per_day": cost / 2}})
    apps = [create_app(small_router(), ups, spend=SpendGuard(config, SpendLedger(tmp_path / "s.sqlite",
                                                                                 clock=lambda: NOW)))
            for _ in range(2)]
    with serve_in_thread(apps[0]) as first, serve_in_thread(apps[1]) as second:
        with client(first, KEY_A) as a, client(second, KEY_B) as b:
            assert a.chat.completions.with_raw_response.create(
                model="router", messages=MESSAGES).headers["x-routoo-model"] == model
            with pytest.raises(openai.RateLimitError, match="overall cap"):
                b.chat.completions.create(model="router", messages=MESSAGES)


def test_abandoned_stream_is_charged(upstream_url, tmp_path):
    """A client that leaves a stream half-way has still made the upstream call: it is charged (expected cost)."""
    ups = Upstreams.from_dict({"defaults": {"base_url": upstream_url + "/v1", "api_key_env": None},
                               "models": {"stall-model": {"model": "x-stall"}}})
    ledger = SpendLedger(tmp_path / "s.sqlite", clock=lambda: NOW)
    router = small_router()
    app = create_app(router, ups, spend=SpendGuard(SpendConfig.from_dict({}), ledger))
    with serve_in_thread(app) as url, client(url, KEY_A) as c:
        stream = c.chat.completions.create(model="stall-model", messages=MESSAGES, stream=True)
        next(iter(stream))  # one chunk, then the client goes (the upstream stalls after two)
        stream.close()
        db = sqlite3.connect(tmp_path / "s.sqlite")
        deadline = time.monotonic() + 20  # bounded wait for the server to notice the client left
        while db.execute("SELECT COUNT(*) FROM charges").fetchone()[0] == 0 and time.monotonic() < deadline:
            time.sleep(0.02)
    row = db.execute("SELECT COUNT(*), MAX(model), MAX(key) FROM charges").fetchone()
    assert row == (1, "stall-model", key_id(KEY_A))  # a model the router does not price: 0 USD, but charged


def test_cheaper_half_uses_the_given_per_prompt_costs():
    """With costs from Router.estimate (per-prompt output lengths) the cheaper half follows them, not the means."""
    from routoo_fast.policies import parse_policy
    from routoo_fast.serve.spend import cheaper_half

    router = small_router()
    policy = parse_policy("max_quality")
    mean_costs = router.cost_model.costs([PROMPT])[0]
    flipped = mean_costs.max() + mean_costs.min() - mean_costs  # the cheapest model is now the dearest
    by_means = cheaper_half(policy, router, PROMPT).models
    by_given = cheaper_half(policy, router, PROMPT, flipped).models
    assert set(by_means) == {m for m, c in zip(MODELS, mean_costs) if c <= np.median(mean_costs)}
    assert set(by_given) == {m for m, c in zip(MODELS, flipped) if c <= np.median(flipped)}
    assert set(by_given) != set(by_means)
