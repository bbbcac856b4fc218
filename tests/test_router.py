"""Router facade: predictions pass through unchanged, costs match a per-(prompt, model) loop, every policy's
choice is optimal against a brute-force check (tie-robust: compares objective values, not indices), async and
batched routing agree with sync routing, and bad input fails with a clear message."""
import asyncio
import math

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from routoo_fast.costs import PriceTable
from routoo_fast.policies import MaxQuality, Tradeoff
from routoo_fast.router import DEFAULT_ROUTER, Decision, Router, _with_max_length
from small_router import EXPECTED_OUTPUT_TOKENS, MODELS, save_small_router, small_predictor, small_router

PROMPTS = ["What is 2 + 2?", "Summarise the causes of the French Revolution in three sentences.", "",
           "Translate 'good morning' into Japanese and explain the politeness level." * 3]


@pytest.fixture(scope="module")
def router():
    return small_router()


def reference_costs(prompts, models):
    """C[b, n] = ceil(chars / 4) * input price + expected output tokens * output price, one entry at a time."""
    prices = PriceTable.load()
    C = np.zeros((len(prompts), len(models)))
    for b, p in enumerate(prompts):
        for n, m in enumerate(models):
            price = prices.get(m)
            C[b, n] = (math.ceil(len(p) / 4) * price.input_usd_per_mtok
                       + EXPECTED_OUTPUT_TOKENS[m] * price.output_usd_per_mtok) / 1e6
    return C


def test_predict_is_the_predictors(router):
    Q = router.predict(PROMPTS)
    assert Q.shape == (len(PROMPTS), len(MODELS)) and Q.dtype == np.float32
    assert np.all((Q >= 0) & (Q <= 1))
    np.testing.assert_array_equal(Q, small_predictor().predict(PROMPTS))
    assert router.model_names == MODELS


def test_costs_match_reference(router):
    np.testing.assert_allclose(router.costs(PROMPTS), reference_costs(PROMPTS, MODELS), rtol=1e-12, atol=0)


def test_route_decisions_consistent(router):
    decisions = router.route(PROMPTS, "lambda=300")
    Q, C = router.predict(PROMPTS), router.costs(PROMPTS)
    assert len(decisions) == len(PROMPTS)
    for b, d in enumerate(decisions):
        assert isinstance(d, Decision) and d.policy == "lambda=300.0" and d.feasible
        n = MODELS.index(d.model)
        assert d.predicted_quality == pytest.approx(float(Q[b, n]))
        assert d.expected_cost == pytest.approx(C[b, n], rel=1e-12)
        assert d.to_dict() == {"model": d.model, "predicted_quality": d.predicted_quality,
                               "expected_cost": d.expected_cost, "policy": d.policy, "feasible": d.feasible}


def test_single_string_prompt(router):
    (d,) = router.route("What is 2 + 2?")
    assert d == router.route(["What is 2 + 2?"])[0]


def check_optimal(policy, Q, C, choice, feasible):
    """Brute force: is each chosen model optimal for its prompt under `policy` (values, so ties do not matter)?"""
    allowed = np.ones(len(MODELS), bool)
    if policy.models is not None:
        allowed[:] = [m in policy.models for m in MODELS]
    for b, n in enumerate(choice):
        assert allowed[n]
        q, c = Q[b][allowed], C[b][allowed]
        if isinstance(policy, Tradeoff):
            assert Q[b, n] - policy.lam * C[b, n] >= (q - policy.lam * c).max() - 1e-9
        elif isinstance(policy, MaxQuality):
            ok = q if policy.max_cost is None else q[c <= policy.max_cost]
            assert feasible[b] == (ok.size > 0)
            if ok.size:
                assert policy.max_cost is None or C[b, n] <= policy.max_cost
                assert Q[b, n] >= ok.max() - 1e-9
            else:  # fallback: the cheapest allowed model
                assert C[b, n] == c.min()
        else:  # MinCost
            ok = c[q >= policy.min_quality]
            assert feasible[b] == (ok.size > 0)
            if ok.size:
                assert Q[b, n] >= policy.min_quality and C[b, n] <= ok.min() * (1 + 1e-12)


policy_specs = st.one_of(
    st.floats(0, 5000).map(lambda x: f"lambda={x}"),
    st.floats(1e-5, 1e-2).map(lambda x: f"max_cost={x}"),
    st.just("max_quality"),
    st.floats(0, 1).map(lambda x: f"min_quality={x}"),
)
subsets = st.one_of(st.none(), st.lists(st.sampled_from(MODELS), min_size=1, max_size=4, unique=True))


@settings(max_examples=60, deadline=None)
@given(st.lists(st.lists(st.floats(0, 1, width=32), min_size=4, max_size=4), min_size=1, max_size=len(PROMPTS)),
       policy_specs, subsets)
def test_decide_is_optimal(router, rows, spec, models):
    prompts = PROMPTS[:len(rows)]
    Q = np.array(rows, dtype=np.float32)
    if models is not None:
        spec += ",models=" + "|".join(models)
    decisions = router.decide(prompts, Q, spec)
    policy = __import__("routoo_fast.policies", fromlist=["parse_policy"]).parse_policy(spec)
    choice = [MODELS.index(d.model) for d in decisions]
    check_optimal(policy, Q.astype(np.float64), router.costs(prompts), choice, [d.feasible for d in decisions])


