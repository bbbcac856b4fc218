"""routoo_fast.train.recipe: soft targets, folding an ensemble and a logit shrinkage into one ScoringHead."""
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from routoo_fast.train import recipe as rc
from routoo_fast.head import ScoringHead


def test_group_targets_by_hand():
    y = np.array([[1, 0], [0, 0], [1, 1], [np.nan, 1]], dtype=float)
    groups = np.array(["a", "a", "b", "b"])
    fit = np.array([0, 1, 2, 3])
    t = rc.group_targets(y, groups, fit, beta=0.5, k=2.0)
    prior = rc.model_priors(y, fit)  # [2/3, 0.5]
    np.testing.assert_allclose(prior, [2 / 3, 0.5])
    T_a = (np.array([1, 0]) + 2 * prior) / (2 + 2)
    T_b = (np.array([1, 2]) + 2 * prior) / (np.array([1, 2]) + 2)
    np.testing.assert_allclose(t[0], 0.5 * y[0] + 0.5 * T_a, rtol=1e-6)
    np.testing.assert_allclose(t[2], 0.5 * y[2] + 0.5 * T_b, rtol=1e-6)
    assert np.isnan(t[3, 0]) and not np.isnan(t[3, 1])


def test_group_targets_without_groups_smooth_toward_the_prior_and_ignore_unfitted_rows():
    y = np.array([[1.0], [0.0], [1.0]])
    t = rc.group_targets(y, None, [0, 1], beta=0.0, k=5)
    np.testing.assert_allclose(t[:, 0], 0.5)  # row 2 is not in fit_rows: the prior is 0.5
    with pytest.raises(ValueError, match="groups must have shape"):
        rc.group_targets(y, np.array(["a"]), [0], 0.5, 1)


def test_shrink_logits_moves_toward_prior_logit():
    torch.manual_seed(1)
    h = ScoringHead(4, 2, hidden=3)
    x = torch.randn(7, 4)
    with torch.no_grad():
        before = h(x).clone()
    prior = np.array([0.8, 0.3])
    rc.shrink_logits(h, prior, 0.7)
    want = 0.7 * before + 0.3 * torch.from_numpy(np.log(prior / (1 - prior))).float()
    with torch.no_grad():
        torch.testing.assert_close(h(x), want, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="prior must have shape"):
        rc.shrink_logits(h, [0.5], 0.7)


def _logits_after_interaction_shrink(z, prior, c):
    """The definition, per prompt: deviations from the prior logits, their mean kept, the rest scaled by c."""
    lp = np.log(prior / (1 - prior))
    d = z - lp
    mu = d.mean(1, keepdims=True)
    return lp + mu + c * (d - mu)


@pytest.mark.parametrize("c", [0.0, 0.4, 1.0])
def test_shrink_interactions_folds_the_per_prompt_formula_into_the_head(c):
    torch.manual_seed(2)
    h = ScoringHead(5, 4, hidden=3)
    with torch.no_grad():
        h.b.copy_(torch.randn(4))
    x = torch.randn(9, 5)
    prior = np.array([0.9, 0.6, 0.3, 0.5])
    with torch.no_grad():
        before = h(x).double().numpy()
    E0, b0 = h.E.detach().clone(), h.b.detach().clone()
    rc.shrink_interactions(h, prior, c)
    if c == 1.0:  # bit for bit the head as trained: a router retrained with c = 1 keeps its exact weights
        assert torch.equal(h.E, E0) and torch.equal(h.b, b0)
    with torch.no_grad():
        after = h(x).double().numpy()
    np.testing.assert_allclose(after, _logits_after_interaction_shrink(before, prior, c), atol=1e-5)
    lp = np.log(prior / (1 - prior))  # the prompt's difficulty (mean deviation) is kept whatever c is
    np.testing.assert_allclose((after - lp).mean(1), (before - lp).mean(1), atol=1e-5)
    if c == 0.0:  # nothing model-specific is left: every model sits at its prior plus the same offset
        np.testing.assert_allclose(np.ptp(after - lp, axis=1), 0.0, atol=1e-5)


def test_shrink_interactions_rejects_bad_arguments():
    h = ScoringHead(3, 2, hidden=2)
    with pytest.raises(ValueError, match="prior must have shape"):
        rc.shrink_interactions(h, [0.5], 0.5)
    with pytest.raises(ValueError, match="interaction shrink"):
        rc.shrink_interactions(h, [0.5, 0.5], 1.5)


@settings(max_examples=40, deadline=None)
@given(a=st.floats(0.05, 1.0), c=st.floats(0.0, 1.0), seed=st.integers(0, 2**16))
def test_shrunk_logits_equal_the_head_after_both_shrinkages(a, c, seed):
    """What fit_recipe scores each grid point with (shrunk_logits on the raw logits) is what the folded head gives."""
    torch.manual_seed(seed)
    h = ScoringHead(4, 3, hidden=2)
    with torch.no_grad():
        h.b.copy_(torch.randn(3))
    x = torch.randn(6, 4)
    prior = np.random.default_rng(seed).uniform(0.05, 0.95, 3)
    with torch.no_grad():
        z = h(x).double().numpy()
    want = rc.shrunk_logits(z, np.log(prior / (1 - prior)), a, c)
    rc.shrink_logits(h, prior, a)
    rc.shrink_interactions(h, prior, c)
    with torch.no_grad():
        np.testing.assert_allclose(h(x).double().numpy(), want, atol=1e-4)


