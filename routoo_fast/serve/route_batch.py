"""Offline batch routing: a file of prompts in, one decision per prompt out (`routoo-fast route-batch`).

    read the input (Parquet / JSONL / CSV, the prompt column)           -> prompts [P]
    Q = router.predict(chunk) per fixed chunk of `batch_size` prompts   -> Q [P, N]
        in this process (a progress bar), or on Ray Data workers: `map_batches` over an actor pool, one router
        per actor, the same chunk boundaries (so the same Q, bit for bit, and the same decisions)
    apply the policy                                                    -> model, predicted quality, expected cost
    write the output atomically (format from its extension)             -> one row per input row, in input order

Per-prompt policies (max_quality, max_cost, min_quality, lambda) are applied where Q is computed (on the workers
with Ray). `budget=` is one multiple-choice knapsack over the whole input, so it needs every prompt at once:

- up to `gather_max_cells` (prompts x models, default 64e6 = 1e6 prompts x 64 models, about 770 MB of Q float32
  plus C float64 on the driver) Q and C are gathered to the driver and `selector.budget` solves it exactly, the
  same call as in-process (measured: 1e6 x 64 in well under a second, see docs/SCALE.md);
- above it, the driver looks for the break slope lambda* by k-section: each pass the workers compute, for a grid
  of lambdas, the total cost of per-prompt `tradeoff(lambda)` over their batches (Q and C stay materialized in
  Ray's object store); the driver keeps the smallest lambda whose total fits the budget. Each prompt then gets
  its `tradeoff(lambda)` choice on its worker. That is the LP solution rounded down at the break edge: under
  the budget, within one hull edge of the exact solution (no greedy fill of the budget left over).

Output columns: `row` (0-based input row), `model`, `predicted_quality`, `expected_cost`, `feasible`, and with
`with_q` one `q_<model>` column per model (its predicted quality).
"""
from __future__ import annotations

import csv
import io
import json
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np

from .._atomic import atomic_write_bytes
from ..policies import Budget

__all__ = ["read_prompts", "write_results", "route_batch", "route_batch_ray", "BatchResult", "FORMATS",
           "DEFAULT_BATCH_SIZE", "DEFAULT_GATHER_MAX_CELLS"]

FORMATS = {".parquet": "parquet", ".pq": "parquet", ".jsonl": "jsonl", ".ndjson": "jsonl", ".csv": "csv"}
DEFAULT_BATCH_SIZE = 256  # prompts per predictor call (and per Ray Data batch)
DEFAULT_GATHER_MAX_CELLS = 64_000_000  # prompts x models: above this, budget= is solved by k-section on workers
_KSECTION_POINTS = 64  # lambdas per pass of the distributed budget search
_KSECTION_REL_TOL = 1e-12  # stop when the bracket [lo, hi] is this narrow relative to hi


# ---- input and output -----------------------------------------------------------------------------------------
def _format_of(path: Path, what: str) -> str:
    fmt = FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise ValueError(f"{what} {str(path)!r}: unknown format {path.suffix or '(no extension)'!r}; use one of "
                         f"{', '.join(sorted(FORMATS))}")
    return fmt


