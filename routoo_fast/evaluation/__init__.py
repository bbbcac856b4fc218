"""The offline half's evaluation room: cost/quality curves scored with TRUE outcomes and costs, their metrics,
the baseline routers, reports and plots, and the reproduction on real data.

    curves.py     Curve, tradeoff / budget sweeps, the upper hull
    metrics.py    AIQ, quality at a cost, cost to reach a quality, PGR / APGR / CPT, paired bootstrap
    baselines.py  single models, random mix, oracle, kNN, matrix factorisation
    report.py     evaluate_pool -> PoolReport; Report.write: report.md, results.json, one PNG per pool
    reproduce.py  the bundled reproduction and the other real-data sets
    user_data.py  `routoo-fast eval --data FILE --router DIR`: the same report on a user's own outcomes
    cv.py         `routoo-fast cv`: predictors compared on 5 folds of every shared pool, with intervals

Imports from routoo_fast.train, routoo_fast.data and the live path (the arrows point down).
The names of curves, metrics, baselines and report are re-exported here.
"""
from routoo_fast.evaluation.baselines import (MF_DIM, KNNRouter, MFRouter, oracle_curve, random_mix_curve,
                                              single_model_curves)
from routoo_fast.evaluation.curves import (KINDS, Curve, budget_curve, check_costs, check_matrix, default_lambdas,
                                           hull_value, tradeoff_curve, upper_hull)
from routoo_fast.evaluation.metrics import aiq, apgr, cost_to_reach, cpt, paired_bootstrap, pgr, quality_at_cost
from routoo_fast.evaluation.report import PoolReport, Report, evaluate_pool

__all__ = ["MF_DIM", "KNNRouter", "MFRouter", "oracle_curve", "random_mix_curve", "single_model_curves", "KINDS",
           "Curve", "budget_curve", "check_costs", "check_matrix", "default_lambdas", "hull_value", "tradeoff_curve",
           "upper_hull", "aiq", "apgr", "cost_to_reach", "cpt", "paired_bootstrap", "pgr", "quality_at_cost",
           "PoolReport", "Report", "evaluate_pool"]