def test_recipe_validation():
    with pytest.raises(ValueError, match="beta"):
        rc.Recipe(beta=1.5)
    with pytest.raises(ValueError, match="logit_shrink"):
        rc.Recipe(logit_shrink=0.0)
    with pytest.raises(ValueError, match="n_seeds"):
        rc.Recipe(n_seeds=0)
    with pytest.raises(ValueError, match="interaction_shrink"):
        rc.Recipe(interaction_shrink=-0.1)


def test_fit_recipe_head_learns_and_returns_a_plain_head():
    rng = np.random.default_rng(0)
    P, D, N = 300, 6, 3
    x = rng.normal(size=(P, D)).astype(np.float32) * 3 + 1  # raw features: standardisation must be folded in
    p = 1 / (1 + np.exp(-(x[:, :N] - 1)))
    y = (rng.random((P, N)) < p).astype(np.float32)
    r = rc.Recipe(hidden=8, n_seeds=2, epochs=60, patience=10, lr=3e-3)
    head = rc.fit_recipe_head(x, y, np.arange(200), np.arange(200, 250), groups=None, recipe=r)
    assert isinstance(head, ScoringHead) and head.hidden == 16
    with torch.no_grad():
        q = head.probs(torch.from_numpy(x[250:])).numpy()
    corr = [np.corrcoef(q[:, j], p[250:, j])[0, 1] for j in range(N)]
    assert min(corr) > 0.6, corr


def test_inner_folds_keep_identical_rows_together_and_depend_only_on_which_rows_are_equal():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 3)).astype(np.float32)
    x[30:] = x[:10]  # 10 repeated prompts
    rows = np.arange(40)
    f = rc.inner_folds(x, rows, 4)
    assert f.shape == (40,) and f.dtype == np.int64 and set(f.tolist()) == {0, 1, 2, 3}
    np.testing.assert_array_equal(f[30:], f[:10])
    groups_per_fold = np.bincount(f[:30], minlength=4)  # 30 distinct prompts dealt to 4 folds
    assert groups_per_fold.min() >= 7 and groups_per_fold.max() <= 8
    # other values, the same rows equal (another CPU's rounding): the same folds
    np.testing.assert_array_equal(rc.inner_folds(x * 1.001 + 0.25, rows, 4), f)
    # rows is a selection, one fold id per selected row: rows 35 and 5 hold the same prompt
    sel = rc.inner_folds(x, np.array([35, 5, 12]), 2)
    assert sel.shape == (3,) and sel[0] == sel[1]
    with pytest.raises(ValueError, match="k must be an integer >= 2"):
        rc.inner_folds(x, rows, 1)


def test_select_folds_for_cross_fits_small_data_only():
    assert rc.select_folds_for(rc.SELECT_FOLDS_BELOW - 1) == rc.SELECT_FOLDS >= 2
    assert rc.select_folds_for(rc.SELECT_FOLDS_BELOW) == 1


def _cross_fit_reference(x, y, tr, va, grid, recipe, k):
    """The knob choice written out: per grid point, the heads of every split early-stopped on the rows they
    predict, the out-of-fold logits shrunk with that split's priors, one log loss over all held-out entries."""
    from routoo_fast.train.fit import merge_heads, model_priors, train_head

    rows = np.concatenate([tr, va])
    if k == 1:
        splits = [(tr, va)]
    else:
        fold = rc.inner_folds(x, rows, k)
        splits = [(rows[fold != f], rows[fold == f]) for f in range(k)]
    losses, epochs, oof = {}, {}, {}
    for hidden in grid["hidden"]:
        r = rc.Recipe(**{**recipe.to_dict(), "hidden": hidden, "beta": 1.0})
        per_split = []
        for s_tr, s_va in splits:
            members = [train_head(x, y, s_tr, s_va, rc._config(r, s, 1), progress=False)
                       for s in range(max(grid["n_seeds"]))]
            per_split.append((s_tr, s_va, members))
        epochs[hidden] = [[h.best_epoch + 1 for _, h in m] for _, _, m in per_split]
        for n in grid["n_seeds"]:
            for a in grid["logit_shrink"]:
                for c in grid["interaction_shrink"]:
                    total, count, held = 0.0, 0, {}
                    for s_tr, s_va, members in per_split:
                        with torch.no_grad():
                            z = merge_heads([h for h, _ in members[:n]])(torch.from_numpy(x[s_va])).double().numpy()
                        p = rc.model_priors(y, s_tr)
                        zz = rc.shrunk_logits(z, np.log(p / (1 - p)), a, c)
                        seen = ~np.isnan(y[s_va])
                        total += float(np.sum(np.logaddexp(0, zz[seen]) - y[s_va][seen] * zz[seen]))
                        count += int(seen.sum())
                        held.update({int(i): zz[j] for j, i in enumerate(s_va)})
                    losses[(hidden, n, a, c)] = total / count
                    oof[(hidden, n, a, c)] = held
    return losses, epochs, oof


