"""The cross-validation protocol (routoo_fast.evaluation.cv): folds, metrics against the curve metrics, the paired
bootstrap, and a whole run on a synthetic dataset with a planted signal."""
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from routoo_fast.costs import ModelPrice, PriceTable
from routoo_fast.data.table import OutcomeTable
from routoo_fast.evaluation import cv
from routoo_fast.evaluation.curves import Curve
from routoo_fast.evaluation.metrics import aiq, cost_to_reach, quality_at_cost
from routoo_fast.evaluation.reproduce import Dataset


def test_folds_are_stable_balanced_and_keep_duplicates_together():
    prompts = [f"prompt number {i}" for i in range(2000)]
    f = cv.fold_of(prompts)
    assert f.dtype == np.int64 and f.min() == 0 and f.max() == cv.N_FOLDS - 1
    assert np.array_equal(f, cv.fold_of(list(prompts)))  # a pure function of the text
    counts = np.bincount(f, minlength=cv.N_FOLDS)
    assert counts.min() > 300 and counts.max() < 500  # 400 expected per fold
    dup = cv.fold_of(["same text", "other", "same text"])
    assert dup[0] == dup[2]


def test_fold_draws_are_independent_deals_of_the_same_prompts():
    prompts = [f"prompt number {i % 1500}" for i in range(2000)]  # 500 texts twice
    assert np.array_equal(cv.fold_of(prompts, draw=0), cv.fold_of(prompts))  # draw 0 is the protocol's deal
    f1, f2 = cv.fold_of(prompts, draw=1), cv.fold_of(prompts, draw=2)
    for f in (f1, f2):
        counts = np.bincount(f, minlength=cv.N_FOLDS)
        assert counts.min() > 300 and counts.max() < 500
        assert np.array_equal(f[:500], f[1500:])  # duplicates together in every draw
    # another deal: about 1 / N_FOLDS of the prompts land in the same fold as in draw 0
    assert 0.1 < np.mean(f1 == cv.fold_of(prompts)) < 0.3 and 0.1 < np.mean(f1 == f2) < 0.3
    for bad in (-1, 1.0, True, "1"):
        with pytest.raises(ValueError, match="draw must"):
            cv.fold_of(prompts, draw=bad)


def test_inner_split_partitions_the_rows_by_text():
    prompts = [f"q{i % 700}" for i in range(1400)]  # every text twice
    rows = np.arange(1400)
    tr, va = cv.inner_split(prompts, rows)
    assert np.array_equal(np.sort(np.concatenate([tr, va])), rows)
    assert 0.08 < va.size / rows.size < 0.18
    in_val = {prompts[i] for i in va}
    assert not any(prompts[i] in in_val for i in tr)  # duplicates on one side only


def test_fold_and_split_errors_name_the_argument():
    with pytest.raises(ValueError, match="n_folds"):
        cv.fold_of(["a", "b"], n_folds=1)
    with pytest.raises(TypeError, match="single str"):
        cv.fold_of("abc")
    with pytest.raises(ValueError, match="val_share"):
        cv.inner_split(["a"], [0], val_share=1.5)


@settings(max_examples=60, deadline=None)
@given(st.integers(0, 10_000))
def test_fold_metrics_equal_the_curve_metrics(seed):
    rng = np.random.default_rng(seed)
    L, N = int(rng.integers(1, 30)), int(rng.integers(2, 8))
    Cc, Yc = rng.uniform(0, 2, L), rng.uniform(0, 1, L)
    sc, sq = rng.uniform(0.1, 2, N), rng.uniform(0, 1, N)
    m = cv.fold_metrics(Yc, Cc, sq, sc)
    curve = Curve("r", Cc, Yc)
    best = max(range(N), key=lambda j: (sq[j], -sc[j]))
    assert m["aiq"] == pytest.approx(aiq(curve, sc.min(), sc.max()), abs=1e-9)
    q = quality_at_cost(curve, sc[best])
    assert (math.isnan(m["gain"]) and math.isnan(q)) or m["gain"] == pytest.approx(q - sq[best], abs=1e-12)
    c = cost_to_reach(curve, sq[best])
    assert (math.isnan(m["match"]) and math.isnan(c)) or m["match"] == pytest.approx(c / sc[best], rel=1e-12)


