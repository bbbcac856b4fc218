"""OutcomeTable validation, format_mcq, split_by_hash, the bundled data and every loader (real slices + tiny files)."""
import gzip
import importlib.util
import json
import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from routoo_fast.data import (
    BUNDLE_OUTCOMES,
    BUNDLE_QUESTIONS,
    OutcomeTable,
    format_mcq,
    load_default,
    load_long,
    load_mmlu_pro,
    load_routellm_mmlu,
    load_routerbench,
    load_zeroeval,
    shared_data_dir,
    split_by_hash,
)
from routoo_fast.costs import count_tokens, estimate_tokens

REPO = Path(__file__).resolve().parent.parent
# real data: $ROUTOO_SHARED_DATA, else ../shared/data relative to the repository root (where CI puts it)
SHARED = Path(os.environ.get("ROUTOO_SHARED_DATA") or REPO.parent / "shared" / "data")


def shared(sub: str) -> Path:
    if not (SHARED / sub).exists():
        pytest.skip(f"real data {sub} not found (../shared/data beside the repo, or $ROUTOO_SHARED_DATA)")
    return SHARED / sub


@pytest.fixture(scope="module")
def default_table():
    return load_default()


def tiny(**kw):
    base = dict(prompts=["a", "b", "c"], models=["m1", "m2"], scores=np.array([[1, 0], [np.nan, 1], [0.5, 0]]))
    base.update(kw)
    return OutcomeTable(**base)


# ------------------------------------------------------------------------------------------------ OutcomeTable
def test_table_coerces_dtypes_and_counts():
    t = tiny(input_tokens=[3, 4, 5], output_tokens=np.ones((3, 2)), cost=np.zeros((3, 2)), meta={"k": [1, 2, 3]})
    assert (t.n_prompts, t.n_models) == (3, 2)
    assert t.scores.dtype == np.float32 and t.cost.dtype == np.float64
    assert t.input_tokens.dtype == np.int32 and t.output_tokens.dtype == np.float32
    assert t.model_index("m2") == 1


@pytest.mark.parametrize(
    "kw, err, match",
    [
        (dict(scores=np.zeros((3, 3))), ValueError, r"scores must have shape \(3, 2\)"),
        (dict(scores=np.array([[1, 0], [0, 2], [0, 0]])), ValueError, r"scores\[1, 1\] = 2"),
        (dict(scores=np.full((3, 2), "x")), TypeError, "scores must be a numeric array"),
        (dict(models=["m1", "m1"]), ValueError, "duplicated: \\['m1'\\]"),
        (dict(prompts=["a", 1, "c"]), TypeError, r"prompts\[1\] must be str"),
        (dict(prompts="abc"), TypeError, "prompts must be a list"),
        (dict(cost=-np.ones((3, 2))), ValueError, "cost must be finite and >= 0"),
        (dict(input_tokens=[1, 2]), ValueError, r"input_tokens must have shape \(3,\)"),
        (dict(input_tokens=[1.5, 2, 3]), TypeError, "input_tokens must be integer"),
        (dict(input_tokens=[-1, 2, 3]), ValueError, "input_tokens must be >= 0"),
        (dict(output_tokens=np.full((3, 2), np.inf)), ValueError, "output_tokens must be finite"),
        (dict(meta={"split": ["train"]}), ValueError, r"meta\['split'\] must have shape \(3,\)"),
    ],
)
def test_table_rejects_bad_fields(kw, err, match):
    with pytest.raises(err, match=match):
        tiny(**kw)


