"""Soak test (slow): scripts/soak.py against a real `routoo-fast serve` on loopback with the shipped router, a
fake upstream with injected faults, malformed requests, MMLU-length and short routes and streamed chats. The
same checks as the 20,000-request run, on fewer requests."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_soak_2000_requests(tmp_path):
    out = tmp_path / "soak.json"
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "soak.py"), "--requests", "2000",
                           "--concurrency", "64", "--json", str(out)], capture_output=True, text=True, timeout=1800)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads(out.read_text())
    assert summary["requests"] == 2000
    assert summary["malformed"] == 20 and summary["faults"] == 20  # 1 % each
    assert summary["unexpected_5xx"] == 0, summary["unexpected_examples"]
    assert summary["malformed_not_4xx"] == 0, summary["status_by_kind"]["malformed"]
    assert summary["faults_not_visible"] == 0 and summary["faults_500"] == 0, summary["status_by_kind"]["fault"]
    assert summary["chats_not_done"] == 0, summary["unexpected_examples"]
    assert summary["connection_errors"] == 0
    assert summary["server_tracebacks"] == 0
    failed = [name for name, ok in summary["checks"].items() if not ok]
    assert not failed, (failed, summary["rss_mb"])
    for kind in ("route_mmlu", "route_short", "chat"):
        assert summary["latency_ms"][kind]["p99"] >= summary["latency_ms"][kind]["p50"] > 0
