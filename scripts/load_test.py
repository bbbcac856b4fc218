"""Bounded load test of `routoo-fast serve` on loopback: with and without micro-batching.

Starts the server as a subprocess on 127.0.0.1 (a free port), sends `--requests` POST /v1/route requests (one
prompt each) from `--concurrency` concurrent clients, stops by itself, and reports p50/p99 latency, requests/s
and errors per mode. Prompts are real questions from the bundled MMLU data. Loopback only.

    python scripts/load_test.py --requests 2000 --concurrency 64
    python scripts/load_test.py --router path/to/router --max-length 64 --json out.json
"""
from __future__ import annotations

import argparse
import asyncio
import json
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass

import httpx
import numpy as np

LOOPBACK = "127.0.0.1"


@dataclass
class LoadResult:
    mode: str
    requests: int
    concurrency: int
    errors: int
    seconds: float
    requests_per_s: float
    p50_ms: float
    p99_ms: float
    status_counts: dict
    mean_pass_prompts: float  # prompts per predictor pass (1.0 without batching)


def sample_prompts(n: int, seed: int = 0) -> list[str]:
    """`n` real prompts (bundled MMLU questions with options), sampled with a fixed seed."""
    from routoo_fast.data import load_default

    prompts = load_default().prompts
    rng = np.random.default_rng(seed)
    return [prompts[i] for i in rng.integers(0, len(prompts), size=n)]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def start_server(router: str, batching: bool, max_length: int | None, threads: int, max_wait_ms: float,
                 max_batch: int, encoder_batch: int | None = None,
                 timeout: float = 180.0) -> tuple[subprocess.Popen, str]:
    """`routoo-fast serve` in a subprocess on a free loopback port; returns once /healthz answers."""
    port = _free_port()
    cmd = [sys.executable, "-m", "routoo_fast.cli", "serve", "--router", router, "--host", LOOPBACK,
           "--port", str(port), "--threads", str(threads), "--log-level", "warning",
           "--max-wait-ms", str(max_wait_ms), "--max-batch", str(max_batch), "--max-queue", "4096"]
    if max_length is not None:
        cmd += ["--max-length", str(max_length)]
    if encoder_batch is not None:
        cmd += ["--encoder-batch", str(encoder_batch)]
    if not batching:
        cmd.append("--no-batching")
    log = tempfile.TemporaryFile(mode="w+")  # a file, not a pipe: a full pipe would stall the server
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log, text=True)
    url = f"http://{LOOPBACK}:{port}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            log.seek(0)
            raise RuntimeError(f"server exited with code {proc.returncode}: {log.read()[-2000:]}")
        try:
            if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    stop_server(proc)
    raise RuntimeError(f"server did not come up within {timeout} s")


def stop_server(proc: subprocess.Popen) -> None:
    proc.terminate()
    try:
        proc.wait(20)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


async def _drive(url: str, prompts: list[str], concurrency: int, policy: str) -> tuple[list[float], dict, float]:
    latencies: list[float] = []
    status: dict[str, int] = {}
    next_index = 0
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as client:
        async def worker():
            nonlocal next_index
            while next_index < len(prompts):
                prompt = prompts[next_index]
                next_index += 1
                t0 = time.perf_counter()
                try:
                    r = await client.post("/v1/route", json={"prompt": prompt, "policy": policy})
                    key = str(r.status_code)
                except httpx.HTTPError as exc:
                    key = type(exc).__name__
                latencies.append(time.perf_counter() - t0)
                status[key] = status.get(key, 0) + 1

        start = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - start
    return latencies, status, elapsed


def run_mode(url: str, mode: str, prompts: list[str], concurrency: int, policy: str, warmup: int = 64) -> LoadResult:
    asyncio.run(_drive(url, prompts[:warmup], min(concurrency, warmup), policy))  # first passes pay one-time costs
    before = _pass_counters(url)
    latencies, status, elapsed = asyncio.run(_drive(url, prompts, concurrency, policy))
    after = _pass_counters(url)
    passes, scored = after[0] - before[0], after[1] - before[1]
    lat_ms = np.array(latencies) * 1000
    errors = sum(v for k, v in status.items() if k != "200")
    return LoadResult(mode, len(prompts), concurrency, errors, elapsed, len(prompts) / elapsed,
                      float(np.percentile(lat_ms, 50)), float(np.percentile(lat_ms, 99)), status,
                      scored / passes if passes else 1.0)


def _pass_counters(url: str) -> tuple[float, float]:
    """(predictor passes, prompts scored) from the server's /metrics (both 0 without batching)."""
    values = {}
    for line in httpx.get(url + "/metrics", timeout=10).text.splitlines():
        name, _, value = line.partition(" ")
        if name in ("routoo_predictor_passes_total", "routoo_predictor_prompts_total"):
            values[name] = float(value)
    return values.get("routoo_predictor_passes_total", 0.0), values.get("routoo_predictor_prompts_total", 0.0)


def run_load_test(router: str = "default", requests: int = 2000, concurrency: int = 64, max_length: int | None = 64,
                  threads: int = 1, max_wait_ms: float = 2.0, max_batch: int = 64, policy: str = "lambda=100",
                  modes: tuple[str, ...] = ("batched", "unbatched"),
                  encoder_batch: int | None = None) -> list[LoadResult]:
    """Run each mode against a fresh server; returns one LoadResult per mode."""
    prompts = sample_prompts(requests)
    results = []
    for mode in modes:
        proc, url = start_server(router, mode == "batched", max_length, threads, max_wait_ms, max_batch, encoder_batch)
        try:
            results.append(run_mode(url, mode, prompts, concurrency, policy))
        finally:
            stop_server(proc)
    return results


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--router", default="default", help="router directory or 'default'")
    p.add_argument("--requests", type=int, default=2000)
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--max-length", type=int, default=64, help="encoder truncation for the server (default 64)")
    p.add_argument("--threads", type=int, default=1, help="torch threads in the server (default 1)")
    p.add_argument("--max-wait-ms", type=float, default=2.0)
    p.add_argument("--max-batch", type=int, default=64)
    p.add_argument("--encoder-batch", type=int, default=None, help="prompts per encoder forward (default: router's)")
    p.add_argument("--policy", default="lambda=100")
    p.add_argument("--modes", default="batched,unbatched")
    p.add_argument("--json", dest="json_out", default=None, help="also write the results as JSON here")
    args = p.parse_args(argv)
    results = run_load_test(args.router, args.requests, args.concurrency, args.max_length, args.threads,
                            args.max_wait_ms, args.max_batch, args.policy, tuple(args.modes.split(",")),
                            args.encoder_batch)
    print(f"{'mode':<10} {'requests':>8} {'conc':>5} {'errors':>6} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} "
          f"{'prompts/pass':>12}")
    for r in results:
        print(f"{r.mode:<10} {r.requests:>8} {r.concurrency:>5} {r.errors:>6} {r.requests_per_s:>8.1f} "
              f"{r.p50_ms:>8.1f} {r.p99_ms:>8.1f} {r.mean_pass_prompts:>12.1f}")
    by_mode = {r.mode: r for r in results}
    if "batched" in by_mode and "unbatched" in by_mode:
        print(f"batching speed-up: {by_mode['batched'].requests_per_s / by_mode['unbatched'].requests_per_s:.2f}x")
    if args.json_out:
        from routoo_fast._atomic import atomic_write_text

        atomic_write_text(args.json_out, json.dumps([asdict(r) for r in results], indent=2))
    return 1 if any(r.errors for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
