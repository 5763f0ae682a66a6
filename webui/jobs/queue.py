"""The job queue: one worker thread per device runs jobs one at a time, fairly between owners.

Every generation, from the UI or the API, becomes a `Job` with an id, an owner (the signed-in
user, or the browser session / API client) and the checkpoint it needs. The job carries its own
progress (step, total, ETA, latest latents for previews) and its own stop flag, so interrupting one
job never touches another; there is no global "state" object.

Order: round-robin between owners, each owner's own jobs first-in first-out. Within a round (every
owner with work gets one turn before anyone gets a second), an owner whose next job needs the
checkpoint that is already loaded goes first, which saves a model swap without making anyone wait
more than one round. Models are swapped by the jobs themselves, so a swap only ever happens
between two jobs, never during one.

Long jobs (many batches, videos, training) call `job.yield_turn()` between their units of work: if
another owner has a job waiting, the worker runs that one job right there, then the long job goes
on (it takes its model back first: the job in between may have swapped it away). So a short job
waits for one unit of a long job, not for all of it.
"""
from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Callable

import torch

from webui.errors import TooManyJobs

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

    run: Callable[["Job"], Any] | None  # the work; receives the job as its progress sink (dropped once done)
    description: str = ""
    owner: str = "anonymous"
    checkpoint: str | None = None  # the checkpoint the job will load; None = whatever is loaded
    work: float = 1.0  # what the job costs (megapixel-steps, from admission): fairness is counted in it
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    state: JobState = JobState.QUEUED
    step: int = 0
    total_steps: int = 0
    stage: str = "queued"
    result: Any = None
    error: str | None = None
    error_type: type[BaseException] | None = field(default=None, repr=False)  # the class only: no traceback kept
    created: float = field(default_factory=time.time)
    started: float | None = None
    finished: float | None = None
    latest_latents: torch.Tensor | None = field(default=None, repr=False)
    latent_family: str = "sd1"  # which latent space latest_latents are in (for previews)
    previewer: Callable[[torch.Tensor | None, str], Any] | None = field(default=None, repr=False)
    _stop: threading.Event = field(default_factory=threading.Event, repr=False)
    _done: threading.Event = field(default_factory=threading.Event, repr=False)
    _callbacks: list[Callable[["Job"], None]] = field(default_factory=list, repr=False)
    _callbacks_lock: threading.Lock = field(default_factory=threading.Lock, repr=False)
    _yielder: Callable[[], bool] | None = field(default=None, repr=False)  # set by the queue while it runs
    before_yield: list[Callable[[], None]] = field(default_factory=list, repr=False)  # e.g. release model pins

    # -- the ProgressSink the engine talks to ---------------------------------------------------
    def on_step(self, step: int, total_steps: int, latents: torch.Tensor | None = None) -> None:
        self.step, self.total_steps = step, total_steps
        self.stage = "sampling"
        self.latest_latents = latents

    def should_stop(self) -> bool:
        return self._stop.is_set()

    def preview_image(self):
        """A live preview of the latest latents (webui.images.preview), or None."""
        if self.previewer is None or self.latest_latents is None:
            return None
        return self.previewer(self.latest_latents, self.latent_family)

    def set_stage(self, text: str) -> None:
        self.stage = text

    def yield_turn(self) -> bool:
        """Let one queued job of another owner run now (on this worker, between two units of this job);
        True when one did."""
        return self._yielder() if self._yielder is not None else False

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

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def add_done_callback(self, callback: Callable[["Job"], None]) -> None:
        """Call `callback(job)` once the job has finished (at once if it already has).

        Lets async code (the HTTP API) await a job without parking a thread in `wait()`. The callback
        runs on the worker thread and must be quick (e.g. `loop.call_soon_threadsafe`).
        """
        with self._callbacks_lock:
            if not self._done.is_set():
                self._callbacks.append(callback)
                return
        callback(self)

    def _mark_done(self) -> None:
        with self._callbacks_lock:
            self._done.set()
            callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            try:
                callback(self)
            except Exception:  # a listener's bug must not take the worker down
                log.exception("done-callback of job %s failed", self.id)

    def progress_text(self, position: int = 0) -> str:
        """The job's state in words, the one way every view says it."""
        if self.state is JobState.QUEUED:
            return f"Waiting in queue (position {position})" if position else "Waiting in queue"
        if self.state is JobState.RUNNING:
            if self.total_steps:
                eta = self.eta_seconds
                eta_text = f", ETA {eta:.0f}s" if eta is not None else ""
                return f"{self.stage}: step {self.step}/{self.total_steps}{eta_text}"
            return self.stage
        return self.state.value


