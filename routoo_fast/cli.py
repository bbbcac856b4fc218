"""`routoo-fast`: route prompts, train and evaluate routers, serve them over HTTP, benchmark them.

Exit codes: 0 success, 1 runtime error (one line on stderr, no traceback; ROUTOO_DEBUG=1 shows it),
2 usage error (argparse), 130 interrupted. Heavy modules (torch, transformers, uvicorn) load only in the
subcommand that needs them, so `routoo-fast --help` is instant.
"""
from __future__ import annotations

import argparse
import json
import os
import socket
import sys
import time
from typing import Sequence

from .serve.batcher import DEFAULT_MAX_BATCH_TOKENS, DEFAULT_MMAP_THRESHOLD
from .encoder import CHARS_PER_TOKEN

__all__ = ["main", "build_parser"]

PROG = "routoo-fast"
ENCODER_HELP = ("a local Hugging Face encoder folder (config.json, tokenizer, weights), e.g. a larger sentence "
                "encoder; default: the shipped all-MiniLM-L6-v2")
DEFAULT_Q_CACHE_BYTES = 64 * 1024 * 1024  # the server's exact-repeat cache: about 230,000 prompts at 29 models
_SERVE_ARGV_ENV = "ROUTOO_SERVE_ARGV"  # how `serve --workers N` hands its arguments to each worker process

EXAMPLE_PROMPTS = [
    "What is 7 + 5?",
    "Which planet is known as the Red Planet?\nA. Venus\nB. Mars\nC. Jupiter\nD. Saturn",
    "Prove that there are infinitely many primes p such that p + 2 is also prime, or explain why this is open.",
    "A particle moves along x(t) = t^3 - 6t^2 + 9t. Find the times at which it is at rest and classify each.",
    "Write a haiku about autumn rain.",
]


class UserError(Exception):
    """A problem the user can fix (bad path, bad value); printed as one line, exit code 1."""


# ---- argument parsing ------------------------------------------------------------------------------------------
def _add_router_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--router", default="default", metavar="PATH",
                   help="saved router directory, or 'default' for the shipped one (default: %(default)s)")
    p.add_argument("--max-length", type=int, default=None, metavar="TOKENS",
                   help="encoder truncation length, overriding the router's (shorter = faster)")
    p.add_argument("--backend", choices=["cpu", "torch", "triton"], default=None,
                   help="pool+score backend (default: automatic, or $ROUTOO_BACKEND)")
    p.add_argument("--threads", type=int, default=None, metavar="N", help="torch CPU threads (default: torch's choice)")
    p.add_argument("--encoder-batch", type=int, default=None, metavar="N",
                   help="prompts per encoder forward pass (default: the router's; on CPU, 4 suits 256-token prompts)")
    p.add_argument("--encoder-backend", choices=["torch", "onnx", "onnx-int8"], default=None,
                   help="what runs the encoder: torch (CPU or CUDA), onnx (onnxruntime fp32, CPU) or onnx-int8 "
                        "(onnxruntime int8, CPU; the fastest on a CPU, decisions validated against fp32); the onnx "
                        "ones need pip install 'routoo_fast[onnx]' (default: the router's, torch if it names none)")


def _add_policy_args(p: argparse.ArgumentParser, default_help: str) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--policy", metavar="SPEC",
                   help="policy text: 'max_quality', 'max_cost=0.001', 'min_quality=0.7', 'lambda=0.5', 'budget=0.1'")
    g.add_argument("--lambda", dest="lam", type=float, metavar="L",
                   help="trade-off: maximise quality - L * cost (USD)")
    g.add_argument("--max-cost", type=float, metavar="USD",
                   help="best predicted quality with expected cost <= USD per call")
    g.add_argument("--min-quality", type=float, metavar="Q", help="cheapest model with predicted quality >= Q (0..1)")
    g.add_argument("--budget", type=float, metavar="USD",
                   help="best total quality over all prompts for at most USD in total")
    p.add_argument("--models", metavar="A,B,...", help="only route among these models (comma-separated)")
    p.set_defaults(policy_default_help=default_help)


def _add_quiet_threads(p: argparse.ArgumentParser, threads: bool = True) -> None:
    p.add_argument("--quiet", action="store_true", help="no progress bars, summaries or library warnings")
    if threads:
        p.add_argument("--threads", type=int, default=None, metavar="N",
                       help="torch CPU threads (default: torch's choice)")


def _add_eval_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--router", default="default", metavar="PATH", help="saved router directory or 'default'")
    p.add_argument("--out", default=None, metavar="DIR",
                   help="where to write report.md, results.json and plots (default: ./routoo_eval)")
    p.add_argument("--data", default=None, metavar="FILE",
                   help="your own outcomes, in the formats 'train' reads (long format .csv/.jsonl/.parquet: prompt, "
                        "model, score, optional cost, input_tokens, output_tokens): the router is scored on its "
                        "held-out prompts instead of --datasets")
    p.add_argument("--test-fraction", type=float, default=None, metavar="F",
                   help="with --data: share of prompts held out by prompt hash (default: the router's own, 0.2 "
                        "for routers trained here)")
    p.add_argument("--duplicates", choices=["error", "mean"], default="error",
                   help="with --data: repeated (prompt, model) rows are an error, or averaged (default: %(default)s)")
    p.add_argument("--datasets", default="mmlu_pro", metavar="NAMES",
                   help="'all' or comma-separated: mmlu_pro, routellm, routerbench, zeroeval_gsm, zeroeval_math, "
                        "zeroeval_crux (default: %(default)s, bundled with the package; the others need --data-dir)")
    p.add_argument("--data-dir", default=None, metavar="DIR", help="folder of the non-bundled datasets")
    p.add_argument("--cache-dir", default=None, metavar="DIR", help="where pooled prompt encodings are cached")
    _add_quiet_threads(p)


