"""Soak test of `routoo-fast serve` on loopback: many mixed requests, some malformed, some meeting upstream faults.

Starts a fake OpenAI-compatible upstream (tests/fake_upstream.py) in this process and the server as a subprocess,
both on 127.0.0.1 (free ports), sends `--requests` requests from `--concurrency` concurrent clients, stops by
itself (every loop is bounded; `--max-seconds` stops sending early), and reports:

- status counts per kind of request, and the checks: 0 unexpected 5xx (a 5xx is expected only for an injected
  upstream fault), every malformed request a 4xx, every streamed chat ending with `data: [DONE]` (or, for an
  injected fault, with an error event), every injected fault visible to the client (a 5xx or an error event);
- p50/p99 latency overall and per kind (for a stream: until its last byte);
- the server's RSS over time (sampled from /proc every `--rss-every` seconds) and start/peak/end.

Request mix (fractions of `--requests`): `--malformed` bad requests (a rotation of malformed JSON, wrong types,
lone surrogates, absurd policies...), `--faults` chats to an upstream that fails (HTTP 500, a body that is not
JSON, a stream dropped mid-way), `--chat` streamed chats routed by the server, the rest /v1/route requests, half
with MMLU-length prompts (bundled questions with options) and half with short ones.

    python scripts/soak.py --requests 20000 --concurrency 64 --json soak.json
    python scripts/soak.py --requests 2000 --check    # exit status 1 if a check fails
"""
from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))  # the fake upstream lives with the tests

from fake_upstream import FakeUpstream, serve_in_thread  # noqa: E402
from load_test import launch_server, sample_prompts, stop_server  # noqa: E402  (this script's folder is on sys.path)

SHORT_PROMPTS = ["hi", "What is 2 + 2?", "Translate 'good morning' into French.", "Write a haiku about rain.",
                 "Who wrote Hamlet?", "Explain TCP slow start in one sentence.", "Is 97 prime?",
                 "Summarise the plot of Moby Dick.", "def f(x): return x * 2  # what does f(3) return?"]
POLICIES = ["max_quality", "lambda=100", "min_quality=0.7", "max_cost=0.001", None]
# upstream faults: (model name in the upstreams file, upstream model id the fake acts on, streamed?)
FAULTS = [("soak-fail", "soak-fail", False), ("soak-badjson", "soak-badjson", False), ("soak-drop", "soak-drop", True)]


def _malformed() -> list[tuple[str, dict, bytes]]:
    """(path, headers, body) of requests a server must answer with a 4xx."""
    js = {"content-type": "application/json"}
    deep = b"[" * 100_000 + b"]" * 100_000
    cases = [
        ("/v1/route", js, b'{"prompt": "unterminated'),
        ("/v1/route", js, b"[1, 2, 3]"),
        ("/v1/route", js, b'{"prompts": "not a list"}'),
        ("/v1/route", js, b'{"prompts": []}'),
        ("/v1/route", js, b'{"prompts": ["ok", 7]}'),
        ("/v1/route", js, b'{"prompt": "x \\ud800"}'),  # lone surrogate
        ("/v1/route", js, b'{"prompt": "hi", "policy": "lambda=banana"}'),
        ("/v1/route", js, b'{"prompt": "hi", "policy": {"max_cost": ' + b"9" * 5000 + b"}}"),
        ("/v1/route", js, b'{"prompt": "hi", "policy": {"lambda": NaN}}'),
        ("/v1/route", js, b'{"prompt": "hi", "policy": "max_quality,models=no-such-model"}'),
        ("/v1/route", js, deep),
        ("/v1/route", js, b"\xff\xfe not utf-8"),
        ("/v1/chat/completions", js, b'{"model": "router"}'),
        ("/v1/chat/completions", js, b'{"model": "no-such-model", "messages": [{"role": "user", "content": "hi"}]}'),
        ("/v1/chat/completions", js, b'{"model": "router", "messages": [{"role": "system", "content": "hi"}]}'),
        ("/v1/chat/completions", js,
         b'{"model": "router:lambda=oops", "messages": [{"role": "user", "content": "a"}]}'),
    ]
    return cases


@dataclass
class Outcome:
    kind: str
    status: str  # HTTP status, or the exception's name when there was none
    seconds: float
    stream_end: str = ""  # for streams: "done", "error_event" or "truncated"
    detail: str = ""  # the start of the answer, kept for a 5xx or an unfinished stream


