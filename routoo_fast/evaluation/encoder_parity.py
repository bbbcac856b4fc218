"""Parity gate of the encoder backends: does routing with an ONNX encoder decide what routing with the fp32 torch
encoder decides? Measured on the bundled MMLU-Pro data's held-out split (`split_by_hash` with the shipped router's
test fraction: the prompts the shipped router never saw), with the shipped router's head and cost model.

For each backend against the torch fp32 reference, on the held-out prompts (Q [P, N] predicted by each):
  mean |dQ|          mean over prompts and models of |Q_backend - Q_fp32|                          bar <= 0.005
  agreement          share of prompts routed to the same model under the default lambda policy: lambda
                     calibrated on the val split to spend the best-on-val model's mean cost (the reproduction's
                     deployable operating point, `selector.calibrate_lambda`), the same lambda for both; where
                     that lambda is 0 (the best model is the dearest: max_quality) also at the lambda spending
                     half of it, mid-curve; the smaller share counts                                     bar >= 0.98
  AUC delta          max over models of |AUC_backend - AUC_fp32| (ROC-AUC of Q against the real outcomes)   bar <= 0.003
  quality at best    |quality at the best model's cost| difference, in points: the trade-off curve over lambda
                     (`evaluation.curves.tradeoff_curve`, real outcomes and costs) read at the best single model's
                     mean cost (`metrics.quality_at_cost`)                                                bar <= 0.3
Run it with scripts/onnx_parity.py; tests/test_onnx_parity.py holds the bars.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np

__all__ = ["BARS", "ParityReport", "encoder_parity", "parity_report"]

BARS = {"mean_abs_dq": 0.005, "agreement": 0.98, "auc_delta": 0.003, "quality_delta_points": 0.3}


@dataclass
class ParityReport:
    backend: str
    prompts: int
    mean_abs_dq: float
    max_abs_dq: float
    agreement: float  # decisions under the default lambdas (the smaller share of the two)
    agreement_max_quality: float  # decisions under max_quality (argmax of Q), for information
    auc_delta: float  # max over models
    quality_delta_points: float  # |quality at the best model's cost| difference, points
    lams: tuple

    @property
    def passed(self) -> bool:
        return (self.mean_abs_dq <= BARS["mean_abs_dq"] and self.agreement >= BARS["agreement"]
                and self.auc_delta <= BARS["auc_delta"] and self.quality_delta_points <= BARS["quality_delta_points"])

    def to_dict(self) -> dict:
        return {**asdict(self), "passed": self.passed}

    def line(self) -> str:
        return (f"{self.backend:<10} prompts {self.prompts:>5}  mean|dQ| {self.mean_abs_dq:.5f} (max {self.max_abs_dq:.4f})"
                f"  same decision {100 * self.agreement:.2f}% (max_quality {100 * self.agreement_max_quality:.2f}%)"
                f"  AUC delta {self.auc_delta:.5f}  quality@best-cost delta {self.quality_delta_points:.3f} pt"
                f"  {'PASS' if self.passed else 'FAIL'}")


def parity_report(backend: str, Q_ref, Q, C_pred, Y, C_true, lams) -> ParityReport:
    """The figures for one backend from the reference and the backend's Q [P, N] on the same held-out prompts."""
    from routoo_fast.evaluation.curves import tradeoff_curve
    from routoo_fast.evaluation.metrics import quality_at_cost
    from routoo_fast.selector import max_quality, tradeoff
    from routoo_fast.train.metrics import roc_auc

    Q_ref = np.asarray(Q_ref, dtype=np.float64)
    Q = np.asarray(Q, dtype=np.float64)
    if Q.shape != Q_ref.shape:
        raise ValueError(f"Q has shape {Q.shape}, the reference {Q_ref.shape}")
    dq = np.abs(Q - Q_ref)
    same = min(np.mean(tradeoff(Q, C_pred, lam).choice == tradeoff(Q_ref, C_pred, lam).choice) for lam in lams)
    same_mq = np.mean(max_quality(Q, C_pred).choice == max_quality(Q_ref, C_pred).choice)
    aucs = [abs(roc_auc(Y[:, j], Q[:, j]) - roc_auc(Y[:, j], Q_ref[:, j])) for j in range(Y.shape[1])]
    aucs = [a for a in aucs if not math.isnan(a)]
    ok = np.isfinite(Y).all(1) & np.isfinite(C_true).all(1)
    best = int(np.argmax(Y[ok].mean(0)))
    c_best = float(C_true[ok, best].mean())
    q = [quality_at_cost(tradeoff_curve(name, q_, C_pred[ok], Y[ok], C_true[ok]), c_best)
         for name, q_ in (("fp32", Q_ref[ok]), (backend, Q[ok]))]
    return ParityReport(backend, int(Q.shape[0]), float(dq.mean()), float(dq.max()), float(same), float(same_mq),
                        float(max(aucs)) if aucs else math.nan, abs(q[1] - q[0]) * 100.0,
                        tuple(float(x) for x in lams))


