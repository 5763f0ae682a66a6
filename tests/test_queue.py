"""The job queue: ids, order, per-job progress and interrupt, failures that don't kill the worker."""
from __future__ import annotations

import threading
import time

from webui.jobs.queue import Job, JobQueue, JobState


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
