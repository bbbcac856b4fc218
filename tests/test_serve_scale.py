"""`routoo-fast serve`'s exact-repeat cache (on by default, sized or turned off by --q-cache-bytes, its hits and
misses in /metrics) and `--workers N` (processes with a SO_REUSEPORT socket each, or uvicorn's workers importing an
app factory where there is no SO_REUSEPORT; each rebuilds the router from the same arguments, one thread each by
default). The router load and uvicorn.run are stubbed where the
wiring is what is checked; the metrics run through a real server on loopback."""
import json
import os

import httpx
import numpy as np
import pytest
import uvicorn

from routoo_fast import cli
from routoo_fast.serve.server import create_app
from fake_upstream import serve_in_thread
from small_router import small_router


@pytest.fixture()
def captured(monkeypatch):
    calls = {"loaded": []}

    def load(args):
        calls["loaded"].append(args)
        return small_router()

    monkeypatch.setattr(cli, "_load_router", load)
    monkeypatch.setattr(cli, "_prepare_encoder", lambda args: calls.setdefault("prepared", args))
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: calls.setdefault("run", (app, kwargs)))
    monkeypatch.delenv(cli._SERVE_ARGV_ENV, raising=False)
    yield calls
    os.environ.pop(cli._SERVE_ARGV_ENV, None)


def test_cache_is_on_by_default_and_sized_by_the_flag(captured, monkeypatch):
    made = []
    real = cli._serve_app
    monkeypatch.setattr(cli, "_serve_app", lambda args: made.append(args) or real(args))
    assert cli.main(["serve"]) == 0
    assert made[-1].q_cache_bytes == cli.DEFAULT_Q_CACHE_BYTES
    routers = []
    monkeypatch.setattr(cli, "_load_router", lambda args: routers.append(small_router()) or routers[-1])
    assert cli.main(["serve", "--q-cache-bytes", "100000"]) == 0
    assert routers[-1].q_cache is not None and routers[-1].q_cache.max_bytes == 100000
    assert cli.main(["serve", "--q-cache-bytes", "0"]) == 0
    assert routers[-1].q_cache is None


def test_bad_scale_flags_are_refused(captured, capsys):
    assert cli.main(["serve", "--workers", "0"]) == 1
    assert "--workers must be > 0" in capsys.readouterr().err
    assert cli.main(["serve", "--q-cache-bytes", "-1"]) == 1
    assert "--q-cache-bytes must be >= 0" in capsys.readouterr().err
    assert "run" not in captured


def test_workers_are_reuseport_processes(captured, monkeypatch):
    started = {}
    monkeypatch.setattr(cli, "_REUSEPORT", True)
    monkeypatch.setattr(cli, "_serve_reuseport", lambda args, common: started.update(args=args, common=common) or 0)
    argv = ["serve", "--workers", "2", "--port", "8124", "--max-length", "32"]
    assert cli.main(argv) == 0
    assert started["args"].workers == 2 and started["common"]["port"] == 8124 and "run" not in captured
    assert json.loads(os.environ[cli._SERVE_ARGV_ENV]) == argv
    assert captured["loaded"] == [] and "prepared" in captured  # the graph is exported once, in the parent


def test_reuseport_sockets_share_a_port():
    if not cli._REUSEPORT:
        pytest.skip("no SO_REUSEPORT on this platform")
    from fake_upstream import free_port

    port = free_port()
    a = cli.reuseport_socket("127.0.0.1", port)
    b = cli.reuseport_socket("127.0.0.1", port)  # a second worker binds the same port
    try:
        assert a.getsockname()[1] == b.getsockname()[1] == port
    finally:
        a.close()
        b.close()
    with pytest.raises(cli.UserError, match="--port"):
        cli._serve_reuseport(cli.build_parser().parse_args(["serve", "--workers", "2", "--port", "0"]), {})


def test_workers_hand_their_arguments_to_an_app_factory(captured, monkeypatch):
    monkeypatch.setattr(cli, "_REUSEPORT", False)  # where there is no SO_REUSEPORT: uvicorn's own workers
    argv = ["serve", "--workers", "2", "--port", "8123", "--max-length", "32", "--policy", "lambda=100"]
    assert cli.main(argv) == 0
    app, kwargs = captured["run"]
    assert app == "routoo_fast.cli:serve_worker_app" and kwargs["factory"] and kwargs["workers"] == 2
    assert kwargs["port"] == 8123
    assert json.loads(os.environ[cli._SERVE_ARGV_ENV]) == argv
    assert captured["loaded"] == []  # the parent loads no router; it only prepares the encoder's graph
    worker_app = cli.serve_worker_app()  # what each worker process runs
    args = captured["loaded"][-1]
    assert args.threads == 1 and args.max_length == 32 and args.workers == 2
    assert worker_app is not None


def test_workers_keep_explicit_threads(captured, monkeypatch):
    monkeypatch.setattr(cli, "_REUSEPORT", False)
    assert cli.main(["serve", "--workers", "2", "--threads", "2"]) == 0
    cli.serve_worker_app()
    assert captured["loaded"][-1].threads == 2


def test_worker_factory_needs_the_parent(monkeypatch):
    monkeypatch.delenv(cli._SERVE_ARGV_ENV, raising=False)
    with pytest.raises(RuntimeError, match="--workers"):
        cli.serve_worker_app()


def test_metrics_count_cache_hits_and_misses():
    router = small_router()
    router.enable_q_cache(1 << 20)
    app = create_app(router, None, max_wait=0.001)
    with serve_in_thread(app) as url, httpx.Client(base_url=url, timeout=30) as client:
        prompts = ["What is 2 + 2?", "Name a prime number.", "What is 2 + 2?"]
        first = client.post("/v1/route", json={"prompts": prompts}).json()["decisions"]
        again = client.post("/v1/route", json={"prompt": prompts[1]}).json()["decisions"]
        assert again[0] == first[1]
        plain = small_router().route(prompts, "max_quality")
        assert [d["model"] for d in first] == [d.model for d in plain]
        np.testing.assert_allclose([d["predicted_quality"] for d in first], [d.predicted_quality for d in plain],
                                   rtol=1e-6)
        lines = dict(line.rsplit(" ", 1) for line in client.get("/metrics").text.splitlines()
                     if line and not line.startswith("#"))
    assert float(lines["routoo_q_cache_hits_total"]) == 1.0
    assert float(lines["routoo_q_cache_misses_total"]) == 3.0  # the repeat inside the first request is a miss too
    assert float(lines["routoo_q_cache_entries"]) == 2.0
    assert float(lines["routoo_q_cache_max_bytes"]) == float(1 << 20)
    assert float(lines["routoo_predictor_prompts_total"]) == 2.0  # each distinct prompt scored once


def test_metrics_show_zeros_with_the_cache_off():
    app = create_app(small_router(), None, batching=False)
    with serve_in_thread(app) as url:
        text = httpx.get(url + "/metrics", timeout=30).text
    assert "routoo_q_cache_hits_total 0.0" in text and "routoo_q_cache_max_bytes 0.0" in text


def test_a_bad_upstreams_file_fails_in_the_parent_before_any_worker(captured, monkeypatch, tmp_path, capsys):
    started = []
    monkeypatch.setattr(cli, "_REUSEPORT", True)
    monkeypatch.setattr(cli, "_serve_reuseport", lambda args, common: started.append(args) or 0)
    bad = tmp_path / "upstreams.json"
    bad.write_text('{"defaults": {}}')
    assert cli.main(["serve", "--workers", "2", "--upstreams", str(bad)]) != 0
    assert started == [] and "needs a non-empty 'models' object" in capsys.readouterr().err
