"""`routoo-fast` CLI: help for every subcommand, exit codes (0 ok, 1 runtime error with one stderr line and no
traceback, 2 usage), policy flags, and real routing/serving through a saved router directory."""
import json
import os
import signal
import subprocess
import sys
import time

import httpx
import pytest

from routoo_fast import cli
from routoo_fast.policies import Budget, MaxQuality, MinCost, Tradeoff

SUBCOMMANDS = ["route", "serve", "route-batch", "bench", "train", "eval", "cv", "demo"]


def run_main(capsys, *argv):
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_top_level_help_lists_every_subcommand(capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert all(cmd in out for cmd in SUBCOMMANDS)


@pytest.mark.parametrize("command", SUBCOMMANDS)
def test_subcommand_help(capsys, command):
    with pytest.raises(SystemExit) as exc:
        cli.main([command, "--help"])
    assert exc.value.code == 0
    assert f"usage: routoo-fast {command}" in capsys.readouterr().out


@pytest.mark.parametrize(
    "argv",
    [
        [],  # no subcommand
        ["fly"],  # unknown subcommand
        ["route"],  # no prompt
        ["route", "x", "--lambda", "1", "--max-cost", "2"],  # two policies at once
        ["route", "x", "--lambda", "abc"],
        ["serve", "--port", "eighty"],
    ],
)
def test_usage_errors_exit_2(capsys, argv):
    with pytest.raises(SystemExit) as exc:
        cli.main(argv)
    assert exc.value.code == 2
    assert "usage:" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["route", "hi", "--router", "/nonexistent/router"], "does not exist"),
        (["route", "hi", "--policy", "temperature=2"], "unknown policy key 'temperature'"),
        (["route", "hi", "--min-quality", "3"], "min_quality must be in [0.0, 1.0]"),
        (["route", "hi", "--max-length", "0"], "--max-length must be > 0"),
        (["route", "hi", "--encoder-batch", "0"], "--encoder-batch must be > 0"),
        (["route", "hi", "--policy", "lambda=1,models=a", "--models", "b"], "give the model list once"),
        (["serve", "--auth-token-env", "ROUTOO_CLI_TEST_UNSET_VAR"], "ROUTOO_CLI_TEST_UNSET_VAR"),
        (["serve", "--upstreams", "/nonexistent/upstreams.json"], "does not exist"),
        (["bench", "--batch-sizes", "1,x"], "--batch-sizes must be comma-separated integers"),
        (["bench", "--batch-sizes", "0"], "--batch-sizes must be integers >= 1"),
        (["eval", "--datasets", "mmlu_pro,imagenet"], "--datasets must be 'all' or a comma-separated subset"),
        (["eval", "--router", "/nonexistent/router"], "not found"),
    ],
)
def test_runtime_errors_exit_1_with_one_line(capsys, argv, message):
    os.environ.pop("ROUTOO_CLI_TEST_UNSET_VAR", None)
    code, out, err = run_main(capsys, *argv)
    assert code == 1
    assert message in err
    assert err.count("\n") == 1 and err.startswith(f"routoo-fast {argv[0]}: error:")
    assert "Traceback" not in err


def test_bad_upstreams_file_is_a_one_line_error(capsys, tmp_path):
    cfg = tmp_path / "up.json"
    cfg.write_text('{"models": {"m": {"base_url": "ftp://x", "api_key": "sk-secret-in-file"}}}')
    code, _, err = run_main(capsys, "serve", "--upstreams", str(cfg))
    assert code == 1 and "api_key_env" in err and "sk-secret-in-file" not in err


@pytest.mark.parametrize(
    "argv, expected",
    [
        ([], MaxQuality()),
        (["--lambda", "0.5"], Tradeoff(0.5)),
        (["--max-cost", "0.001"], MaxQuality(0.001)),
        (["--min-quality", "0.7"], MinCost(0.7)),
        (["--budget", "2"], Budget(2.0)),
        (["--policy", "lambda=3"], Tradeoff(3.0)),
        (["--lambda", "1", "--models", "a, b"], Tradeoff(1.0, models=("a", "b"))),
    ],
)
def test_policy_flags(argv, expected):
    args = cli.build_parser().parse_args(["route", "prompt", *argv])
    assert cli._policy_from_args(args) == expected


