"""One remote worker process (the body of a Ray actor; nothing here imports Ray).

It builds its own `Runtime` from the front end's settings on the device Ray gave it (a GPU, or the CPU),
loads the same extensions, and runs jobs of the portable kinds (txt2img, img2img, outpaint, load) one at
a time: `run` returns what was made (images and infotexts, no file is written here), `progress` and
`interrupt` are answered from other threads of the actor while a job runs (Ray's threaded actors).
"""
from __future__ import annotations

import dataclasses
import logging
import os
import socket
import threading
from typing import Any

import torch

from webui.extensions.loader import load_extensions
from webui.generation.engine import GenerationResult
from webui.jobs.queue import Job
from webui.memory import release_freed_memory
from webui.models.catalog import HashCache
from webui.options import OptionRegistry
from webui.runtime import ModelLease, Runtime
from webui.settings import Settings, pick_dtype

log = logging.getLogger(__name__)


def worker_settings(settings: Settings, worker_id: str, gpu: bool) -> Settings:
    """The front end's settings as a worker uses them: its own device and dtype, no logins, and its own
    cache folder (the model folders are shared: every worker reads the same files)."""
    device = torch.device("cuda") if gpu and torch.cuda.is_available() else torch.device("cpu")
    return dataclasses.replace(settings, device=device, dtype=pick_dtype(settings.precision, False, device),
                               ui_credentials={}, api_credentials={}, admin_users=(), cmd_flags={},
                               workers="local")


class WorkerProcess:
    def __init__(self, settings: Settings, worker_id: str, gpu: bool, threads: int = 0):
        logging.basicConfig(level=logging.INFO, format=f"%(asctime)s %(levelname)s {worker_id} %(name)s: %(message)s")
        if threads > 0:
            torch.set_num_threads(threads)
        self.id = worker_id
        self.settings = worker_settings(settings, worker_id, gpu)
        own = self.settings.cache_dir / "workers" / f"{socket.gethostname()}-{worker_id}"
        own.mkdir(parents=True, exist_ok=True)
        self.runtime = Runtime.create(self.settings, hashes=HashCache(own / "hashes.json"))
        load_extensions(self.settings, self.runtime.features, OptionRegistry())
        self._jobs: dict[str, Job] = {}
        self._lock = threading.Lock()
        log.info("worker %s ready on %s (%s)", worker_id, self.settings.device, self.settings.dtype)

    def describe(self) -> dict[str, Any]:
        name = torch.cuda.get_device_name() if self.settings.device.type == "cuda" else "CPU"
        return {"device": f"{socket.gethostname()} {self.settings.device} ({name})", "pid": os.getpid(),
                "models": self.runtime.loaded_names()}

    def run(self, job_id: str, kind: str, request: Any, owner: str) -> tuple[Any, list[str]]:
        """Run one job; (what it made, the checkpoints this worker holds afterwards). Errors travel back as
        they are (Ray re-raises them in the front end)."""
        job = Job(run=None, description=kind, owner=owner, id=job_id)
        with self._lock:
            self._jobs[job_id] = job
        lease = ModelLease(self.runtime, job)
        try:
            made = self.runtime.run(kind, request, job, lease)
        finally:
            lease.release()
            with self._lock:
                self._jobs.pop(job_id, None)
            release_freed_memory()
        if isinstance(made, GenerationResult):  # the front end keeps no decoded inputs either
            made.request = made.request.without_images()
        return made, self.runtime.loaded_names()

    def progress(self, job_id: str, seen_step: int) -> dict[str, Any] | None:
        """The job's step, stage and (when the step moved past `seen_step`) latest latents, for previews."""
        with self._lock:
            job = self._jobs.get(job_id)
        if job is None:
            return None
        latents = job.latest_latents if job.step != seen_step else None
        return {"step": job.step, "total": job.total_steps, "stage": job.stage, "family": job.latent_family,
                "latents": latents.detach().to("cpu", torch.float16) if latents is not None else None}

    def interrupt(self, job_id: str) -> bool:
        with self._lock:
            job = self._jobs.get(job_id)
        if job is not None:
            job.interrupt()
        return job is not None