def read_prompts(path, column: str = "prompt") -> list[str]:
    """The prompts of `path` (.parquet, .jsonl / .ndjson, .csv) in row order, from column `column`.

    Raises FileNotFoundError for a missing file and ValueError naming the row for anything else: an unknown
    extension, no such column (the columns that exist are listed), a value that is not a non-empty string, a
    line of JSONL that is not a JSON object, an empty file."""
    path = Path(path)
    fmt = _format_of(path, "input")
    if not path.is_file():
        raise FileNotFoundError(f"input file not found: {path}")
    if fmt == "parquet":
        import pyarrow.parquet as pq

        try:
            schema = pq.read_schema(path)
        except Exception as exc:  # noqa: BLE001 - pyarrow raises several kinds for a file that is not Parquet
            raise ValueError(f"input {str(path)!r} is not a readable Parquet file: {exc}") from None
        if column not in schema.names:
            raise ValueError(f"input {str(path)!r} has no column {column!r} (columns: {schema.names})")
        values = pq.read_table(path, columns=[column]).column(column).to_pylist()
    elif fmt == "jsonl":
        values = []
        with open(path, encoding="utf-8") as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except ValueError as exc:
                    raise ValueError(f"input {str(path)!r} line {lineno}: not valid JSON ({exc})") from None
                if not isinstance(record, dict):
                    raise ValueError(f"input {str(path)!r} line {lineno}: expected a JSON object, got "
                                     f"{type(record).__name__}")
                if column not in record:
                    raise ValueError(f"input {str(path)!r} has no column {column!r} on line {lineno} (its fields: "
                                     f"{sorted(record)[:20]})")
                values.append(record[column])
    else:
        csv.field_size_limit(min(sys.maxsize, 2 ** 31 - 1))
        with open(path, encoding="utf-8", newline="") as f:
            reader = csv.DictReader(f)
            if reader.fieldnames is None:
                raise ValueError(f"input {str(path)!r} is empty (no header row)")
            if column not in reader.fieldnames:
                raise ValueError(f"input {str(path)!r} has no column {column!r} (columns: {reader.fieldnames})")
            values = [record[column] for record in reader]
    if not values:
        raise ValueError(f"input {str(path)!r} has no rows")
    for i, value in enumerate(values):
        if not isinstance(value, str) or not value:
            raise ValueError(f"input {str(path)!r} row {i}: column {column!r} must be a non-empty string, got "
                             f"{value!r:.60}")
    return values


@dataclass
class BatchResult:
    """Decisions for every prompt, in input order. model: names [P]; predicted_quality, expected_cost: float64 [P];
    feasible: bool [P]; Q: float32 [P, N] or None; lambda_star: the break slope of a distributed budget solve
    (None otherwise); method: "per-prompt", "exact" (budget solved in this process), "gather" (Q and C gathered
    to the Ray driver, then solved there) or "k-section" (lambda* found from the workers' cost sums)."""

    model_names: tuple[str, ...]
    model: list[str]
    predicted_quality: np.ndarray
    expected_cost: np.ndarray
    feasible: np.ndarray
    Q: np.ndarray | None = None
    lambda_star: float | None = None
    method: str = "per-prompt"

    @property
    def total_cost(self) -> float:
        return float(self.expected_cost.sum())

    @property
    def total_quality(self) -> float:
        return float(self.predicted_quality.sum())

    def columns(self) -> dict:
        """The output columns, in order."""
        cols = {"row": np.arange(len(self.model), dtype=np.int64), "model": list(self.model),
                "predicted_quality": self.predicted_quality, "expected_cost": self.expected_cost,
                "feasible": self.feasible}
        if self.Q is not None:
            for j, name in enumerate(self.model_names):
                cols[f"q_{name}"] = self.Q[:, j]
        return cols


def write_results(path, result: BatchResult) -> None:
    """Write `result` to `path` atomically, in the format its extension names (see FORMATS)."""
    path = Path(path)
    fmt = _format_of(path, "output")
    cols = result.columns()
    if fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        buf = io.BytesIO()
        pq.write_table(pa.table({k: pa.array(v) for k, v in cols.items()}), buf)
        data = buf.getvalue()
    else:
        names = list(cols)
        lists = [v.tolist() if isinstance(v, np.ndarray) else v for v in cols.values()]
        out = io.StringIO()
        if fmt == "jsonl":
            for row in zip(*lists):
                out.write(json.dumps(dict(zip(names, row)), ensure_ascii=False))
                out.write("\n")
        else:
            writer = csv.writer(out, lineterminator="\n")
            writer.writerow(names)
            writer.writerows(zip(*lists))
        data = out.getvalue().encode("utf-8")
    atomic_write_bytes(path, data)


# ---- in this process ------------------------------------------------------------------------------------------
def _chunks(n: int, batch_size: int):
    return [(start, min(n, start + batch_size)) for start in range(0, n, batch_size)]


def _check_batch_size(batch_size) -> int:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    return batch_size


def _from_decisions(model_names, decisions, Q, with_q: bool, method: str = "per-prompt") -> BatchResult:
    return BatchResult(
        model_names=tuple(model_names), model=[d.model for d in decisions],
        predicted_quality=np.array([d.predicted_quality for d in decisions], dtype=np.float64),
        expected_cost=np.array([d.expected_cost for d in decisions], dtype=np.float64),
        feasible=np.array([d.feasible for d in decisions], dtype=bool), Q=Q if with_q else None, method=method)


