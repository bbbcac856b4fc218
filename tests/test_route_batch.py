"""`route-batch` in this process: the same decisions as `Router.route`, budget= as one knapsack over the whole
file, the three file formats in and out (written atomically), and a clear error for every kind of bad input.
The Ray Data path is checked against this one in tests/test_ray.py (slow)."""
import csv
import json
import os

import numpy as np
import pytest

from routoo_fast import cli, selector
from routoo_fast.serve.route_batch import BatchResult, read_prompts, route_batch, write_results
from small_router import MODELS, save_small_router, small_router

PROMPTS = [f"Question {i}: what is {i} times {i + 7}, and why?" for i in range(23)] + [
    "Write a sonnet about the sea.", "Prove that sqrt(2) is irrational.", "Who wrote Hamlet?"]


@pytest.fixture(scope="module")
def router():
    return small_router()


@pytest.mark.parametrize("policy", ["max_quality", "lambda=2000", "min_quality=0.6", "max_cost=0.001",
                                    "max_quality,models=Qwen2-7B-Instruct|Mixtral-8x7B-Instruct-v0.1"])
def test_same_decisions_as_router_route(router, policy):
    got = route_batch(router, PROMPTS, policy, batch_size=len(PROMPTS))  # one predictor call, as route() makes
    expected = router.route(PROMPTS, policy)
    assert got.model == [d.model for d in expected]
    assert got.predicted_quality.tolist() == [d.predicted_quality for d in expected]
    assert got.expected_cost.tolist() == [d.expected_cost for d in expected]
    assert got.feasible.tolist() == [d.feasible for d in expected]
    assert got.Q is None and got.method == "per-prompt"


def test_chunked_prediction_matches_one_call(router):
    whole = route_batch(router, PROMPTS, "lambda=500", batch_size=len(PROMPTS), with_q=True)
    chunked = route_batch(router, PROMPTS, "lambda=500", batch_size=4, with_q=True)
    np.testing.assert_allclose(chunked.Q, whole.Q, rtol=0, atol=1e-5)  # only the padding of the chunks differs


def test_budget_is_one_knapsack_over_the_whole_input(router):
    C = router.costs(PROMPTS)
    total = float(C.min(axis=1).sum() * 1.3)
    got = route_batch(router, PROMPTS, f"budget={total!r}", batch_size=5, with_q=True)
    exact = selector.budget(got.Q, C, total)
    assert got.method == "exact"
    assert got.total_cost <= total * (1 + 1e-12)
    assert got.total_quality == pytest.approx(exact.total_quality, rel=1e-12)
    assert got.model == [MODELS[c] for c in exact.choice.tolist()]


def test_budget_below_the_cheapest_total_is_an_error(router):
    with pytest.raises(ValueError, match="below the cheapest possible total"):
        route_batch(router, PROMPTS, "budget=0")


@pytest.mark.parametrize("policy, error", [("temperature=3", ValueError), ("lambda=-1", ValueError),
                                           ("max_quality,models=no-such-model", ValueError), (3, TypeError)])
def test_bad_policy_fails_before_any_prompt_is_encoded(router, policy, error, monkeypatch):
    monkeypatch.setattr(router, "predict", lambda prompts: pytest.fail("predicted before checking the policy"))
    with pytest.raises(error):
        route_batch(router, PROMPTS, policy)


def _write_input(path, rows, column="prompt"):
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps({column: r, "n": i}) + "\n" for i, r in enumerate(rows)))
    elif path.suffix == ".csv":
        with open(path, "w", newline="") as f:
            w = csv.writer(f)
            w.writerow(["n", column])
            w.writerows([i, r] for i, r in enumerate(rows))
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.table({"n": list(range(len(rows))), column: rows}), path)


def _read_output(path):
    if path.suffix == ".jsonl":
        return [json.loads(line) for line in path.read_text().splitlines()]
    if path.suffix == ".csv":
        with open(path, newline="") as f:
            return list(csv.DictReader(f))
    import pyarrow.parquet as pq

    return pq.read_table(path).to_pylist()


@pytest.mark.parametrize("ext", [".jsonl", ".csv", ".parquet"])
def test_every_format_round_trips(tmp_path, ext):
    rows = PROMPTS[:5] + ['a prompt with "quotes", commas,\nand a newline', "ünïcödé ✓"]
    _write_input(tmp_path / f"in{ext}", rows, column="text")
    assert read_prompts(tmp_path / f"in{ext}", "text") == rows
    result = BatchResult(("m1", "m2"), ["m1", "m2"], np.array([0.5, 0.25]), np.array([1e-5, 2e-5]),
                         np.array([True, False]), Q=np.array([[0.5, 0.1], [0.2, 0.25]], dtype=np.float32))
    out = tmp_path / f"out{ext}"
    write_results(out, result)
    got = _read_output(out)
    assert [str(r["model"]) for r in got] == ["m1", "m2"]
    assert [int(r["row"]) for r in got] == [0, 1]
    assert [float(r["predicted_quality"]) for r in got] == [0.5, 0.25]
    assert [float(r["q_m2"]) for r in got] == pytest.approx([0.1, 0.25])
    assert sorted(os.listdir(tmp_path)) == sorted([f"in{ext}", f"out{ext}"])  # no temporary file left behind


