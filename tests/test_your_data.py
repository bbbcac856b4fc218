"""Your own models, prices and logs end to end: `routoo-fast train` / `eval` on a long-format file, bad input caught
before any encoding, prices from the user, equal cost, the split, and the worked example of docs/TRAINING.md."""
import json
import os
import sys
from pathlib import Path

import numpy as np
import pytest

from routoo_fast import cli
from routoo_fast.data.splits import split_counts, unseen_test_rows

REPO = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("ROUTOO_SHARED_DATA") or REPO.parent / "shared" / "data")
MODELS = ("Mixtral-8x7B-Instruct-v0.1", "Meta-Llama-3-70B-Instruct", "gpt-4o-2024-05-13")  # in assets/prices.csv


def run(capsys, *argv):
    code = cli.main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def write_csv(path: Path, header, rows) -> Path:
    import csv

    with open(path, "w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)
    return path


def outcome_rows(n=40, models=MODELS, output_tokens=True):
    rows = []
    for i in range(n):
        for j, m in enumerate(models):
            row = [f"Question {i}: what is {i} times {j + 2}?", m, int((i * (j + 1)) % 3 != 0)]
            rows.append(row + [50 + 10 * j] if output_tokens else row)
    return rows


HEADER = ["prompt", "model", "score", "output_tokens"]


def assert_nothing_encoded_or_written(tmp_path):
    assert not (tmp_path / "router").exists()
    assert not list((tmp_path / "cache").rglob("shard-*.npz"))  # no prompt went through the encoder


# -------------------------------------------------------------------------------- bad input, before encoding
@pytest.mark.parametrize("header, rows, match", [
    (["prompt", "score"], [["p", 1]], r"missing columns \['model'\]"),
    (HEADER, [["p", "m", "yes", 3]], r"outcomes.csv:2: score must be a number, got 'yes'"),
    (HEADER, [["p", "m", 1.5, 3]], r"outcomes.csv:2: score must be finite and in \[0, 1.0\]"),
    (HEADER, [["p", MODELS[0], 1, 3], ["q", MODELS[0], 0, 3], ["p", MODELS[0], 0, 4]],
     r"outcomes.csv:4: duplicate row for model 'Mixtral-8x7B-Instruct-v0.1'.*outcomes.csv:2"),
    (None, None, "the file is empty"),
    (HEADER, [], "no rows"),
])
def test_bad_files_fail_before_encoding_naming_the_row_or_column(capsys, tmp_path, header, rows, match):
    data = tmp_path / "outcomes.csv"
    if header is None:
        data.write_text("")
    else:
        write_csv(data, header, rows)
    code, out, err = run(capsys, "train", str(tmp_path / "router"), "--data", str(data), "--quiet",
                         "--cache-dir", str(tmp_path / "cache"))
    assert code == 1 and "Traceback" not in err
    assert __import__("re").search(match, err), err
    assert_nothing_encoded_or_written(tmp_path)


def test_a_model_without_training_rows_fails_before_encoding(capsys, tmp_path):
    rows = outcome_rows()
    test_prompt = next(r[0] for r in rows if cli_split(r[0]) == "test")
    rows.append([test_prompt, "gpt-4o-mini-2024-07-18", 1, 20])  # only on a held-out prompt
    data = write_csv(tmp_path / "outcomes.csv", HEADER, rows)
    code, _, err = run(capsys, "train", str(tmp_path / "router"), "--data", str(data), "--quiet",
                       "--cache-dir", str(tmp_path / "cache"))
    assert code == 1 and "models ['gpt-4o-mini-2024-07-18'] have no outcome on the training prompts" in err
    assert_nothing_encoded_or_written(tmp_path)


def cli_split(prompt):
    from routoo_fast.data.splits import split_by_hash

    return split_by_hash([prompt])[0]


def test_a_model_without_a_price_fails_before_encoding_naming_models_and_flags(capsys, tmp_path):
    rows = outcome_rows(models=MODELS[:2] + ("my-model-a", "my-model-b"))
    data = write_csv(tmp_path / "outcomes.csv", HEADER, rows)
    code, _, err = run(capsys, "train", str(tmp_path / "router"), "--data", str(data), "--quiet",
                       "--cache-dir", str(tmp_path / "cache"))
    assert code == 1
    assert "no price for models ['my-model-a', 'my-model-b']" in err and "--prices" in err and "--equal-cost" in err
    assert_nothing_encoded_or_written(tmp_path)
    bad_prices = tmp_path / "prices.csv"
    bad_prices.write_text("model,price\nmy-model-a,1\n")
    code, _, err = run(capsys, "train", str(tmp_path / "router"), "--data", str(data), "--prices", str(bad_prices),
                       "--quiet", "--cache-dir", str(tmp_path / "cache"))
    assert code == 1 and "prices.csv:1: header must be" in err
    assert_nothing_encoded_or_written(tmp_path)
    code, _, err = run(capsys, "train", str(tmp_path / "router"), "--data", str(data), "--test-fraction", "1.5")
    assert code == 1 and "--test-fraction must be in [0, 1)" in err


# ---------------------------------------------------------------------------------------- prices and costs
def test_user_prices_override_and_extend_and_output_tokens_default(capsys, tmp_path):
    from routoo_fast.router import Router
    from routoo_fast.saved import load_router

    models = MODELS[:2] + ("my-model",)
    data = write_csv(tmp_path / "outcomes.csv", HEADER[:3], outcome_rows(models=models, output_tokens=False))
    prices = write_csv(tmp_path / "prices.csv",
                       ["model", "input_usd_per_mtok", "output_usd_per_mtok", "open_weights", "source"],
                       [[MODELS[0], 0.01, 0.02, "true", "mine"], ["my-model", 2.0, 4.0, "false", "mine"]])
    code, out, err = run(capsys, "train", str(tmp_path / "router"), "--data", str(data), "--prices", str(prices),
                         "--cache-dir", str(tmp_path / "cache"), "--output-tokens", "100", "--threads", "1")
    assert code == 0, err
    assert "default 100 for 3 models" in out  # no output_tokens column: the stated default
    assert "train" in out and "val" in out and "test" in out and "refitted on train + val" in out
    saved = load_router(tmp_path / "router")
    assert saved.prices.get(MODELS[0]).input_usd_per_mtok == 0.01  # the user's price wins over the shipped one
    assert saved.prices.get("my-model").output_usd_per_mtok == 4.0
    assert saved.prices.get(MODELS[1]).source != "mine"  # the shipped price of a model the file does not name
    np.testing.assert_array_equal(saved.expected_output_tokens, [100.0, 100.0, 100.0])
    assert saved.metadata["test_fraction"] == 0.2 and saved.metadata["recipe"]["hidden"] in (32, 128)
    C = Router.from_pretrained(tmp_path / "router").costs(["abcd"])
    np.testing.assert_allclose(C[0], [(0.01 + 100 * 0.02) / 1e6, C[0, 1], (2.0 + 100 * 4.0) / 1e6])


def test_equal_cost_routes_on_quality_alone(capsys, tmp_path):
    from routoo_fast.router import Router

    data = write_csv(tmp_path / "outcomes.csv", HEADER, outcome_rows(models=MODELS[:2] + ("unpriced-model",)))
    code, out, err = run(capsys, "train", str(tmp_path / "router"), "--data", str(data), "--equal-cost",
                         "--cache-dir", str(tmp_path / "cache"))
    assert code == 0, err
    assert "every model priced alike" in out
    router = Router.from_pretrained(tmp_path / "router")
    prompts = ["Question 3: what is 3 times 2?", "Question 7: what is 7 times 4?"]
    C, Q = router.costs(prompts), router.predict(prompts)
    assert np.all(C == C[:, :1])  # one cost per prompt, the same for every model
    for d, q in zip(router.route(prompts, "lambda=1000"), Q):
        assert d.model == router.model_names[int(np.argmax(q))]


# -------------------------------------------------------------------------------------------- eval splits
def test_unseen_test_rows_scores_each_text_once_on_the_unseen_side():
    prompts = ["a", "b", "a", "c", "c", "d"]
    split = np.array(["train", "val", "test", "test", "test", "train"])
    fit, test, overlap = unseen_test_rows(prompts, split)
    assert fit.tolist() == [1, 5] and test.tolist() == [2, 3] and overlap == 1


def test_prepare_split_leaves_out_what_the_router_was_fitted_on():
    from routoo_fast.evaluation.user_data import prepare_split
    from routoo_fast.train.pipeline import join_hashes, prompt_hashes

    prompts = [f"prompt {i}" for i in range(200)]
    split, notes = prepare_split(prompts, 0.2)
    test = [p for p, s in zip(prompts, split) if s == "test"]
    again, notes = prepare_split(prompts, 0.2, prompt_hashes(test[:5]))
    assert split_counts(again)["test"] == len(test) - 5
    assert (again == "").sum() == 5 and any("trained on, left out: 5" in n for n in notes)
    stored, _ = prepare_split(prompts, 0.2, join_hashes(prompt_hashes(test[:5])))  # as a saved router keeps them
    assert (stored == again).all()


# ---------------------------------------------------------------------------------- docs/TRAINING.md example
@pytest.mark.skipif(not (SHARED / "zeroeval" / "gsm").is_dir(), reason="needs the shared data (zeroeval)")
def test_worked_example_of_the_training_guide(capsys, tmp_path, monkeypatch):
    """docs/TRAINING.md's commands on its slice: train with a prices file, eval on held-out prompts, route."""
    sys.path.insert(0, str(REPO / "scripts"))
    try:
        from example_slice import write_example
    finally:
        sys.path.remove(str(REPO / "scripts"))
    monkeypatch.chdir(tmp_path)
    outcomes, prices = write_example(tmp_path / "example", n_prompts=300, data_dir=SHARED)
    cache = str(tmp_path / "cache")
    code, out, err = run(capsys, "train", "my_router", "--data", str(outcomes), "--prices", str(prices),
                         "--cache-dir", cache)
    assert code == 0, err
    assert "300 prompts x 6 models" in out and "held-out mean AUC" in out
    code, out, err = run(capsys, "eval", "--data", str(outcomes), "--router", "my_router", "--out", "my_eval",
                         "--cache-dir", cache)
    assert code == 0, err
    results = json.loads((tmp_path / "my_eval" / "results.json").read_text())
    rows = {r["router"]: r for r in results["pools"][0]["rows"]}
    assert {"routoo (this package)", "random mix", "oracle", "matrix factorisation"} <= set(rows)
    assert any(name.startswith("kNN (k=") for name in rows)
    assert len(rows["routoo (this package)"]["gain_at_best_cost_ci"]) == 3
    assert rows["routoo (this package)"]["aiq"] > rows["random mix"]["aiq"]  # measured 0.9723 vs 0.9643
    assert list((tmp_path / "my_eval").glob("*.png"))
    import subprocess

    # a fresh process: no "Loading weights" bar on route (the library's bars are off in every command)
    proc = subprocess.run([sys.executable, "-m", "routoo_fast.cli", "route", "--router", "my_router", "--json",
                           "A baker sells 12 cakes a day at $3 each. How much does he earn in a week?"],
                          capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr
    models = json.loads((tmp_path / "my_router" / "config.json").read_text())["model_names"]
    assert json.loads(proc.stdout)["model"] in models
    assert "Loading weights" not in proc.stderr and "it/s" not in proc.stderr


def test_every_command_takes_quiet_and_threads():
    parser = cli.build_parser()
    commands = parser._subparsers._group_actions[0].choices
    for name in ("route", "serve", "bench", "train", "eval", "demo"):
        options = {o for a in commands[name]._actions for o in a.option_strings}
        assert {"--quiet", "--threads"} <= options, name
    train_help = commands["train"].format_help()
    assert "--test-fraction" in train_help and "(default: 0.2)" in train_help