def test_subset_and_select_models():
    t = tiny(input_tokens=[3, 4, 5], cost=np.arange(6.0).reshape(3, 2), meta={"k": np.array([10, 20, 30])})
    s = t.subset([2, 0])
    assert s.prompts == ["c", "a"] and s.input_tokens.tolist() == [5, 3] and s.meta["k"].tolist() == [30, 10]
    np.testing.assert_array_equal(s.cost, [[4, 5], [0, 1]])
    assert t.subset(np.array([False, True, False])).prompts == ["b"]
    assert t.subset([]).n_prompts == 0 and t.subset([]).scores.shape == (0, 2)
    assert tiny(prompts=np.array(["a", "b", "c"])).prompts == ["a", "b", "c"]
    m = t.select_models(["m2"])
    assert m.models == ["m2"] and m.scores[:, 0].tolist() == [0, 1, 0] and m.cost[:, 0].tolist() == [1, 3, 5]
    with pytest.raises(ValueError, match="unknown model 'gpt-5'"):
        t.select_models(["m1", "gpt-5"])
    with pytest.raises(ValueError, match="out of range"):
        t.subset([3])
    with pytest.raises(ValueError, match="no meta\\['split'\\]"):
        t.split("train")
    t.meta["split"] = np.array(["train", "test", "train"])
    assert t.split("train").prompts == ["a", "c"]


# ----------------------------------------------------------------------------------------- text helpers, split
def test_shared_data_dir_env_override(monkeypatch, tmp_path):
    monkeypatch.setenv("ROUTOO_SHARED_DATA", str(tmp_path))
    assert shared_data_dir() == tmp_path


def test_format_mcq_exact():
    assert format_mcq("Q?", ["x", "y", "z"]) == "Q?\nA. x\nB. y\nC. z"
    with pytest.raises(TypeError, match="options must be a list"):
        format_mcq("Q?", "xyz")
    with pytest.raises(TypeError, match="option B"):
        format_mcq("Q?", ["x", 3])


def test_token_estimates():
    assert estimate_tokens(["", "abcd", "abcde"]).tolist() == [0, 1, 2]
    assert count_tokens(["a b c"], tokenizer=str.split).tolist() == [3]
    with pytest.raises(TypeError, match="tokenizer must be callable"):
        count_tokens(["a"], tokenizer=3)


def test_split_is_pinned_and_order_free():
    texts = [f"prompt number {i}" for i in range(2000)]
    s = split_by_hash(texts)
    # pinned values: the hash is part of the data contract (a changed split would leak test prompts into training)
    assert split_by_hash([f"prompt {i}" for i in range(12)]).tolist() == PINNED
    assert split_by_hash(texts[::-1]).tolist() == s[::-1].tolist()
    assert split_by_hash(texts, salt="other").tolist() != s.tolist()
    assert set(s.tolist()) == {"train", "val", "test"}


PINNED = ["train", "test", "train", "train", "train", "train", "test", "val", "train", "train", "val", "test"]


def test_split_fractions_on_real_prompts(default_table):
    s = split_by_hash(default_table.prompts)
    for name, frac in zip(("train", "val", "test"), (0.7, 0.1, 0.2)):
        assert abs((s == name).mean() - frac) < 0.02
    # duplicated prompt texts exist in MMLU-Pro: each text must sit in one split only
    by_text = {}
    for p, name in zip(default_table.prompts, s):
        assert by_text.setdefault(p, name) == name
    assert len(by_text) < len(default_table.prompts)
    assert (split_by_hash(default_table.prompts, fractions=(1, 0, 0)) == "train").all()
    assert (split_by_hash(default_table.prompts, fractions=(0, 0, 1)) == "test").all()


@pytest.mark.parametrize("fractions", [(0.5, 0.5), (0.7, 0.2, 0.2), (-0.1, 0.6, 0.5), (np.nan, 0.5, 0.5)])
def test_split_rejects_bad_fractions(fractions):
    with pytest.raises(ValueError, match="fractions"):
        split_by_hash(["a"], fractions=fractions)


@settings(max_examples=50, deadline=None)
@given(st.lists(st.text(max_size=30), max_size=30))
def test_split_property_equal_texts_equal_split(texts):
    doubled = texts + texts
    s = split_by_hash(doubled)
    assert s[: len(texts)].tolist() == s[len(texts):].tolist()
    assert all(x in ("train", "val", "test") for x in s.tolist())
    assert [split_by_hash([t])[0] for t in texts] == s[: len(texts)].tolist()