class FairOrder:
    """Which queued job runs next: round-robin between owners, same-checkpoint jobs first within a round,
    and turns counted in work.

    Work: every owner's jobs add their cost to what the owner has been served. An owner that has been
    served more than the least-served waiting owner's next job costs sits out until the others catch
    up, so someone queueing huge jobs does not get the same share of turns as someone queueing small
    ones. With jobs of equal cost this is plain round-robin. An owner who comes (back) starts level with
    the least served, so idle time is not banked.

    Not thread-safe by itself; `JobQueue` holds its lock around every call. Kept apart from the
    queue so the policy can be tested, and the predicted order (`plan`) shown, without a worker.
    """

    def __init__(self) -> None:
        self._queues: OrderedDict[str, deque[Job]] = OrderedDict()  # owner -> their jobs; order = rotation
        self._served: set[str] = set()  # owners who had their turn in the current round
        self.work: dict[str, float] = {}  # owner -> work served while they have had jobs
        self.loaded: str | None = None  # checkpoint of the last job that named one

    def __len__(self) -> int:
        return sum(len(q) for q in self._queues.values())

    def __contains__(self, job: Job) -> bool:
        return job in self._queues.get(job.owner, ())

    def add(self, job: Job) -> None:
        if job.owner not in self.work:  # (back) in line: level with the least served, no banked credit
            self.work[job.owner] = min((self.work[o] for o in self._queues if o in self.work), default=0.0)
        self._queues.setdefault(job.owner, deque()).append(job)

    def charge(self, owner: str, work: float) -> None:
        """Count work done for an owner (a job started; its cost)."""
        self.work[owner] = self.work.get(owner, 0.0) + work

    def forget(self, owner: str) -> None:
        """An owner with nothing queued or running leaves the accounting."""
        if owner not in self._queues:
            self.work.pop(owner, None)

    def remove(self, job: Job) -> bool:
        queue = self._queues.get(job.owner)
        if queue is None or job not in queue:
            return False
        queue.remove(job)
        if not queue:
            del self._queues[job.owner]
        return True

    def jobs(self) -> list[Job]:
        return [job for queue in self._queues.values() for job in queue]

    def pop(self, exclude: str | None = None) -> Job | None:
        """Take the next job to run and advance the round (`exclude`: not this owner's, for a turn given
        away by a running job of theirs)."""
        queues = self._queues if exclude is None else OrderedDict((o, q) for o, q in self._queues.items()
                                                                  if o != exclude)
        owner, new_round = self._next_owner(queues, self._served - {exclude}, self.loaded, self.work)
        if owner is None:
            return None
        if new_round:
            self._served.clear()
        self._served.add(owner)
        queue = self._queues.pop(owner)
        job = queue.popleft()
        if queue:
            self._queues[owner] = queue  # re-inserted: the owner moves to the back of the rotation
        if job.checkpoint is not None:
            self.loaded = job.checkpoint
        self.charge(owner, job.work)
        return job

    def plan(self) -> list[Job]:
        """All queued jobs in the order they will run if nothing else is submitted."""
        queues = OrderedDict((o, deque(q)) for o, q in self._queues.items())
        served, loaded, order, work = set(self._served), self.loaded, [], dict(self.work)
        while True:
            owner, new_round = self._next_owner(queues, served, loaded, work)
            if owner is None:
                return order
            if new_round:
                served.clear()
            served.add(owner)
            queue = queues.pop(owner)
            job = queue.popleft()
            if queue:
                queues[owner] = queue
            loaded = job.checkpoint if job.checkpoint is not None else loaded
            work[owner] = work.get(owner, 0.0) + job.work
            order.append(job)

    @staticmethod
    def _next_owner(
        queues: OrderedDict[str, deque[Job]], served: set[str], loaded: str | None, work: dict[str, float]
    ) -> tuple[str | None, bool]:
        """(owner whose turn it is, whether that starts a new round)."""
        owners = [o for o, q in queues.items() if q]
        if not owners:
            return None, False
        least = min(owners, key=lambda o: work.get(o, 0.0))
        allowance = work.get(least, 0.0) + queues[least][0].work  # more served than this: sit this one out
        owners = [o for o in owners if work.get(o, 0.0) <= allowance]
        waiting = [o for o in owners if o not in served]
        new_round = not waiting
        candidates = owners if new_round else waiting
        for owner in candidates:
            wanted = queues[owner][0].checkpoint
            if wanted is not None and wanted == loaded:
                return owner, new_round
        return candidates[0], new_round