def _pool_fold(rng, P=300, N=4, informative=True):
    Y = (rng.uniform(size=(P, N)) < np.linspace(0.3, 0.8, N)).astype(np.float64)
    C = np.tile(np.linspace(1.0, 4.0, N), (P, 1))
    noise = rng.uniform(size=(P, N))
    return cv.PoolFold(Y, C, C, {"oracle": 0.5 * Y + 0.25 + 0.01 * noise, "noise": noise,
                                 "noise copy": noise.copy()})


def test_bootstrap_of_a_predictor_against_itself_is_zero_and_an_oracle_wins():
    rng = np.random.default_rng(0)
    folds = [_pool_fold(rng) for _ in range(3)]
    same = cv.bootstrap_differences(folds, "noise", "noise copy", n_boot=100)
    assert all(v == (0.0, 0.0, 0.0) for v in same.values())
    better = cv.bootstrap_differences(folds, "oracle", "noise", n_boot=100)
    mean, lo, hi = better["aiq"]
    assert 0 < lo <= mean <= hi
    assert better["gain"][1] > 0


def _redealt(folds, draw, seed):
    """The prompts of `folds` (with rows) dealt into new folds, as another draw would: the same prompts and
    per-prompt decisions, grouped differently."""
    rows = np.concatenate([pf.rows for pf in folds])
    at = {int(r): (i, k) for i, pf in enumerate(folds) for k, r in enumerate(pf.rows)}
    deal = np.random.default_rng(seed).permutation(rows.size) % len(folds)
    out = []
    for f in range(len(folds)):
        mine = rows[deal == f]
        take = [at[int(r)] for r in mine]
        def pick(get):
            return np.stack([get(folds[i])[k] for i, k in take])
        out.append(cv.PoolFold(pick(lambda pf: pf.Y), pick(lambda pf: pf.C_true), pick(lambda pf: pf.C_pred),
                               {n: pick(lambda pf, n=n: pf.Q[n]) for n in folds[0].Q}, rows=mine, draw=draw))
    return out


def _with_rows(folds):
    start = 0
    for pf in folds:
        pf.rows = np.arange(start, start + pf.Y.shape[0])
        start += pf.Y.shape[0]
    return folds


def test_repeated_draws_share_each_prompts_resampled_count():
    rng = np.random.default_rng(1)
    folds = _with_rows([_pool_fold(rng, P=120) for _ in range(3)])
    one = cv.bootstrap_differences(folds, "oracle", "noise", n_boot=200, seed=3)
    assert one == cv.bootstrap_differences([cv.PoolFold(pf.Y, pf.C_true, pf.C_pred, pf.Q) for pf in folds],
                                           "oracle", "noise", n_boot=200, seed=3)  # rows change nothing alone
    # a second draw identical to the first: every resample weighs each prompt the same in both, so nothing moves
    copy = [cv.PoolFold(pf.Y, pf.C_true, pf.C_pred, pf.Q, rows=pf.rows, draw=1) for pf in folds]
    twice = cv.bootstrap_differences(folds + copy, "oracle", "noise", n_boot=200, seed=3)
    assert all(np.allclose(twice[m], one[m], rtol=0, atol=1e-12) for m in one)
    # the weights of a later draw: each of its prompts' count in draw 0's resample, renormalised (written out)
    other = _redealt(folds, 1, seed=5)
    W = cv._resample_weights(folds + other, 50, np.random.default_rng(7))
    ref = np.random.default_rng(7)
    count = {}
    for pf in folds:
        k = ref.multinomial(pf.Y.shape[0], np.full(pf.Y.shape[0], 1 / pf.Y.shape[0]), size=50)
        for c, r in enumerate(pf.rows):
            count[int(r)] = k[:, c]
    for pf, w in zip(folds + other, W):
        k = np.stack([count[int(r)] for r in pf.rows], axis=1).astype(np.float64)
        assert np.allclose(w, k / k.sum(1, keepdims=True), rtol=0, atol=1e-15)
    # the same decisions dealt into other folds: the oracle still wins, its interval above 0
    both = cv.bootstrap_differences(folds + other, "oracle", "noise", n_boot=200, seed=3)
    assert both["aiq"][1] > 0