# --------------------------------------------------------------------------------------------- bundled data
def test_default_table(default_table):
    t = default_table
    assert (t.n_prompts, t.n_models) == (6810, 29)
    assert "gemini-1.5-pro-002" in t.models and "Llama-2-7b-hf" in t.models
    assert set(np.unique(t.scores[np.isfinite(t.scores)]).tolist()) == {0.0, 1.0}
    assert np.array_equal(np.isnan(t.scores), np.isnan(t.output_tokens))
    assert (t.input_tokens > 0).all()
    assert len(set(t.meta["subject"].tolist())) == 56
    assert all(s.startswith("ori_mmlu-") for s in t.meta["src"].tolist())
    assert t.prompts[0].split("\n")[1].startswith("A. ")
    acc = dict(zip(t.models, np.nanmean(t.scores, axis=0)))
    assert acc["gemini-1.5-pro-002"] > acc["Meta-Llama-3_1-8B-Instruct"] > acc["Llama-2-7b-hf"]


def test_bundle_is_small():
    assert BUNDLE_QUESTIONS.stat().st_size + BUNDLE_OUTCOMES.stat().st_size < 4e6
    notice = (BUNDLE_QUESTIONS.parent / "NOTICE_mmlu_pro.txt").read_text()
    assert "f418b116db00b065c2aea046518d8fcf74d39872" in notice and "MIT" in notice and "Apache" in notice


def test_bundle_round_trip_equals_shared_source(default_table):
    src = load_mmlu_pro(shared("mmlu_pro_outputs"), source="ori_mmlu")
    t = default_table
    assert t.prompts == src.prompts and t.models == src.models
    np.testing.assert_array_equal(t.scores, src.scores)
    np.testing.assert_array_equal(t.output_tokens, src.output_tokens)
    np.testing.assert_array_equal(t.input_tokens, src.input_tokens)
    assert sorted(t.meta) == sorted(src.meta)
    for k in t.meta:
        np.testing.assert_array_equal(t.meta[k], src.meta[k])


