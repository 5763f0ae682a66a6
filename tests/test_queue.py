"""The job queue: ids, order, per-job progress and interrupt, failures that don't kill the worker."""
from __future__ import annotations

import threading
import time

from webui.jobs.queue import Job, JobQueue, JobState, LocalWorker, NotOnThisWorker, RemoteWork, WorkerLost


def slow_job(steps: int, delay: float = 0.02, gate: threading.Event | None = None,
             started: threading.Event | None = None):
    def run(job: Job):
        if started is not None:
            started.set()
        if gate is not None:
            gate.wait(5)
        for i in range(steps):
            if job.should_stop():
                return f"stopped at {i}"
            job.on_step(i + 1, steps)
            time.sleep(delay)
        return "finished"
    return run


def test_jobs_run_in_order_with_ids_and_progress():
    q = JobQueue()
    try:
        gate, started = threading.Event(), threading.Event()
        first = q.submit(Job(run=slow_job(3, gate=gate, started=started)))
        second = q.submit(Job(run=slow_job(3)))
        assert first.id != second.id and q.get(first.id) is first
        assert started.wait(5)  # the worker has the first job (no fixed sleep: it is told)
        assert first.state is JobState.RUNNING and second.state is JobState.QUEUED
        assert q.position(second) == 1
        gate.set()
        assert second.wait(5)
        assert first.result == "finished" and second.result == "finished"
        assert first.finished <= second.started
        assert first.progress == 1.0 and first.step == 3
    finally:
        q.shutdown()


def test_interrupt_stops_only_that_job():
    q = JobQueue()
    try:
        a = q.submit(Job(run=slow_job(200, 0.01)))
        b = q.submit(Job(run=slow_job(3)))
        while a.step < 2:
            time.sleep(0.01)
        q.interrupt(a.id)
        assert b.wait(5)
        assert a.state is JobState.INTERRUPTED and a.result.startswith("stopped")
        assert b.state is JobState.DONE and b.result == "finished"
    finally:
        q.shutdown()


def test_interrupting_a_queued_job_drops_it():
    q = JobQueue()
    try:
        gate = threading.Event()
        a = q.submit(Job(run=slow_job(1, gate=gate)))
        b = q.submit(Job(run=slow_job(1)))
        q.interrupt(b.id)
        gate.set()
        assert a.wait(5) and b.wait(1)
        assert b.state is JobState.INTERRUPTED and b.result is None and b.started is None
    finally:
        q.shutdown()


def test_a_failing_job_reports_its_error_and_the_worker_survives():
    q = JobQueue()
    try:
        def boom(job):
            raise ValueError("width: must be a multiple of 8")
        bad = q.submit(Job(run=boom))
        good = q.submit(Job(run=slow_job(1)))
        assert good.wait(5)
        assert bad.state is JobState.FAILED and bad.error == "width: must be a multiple of 8"
        assert good.state is JobState.DONE
    finally:
        q.shutdown()


def test_eta_is_estimated_from_the_steps_so_far():
    q = JobQueue()
    try:
        job = q.submit(Job(run=slow_job(20, 0.02)))
        while job.step < 5:
            time.sleep(0.005)
        eta = job.eta_seconds
        assert eta is not None and 0.05 < eta < 2.0
        assert "step" in job.progress_text() and "ETA" in job.progress_text()
        job.wait(5)
    finally:
        q.shutdown()


class FakeWorker:
    """A queue worker without Ray: runs portable jobs' `remote.finish(job, kind)`, holds the checkpoints it
    ran, and can be told to be lost or to refuse a checkpoint."""

    may_yield = False

    def __init__(self, worker_id: str, lose: int = 0, refuse: str | None = None,
                 gate: threading.Event | None = None):
        self.id, self.alive, self.lose, self.refuse, self.gate = worker_id, True, lose, refuse, gate
        self.held: list[str] = []
        self.ran: list[str] = []

    def accepts(self, job: Job) -> bool:
        return job.remote is not None

    def holds(self):
        return self.held

    def describe(self):
        return {"device": "fake", "models": list(self.held)}

    def execute(self, job: Job):
        if self.gate is not None:
            self.gate.wait(5)
        time.sleep(0.02)
        if job.checkpoint is not None and job.checkpoint == self.refuse:
            raise NotOnThisWorker(f"worker {self.id} could not load the model: {job.checkpoint} is broken here")
        if self.lose:
            self.lose -= 1
            self.alive = False
            raise WorkerLost(f"worker {self.id} died during the job")
        self.ran.append(job.id)
        self.held = [job.checkpoint] if job.checkpoint else self.held
        return job.remote.finish(job, job.remote.kind)