@pytest.mark.parametrize("k", [1, 3])
def test_cross_fitted_knob_choice_matches_the_written_out_reference(k):
    rng = np.random.default_rng(3)
    P, D, N = 150, 5, 3
    x = rng.normal(size=(P, D)).astype(np.float32)
    x[140:] = x[:10]  # repeats share an inner fold
    y = (rng.random((P, N)) < 1 / (1 + np.exp(-x[:, :N]))).astype(np.float32)
    y[rng.random((P, N)) < 0.05] = np.nan
    tr, va = np.arange(0, 120), np.arange(120, P)
    grid = {"hidden": (4, 8), "beta": (1.0,), "n_seeds": (1, 2), "logit_shrink": (0.7, 1.0),
            "interaction_shrink": (1.0, 0.5)}
    recipe = rc.Recipe(epochs=25, patience=4, lr=3e-3)

    class Count:
        n = 0

        def update(self, m):
            self.n += m
    bar = Count()
    fit = rc.fit_recipe(x, y, tr, va, grid=grid, recipe=recipe, select_folds=k, progress=bar)
    assert fit.select_folds == k and bar.n == rc.fit_count(grid, recipe, select_folds=k)
    losses, epochs, oof = _cross_fit_reference(x, y, tr, va, grid, recipe, k)
    got = {(g["hidden"], g["n_seeds"], g["logit_shrink"], g["interaction_shrink"]): g["val_loss"] for g in fit.grid}
    assert got.keys() == losses.keys()
    for key, loss in losses.items():
        assert got[key] == pytest.approx(loss, rel=1e-9), key
    best = min(losses, key=lambda key: (losses[key], list(losses).index(key)))
    r = fit.recipe
    assert (r.hidden, r.n_seeds, r.logit_shrink, r.interaction_shrink) == best
    assert fit.val_loss == pytest.approx(losses[best], rel=1e-9)
    want_epochs = [int(round(float(np.median([e[s] for e in epochs[r.hidden]])))) for s in range(r.n_seeds)]
    assert fit.epochs == want_epochs
    want_val = 1 / (1 + np.exp(-np.stack([oof[best][int(i)] for i in va])))
    np.testing.assert_allclose(fit.val_probs, want_val, rtol=1e-5, atol=1e-6)
    assert fit.refit_rows == P and ("cross-fitting" in fit.summary()) == (k > 1)


def test_fit_recipe_names_a_bad_select_folds():
    x = np.zeros((10, 2), np.float32)
    y = np.ones((10, 1), np.float32)
    for bad in (0, 2.5, "5"):
        with pytest.raises(ValueError, match="select_folds must be a positive integer"):
            rc.fit_recipe(x, y, np.arange(8), np.arange(8, 10), grid={}, select_folds=bad)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.integers(0, 12), min_size=2, max_size=60), st.integers(2, 6))
def test_inner_folds_deal_prompts_evenly_and_keep_repeats_together(labels, k):
    """Rows carrying the same label are the same prompt; every fold gets floor or ceil of (prompts / k) of them."""
    labels = np.array(labels)
    x = np.stack([np.full(3, v, dtype=np.float32) for v in labels])
    f = rc.inner_folds(x, np.arange(len(labels)), k)
    for v in np.unique(labels):
        assert len(set(f[labels == v].tolist())) == 1
    n_prompts = len(np.unique(labels))
    per_fold = np.bincount([f[labels == v][0] for v in np.unique(labels)], minlength=k)
    assert per_fold.min() >= n_prompts // k and per_fold.max() <= -(-n_prompts // k)


def test_cross_fitting_falls_back_to_the_val_split_with_too_few_distinct_prompts():
    rng = np.random.default_rng(4)
    x = np.repeat(rng.normal(size=(3, 4)).astype(np.float32), 10, axis=0)  # 3 distinct prompts, 30 rows
    y = (rng.random((30, 2)) < 0.5).astype(np.float32)
    class Count:
        n = 0

        def update(self, m):
            self.n += m
    bar = Count()
    recipe = rc.Recipe(hidden=4, n_seeds=1, epochs=5, patience=2)
    fit = rc.fit_recipe(x, y, np.arange(20), np.arange(20, 30), grid={}, select_folds=5, recipe=recipe, progress=bar)
    assert fit.select_folds == 1 and fit.val_probs.shape == (10, 2)
    assert bar.n == rc.fit_count({}, recipe, select_folds=5)  # the bar still ends at its total
