"""The front end's side of the Ray workers: `RayWorker` is one actor as the job queue's `Worker`, `RayPool`
starts (or joins) the cluster and keeps the workers coming.

A job reaches an actor as its kind and typed request (`Job.remote`); while it runs, the dispatching thread
here polls the actor for progress (step, stage, latents for live previews), passes an interrupt on, and
watches for faults: an actor that dies (Ray raises `RayActorError`), stops answering, or shows no progress
for `--worker-timeout` seconds is killed and reported lost (`WorkerLost`), and the queue gives its job to
another worker once. What comes back is saved here, by the job's `finish`, so it is saved exactly once,
whichever worker made it. An actor that cannot load a checkpoint (`ModelError`) says so
(`NotOnThisWorker`) and goes on taking other jobs.
"""
from __future__ import annotations

import itertools
import logging
import os
import threading
import time
from typing import Any

import torch

from webui.jobs.queue import Job, JobQueue, NotOnThisWorker, WorkerLost
from webui.models.errors import ModelError
from webui.settings import REPO_ROOT, Settings

from .process import WorkerProcess

log = logging.getLogger(__name__)

MISSING = ("--workers ray needs Ray, an optional install: .venv/bin/pip install -r requirements-ray.txt "
           "(see the README, 'Many GPUs')")


def import_ray():
    try:
        import ray
    except ImportError as e:
        raise SystemExit(f"{MISSING} ({e})") from e
    return ray


class RayWorker:
    """One Ray actor (a `WorkerProcess`) as a worker of the job queue."""

    may_yield = False

    def __init__(self, ray, handle, worker_id: str, timeout: float, poll: float = 0.1):
        self._ray = ray
        self.handle = handle
        self.id = worker_id
        self.timeout = timeout
        self.poll = poll
        self._alive = True
        self._models: list[str] = []
        self._device = "starting"

    def start(self, timeout: float) -> "RayWorker":
        """Wait until the actor has built its runtime (seconds to minutes: imports, the device)."""
        described = self._ray.get(self.handle.describe.remote(), timeout=timeout)
        self._device, self._models = described["device"], described["models"]
        self.pid = described["pid"]
        return self

    @property
    def alive(self) -> bool:
        return self._alive

    def accepts(self, job: Job) -> bool:
        return job.remote is not None

    def holds(self) -> list[str]:
        return self._models

    def describe(self) -> dict[str, Any]:
        return {"device": self._device, "models": list(self._models)}

    def execute(self, job: Job) -> Any:
        ray, work = self._ray, job.remote
        ref = self.handle.run.remote(job.id, work.kind, work.request, job.owner)
        seen, moved, told = (-1, ""), time.monotonic(), False
        while not ray.wait([ref], timeout=self.poll)[0]:
            if job.should_stop() and not told:
                self.handle.interrupt.remote(job.id)
                told = True
            try:
                state = ray.get(self.handle.progress.remote(job.id, job.step), timeout=self.timeout)
            except ray.exceptions.GetTimeoutError:
                self._lose(f"stopped answering for {self.timeout:g} s")
            except ray.exceptions.RayActorError as e:
                raise self._lost("died during the job") from e
            if state is not None:
                job.step, job.total_steps, job.stage = state["step"], state["total"], state["stage"]
                job.latent_family = state["family"]
                if state["latents"] is not None:
                    job.latest_latents = state["latents"]
                if (state["step"], state["stage"]) != seen:
                    seen, moved = (state["step"], state["stage"]), time.monotonic()
            if time.monotonic() - moved > self.timeout:
                self._lose(f"showed no progress for {self.timeout:g} s")
        try:
            made, self._models = ray.get(ref)
        except ray.exceptions.RayActorError as e:
            raise self._lost("died during the job") from e
        except ray.exceptions.RayTaskError as e:
            cause = e.cause if getattr(e, "cause", None) is not None else e
            if isinstance(cause, ModelError):
                raise NotOnThisWorker(f"worker {self.id} could not load the model: {cause}") from cause
            raise cause from None
        return work.finish(job, made)

    def _lost(self, why: str) -> WorkerLost:
        self._alive = False
        return WorkerLost(f"worker {self.id} {why}")

    def _lose(self, why: str) -> None:
        """A hung actor: stop it (its GPU goes back to the cluster) and report it lost."""
        error = self._lost(why)
        try:
            self._ray.kill(self.handle, no_restart=True)
        except Exception:
            log.exception("could not kill worker %s", self.id)
        raise error


