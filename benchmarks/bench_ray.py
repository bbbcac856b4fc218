"""Ray throughput next to the in-process figures, in one run (needs `pip install 'routoo_fast[ray]'`):

    python benchmarks/bench_ray.py [--router default] [--requests 400] [--concurrency 32] [--prompts 2000]

Online: `--requests` single-prompt /v1/route requests from `--concurrency` concurrent clients, against
  (a) the plain server (create_app on uvicorn in this process, the in-process micro-batcher),
  (b) the Ray Serve application with 1 replica, (c) with 2 replicas (one CPU and one torch thread each);
  prompts/s, and the median latency of one request at a time (the overhead Ray adds per request is (b) - (a)).
Offline: `route-batch` of `--prompts` prompts in this process (one torch thread), then on Ray Data with 1 and
  2 actors (one CPU and one torch thread each): prompts/s, with and without the actors' start-up.
Every figure is one run on this machine; synthetic prompts of 8-60 words (as `routoo-fast bench`).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))


def prompts_for(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    words = "the of a model cost answer which planet energy proof integral market cell law code river".split()
    return [f"{i}: " + " ".join(rng.choice(words, size=int(rng.integers(8, 60)))) for i in range(n)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def _load(url: str, prompts: list[str], concurrency: int) -> float:
    import httpx

    queue = list(prompts)
    async with httpx.AsyncClient(base_url=url, timeout=120,
                                 limits=httpx.Limits(max_connections=concurrency)) as client:
        async def worker():
            while queue:
                prompt = queue.pop()
                r = await client.post("/v1/route", json={"prompt": prompt, "policy": "lambda=500"})
                r.raise_for_status()

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return time.perf_counter() - t0


def online(url: str, prompts: list[str], concurrency: int, sequential: int = 50) -> dict:
    import httpx

    with httpx.Client(base_url=url, timeout=120) as client:
        for p in prompts[:8]:  # warm-up
            client.post("/v1/route", json={"prompt": p}).raise_for_status()
        latencies = []
        for p in prompts[:sequential]:
            t0 = time.perf_counter()
            client.post("/v1/route", json={"prompt": p, "policy": "lambda=500"}).raise_for_status()
            latencies.append(time.perf_counter() - t0)
    elapsed = asyncio.run(_load(url, prompts, concurrency))
    return {"prompts_per_s": len(prompts) / elapsed, "seconds": elapsed,
            "median_latency_ms_one_at_a_time": 1000 * statistics.median(latencies)}


def plain_server(router_path: str, prompts, concurrency) -> dict:
    import uvicorn

    from routoo_fast.router import Router
    from routoo_fast.serve.server import create_app

    app = create_app(Router.from_pretrained(router_path, num_threads=1))
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.05)
    try:
        return online(f"http://127.0.0.1:{port}", prompts, concurrency)
    finally:
        server.should_exit = True
        thread.join()


def ray_server(router_path: str, replicas: int, prompts, concurrency, port: int) -> dict:
    from ray import serve

    from routoo_fast.serve.ray_app import build_app

    t0 = time.perf_counter()
    serve.run(build_app({"router": router_path, "num_replicas": replicas, "threads": 1}), name="routoo",
              route_prefix="/")
    started = time.perf_counter() - t0
    try:
        out = online(f"http://127.0.0.1:{port}", prompts, concurrency)
    finally:
        serve.delete("routoo")
    out["startup_s"] = started
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--router", default="default")
    parser.add_argument("--requests", type=int, default=400)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--prompts", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--json", default=None, metavar="FILE", help="also write the figures here")
    args = parser.parse_args(argv)

    import ray
    from ray import serve

    from routoo_fast.router import DEFAULT_ROUTER, Router
    from routoo_fast.serve.route_batch import route_batch, route_batch_ray

    router_path = str(DEFAULT_ROUTER) if args.router == "default" else args.router
    results = {"machine": f"{os.cpu_count()} CPUs", "ray": ray.__version__, "router": args.router,
               "online": {}, "offline": {}}
    online_prompts = prompts_for(args.requests, seed=1)
    offline_prompts = prompts_for(args.prompts, seed=2)

    print("online: plain server in this process ...", flush=True)
    results["online"]["in-process server"] = plain_server(router_path, online_prompts, args.concurrency)

    print("offline: route_batch in this process ...", flush=True)
    router = Router.from_pretrained(router_path, num_threads=1)
    t0 = time.perf_counter()
    route_batch(router, offline_prompts, "lambda=500", batch_size=args.batch_size)
    elapsed = time.perf_counter() - t0
    results["offline"]["in-process"] = {"prompts_per_s": len(offline_prompts) / elapsed, "seconds": elapsed}
    del router

    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, logging_level="WARNING", log_to_driver=False)
    try:
        port = free_port()
        serve.start(http_options={"host": "127.0.0.1", "port": port})
        for replicas in (1, 2):
            print(f"online: Ray Serve, {replicas} replica(s) ...", flush=True)
            results["online"][f"ray serve x{replicas}"] = ray_server(router_path, replicas, online_prompts,
                                                                    args.concurrency, port)
        serve.shutdown()
        for actors in (1, 2):
            print(f"offline: Ray Data, {actors} actor(s) ...", flush=True)
            kwargs = {"path": router_path, "num_threads": 1}
            # the actors' start-up, measured on a tiny input first (each call builds its own actor pool)
            t0 = time.perf_counter()
            route_batch_ray(kwargs, offline_prompts[:actors], "lambda=500", actors=actors, batch_size=1)
            startup = time.perf_counter() - t0
            t0 = time.perf_counter()
            route_batch_ray(kwargs, offline_prompts, "lambda=500", actors=actors, batch_size=args.batch_size)
            elapsed = time.perf_counter() - t0
            results["offline"][f"ray data x{actors}"] = {
                "prompts_per_s": len(offline_prompts) / elapsed, "seconds": elapsed,
                "startup_s": startup,
                "prompts_per_s_without_startup": len(offline_prompts) / max(1e-9, elapsed - startup)}
    finally:
        ray.shutdown()

    base = results["online"]["in-process server"]["median_latency_ms_one_at_a_time"]
    results["ray_overhead_ms_per_request"] = (
        results["online"]["ray serve x1"]["median_latency_ms_one_at_a_time"] - base)
    print(json.dumps(results, indent=2))
    print(f"\n{'setup':<24}{'prompts/s':>12}{'1-at-a-time ms':>16}")
    for name, r in results["online"].items():
        print(f"{name:<24}{r['prompts_per_s']:>12.1f}{r['median_latency_ms_one_at_a_time']:>16.2f}")
    for name, r in results["offline"].items():
        print(f"{name:<24}{r['prompts_per_s']:>12.1f}")
    print(f"Ray Serve adds {results['ray_overhead_ms_per_request']:.2f} ms per request (median, one at a time)")
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