def test_repeated_draws_need_the_same_prompts_with_rows():
    rng = np.random.default_rng(2)
    folds = _with_rows([_pool_fold(rng, P=50) for _ in range(2)])
    stray = cv.PoolFold(folds[0].Y, folds[0].C_true, folds[0].C_pred, folds[0].Q, rows=folds[0].rows + 1000, draw=1)
    with pytest.raises(ValueError, match="same prompts"):
        cv.bootstrap_differences(folds + [stray], "oracle", "noise", n_boot=10)
    bare = cv.PoolFold(folds[0].Y, folds[0].C_true, folds[0].C_pred, folds[0].Q, draw=1)
    with pytest.raises(ValueError, match="rows"):
        cv.bootstrap_differences(folds + [bare], "oracle", "noise", n_boot=10)


def _synthetic_dataset(P=600, N=3, seed=0):
    """Two kinds of prompts (their encodings differ); model j is right on kind j % 2 with high probability."""
    rng = np.random.default_rng(seed)
    kind = rng.integers(0, 2, P)
    x = rng.normal(size=(P, 16)).astype(np.float32)
    x[:, 0] += 4.0 * kind  # the signal
    p_right = np.where((np.arange(N)[None, :] % 2) == kind[:, None], 0.9, 0.2)
    scores = (rng.uniform(size=(P, N)) < p_right).astype(np.float32)
    models = [f"m{j}" for j in range(N)]
    table = OutcomeTable(prompts=[f"prompt {i} kind {kind[i]}" for i in range(P)], models=models, scores=scores,
                         output_tokens=np.full((P, N), 10.0, dtype=np.float32))
    prices = PriceTable({m: ModelPrice(1.0 + j, 2.0 + j) for j, m in enumerate(models)})
    ds = Dataset("synthetic", table, np.full(P, "train"), None, {"all models": models})
    return ds, x, prices


def test_cross_validate_dataset_scores_every_prompt_once_and_finds_the_signal(tmp_path):
    ds, x, prices = _synthetic_dataset()
    fits = {"kNN": cv.fit_knn, "MF": cv.fit_mf,
            "prior": lambda x_, s, tr, va, g, memo: (lambda xb: np.tile(np.nanmean(s[tr], 0), (len(xb), 1)))}
    result = cv.cross_validate_dataset(cv.CVResult(), ds, x, fits, prices=prices)
    folds = result.pools["all models"]
    assert len(folds) == cv.N_FOLDS
    assert sum(pf.Y.shape[0] for pf in folds) == ds.table.n_prompts  # each prompt is a test prompt exactly once
    result.summarise(n_boot=50)
    rows = result.table["all models"]
    # the planted signal: a kNN router beats the prompt-blind prior by far
    assert rows["kNN"]["aiq"] > rows["prior"]["aiq"] + 0.1
    assert rows["kNN"]["log_loss"] < rows["prior"]["log_loss"]
    assert "prior - kNN" in result.intervals["all models"] and "prior - MF" in result.intervals["all models"]
    assert result.verdicts()["all models"]["prior"] == {"aiq": False, "gain": False}
    md = result.write(tmp_path / "cv")
    text = md.read_text()
    assert "| kNN |" in text and "| prior |" in text
    assert (tmp_path / "cv" / "results.json").read_text().startswith("{")
    assert not list((tmp_path / "cv").glob(".*.tmp"))


