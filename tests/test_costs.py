"""PriceTable (shipped prices, overrides, errors) and the expected-cost model against a slow reference."""
import dataclasses
import math
import os
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from routoo_fast.costs import (
    DEFAULT_PRICES,
    ModelPrice,
    PriceTable,
    call_costs,
    costs_for_prompts,
    expected_cost,
    expected_output_tokens,
)
from routoo_fast.data import OutcomeTable, load_default, load_routerbench, load_zeroeval

# real data: $ROUTOO_SHARED_DATA, else ../shared/data relative to the repository root (where CI puts it)
SHARED = Path(os.environ.get("ROUTOO_SHARED_DATA") or Path(__file__).resolve().parent.parent.parent / "shared" / "data")


@pytest.fixture(scope="module")
def prices():
    return PriceTable.load()


def expected_cost_reference(table, prices, eo):
    """Slow, obviously-correct expected cost: one Python loop iteration per (prompt, model)."""
    C = np.zeros((table.n_prompts, table.n_models))
    for p in range(table.n_prompts):
        for n, m in enumerate(table.models):
            if table.cost is not None and math.isfinite(table.cost[p, n]):
                C[p, n] = table.cost[p, n]
            else:
                price = prices.get(m)
                C[p, n] = (table.input_tokens[p] * price.input_usd_per_mtok + eo[n] * price.output_usd_per_mtok) / 1e6
    return C


# --------------------------------------------------------------------------------------------- shipped prices
def test_shipped_prices_cover_bundled_pool(prices):
    t = load_default()
    for m in t.models:
        p = prices.get(m)
        assert p.input_usd_per_mtok > 0 and p.output_usd_per_mtok >= p.input_usd_per_mtok, m
        assert p.source, m


def test_shipped_prices_named_facts(prices):
    assert (prices.get("gemini-1.5-pro-002").input_usd_per_mtok, prices.get("gemini-1.5-pro-002").output_usd_per_mtok) == (1.25, 5.0)
    assert prices.get("gemini-1.5-flash-002").output_usd_per_mtok == 0.30
    assert prices.get("DeepSeek-Coder-V2").output_usd_per_mtok == 0.28
    assert prices.get("jamba-1.5-large").output_usd_per_mtok == 8.0
    for base in ("Meta-Llama-3_1-70B", "Yi-34B", "gemma-7b", "Llama-2-7b-hf", "Qwen1.5-110B", "Mixtral-8x7B-v0.1"):
        assert prices.get(base).source.startswith("estimate"), base
        assert prices.get(base).open_weights
    assert not prices.get("gemini-1.5-pro-002").open_weights
    # size classes are priced consistently: open 7B < 34B < 70B < 110B
    sizes = ["Mistral-7B-v0.1", "Yi-34B", "Llama-2-70b-hf", "Qwen1.5-110B"]
    ins = [prices.get(m).input_usd_per_mtok for m in sizes]
    assert ins == sorted(ins) and len(set(ins)) == 4


@pytest.mark.parametrize("task", ["gsm", "math-l5", "crux"])
def test_shipped_prices_cover_zeroeval_pools(prices, task):
    if not (SHARED / "zeroeval").is_dir():
        pytest.skip("real data not found")
    for m in load_zeroeval(SHARED / "zeroeval", task).models:
        assert m in prices, m


def test_prices_reproduce_routerbench_real_costs(prices):
    """The inferred per-token prices times chars/4 token estimates match RouterBench's billed USD per call on
    English prose (ARC). On code (MBPP) chars/4 undercounts tokens for some models by up to ~35%."""
    path = SHARED / "routerdc" / "routerbench_zs" / "arc_challenge_test.csv"
    if not path.is_file():
        pytest.skip("real data not found")
    t = load_routerbench(path)
    pin, pout = prices.per_token(t.models)
    estimate = t.input_tokens[:, None] * pin + t.output_tokens * pout
    ratio = np.median(t.cost / estimate, axis=0)
    np.testing.assert_allclose(ratio, 1.0, atol=0.02)


# ---------------------------------------------------------------------------------------------- PriceTable API
def test_get_unknown_model_names_it(prices):
    with pytest.raises(ValueError, match="unknown model 'gpt-9'"):
        prices.get("gpt-9")
    with pytest.raises(ValueError, match="unknown model 'gpt-9'"):
        prices.per_token(["gpt-4-1106-preview", "gpt-9"])


def test_with_overrides_forms(prices):
    new = prices.with_overrides({
        "gpt-4-1106-preview": (1, 2),
        "Yi-34B": {"output_usd_per_mtok": 9.0},
        "my-model": {"input_usd_per_mtok": 0.5, "output_usd_per_mtok": 0.7, "open_weights": True},
        "other": ModelPrice(1.0, 1.0, False, "contract"),
    })
    assert new.get("gpt-4-1106-preview") == ModelPrice(1.0, 2.0, False, "user override")
    assert new.get("Yi-34B").input_usd_per_mtok == 0.8 and new.get("Yi-34B").output_usd_per_mtok == 9.0
    assert new.get("my-model").open_weights and new.get("my-model").source == "user override"
    assert new.get("other").source == "contract"
    assert "my-model" not in prices and prices.get("gpt-4-1106-preview").input_usd_per_mtok == 10.0
    assert len(new) == len(prices) + 2