def route_batch(router, prompts: Sequence[str], policy, *, batch_size: int = DEFAULT_BATCH_SIZE,
                with_q: bool = False, progress: bool = False) -> BatchResult:
    """Route `prompts` in this process: Q predicted a chunk of `batch_size` prompts at a time (a tqdm bar with
    `progress`), then the policy over all of them at once (`router.decide`: budget= is one knapsack over the
    whole input). The policy is checked before any prompt is encoded."""
    policy = router.check_policy(policy)
    batch_size = _check_batch_size(batch_size)
    prompts = list(prompts)
    if not prompts:
        raise ValueError("no prompts to route")
    Q = np.empty((len(prompts), len(router.model_names)), dtype=np.float32)
    C = np.empty((len(prompts), len(router.model_names)), dtype=np.float64)
    chunks = _chunks(len(prompts), batch_size)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(prompts), unit="prompt", desc="predicting")
    try:
        for start, stop in chunks:
            Q[start:stop], C[start:stop] = router.estimate(prompts[start:stop])
            if bar is not None:
                bar.update(stop - start)
    finally:
        if bar is not None:
            bar.close()
    decisions = router.decide(prompts, Q, policy, C)
    return _from_decisions(router.model_names, decisions, Q, with_q,
                           "exact" if isinstance(policy, Budget) else "per-prompt")


# ---- on Ray Data ----------------------------------------------------------------------------------------------
class _NoPredictor:
    """Stands in for the predictor of the driver's Router, which only decides from Q computed by the workers."""

    def __init__(self, model_names):
        self.model_names = tuple(model_names)

    def predict(self, prompts):
        raise RuntimeError("the driver does not predict: Q comes from the Ray Data workers")


def driver_router(router_kwargs: dict):
    """A Router without an encoder (model names, cost model, policy checks, `decide`) from a saved router."""
    from ..router import DEFAULT_ROUTER, Router
    from ..saved import load_router

    path = router_kwargs.get("path", "default")
    saved = load_router(DEFAULT_ROUTER if path == "default" else path)
    return Router(_NoPredictor(saved.model_names), saved.cost_model)


class BatchScorer:
    """The Ray Data actor: one Router per actor (loaded once), Q for each batch, and per-prompt decisions.

    mode "decide": the batch's decisions (+ its Q with `with_q`); mode "qc": Q and C for a budget solve elsewhere.
    """

    def __init__(self, router_kwargs: dict, policy: str, mode: str, with_q: bool):
        from ..router import Router

        self.router = Router.from_pretrained(**router_kwargs)
        self.policy = self.router.check_policy(policy)
        self.mode, self.with_q = mode, with_q

    def __call__(self, batch: dict) -> dict:
        prompts = [str(p) for p in batch["prompt"].tolist()]
        Q, C = self.router.estimate(prompts)
        out = {"row": np.asarray(batch["row"], dtype=np.int64)}
        if self.mode == "qc":
            out["Q"], out["C"] = Q, C
            return out
        decisions = self.router.decide(prompts, Q, self.policy, C)
        out["model"] = np.array([d.model for d in decisions], dtype=object)
        out["predicted_quality"] = np.array([d.predicted_quality for d in decisions], dtype=np.float64)
        out["expected_cost"] = np.array([d.expected_cost for d in decisions], dtype=np.float64)
        out["feasible"] = np.array([d.feasible for d in decisions], dtype=bool)
        if self.with_q:
            out["Q"] = Q
        return out


def _allowed_mask(model_names, policy) -> np.ndarray | None:
    if policy.models is None:
        return None
    return np.array([m in policy.models for m in model_names], dtype=bool)


def _lambda_cost_sums(batch: dict, lams: list, allowed) -> dict:
    """Per batch: total cost of tradeoff(lambda) for each lambda, and the cheapest possible total."""
    from .. import selector

    Q, C = np.asarray(batch["Q"]), np.asarray(batch["C"])
    costs = np.array([selector.tradeoff(Q, C, lam, allowed=allowed).total_cost for lam in lams], dtype=np.float64)
    cheapest = np.where(allowed if allowed is not None else True, C, np.inf).min(axis=1).sum()
    return {"cost": costs[None, :], "cheapest": np.array([cheapest], dtype=np.float64)}