def test_cross_validate_dataset_over_draws_scores_every_prompt_once_per_draw(tmp_path):
    ds, x, prices = _synthetic_dataset(P=300)
    fits = {"kNN": cv.fit_knn,
            "prior": lambda x_, s, tr, va, g, memo: (lambda xb: np.tile(np.nanmean(s[tr], 0), (len(xb), 1)))}
    result = cv.cross_validate_dataset(cv.CVResult(), ds, x, fits, prices=prices, draws=2)
    folds = result.pools["all models"]
    assert [pf.draw for pf in folds] == [0] * cv.N_FOLDS + [1] * cv.N_FOLDS
    for d in (0, 1):
        rows = np.concatenate([pf.rows for pf in folds if pf.draw == d])
        assert np.array_equal(np.sort(rows), np.arange(ds.table.n_prompts))
        assert np.array_equal(np.concatenate([pf.rows for pf in folds if pf.draw == d and pf.rows.size]),
                              np.concatenate([np.flatnonzero(cv.fold_of(ds.table.prompts, draw=d) == f)
                                              for f in range(cv.N_FOLDS)]))
    # draw 0 is exactly the single-draw run
    single = cv.cross_validate_dataset(cv.CVResult(), ds, x, fits, prices=prices)
    for a, b in zip(single.pools["all models"], folds[:cv.N_FOLDS]):
        assert np.array_equal(a.rows, b.rows) and all(np.array_equal(a.picks[n], b.picks[n]) for n in fits)
    result.summarise(n_boot=20)
    row = result.table["all models"]["kNN"]
    assert len(row["per_fold"]) == 2 * cv.N_FOLDS and len(row["per_draw"]) == 2
    assert row["aiq"] == pytest.approx(np.mean([d["aiq"] for d in row["per_draw"]]))
    assert "5 folds x 2 draws" in result.to_markdown()
    assert "[draw 1] k " in result.to_markdown()
    three = cv.cross_validate_dataset(cv.CVResult(), ds, x, {"kNN": cv.fit_knn}, n_folds=3, prices=prices)
    three.summarise(n_boot=20)
    assert three.to_markdown().startswith("# routoo_fast cross-validation (3 folds, ")
    with pytest.raises(ValueError, match="draws must"):
        cv.cross_validate_dataset(cv.CVResult(), ds, x, fits, prices=prices, draws=0)


def test_cross_validate_rejects_bad_arguments():
    ds, x, prices = _synthetic_dataset(P=60)
    with pytest.raises(ValueError, match="x must be"):
        cv.cross_validate_dataset(cv.CVResult(), ds, x[:10], {"kNN": cv.fit_knn}, prices=prices)
    with pytest.raises(ValueError, match="datasets"):
        cv.cross_validate("no-such-pool")
    with pytest.raises(ValueError, match="unknown predictors"):
        cv.cross_validate("mmlu_pro", predictors=("oracle",))


def test_cli_cv_rejects_bad_flags_before_any_work(capsys):
    from routoo_fast.cli import main

    assert main(["cv", "--datasets", "nope"]) != 0
    assert "--datasets" in capsys.readouterr().err
    assert main(["cv", "--predictors", "routoo,oracle"]) != 0
    assert "--predictors" in capsys.readouterr().err
    assert main(["cv", "--folds", "1"]) != 0
    assert "--folds" in capsys.readouterr().err
    assert main(["cv", "--draws", "0"]) != 0
    assert "--draws" in capsys.readouterr().err


def test_recipe_fit_returns_the_chosen_recipes_val_probabilities():
    from routoo_fast.train.recipe import fit_recipe

    ds, x, _ = _synthetic_dataset(P=200)
    tr, va = np.arange(0, 160), np.arange(160, 200)
    import torch

    for grid in ({"logit_shrink": (0.5, 1.0), "interaction_shrink": (1.0, 0.5)},
                 {"logit_shrink": (0.7,), "interaction_shrink": (0.3,)}):  # the second forces both shrinkages
        fit = fit_recipe(x, ds.table.scores, tr, va, grid=grid, refit=False)
        assert fit.val_probs.shape == (40, 3)
        assert len(fit.grid) == len(grid["logit_shrink"]) * len(grid["interaction_shrink"])
        with torch.no_grad():  # without a refit the returned head is the one the val probabilities came from
            q = fit.head.probs(torch.from_numpy(x[va])).numpy()
        np.testing.assert_allclose(fit.val_probs, q, atol=1e-5)
    assert (fit.recipe.logit_shrink, fit.recipe.interaction_shrink) == (0.7, 0.3)
    assert not fit.refit and fit.refit_rows == 160
    assert "trained on 160 train prompts" in fit.summary() and "refitted" not in fit.summary()


