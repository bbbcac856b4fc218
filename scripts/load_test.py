"""Bounded load test of `routoo-fast serve` on loopback: with and without micro-batching, 1 or more workers.

Starts the server as a subprocess on 127.0.0.1 (a free port), sends `--requests` POST /v1/route requests (one
prompt each) from `--concurrency` concurrent clients, stops by itself, and reports p50/p99 latency, requests/s
and errors per mode and worker count. Prompts are real questions from the bundled MMLU data (`--prompts mmlu`), or
their first six words (`--prompts short`, about 9 tokens). The server's exact-repeat cache is off unless
`--q-cache-bytes` says otherwise (sampled prompts repeat, and hits would measure the cache, not the encoder). The
client is a few lines of asyncio over keep-alive connections (`--client raw`, the default): an httpx client costs
more CPU per request than the server at a few hundred requests/s on 2 cores. Loopback only.

    python scripts/load_test.py --requests 2000 --concurrency 64
    python scripts/load_test.py --workers 1,2 --encoder-backend onnx-int8 --prompts short --modes batched
    python scripts/load_test.py --router path/to/router --max-length 64 --json out.json
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
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
    mean_pass_prompts: float  # prompts per predictor pass (1.0 without batching; one worker's, with several)
    workers: int = 1
    encoder_backend: str = "router's"
    prompts: str = "mmlu"


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


def short_prompts(prompts: list[str], words: int = 6) -> list[str]:
    """The first `words` words of each prompt: chat-length prompts of about 9 tokens, still mostly distinct."""
    return [" ".join(p.split()[:words]) for p in prompts]


def start_server(router: str, batching: bool, max_length: int | None, threads: int, max_wait_ms: float,
                 max_batch: int, encoder_batch: int | None = None, timeout: float = 300.0, workers: int = 1,
                 encoder_backend: str | None = None, q_cache_bytes: int = 0) -> tuple[subprocess.Popen, str]:
    """`routoo-fast serve` with the load test's settings; returns once /healthz answers."""
    args = ["--router", router, "--threads", str(threads), "--max-wait-ms", str(max_wait_ms),
            "--max-batch", str(max_batch), "--workers", str(workers), "--q-cache-bytes", str(q_cache_bytes)]
    if encoder_backend is not None:
        args += ["--encoder-backend", encoder_backend]
    if max_length is not None:
        args += ["--max-length", str(max_length)]
    if encoder_batch is not None:
        args += ["--encoder-batch", str(encoder_batch)]
    if not batching:
        args.append("--no-batching")
    return launch_server(args, tempfile.TemporaryFile(mode="w+"), timeout)


def launch_server(serve_args: list[str], log, timeout: float = 300.0) -> tuple[subprocess.Popen, str]:
    """`routoo-fast serve *serve_args` in a subprocess on a free loopback port, its stderr into `log` (a file, not
    a pipe: a full pipe would stall the server); returns (process, url) once /healthz answers."""
    port = _free_port()
    cmd = [sys.executable, "-m", "routoo_fast.cli", "serve", "--host", LOOPBACK, "--port", str(port),
           "--log-level", "warning", "--max-queue", "4096", *serve_args]
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
        proc.wait(30)
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


async def _drive_raw(url: str, prompts: list[str], concurrency: int, policy: str) -> tuple[list[float], dict, float]:
    """`_drive` over raw keep-alive HTTP/1.1 connections: a request is one write, a response one header read and
    one body read, so the client's CPU per request stays far below the server's."""
    host, port = url.rsplit("/", 1)[-1].split(":")
    bodies = [json.dumps({"prompt": p, "policy": policy}).encode() for p in prompts]
    head = f"POST /v1/route HTTP/1.1\r\nHost: {host}\r\nContent-Type: application/json\r\n".encode()
    latencies: list[float] = []
    status: dict[str, int] = {}
    next_index = 0

    async def worker():
        nonlocal next_index
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            while next_index < len(bodies):
                body = bodies[next_index]
                next_index += 1
                t0 = time.perf_counter()
                try:
                    writer.write(head + b"Content-Length: %d\r\n\r\n" % len(body) + body)
                    key = (await reader.readline()).split(b" ", 2)[1].decode()
                    length = 0
                    while (line := await reader.readline()) not in (b"\r\n", b""):
                        name, _, value = line.partition(b":")
                        if name.strip().lower() == b"content-length":
                            length = int(value)
                    await reader.readexactly(length)
                except (OSError, IndexError, ValueError, asyncio.IncompleteReadError) as exc:
                    key = type(exc).__name__
                    writer.close()
                    reader, writer = await asyncio.open_connection(host, int(port))
                latencies.append(time.perf_counter() - t0)
                status[key] = status.get(key, 0) + 1
        finally:
            writer.close()

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies, status, time.perf_counter() - start