@pytest.mark.parametrize(
    "override, err, match",
    [
        ({"x": (-1, 2)}, ValueError, "input_usd_per_mtok must be finite and >= 0, got -1"),
        ({"x": (1, float("nan"))}, ValueError, "output_usd_per_mtok must be finite"),
        ({"x": ("1", 2)}, TypeError, "input_usd_per_mtok must be a number"),
        ({"x": 3.0}, TypeError, "override for 'x'"),
        ({"x": {"input_usd_per_mtok": 1}}, ValueError, r"new model 'x' needs \['output_usd_per_mtok'\]"),
        ({"Yi-34B": {"price": 1}}, ValueError, r"unknown fields \['price'\]"),
    ],
)
def test_with_overrides_rejects_bad_prices(prices, override, err, match):
    with pytest.raises(err, match=match):
        prices.with_overrides(override)


def test_save_load_round_trip(prices, tmp_path):
    path = tmp_path / "p.csv"
    prices.with_overrides({"new": (0.123, 4.56)}).save(path)
    back = PriceTable.load(path)
    assert back.models == prices.models + ["new"]
    for m in back.models:
        assert back.get(m) == (prices.get(m) if m != "new" else ModelPrice(0.123, 4.56, False, "user override"))


def test_dict_round_trip_is_json_able(prices):
    import json

    d = json.loads(json.dumps(prices.to_dict(["Yi-34B", "gemini-1.5-pro-002"])))
    assert d["Yi-34B"]["input_usd_per_mtok"] == 0.8 and d["gemini-1.5-pro-002"]["open_weights"] is False
    back = PriceTable.from_dict(d)
    assert back.models == ["Yi-34B", "gemini-1.5-pro-002"] and back.get("Yi-34B") == prices.get("Yi-34B")
    with pytest.raises(ValueError, match="output_usd_per_mtok must be finite"):
        PriceTable.from_dict({"a": {"input_usd_per_mtok": 1, "output_usd_per_mtok": -1}})
    with pytest.raises(TypeError, match="prices must be a mapping"):
        PriceTable.from_dict([1, 2])


HEADER = "model,input_usd_per_mtok,output_usd_per_mtok,open_weights,source\n"


@pytest.mark.parametrize(
    "body, match",
    [
        ("a,1,2,true,x\nb,-1,2,true,y\n", r"p.csv:3: model 'b': input_usd_per_mtok must be finite and >= 0"),
        ("a,1,2,true,x\nb,one,2,true,y\n", r"p.csv:3: model 'b'"),
        ("a,1,2,maybe,x\n", r"p.csv:2: open_weights must be true or false"),
        ("a,1,2,true,x\na,1,2,true,x\n", r"p.csv:3: model 'a' listed twice"),
        ("a,1,2\n", r"p.csv:2: expected 5 fields"),
    ],
)
def test_load_malformed_names_file_and_line(tmp_path, body, match):
    (tmp_path / "p.csv").write_text(HEADER + body)
    with pytest.raises(ValueError, match=match):
        PriceTable.load(tmp_path / "p.csv")


def test_load_bad_header_and_missing(tmp_path):
    (tmp_path / "p.csv").write_text("name,in,out\n")
    with pytest.raises(ValueError, match="p.csv:1: header must be"):
        PriceTable.load(tmp_path / "p.csv")
    with pytest.raises(FileNotFoundError):
        PriceTable.load(tmp_path / "absent.csv")
    assert DEFAULT_PRICES.is_file()


# ------------------------------------------------------------------------------------------------ cost model
def hand_table():
    return OutcomeTable(
        prompts=["abcd", "abcdefgh"],
        models=["x", "y"],
        scores=np.array([[1, 0], [0, 1]]),
        cost=np.array([[np.nan, 0.5], [np.nan, np.nan]]),
        input_tokens=np.array([100, 300]),
        output_tokens=np.array([[10, np.nan], [30, 50]]),
    )


HAND_PRICES = PriceTable({"x": ModelPrice(1.0, 2.0), "y": ModelPrice(10.0, 20.0), "z": ModelPrice(0, 0)})