def test_simplex_weights_pick_the_informative_part_and_platt_undoes_a_distortion():
    rng = np.random.default_rng(1)
    y = (rng.uniform(size=(400, 2)) < 0.7).astype(np.float64)
    good = np.where(y == 1, 0.8, 0.3)
    noise = rng.uniform(size=y.shape)
    w = cv.simplex_weights([noise, good], y)
    assert w.sum() == pytest.approx(1.0) and w[1] >= 0.9
    p = np.clip(0.5 + 0.4 * (2 * y - 1) * rng.uniform(0.5, 1, y.shape), 0.01, 0.99)
    squashed = 1 / (1 + np.exp(-0.3 * np.log(p / (1 - p))))  # overconfident made underconfident
    a, c = cv.platt_scaling(squashed, y)
    assert (a > 2).all()  # the fitted slope undoes the 0.3 squash (toward 1 / 0.3)


def test_knnfeat_feeds_the_head_leave_one_out_rates():
    """fit_knnfeat's head sees [x, kNN rates]: on a pool whose outcomes follow the neighbourhood it predicts at
    least as well as the prompt-blind prior, its Q is [B, N] in (0, 1), and it reuses the fold's kNN fit."""
    ds, x, prices = _synthetic_dataset(P=200)
    t = ds.table
    rows = np.arange(t.n_prompts)
    tr, va, te = rows[:140], rows[140:170], rows[170:]
    memo: dict = {}
    predict = cv.fit_knnfeat(x, t.scores, tr, va, None, memo)
    assert "knn" in memo
    Q = predict(x[te])
    assert Q.shape == (te.size, t.scores.shape[1]) and np.all((Q > 0) & (Q < 1))
    prior = np.tile(np.nanmean(t.scores[tr], 0), (te.size, 1))
    assert cv._log_loss(Q, t.scores[te]) < cv._log_loss(prior, t.scores[te])


def test_cross_validate_on_your_own_encoder(tmp_path, capsys):
    """`encoder=` (CLI `--encoder DIR`): every predictor reads that encoder's encodings, named in the report's
    notes; a missing folder is an error naming it before any work."""
    from tiny_encoder import TINY_HIDDEN, make_tiny_encoder

    from routoo_fast.cli import main
    from routoo_fast.data import shared_data_dir

    assert main(["cv", "--datasets", "zeroeval_math", "--encoder", str(tmp_path / "no_such_dir"), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "no_such_dir" in err and "is not a folder" in err and "Traceback" not in err
    if shared_data_dir() is None:
        pytest.skip("the shared real-data folder is not available")
    folder = make_tiny_encoder(tmp_path / "my_encoder")
    result = cv.cross_validate("zeroeval_math", ("kNN",), cache_dir=tmp_path / "cache", n_boot=20, log=None,
                               encoder=folder)
    assert any(n.startswith("encodings: my_encoder@sha256:") for n in result.notes)
    from routoo_fast.data.encoding_cache import load_cache

    cached = load_cache(next(n for n in result.notes if n.startswith("encodings: "))[len("encodings: "):],
                        tmp_path / "cache")
    assert cached and all(v.shape == (TINY_HIDDEN,) for v in cached.values())
    (rows,) = result.table.values()
    assert math.isfinite(rows["kNN"]["aiq"]) and len(rows["kNN"]["per_fold"]) == cv.N_FOLDS