def run_mode(url: str, mode: str, prompts: list[str], concurrency: int, policy: str, warmup: int = 64,
             client: str = "httpx") -> LoadResult:
    drive = _drive_raw if client == "raw" else _drive
    asyncio.run(drive(url, prompts[-warmup:], min(concurrency, warmup), policy))  # one-time costs, other prompts
    before = _pass_counters(url)
    latencies, status, elapsed = asyncio.run(drive(url, prompts, concurrency, policy))
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
                  encoder_batch: int | None = None, workers: tuple[int, ...] = (1,),
                  encoder_backend: str | None = None, prompt_kind: str = "mmlu", q_cache_bytes: int = 0,
                  client: str = "httpx") -> list[LoadResult]:
    """Run each (worker count, mode) against a fresh server; returns one LoadResult per pair."""
    if prompt_kind not in ("mmlu", "short"):
        raise ValueError(f"prompt_kind must be 'mmlu' or 'short', got {prompt_kind!r}")
    prompts = sample_prompts(requests + 64)  # the last 64: the warm-up's
    if prompt_kind == "short":
        prompts = short_prompts(prompts)
    results = []
    for n in workers:
        for mode in modes:
            proc, url = start_server(router, mode == "batched", max_length, threads, max_wait_ms, max_batch,
                                     encoder_batch, workers=n, encoder_backend=encoder_backend,
                                     q_cache_bytes=q_cache_bytes)
            try:
                result = run_mode(url, mode, prompts[:requests], concurrency, policy, warmup=64, client=client)
            finally:
                stop_server(proc)
            results.append(LoadResult(**{**asdict(result), "workers": n,
                                         "encoder_backend": encoder_backend or "router's", "prompts": prompt_kind}))
    return results


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--router", default="default", help="router directory or 'default'")
    p.add_argument("--requests", type=int, default=2000)
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--max-length", type=int, default=64,
                   help="encoder truncation for the server (default 64; 0 = the router's own)")
    p.add_argument("--threads", type=int, default=1, help="encoder threads per server process (default 1)")
    p.add_argument("--workers", default="1", help="comma-separated worker counts, one server each (default 1)")
    p.add_argument("--encoder-backend", default=None, help="torch, onnx or onnx-int8 (default: the router's)")
    p.add_argument("--prompts", dest="prompt_kind", default="mmlu", choices=["mmlu", "short"])
    p.add_argument("--q-cache-bytes", type=int, default=0, help="the server's exact-repeat cache (default 0: off)")
    p.add_argument("--client", default="raw", choices=["raw", "httpx"])
    p.add_argument("--max-wait-ms", type=float, default=2.0)
    p.add_argument("--max-batch", type=int, default=64)
    p.add_argument("--encoder-batch", type=int, default=None, help="prompts per encoder forward (default: router's)")
    p.add_argument("--policy", default="lambda=100")
    p.add_argument("--modes", default="batched,unbatched")
    p.add_argument("--json", dest="json_out", default=None, help="also write the results as JSON here")
    args = p.parse_args(argv)
    workers = tuple(int(w) for w in args.workers.split(","))
    results = run_load_test(args.router, args.requests, args.concurrency, args.max_length or None, args.threads,
                            args.max_wait_ms, args.max_batch, args.policy, tuple(args.modes.split(",")),
                            args.encoder_batch, workers, args.encoder_backend, args.prompt_kind, args.q_cache_bytes,
                            args.client)
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    print(f"encoder backend: {args.encoder_backend or 'the router default'}; prompts: {args.prompt_kind}; "
          f"max_length: {args.max_length or 'the router default'}; client: {args.client}; load average after: {load}")
    print(f"{'workers':>7} {'mode':<10} {'requests':>8} {'conc':>5} {'errors':>6} {'req/s':>8} {'p50 ms':>8} "
          f"{'p99 ms':>8} {'prompts/pass':>12}")
    for r in results:
        print(f"{r.workers:>7} {r.mode:<10} {r.requests:>8} {r.concurrency:>5} {r.errors:>6} {r.requests_per_s:>8.1f} "
              f"{r.p50_ms:>8.1f} {r.p99_ms:>8.1f} {r.mean_pass_prompts:>12.1f}")
    by_key = {(r.workers, r.mode): r for r in results}
    for n in workers:
        if (n, "batched") in by_key and (n, "unbatched") in by_key:
            print(f"batching speed-up, {n} worker(s): "
                  f"{by_key[(n, 'batched')].requests_per_s / by_key[(n, 'unbatched')].requests_per_s:.2f}x")
    for mode in args.modes.split(","):
        base = by_key.get((workers[0], mode))
        for n in workers[1:]:
            if base and (n, mode) in by_key:
                print(f"{mode}: {n} workers / {workers[0]}: {by_key[(n, mode)].requests_per_s / base.requests_per_s:.2f}x")
    if args.json_out:
        from routoo_fast._atomic import atomic_write_text

        atomic_write_text(args.json_out, json.dumps([asdict(r) for r in results], indent=2))
    return 1 if any(r.errors for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
