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

Workers: the queue hands jobs to one or more `Worker`s, each with its own thread here. By default that
is one `LocalWorker`, this process's device. Remote workers (webui/workers: Ray actors, one per GPU) take
the jobs that can travel (`Job.remote`); a free worker takes the next job in the fair order that it can
run, leaving a job whose checkpoint another free worker already holds to that worker (model affinity). A
worker that is lost mid-job (`WorkerLost`: died, hung) has the job put back at the head of its owner's
line once, for another worker; one that cannot run a job (`NotOnThisWorker`: cannot load its checkpoint)
passes it to the workers that have not tried it yet.
"""
from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Callable, Collection, Protocol

import torch

from webui.errors import TooManyJobs

log = logging.getLogger(__name__)


class WorkerLost(Exception):
    """The worker died or stopped answering during a job; the job may run again elsewhere."""


class NotOnThisWorker(Exception):
    """This worker cannot run the job (e.g. it cannot load the checkpoint); another may."""


@dataclass
class RemoteWork:
    """A job in a form that can run in another process: its kind and typed request (picklable), and what
    this process does with the result there (save it, fire the image-saved event)."""

    kind: str
    request: Any
    finish: Callable[["Job", Any], Any] = field(repr=False)


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
    remote: RemoteWork | None = field(default=None, repr=False)  # set when the job can run on a remote worker
    worker: str | None = None  # the worker running (or that ran) it
    tried: set[str] = field(default_factory=set, repr=False)  # workers that could not run it or were lost
    lost: int = 0  # times its worker was lost mid-job
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

    def add(self, job: Job, first: bool = False) -> None:
        """Queue a job at the end of its owner's line (`first`: at its head, for a job put back)."""
        if job.owner not in self.work:  # (back) in line: level with the least served, no banked credit
            self.work[job.owner] = min((self.work[o] for o in self._queues if o in self.work), default=0.0)
        queue = self._queues.setdefault(job.owner, deque())
        queue.appendleft(job) if first else queue.append(job)

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

    def pop(self, exclude: str | None = None, accept: Callable[[Job], bool] | None = None,
            loaded: Collection[str] | None = None) -> Job | None:
        """Take the next job to run and advance the round. `exclude`: not this owner's (a turn given away by
        a running job of theirs); `accept`: only a job this passes (what the asking worker can run: each
        owner's next job is considered, never one behind it); `loaded`: the checkpoints the asking worker
        holds (default: the last one a job named)."""
        queues = OrderedDict((o, q) for o, q in self._queues.items()
                             if o != exclude and q and (accept is None or accept(q[0])))
        held = (self.loaded,) if loaded is None else loaded
        owner, new_round = self._next_owner(queues, self._served - {exclude}, held, self.work)
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
            owner, new_round = self._next_owner(queues, served, (loaded,), work)
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
        queues: OrderedDict[str, deque[Job]], served: set[str], loaded: Collection[str | None],
        work: dict[str, float]
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
            if wanted is not None and wanted in loaded:
                return owner, new_round
        return candidates[0], new_round


class Worker(Protocol):
    """Where jobs run. `execute` runs one job and returns its result (raising `WorkerLost` or
    `NotOnThisWorker` when the job should go elsewhere); `holds` names the checkpoints it has loaded
    (for affinity; None: the fair order's own memory of the last one) and must be quick: the queue asks
    under its lock."""

    id: str
    may_yield: bool  # its jobs may give other owners a turn on it (in-process only)

    @property
    def alive(self) -> bool: ...

    def accepts(self, job: Job) -> bool: ...

    def holds(self) -> Collection[str] | None: ...

    def execute(self, job: Job) -> Any: ...

    def describe(self) -> dict[str, Any]: ...


class LocalWorker:
    """This process's device: runs a job's own `run`. With `remote_jobs=False` it leaves the jobs that can
    travel (`Job.remote`) to remote workers and runs only the others (zoom, travel, training, merges…)."""

    id = "local"
    may_yield = True
    alive = True

    def __init__(self, device: str = "", models: Callable[[], list[str]] = list, remote_jobs: bool = True,
                 after_each: Callable[[], Any] | None = None):
        self.device = device
        self._models = models
        self.remote_jobs = remote_jobs
        self.after_each = after_each  # after every job (Easel: give freed memory back to the system)

    def accepts(self, job: Job) -> bool:
        return self.remote_jobs or job.remote is None

    def busy(self, queue: "JobQueue") -> bool:
        """Whether this process's device is running a job now (a Ray worker's jobs use another device)."""
        return any(job.worker == self.id for job in queue.current_jobs())

    def holds(self) -> None:
        return None  # one worker: the order's memory of the last checkpoint is what this device holds

    def execute(self, job: Job) -> Any:
        try:
            return job.run(job)
        finally:
            if self.after_each is not None:
                try:
                    self.after_each()
                except Exception:
                    log.exception("the after-job step failed")

    def describe(self) -> dict[str, Any]:
        return {"device": self.device, "models": self._models()}