@pytest.mark.parametrize(
    "name, content, match",
    [
        ("in.jsonl", '{"text": "ok"}\n', "has no column 'prompt' on line 1"),
        ("in.jsonl", '{"prompt": "ok"}\n{not json\n', "line 2: not valid JSON"),
        ("in.jsonl", '{"prompt": "ok"}\n[1, 2]\n', "line 2: expected a JSON object"),
        ("in.jsonl", '{"prompt": "ok"}\n{"prompt": 3}\n', "row 1: column 'prompt' must be a non-empty string"),
        ("in.jsonl", '{"prompt": ""}\n', "row 0: column 'prompt' must be a non-empty string"),
        ("in.jsonl", "\n\n", "has no rows"),
        ("in.csv", "text\nhello\n", r"has no column 'prompt' \(columns: \['text'\]\)"),
        ("in.csv", "", "is empty"),
        ("in.csv", "prompt\n", "has no rows"),
        ("in.txt", "hello\n", "unknown format '.txt'"),
        ("in.parquet", "this is not parquet", "not a readable Parquet file"),
    ],
)
def test_bad_input_is_a_clear_error(tmp_path, name, content, match):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(ValueError, match=match):
        read_prompts(path)


def test_parquet_without_the_column(tmp_path):
    _write_input(tmp_path / "in.parquet", ["a", "b"], column="text")
    with pytest.raises(ValueError, match=r"has no column 'prompt' \(columns: \['n', 'text'\]\)"):
        read_prompts(tmp_path / "in.parquet")


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="input file not found"):
        read_prompts(tmp_path / "nope.jsonl")


# ---- the command --------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def saved_router(tmp_path_factory):
    return save_small_router(tmp_path_factory.mktemp("route_batch") / "router")


def run_main(capsys, *argv):
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_route_batch(tmp_path, saved_router, capsys):
    _write_input(tmp_path / "in.csv", PROMPTS)
    code, out, err = run_main(capsys, "route-batch", "--input", tmp_path / "in.csv", "--output",
                              tmp_path / "out.parquet", "--router", saved_router, "--threads", "1", "--lambda",
                              "2000", "--with-q", "--batch-size", len(PROMPTS))
    assert code == 0, err
    assert f"wrote {tmp_path / 'out.parquet'}" in out and "routed 26 prompts" in err
    got = _read_output(tmp_path / "out.parquet")
    assert [r["row"] for r in got] == list(range(len(PROMPTS)))
    expected = small_router().route(PROMPTS, "lambda=2000")
    assert [r["model"] for r in got] == [d.model for d in expected]
    assert [r["predicted_quality"] for r in got] == pytest.approx([d.predicted_quality for d in expected], rel=1e-5)
    assert set(got[0]) == {"row", "model", "predicted_quality", "expected_cost", "feasible"} | {
        f"q_{m}" for m in MODELS}


@pytest.mark.parametrize(
    "argv, match",
    [
        (["--policy", "temperature=3"], "unknown policy key 'temperature'"),
        (["--policy", "budget=0"], "below the cheapest possible total"),
        (["--column", "text"], "has no column 'text'"),
        (["--batch-size", "0"], "--batch-size must be > 0"),
    ],
)
def test_cli_bad_input_exits_1_with_one_line(tmp_path, saved_router, capsys, argv, match):
    _write_input(tmp_path / "in.jsonl", PROMPTS[:3])
    code, out, err = run_main(capsys, "route-batch", "--input", tmp_path / "in.jsonl", "--output",
                              tmp_path / "out.jsonl", "--router", saved_router, "--quiet", *argv)
    assert code == 1
    assert match in err and err.startswith("routoo-fast route-batch: error:") and "Traceback" not in err
    assert not (tmp_path / "out.jsonl").exists()


def test_cli_missing_input_and_bad_output_format(tmp_path, saved_router, capsys):
    code, _, err = run_main(capsys, "route-batch", "--input", tmp_path / "nope.jsonl", "--output",
                            tmp_path / "out.jsonl", "--router", saved_router)
    assert code == 1 and "input file not found" in err
    code, _, err = run_main(capsys, "route-batch", "--input", tmp_path / "nope.jsonl", "--output",
                            tmp_path / "out.xlsx", "--router", saved_router)
    assert code == 1 and "unknown format '.xlsx'" in err