@dataclass
class Plan:
    kinds: list[str]
    mmlu: list[str]
    seed: int
    malformed: list = field(default_factory=_malformed)


def plan(n: int, malformed: float, faults: float, chat: float, seed: int) -> Plan:
    """The kind of each request, in a shuffled order fixed by `seed`."""
    rng = random.Random(seed)
    n_bad, n_fault, n_chat = round(n * malformed), round(n * faults), round(n * chat)
    n_route = n - n_bad - n_fault - n_chat
    if n_route < 0:
        raise ValueError("--malformed + --faults + --chat must be at most 1")
    kinds = (["malformed"] * n_bad + ["fault"] * n_fault + ["chat"] * n_chat
             + ["route_mmlu"] * (n_route // 2) + ["route_short"] * (n_route - n_route // 2))
    rng.shuffle(kinds)
    return Plan(kinds, sample_prompts(max(1, n), seed), seed)


def _sse_end(text: str) -> str:
    events = [line[5:].strip() for line in text.splitlines() if line.startswith("data:")]
    if events and events[-1] == "[DONE]":
        return "done"
    for event in events:
        try:
            if isinstance(json.loads(event), dict) and "error" in json.loads(event):
                return "error_event"
        except json.JSONDecodeError:
            continue
    return "truncated"


async def _one(client: httpx.AsyncClient, p: Plan, i: int) -> Outcome:
    kind = p.kinds[i]
    rng = random.Random(p.seed * 1_000_003 + i)
    t0 = time.perf_counter()
    stream_end = detail = ""
    try:
        if kind == "malformed":
            path, headers, body = p.malformed[i % len(p.malformed)]
            r = await client.post(path, content=body, headers=headers)
        elif kind in ("route_mmlu", "route_short"):
            prompt = p.mmlu[i] if kind == "route_mmlu" else rng.choice(SHORT_PROMPTS)
            body = {"prompt": prompt}
            policy = rng.choice(POLICIES)
            if policy is not None:
                body["policy"] = policy
            r = await client.post("/v1/route", json=body)
        else:
            if kind == "chat":
                model, stream = "router", True
                text = p.mmlu[i] if rng.random() < 0.5 else rng.choice(SHORT_PROMPTS)
            else:
                model, _, stream = FAULTS[i % len(FAULTS)]
                text = rng.choice(SHORT_PROMPTS)
            body = {"model": model, "messages": [{"role": "user", "content": text}], "stream": stream}
            if stream:
                async with client.stream("POST", "/v1/chat/completions", json=body) as r:
                    raw = b"".join([chunk async for chunk in r.aiter_bytes()])
                text = raw.decode("utf-8", "replace")
                if r.status_code == 200:
                    stream_end = _sse_end(text)
                if r.status_code >= 500 or stream_end not in ("", "done"):
                    detail = f"{model}: {text[-300:]}"
            else:
                r = await client.post("/v1/chat/completions", json=body)
        status = str(r.status_code)
        if r.status_code >= 500 and not detail:
            detail = f"{kind}: {r.text[:300]}"
    except httpx.HTTPError as exc:
        status = type(exc).__name__
    return Outcome(kind, status, time.perf_counter() - t0, stream_end, detail)


def _rss_mb(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


async def _drive(url: str, p: Plan, concurrency: int, max_seconds: float, progress) -> list[Outcome]:
    outcomes: list[Outcome] = []
    next_index = 0
    stop_at = time.monotonic() + max_seconds
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as client:
        async def worker():
            nonlocal next_index
            while next_index < len(p.kinds) and time.monotonic() < stop_at:
                i = next_index
                next_index += 1
                outcomes.append(await _one(client, p, i))
                progress(len(outcomes))

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return outcomes


def start_server(args, upstreams: str, log, timeout: float = 300.0) -> tuple[subprocess.Popen, str]:
    """`routoo-fast serve` with the soak's router, threads and upstreams; returns once /healthz answers."""
    serve_args = ["--router", args.router, "--threads", str(args.threads), "--upstreams", upstreams,
                  *args.server_arg]
    if args.max_length is not None:
        serve_args += ["--max-length", str(args.max_length)]
    return launch_server(serve_args, log, timeout)


def _upstreams_file(router_path: str, upstream_url: str, folder: str) -> str:
    from routoo_fast.router import DEFAULT_ROUTER
    from routoo_fast.saved import load_router

    path = DEFAULT_ROUTER if router_path == "default" else Path(router_path)
    names = load_router(path).model_names
    models = {name: {} for name in names}
    for name, upstream_id, _ in FAULTS:
        models[name] = {"model": upstream_id}
    config = {"defaults": {"base_url": upstream_url + "/v1", "api_key_env": None, "timeout_s": 30}, "models": models}
    out = os.path.join(folder, "upstreams.json")
    with open(out, "w") as f:
        json.dump(config, f)
    return out


def _percentile_ms(seconds: list[float], q: float) -> float:
    return float(np.percentile(np.asarray(seconds) * 1000, q)) if seconds else float("nan")


def summarise(outcomes: list[Outcome], rss: list[tuple[float, int, float]], elapsed: float, args) -> dict:
    by_kind: dict[str, dict[str, int]] = {}
    for o in outcomes:
        key = o.status + (f"/{o.stream_end}" if o.stream_end else "")
        by_kind.setdefault(o.kind, {}).setdefault(key, 0)
        by_kind[o.kind][key] += 1

    def is_5xx(o):
        return o.status.isdigit() and o.status.startswith("5")

    unexpected_5xx = sum(is_5xx(o) for o in outcomes if o.kind != "fault")
    errors = sum(not o.status.isdigit() for o in outcomes)  # no HTTP answer at all (connection errors)
    malformed = [o for o in outcomes if o.kind == "malformed"]
    malformed_not_4xx = sum(not (o.status.isdigit() and o.status.startswith("4")) for o in malformed)
    faults = [o for o in outcomes if o.kind == "fault"]
    faults_hidden = sum(not (is_5xx(o) or o.stream_end == "error_event") for o in faults)
    faults_500 = sum(o.status == "500" for o in faults)  # an upstream fault is a 502/504, never our own 500
    chats = [o for o in outcomes if o.kind == "chat"]
    chats_not_done = sum(o.status != "200" or o.stream_end != "done" for o in chats)
    latency = {"all": [o.seconds for o in outcomes]}
    for o in outcomes:
        latency.setdefault(o.kind, []).append(o.seconds)
    rss_mb = [r for _, _, r in rss]
    n = len(outcomes)
    summary = {
        "requests": n, "planned": args.requests, "concurrency": args.concurrency,
        "seconds": round(elapsed, 1), "requests_per_s": round(n / elapsed, 1) if elapsed else None,
        "status_by_kind": by_kind, "connection_errors": errors, "unexpected_5xx": unexpected_5xx,
        "malformed": len(malformed), "malformed_not_4xx": malformed_not_4xx,
        "faults": len(faults), "faults_not_visible": faults_hidden, "faults_500": faults_500,
        "chats": len(chats), "chats_not_done": chats_not_done,
        "latency_ms": {k: {"p50": round(_percentile_ms(v, 50), 1), "p99": round(_percentile_ms(v, 99), 1)}
                       for k, v in latency.items()},
        "rss_mb": {"start": round(rss_mb[0], 1) if rss_mb else None, "peak": round(max(rss_mb), 1) if rss_mb else None,
                   "end": round(rss_mb[-1], 1) if rss_mb else None,
                   "at_half": round(_rss_at(rss, n // 2), 1) if rss else None},
        "unexpected_examples": [o.detail for o in outcomes if o.detail and o.kind != "fault"][:10],
        "rss_series": [(round(t, 1), done, round(r, 1)) for t, done, r in _thin(rss, 40)],
    }
    summary["checks"] = checks(summary, args)
    return summary


def _rss_at(rss, done: int) -> float:
    """RSS at the first sample taken once `done` requests had completed."""
    for _, d, r in rss:
        if d >= done:
            return r
    return rss[-1][2]


def _thin(series, k: int):
    if len(series) <= k:
        return series
    idx = np.linspace(0, len(series) - 1, k).round().astype(int)
    return [series[i] for i in idx]


def checks(s: dict, args) -> dict:
    """Each check: True when it holds. RSS is bounded when the second half of the run grew it by at most
    --rss-growth-mb (allocator growth levels off; a leak keeps climbing with every request)."""
    rss = s["rss_mb"]
    growth = None if rss["end"] is None else rss["end"] - rss["at_half"]
    return {
        "no_unexpected_5xx": s["unexpected_5xx"] == 0,
        "every_malformed_a_4xx": s["malformed_not_4xx"] == 0,
        "every_fault_visible": s["faults_not_visible"] == 0 and s["faults_500"] == 0,
        "every_chat_stream_complete": s["chats_not_done"] == 0,
        "no_connection_errors": s["connection_errors"] == 0,
        "all_requests_sent": s["requests"] == s["planned"],
        "rss_bounded": growth is not None and growth <= args.rss_growth_mb,
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--router", default="default", help="saved router directory or 'default'")
    parser.add_argument("--max-length", type=int, default=None, help="encoder truncation (default: the router's)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads in the server (default: %(default)s)")
    parser.add_argument("--malformed", type=float, default=0.01, help="fraction of malformed requests")
    parser.add_argument("--faults", type=float, default=0.01, help="fraction of chats meeting an upstream fault")
    parser.add_argument("--chat", type=float, default=0.2, help="fraction of streamed chats routed by the server")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--max-seconds", type=float, default=3600.0, help="stop sending after this long")
    parser.add_argument("--rss-every", type=float, default=1.0, help="seconds between RSS samples")
    parser.add_argument("--rss-growth-mb", type=float, default=100.0,
                        help="most RSS growth over the second half of the run for the check (default: %(default)s)")
    parser.add_argument("--server-arg", action="append", default=[], metavar="ARG",
                        help="extra argument for `routoo-fast serve` (repeatable), e.g. --server-arg=--max-batch=32")
    parser.add_argument("--json", default=None, metavar="FILE", help="also write the summary here")
    parser.add_argument("--check", action="store_true", help="exit with status 1 if a check fails")
    args = parser.parse_args(argv)
    if args.requests < 1 or args.concurrency < 1:
        parser.error("--requests and --concurrency must be >= 1")

    p = plan(args.requests, args.malformed, args.faults, args.chat, args.seed)
    fake = FakeUpstream()
    log = tempfile.TemporaryFile(mode="w+")  # the server's stderr: a file, not a pipe (a full pipe would stall it)
    with tempfile.TemporaryDirectory() as folder, serve_in_thread(fake.app) as upstream_url:
        # the fake upstream (in this process) drops connections on purpose by raising, and uvicorn would log each
        # one; its log level is set when it starts, so quieten it after that
        logging.getLogger("uvicorn.error").setLevel(logging.CRITICAL)
        upstreams = _upstreams_file(args.router, upstream_url, folder)
        proc, url = start_server(args, upstreams, log)
        rss: list[tuple[float, int, float]] = []
        done = [0]
        stop = threading.Event()
        t0 = time.monotonic()

        def sample():
            while not stop.is_set():
                value = _rss_mb(proc.pid)
                if value is not None:
                    rss.append((time.monotonic() - t0, done[0], value))
                stop.wait(args.rss_every)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        report_every = max(1, args.requests // 10)

        def progress(n):
            done[0] = n
            if n % report_every == 0:
                print(f"  {n}/{args.requests} requests, {time.monotonic() - t0:.0f} s, "
                      f"server RSS {rss[-1][2] if rss else float('nan'):.0f} MB", file=sys.stderr, flush=True)

        try:
            outcomes = asyncio.run(_drive(url, p, args.concurrency, args.max_seconds, progress))
            elapsed = time.monotonic() - t0
            value = _rss_mb(proc.pid)
            if value is not None:
                rss.append((elapsed, len(outcomes), value))
        finally:
            stop.set()
            sampler.join(5)
            stop_server(proc)
    summary = summarise(outcomes, rss, elapsed, args)
    log.seek(0)
    tracebacks = log.read().count("Traceback")
    summary["server_tracebacks"] = tracebacks  # logged exceptions (e.g. a predictor failure) in the server's stderr
    text = json.dumps(summary, indent=1)
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text)
    failed = [name for name, ok in summary["checks"].items() if not ok]
    if failed:
        print(f"FAILED checks: {', '.join(failed)}", file=sys.stderr)
    return 1 if (failed and args.check) else 0


if __name__ == "__main__":
    sys.exit(main())