def test_entry_point_is_installed():
    """The console script declared in pyproject.toml runs and exits with argparse's codes."""
    exe = os.path.join(os.path.dirname(sys.executable), "routoo-fast")
    cmd = [exe] if os.path.exists(exe) else [sys.executable, "-m", "routoo_fast.cli"]
    ok = subprocess.run(cmd + ["--version"], capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0 and "routoo-fast" in ok.stdout
    bad = subprocess.run(cmd + ["route"], capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "usage:" in bad.stderr


# ---- real routing and serving through a saved router directory ------------------------------------------------
@pytest.fixture(scope="module")
def router_dir(tmp_path_factory):
    from small_router import save_small_router

    return save_small_router(tmp_path_factory.mktemp("cli") / "router")


def test_route_command_json_matches_router(capsys, monkeypatch, router_dir):
    from small_router import MODELS, small_router

    prompts = ["What is 2 + 2?", "Name three prime numbers."]
    monkeypatch.setattr(sys, "stdin", __import__("io").StringIO("Name three prime numbers.\n\n"))
    code, out, err = run_main(capsys, "route", prompts[0], "-", "--router", str(router_dir), "--lambda", "700",
                              "--json", "--scores")
    assert code == 0, err
    rows = [json.loads(line) for line in out.splitlines()]
    expected = small_router().route(prompts, "lambda=700")
    assert [r["prompt"] for r in rows] == prompts
    assert [r["model"] for r in rows] == [d.model for d in expected]
    assert all(set(r["scores"]) == set(MODELS) for r in rows)
    assert rows[0]["expected_cost"] == pytest.approx(expected[0].expected_cost, rel=1e-12)


def test_route_and_bench_commands_print_tables(capsys, router_dir):
    code, out, err = run_main(capsys, "route", "What is the capital of Peru?", "--router", str(router_dir),
                              "--max-cost", "0.0000001")
    assert code == 0, err
    assert "quality=" in out and "cost=$" in out and "policy not met" in out  # nothing is that cheap
    code, out, err = run_main(capsys, "bench", "--router", str(router_dir), "--prompts", "8", "--batch-sizes", "1,4")
    assert code == 0, err
    lines = out.strip().splitlines()
    assert lines[0].split() == ["batch", "prompts/s", "ms/batch"] and [ln.split()[0] for ln in lines[1:]] == ["1", "4"]


def test_serve_command_end_to_end(router_dir, tmp_path):
    """`routoo-fast serve` as a real subprocess on loopback, with auth and an upstream config; SIGTERM stops it."""
    from fake_upstream import FakeUpstream, free_port, reply_text, serve_in_thread
    from small_router import MODELS

    fake = FakeUpstream()
    with serve_in_thread(fake.app) as upstream_url:
        cfg = tmp_path / "upstreams.json"
        cfg.write_text(json.dumps({"defaults": {"base_url": upstream_url + "/v1"}, "models": {m: {} for m in MODELS}}))
        port = free_port()
        env = dict(os.environ, ROUTOO_CLI_TEST_TOKEN="tok-123")
        proc = subprocess.Popen(
            [sys.executable, "-m", "routoo_fast.cli", "serve", "--router", str(router_dir), "--host", "127.0.0.1",
             "--port", str(port), "--upstreams", str(cfg), "--auth-token-env", "ROUTOO_CLI_TEST_TOKEN",
             "--policy", "lambda=500", "--log-level", "warning"],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            url = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 90
            while True:
                assert proc.poll() is None, proc.communicate()[1]
                try:
                    if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                assert time.monotonic() < deadline, "server did not start"
                time.sleep(0.2)
            auth = {"Authorization": "Bearer tok-123"}
            assert httpx.post(url + "/v1/route", json={"prompt": "hi"}).status_code == 401
            r = httpx.post(url + "/v1/route", json={"prompt": "hi"}, headers=auth, timeout=30)
            assert r.status_code == 200 and r.json()["decisions"][0]["policy"] == "lambda=500.0"
            r = httpx.post(url + "/v1/chat/completions", headers=auth, timeout=30,
                           json={"model": "router", "messages": [{"role": "user", "content": "hello there"}]})
            assert r.status_code == 200
            chosen = r.headers["x-routoo-model"]
            assert chosen in MODELS
            assert r.json()["choices"][0]["message"]["content"] == reply_text(chosen, "hello there")
        finally:
            proc.terminate()
            _, err = proc.communicate(timeout=30)
        # uvicorn shuts down gracefully, then re-raises the captured SIGTERM so supervisors see it
        assert proc.returncode in (0, -signal.SIGTERM), err
        assert "Traceback" not in err


def test_demo_routes_examples(capsys, router_dir):
    code, out, err = run_main(capsys, "demo", "--router", str(router_dir), "--skip-eval")
    assert code == 0, err
    blocks = [line for line in out.splitlines() if line.startswith("policy ")]
    modes = [b.split()[1].split("=")[0].rstrip(":") for b in blocks]
    assert modes == ["max_quality", "max_cost", "min_quality", "lambda"]
    decisions = [line for line in out.splitlines() if line.startswith("  ") and " quality=" in line]
    assert len(decisions) == 4 * len(cli.EXAMPLE_PROMPTS)


def _small_outcomes(tmp_path):
    """A long-format outcome file: 40 prompts x the first 3 test models, with output lengths."""
    from small_router import MODELS

    rows = ["prompt,model,score,output_tokens"]
    for i in range(40):
        for j, model in enumerate(MODELS[:3]):
            score = int((i * (j + 1)) % 3 != 0)
            rows.append(f'"Question {i}: what is {i} times {j + 2}?",{model},{score},{50 + 10 * j}')
    data = tmp_path / "outcomes.csv"
    data.write_text("\n".join(rows) + "\n")
    return data


def test_train_command_then_route(capsys, tmp_path):
    """`train` on a small long-format outcome file writes a router directory that `route` then loads."""
    from small_router import MODELS

    data = _small_outcomes(tmp_path)
    out_dir = tmp_path / "trained"
    code, out, err = run_main(capsys, "train", str(out_dir), "--data", str(data), "--quiet",
                              "--cache-dir", str(tmp_path / "cache"))
    assert code == 0, err
    assert (out_dir / "config.json").is_file() and "saved router" in out
    code, out, err = run_main(capsys, "route", "Question 3: what is 3 times 2?", "--router", str(out_dir), "--json")
    assert code == 0, err
    assert json.loads(out)["model"] in MODELS[:3]
    code, _, err = run_main(capsys, "train", str(out_dir), "--data", str(tmp_path / "missing.csv"), "--quiet")
    assert code == 1 and "missing.csv" in err and "Traceback" not in err
    code, _, err = run_main(capsys, "train", str(out_dir), "--data", str(data), "--select-folds", "0", "--quiet")
    assert code == 1 and "--select-folds must be >= 1" in err and "Traceback" not in err
    code, out, err = run_main(capsys, "train", str(tmp_path / "on_val"), "--data", str(data), "--select-folds", "1",
                              "--cache-dir", str(tmp_path / "cache"))
    assert code == 0 and "recipe chosen on val" in out, err


def test_train_with_your_own_encoder_then_route(capsys, tmp_path, monkeypatch):
    """`train --encoder DIR` trains the head on that encoder's encodings (its own width), records the folder's
    absolute path and weight digest, and `route` loads it from there; a missing folder is named, before any work."""
    from small_router import MODELS
    from tiny_encoder import TINY_HIDDEN, make_tiny_encoder

    from routoo_fast.saved import load_router

    data = _small_outcomes(tmp_path)
    make_tiny_encoder(tmp_path / "my_encoder")
    monkeypatch.chdir(tmp_path)
    code, out, err = run_main(capsys, "train", "mine", "--data", str(data), "--encoder", "my_encoder",
                              "--cache-dir", "cache")
    assert code == 0, err
    assert f"encoder: {(tmp_path / 'my_encoder').resolve()} (my_encoder@sha256:" in out
    saved = load_router(tmp_path / "mine")
    spec = saved.config["encoder"]
    assert spec["path"] == str((tmp_path / "my_encoder").resolve())
    assert spec["encoder_id"].startswith("my_encoder@sha256:")
    assert saved.config["head"]["d_in"] == TINY_HIDDEN
    code, out, err = run_main(capsys, "route", "Question 3: what is 3 times 2?", "--router", "mine", "--json")
    assert code == 0, err
    assert json.loads(out)["model"] in MODELS[:3]
    code, _, err = run_main(capsys, "train", "other", "--data", str(data), "--encoder", "no_such_dir", "--quiet")
    assert code == 1 and "no_such_dir" in err and "is not a folder" in err and "Traceback" not in err
    assert not (tmp_path / "other").exists()


@pytest.mark.slow
def test_demo_with_default_router_and_reproduction(capsys, tmp_path):
    """The main job end to end: the shipped router routes the examples, then the MMLU-Pro reproduction runs."""
    code, out, err = run_main(capsys, "demo", "--out", str(tmp_path / "eval"))
    assert code == 0, err
    assert "policy lambda=" in out and "MMLU-Pro" in out
    assert (tmp_path / "eval" / "report.md").is_file() and list((tmp_path / "eval").glob("*.png"))