@dataclass(eq=False)
class WorkerSlot:
    """A worker as the queue sees it: its thread, what it runs now, and its record."""

    worker: Worker
    running: list[Job] = field(default_factory=list)  # the job running, and the one that gave it its turn
    jobs_done: int = 0
    errors: int = 0
    thread: threading.Thread | None = field(default=None, repr=False)

    def status(self) -> dict[str, Any]:
        described = self.worker.describe()
        return {"id": self.worker.id, "device": described.get("device", ""), "models": described.get("models", []),
                "current_job": self.running[-1].id if self.running else None, "jobs_done": self.jobs_done,
                "errors": self.errors, "alive": self.worker.alive}


class JobQueue:
    """Fair queue feeding one or more workers (by default the one in-process worker). Thread-safe.

    Each owner may have `max_queued` jobs waiting (None: any number); each keeps their last
    `keep_finished` finished jobs, so no one's flood of jobs pushes another's results out."""

    def __init__(self, name: str = "easel-worker", keep_finished: int = 50, max_queued: int | None = None,
                 after_each: Callable[[], Any] | None = None, workers: list[Worker] | None = None):
        self._cond = threading.Condition()
        self._order = FairOrder()
        self._jobs: dict[str, Job] = {}
        self._finished: dict[str, deque[str]] = {}  # owner -> their finished job ids, oldest first
        self._keep_finished = keep_finished
        self.max_queued = max_queued
        self._name = name
        self._slots: list[WorkerSlot] = []
        self._closed = False
        for worker in workers if workers is not None else [LocalWorker(after_each=after_each)]:
            self.add_worker(worker)

    # -- workers ---------------------------------------------------------------------------------
    def add_worker(self, worker: Worker) -> None:
        """A worker that starts taking jobs now (one that joined late, or replaces a lost one)."""
        slot = WorkerSlot(worker)
        slot.thread = threading.Thread(target=self._work, args=(slot,), name=f"{self._name}-{worker.id}",
                                       daemon=True)
        with self._cond:
            if self._closed:
                raise RuntimeError("the job queue is shut down")
            self._slots.append(slot)
            self._cond.notify_all()
        slot.thread.start()

    def workers(self) -> list[dict[str, Any]]:
        """Each worker's id, device, models, current job, jobs done and errors (GET /easel/v1/workers)."""
        with self._cond:
            slots = list(self._slots)
        return [slot.status() for slot in slots]

    def worker_count(self) -> int:
        with self._cond:
            return len(self._slots)

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
        """A job running now (the first worker's, when several run); None when every worker is idle."""
        with self._cond:
            return next((slot.running[-1] for slot in self._slots if slot.running), None)

    def current_jobs(self) -> list[Job]:
        """The job each busy worker is running now (not one that gave it its turn)."""
        with self._cond:
            return [slot.running[-1] for slot in self._slots if slot.running]

    def running(self) -> list[Job]:
        """Every job started and not finished, on every worker (incl. one that gave another its turn)."""
        with self._cond:
            return [job for slot in self._slots for job in slot.running]

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
            for job in (j for slot in self._slots for j in slot.running):
                job.interrupt()
            self._cond.notify_all()
            threads = [slot.thread for slot in self._slots]
        deadline = time.monotonic() + timeout
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))

    def _finish(self, job: Job, state: JobState) -> None:
        job.state = state
        job.finished = time.time()
        job.latest_latents = None
        job.run = None  # the work's closure holds the request and its decoded inputs: let them go
        job.remote = None
        job.before_yield.clear()
        mine = self._finished.setdefault(job.owner, deque())
        mine.append(job.id)
        while len(mine) > self._keep_finished:
            self._jobs.pop(mine.popleft(), None)
        if not any(j.owner == job.owner for slot in self._slots for j in slot.running if j is not job):
            self._order.forget(job.owner)
        job._mark_done()

    # -- the workers' side -----------------------------------------------------------------------
    def _may_run(self, slot: WorkerSlot, job: Job) -> bool:
        return slot.worker.id not in job.tried and slot.worker.accepts(job)

    def _take(self, slot: WorkerSlot, exclude: str | None = None) -> Job | None:
        """The next job for this worker (under the lock): the fair order's next one it can run, leaving a
        job whose checkpoint another idle worker holds (and this one does not) to that worker."""
        holds = slot.worker.holds()
        idle = [other for other in self._slots if other is not slot and not other.running and other.worker.alive]

        def fits(job: Job) -> bool:
            if not self._may_run(slot, job):
                return False
            if job.checkpoint is None or (holds is not None and job.checkpoint in holds):
                return True
            return not any(self._may_run(other, job) and job.checkpoint in (other.worker.holds() or ())
                           for other in idle)
        return self._order.pop(exclude=exclude, accept=fits, loaded=holds)

    def _work(self, slot: WorkerSlot) -> None:
        while True:
            with self._cond:
                while True:
                    if not slot.worker.alive:
                        self._slots.remove(slot)
                        log.warning("worker %s is gone; %d left", slot.worker.id, len(self._slots))
                        self._cond.notify_all()  # its jobs may now go to the others
                        return
                    job = self._take(slot)
                    if job is not None:
                        break
                    if self._closed:
                        return
                    self._cond.wait(1.0)  # also wakes to notice a worker that died while idle
            self._execute(slot, job, may_yield=slot.worker.may_yield)

    def _give_turn(self, slot: WorkerSlot, running: Job) -> bool:
        """Called by a running job between its units: run one waiting job of another owner, now, here."""
        with self._cond:
            if self._closed or len(slot.running) != 1 or slot.running[0] is not running:
                return False
            other = self._take(slot, exclude=running.owner)
        if other is None:
            return False
        for release in running.before_yield:
            release()
        log.info("job %s (%s) gives job %s (%s) a turn", running.id, running.owner, other.id, other.owner)
        self._execute(slot, other, may_yield=False)
        return True

    def _execute(self, slot: WorkerSlot, job: Job, may_yield: bool) -> None:
        with self._cond:
            slot.running.append(job)
            job.state = JobState.RUNNING
            job.started = time.time()
            job.stage = "starting"
            job.worker = slot.worker.id
        if may_yield:
            job._yielder = lambda: self._give_turn(slot, job)
        state, again = JobState.DONE, False
        try:
            job.result = slot.worker.execute(job)
            if job.interrupted:
                state = JobState.INTERRUPTED
        except (WorkerLost, NotOnThisWorker) as e:
            again = self._elsewhere(slot, job, e)
            state = JobState.INTERRUPTED if job.interrupted else JobState.FAILED
        except Exception as e:  # a job's failure must never take the worker down
            log.exception("job %s failed", job.id)
            job.error = f"{e}" or type(e).__name__
            job.error_type = type(e)
            state = JobState.FAILED
        finally:
            job._yielder = None
        with self._cond:
            slot.running.remove(job)
            if state is JobState.DONE:
                slot.jobs_done += 1
            elif state is JobState.FAILED:
                slot.errors += 1
            if again:
                self._order.charge(job.owner, -job.work)  # its turn did not happen
                self._order.add(job, first=True)
                job.state, job.stage, job.step, job.latest_latents = JobState.QUEUED, "queued", 0, None
                self._cond.notify_all()
            else:
                self._finish(job, state)

    def _elsewhere(self, slot: WorkerSlot, job: Job, error: Exception) -> bool:
        """After a lost worker or a job it cannot run: whether the job goes back in line for another worker
        (once after a loss; to each worker that has not tried it after a refusal). If not, the job's error."""
        job.tried.add(slot.worker.id)
        lost = isinstance(error, WorkerLost)
        log.warning("job %s on worker %s: %s", job.id, slot.worker.id, error)
        with self._cond:
            others = [s for s in self._slots if s is not slot and s.worker.alive and self._may_run(s, job)]
        if lost:
            job.lost += 1
        if job.interrupted or self._closed:
            return False
        if others and (not lost or job.lost <= 1):
            return True
        if lost and job.lost > 1:
            job.error = f"{error}; the job had already been retried once on another worker"
        elif lost:
            job.error = f"{error}; no other worker can run it"
        else:
            job.error = f"{error}"
        job.error_type = type(error.__cause__ or error)
        return False
