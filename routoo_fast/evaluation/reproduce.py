"""The reproduction: route real prompts among real LLMs and score the routing with those LLMs' real outcomes.

Datasets (held-out split = `split_by_hash(prompts)` == "test" unless the source has its own split):
- "mmlu_pro": the bundled original-MMLU part of MMLU-Pro (57 subjects, 29 models), whole pool and open-weight
  pool, scored with the SHIPPED default router (trained on the train split only, early-stopped on val), against
  kNN and matrix-factorisation routers fitted here on the same train + val prompts. Encodings are shipped.
- "routellm": RouteLLM's two-model MMLU (Mixtral-8x7B vs GPT-4-1106, contaminated prompts dropped): APGR, CPT.
- "routerbench": RouterBench subset (ARC-Challenge, MBPP, Winogrande) with its real per-call costs, RouterDC's
  train/test files. Evaluation only: never bundled.
- "zeroeval_gsm", "zeroeval_math", "zeroeval_crux": ZeroEval pools (40 to 48 models each).
For the non-bundled datasets a router is trained here with the shipped recipe (`routoo_fast.train.recipe`).

Costs: routers decide with `costs.CostModel` expected costs (input tokens x input price + the model's mean output
tokens on the training prompts x output price, prices from assets/prices.csv; calibrated to the real per-call costs
where the source has them); each decision is scored with the true cost of that call (`CostModel.true`): the
source's real USD where it has one (RouterBench), else the call's observed output tokens.
Prompts with a missing outcome for any model of the pool are left out of that pool's held-out set.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from routoo_fast.data.encoding_cache import features
from routoo_fast.evaluation.report import PoolReport, Report, evaluate_pool
from routoo_fast.train.recipe import GRID, fit_recipe

DATASETS = ("mmlu_pro", "routellm", "routerbench", "zeroeval_gsm", "zeroeval_math", "zeroeval_crux")
MAIN_JOB_DATASETS = ("mmlu_pro",)
MIN_COVERAGE = 0.95  # ZeroEval: a model with outcomes for fewer prompts leaves the pool (it still trains the head)
ROUTELLM_STRONG, ROUTELLM_WEAK = "gpt-4-1106-preview", "mistralai/Mixtral-8x7B-Instruct-v0.1"
# RouteLLM (arXiv 2406.18665, Table 6) reports for MMLU its best routers' cost saving against the RANDOM router at
# CPT(50%) and CPT(80%): 1.41x and 1.14x, i.e. CPT(50%) = 50% / 1.41 = 35.5% and CPT(80%) = 80% / 1.14 = 70.2% of
# calls to GPT-4 (the ratios reproduce its MT Bench line: 49.03% / 13.40% = 3.66x). Quoted from secondary summaries,
# not checked against the paper here. Their routers learn from Chatbot Arena preferences + MMLU validation labels,
# ours from 70% of the MMLU test prompts themselves.
ROUTELLM_PUBLISHED = {"saving_vs_random_at_cpt50": 1.41, "saving_vs_random_at_cpt80": 1.14}


# ------------------------------------------------------------------------------------------------------ pools
@dataclass
class Dataset:
    """One evaluation dataset: outcome table, its split, group labels for training, and the pools to report."""

    name: str
    table: object  # OutcomeTable
    split: np.ndarray  # [P] train / val / test
    groups: np.ndarray | None
    pools: dict  # pool name -> list of model names
    strong_weak: tuple[str, str] | None = None
    notes: tuple[str, ...] = ()
    default_output_tokens: float | None = None  # for models with no output lengths (None: costs.DEFAULT_OUTPUT_TOKENS)


def _idx(split, name) -> np.ndarray:
    return np.flatnonzero(np.asarray(split) == name)


def load_dataset(name: str, data_dir=None, prices=None) -> Dataset:
    """Load one of DATASETS (data_dir: the shared real-data folder, default `data.shared_data_dir()`)."""
    from routoo_fast import data as outcomes
    from routoo_fast.costs import PriceTable

    prices = PriceTable.load() if prices is None else prices
    if name == "mmlu_pro":
        t = outcomes.load_default()
        open_models = [m for m in t.models if prices.get(m).open_weights]
        return Dataset(name, t, outcomes.split_by_hash(t.prompts), t.meta["subject"],
                       {"MMLU-Pro ori_mmlu, whole pool": list(t.models),
                        "MMLU-Pro ori_mmlu, open-weight pool": open_models})
    if name not in DATASETS:
        raise ValueError(f"dataset must be one of {DATASETS}, got {name!r}")
    root = Path(data_dir) if data_dir is not None else outcomes.shared_data_dir()
    if root is None or not Path(root).is_dir():
        raise FileNotFoundError(f"dataset {name!r} needs the shared data folder (set ROUTOO_SHARED_DATA); got {root}")
    root = Path(root)
    if name == "routellm":
        t = outcomes.load_routellm_mmlu(root / "routellm" / "mmlu_responses",
                                        root / "routellm" / "mmlu_contaminated_prompts.jsonl")
        return Dataset(name, t, outcomes.split_by_hash(t.prompts), t.meta["subject"],
                       {"RouteLLM MMLU, Mixtral-8x7B vs GPT-4-1106": list(t.models)},
                       strong_weak=(ROUTELLM_STRONG, ROUTELLM_WEAK), default_output_tokens=1.0,
                       notes=("costs: 1 output token per call (the answer letter; the source has no lengths)",))
    if name == "routerbench":
        t = outcomes.load_routerbench(root / "routerdc" / "routerbench_zs")
        split = np.asarray(t.meta["split"]).astype(object)
        train = split == "train"
        # a validation slice for early stopping, carved from RouterDC's train files by prompt hash
        by_hash = outcomes.split_by_hash(t.prompts, (0.85, 0.15, 0.0))
        split[train & (by_hash == "val")] = "val"
        return Dataset(name, t, split.astype(str), t.meta["task"],
                       {"RouterBench (ARC-C, MBPP, Winogrande), real per-call costs": list(t.models)},
                       notes=("evaluation only: RouterBench data has no license and is never shipped",))
    task = {"zeroeval_gsm": "gsm", "zeroeval_math": "math-l5", "zeroeval_crux": "crux"}[name]
    t = outcomes.load_zeroeval(root / "zeroeval", task)
    missing = [m for m in t.models if m not in prices]
    t = t.select_models([m for m in t.models if m in prices])
    coverage = np.isfinite(t.scores).mean(0)
    sparse = [m for m, c in zip(t.models, coverage) if c < MIN_COVERAGE]
    models = [m for m, c in zip(t.models, coverage) if c >= MIN_COVERAGE]
    notes = ("o1 models' hidden reasoning tokens are billed but absent from the data: their cost is understated",)
    if missing:
        notes += (f"left out (no price): {missing}",)
    if sparse:
        notes += (f"left out of the pool (outcomes for < {MIN_COVERAGE:.0%} of prompts): {sparse}",)
    return Dataset(name, t, outcomes.split_by_hash(t.prompts), None, {f"ZeroEval {task}": models}, notes=notes)


def evaluate_dataset(ds: Dataset, x: np.ndarray, prices=None, head=None, cost_model=None,
                     recipe=None, grid=GRID, router_note: str | None = None,
                     progress: bool = False) -> list[PoolReport]:
    """Fit what is missing on train/val (the recipe unless `head` is given: `recipe.fit_recipe`, knobs chosen from
    `grid` on val or cross-fitted on train + val, refitted on train + val; kNN; MF), evaluate every pool on the held-out prompts with complete
    outcomes. router_note: how the report names where `head` came from.

    cost_model: the `costs.CostModel` routers decide with (a saved router's); default: built from the train + val
    rows with `prices` (`CostModel.from_table`, plus its per-prompt output-length model, `fit_output_length`), as
    `routoo-fast train` builds it. Expected
    costs use the prompts' encodings x where the cost model has a length model, as the Router does. Decisions are
    scored with `cost_model.true`: real costs.
    """
    import torch

    from routoo_fast.costs import CostModel
    from routoo_fast.evaluation.baselines import KNNRouter, MFRouter

    t = ds.table
    tr, va, te = _idx(ds.split, "train"), _idx(ds.split, "val"), _idx(ds.split, "test")
    if tr.size == 0 or te.size == 0:
        raise ValueError(f"dataset {ds.name!r} needs train and test prompts, got {tr.size} and {te.size}")
    if cost_model is None:
        cost_model = CostModel.from_table(t, prices, rows=np.concatenate([tr, va]),
                                          default_output_tokens=ds.default_output_tokens)
        cost_model = cost_model.fit_output_length(t, x, tr, va)
    elif list(cost_model.models) != list(t.models):
        raise ValueError(f"cost model prices {list(cost_model.models)}, the dataset has {list(t.models)}")
    if head is None:
        head = fit_recipe(x, t.scores, tr, va, groups=ds.groups, recipe=recipe, grid=grid).head
        router_note = ("trained here with the shipped recipe (knobs chosen on val, or by cross-fitting on train + val "
                       "below 4,000 prompts; refitted on train + val)")
    elif router_note is None:
        router_note = "the shipped default router"
    with torch.no_grad():
        q_router = head.probs(torch.from_numpy(x[te])).numpy()
    q_knn = KNNRouter().fit(x, t.scores, tr, va)
    q_knn_te = q_knn.predict(x[te])
    q_mf = MFRouter().fit(x, t.scores, tr, va).predict(x[te])
    sub = t.subset(te)
    C_pred = cost_model.expected(sub, features=x[te])
    C_true = cost_model.true(sub)
    reports = []
    for pool, models in ds.pools.items():
        cols = [t.model_index(m) for m in models]
        Y = sub.scores[:, cols].astype(np.float64)
        ok = np.isfinite(Y).all(1) & np.isfinite(C_true[:, cols]).all(1)
        notes = list(ds.notes) + [
            f"held-out prompts with every outcome: {int(ok.sum())} of {te.size}",
            f"routoo router: {router_note}; kNN k={q_knn.k} (chosen on val by AUC); MF dim {MFRouter().dim}, both fitted on train + val"]
        if va.size:
            notes.append(_val_calibrated_point(t, va, cols, head, x, cost_model, Y[ok], C_true[ok][:, cols],
                                               q_router[ok][:, cols], C_pred[ok][:, cols]))
        preds = {"routoo (this package)": q_router[ok][:, cols], f"kNN (k={q_knn.k})": q_knn_te[ok][:, cols],
                 "matrix factorisation": q_mf[ok][:, cols]}
        reports.append(evaluate_pool(pool, Y[ok], C_true[ok][:, cols], models, preds,
                                     C_pred=C_pred[ok][:, cols], strong_weak=ds.strong_weak, notes=notes))
    return reports


def _val_calibrated_point(t, va, cols, head, x, cost_model, Y, C_true, Q, C_pred) -> str:
    """A deployable operating point: the best model and lambda are chosen on the val split (lambda such that the
    mean expected cost equals the best model's there, `selector.calibrate_lambda`), then applied to the test rows."""
    import torch

    from routoo_fast.selector import calibrate_lambda, tradeoff

    v = t.subset(va)
    yv = v.scores[:, cols].astype(np.float64)
    ok = np.isfinite(yv).all(1)
    if ok.sum() == 0:
        return "val-calibrated point: no val prompt with every outcome"
    with torch.no_grad():
        qv = head.probs(torch.from_numpy(x[va][ok])).numpy()[:, cols].astype(np.float64)
    cv = cost_model.expected(v, features=x[va])[ok][:, cols]
    b = int(np.argmax(yv[ok].mean(0)))
    lam = calibrate_lambda(qv, cv, float(cv[:, b].mean()))
    choice = tradeoff(Q.astype(np.float64), C_pred, lam).choice
    rows = np.arange(len(choice))
    q, c = Y[rows, choice].mean(), C_true[rows, choice].mean()
    qb, cb = Y[:, b].mean(), C_true[:, b].mean()
    return (f"val-calibrated point (lambda set on val to spend the best-on-val model's cost): test quality {q:.3f} "
            f"vs {qb:.3f} ({(q - qb) * 100:+.1f} points) at {c / cb:.2f} of its cost")


def _saving_vs_random(level: float, cpt_share: float) -> float:
    """RouteLLM's cost saving against the random router at CPT(level): random needs `level` of the calls."""
    return level / cpt_share if cpt_share > 0 else math.inf


def targets_summary(pool: PoolReport) -> list[str]:
    """The issue's bars for one pool, met or not, with the numbers."""
    best = pool.best
    row = next(r for r in pool.rows() if r["router"] == pool.router)
    others = {r["router"]: r["aiq"] for r in pool.rows() if r["kind"] == "baseline"}
    frac = row["cost_fraction_to_match_best"]
    gain = row["quality_at_best_cost"] - best.quality[0]
    lines = [
        f"match {best.name} ({best.quality[0]:.3f}) at <= 1/3 of its cost: "
        + ("not reached at any cost" if math.isnan(frac) else f"needs {frac:.2f} of its cost")
        + (" -> MET" if frac <= 1 / 3 else " -> missed"),
        f"+3 points at its cost: {gain * 100:+.1f} points" + (" -> MET" if gain >= 0.03 else " -> missed"),
        f"AIQ {row['aiq']:.4f} vs " + ", ".join(f"{k} {v:.4f}" for k, v in others.items())
        + (" -> MET" if all(row["aiq"] > v for v in others.values()) else " -> missed"),
    ]
    if pool.strong_weak is not None and "cpt50" in row:
        pub = ROUTELLM_PUBLISHED
        lines.append(f"RouteLLM-style: APGR {row['apgr']:.3f}; CPT(50%) {row['cpt50']:.1%}, saving vs random "
                     f"{_saving_vs_random(0.5, row['cpt50']):.2f}x (RouteLLM published {pub['saving_vs_random_at_cpt50']}x); "
                     f"CPT(80%) {row['cpt80']:.1%}, saving {_saving_vs_random(0.8, row['cpt80']):.2f}x "
                     f"(published {pub['saving_vs_random_at_cpt80']}x)")
    return lines


def run_reproduction(out_dir, router="default", datasets: Sequence[str] | str = MAIN_JOB_DATASETS, data_dir=None,
                     cache_dir=None, progress: bool = False) -> Report:
    """Run the reproduction on `datasets` ("all" = DATASETS) and write report.md, results.json and one PNG per
    pool into `out_dir`. router: the saved router scored on MMLU-Pro ("default" = the shipped one)."""
    from routoo_fast.costs import PriceTable
    from routoo_fast.encoder import Encoder
    from routoo_fast.router import DEFAULT_ROUTER
    from routoo_fast.saved import load_router

    names = list(DATASETS) if datasets == "all" else [datasets] if isinstance(datasets, str) else list(datasets)
    unknown = [d for d in names if d not in DATASETS]
    if unknown or not names:
        raise ValueError(f"datasets must be 'all' or names from {DATASETS}, got {datasets!r}")
    saved = load_router(DEFAULT_ROUTER if router == "default" else Path(router))
    encoder = Encoder.from_spec(saved.config["encoder"])
    prices = PriceTable.load()
    pools: list[PoolReport] = []
    timings = []
    for name in names:
        t0 = time.perf_counter()
        ds = load_dataset(name, data_dir, prices)
        x = features(ds.table.prompts, encoder, cache_dir, progress)
        if name == "mmlu_pro":
            if list(saved.model_names) != list(ds.table.models):
                raise ValueError(f"router {router!r} scores {saved.model_names}, not the MMLU-Pro models")
            reps = evaluate_dataset(ds, x, head=saved.head, cost_model=saved.cost_model)
        else:
            reps = evaluate_dataset(ds, x, prices, progress=progress)
        pools += reps
        timings.append(f"{name}: {time.perf_counter() - t0:.0f} s")
    notes = ["quality = mean true score of the chosen models; cost = mean true USD per prompt",
             "every row decides with predicted Q and expected costs and is scored with true outcomes and costs",
             "timings: " + ", ".join(timings)]
    report = Report(pools, title="routoo_fast reproduction (held-out prompts, real outcomes)", notes=notes)
    for p in pools:
        p.notes += ["target: " + s for s in targets_summary(p)]
    report.write(out_dir)
    return report


def reproduce(router="default", out=None, datasets: Sequence[str] | str = MAIN_JOB_DATASETS, data_dir=None,
              cache_dir=None, progress: bool = False, echo: bool = True) -> Report:
    """CLI entry point (`routoo-fast eval` / `demo`): run the reproduction; echo: print the table and plot paths."""
    out_dir = Path(out) if out is not None else Path.cwd() / "routoo_eval"
    report = run_reproduction(out_dir, router=router, datasets=datasets, data_dir=data_dir, cache_dir=cache_dir,
                              progress=progress)
    if echo:
        print(report.to_markdown())
        for name, path in report.plot_paths.items():
            print(f"plot ({name}): {path}")
        print(f"report: {out_dir / 'report.md'}")
    return report