def test_bundle_script_reproduces_shipped_contents(tmp_path):
    """The contents, not the bytes: an .npz's zip headers and a gzip stream depend on the numpy and zlib versions
    (numpy 2.2 and 2.4 write different zip headers for the same arrays)."""
    src = shared("mmlu_pro_outputs")
    spec = importlib.util.spec_from_file_location("bundle_data", REPO / "scripts" / "bundle_data.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    paths = mod.build_bundle(src, tmp_path)
    assert sorted(p.name for p in paths) == sorted([BUNDLE_QUESTIONS.name, BUNDLE_OUTCOMES.name])
    for path in paths:
        shipped = BUNDLE_QUESTIONS.parent / path.name
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as got, np.load(shipped, allow_pickle=False) as want:
                assert sorted(got.files) == sorted(want.files), path.name
                for key in want.files:
                    assert got[key].dtype == want[key].dtype and got[key].shape == want[key].shape, key
                    np.testing.assert_array_equal(got[key], want[key], err_msg=key)  # data, not arithmetic
        else:
            assert path.name.endswith(".gz"), path.name
            assert gzip.decompress(path.read_bytes()) == gzip.decompress(shipped.read_bytes()), path.name


# -------------------------------------------------------------------------------------------------- MMLU-Pro
def write_mmlu_pro(root: Path, correctness_rows=None, chars_rows=None, extra_question=None):
    root.mkdir(parents=True, exist_ok=True)
    qs = [
        {"question_id": 1, "question": "Q1?", "options": ["a", "b"], "answer": "A", "answer_index": 0,
         "category": "law", "src": "ori_mmlu-jurisprudence"},
        {"question_id": 2, "question": "Q2?", "options": ["c", "d", "e"], "answer": "B", "answer_index": 1,
         "category": "math", "src": "stemez-Math"},
    ]
    lines = [json.dumps(q) for q in qs] + ([extra_question] if extra_question else [])
    (root / "questions.jsonl").write_text("\n".join(lines) + "\n")
    (root / "correctness.csv").write_text("question_id,mA,mB\n" + "\n".join(correctness_rows or ["1,1,0", "2,,1"]) + "\n")
    (root / "output_chars.csv").write_text("question_id,mA,mB\n" + "\n".join(chars_rows or ["1,40,8", "2,,400"]) + "\n")
    return root


def test_load_mmlu_pro_tiny(tmp_path):
    root = write_mmlu_pro(tmp_path / "m")
    t = load_mmlu_pro(root)
    assert t.prompts == ["Q1?\nA. a\nB. b"] and t.models == ["mA", "mB"]
    np.testing.assert_array_equal(t.scores, [[1, 0]])
    np.testing.assert_array_equal(t.output_tokens, [[10, 2]])
    assert t.meta["subject"].tolist() == ["jurisprudence"] and t.meta["id"].tolist() == [1]
    assert t.input_tokens.tolist() == [4]  # 14 chars -> ceil(14 / 4)
    a = load_mmlu_pro(root, source="all")
    assert a.n_prompts == 2 and np.isnan(a.scores[1, 0]) and np.isnan(a.output_tokens[1, 0])
    assert a.meta["subject"].tolist() == ["jurisprudence", "stemez-Math"]
    assert load_mmlu_pro(root, tokenizer=str.split).input_tokens.tolist() == [5]


@pytest.mark.parametrize(
    "kw, file, line",
    [
        (dict(correctness_rows=["1,1,0", "2,yes,1"]), "correctness.csv", 3),
        (dict(correctness_rows=["1,1", "2,1,1"]), "correctness.csv", 2),
        (dict(chars_rows=["1,40,-8", "2,,400"]), "output_chars.csv", 2),
        (dict(extra_question="{not json"), "questions.jsonl", 3),
        (dict(extra_question='{"question_id": 3, "question": "Q", "options": "ab", "category": "x", "src": "y"}'),
         "questions.jsonl", 3),
    ],
)
def test_load_mmlu_pro_malformed_names_file_and_line(tmp_path, kw, file, line):
    root = write_mmlu_pro(tmp_path / "m", **kw)
    with pytest.raises(ValueError, match=rf"{file}:{line}:"):
        load_mmlu_pro(root, source="all")


def test_load_mmlu_pro_missing_file_and_bad_source(tmp_path):
    with pytest.raises(FileNotFoundError, match="questions.jsonl"):
        load_mmlu_pro(tmp_path)
    with pytest.raises(ValueError, match="source must be"):
        load_mmlu_pro(tmp_path, source="stemez")


def test_load_mmlu_pro_all_real():
    t = load_mmlu_pro(shared("mmlu_pro_outputs"), source="all")
    assert (t.n_prompts, t.n_models) == (12032, 29)
    assert np.isnan(t.scores).sum() == 1713


# -------------------------------------------------------------------------------------------------- RouteLLM
def test_load_routellm_real_with_contamination():
    root = shared("routellm")
    t = load_routellm_mmlu(root / "mmlu_responses")
    assert (t.n_prompts, t.n_models) == (14042, 2) and len(set(t.meta["subject"].tolist())) == 57
    c = load_routellm_mmlu(root / "mmlu_responses", contaminated=root / "mmlu_contaminated_prompts.jsonl")
    assert c.n_prompts == 14042 - 5
    acc = np.nanmean(t.scores, axis=0)
    assert abs(acc[t.model_index("gpt-4-1106-preview")] - 0.806) < 0.001
    assert abs(acc[t.model_index("mistralai/Mixtral-8x7B-Instruct-v0.1")] - 0.681) < 0.001


def test_load_routellm_malformed(tmp_path):
    (tmp_path / "mmlu_anatomy.csv").write_text('prompt,m1,m2\n"Q1\nA. x",True,False\nQ2,maybe,True\n')
    with pytest.raises(ValueError, match=r"mmlu_anatomy.csv:4: correctness must be True or False"):
        load_routellm_mmlu(tmp_path)
    (tmp_path / "mmlu_anatomy.csv").write_text('prompt,m1,m2\n"Q1\nA. x",True,False\n')
    t = load_routellm_mmlu(tmp_path)
    assert t.prompts == ["Q1\nA. x"] and t.meta["subject"].tolist() == ["anatomy"] and t.output_tokens is None
    (tmp_path / "mmlu_virology.csv").write_text("prompt,m1,m3\nQ,True,True\n")
    with pytest.raises(ValueError, match=r"mmlu_virology.csv:1: model columns"):
        load_routellm_mmlu(tmp_path)
    with pytest.raises(FileNotFoundError):
        load_routellm_mmlu(tmp_path / "nope")


# ----------------------------------------------------------------------------------------------- RouterBench
def test_load_routerbench_real_file():
    t = load_routerbench(shared("routerdc/routerbench_zs") / "mbpp_test.csv")
    assert (t.n_prompts, t.n_models) == (128, 11)
    assert set(t.meta["split"].tolist()) == {"test"} and set(t.meta["task"].tolist()) == {"mbpp"}
    assert t.prompts[0] == "Write a python function to identify non-prime numbers."
    assert np.isfinite(t.cost).all() and (t.cost > 0).all()
    assert t.cost[0, t.model_index("gpt-4-1106-preview")] == pytest.approx(0.01091)
    assert np.isfinite(t.output_tokens).all()


ROUTERBENCH_HEADER = ",sample_id,prompt,eval_name,mA,mB,mA|model_response,mB|model_response,mA|total_cost,mB|total_cost\n"


def test_load_routerbench_tiny_and_malformed(tmp_path):
    good = "0,x.1,\"['Say hi']\",demo,1.0,0.0,\"['hi!']\",\"['hello there']\",0.001,0.0002\n"
    f = tmp_path / "demo_train.csv"
    f.write_text(ROUTERBENCH_HEADER + good)
    t = load_routerbench(tmp_path)
    assert t.prompts == ["Say hi"] and t.meta["split"].tolist() == ["train"] and t.meta["id"].tolist() == ["x.1"]
    np.testing.assert_allclose(t.cost, [[0.001, 0.0002]])
    np.testing.assert_allclose(t.output_tokens, [[3 / 4, 11 / 4]])
    f.write_text(ROUTERBENCH_HEADER + good + "1,x.2,\"['unterminated\",demo,1.0,0.0,,,0.001,0.0002\n")
    with pytest.raises(ValueError, match=r"demo_train.csv:3: prompt is not a python list literal"):
        load_routerbench(f)
    f.write_text(ROUTERBENCH_HEADER + good + "1,x.2,\"['q']\",demo,1.0,0.0,,,-0.001,0.0002\n")
    with pytest.raises(ValueError, match=r"demo_train.csv:3: mA\|total_cost out of range"):
        load_routerbench([f])


# -------------------------------------------------------------------------------------------------- ZeroEval
def test_load_zeroeval_real():
    t = load_zeroeval(shared("zeroeval"), "crux")
    assert (t.n_prompts, t.n_models) == (800, 48) and set(t.meta["task"].tolist()) == {"crux"}
    g = load_zeroeval(shared("zeroeval") / "gsm", "gsm")
    assert g.n_prompts == 1319 and np.isnan(g.scores[:, g.model_index("gemini-1.5-flash-exp-0827")]).sum() == 1319 - 681
    with pytest.raises(ValueError, match="task must be one of"):
        load_zeroeval(shared("zeroeval"), "mmlu")


def test_load_zeroeval_malformed(tmp_path):
    root = tmp_path / "gsm"
    root.mkdir()
    (root / "questions.jsonl").write_text('{"id": "q1", "question": "1+1?"}\n{"id": "q2"}\n')
    (root / "correctness.csv").write_text("id,m\nq1,1\nq2,0\n")
    (root / "output_chars.csv").write_text("id,m\nq1,12\nq2,3\n")
    with pytest.raises(ValueError, match=r"questions.jsonl:2: missing field 'question'"):
        load_zeroeval(tmp_path, "gsm")
    (root / "questions.jsonl").write_text('{"id": "q1", "question": "1+1?"}\n')
    (root / "output_chars.csv").write_text("id,m\nq1,\nq2,3\n")
    with pytest.raises(ValueError, match="output_chars.csv: missing entries do not match"):
        load_zeroeval(tmp_path, "gsm")
    (root / "output_chars.csv").write_text("id,m\nq1,12\nq2,3\n")
    t = load_zeroeval(tmp_path, "gsm")
    assert t.prompts == ["1+1?"] and t.output_tokens.tolist() == [[3.0]]


# ------------------------------------------------------------------------------------------- long format
LONG_ROWS = [
    {"prompt": "p1", "model": "a", "score": 1, "cost": 0.002, "input_tokens": 7, "output_tokens": 10, "task": "t1"},
    {"prompt": "p1", "model": "a", "score": 0, "cost": 0.004, "input_tokens": 7, "output_tokens": 30, "task": "t1"},
    {"prompt": "p1", "model": "b", "score": 0.5, "cost": None, "input_tokens": 7, "output_tokens": None, "task": "t1"},
    {"prompt": "p2", "model": "b", "score": 1, "cost": 0.001, "input_tokens": None, "output_tokens": 4, "task": "t2"},
]


def write_long(path: Path, rows):
    if path.suffix == ".csv":
        cols = list(rows[0])
        lines = [",".join(cols)] + [",".join("" if r[c] is None else str(r[c]) for c in cols) for r in rows]
        path.write_text("\n".join(lines) + "\n")
    elif path.suffix == ".jsonl":
        path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), path)
    return path


