"""The parity gate of the ONNX encoder backends against the torch fp32 encoder, on the bundled held-out split with
the shipped router (routoo_fast.evaluation.encoder_parity; `python scripts/onnx_parity.py` prints the figures).

Fast (default run): onnx-int8 on 200 held-out prompts, the bars a sample that size can hold: mean |dQ| and the same
decision. Per-model AUC moves by more than the 0.003 bar between two random 200-prompt samples of the SAME
predictions, so the AUC and quality bars are checked on the whole split only (slow)."""
import pytest

pytest.importorskip("onnxruntime")

from routoo_fast.evaluation.encoder_parity import BARS, encoder_parity, parity_report  # noqa: E402
from tests._onnx import onnx_cache_dir  # noqa: E402


@pytest.fixture(autouse=True)
def _cache(monkeypatch):
    monkeypatch.setenv("ROUTOO_CACHE_DIR", onnx_cache_dir())


def test_int8_parity_on_a_held_out_sample():
    reports, context = encoder_parity(("onnx-int8",), limit=200, num_threads=1)
    (r,) = reports
    print(r.line())
    assert context["measured"] == 200 and context["held_out_prompts"] > 1000
    assert r.mean_abs_dq <= BARS["mean_abs_dq"]
    assert r.agreement >= BARS["agreement"]
    assert 0 < r.max_abs_dq < 0.1  # int8 really ran (0 would mean an fp32 graph) and stayed close


def test_the_report_sees_a_change():
    """The gate can fail: Q moved by 0.01 everywhere breaks mean |dQ|; a shuffled Q breaks everything."""
    import numpy as np

    rng = np.random.default_rng(0)
    P, N = 300, 5
    Y = (rng.random((P, N)) < 0.6).astype(np.float64)
    C = np.tile(np.linspace(1e-4, 1e-3, N), (P, 1))
    Q = np.clip(0.5 * Y + 0.5 * rng.random((P, N)), 0, 1)
    same = parity_report("x", Q, Q, C, Y, C, (0.0, 100.0))
    assert same.passed and same.mean_abs_dq == 0 and same.agreement == 1
    shifted = parity_report("x", Q, np.clip(Q + 0.01, 0, 1), C, Y, C, (0.0, 100.0))
    assert shifted.mean_abs_dq > BARS["mean_abs_dq"] and not shifted.passed
    shuffled = parity_report("x", Q, Q[rng.permutation(P)], C, Y, C, (0.0, 100.0))
    assert shuffled.agreement < 0.9 and shuffled.auc_delta > 0.05 and not shuffled.passed


@pytest.mark.slow
def test_full_parity_gate():
    reports, context = encoder_parity(("onnx", "onnx-int8"))
    for r in reports:
        print(r.line())
    assert context["measured"] == context["held_out_prompts"]
    failed = [r.line() for r in reports if not r.passed]
    assert not failed, failed
