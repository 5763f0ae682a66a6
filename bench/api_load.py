"""Load test of the HTTP API: N concurrent clients, each sending M txt2img requests one after another.

Starts Easel (`app.py --nowebui`, with a login) on a tiny random SD1.x model in a temporary data
folder, or targets a running server with --url. Every request must answer 200 with one PNG whose
infotext carries the seed it asked for. Prints throughput, latency percentiles, and how the worker's
time was shared between clients (the fair queue: no client should finish far behind the others).

    python bench/api_load.py [--clients 8] [--jobs 10] [--steps 2] [--size 64] [--server-threads N]
                             [--url URL --auth USER:PASS]
"""
from __future__ import annotations

import argparse
import asyncio
import base64
import io
import statistics
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))


@dataclass
class ClientStats:
    latencies: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    finished_at: float = 0.0


@contextmanager
def local_server(auth: str, threads: int | None = None, timeout: float = 180):
    """app.py --nowebui on a tiny model (the tests' launcher); yields the base URL."""
    from browser import easel_server
    from tiny_models import build_tiny_sd, write_safetensors

    with tempfile.TemporaryDirectory(prefix="easel-load-") as tmp:
        data = Path(tmp)
        write_safetensors(build_tiny_sd(0), data / "models" / "Stable-diffusion" / "tiny.safetensors",
                          metadata={"modelspec.resolution": "64x64"})
        # on a busy machine, spinning OpenMP threads of an oversubscribed torch stall each other
        env = {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)} if threads else None
        with easel_server(data, "--nowebui", "--api-auth", auth, timeout=timeout, ready_path="/sdapi/v1/samplers",
                          env=env) as url:
            yield url


def check_answer(response: httpx.Response, seed: int) -> str | None:
    """None if the answer is one PNG with the asked-for seed in its infotext, else what is wrong."""
    if response.status_code != 200:
        return f"HTTP {response.status_code}: {response.text[:200]}"
    images = response.json()["images"]
    if len(images) != 1:
        return f"{len(images)} images"
    infotext = Image.open(io.BytesIO(base64.b64decode(images[0]))).info.get("parameters", "")
    return None if f"Seed: {seed}," in infotext else f"infotext without Seed {seed}: {infotext[:120]!r}"


async def run_client(http: httpx.AsyncClient, n: int, jobs: int, body: dict, stats: ClientStats) -> None:
    for j in range(jobs):
        seed = 1000 * n + j
        started = time.perf_counter()
        try:
            r = await http.post("/sdapi/v1/txt2img", json={**body, "seed": seed},
                                headers={"X-Easel-Client": f"load-{n}"})
            problem = check_answer(r, seed)
        except httpx.HTTPError as e:
            problem = f"{type(e).__name__}: {e}"
        stats.latencies.append(time.perf_counter() - started)
        if problem:
            stats.errors.append(problem)
    stats.finished_at = time.perf_counter()


async def load(url: str, auth: tuple[str, str], clients: int, jobs: int, body: dict) -> tuple[list[ClientStats], float]:
    limits = httpx.Limits(max_connections=clients + 2)
    async with httpx.AsyncClient(base_url=url, auth=auth, timeout=600, limits=limits) as http:
        warm = await http.post("/sdapi/v1/txt2img", json={**body, "seed": 1})  # load the model first
        if problem := check_answer(warm, 1):
            raise SystemExit(f"warm-up request failed: {problem}")
        stats = [ClientStats() for _ in range(clients)]
        started = time.perf_counter()
        await asyncio.gather(*(run_client(http, n, jobs, body, s) for n, s in enumerate(stats)))
        for s in stats:
            s.finished_at -= started
        return stats, time.perf_counter() - started


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * (len(ordered) - 1))))]


def report(stats: list[ClientStats], wall: float, args: argparse.Namespace) -> int:
    latencies = [x for s in stats for x in s.latencies]
    errors = [e for s in stats for e in s.errors]
    done = len(latencies) - len(errors)
    finish = [s.finished_at for s in stats]
    print(f"{args.clients} clients x {args.jobs} jobs, {args.size}x{args.size}, {args.steps} steps, tiny SD1.x on CPU")
    print(f"completed {done}/{len(latencies)} jobs, {len(errors)} errors, in {wall:.1f}s")
    print(f"throughput {done / wall:.2f} jobs/s")
    print(f"latency p50 {statistics.median(latencies):.2f}s, p95 {percentile(latencies, 0.95):.2f}s, "
          f"max {max(latencies):.2f}s")
    print(f"clients finished between {min(finish):.1f}s and {max(finish):.1f}s (fair queue: close together)")
    for e in errors[:5]:
        print("error:", e)
    return 1 if errors or done != args.clients * args.jobs else 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--jobs", type=int, default=10, help="requests per client, one after another")
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--url", help="a running Easel (default: start one on a tiny model)")
    ap.add_argument("--auth", default="load:test:pw", help="USER:PASS (the password may contain ':')")
    ap.add_argument("--server-threads", type=int, help="torch/OpenMP threads of the started server")
    args = ap.parse_args()
    user, _, password = args.auth.partition(":")
    body = {"prompt": "a red circle on the left, blue background", "steps": args.steps,
            "width": args.size, "height": args.size, "sampler_name": "Euler a"}
    if args.url:
        stats, wall = asyncio.run(load(args.url, (user, password), args.clients, args.jobs, body))
    else:
        with local_server(args.auth, args.server_threads) as url:
            stats, wall = asyncio.run(load(url, (user, password), args.clients, args.jobs, body))
    return report(stats, wall, args)


if __name__ == "__main__":
    sys.exit(main())
