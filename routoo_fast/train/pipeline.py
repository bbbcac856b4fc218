"""End to end: an outcome table in, a saved router directory out (what `routoo-fast train` runs).

    table ─▶ split by prompt hash (train / val / test) ─▶ checks and the cost model (before any encoding)
          ─▶ pooled encodings (cached) ─▶ recipe.fit_recipe (knobs chosen on val, or by 5-fold cross-fitting
             on train + val below 4,000 prompts; refitted on train + val)
          ─▶ held-out report on test vs kNN ─▶ saved router (head + cost model + what was trained on)

Nothing is held back silently: val serves early stopping and the recipe's choices (small data: train + val serve
them together, by cross-fitting), then the head is refitted on train + val; only the test split (`test_fraction`,
default 0.2) is kept out, for the held-out report, and the summary says how many prompts went where.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np

from routoo_fast.data.splits import DEFAULT_TEST_FRACTION, SPLIT_NAMES, split_by_hash, split_counts, split_fractions
from routoo_fast.train.recipe import GRID, RecipeFit, check_select_folds, fit_count, fit_recipe, select_folds_for

__all__ = ["TrainedRouter", "train_router", "train_and_save", "check_trainable", "prompt_hashes", "join_hashes",
           "split_hashes", "GROUP_COLUMNS"]

GROUP_COLUMNS = ("subject", "group")  # meta columns used as training-only group labels (soft targets), first found


HASH_HEX = 12  # hex digits per prompt hash: 48 bits, a chance collision per prompt of ~1e-11 against 10k prompts


def prompt_hashes(prompts) -> list[str]:
    """12-hex-digit blake2b of each prompt's exact text: how a saved router remembers what it was fitted on
    (stored as one concatenated string, `join_hashes`, in its metadata["fit_prompt_hashes"])."""
    return [hashlib.blake2b(p.encode("utf-8"), digest_size=HASH_HEX // 2).hexdigest() for p in prompts]


def join_hashes(hashes) -> str:
    return "".join(sorted(hashes))


def split_hashes(text) -> set[str]:
    """The set of hashes in a `join_hashes` string (or a list of them)."""
    if isinstance(text, str):
        return {text[i:i + HASH_HEX] for i in range(0, len(text), HASH_HEX)}
    return set(text or ())


@dataclass
class TrainedRouter:
    """What `train_router` returns: the head, the cost model, what it was trained on, the held-out report."""

    head: object  # ScoringHead taking raw pooled encodings
    model_names: list[str]
    encoder_spec: dict
    recipe_fit: RecipeFit
    cost_model: object  # costs.CostModel
    split: np.ndarray  # [P] "train" / "val" / "test"
    report: object  # metrics.PredictionReport of the head on the test split (None if the split is empty)
    knn_report: object  # the same for the kNN baseline fitted on train + val
    knn_k: int
    fit_hashes: list = field(default_factory=list)  # prompt_hashes of the train + val prompts
    group_column: str | None = None
    finetune_history: object = None  # set when the encoder was fine-tuned
    test_fraction: float | None = None  # of the hash split (None: the caller gave the split)

    def summary(self) -> str:
        """What a person wants to know after training: where the prompts went, the recipe, costs, held-out."""
        n = split_counts(self.split)
        total = sum(n.values())
        k = self.recipe_fit.select_folds
        val_use = ("early stopping and the recipe's choices" if k < 2 else
                   f"the recipe's choices by {k}-fold cross-fitting on train + val")
        lines = [f"{total} prompts x {len(self.model_names)} models: {n['train']} train, {n['val']} val "
                 f"({val_use}), {n['test']} test (held out for the report below, never "
                 f"trained on); the head was refitted on train + val ({n['train'] + n['val']} prompts)",
                 self.recipe_fit.summary()]
        if self.encoder_spec.get("path") is not None:  # not the shipped encoder: say which weights the head needs
            lines.append(f"encoder: {self.encoder_spec['path']} ({self.encoder_spec['encoder_id']})")
        if self.group_column:
            lines.append(f"soft targets grouped by the {self.group_column!r} column (training only)")
        cm = self.cost_model
        if cm.equal_cost:
            lines.append("costs: --equal-cost, every model priced alike: routing maximises predicted quality only")
        else:
            by_source: dict[str, list[str]] = {}
            for m in cm.models:
                by_source.setdefault(cm.output_tokens_source.get(m, "given"), []).append(m)
            lines.append("expected output tokens: " + "; ".join(
                f"{src} for {len(ms)} model{'s' * (len(ms) > 1)}" + (f" {ms}" if len(ms) <= 4 else "")
                for src, ms in by_source.items()))
            if cm.output_length is not None:
                ol = cm.output_length
                lines.append(f"per-prompt output lengths: ridge on the encoding (alpha {ol.alpha:g} chosen on val, "
                             f"val RMSE {ol.val_rmse_log:.3f} in log1p tokens; the router prices each prompt "
                             "with them)")
        if self.report is None:
            lines.append("no test split: nothing held out to report (evaluate on other data with routoo-fast eval)")
        else:
            lines.append(f"held-out mean AUC {self.report.mean_auc:.4f} (kNN k={self.knn_k}: "
                         f"{self.knn_report.mean_auc:.4f}), Brier {self.report.mean_brier:.4f} "
                         f"({self.knn_report.mean_brier:.4f}), ECE {self.report.mean_ece:.4f} "
                         f"({self.knn_report.mean_ece:.4f})")
        return "\n".join(lines)

    def save(self, path, metadata: dict | None = None):
        """Write the router directory (`saved.save_router`, atomic) with the cost model and what it was fitted on."""
        from routoo_fast.saved import save_router

        fit = self.recipe_fit
        meta = {"recipe": fit.recipe.to_dict(), "recipe_epochs": fit.epochs, "recipe_val_loss": fit.val_loss,
                "recipe_grid": fit.grid, "split_sizes": split_counts(self.split),
                "group_column": self.group_column, "fit_prompt_hashes": join_hashes(self.fit_hashes)}
        if self.test_fraction is not None:
            meta["test_fraction"] = self.test_fraction  # `eval --data` splits the same way by default
        if self.report is not None:
            meta["held_out"] = {"head": self.report.to_dict()["mean"], "knn": self.knn_report.to_dict()["mean"],
                                "knn_k": self.knn_k}
        meta.update(metadata or {})
        return save_router(path, self.head, self.model_names, self.encoder_spec, self.cost_model, None, meta)


def _make_split(table, split, test_fraction):
    if split is None:
        f = DEFAULT_TEST_FRACTION if test_fraction is None else test_fraction
        return split_by_hash(table.prompts, split_fractions(f))
    split = np.asarray(split)
    if split.shape != (table.n_prompts,):
        raise ValueError(f"split must have one entry per prompt ({table.n_prompts}), got shape {split.shape}")
    unknown = set(split.tolist()) - set(SPLIT_NAMES)
    if unknown:
        raise ValueError(f"split values must be 'train', 'val' or 'test', got {sorted(unknown)}")
    return split.astype(str)


def check_trainable(table, split) -> None:
    """Errors a person can act on, raised before any encoding: too few prompts, no validation prompts, a model
    with no outcome on the training prompts (naming the models)."""
    n = split_counts(split)
    if n["train"] == 0:
        raise ValueError(f"no training prompts ({table.n_prompts} prompts in all): give more data")
    if n["val"] == 0:
        raise ValueError(f"no validation prompts among {table.n_prompts}: the recipe early-stops and chooses its "
                         "knobs on them; give more prompts (about 10 % of the non-test prompts go to val)")
    tr = np.flatnonzero(np.asarray(split) == "train")
    seen = np.isfinite(table.scores[tr]).any(axis=0)
    if not seen.all():
        names = [m for m, s in zip(table.models, seen) if not s]
        raise ValueError(f"models {names} have no outcome on the training prompts ({n['train']} of "
                         f"{table.n_prompts}): add rows for them or leave them out of the file")


def _groups(table, group_column):
    if group_column is None:
        group_column = next((c for c in GROUP_COLUMNS if c in table.meta), None)
        if group_column is None:
            return None, None
    elif group_column not in table.meta:
        raise ValueError(f"group column {group_column!r} is not in the data (have {sorted(table.meta)})")
    return np.asarray(table.meta[group_column]).astype(str), group_column


def train_router(table, encoder=None, *, prices=None, equal_cost: bool = False, cost_model=None,
                 default_output_tokens: float | None = None, test_fraction: float | None = None, split=None,
                 group_column: str | None = None, recipe=None, grid=GRID, cache_dir=None,
                 finetune_encoder: bool = False, finetune_epochs: int = 1, encoder_dir=None,
                 knn_k: int | None = None, num_threads: int | None = None, progress: bool = True,
                 select_folds: int | None = None) -> TrainedRouter:
    """Train the shipped recipe on `table` (an OutcomeTable) and report it on held-out prompts.

    encoder: an Encoder (default: the shipped MiniLM). prices: a PriceTable (default: the shipped one) for the
    cost model (`costs.CostModel.from_table` on the train + val rows, plus its per-prompt output-length model,
    `CostModel.fit_output_length`, when the table has output lengths or real costs); equal_cost: quality-only
    routing; cost_model: a ready CostModel instead (used as given). test_fraction: held out by prompt hash (default 0.2; 0 = none);
    split: [P] of "train"/"val"/"test" instead. group_column: meta column of training-only group labels (default:
    the first of GROUP_COLUMNS present). recipe / grid / select_folds: see `recipe.fit_recipe` (select_folds None:
    5-fold cross-fitting below 4,000 train + val prompts, else the val split). finetune_encoder: after the head,
    update the encoder too for `finetune_epochs`, written to `encoder_dir` (required then). num_threads: torch CPU
    threads for the default encoder and the head fits (None: the encoder leaves torch's setting, heads use 1).
    Every check (split sizes, models without training outcomes, prices) runs before any encoding.
    """
    from routoo_fast.costs import CostModel
    from routoo_fast.data.encoding_cache import encode_cached, features

    check_select_folds(select_folds)
    split_given = split is not None
    split = _make_split(table, split, test_fraction)
    check_trainable(table, split)
    groups, group_column = _groups(table, group_column)
    if finetune_encoder and encoder_dir is None:
        raise ValueError("finetune_encoder=True needs encoder_dir: where to write the tuned encoder")
    tr, va, te = (np.flatnonzero(split == s) for s in SPLIT_NAMES)
    fit_rows = np.concatenate([tr, va])
    fit_lengths = cost_model is None
    if cost_model is None:
        cost_model = CostModel.from_table(table, prices, rows=fit_rows, equal_cost=equal_cost,
                                          default_output_tokens=default_output_tokens)
    elif list(cost_model.models) != list(table.models):
        raise ValueError(f"cost_model prices {list(cost_model.models)}, the table has {list(table.models)}")
    if encoder is None:
        from routoo_fast.encoder import Encoder

        encoder = Encoder(num_threads=num_threads)
    x = features(table.prompts, encoder, cache_dir=cache_dir, progress=progress)
    from tqdm.auto import tqdm

    k = select_folds_for(fit_rows.size) if select_folds is None else select_folds
    with tqdm(total=fit_count(grid, recipe, select_folds=k), desc="training", unit="head",
              disable=not progress) as bar:
        fit = fit_recipe(x, table.scores, tr, va, groups=groups, recipe=recipe, grid=grid,
                         num_threads=num_threads or 1, progress=bar, select_folds=k)
    head = fit.head
    tune_history = None
    if finetune_encoder:
        from routoo_fast.train.finetune import finetune_encoder as finetune
        from routoo_fast.train.finetune import save_encoder
        from routoo_fast.train.fit import TrainConfig

        cfg = TrainConfig(hidden=head.hidden, act=head.act, num_threads=num_threads or 1)
        tune_history = finetune(encoder, head, table.prompts, table.scores, tr, va, cfg, epochs=finetune_epochs,
                                progress=progress)
        encoder = save_encoder(encoder, encoder_dir)
        x = encode_cached(encoder, table.prompts, cache_dir=cache_dir, progress=progress)
    if fit_lengths:  # per-prompt output lengths from the encodings the router will compute (after any fine-tuning)
        cost_model = cost_model.fit_output_length(table, x, tr, va)
    report, knn_report, k = _held_out(table, x, head, tr, va, te, knn_k)
    return TrainedRouter(head=head, model_names=list(table.models), encoder_spec=encoder.spec(), recipe_fit=fit,
                         cost_model=cost_model, split=split, report=report, knn_report=knn_report, knn_k=k,
                         fit_hashes=prompt_hashes([table.prompts[i] for i in fit_rows]), group_column=group_column,
                         finetune_history=tune_history,
                         test_fraction=None if split_given else (DEFAULT_TEST_FRACTION if test_fraction is None
                                                                 else float(test_fraction)))


def _held_out(table, x, head, tr, va, te, knn_k):
    """AUC / Brier / ECE of the head and of kNN (k chosen on val, fitted on train + val) on the test rows."""
    from routoo_fast.train.knn import KNNPredictor, choose_knn_k
    from routoo_fast.train.metrics import evaluate_predictions

    k = knn_k if knn_k is not None else choose_knn_k(x, table.scores, tr, va)
    if te.size == 0:
        return None, None, int(k)
    import torch

    with torch.no_grad():
        q = head.probs(torch.from_numpy(x[te])).numpy()
    report = evaluate_predictions(table.scores[te], q, table.models, name="head")
    fit = np.concatenate([tr, va])
    knn_q = KNNPredictor(k).fit(x[fit], table.scores[fit]).predict(x[te])
    knn_report = evaluate_predictions(table.scores[te], knn_q, table.models, name=f"kNN k={k}")
    return report, knn_report, int(k)


def load_prices(path=None):
    """The shipped price table, overridden and extended by the user's prices file (same columns) if given."""
    from routoo_fast.costs import PriceTable

    shipped = PriceTable.load()
    if path is None:
        return shipped
    mine = PriceTable.load(path)
    return shipped.with_overrides({m: mine.get(m) for m in mine.models})


def train_and_save(output, data="default", prices_file=None, equal_cost: bool = False,
                   test_fraction: float = DEFAULT_TEST_FRACTION, output_tokens: float | None = None,
                   duplicates: str = "error", group_column: str | None = None, cache_dir=None,
                   num_threads: int | None = None, progress: bool = True, echo=print,
                   select_folds: int | None = None, encoder_path=None) -> TrainedRouter:
    """The `routoo-fast train` entry point: read outcomes ('default' = the bundled MMLU-Pro part, else a
    long-format file), check them and the prices, train the recipe, save the router to `output` (atomically),
    print the summary (echo=None: silent). encoder_path: a local Hugging Face encoder folder (None: the shipped
    all-MiniLM-L6-v2); the router records its absolute path and the sha256 of its weights."""
    from routoo_fast.data import load_outcomes

    table = load_outcomes(data, duplicates=duplicates)
    prices = None if equal_cost else load_prices(prices_file)
    encoder = None
    if encoder_path is not None:
        from routoo_fast.encoder import Encoder

        encoder = Encoder(path=encoder_path, num_threads=num_threads)
    trained = train_router(table, encoder, prices=prices, equal_cost=equal_cost, default_output_tokens=output_tokens,
                           test_fraction=test_fraction, group_column=group_column, cache_dir=cache_dir,
                           num_threads=num_threads, progress=progress, select_folds=select_folds)
    trained.save(output, metadata={"data": str(data),
                                   "prices_file": None if prices_file is None else str(prices_file)})
    if echo is not None:
        echo(trained.summary())
    return trained
