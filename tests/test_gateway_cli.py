"""`routoo-fast serve`'s gateway flags reach the app: --spend-caps / --spend-db build the SpendGuard over the named
SQLite file, --affinity-ttl / --affinity-max-sessions the SessionAffinity (0 = off); bad values are usage errors
(the router load and uvicorn.run are stubbed: conftest.serve_wiring)."""
import json

import pytest

from routoo_fast import cli
from routoo_fast.serve.affinity import SessionAffinity
from routoo_fast.serve.spend import SpendGuard


def test_spend_caps_and_affinity_reach_the_app(serve_wiring, tmp_path):
    caps = tmp_path / "caps.json"
    caps.write_text(json.dumps({"overall": {"usd_per_day": 3}, "database": "from-file.sqlite"}))
    db = tmp_path / "elsewhere" / "spend.sqlite"
    assert cli.main(["serve", "--spend-caps", str(caps), "--spend-db", str(db), "--affinity-ttl", "60",
                     "--affinity-max-sessions", "10"]) == 0
    kwargs = serve_wiring["create_app"]
    assert isinstance(kwargs["spend"], SpendGuard) and kwargs["spend"].ledger.path == db and db.exists()
    assert kwargs["spend"].config.overall.usd_per_day == 3.0
    affinity = kwargs["affinity"]
    assert isinstance(affinity, SessionAffinity) and affinity.ttl_s == 60 and affinity.max_sessions == 10


def test_defaults_affinity_on_spend_off_and_ttl_zero_is_off(serve_wiring):
    assert cli.main(["serve"]) == 0
    assert serve_wiring["create_app"]["spend"] is None
    assert serve_wiring["create_app"]["affinity"].ttl_s == 3600.0
    assert cli.main(["serve", "--affinity-ttl", "0"]) == 0
    assert serve_wiring["create_app"]["affinity"] is None


@pytest.mark.parametrize("argv, message", [(["--affinity-ttl", "-1"], "--affinity-ttl must be"),
                                           (["--affinity-max-sessions", "0"], "--affinity-max-sessions must be"),
                                           (["--spend-db", "x.sqlite"], "--spend-db needs --spend-caps"),
                                           (["--spend-caps", "/no/such/caps.json"], "does not exist")])
def test_bad_gateway_flags_are_usage_errors(serve_wiring, capsys, argv, message):
    assert cli.main(["serve", *argv]) == 1
    assert message in capsys.readouterr().err
    assert "run" not in serve_wiring