def _tradeoff_columns(batch: dict, lam: float, allowed, model_names, with_q: bool) -> dict:
    from .. import selector

    Q, C = np.asarray(batch["Q"]), np.asarray(batch["C"])
    sel = selector.tradeoff(Q, C, lam, allowed=allowed)
    out = {"row": np.asarray(batch["row"], dtype=np.int64),
           "model": np.array([model_names[c] for c in sel.choice.tolist()], dtype=object),
           "predicted_quality": np.asarray(sel.quality, dtype=np.float64),
           "expected_cost": np.asarray(sel.cost, dtype=np.float64),
           "feasible": np.ones(len(Q), dtype=bool)}
    if with_q:
        out["Q"] = Q
    return out


def _collect(ds, columns: Sequence[str]) -> dict:
    """The dataset's columns as numpy arrays, in input row order (sorted by `row` whatever order came back)."""
    parts = {c: [] for c in columns}
    for batch in ds.iter_batches(batch_size=None, batch_format="numpy"):
        for c in columns:
            parts[c].append(np.asarray(batch[c]))
    out = {c: np.concatenate(v) for c, v in parts.items()}
    order = np.argsort(out["row"], kind="stable")
    return {c: v[order] for c, v in out.items()}


def _ksection_lambda(ds, budget: float, allowed, progress) -> float:
    """The smallest lambda (to a relative 1e-12) whose per-prompt tradeoff fits `budget`, from cost sums the
    workers compute for a grid of lambdas per pass. Raises ValueError for a budget below the cheapest total."""
    from .. import selector

    def sums(lams):
        got = ds.map_batches(_lambda_cost_sums, fn_kwargs={"lams": [float(x) for x in lams], "allowed": allowed},
                             batch_format="numpy", batch_size=None)
        cost, cheapest = np.zeros(len(lams)), 0.0
        for batch in got.iter_batches(batch_size=None, batch_format="numpy"):
            cost += np.asarray(batch["cost"]).sum(axis=0)
            cheapest += float(np.asarray(batch["cheapest"]).sum())
        return cost, cheapest

    grid = np.concatenate(([0.0], np.logspace(-12, 30, _KSECTION_POINTS - 1)))
    cost, cheapest = sums(grid)
    if budget < cheapest * (1.0 - selector.BUDGET_REL_SLACK):
        raise ValueError(f"total_budget={budget} is below the cheapest possible total cost {cheapest} "
                         "(every prompt on its cheapest model)")
    if cost[0] <= budget:
        return 0.0  # every prompt's best model fits
    fits = np.flatnonzero(cost <= budget)
    # at lambda = 1e30 every prompt is on its cheapest model; a budget within the slack of that total takes it
    hi_i = int(fits[0]) if len(fits) else len(grid) - 1
    lo, hi = float(grid[hi_i - 1]), float(grid[hi_i])
    passes = 1
    while hi - lo > _KSECTION_REL_TOL * hi and passes < 64:
        if lo > 0:  # geometric points between lo and hi
            inner = np.geomspace(lo, hi, _KSECTION_POINTS + 2)[1:-1]
        else:
            inner = np.linspace(lo, hi, _KSECTION_POINTS + 2)[1:-1]
        cost, _ = sums(inner)
        passes += 1
        fits = np.flatnonzero(cost <= budget)
        if len(fits):
            k = int(fits[0])
            hi, lo = float(inner[k]), (float(inner[k - 1]) if k else lo)
        else:
            lo = float(inner[-1])
        if progress:
            print(f"budget k-section pass {passes}: lambda in [{lo:.9g}, {hi:.9g}]", file=sys.stderr)
    return hi


