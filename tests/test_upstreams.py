"""Upstream config: defaults merge into entries, keys come only from the environment, bad configs name the fault."""
import json

import pytest

from routoo_fast.serve.upstreams import MissingAPIKey, Upstreams


def test_defaults_merge_and_fields(monkeypatch):
    monkeypatch.setenv("ROUTOO_T_KEY_A", "sk-a")
    monkeypatch.delenv("ROUTOO_T_KEY_B", raising=False)
    ups = Upstreams.from_dict({
        "defaults": {"base_url": "https://api.example.com/v1/", "api_key_env": "ROUTOO_T_KEY_A"},
        "models": {
            "m1": {},
            "m2": {"model": "vendor/m2-instruct", "timeout_s": 5},
            "m3": {"base_url": "http://127.0.0.1:9/v1", "api_key_env": None},
            "m4": {"api_key_env": "ROUTOO_T_KEY_B"},
        },
    })
    assert list(ups) == ["m1", "m2", "m3", "m4"] and len(ups) == 4
    assert ups["m1"].chat_url == "https://api.example.com/v1/chat/completions"
    assert ups["m1"].model == "m1" and ups["m2"].model == "vendor/m2-instruct" and ups["m2"].timeout_s == 5.0
    assert ups["m1"].timeout_s is None  # no timeout_s: the server's --upstream-read-timeout applies
    assert ups["m1"].headers() == {"Authorization": "Bearer sk-a"}
    assert ups["m3"].headers() == {}
    with pytest.raises(MissingAPIKey, match="ROUTOO_T_KEY_B"):
        ups["m4"].headers()
    assert ups.missing_keys() == {"m4": "ROUTOO_T_KEY_B"}
    assert "sk-a" not in repr(ups) and "sk-a" not in repr(ups["m1"])


def test_load_from_file(tmp_path):
    path = tmp_path / "up.json"
    path.write_text(json.dumps({"models": {"m": {"base_url": "http://127.0.0.1:8001/v1"}}}))
    assert Upstreams.load(path)["m"].base_url == "http://127.0.0.1:8001/v1"


@pytest.mark.parametrize(
    "config, match",
    [
        ([], "must be a JSON object"),
        ({}, "non-empty 'models'"),
        ({"models": {}}, "non-empty 'models'"),
        ({"models": {"m": {"base_url": "http://x"}}, "extra": 1}, "unknown top-level keys"),
        ({"models": {"m": {}}}, "base_url must be an http"),
        ({"models": {"m": {"base_url": "ftp://x"}}}, "base_url must be an http"),
        ({"models": {"m": {"base_url": "http://x", "colour": "red"}}}, "unknown keys"),
        ({"models": {"m": {"base_url": "http://x", "api_key": "sk-literal"}}}, "api_key_env"),
        ({"models": {"m": {"base_url": "http://x", "timeout_s": 0}}}, "timeout_s must be a positive"),
        ({"models": {"m": {"base_url": "http://x", "model": ""}}}, "model must be a non-empty"),
        ({"models": {"m": {"base_url": "http://x", "api_key_env": 3}}}, "api_key_env must be"),
        ({"models": {"m": "http://x"}}, "must be an object"),
        ({"defaults": [], "models": {"m": {"base_url": "http://x"}}}, "'defaults' must be an object"),
    ],
)
def test_bad_configs(config, match):
    with pytest.raises(ValueError, match=match) as exc:
        Upstreams.from_dict(config)
    assert "sk-literal" not in str(exc.value)


def test_missing_and_invalid_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        Upstreams.load(tmp_path / "nope.json")
    bad = tmp_path / "bad.json"
    bad.write_text("{oops")
    with pytest.raises(ValueError, match="not valid JSON"):
        Upstreams.load(bad)
