"""routoo_fast.output_length and the per-prompt output lengths through CostModel, the saved router and Router."""
import asyncio

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from routoo_fast.costs import CostModel, PriceTable
from routoo_fast.output_length import OutputLengthModel
from small_router import EXPECTED_OUTPUT_TOKENS, MODELS, small_predictor


def planted(P=400, D=6, N=3, seed=0, noise=0.1):
    """Encodings x [P, D] and output tokens [P, N] with log1p(out) linear in x plus noise."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(P, D)) * 2 + 1
    W = rng.normal(size=(D, N)) * 0.4
    c = np.log1p(np.array([50.0, 300.0, 5.0])[:N])
    out = np.expm1(np.maximum(x @ W + c + noise * rng.normal(size=(P, N)), 0))
    return x, out, W, c


def ridge_reference(x, y_log, alpha):
    """The ridge fit as a plain least-squares problem: standardise, append sqrt(alpha) I rows (intercept free)."""
    mu, sd = x.mean(0), x.std(0)
    Z = np.c_[(x - mu) / sd, np.ones(len(x))]
    D1 = Z.shape[1]
    pen = np.sqrt(alpha) * np.eye(D1)[:-1]
    w, *_ = np.linalg.lstsq(np.r_[Z, pen], np.r_[y_log, np.zeros(D1 - 1)], rcond=None)
    return w[:-1] / sd, w[-1] - (mu / sd) @ w[:-1]


def test_fit_recovers_a_planted_length_model_and_matches_the_least_squares_reference():
    x, out, W, c = planted()
    tr, va = np.arange(300), np.arange(300, 400)
    m = OutputLengthModel.fit(x, out, tr, va, fallback=np.full(3, 100.0))
    assert m.alpha in (10.0, 100.0, 1000.0, 10000.0) and np.isfinite(m.val_rmse_log)
    fit_rows = np.arange(400)
    for n in range(3):
        w_ref, b_ref = ridge_reference(x[fit_rows], np.log1p(out[fit_rows, n]), m.alpha)
        np.testing.assert_allclose(m.weight[:, n], w_ref, rtol=1e-6, atol=1e-8)
        np.testing.assert_allclose(m.bias[n], b_ref, rtol=1e-6, atol=1e-8)
    pred = m.predict(x)
    assert (pred >= 0).all()
    np.testing.assert_allclose(pred.mean(0), out.mean(0), rtol=1e-9)  # scale: means equal on the fit rows
    for n in range(3):
        assert np.corrcoef(np.log1p(pred[:, n]), np.log1p(out[:, n]))[0, 1] > 0.9


def test_missing_outputs_and_a_model_never_observed():
    x, out, *_ = planted(N=3)
    out[::3, 0] = np.nan
    out[:, 2] = np.nan
    m = OutputLengthModel.fit(x, out, np.arange(300), np.arange(300, 400), fallback=np.array([1.0, 2.0, 77.0]))
    pred = m.predict(x[:5])
    np.testing.assert_allclose(pred[:, 2], 77.0)  # nothing seen: its fallback length, for every prompt
    seen = np.isfinite(out[:, 0])
    np.testing.assert_allclose(m.predict(x)[seen, 0].mean(), out[seen, 0].mean(), rtol=1e-9)


@pytest.mark.parametrize("call, match", [
    (lambda x, o: OutputLengthModel.fit(x[:, :, None], o, [0], [1], np.ones(3)), "features must be"),
    (lambda x, o: OutputLengthModel.fit(np.where(x > 2, np.nan, x), o, [0], [1], np.ones(3)), "NaN"),
    (lambda x, o: OutputLengthModel.fit(x, -o, [0], [1], np.ones(3)), "output_tokens must be >= 0"),
    (lambda x, o: OutputLengthModel.fit(x, o[:5], [0], [1], np.ones(3)), "output_tokens must be"),
    (lambda x, o: OutputLengthModel.fit(x, o, [0], [1], np.ones(2)), "fallback"),
    (lambda x, o: OutputLengthModel.fit(x, o, [], [1], np.ones(3)), "train_idx is empty"),
    (lambda x, o: OutputLengthModel.fit(x, o, [0], [1], np.ones(3), alphas=(0.0,)), "alphas"),
    (lambda x, o: OutputLengthModel(np.ones((2, 3)), np.ones(2), np.ones(3)), "bias must have shape"),
    (lambda x, o: OutputLengthModel(np.ones((2, 3)), np.ones(3), -np.ones(3)), "scale must be >= 0"),
    (lambda x, o: OutputLengthModel(np.ones((2, 3)), np.ones(3), np.ones(3)).predict(np.ones((1, 5))),
     r"features must be \[B, 2\]"),
])
def test_bad_arguments_are_named(call, match):
    x, out, *_ = planted(P=20)
    with pytest.raises(ValueError, match=match):
        call(x, out + 1.0)


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**16), scale=st.floats(0.0, 5.0))
def test_predictions_are_finite_and_non_negative(seed, scale):
    rng = np.random.default_rng(seed)
    m = OutputLengthModel(rng.normal(size=(4, 2)), rng.normal(size=2) * 3, np.full(2, scale))
    pred = m.predict(rng.normal(size=(7, 4)) * 3)
    assert pred.shape == (7, 2) and np.isfinite(pred).all() and (pred >= 0).all()


# ----------------------------------------------------------------------------------------- the cost model
def _cost_model(length=None):
    return CostModel(list(MODELS), PriceTable.load(), EXPECTED_OUTPUT_TOKENS, output_length=length)


def test_costs_with_per_prompt_output_tokens_follow_the_formula():
    cm = _cost_model()
    prompts = ["short", "a longer prompt here"]
    out = np.array([[10.0, 20, 30, 40], [1000, 0, 5, 7]])
    tok = cm.input_tokens(prompts).astype(np.float64)
    want = tok[:, None] * cm.input_price + out * cm.output_price
    np.testing.assert_allclose(cm.costs(prompts, output_tokens=out), want)
    np.testing.assert_allclose(cm.costs(prompts), tok[:, None] * cm.input_price
                               + cm.expected_output_tokens * cm.output_price)
    with pytest.raises(ValueError, match="output_tokens must have shape"):
        cm.costs(prompts, output_tokens=out[:, :2])
    with pytest.raises(ValueError, match="output_tokens must be finite"):
        cm.costs(prompts, output_tokens=-out)
    with pytest.raises(ValueError, match="output_length predicts"):
        _cost_model(OutputLengthModel(np.zeros((3, 2)), np.zeros(2), np.ones(2)))


def test_observed_output_tokens_are_implied_by_real_costs():
    from routoo_fast.data.table import OutcomeTable

    prompts = ["p one", "p two", "p three"]
    cm = _cost_model()
    tok = cm.input_tokens(prompts).astype(np.float64)
    true_out = np.array([[10.0, 20, 30, 40], [50, 60, 70, 80], [5, 5, 5, 5]])
    cost = tok[:, None] * cm.input_price + true_out * cm.output_price
    table = OutcomeTable(prompts, list(MODELS), np.ones((3, 4), dtype=np.float32), cost=cost)
    np.testing.assert_allclose(cm.observed_output_tokens(table), true_out, rtol=1e-9)


# ------------------------------------------------------------------------------- the router, end to end
def _length_model(seed=0):
    """Lengths that differ clearly between prompts: a random direction of the MiniLM encoding."""
    pred = small_predictor()
    rng = np.random.default_rng(seed)
    return OutputLengthModel(rng.normal(size=(pred.head.d_in, len(MODELS))) * 2.0,
                             np.log1p(np.array([300.0, 250, 400, 200])), np.ones(len(MODELS)))


PROMPTS = ["What is 2 + 2?", "Write a Python function that parses a CSV file and sums a column.",
           "Translate 'good morning' to French.", "Prove that there are infinitely many primes."]


def _router(length):
    from routoo_fast.router import Router

    return Router(small_predictor(), _cost_model(length))


def test_router_prices_each_prompt_with_its_predicted_output_length():
    length = _length_model()
    router = _router(length)
    pooled = small_predictor().encoder.encode(PROMPTS)
    want_C = router.cost_model.costs(PROMPTS, output_tokens=length.predict(pooled))
    Q, C = router.estimate(PROMPTS)
    np.testing.assert_allclose(Q, small_predictor().predict(PROMPTS), atol=1e-6)
    np.testing.assert_allclose(C, want_C, rtol=1e-5)  # lengths travel as float32 next to Q
    assert not np.allclose(C, router.cost_model.costs(PROMPTS))  # not the per-model means
    np.testing.assert_allclose(router.costs(PROMPTS), C)
    for policy in ("max_quality", "lambda=2000", "max_cost=0.001", "budget=0.002"):
        decisions = router.route(PROMPTS, policy)
        assert [d.to_dict() for d in decisions] == [d.to_dict() for d in router.decide(PROMPTS, Q, policy, C)]
        for i, d in enumerate(decisions):
            assert d.expected_cost == pytest.approx(C[i, MODELS.index(d.model)])
    # the exact-repeat cache carries the lengths too
    router.enable_q_cache(1 << 20)
    for _ in range(2):
        Qc, Cc = router.estimate(PROMPTS)
        np.testing.assert_array_equal(Qc, Q)
        np.testing.assert_array_equal(Cc, C)
    assert router.predict(PROMPTS).shape == (len(PROMPTS), len(MODELS))


def test_aroute_with_batching_and_a_length_model():
    router = _router(_length_model(1))
    want = [d.to_dict() for d in router.route(PROMPTS, "lambda=2000")]

    async def main():
        router.enable_batching(max_wait=0.001)
        try:
            got = await asyncio.gather(*(router.aroute([p], "lambda=2000") for p in PROMPTS))
            Q, C = await router.aestimate(PROMPTS)
            return [d.to_dict() for g in got for d in g], Q, C
        finally:
            router.disable_batching()

    got, Q, C = asyncio.run(main())
    assert [g["model"] for g in got] == [w["model"] for w in want]
    np.testing.assert_allclose([g["expected_cost"] for g in got], [w["expected_cost"] for w in want], rtol=1e-6)
    assert Q.shape == C.shape == (len(PROMPTS), len(MODELS))


def test_saved_router_round_trips_its_length_model(tmp_path):
    from routoo_fast.router import Router
    from routoo_fast.saved import LENGTH_FILE, load_router, save_router

    length = _length_model(2)
    pred = small_predictor()
    save_router(tmp_path / "r", pred.head, list(MODELS), pred.encoder.spec(), _cost_model(length))
    saved = load_router(tmp_path / "r")
    np.testing.assert_array_equal(saved.output_length.weight, length.weight)
    assert saved.cost_model.output_length is saved.output_length
    loaded = Router.from_pretrained(tmp_path / "r")
    np.testing.assert_allclose(loaded.estimate(PROMPTS)[1], _router(length).estimate(PROMPTS)[1], rtol=1e-5)
    # a broken length file is named
    from safetensors.numpy import save_file

    save_file({"weight": np.zeros((3, 4)), "bias": np.zeros(4), "scale": np.ones(4)}, str(tmp_path / "r" / LENGTH_FILE))
    with pytest.raises(ValueError, match="output_length.safetensors: tensor weight has shape"):
        load_router(tmp_path / "r")
    (tmp_path / "r" / LENGTH_FILE).unlink()
    with pytest.raises(FileNotFoundError, match="output_length.safetensors"):
        load_router(tmp_path / "r")


def test_decide_names_a_wrong_cost_shape():
    router = _router(_length_model())
    Q, C = router.estimate(PROMPTS)
    with pytest.raises(ValueError, match=r"C must have shape \(4, 4\)"):
        router.decide(PROMPTS, Q, "max_quality", C[:, :2])