@pytest.mark.parametrize("ext", [".csv", ".jsonl", ".parquet"])
def test_load_long_formats_agree(tmp_path, ext):
    t = load_long(write_long(tmp_path / f"log{ext}", LONG_ROWS))
    assert t.prompts == ["p1", "p2"] and t.models == ["a", "b"]
    np.testing.assert_allclose(t.scores, [[0.5, 0.5], [np.nan, 1.0]])
    np.testing.assert_allclose(t.cost, [[0.003, np.nan], [np.nan, 0.001]])
    np.testing.assert_allclose(t.output_tokens, [[20, np.nan], [np.nan, 4]])
    assert t.input_tokens.tolist() == [7, 1]  # p2: no count given -> ceil(2 chars / 4)
    assert t.meta["task"].tolist() == ["t1", "t2"]


def test_load_long_duplicates_error_names_both_lines(tmp_path):
    path = write_long(tmp_path / "log.csv", LONG_ROWS)
    with pytest.raises(ValueError, match=r"log.csv:3: duplicate row for model 'a'.*log.csv:2"):
        load_long(path, duplicates="error")
    with pytest.raises(ValueError, match="duplicates must be"):
        load_long(path, duplicates="first")


@pytest.mark.parametrize(
    "row, match",
    [
        ({"prompt": "p", "model": "a", "score": 1.5}, r"log.jsonl:2: score must be finite and in \[0, 1.0\]"),
        ({"prompt": "p", "model": "a", "score": None}, r"log.jsonl:2: score is missing"),
        ({"prompt": "p", "model": "", "score": 1}, r"log.jsonl:2: model must be a non-empty string"),
        ({"prompt": 3, "model": "a", "score": 1}, r"log.jsonl:2: prompt must be a string"),
        ({"prompt": "p", "model": "a", "score": 1, "cost": -1}, r"log.jsonl:2: cost must be finite"),
        ({"prompt": "p", "model": "a", "score": 1, "input_tokens": 2.5}, r"log.jsonl:2: input_tokens must be an int"),
    ],
)
def test_load_long_malformed_rows(tmp_path, row, match):
    path = write_long(tmp_path / "log.jsonl", [{"prompt": "ok", "model": "a", "score": 1}, row])
    with pytest.raises(ValueError, match=match):
        load_long(path)


def test_load_long_file_level_errors(tmp_path):
    (tmp_path / "x.csv").write_text("prompt,score\np,1\n")
    with pytest.raises(ValueError, match=r"x.csv:1: missing columns \['model'\]"):
        load_long(tmp_path / "x.csv")
    (tmp_path / "x.txt").write_text("")
    with pytest.raises(ValueError, match="unknown format"):
        load_long(tmp_path / "x.txt")
    with pytest.raises(FileNotFoundError):
        load_long(tmp_path / "absent.csv")
    (tmp_path / "bad.jsonl").write_text('{"prompt": "p", "model": "a", "score": 1}\n[1, 2]\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2: expected a JSON object"):
        load_long(tmp_path / "bad.jsonl")
    (tmp_path / "short.csv").write_text("prompt,model,score\np,a\n")
    with pytest.raises(ValueError, match=r"short.csv:2: expected 3 fields"):
        load_long(tmp_path / "short.csv")