def test_expected_cost_by_hand():
    t = hand_table()
    np.testing.assert_array_equal(expected_output_tokens(t), [20.0, 50.0])
    C = expected_cost(t, HAND_PRICES)
    # x: input * 1e-6 + 20 * 2e-6; y row 1: 300 * 10e-6 + 50 * 20e-6; y row 0: real cost 0.5
    expected = np.array([[100e-6 + 40e-6, 0.5], [300e-6 + 40e-6, 3000e-6 + 1000e-6]])
    np.testing.assert_allclose(C, expected, rtol=1e-12)
    assert C.dtype == np.float64 and C.shape == (2, 2)
    C2 = expected_cost(t, HAND_PRICES, output_tokens={"x": 0, "y": 100})
    np.testing.assert_allclose(C2, [[100e-6, 0.5], [300e-6, 3000e-6 + 2000e-6]], rtol=1e-12)
    np.testing.assert_allclose(expected_cost(t, HAND_PRICES, output_tokens=[0, 100]), C2, rtol=1e-12)


def test_expected_cost_without_token_counts_uses_char_estimate():
    t = dataclasses.replace(hand_table(), input_tokens=None, cost=None)
    C = expected_cost(t, HAND_PRICES)
    np.testing.assert_allclose(C[:, 0], [1e-6 + 40e-6, 2e-6 + 40e-6], rtol=1e-12)  # "abcd" -> 1 token, 8 chars -> 2


def test_expected_cost_errors():
    t = hand_table()
    no_out = dataclasses.replace(t, output_tokens=None)
    with pytest.raises(ValueError, match=r"no output-length data for models \['x', 'y'\]"):
        expected_cost(no_out, HAND_PRICES)
    all_real = dataclasses.replace(no_out, cost=np.ones((2, 2)))
    np.testing.assert_array_equal(expected_cost(all_real, HAND_PRICES), np.ones((2, 2)))
    with pytest.raises(ValueError, match="unknown model 'y'"):
        expected_cost(t, PriceTable({"x": ModelPrice(1, 1)}))
    with pytest.raises(ValueError, match=r"output_tokens must have shape \(2,\)"):
        expected_cost(t, HAND_PRICES, output_tokens=[1, 2, 3])
    with pytest.raises(ValueError, match="output_tokens must be finite"):
        expected_cost(t, HAND_PRICES, output_tokens=[1, -2])
    with pytest.raises(ValueError, match=r"no entry for models \['y'\]"):
        expected_cost(t, HAND_PRICES, output_tokens={"x": 1})
    with pytest.raises(TypeError, match="prices must be a PriceTable"):
        expected_cost(t, {"x": (1, 1)})


def test_costs_for_new_prompts():
    C = costs_for_prompts(["abcd", "abcdefgh"], ["y", "x"], HAND_PRICES, {"x": 20, "y": 50})
    np.testing.assert_allclose(C, [[10e-6 + 1000e-6, 1e-6 + 40e-6], [20e-6 + 1000e-6, 2e-6 + 40e-6]], rtol=1e-12)
    with pytest.raises(ValueError, match=r"expected_output must have shape \(2,\)"):
        costs_for_prompts(["a"], ["x", "y"], HAND_PRICES, [1.0])
    with pytest.raises(ValueError, match="input_tokens must be finite and >= 0"):
        call_costs([-1], [1.0], [1.0], [1.0])
    with pytest.raises(ValueError, match="1-D of one length N"):
        call_costs([1], [1.0, 2.0], [1.0], [1.0])


def test_expected_cost_on_default_table(prices):
    t = load_default()
    C = expected_cost(t, prices)
    assert C.shape == (6810, 29) and np.isfinite(C).all() and (C > 0).all()
    mean = dict(zip(t.models, C.mean(axis=0)))
    assert mean["gemini-1.5-flash-002"] < mean["Meta-Llama-3_1-70B-Instruct"] < mean["gemini-1.5-pro-002"]


@settings(max_examples=40, deadline=None)
@given(
    data=st.data(),
    P=st.integers(1, 6),
    N=st.integers(1, 4),
)
def test_expected_cost_matches_reference(data, P, N):
    finite = st.floats(0, 1e4, allow_nan=False)
    out = data.draw(hnp.arrays(np.float64, (P, N), elements=st.one_of(finite, st.just(np.nan))))
    out[0] = data.draw(hnp.arrays(np.float64, (N,), elements=finite))  # every model seen at least once
    cost = data.draw(hnp.arrays(np.float64, (P, N), elements=st.one_of(st.floats(0, 1), st.just(np.nan))))
    tokens = data.draw(hnp.arrays(np.int64, (P,), elements=st.integers(0, 10**5)))
    models = [f"m{i}" for i in range(N)]
    prices = PriceTable({m: ModelPrice(data.draw(finite), data.draw(finite)) for m in models})
    table = OutcomeTable(prompts=[str(i) for i in range(P)], models=models, scores=np.zeros((P, N)), cost=cost,
                         input_tokens=tokens, output_tokens=out)
    eo = np.array([np.mean([float(np.float32(v)) for v in out[:, n] if not np.isnan(v)]) for n in range(N)])
    np.testing.assert_allclose(expected_output_tokens(table), eo, rtol=1e-9)
    np.testing.assert_allclose(expected_cost(table, prices), expected_cost_reference(table, prices, eo), rtol=1e-9)