def route_batch_ray(router_kwargs: dict, prompts: Sequence[str], policy, *, actors: int = 2,
                    batch_size: int = DEFAULT_BATCH_SIZE, with_q: bool = False, num_cpus_per_actor: float = 1.0,
                    gather_max_cells: int = DEFAULT_GATHER_MAX_CELLS, progress: bool = False) -> BatchResult:
    """`route_batch` on Ray Data: `map_batches` over an actor pool of `actors` actors, each holding one Router
    built by `Router.from_pretrained(**router_kwargs)`. Ray must be initialised (`ray.init(...)`) by the caller.
    The batches are the same chunks of `batch_size` prompts as `route_batch`, so Q and the decisions are the
    same. budget=: gathered to the driver up to `gather_max_cells` prompts x models, k-section above (see the
    module docstring)."""
    import ray

    if not ray.is_initialized():
        raise RuntimeError("route_batch_ray needs a running Ray: call ray.init() first")
    batch_size = _check_batch_size(batch_size)
    if isinstance(actors, bool) or not isinstance(actors, int) or actors < 1:
        raise ValueError(f"actors must be an integer >= 1, got {actors!r}")
    router = driver_router(router_kwargs)
    policy = router.check_policy(policy)  # a bad policy fails here, before any actor starts
    prompts = list(prompts)
    if not prompts:
        raise ValueError("no prompts to route")
    ctx = ray.data.DataContext.get_current()  # restored on the way out: the caller may use Ray Data too
    saved = (ctx.execution_options.preserve_order, ctx.enable_progress_bars)
    ctx.execution_options.preserve_order = True
    ctx.enable_progress_bars = bool(progress)
    try:
        return _run_on_ray(ray, router, router_kwargs, prompts, policy, actors, batch_size, with_q,
                           num_cpus_per_actor, gather_max_cells, progress)
    finally:
        ctx.execution_options.preserve_order, ctx.enable_progress_bars = saved


def _run_on_ray(ray, router, router_kwargs, prompts, policy, actors, batch_size, with_q, num_cpus_per_actor,
                gather_max_cells, progress) -> BatchResult:
    import pyarrow as pa

    names = router.model_names
    # blocks of whole batches: map_batches then cuts exactly the chunks route_batch cuts
    per_block = batch_size * max(1, min(64, math.ceil(len(prompts) / (batch_size * actors * 4))))
    tables = [pa.table({"row": pa.array(np.arange(s, e, dtype=np.int64)), "prompt": pa.array(prompts[s:e])})
              for s, e in _chunks(len(prompts), per_block)]
    ds = ray.data.from_arrow(tables)
    is_budget = isinstance(policy, Budget)
    mode = "qc" if is_budget else "decide"
    scored = ds.map_batches(BatchScorer, fn_constructor_kwargs={"router_kwargs": router_kwargs,
                                                                "policy": str(policy), "mode": mode,
                                                                "with_q": with_q},
                            batch_size=batch_size, batch_format="numpy",
                            compute=ray.data.ActorPoolStrategy(size=actors), num_cpus=num_cpus_per_actor)
    if not is_budget:
        cols = _collect(scored, ["row", "model", "predicted_quality", "expected_cost", "feasible"]
                        + (["Q"] if with_q else []))
        return BatchResult(names, [str(m) for m in cols["model"]], cols["predicted_quality"],
                           cols["expected_cost"], cols["feasible"].astype(bool),
                           cols["Q"].astype(np.float32) if with_q else None)
    if len(prompts) * len(names) <= gather_max_cells:
        cols = _collect(scored, ["row", "Q", "C"])
        Q = cols["Q"].astype(np.float32)
        decisions = router.decide(prompts, Q, policy, cols["C"])  # the in-process call on the same Q and C
        return _from_decisions(names, decisions, Q, with_q, "gather")
    scored = scored.materialize()  # Q and C stay in the object store for the passes below
    allowed = _allowed_mask(names, policy)
    lam = _ksection_lambda(scored, float(policy.total), allowed, progress)
    final = scored.map_batches(_tradeoff_columns, fn_kwargs={"lam": lam, "allowed": allowed, "model_names": names,
                                                             "with_q": with_q},
                               batch_format="numpy", batch_size=None)
    cols = _collect(final, ["row", "model", "predicted_quality", "expected_cost", "feasible"]
                    + (["Q"] if with_q else []))
    return BatchResult(names, [str(m) for m in cols["model"]], cols["predicted_quality"], cols["expected_cost"],
                       cols["feasible"].astype(bool), cols["Q"].astype(np.float32) if with_q else None,
                       lambda_star=lam, method="k-section")
