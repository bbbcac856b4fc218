"""`routoo-fast` CLI: help for every subcommand, exit codes (0 ok, 1 runtime error with one stderr line and no
traceback, 2 usage), policy flags, and real routing/serving through a saved router directory."""
import json
import os
import subprocess
import sys
import time

import httpx
import pytest

from routoo_fast import cli
from routoo_fast.policies import Budget, MaxQuality, MinCost, Tradeoff

SUBCOMMANDS = ["route", "serve", "bench", "train", "eval", "demo"]


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
        (["route", "hi", "--policy", "lambda=1,models=a", "--models", "b"], "give the model list once"),
        (["serve", "--auth-token-env", "ROUTOO_CLI_TEST_UNSET_VAR"], "ROUTOO_CLI_TEST_UNSET_VAR"),
        (["serve", "--upstreams", "/nonexistent/upstreams.json"], "does not exist"),
        (["bench", "--batch-sizes", "1,x"], "--batch-sizes must be comma-separated integers"),
        (["bench", "--batch-sizes", "0"], "--batch-sizes must be integers >= 1"),
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