def build_parser() -> argparse.ArgumentParser:
    from .costs import DEFAULT_OUTPUT_TOKENS
    from .data.splits import DEFAULT_TEST_FRACTION

    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Route each prompt to the LLM that answers it well at the lowest cost (Routoo).",
        epilog="Run '%(prog)s COMMAND --help' for each command's options.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("route", help="pick a model for each prompt", description=(
        "Predict each model's chance of answering each prompt well, then pick one model per prompt under a policy "
        "(default: max_quality). Prompts come from the arguments, or one per line from stdin with '-'."))
    p.add_argument("prompts", nargs="+", metavar="PROMPT",
                   help="prompt text ('-' reads prompts from stdin, one per line)")
    _add_router_args(p)
    _add_policy_args(p, "max_quality")
    p.add_argument("--json", action="store_true", help="print one JSON object per prompt instead of a table")
    p.add_argument("--scores", action="store_true", help="also print every model's predicted quality and cost")
    _add_quiet_threads(p, threads=False)
    p.set_defaults(func=cmd_route)

    p = sub.add_parser("serve", help="run the HTTP routing server", description=(
        "Serve /v1/route, an OpenAI-compatible /v1/chat/completions (model 'router' or 'router:<policy>'), "
        "/healthz and /metrics on uvicorn."))
    _add_router_args(p)
    p.add_argument("--upstreams", metavar="FILE",
                   help="JSON file of upstream endpoints per model (see routoo_fast.serve.upstreams)")
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default: %(default)s)")
    p.add_argument("--port", type=int, default=8000, help="port (default: %(default)s)")
    p.add_argument("--policy", default="max_quality", metavar="SPEC",
                   help="policy for model 'router' with none given (default: %(default)s)")
    p.add_argument("--no-batching", action="store_true", help="one predictor pass per request (no micro-batching)")
    p.add_argument("--max-wait-ms", type=float, default=2.0, help="micro-batch wait in ms (default: %(default)s)")
    p.add_argument("--max-batch", type=int, default=64,
                   help="most prompts per predictor pass; a bigger request is served a chunk per pass, taking "
                        "turns with other requests (default: %(default)s)")
    p.add_argument("--max-batch-tokens", type=int, default=DEFAULT_MAX_BATCH_TOKENS, metavar="TOKENS",
                   help="most estimated tokens (characters / 4) per predictor pass, split like --max-batch; "
                        "0 = no limit (default: %(default)s)")
    p.add_argument("--max-prompt-chars", type=int, default=None, metavar="CHARS",
                   help=f"characters of a prompt read before tokenizing; the rest is never read (default: "
                        f"{CHARS_PER_TOKEN} x the encoder's max_length, 4096 at the default 256 tokens)")
    p.add_argument("--malloc-mmap-threshold", type=int, default=DEFAULT_MMAP_THRESHOLD, metavar="BYTES",
                   help="glibc serves blocks this big with mmap and returns them to the OS when freed, which keeps "
                        "RSS level under varying prompt lengths; 0 = glibc's own adaptive threshold "
                        "(default: %(default)s)")
    p.add_argument("--max-queue", type=int, default=1024,
                   help="most requests waiting before 503 (default: %(default)s)")
    p.add_argument("--q-cache-bytes", type=int, default=DEFAULT_Q_CACHE_BYTES, metavar="BYTES",
                   help="memory for the exact-repeat cache of predicted qualities (a repeated prompt skips the "
                        "encoder; hits and misses in /metrics), per worker; 0 = off (default: %(default)s)")
    p.add_argument("--workers", type=int, default=1, metavar="N",
                   help="server processes on the one port (SO_REUSEPORT: the kernel spreads connections over "
                        "them), each with its own router and --threads 1 unless --threads says otherwise "
                        "(default: %(default)s)")
    p.add_argument("--max-body-bytes", type=int, default=8 * 1024 * 1024, metavar="BYTES",
                   help="most bytes of a request body; more is 413, refused while reading (default: %(default)s)")
    p.add_argument("--max-prompts-per-request", type=int, default=1024, metavar="N",
                   help="most prompts in one /v1/route request; more is 400 (default: %(default)s)")
    p.add_argument("--upstream-connect-timeout", type=float, default=10.0, metavar="SECONDS",
                   help="seconds to connect to an upstream before answering 504 (default: %(default)s)")
    p.add_argument("--upstream-read-timeout", type=float, default=120.0, metavar="SECONDS",
                   help="longest wait for an upstream's next bytes: 504, or an error event in a stream; a model's "
                        "timeout_s in the upstreams file overrides it (default: %(default)s)")
    p.add_argument("--timeout-graceful-shutdown", type=float, default=30.0, metavar="SECONDS",
                   help="on SIGTERM/SIGINT, seconds to let requests in flight finish before they are cancelled "
                        "(default: %(default)s)")
    p.add_argument("--auth-token-env", metavar="VAR",
                   help="require 'Authorization: Bearer <token>' with the token read from this environment variable")
    p.add_argument("--spend-caps", metavar="FILE",
                   help="JSON file of USD caps per minute / day, overall and per API key: 429 at a cap, cheaper "
                        "models near one (see routoo_fast.serve.spend); totals in SQLite, shared by --workers")
    p.add_argument("--spend-db", metavar="PATH",
                   help="SQLite file of the spend totals (default: the caps file's 'database')")
    p.add_argument("--affinity-ttl", type=float, default=3600.0, metavar="SECONDS",
                   help="a conversation stays on its first turn's model unless the policy asks for a stronger one, "
                        "for this long after its last turn (see routoo_fast.serve.affinity); 0 = off "
                        "(default: %(default)s)")
    p.add_argument("--affinity-max-sessions", type=int, default=100_000, metavar="N",
                   help="most conversations remembered per worker, least recently used out first "
                        "(default: %(default)s)")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    ray = p.add_argument_group("Ray Serve (--ray; pip install 'routoo_fast[ray]'; see docs/SCALE.md)")
    ray.add_argument("--ray", action="store_true",
                     help="run as a Ray Serve application (routoo_fast.serve.ray_app): replicas behind Ray's HTTP "
                          "proxy on --host/--port, one router per replica, passes batched by @serve.batch; "
                          "connects to --ray-address or $RAY_ADDRESS, else starts a local Ray")
    ray.add_argument("--ray-address", default=None, metavar="ADDR", help="Ray cluster to connect to")
    ray.add_argument("--replicas", type=int, default=1, metavar="N", help="fixed replica count (default: %(default)s)")
    ray.add_argument("--autoscale", default=None, metavar="MIN:MAX",
                     help="autoscale between MIN and MAX replicas instead of --replicas")
    ray.add_argument("--target-ongoing-requests", type=float, default=32, metavar="N",
                     help="with --autoscale: requests in flight per replica that autoscaling aims at "
                          "(default: %(default)s)")
    ray.add_argument("--cpus-per-replica", type=float, default=1.0, metavar="N",
                     help="CPUs reserved per replica, and its torch threads unless --threads says otherwise "
                          "(default: %(default)s)")
    ray.add_argument("--max-ongoing-requests", type=int, default=256, metavar="N",
                     help="requests a replica takes at once; more wait in Ray's queue (default: %(default)s)")
    _add_quiet_threads(p, threads=False)  # --quiet: log level warning unless --log-level says otherwise
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("route-batch", help="route every prompt of a Parquet / JSONL / CSV file", description=(
        "Read prompts from a file, predict every model's quality for each (in this process with a progress bar, "
        "or on Ray Data workers with --ray), apply the policy (budget= over the whole file) and write one row per "
        "prompt: row, model, predicted_quality, expected_cost, feasible (+ q_<model> columns with --with-q). "
        "Formats follow the file extensions: .parquet, .jsonl/.ndjson, .csv. The output is written atomically."))
    p.add_argument("--input", required=True, metavar="FILE", help="prompts file (.parquet, .jsonl, .ndjson, .csv)")
    p.add_argument("--output", required=True, metavar="FILE", help="decisions file (.parquet, .jsonl, .ndjson, .csv)")
    p.add_argument("--column", default="prompt", metavar="NAME", help="column of the prompts (default: %(default)s)")
    _add_router_args(p)
    _add_policy_args(p, "max_quality")
    p.add_argument("--with-q", action="store_true", help="also write every model's predicted quality (q_<model>)")
    p.add_argument("--batch-size", type=int, default=256, metavar="N",
                   help="prompts per predictor call, and per Ray Data batch (default: %(default)s)")
    p.add_argument("--ray", action="store_true",
                   help="predict on Ray Data workers (pip install 'routoo_fast[ray]'): an actor pool with one router "
                        "per actor; connects to $RAY_ADDRESS or --ray-address, else starts a local Ray")
    p.add_argument("--ray-address", default=None, metavar="ADDR", help="Ray cluster to connect to (with --ray)")
    p.add_argument("--actors", type=int, default=2, metavar="N", help="with --ray: actors (default: %(default)s)")
    p.add_argument("--cpus-per-actor", type=float, default=1.0, metavar="N",
                   help="with --ray: CPUs reserved per actor, and its torch threads unless --threads says otherwise "
                        "(default: %(default)s)")
    p.add_argument("--budget-gather-max", type=int, default=64_000_000, metavar="CELLS",
                   help="with --ray and budget=: up to this many prompts x models, Q and C are gathered to the "
                        "driver and the knapsack is solved exactly; above, lambda* is found by k-section over cost "
                        "sums the workers compute (default: %(default)s)")
    _add_quiet_threads(p, threads=False)
    p.set_defaults(func=cmd_route_batch)

    p = sub.add_parser("bench", help="measure routing throughput in this process", description=(
        "Route synthetic prompts through the router at several batch sizes and print prompts/s (no server)."))
    _add_router_args(p)
    p.add_argument("--batch-sizes", default="1,8,64", metavar="B,B,...", help="batch sizes (default: %(default)s)")
    p.add_argument("--prompts", type=int, default=256, metavar="N",
                   help="prompts per batch size (default: %(default)s)")
    p.add_argument("--policy", default="lambda=100", metavar="SPEC", help="policy to route with (default: %(default)s)")
    _add_quiet_threads(p, threads=False)
    p.set_defaults(func=cmd_bench)

    p = sub.add_parser("train", help="train a router on outcome data and save it", description=(
        "Train the shipped recipe on your outcomes (which model got which prompt right) and save a router "
        "directory. Prompts are split by a hash of their text: --test-fraction held out for the report, the rest "
        "in train and val (1/8 of it: early stopping and the recipe's choices from a small grid; below 4,000 "
        "train + val prompts the choices are made by 5-fold cross-fitting on train + val instead), then the head is "
        "refitted on train + val. Costs: the shipped prices (assets/prices.csv) overridden and extended by "
        "--prices; a per-call cost column, where given, drives each model's expected cost too. Every check runs "
        "before any prompt is encoded."))
    p.add_argument("output", metavar="DIR", help="router directory to write (replaced atomically)")
    p.add_argument("--data", default="default", metavar="FILE",
                   help="'default' (bundled MMLU-Pro, original MMLU part) or a long-format .csv/.jsonl/.parquet with "
                        "one row per call: prompt, model, score in [0, 1]; optional cost (USD of that call), "
                        "input_tokens, output_tokens (of that call), and any per-prompt columns (a 'subject' or "
                        "'group' column groups prompts for the soft targets)")
    p.add_argument("--prices", default=None, metavar="FILE",
                   help="prices CSV with the columns of assets/prices.csv (model, input_usd_per_mtok, "
                        "output_usd_per_mtok, open_weights, source); overrides the shipped price of a model")
    p.add_argument("--equal-cost", action="store_true",
                   help="price every model the same: routing then maximises predicted quality and ignores cost")
    p.add_argument("--test-fraction", type=float, default=DEFAULT_TEST_FRACTION, metavar="F",
                   help="share of prompts held out (by prompt hash) for the report, never trained on; 0 = use "
                        "every prompt (default: %(default)s)")
    p.add_argument("--output-tokens", type=float, default=None, metavar="N",
                   help=f"expected output tokens of a model whose data has no output_tokens (default: "
                        f"{DEFAULT_OUTPUT_TOKENS:g})")
    p.add_argument("--duplicates", choices=["error", "mean"], default="error",
                   help="repeated (prompt, model) rows: an error, or averaged (default: %(default)s)")
    p.add_argument("--group-column", default=None, metavar="NAME",
                   help="per-prompt column grouping prompts for the soft targets (default: 'subject' or 'group' "
                        "when present)")
    p.add_argument("--select-folds", type=int, default=None, metavar="K",
                   help="how the recipe's knobs are chosen: K >= 2 by K-fold cross-fitting on train + val (K times "
                        "the head fits), 1 on the val split (default: 5 below 4,000 train + val prompts, else 1)")
    p.add_argument("--cache-dir", default=None, metavar="DIR", help="where pooled prompt encodings are cached")
    p.add_argument("--encoder", default=None, metavar="DIR", help=ENCODER_HELP)
    _add_quiet_threads(p)
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="evaluate a router against baselines on real outcomes", description=(
        "Route held-out prompts with the router and score every decision with the real outcomes and costs of the "
        "chosen LLMs; compare single models, random mixes, the oracle, kNN and matrix factorisation. Writes "
        "report.md, results.json and cost/quality plots."))
    _add_eval_args(p)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("cv", help="cross-validate quality predictors on the shared pools", description=(
        "The predictor protocol of docs/EVALUATION.md: 5 folds by prompt hash on each dataset, every predictor "
        "fitted on the same train / val rows of each fold (all choices on the fold's train + val), routed with "
        "predicted Q and expected costs, scored with true outcomes and costs; AIQ, quality at the best model's "
        "cost, cost to match it, log loss and ECE per fold, paired-bootstrap intervals against the baselines. "
        "Writes report.md and results.json."))
    p.add_argument("--datasets", default="all", metavar="NAMES",
                   help="'all' or a comma-separated subset of mmlu_pro, routellm, routerbench, zeroeval_gsm, "
                        "zeroeval_math, zeroeval_crux (default: %(default)s)")
    p.add_argument("--predictors", default="routoo,kNN,MF", metavar="NAMES",
                   help="comma-separated predictor names, or 'all' (the package's, the baselines and the "
                        "candidates tried; default: %(default)s)")
    p.add_argument("--folds", type=int, default=5, metavar="K", help="number of folds (default: %(default)s)")
    p.add_argument("--draws", type=int, default=1, metavar="D",
                   help="repeat the protocol on D independent deals of the folds and report the mean over all "
                        "D x K folds; draw 0 is the default deal (default: %(default)s)")
    p.add_argument("--bootstrap", type=int, default=1000, metavar="R",
                   help="paired-bootstrap resamples for the intervals (default: %(default)s)")
    p.add_argument("--out", default="routoo_cv", metavar="DIR", help="output directory (default: %(default)s)")
    p.add_argument("--data-dir", default=None, metavar="DIR",
                   help="the shared real-data folder (default: $ROUTOO_SHARED_DATA or ../shared/data)")
    p.add_argument("--cache-dir", default=None, metavar="DIR", help="where pooled prompt encodings are cached")
    p.add_argument("--encoder", default=None, metavar="DIR", help=ENCODER_HELP)
    _add_quiet_threads(p)
    p.set_defaults(func=cmd_cv)

    p = sub.add_parser("demo", help="route example prompts, then run the reproduction", description=(
        "Route a few example prompts under several policies with the router, then run the evaluation "
        "(the same as 'eval')."))
    _add_eval_args(p)
    p.add_argument("--skip-eval", action="store_true", help="only route the example prompts")
    p.set_defaults(func=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    args.argv = argv
    try:
        return args.func(args) or 0
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except (UserError, ValueError, TypeError, FileNotFoundError, NotADirectoryError, PermissionError,
            ImportError) as exc:
        if os.environ.get("ROUTOO_DEBUG"):
            raise
        message = " ".join(str(exc).split()) or type(exc).__name__
        print(f"{PROG} {args.command}: error: {message}", file=sys.stderr)
        return 1


# ---- commands -------------------------------------------------------------------------------------------------
def cmd_route(args) -> int:
    prompts = _read_prompts(args.prompts)
    policy = _policy_from_args(args)
    router = _load_router(args)
    decisions = router.route(prompts, policy)
    Q = C = None
    if args.scores:
        Q, C = router.estimate(prompts)
    for i, (prompt, d) in enumerate(zip(prompts, decisions)):
        if args.json:
            row = {"prompt": prompt, **d.to_dict()}
            if Q is not None:
                row["scores"] = {m: {"quality": float(Q[i, j]), "cost": float(C[i, j])}
                                 for j, m in enumerate(router.model_names)}
            print(json.dumps(row))
            continue
        flag = "" if d.feasible else "  (policy not met: fallback)"
        print(f"{d.model}\tquality={d.predicted_quality:.3f}\tcost=${d.expected_cost:.6f}\t{_short(prompt)}{flag}")
        if Q is not None:
            for j in sorted(range(len(router.model_names)), key=lambda j: -Q[i, j]):
                print(f"    {router.model_names[j]:<40} quality={Q[i, j]:.3f} cost=${C[i, j]:.6f}")
    return 0


def cmd_route_batch(args) -> int:
    from pathlib import Path

    from .serve.route_batch import FORMATS, read_prompts, route_batch, write_results

    _check_positive("--batch-size", args.batch_size)
    _check_positive("--actors", args.actors)
    _check_positive("--cpus-per-actor", args.cpus_per_actor)
    policy = _policy_from_args(args)  # a bad policy fails before any file is read or model loaded
    out = Path(args.output)
    if out.suffix.lower() not in FORMATS:
        raise UserError(f"--output {args.output!r}: unknown format {out.suffix or '(no extension)'!r}; use one of "
                        f"{', '.join(sorted(FORMATS))}")
    prompts = read_prompts(args.input, args.column)
    if args.ray:
        t0 = time.perf_counter()  # with Ray, the time includes starting the actors and loading their routers
        result = _route_batch_ray(args, prompts, policy)
    else:
        router = _load_router(args)
        t0 = time.perf_counter()
        result = route_batch(router, prompts, router.check_policy(policy), batch_size=args.batch_size,
                             with_q=args.with_q, progress=not args.quiet)
    elapsed = time.perf_counter() - t0
    write_results(out, result)
    if not args.quiet:
        print(f"routed {len(prompts)} prompts in {elapsed:.1f} s ({len(prompts) / elapsed:.1f} prompts/s, "
              f"method: {result.method}); total expected cost ${result.total_cost:.6f}, mean predicted "
              f"quality {result.total_quality / len(prompts):.4f}", file=sys.stderr)
    print(f"wrote {out}")
    return 0


def _route_batch_ray(args, prompts, policy):
    try:
        import ray
    except ImportError:
        raise UserError("--ray needs Ray: pip install 'routoo_fast[ray]'") from None
    from .serve.route_batch import route_batch_ray

    threads = args.threads if args.threads is not None else max(1, int(args.cpus_per_actor))
    router_kwargs = {"path": args.router, "backend": args.backend, "max_length": args.max_length,
                     "num_threads": threads, "batch_size": args.encoder_batch,
                     "encoder_backend": args.encoder_backend}
    started = not ray.is_initialized()
    if started:
        ray.init(address=args.ray_address, log_to_driver=not args.quiet,
                 logging_level="WARNING" if args.quiet else "INFO")
    try:
        return route_batch_ray(router_kwargs, prompts, policy, actors=args.actors, batch_size=args.batch_size,
                               with_q=args.with_q, num_cpus_per_actor=args.cpus_per_actor,
                               gather_max_cells=args.budget_gather_max, progress=not args.quiet)
    finally:
        if started:
            ray.shutdown()


def cmd_serve(args) -> int:
    if args.ray:
        return _serve_ray(args)
    import uvicorn

    _check_serve_args(args)
    log_level = "warning" if args.quiet and args.log_level == "info" else args.log_level
    common = dict(host=args.host, port=args.port, log_level=log_level, access_log=False,
                  timeout_graceful_shutdown=args.timeout_graceful_shutdown)
    if args.workers == 1:
        uvicorn.run(_serve_app(args), **common)
        return 0
    _prepare_encoder(args)  # export an ONNX graph once here, not in every worker at once
    os.environ[_SERVE_ARGV_ENV] = json.dumps(args.argv)
    if _REUSEPORT:
        return _serve_reuseport(args, common)
    # uvicorn's workers are processes that import the app: each builds its own router from the same arguments
    uvicorn.run("routoo_fast.cli:serve_worker_app", factory=True, workers=args.workers, **common)
    return 0


def serve_ray_options(args) -> dict:
    """The Ray Serve application's options (routoo_fast.serve.ray_app.build_app) from `serve --ray` arguments."""
    from .serve.ray_app import RAY_OPTIONS

    options = {k: getattr(args, k) for k in RAY_OPTIONS}
    options.update(num_replicas=args.replicas, num_cpus=args.cpus_per_replica,
                   max_ongoing_requests=args.max_ongoing_requests,
                   target_ongoing_requests=args.target_ongoing_requests)
    if args.autoscale:
        low, sep, high = args.autoscale.partition(":")
        if not sep or not low.isdigit() or not high.isdigit() or not 0 <= int(low) <= int(high) or int(high) < 1:
            raise UserError(f"--autoscale must be MIN:MAX with 0 <= MIN <= MAX and MAX >= 1, got {args.autoscale!r}")
        options.update(min_replicas=int(low), max_replicas=int(high))
    return options


def _serve_ray(args) -> int:
    try:
        import ray
        from ray import serve
    except ImportError:
        raise UserError("--ray needs Ray Serve: pip install 'routoo_fast[ray]'") from None
    from .serve.ray_app import build_app

    if args.workers != 1:
        raise UserError("--workers is for uvicorn processes; with --ray, use --replicas N or --autoscale MIN:MAX")
    _check_positive("--replicas", args.replicas)
    _check_positive("--cpus-per-replica", args.cpus_per_replica)
    _check_positive("--max-ongoing-requests", args.max_ongoing_requests)
    _check_serve_args(args)
    options = serve_ray_options(args)
    ray.init(address=args.ray_address, logging_level="WARNING" if args.quiet else "INFO")
    try:
        serve.start(http_options={"host": args.host, "port": args.port})
        serve.run(build_app(options), name="routoo", route_prefix="/", blocking=True)
    finally:
        serve.shutdown()
        ray.shutdown()
    return 0


_REUSEPORT = hasattr(socket, "SO_REUSEPORT")


def reuseport_socket(host: str, port: int):
    """A TCP socket bound to (host, port) with SO_REUSEPORT: N workers each bind their own, and the kernel spreads
    new connections over them by a hash of the connection. (uvicorn's own workers share one socket, and the first
    worker to wake accepts every connection waiting, so keep-alive clients that connect at once all land on one
    worker: 1.1-1.3x for 2 workers in our load test.)"""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise UserError(f"cannot bind {host}:{port}: {exc.strerror or exc}") from None
    sock.set_inheritable(True)
    return sock


def _serve_reuseport(args, common: dict) -> int:
    """Start args.workers processes, each serving its own SO_REUSEPORT socket on the port; SIGTERM/SIGINT are
    passed on to them (each then shuts down gracefully); the exit code is the first failing worker's, else 0."""
    import multiprocessing
    import signal

    if args.port == 0:
        raise UserError("--workers N needs a fixed --port (with 0 each worker would get a port of its own)")
    reuseport_socket(args.host, args.port).close()  # the port is free (or shared the same way): fail here, once
    context = multiprocessing.get_context("spawn")  # fresh interpreters: no torch or onnxruntime state forked
    procs = [context.Process(target=_reuseport_worker, args=(args.argv, common), name=f"routoo-worker-{i}")
             for i in range(args.workers)]
    for proc in procs:
        proc.start()

    def forward(signum, frame):
        for proc in procs:
            if proc.is_alive():
                os.kill(proc.pid, signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        for proc in procs:
            proc.join()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    codes = [proc.exitcode for proc in procs]
    return next((code for code in codes if code), 0)


def _reuseport_worker(argv: list, common: dict) -> None:
    import uvicorn

    os.setsid()  # out of the terminal's process group: a Ctrl+C reaches the workers once, through the parent
    args = build_parser().parse_args(argv)
    _check_serve_args(args)
    sock = reuseport_socket(args.host, args.port)
    options = {k: v for k, v in common.items() if k not in ("host", "port")}
    uvicorn.Server(uvicorn.Config(_serve_app(args), **options)).run(sockets=[sock])


def serve_worker_app():
    """The app of one `serve --workers N` process, built from the arguments the parent left in the environment."""
    argv = os.environ.get(_SERVE_ARGV_ENV)
    if argv is None:
        raise RuntimeError(f"serve_worker_app needs {_SERVE_ARGV_ENV} (set by 'routoo-fast serve --workers N')")
    args = build_parser().parse_args(json.loads(argv))
    _check_serve_args(args)
    return _serve_app(args)


def _check_serve_args(args) -> None:
    _check_positive("--max-wait-ms", args.max_wait_ms, allow_zero=True)
    _check_positive("--max-batch-tokens", args.max_batch_tokens, allow_zero=True)
    if args.max_prompt_chars is not None:
        _check_positive("--max-prompt-chars", args.max_prompt_chars)
    for flag in ("--max-body-bytes", "--max-prompts-per-request", "--upstream-connect-timeout",
                 "--upstream-read-timeout", "--workers"):
        _check_positive(flag, getattr(args, flag[2:].replace("-", "_")))
    _check_positive("--timeout-graceful-shutdown", args.timeout_graceful_shutdown, allow_zero=True)
    _check_positive("--malloc-mmap-threshold", args.malloc_mmap_threshold, allow_zero=True)
    _check_positive("--q-cache-bytes", args.q_cache_bytes, allow_zero=True)
    _check_positive("--affinity-ttl", args.affinity_ttl, allow_zero=True)
    _check_positive("--affinity-max-sessions", args.affinity_max_sessions)
    if args.spend_db and not args.spend_caps:
        raise UserError("--spend-db needs --spend-caps FILE")
    if args.spend_caps:  # a bad caps file fails here, in the parent, before any worker starts
        from .serve.spend import SpendConfig

        SpendConfig.load(args.spend_caps)
    if args.upstreams:  # the same for a bad upstreams file (each worker loads it again)
        from .serve.upstreams import Upstreams

        Upstreams.load(args.upstreams)
    if args.auth_token_env and not os.environ.get(args.auth_token_env):
        raise UserError(f"--auth-token-env {args.auth_token_env}: that environment variable is not set")
    if args.workers > 1 and args.threads is None:
        args.threads = 1  # one intra-op thread per worker: N processes on N cores, none spinning on another's


def _serve_app(args):
    from .serve.batcher import limit_malloc_growth
    from .serve.server import create_app
    from .serve.upstreams import Upstreams

    token = os.environ.get(args.auth_token_env) if args.auth_token_env else None
    upstreams = Upstreams.load(args.upstreams) if args.upstreams else None
    spend = None
    if args.spend_caps:
        from .serve.spend import SpendGuard

        spend = SpendGuard.from_file(args.spend_caps, database=args.spend_db)
    affinity = None
    if args.affinity_ttl:
        from .serve.affinity import SessionAffinity

        affinity = SessionAffinity(args.affinity_max_sessions, args.affinity_ttl)
    if args.malloc_mmap_threshold:
        limit_malloc_growth(args.malloc_mmap_threshold)  # before the model's weights and the first passes
    router = _load_router(args)
    if args.max_prompt_chars is not None:
        router.predictor.encoder.max_chars = args.max_prompt_chars
    if args.q_cache_bytes:
        router.enable_q_cache(args.q_cache_bytes)  # after max_chars: cached Q must be what the encoder now gives
    return create_app(router, upstreams, default_policy=args.policy, batching=not args.no_batching,
                      max_wait=args.max_wait_ms / 1000.0, max_batch_prompts=args.max_batch,
                      max_batch_tokens=args.max_batch_tokens or None, max_queue=args.max_queue, auth_token=token,
                      max_body_bytes=args.max_body_bytes, max_prompts_per_request=args.max_prompts_per_request,
                      upstream_connect_timeout=args.upstream_connect_timeout,
                      upstream_read_timeout=args.upstream_read_timeout, spend=spend,
                      affinity=affinity)


def _prepare_encoder(args) -> None:
    """With an onnx encoder backend, export (and quantize) the router's encoder into the cache now."""
    from .router import DEFAULT_ROUTER
    from .saved import load_router

    saved = load_router(DEFAULT_ROUTER if args.router == "default" else args.router)
    kind = args.encoder_backend or saved.encoder_backend
    if kind == "torch":
        return
    from .encoder import default_model_path
    from .onnx_encoder import ensure_onnx

    folder = saved.config["encoder"].get("path") or default_model_path()
    ensure_onnx(folder, quantized=kind == "onnx-int8")


def cmd_bench(args) -> int:
    import numpy as np

    try:
        sizes = [int(s) for s in args.batch_sizes.split(",") if s.strip()]
    except ValueError:
        raise UserError(f"--batch-sizes must be comma-separated integers, got {args.batch_sizes!r}") from None
    if not sizes or min(sizes) < 1:
        raise UserError(f"--batch-sizes must be integers >= 1, got {args.batch_sizes!r}")
    _check_positive("--prompts", args.prompts)
    router = _load_router(args)
    rng = np.random.default_rng(0)
    words = "the of a model cost answer which planet energy proof integral market cell law code river".split()
    prompts = [" ".join(rng.choice(words, size=int(rng.integers(8, 60)))) for _ in range(args.prompts)]
    router.route(prompts[:2], args.policy)  # warm-up: first call pays one-time costs
    print(f"{'batch':>6} {'prompts/s':>10} {'ms/batch':>10}")
    for b in sizes:
        n_batches = max(1, len(prompts) // b)
        t0 = time.perf_counter()
        for k in range(n_batches):
            chunk = [prompts[(k * b + i) % len(prompts)] for i in range(b)]
            router.route(chunk, args.policy)
        elapsed = time.perf_counter() - t0
        print(f"{b:>6} {n_batches * b / elapsed:>10.1f} {1000 * elapsed / n_batches:>10.2f}")
    return 0


def cmd_train(args) -> int:
    from .train.pipeline import train_and_save

    if not 0 <= args.test_fraction < 1:
        raise UserError(f"--test-fraction must be in [0, 1), got {args.test_fraction}")
    if args.output_tokens is not None and not args.output_tokens >= 0:
        raise UserError(f"--output-tokens must be >= 0, got {args.output_tokens}")
    if args.equal_cost and args.prices:
        raise UserError("give --prices or --equal-cost, not both")
    if args.select_folds is not None and args.select_folds < 1:
        raise UserError(f"--select-folds must be >= 1, got {args.select_folds}")
    _setup_output(args)
    train_and_save(args.output, data=args.data, prices_file=args.prices, equal_cost=args.equal_cost,
                   test_fraction=args.test_fraction, output_tokens=args.output_tokens, duplicates=args.duplicates,
                   group_column=args.group_column, cache_dir=args.cache_dir, num_threads=args.threads,
                   progress=not args.quiet, echo=None if args.quiet else print, select_folds=args.select_folds,
                   encoder_path=args.encoder)
    print(f"saved router to {args.output}")
    return 0


def cmd_eval(args) -> int:
    _setup_output(args)
    if args.data is not None:
        from .evaluation.user_data import evaluate_data

        if args.test_fraction is not None and not 0 < args.test_fraction < 1:
            raise UserError(f"--test-fraction must be in (0, 1), got {args.test_fraction}")
        report = evaluate_data(args.data, router=args.router, out=args.out, test_fraction=args.test_fraction,
                               duplicates=args.duplicates, cache_dir=args.cache_dir, num_threads=args.threads,
                               progress=not args.quiet)
        _print_report(report, args)
        return 0
    from .evaluation.reproduce import DATASETS, reproduce

    datasets = "all" if args.datasets == "all" else [d.strip() for d in args.datasets.split(",") if d.strip()]
    unknown = [] if datasets == "all" else [d for d in datasets if d not in DATASETS]
    if unknown or not datasets:
        raise UserError(f"--datasets must be 'all' or a comma-separated subset of {', '.join(DATASETS)}; "
                        f"got {args.datasets!r}")
    report = reproduce(router=args.router, out=args.out, datasets=datasets, data_dir=args.data_dir,
                       cache_dir=args.cache_dir, progress=not args.quiet, echo=False)
    _print_report(report, args)
    return 0


def cmd_cv(args) -> int:
    _setup_output(args)
    from .evaluation.cv import PREDICTORS, cross_validate
    from .evaluation.reproduce import DATASETS

    datasets = "all" if args.datasets == "all" else [d.strip() for d in args.datasets.split(",") if d.strip()]
    unknown = [] if datasets == "all" else [d for d in datasets if d not in DATASETS]
    if unknown or not datasets:
        raise UserError(f"--datasets must be 'all' or a comma-separated subset of {', '.join(DATASETS)}; "
                        f"got {args.datasets!r}")
    predictors = list(PREDICTORS) if args.predictors == "all" else [
        p.strip() for p in args.predictors.split(",") if p.strip()]
    bad = [p for p in predictors if p not in PREDICTORS]
    if bad or not predictors:
        raise UserError(f"--predictors must be 'all' or names from {', '.join(PREDICTORS)}; got {args.predictors!r}")
    if args.folds < 2:
        raise UserError(f"--folds must be >= 2, got {args.folds}")
    if args.bootstrap < 1:
        raise UserError(f"--bootstrap must be >= 1, got {args.bootstrap}")
    if args.draws < 1:
        raise UserError(f"--draws must be >= 1, got {args.draws}")
    result = cross_validate(datasets, predictors, n_folds=args.folds, draws=args.draws, data_dir=args.data_dir,
                            cache_dir=args.cache_dir, n_boot=args.bootstrap, progress=not args.quiet,
                            encoder=args.encoder,
                            log=None if args.quiet else (lambda m: print(m, file=sys.stderr, flush=True)))
    md = result.write(args.out)
    if not args.quiet:
        print(result.to_markdown())
    print(f"report: {md}")
    return 0


def _print_report(report, args) -> None:
    from pathlib import Path

    out_dir = Path(args.out) if args.out is not None else Path.cwd() / "routoo_eval"
    if not args.quiet:
        print(report.to_markdown())
        for name, path in report.plot_paths.items():
            print(f"plot ({name}): {path}")
    print(f"report: {out_dir / 'report.md'}")


def cmd_demo(args) -> int:
    import numpy as np

    _setup_output(args)
    router = _load_router(argparse.Namespace(router=args.router, max_length=None, backend=None, threads=args.threads,
                                             encoder_batch=None))
    print(f"router with {len(router.model_names)} models\n")
    Q, C = router.estimate(EXAMPLE_PROMPTS)
    from .selector import calibrate_lambda

    median = float(np.median(C))
    # the lambda (quality per USD) whose trade-off spends about the median cost per prompt on these prompts
    lam = calibrate_lambda(Q, C, median)
    policies = ["max_quality", f"max_cost={median:.2g}", "min_quality=0.7", f"lambda={lam:.4g}"]
    for spec in policies:
        print(f"policy {spec}:")
        for prompt, d in zip(EXAMPLE_PROMPTS, router.decide(EXAMPLE_PROMPTS, Q, spec, C)):
            note = "" if d.feasible else "  (policy not met: fallback)"
            print(f"  {d.model:<32} quality={d.predicted_quality:.3f} cost=${d.expected_cost:.6f}  "
                  f"{_short(prompt, 50)}{note}")
        print()
    if args.skip_eval:
        return 0
    return cmd_eval(args)


# ---- helpers --------------------------------------------------------------------------------------------------
def _version() -> str:
    from . import __version__

    return __version__


def _read_prompts(items: list[str]) -> list[str]:
    prompts = []
    for item in items:
        if item == "-":
            prompts.extend(line.rstrip("\n") for line in sys.stdin if line.strip())
        else:
            prompts.append(item)
    if not prompts:
        raise UserError("no prompts given (stdin was empty)")
    return prompts


def _policy_from_args(args):
    from .policies import MaxQuality, parse_policy

    if args.policy is not None:
        policy = parse_policy(args.policy)
    elif args.lam is not None:
        policy = parse_policy({"lambda": args.lam})
    elif args.max_cost is not None:
        policy = parse_policy({"max_cost": args.max_cost})
    elif args.min_quality is not None:
        policy = parse_policy({"min_quality": args.min_quality})
    elif args.budget is not None:
        policy = parse_policy({"budget": args.budget})
    else:
        policy = MaxQuality()
    if args.models:
        if policy.models is not None:
            raise UserError("give the model list once: either --models or models= in --policy")
        names = tuple(m.strip() for m in args.models.split(",") if m.strip())
        policy = type(policy)(**{**{f: getattr(policy, f) for f in policy.__dataclass_fields__}, "models": names})
    return policy


def _setup_output(args) -> None:
    """Before any model loads: no "Loading weights" bars ever; with --quiet, no library warnings either; --threads."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
    if getattr(args, "quiet", False):
        hf_logging.set_verbosity_error()
    threads = getattr(args, "threads", None)
    if threads is not None:
        _check_positive("--threads", threads)
        import torch

        torch.set_num_threads(threads)


def _load_router(args):
    from .router import Router

    _setup_output(args)

    if args.max_length is not None:
        _check_positive("--max-length", args.max_length)
    if args.threads is not None:
        _check_positive("--threads", args.threads)
    if args.encoder_batch is not None:
        _check_positive("--encoder-batch", args.encoder_batch)
    return Router.from_pretrained(args.router, backend=args.backend, max_length=args.max_length,
                                  num_threads=args.threads, batch_size=args.encoder_batch,
                                  encoder_backend=getattr(args, "encoder_backend", None))


def _check_positive(flag: str, value, allow_zero: bool = False) -> None:
    if value < 0 or (value == 0 and not allow_zero):
        raise UserError(f"{flag} must be {'>= 0' if allow_zero else '> 0'}, got {value}")


def _short(text: str, width: int = 60) -> str:
    flat = " ".join(text.split())
    return flat if len(flat) <= width else flat[: width - 1] + "…"


if __name__ == "__main__":
    sys.exit(main())
