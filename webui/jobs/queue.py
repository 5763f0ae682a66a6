"""The job queue: one worker thread per device runs jobs one at a time, in submission order.

Every generation, from the UI or the API, becomes a `Job` with an id. The job carries its own
progress (step, total, ETA, latest latents for previews) and its own stop flag, so interrupting one
job never touches another; there is no global "state" object. The later multi-user work adds
owners and fair ordering here, not a second mechanism.
"""
from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import deque
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Callable

import torch

log = logging.getLogger(__name__)


class JobState(str, Enum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"
    INTERRUPTED = "interrupted"


@dataclass
class Job:
    """One unit of work and everything a client may ask about it."""

    run: Callable[["Job"], Any]  # the work; receives the job as its progress sink
    description: str = ""
    owner: str = "anonymous"
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    state: JobState = JobState.QUEUED
    step: int = 0
    total_steps: int = 0
    stage: str = "queued"
    result: Any = None
    error: str | None = None
    created: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None
    latest_latents: torch.Tensor | None = field(default=None, repr=False)
    _stop: threading.Event = field(default_factory=threading.Event, repr=False)
    _done: threading.Event = field(default_factory=threading.Event, repr=False)

    # -- the ProgressSink the engine talks to ---------------------------------------------------
    def on_step(self, step: int, total_steps: int, latents: torch.Tensor | None = None) -> None:
        self.step, self.total_steps = step, total_steps
        self.stage = "sampling"
        self.latest_latents = latents

    def should_stop(self) -> bool:
        return self._stop.is_set()

    def set_stage(self, text: str) -> None:
        self.stage = text

    # -- what clients use -------------------------------------------------------------------------
    def interrupt(self) -> None:
        self._stop.set()

    @property
    def interrupted(self) -> bool:
        return self._stop.is_set()

    @property
    def progress(self) -> float:
        if self.state in (JobState.DONE, JobState.FAILED, JobState.INTERRUPTED):
            return 1.0
        return self.step / self.total_steps if self.total_steps else 0.0

    @property
    def eta_seconds(self) -> float | None:
        """Remaining time from the rate so far; None until a step has been timed."""
        if self.state is not JobState.RUNNING or not self.started or self.step <= 0 or not self.total_steps:
            return None
        elapsed = time.time() - self.started
        return elapsed / self.step * (self.total_steps - self.step)

    @property
    def finished_ok(self) -> bool:
        return self.state is JobState.DONE

    def wait(self, timeout: float | None = None) -> bool:
        return self._done.wait(timeout)

    def progress_text(self) -> str:
        if self.state is JobState.QUEUED:
            return "waiting in queue"
        if self.state is JobState.RUNNING:
            if self.total_steps:
                eta = self.eta_seconds
                eta_text = f", ETA {eta:.0f}s" if eta is not None else ""
                return f"{self.stage}: step {self.step}/{self.total_steps}{eta_text}"
            return self.stage
        return self.state.value


class JobQueue:
    """FIFO queue with one worker thread (the one device's). Thread-safe."""

    def __init__(self, name: str = "easel-worker", keep_finished: int = 200):
        self._cond = threading.Condition()
        self._pending: deque[Job] = deque()
        self._jobs: dict[str, Job] = {}
        self._finished_order: deque[str] = deque()
        self._keep_finished = keep_finished
        self._current: Job | None = None
        self._closed = False
        self._worker = threading.Thread(target=self._work, name=name, daemon=True)
        self._worker.start()

    def submit(self, job: Job) -> Job:
        with self._cond:
            if self._closed:
                raise RuntimeError("the job queue is shut down")
            self._jobs[job.id] = job
            self._pending.append(job)
            self._cond.notify_all()
        return job

    def get(self, job_id: str) -> Job | None:
        with self._cond:
            return self._jobs.get(job_id)

    def position(self, job: Job) -> int:
        """0 = running (or finished), 1 = next in line, …"""
        with self._cond:
            try:
                return self._pending.index(job) + 1
            except ValueError:
                return 0

    @property
    def current(self) -> Job | None:
        with self._cond:
            return self._current

    def pending(self) -> list[Job]:
        with self._cond:
            return list(self._pending)

    def interrupt(self, job_id: str) -> bool:
        """Stop one job: a queued job is dropped, a running one stops at its next step."""
        with self._cond:
            job = self._jobs.get(job_id)
            if job is None:
                return False
            job.interrupt()
            if job in self._pending:
                self._pending.remove(job)
                self._finish(job, JobState.INTERRUPTED)
            return True

    def shutdown(self, timeout: float = 5.0) -> None:
        with self._cond:
            self._closed = True
            for job in list(self._pending):
                job.interrupt()
                self._finish(job, JobState.INTERRUPTED)
            self._pending.clear()
            if self._current is not None:
                self._current.interrupt()
            self._cond.notify_all()
        self._worker.join(timeout)

    def _finish(self, job: Job, state: JobState) -> None:
        job.state = state
        job.finished = time.time()
        job.latest_latents = None
        job._done.set()
        self._finished_order.append(job.id)
        while len(self._finished_order) > self._keep_finished:
            self._jobs.pop(self._finished_order.popleft(), None)

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._closed:
                    self._cond.wait()
                if self._closed and not self._pending:
                    return
                job = self._pending.popleft()
                self._current = job
                job.state = JobState.RUNNING
                job.started = time.time()
                job.stage = "starting"
            state = JobState.DONE
            try:
                job.result = job.run(job)
                if job.interrupted:
                    state = JobState.INTERRUPTED
            except Exception as e:  # a job's failure must never take the worker down
                log.exception("job %s failed", job.id)
                job.error = f"{e}" or type(e).__name__
                state = JobState.FAILED
            with self._cond:
                self._current = None
                self._finish(job, state)