class RayPool:
    """Starts a local Ray cluster (or joins `--ray-address`) and keeps the queue's Ray workers at the wanted
    number: `--ray-workers N`, else one per GPU the cluster has, checked every few seconds, so a host that
    joins later adds workers and a lost worker is replaced."""

    def __init__(self, settings: Settings, queue: JobQueue, start_timeout: float = 600.0, every: float = 5.0,
                 cpus: int | None = None):
        self.settings = settings
        self.cpus = cpus  # CPU slots of a local cluster (default: this machine's cores, at least --ray-workers)
        self.queue = queue
        self.start_timeout = start_timeout
        self.every = every
        self._ray = None
        self._workers: list[RayWorker] = []
        self._names = itertools.count(1)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._started_cluster = False

    def start(self, wait: bool = False) -> "RayPool":
        """Connect (or start the cluster), then start the workers in the background (`wait`: here)."""
        ray = self._ray = import_ray()
        os.environ["RAY_USAGE_STATS_ENABLED"] = "0"  # Ray would otherwise report usage over the network
        if not ray.is_initialized():
            env = {"env_vars": {"PYTHONPATH": str(REPO_ROOT), "RAY_USAGE_STATS_ENABLED": "0"}}
            if self.settings.ray_address:
                ray.init(address=self.settings.ray_address, runtime_env=env, logging_level=logging.WARNING)
            else:
                cpus = self.cpus or max(os.cpu_count() or 1, self.settings.ray_workers)
                ray.init(num_cpus=cpus, include_dashboard=False,
                         runtime_env=env, logging_level=logging.WARNING)
                self._started_cluster = True
        if wait:
            self.fill()
        self._thread = threading.Thread(target=self._watch, name="easel-ray-pool", daemon=True)
        self._thread.start()
        return self

    def wanted(self) -> int:
        if self.settings.ray_workers:
            return self.settings.ray_workers
        return max(1, int(self._ray.cluster_resources().get("GPU", 0)))

    def gpus(self) -> bool:
        return self._ray.cluster_resources().get("GPU", 0) > 0

    def workers(self) -> list[RayWorker]:
        with self._lock:
            return [w for w in self._workers if w.alive]

    def add_worker(self) -> RayWorker:
        """Start one more worker and give it to the queue (a worker that joins takes jobs from now on)."""
        gpu = self.gpus()
        name = f"ray-{next(self._names)}"
        actor = self._ray.remote(num_gpus=1 if gpu else 0, num_cpus=0 if gpu else 1, max_concurrency=4,
                                 max_restarts=0)(WorkerProcess)
        # CPU workers use as many threads as this process: oneDNN's sums depend on the thread count, and a
        # seed should give the same picture whichever worker makes it
        threads = 0 if gpu else torch.get_num_threads()
        handle = actor.options(name=f"easel-{os.getpid()}-{name}").remote(self.settings, name, gpu, threads)
        worker = RayWorker(self._ray, handle, name, self.settings.worker_timeout).start(self.start_timeout)
        with self._lock:
            self._workers.append(worker)
        self.queue.add_worker(worker)
        log.info("worker %s joined: %s", name, worker.describe()["device"])
        return worker

    def fill(self) -> None:
        """Start workers until there are as many as wanted."""
        while not self._stop.is_set() and len(self.workers()) < self.wanted():
            try:
                self.add_worker()
            except Exception as e:
                log.error("could not start a Ray worker: %s", e)
                return

    def check(self) -> None:
        """Ask every worker how it is, all at once: one that died, or that does not answer within
        `--worker-timeout` (hung while idle), is stopped and dropped (the queue forgets it; `fill` replaces it)."""
        ray = self._ray
        asked = {worker.handle.describe.remote(): worker for worker in self.workers()}
        if not asked:
            return
        ready, late = ray.wait(list(asked), num_returns=len(asked), timeout=self.settings.worker_timeout)
        for ref in ready:
            worker = asked[ref]
            try:
                worker._models = ray.get(ref)["models"]
            except ray.exceptions.RayActorError:
                log.warning("worker %s is gone", worker.id)
                worker._alive = False
        for ref in late:
            try:
                asked[ref]._lose(f"stopped answering for {self.settings.worker_timeout:g} s")
            except WorkerLost as e:
                log.warning("%s", e)

    def _watch(self) -> None:
        while not self._stop.is_set():
            try:
                self.check()
                self.fill()
            except Exception:
                log.exception("the Ray worker pool's check failed")
            self._stop.wait(self.every)

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        with self._lock:
            workers, self._workers = self._workers, []
        for worker in workers:
            worker._alive = False
            try:
                self._ray.kill(worker.handle, no_restart=True)
            except Exception:
                pass
        if self._started_cluster:
            self._ray.shutdown()