class JobQueue:
    """Fair queue with one worker thread (the one device's). Thread-safe.

    Each owner may have `max_queued` jobs waiting (None: any number); each keeps their last
    `keep_finished` finished jobs, so no one's flood of jobs pushes another's results out."""

    def __init__(self, name: str = "easel-worker", keep_finished: int = 50, max_queued: int | None = None,
                 after_each: Callable[[], Any] | None = None):
        self._cond = threading.Condition()
        self._order = FairOrder()
        self._jobs: dict[str, Job] = {}
        self._finished: dict[str, deque[str]] = {}  # owner -> their finished job ids, oldest first
        self._keep_finished = keep_finished
        self.max_queued = max_queued
        self.after_each = after_each  # called on the worker after every job (Easel: give freed memory back)
        self._running: list[Job] = []  # the job running, and the one that gave it its turn (if any)
        self._closed = False
        self._worker = threading.Thread(target=self._work, name=name, daemon=True)
        self._worker.start()

    def submit(self, job: Job) -> Job:
        with self._cond:
            if self._closed:
                raise RuntimeError("the job queue is shut down")
            if self.max_queued is not None:
                waiting = sum(1 for j in self._order.jobs() if j.owner == job.owner)
                if waiting >= self.max_queued:
                    raise TooManyJobs(f"{waiting} of your jobs are already waiting (at most {self.max_queued} on "
                                      "this server); wait for one to finish or interrupt one")
            self._jobs[job.id] = job
            self._order.add(job)
            self._cond.notify_all()
        return job

    def get(self, job_id: str) -> Job | None:
        with self._cond:
            return self._jobs.get(job_id)

    def position(self, job: Job) -> int:
        """0 = running (or finished), 1 = next in line, …"""
        with self._cond:
            try:
                return self._order.plan().index(job) + 1
            except ValueError:
                return 0

    @property
    def current(self) -> Job | None:
        """The job running on the worker now."""
        with self._cond:
            return self._running[-1] if self._running else None

    def running(self) -> list[Job]:
        """Every job started and not finished: the one running, and one that gave it its turn."""
        with self._cond:
            return list(self._running)

    def pending(self) -> list[Job]:
        """Queued jobs in the order they are expected to run."""
        with self._cond:
            return self._order.plan()

    def jobs_of(self, owner: str) -> list[Job]:
        """The owner's known jobs (queued, running and recently finished), oldest first."""
        with self._cond:
            return sorted((j for j in self._jobs.values() if j.owner == owner), key=lambda j: j.created)

    def interrupt(self, job_id: str, *, by: str | None = None, admin: bool = False) -> bool:
        """Stop one job: a queued job is dropped, a running one stops at its next step.

        With `by` (the requesting owner), only that owner's jobs may be stopped unless `admin`:
        anyone else's raises PermissionError. Returns False when the job is unknown.
        """
        with self._cond:
            job = self._jobs.get(job_id)
            if job is None:
                return False
            if by is not None and not admin and job.owner != by:
                raise PermissionError(f"job {job_id} belongs to another user")
            job.interrupt()
            if self._order.remove(job):
                self._finish(job, JobState.INTERRUPTED)
            return True

    def shutdown(self, timeout: float = 5.0) -> None:
        with self._cond:
            self._closed = True
            for job in self._order.jobs():
                job.interrupt()
                self._order.remove(job)
                self._finish(job, JobState.INTERRUPTED)
            for job in self._running:
                job.interrupt()
            self._cond.notify_all()
        self._worker.join(timeout)

    def _finish(self, job: Job, state: JobState) -> None:
        job.state = state
        job.finished = time.time()
        job.latest_latents = None
        job.run = None  # the work's closure holds the request and its decoded inputs: let them go
        job.before_yield.clear()
        mine = self._finished.setdefault(job.owner, deque())
        mine.append(job.id)
        while len(mine) > self._keep_finished:
            self._jobs.pop(mine.popleft(), None)
        if not any(j.owner == job.owner for j in self._running if j is not job):
            self._order.forget(job.owner)
        job._mark_done()

    def _work(self) -> None:
        while True:
            with self._cond:
                while not len(self._order) and not self._closed:
                    self._cond.wait()
                job = self._order.pop()
                if job is None:  # closed and drained
                    return
            self._execute(job, may_yield=True)

    def _give_turn(self, running: Job) -> bool:
        """Called by a running job between its units: run one waiting job of another owner, now."""
        with self._cond:
            if self._closed or len(self._running) != 1 or self._running[0] is not running:
                return False
            other = self._order.pop(exclude=running.owner)
        if other is None:
            return False
        for release in running.before_yield:
            release()
        log.info("job %s (%s) gives job %s (%s) a turn", running.id, running.owner, other.id, other.owner)
        self._execute(other, may_yield=False)
        return True

    def _execute(self, job: Job, may_yield: bool) -> None:
        with self._cond:
            self._running.append(job)
            job.state = JobState.RUNNING
            job.started = time.time()
            job.stage = "starting"
        if may_yield:
            job._yielder = lambda: self._give_turn(job)
        state = JobState.DONE
        try:
            job.result = job.run(job)
            if job.interrupted:
                state = JobState.INTERRUPTED
        except Exception as e:  # a job's failure must never take the worker down
            log.exception("job %s failed", job.id)
            job.error = f"{e}" or type(e).__name__
            job.error_type = type(e)
            state = JobState.FAILED
        finally:
            job._yielder = None
        with self._cond:
            self._running.remove(job)
            self._finish(job, state)
        if self.after_each is not None:
            try:
                self.after_each()
            except Exception:
                log.exception("the after-job step failed")