def test_budget_policy_respects_total(router):
    prompts = [f"question {i}: " + "word " * (i * 7) for i in range(8)]
    C = router.costs(prompts)
    for total in (C.min(axis=1).sum(), C.min(axis=1).sum() * 2, C.max(axis=1).sum()):
        decisions = router.route(prompts, {"budget": float(total)})
        assert sum(d.expected_cost for d in decisions) <= total * (1 + 1e-9)
    with pytest.raises(ValueError, match="below the cheapest possible total"):
        router.route(prompts, {"budget": float(C.min(axis=1).sum() * 0.5)})
    # an unlimited budget buys every prompt its best predicted model
    Q = router.predict(prompts)
    decisions = router.decide(prompts, Q, {"budget": float(C.max(axis=1).sum() * 10)})
    assert [d.model for d in decisions] == [MODELS[i] for i in Q.argmax(axis=1)]


def test_aroute_matches_route_with_and_without_batching():
    router = small_router()
    expected = router.route(PROMPTS, "lambda=1000")
    assert asyncio.run(router.aroute(PROMPTS, "lambda=1000")) == expected
    router.enable_batching(max_wait=0.01)
    try:
        async def many():
            return await asyncio.gather(*(router.aroute([p], "lambda=1000") for p in PROMPTS))
        got = [r[0] for r in asyncio.run(many())]
        assert got == expected
        assert router.route(PROMPTS, "lambda=1000") == expected  # sync route goes through the batcher too
        with pytest.raises(RuntimeError, match="already enabled"):
            router.enable_batching()
    finally:
        router.disable_batching()
    router.disable_batching()  # idempotent
    assert router.batcher is None


@pytest.mark.parametrize(
    "prompts, error, match",
    [
        ([], ValueError, "empty"),
        (["ok", 3], TypeError, r"prompts\[1\] must be a str"),
        (b"bytes", TypeError, "must be a str or a list"),
        (None, TypeError, "must be a str or a list"),
        (42, TypeError, "must be a str or a list"),
    ],
)
def test_bad_prompts(router, prompts, error, match):
    with pytest.raises(error, match=match):
        router.route(prompts)
    with pytest.raises(error, match=match):
        router.predict(prompts)


@pytest.mark.parametrize(
    "policy, error, match",
    [
        ("temperature=1", ValueError, "unknown policy key"),
        ("models=gpt-5", ValueError, r"unknown models \['gpt-5'\]"),
        ({"lambda": 1, "models": [MODELS[0], "nope"]}, ValueError, "unknown models"),
        (7, TypeError, "policy must be"),
    ],
)
def test_bad_policies(router, policy, error, match):
    with pytest.raises(error, match=match):
        router.route(["hello"], policy)


def test_decide_checks_q_shape(router):
    with pytest.raises(ValueError, match="Q must have shape"):
        router.decide(["a", "b"], np.zeros((2, 3), np.float32), "max_quality")


def test_constructor_validation():
    predictor, prices = small_predictor(), PriceTable.load()
    with pytest.raises(ValueError, match="no entry for models"):
        Router(predictor, prices, {MODELS[0]: 10.0})
    with pytest.raises(ValueError, match="finite and >= 0"):
        Router(predictor, prices, [1.0, -1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="shape"):
        Router(predictor, prices, [1.0, 2.0])
    with pytest.raises(TypeError, match="PriceTable"):
        Router(predictor, {"a": 1}, EXPECTED_OUTPUT_TOKENS)
    with pytest.raises(ValueError, match="no price"):
        Router(predictor, PriceTable({}), EXPECTED_OUTPUT_TOKENS)


def test_from_pretrained_round_trip(tmp_path):
    path = save_small_router(tmp_path / "router")
    loaded = Router.from_pretrained(path, backend="cpu")
    assert loaded.model_names == MODELS
    np.testing.assert_allclose(loaded.predict(PROMPTS), small_predictor().predict(PROMPTS), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(loaded.costs(PROMPTS), small_router().costs(PROMPTS))
    assert loaded.route(PROMPTS, "lambda=700") == small_router().route(PROMPTS, "lambda=700")
    shorter = Router.from_pretrained(str(path), max_length=8)
    assert shorter.predictor.encoder.max_length == 8
    chunked = Router.from_pretrained(path, batch_size=2)  # encoder forwards of 2 prompts: same answers
    assert chunked.predictor.encoder.batch_size == 2
    np.testing.assert_allclose(chunked.predict(PROMPTS), loaded.predict(PROMPTS), rtol=1e-5, atol=1e-6)


def test_from_pretrained_missing_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        Router.from_pretrained(tmp_path / "nope")


def test_with_max_length_keeps_the_weight_check():
    spec = {"path": None, "max_length": 256, "encoder_id": "all-MiniLM-L6-v2@sha256:abc/pool=mean/max_length=256"}
    new = _with_max_length(spec, 64)
    assert new["max_length"] == 64 and new["encoder_id"].endswith("/max_length=64")
    assert new["encoder_id"].startswith("all-MiniLM-L6-v2@sha256:abc/")
    with pytest.raises(ValueError, match="max_length"):
        _with_max_length(spec, 1)


def test_default_router_loads_and_routes():
    assert DEFAULT_ROUTER.is_dir(), "the shipped default router is missing from routoo_fast/assets"
    router = Router.from_pretrained("default", max_length=64)
    d = router.route(["Which gas do plants absorb from the air?\nA. Oxygen\nB. Carbon dioxide"], "lambda=100")[0]
    assert d.model in router.model_names and 0 <= d.predicted_quality <= 1 and d.expected_cost > 0
