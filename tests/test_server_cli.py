"""`routoo-fast serve`'s server limits: shown with their defaults in --help, checked, and handed to the app and
to uvicorn (the router load and uvicorn.run are stubbed: what is checked is the wiring, not a running server)."""
import pytest

from routoo_fast import cli

FLAGS = {
    "--max-body-bytes": "8388608",
    "--max-prompts-per-request": "1024",
    "--upstream-connect-timeout": "10.0",
    "--upstream-read-timeout": "120.0",
    "--timeout-graceful-shutdown": "30.0",
}


def test_serve_help_shows_every_limit_with_its_default(capsys):
    with pytest.raises(SystemExit):
        cli.main(["serve", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    for flag, default in FLAGS.items():
        start = help_text.index(flag, help_text.index("options:"))  # past the usage line
        following = help_text[start:help_text.index("--", start + len(flag) + 2)]
        assert f"(default: {default})" in following, (flag, following)


def test_serve_passes_the_limits_on(serve_wiring):
    code = cli.main(["serve", "--max-body-bytes", "5000", "--max-prompts-per-request", "7",
                     "--upstream-connect-timeout", "2.5", "--upstream-read-timeout", "45",
                     "--timeout-graceful-shutdown", "12"])
    assert code == 0
    kwargs = serve_wiring["create_app"]
    assert kwargs["max_body_bytes"] == 5000 and kwargs["max_prompts_per_request"] == 7
    assert kwargs["upstream_connect_timeout"] == 2.5 and kwargs["upstream_read_timeout"] == 45.0
    assert serve_wiring["run"]["timeout_graceful_shutdown"] == 12.0 and serve_wiring["run"]["host"] == "127.0.0.1"


def test_serve_defaults_reach_uvicorn(serve_wiring):
    assert cli.main(["serve"]) == 0
    assert serve_wiring["run"]["timeout_graceful_shutdown"] == 30.0
    assert serve_wiring["create_app"]["max_body_bytes"] == 8 * 1024 * 1024


@pytest.mark.parametrize("flag, value", [("--max-body-bytes", "0"), ("--max-prompts-per-request", "-1"),
                                         ("--upstream-connect-timeout", "0"), ("--upstream-read-timeout", "-5"),
                                         ("--timeout-graceful-shutdown", "-1")])
def test_serve_refuses_bad_limits(serve_wiring, capsys, flag, value):
    assert cli.main(["serve", flag, value]) == 1
    assert f"{flag} must be" in capsys.readouterr().err
    assert "run" not in serve_wiring