def encoder_parity(backends=("onnx", "onnx-int8"), router="default", limit: int | None = None,
                   num_threads: int | None = None, seed: int = 0) -> tuple[list[ParityReport], dict]:
    """Parity reports of `backends` against the torch fp32 encoder on the bundled held-out split (all of it, or
    `limit` prompts drawn with `seed`), with the router's head and cost model. Returns (reports, context)."""
    from routoo_fast.data import load_default
    from routoo_fast.data.encoding_cache import load_shipped_encodings
    from routoo_fast.data.splits import DEFAULT_TEST_FRACTION, split_by_hash, split_fractions
    from routoo_fast.router import Router
    from routoo_fast.saved import load_router
    from routoo_fast.selector import calibrate_lambda

    reference = Router.from_pretrained(router, encoder_backend="torch", num_threads=num_threads, device="cpu")
    saved_dir = reference_dir(router)
    fraction = load_router(saved_dir).metadata.get("test_fraction", DEFAULT_TEST_FRACTION)
    table = load_default()
    split = split_by_hash(table.prompts, split_fractions(fraction))
    cols = [table.model_index(m) for m in reference.model_names]
    test = np.flatnonzero(split == "test")
    if limit is not None and limit < test.size:
        test = np.sort(np.random.default_rng(seed).choice(test, size=limit, replace=False))
    # lambda: calibrated on val with the reference encodings (the shipped ones where they match the encoder)
    val = np.flatnonzero(split == "val")
    encoder = reference.predictor.encoder
    shipped = load_shipped_encodings(table.prompts, encoder.encoder_id)
    val_prompts = [table.prompts[i] for i in val]
    Q_val = (reference.predictor.predict_pooled(shipped[val]) if shipped is not None
             else reference.predict(val_prompts)).astype(np.float64)
    val_sub = table.subset(val)
    C_val = reference.cost_model.expected(val_sub)
    Y_val = val_sub.scores[:, cols].astype(np.float64)
    ok = np.isfinite(Y_val).all(1)
    best_val = int(np.argmax(Y_val[ok].mean(0)))
    spend = float(C_val[ok, best_val].mean())
    lams = (calibrate_lambda(Q_val[ok], C_val[ok], spend), calibrate_lambda(Q_val[ok], C_val[ok], spend / 2))

    sub = table.subset(test)
    prompts = list(sub.prompts)
    Y = sub.scores[:, cols].astype(np.float64)
    C_pred = reference.cost_model.expected(sub)
    C_true = reference.cost_model.true(sub)
    Q_ref = reference.predict(prompts)
    reports = []
    for backend in backends:
        router_b = Router.from_pretrained(router, encoder_backend=backend, num_threads=num_threads)
        reports.append(parity_report(backend, Q_ref, router_b.predict(prompts), C_pred, Y, C_true, lams))
    context = {"router": str(saved_dir), "held_out_prompts": int(np.sum(split == "test")), "measured": len(prompts),
               "test_fraction": fraction, "lambdas": lams, "bars": BARS}
    return reports, context


def reference_dir(router):
    from routoo_fast.router import DEFAULT_ROUTER

    return DEFAULT_ROUTER if isinstance(router, str) and router == "default" else router
