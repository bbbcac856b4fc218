"""`routoo-fast eval --data FILE --router DIR`: the reproduction's report on a user's own outcomes.

The data file has the formats `routoo-fast train` reads (long format: prompt, model, score[, cost, input_tokens,
output_tokens]). Its prompts are split by the same prompt hash as training (the router's test fraction unless
given): the router and the baselines are scored on the test prompts only; kNN (k chosen on val) and matrix
factorisation are fitted on train + val. Every decision is scored with the true outcomes and the true cost of
the call (the data's `cost` column where given, else its output length at the router's prices).
A prompt text is scored once and only where unseen: test prompts the router was fitted on (it remembers hashes of
its train + val prompts) are left out, and so are train / val copies of a test prompt; the report says how many.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from routoo_fast.data.splits import DEFAULT_TEST_FRACTION, split_by_hash, split_counts, split_fractions, unseen_test_rows
from routoo_fast.evaluation.report import Report
from routoo_fast.evaluation.reproduce import Dataset, evaluate_dataset, targets_summary

__all__ = ["evaluate_data", "prepare_split"]


def prepare_split(prompts, test_fraction: float, fit_hashes=()) -> tuple[np.ndarray, list[str]]:
    """The evaluation split of `prompts` [P] -> (split [P] of train / val / test / "" (left out), notes).

    Hash split with `test_fraction`; then each exact text is scored once, on the unseen side (`unseen_test_rows`),
    and test prompts whose hash is in `fit_hashes` (what the router was fitted on: a list of `prompt_hashes` or
    their `join_hashes` string) are left out too.
    """
    from routoo_fast.train.pipeline import prompt_hashes, split_hashes

    split = split_by_hash(prompts, split_fractions(test_fraction)).astype(object)
    fit, test, overlap = unseen_test_rows(prompts, split)
    out = np.full(len(prompts), "", dtype=object)
    out[fit] = split[fit]
    seen = split_hashes(fit_hashes)
    hashes = prompt_hashes([prompts[i] for i in test])
    kept = np.array([i for i, h in zip(test, hashes) if h not in seen], dtype=np.int64)
    out[kept] = "test"
    notes = [f"split of {len(prompts)} prompts (test fraction {test_fraction:g}, by prompt hash): "
             + ", ".join(f"{k} {v}" for k, v in split_counts(out).items())]
    dropped_dups = int((split == "test").sum()) - len(test)
    if overlap or dropped_dups:
        notes.append(f"prompt texts in both fit and test: {overlap} (scored once, in test); repeated test texts "
                     f"scored once: {dropped_dups}")
    if len(test) - kept.size:
        notes.append(f"test prompts the router was trained on, left out: {len(test) - kept.size}")
    return out.astype(str), notes


def evaluate_data(data, router="default", out=None, test_fraction: float | None = None,
                  duplicates: str = "error", cache_dir=None, num_threads: int | None = None,
                  progress: bool = False) -> Report:
    """Evaluate a saved router on outcome data and write report.md, results.json and a plot into `out`."""
    from routoo_fast.data import load_outcomes
    from routoo_fast.data.encoding_cache import features
    from routoo_fast.encoder import Encoder
    from routoo_fast.router import DEFAULT_ROUTER
    from routoo_fast.saved import load_router

    saved = load_router(DEFAULT_ROUTER if router == "default" else Path(router))
    table = load_outcomes(data, duplicates=duplicates)
    missing = [m for m in saved.model_names if m not in table.models]
    if missing:
        raise ValueError(f"the data has no outcomes for the router's models {missing}; the router routes among "
                         f"{list(saved.model_names)}")
    table = table.select_models(saved.model_names)
    if test_fraction is None:
        test_fraction = float(saved.metadata.get("test_fraction", DEFAULT_TEST_FRACTION))
    if not 0 < test_fraction < 1:
        raise ValueError(f"the evaluation needs held-out prompts: test fraction must be in (0, 1), got {test_fraction}")
    split, notes = prepare_split(table.prompts, test_fraction, saved.metadata.get("fit_prompt_hashes", ()))
    n = split_counts(split)
    if n["test"] == 0 or n["train"] == 0:
        raise ValueError(f"the evaluation needs train and test prompts (kNN and MF learn from train + val); this "
                         f"split has {n['train']} train and {n['test']} unseen test prompts")
    cost_model = saved.cost_model
    if cost_model.equal_cost:
        notes.append("the router was trained with --equal-cost: every model costs the same, AIQ is not defined")
    encoder = Encoder.from_spec(saved.config["encoder"], **({} if num_threads is None else
                                                            {"num_threads": num_threads}))
    name = Path(str(data)).name if data not in (None, "default") else "bundled MMLU-Pro"
    ds = Dataset(name, table, split, None, {f"{name}, {len(saved.model_names)} models": list(saved.model_names)},
                 notes=tuple(notes))
    x = features(table.prompts, encoder, cache_dir=cache_dir, progress=progress)
    pools = evaluate_dataset(ds, x, head=saved.head, cost_model=cost_model, router_note="the router under test")
    for p in pools:
        p.notes += ["target: " + s for s in targets_summary(p)]
    report = Report(pools, title=f"routoo_fast evaluation of {router} on {name} (held-out prompts, real outcomes)",
                    notes=["quality = mean true score of the chosen models; cost = mean true USD per prompt",
                           "every row decides with predicted Q and expected costs and is scored with true outcomes "
                           "and costs"])
    report.write(Path(out) if out is not None else Path.cwd() / "routoo_eval")
    return report
