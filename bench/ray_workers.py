"""Ray workers against the in-process worker: throughput, latency and the cost of dispatch.

A burst of txt2img jobs from four owners (the tests' tiny architecture, random weights, on CPU) goes through
Easel's one queue, first to the in-process worker, then to 1, 2 and 4 Ray workers (`--workers ray`, a local
cluster started here). For each: jobs per second over the burst and the 95th-percentile latency (queued to
saved). Then the dispatch overhead: one tiny one-step job at a time, the median time from submit to saved
on one Ray worker minus the same on the in-process worker.

Every worker uses as many torch threads as this process (so a seed gives the same picture anywhere); on a
machine with C cores, run with `--threads 1` to give each of C workers one core.

    python bench/ray_workers.py [--jobs 16] [--workers 1 2 4] [--threads 1] [--size 128] [--steps 12]
    python bench/ray_workers.py --device cuda --workers 1 2 4 8   (a GPU machine: one worker per GPU)
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

import torch  # noqa: E402

import webui  # noqa: E402,F401  (offline switches first)
from tiny_models import build_tiny_sd, write_safetensors  # noqa: E402
from webui.generation.requests import Txt2ImgRequest  # noqa: E402
from webui.services import Easel  # noqa: E402
from webui.settings import settings_from_args  # noqa: E402

OWNERS = ("ann", "ben", "cat", "dan")


def burst(easel: Easel, jobs: int, size: int, steps: int) -> tuple[float, float]:
    """(jobs per second, p95 latency in s) for `jobs` jobs submitted at once by four owners."""
    start = time.perf_counter()
    submitted = [easel.submit("txt2img", Txt2ImgRequest(prompt=f"a red square {i}", steps=steps, width=size,
                                                        height=size, seed=i, checkpoint="tiny.safetensors"),
                              owner=OWNERS[i % len(OWNERS)]) for i in range(jobs)]
    for job in submitted:
        assert job.wait(600) and job.finished_ok, job.error
    took = time.perf_counter() - start
    latencies = sorted(job.finished - job.created for job in submitted)
    return jobs / took, latencies[max(0, int(round(0.95 * len(latencies))) - 1)]


def one_by_one(easel: Easel, count: int) -> float:
    """Median seconds from submit to saved for a 1-step 64×64 job, one at a time."""
    times = []
    for i in range(count):
        start = time.perf_counter()
        job = easel.submit("txt2img", Txt2ImgRequest(prompt="a dot", steps=1, width=64, height=64, seed=i,
                                                     checkpoint="tiny.safetensors"), owner="ann")
        assert job.wait(120) and job.finished_ok, job.error
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def front(data: Path, models: Path, device: str, *flags: str) -> Easel:
    return Easel.create(settings_from_args(["--data-dir", str(data), "--ckpt-dir", str(models), "--device", device,
                                            "--skip-load-model-at-start", *flags]))


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--jobs", type=int, default=16)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2, 4])
    ap.add_argument("--threads", type=int, default=0, help="torch threads here and in each worker (0: as is)")
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--single", type=int, default=15, help="one-at-a-time jobs for the dispatch overhead")
    ap.add_argument("--device", default="cpu", help="the in-process worker's device (cuda on a GPU machine, where "
                                                    "each Ray worker then takes one GPU)")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    from webui.workers.ray_pool import RayPool

    figures: dict = {}
    with tempfile.TemporaryDirectory() as tmp:
        models = Path(tmp) / "models"
        write_safetensors(build_tiny_sd(seed=0), models / "tiny.safetensors",
                          metadata={"modelspec.resolution": "64x64"})
        easel = front(Path(tmp) / "local", models, args.device)
        try:
            one_by_one(easel, 2)  # warm: the model loaded, first-call costs paid
            local = burst(easel, args.jobs, args.size, args.steps)
            local_single = one_by_one(easel, args.single)
        finally:
            easel.close()
        print(f"in-process: {local[0]:.2f} jobs/s, p95 {local[1]:.2f} s; one tiny job {local_single * 1000:.1f} ms"
              f" (torch threads {torch.get_num_threads()})", flush=True)
        figures["local"] = {"jobs_per_s": local[0], "p95_s": local[1], "single_s": local_single}
        for n in args.workers:
            easel = front(Path(tmp) / f"ray{n}", models, args.device, "--workers", "ray", "--ray-workers", str(n))
            pool = RayPool(easel.settings, easel.queue, cpus=max(n, 1)).start(wait=True)
            try:
                for _ in range(n):
                    one_by_one(easel, 2)
                burst(easel, 2 * n, args.size, args.steps)  # every worker warm
                made = burst(easel, args.jobs, args.size, args.steps)
                single = one_by_one(easel, args.single) if n == 1 else None
            finally:
                easel.queue.shutdown()
                pool.close()
                easel.close()
            figures[f"ray{n}"] = {"jobs_per_s": made[0], "p95_s": made[1], "single_s": single}
            line = (f"{n} Ray worker(s): {made[0]:.2f} jobs/s ({made[0] / local[0]:.2f}× in-process), "
                    f"p95 {made[1]:.2f} s ({made[1] / local[1]:.2f}×)")
            if single is not None:
                line += f"; dispatch overhead {(single - local_single) * 1000:.1f} ms per job"
            print(line, flush=True)
    one = figures.get("ray1")
    for n in args.workers:
        if one and n != 1:
            print(f"{n} workers / 1 worker: {figures[f'ray{n}']['jobs_per_s'] / one['jobs_per_s']:.2f}× jobs/s")
    return figures


if __name__ == "__main__":
    main()
