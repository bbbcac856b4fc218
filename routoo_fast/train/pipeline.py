"""End to end: an outcome table in, a saved router directory out (what `routoo-fast train` runs)."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from routoo_fast.train.finetune import finetune_encoder as finetune
from routoo_fast.train.finetune import save_encoder
from routoo_fast.train.fit import TrainConfig, TrainHistory, train_head

__all__ = ["TrainedRouter", "train_router", "train_and_save"]


@dataclass
class TrainedRouter:
    """What `train_router` returns: the head, what it was trained on, and the held-out report vs kNN."""

    head: object  # ScoringHead taking raw pooled encodings
    model_names: list[str]
    encoder_spec: dict
    config: TrainConfig
    history: TrainHistory
    split: np.ndarray  # [P] "train" / "val" / "test"
    report: object  # metrics.PredictionReport of the head on the test split (None if the split is empty)
    knn_report: object  # the same for the kNN baseline fitted on train + val
    knn_k: int
    expected_output_tokens: np.ndarray  # [N] mean observed output tokens per model (NaN where unknown)
    finetune_history: TrainHistory | None = None  # set when the encoder was fine-tuned

    def summary(self) -> str:
        if self.report is None:
            return "no test split: nothing held out to report"
        return (f"held-out mean AUC {self.report.mean_auc:.4f} (kNN k={self.knn_k}: {self.knn_report.mean_auc:.4f}), "
                f"Brier {self.report.mean_brier:.4f} ({self.knn_report.mean_brier:.4f}), "
                f"ECE {self.report.mean_ece:.4f} ({self.knn_report.mean_ece:.4f})")

    def save(self, path, prices=None, expected_output_tokens=None, metadata: dict | None = None):
        """Save as a router directory (`saved.save_router`); prices default to the shipped price table and
        expected output tokens to the training data's means."""
        from routoo_fast.costs import PriceTable
        from routoo_fast.saved import save_router

        prices = PriceTable.load() if prices is None else prices
        eo = self.expected_output_tokens if expected_output_tokens is None else expected_output_tokens
        if not isinstance(eo, dict):
            eo = np.asarray(eo, dtype=np.float64)
            if np.isnan(eo).any():
                missing = [m for m, v in zip(self.model_names, eo) if np.isnan(v)]
                raise ValueError(f"no observed output length for models {missing}: pass expected_output_tokens")
        meta = {"train_config": self.config.to_dict(), "best_epoch": self.history.best_epoch,
                "split_sizes": {s: int((self.split == s).sum()) for s in ("train", "val", "test")}}
        if self.report is not None:
            meta["held_out"] = {"head": self.report.to_dict()["mean"], "knn": self.knn_report.to_dict()["mean"],
                                "knn_k": self.knn_k}
        meta.update(metadata or {})
        return save_router(path, self.head, self.model_names, self.encoder_spec, prices, eo, meta)


def train_router(table, encoder=None, config: TrainConfig | None = None, cache_dir=None, split=None,
                 finetune_encoder: bool = False, finetune_epochs: int = 1, encoder_dir=None, knn_k: int | None = None,
                 progress: bool = True) -> TrainedRouter:
    """Encode `table.prompts` (cached), split by prompt hash, fit the head, and report test AUC/Brier/ECE vs kNN.

    table: OutcomeTable. encoder: an Encoder (default: the shipped MiniLM). split: [P] of "train"/"val"/"test"
    (default `split_by_hash(table.prompts)`). knn_k: the baseline's k (default: chosen on the val split).
    finetune_encoder: after fitting the head on frozen encodings, update the encoder too (`finetune_encoder`) for
    `finetune_epochs`; the tuned encoder is written to `encoder_dir` (required then) and the report uses it.
    """
    from routoo_fast.data.encoding_cache import encode_cached
    from routoo_fast.data.splits import split_by_hash
    from routoo_fast.train.knn import KNNPredictor, choose_knn_k
    from routoo_fast.train.metrics import evaluate_predictions

    config = config if config is not None else TrainConfig()
    if finetune_encoder and encoder_dir is None:
        raise ValueError("finetune_encoder=True needs encoder_dir: where to write the tuned encoder")
    if encoder is None:
        from routoo_fast.encoder import Encoder

        encoder = Encoder()
    split = split_by_hash(table.prompts) if split is None else np.asarray(split)
    if split.shape != (len(table.prompts),):
        raise ValueError(f"split must have one entry per prompt ({len(table.prompts)}), got shape {split.shape}")
    unknown = set(split.tolist()) - {"train", "val", "test"}
    if unknown:
        raise ValueError(f"split values must be 'train', 'val' or 'test', got {sorted(unknown)}")
    tr, va, te = (np.flatnonzero(split == s) for s in ("train", "val", "test"))
    x = encode_cached(encoder, table.prompts, cache_dir=cache_dir, progress=progress)
    tune_history = None
    head, history = train_head(x, table.scores, tr, va, config, progress=progress)
    if finetune_encoder:
        tune_history = finetune(encoder, head, table.prompts, table.scores, tr, va, config,
                                 epochs=finetune_epochs, progress=progress)
        encoder = save_encoder(encoder, encoder_dir)
        x = encode_cached(encoder, table.prompts, cache_dir=cache_dir, progress=progress)
    k = knn_k if knn_k is not None else choose_knn_k(x, table.scores, tr, va)
    report = knn_report = None
    if te.size:
        import torch

        with torch.no_grad():
            q = head.probs(torch.from_numpy(x[te])).numpy()
        report = evaluate_predictions(table.scores[te], q, table.models, name="head")
        fit = np.concatenate([tr, va])
        knn_q = KNNPredictor(k).fit(x[fit], table.scores[fit]).predict(x[te])
        knn_report = evaluate_predictions(table.scores[te], knn_q, table.models, name=f"kNN k={k}")
    from routoo_fast.costs import expected_output_tokens

    return TrainedRouter(head=head, model_names=list(table.models), encoder_spec=encoder.spec(), config=config,
                         history=history, split=split, report=report, knn_report=knn_report, knn_k=int(k),
                         expected_output_tokens=expected_output_tokens(table), finetune_history=tune_history)


def train_and_save(output, data="default", epochs: int | None = None, seed: int = 0, cache_dir=None,
                   progress: bool = True) -> TrainedRouter:
    """The `routoo-fast train` entry point: load outcomes ('default' = bundled MMLU-Pro part, else a long-format
    file), train with the default recipe (optionally other `epochs`/`seed`), save the router to `output`."""
    from routoo_fast.data import load_default, load_long

    table = load_default() if data in (None, "default") else load_long(data)
    cfg = TrainConfig(seed=seed) if epochs is None else TrainConfig(seed=seed, epochs=epochs)
    trained = train_router(table, config=cfg, cache_dir=cache_dir, progress=progress)
    trained.save(output, metadata={"data": str(data)})
    if progress:
        print(trained.summary())
    return trained