def portable(checkpoint: str | None = None, owner: str = "a") -> Job:
    return Job(run=None, owner=owner, checkpoint=checkpoint,
               remote=RemoteWork("txt2img", None, finish=lambda job, made: f"saved {made} once"))


def test_a_free_worker_leaves_a_job_to_the_free_worker_that_holds_its_checkpoint():
    a, b = FakeWorker("a"), FakeWorker("b")
    a.held, b.held = ["one"], ["two"]
    q = JobQueue(workers=[a, b])
    try:
        for checkpoint in ["two", "one", "two", "two", "one"]:
            job = q.submit(portable(checkpoint))
            assert job.wait(5) and job.result == "saved txt2img once"
            assert job.worker == ("a" if checkpoint == "one" else "b"), checkpoint
        assert {w["id"]: w["jobs_done"] for w in q.workers()} == {"a": 2, "b": 3}
    finally:
        q.shutdown()


def test_a_lost_worker_s_job_runs_once_more_elsewhere_then_fails_with_a_message():
    first, second = FakeWorker("first", lose=1), FakeWorker("second", lose=1)
    q = JobQueue(workers=[first])
    try:
        q.add_worker(second)
        job = q.submit(portable())
        assert job.wait(5)
        assert job.state is JobState.FAILED and job.lost == 2
        assert "died during the job" in job.error and "already been retried once" in job.error
        assert q.worker_count() == 0 or all(not w["alive"] for w in q.workers())
        third = FakeWorker("third")
        q.add_worker(third)  # a worker that joins takes the next job
        again = q.submit(portable())
        assert again.wait(5) and again.state is JobState.DONE and again.worker == "third"
    finally:
        q.shutdown()


def test_a_job_one_worker_cannot_load_goes_to_another_and_the_first_keeps_working():
    picky, fine = FakeWorker("picky", refuse="broken"), FakeWorker("fine")
    fine.held = ["other"]  # so the picky one, holding nothing, is not passed over for "broken"
    q = JobQueue(workers=[picky, fine])
    try:
        jobs = [q.submit(portable("broken", owner=o)) for o in ("a", "b", "c")]
        for job in jobs:
            assert job.wait(5) and job.state is JobState.DONE and job.worker == "fine", job.error
        assert any("picky" in j.tried for j in jobs)
        ok = q.submit(portable("fine-ckpt"))
        assert ok.wait(5) and ok.state is JobState.DONE
        both_refuse = FakeWorker("also-picky", refuse="broken")
        q.add_worker(both_refuse)
        fine.refuse = "broken"
        bad = q.submit(portable("broken"))
        assert bad.wait(5) and bad.state is JobState.FAILED
        assert "could not load the model: broken is broken here" in bad.error
        assert bad.tried == {"picky", "fine", "also-picky"}
    finally:
        q.shutdown()


def test_current_jobs_are_one_per_busy_worker():
    gate = threading.Event()
    a, b = FakeWorker("a", gate=gate), FakeWorker("b", gate=gate)
    q = JobQueue(workers=[a, b])
    try:
        jobs = [q.submit(portable(owner=o)) for o in ("x", "y", "z")]
        deadline = time.monotonic() + 5
        while len(q.current_jobs()) < 2:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert {j.id for j in q.current_jobs()} == {j.id for j in jobs[:2]} and q.current in jobs[:2]
        assert {w["current_job"] for w in q.workers()} == {jobs[0].id, jobs[1].id}
        assert q.position(jobs[2]) == 1
        gate.set()
        assert all(job.wait(5) for job in jobs)
        assert q.current_jobs() == [] and q.current is None
    finally:
        q.shutdown()


def test_the_local_worker_is_busy_only_with_its_own_jobs():
    """What the gallery's background indexing pauses for: this process's device, not a Ray worker's."""
    gate = threading.Event()
    local, remote = LocalWorker(remote_jobs=False), FakeWorker("ray-1", gate=gate)
    q = JobQueue(workers=[local, remote])
    try:
        far = q.submit(portable())
        while far.state is not JobState.RUNNING:
            time.sleep(0.01)
        assert far.worker == "ray-1" and not local.busy(q)
        here = q.submit(Job(run=slow_job(1, gate=gate)))
        while here.state is not JobState.RUNNING:
            time.sleep(0.01)
        assert here.worker == "local" and local.busy(q)
        gate.set()
        assert far.wait(5) and here.wait(5) and not local.busy(q)
    finally:
        q.shutdown()
