"""The shared queue: fair turns between owners, same-checkpoint grouping without starvation, interrupt rights."""
from __future__ import annotations

import threading
import time

import pytest

from webui.jobs.queue import FairOrder, Job, JobQueue, JobState


def recorder(order: list[str], name: str, gate: threading.Event | None = None):
    def run(job: Job) -> str:
        if gate is not None:
            gate.wait(5)
        order.append(name)
        return name
    return run


def run_all(submissions: list[tuple[str, str, str | None]], busy_owner: str = "x",
            busy_checkpoint: str | None = None) -> list[str]:
    """Submit while a job of `busy_owner` holds the worker, then return the order the jobs ran in."""
    queue = JobQueue()
    order: list[str] = []
    gate = threading.Event()
    try:
        busy = queue.submit(Job(run=recorder(order, "gate", gate), owner=busy_owner, checkpoint=busy_checkpoint))
        while busy.state is not JobState.RUNNING:
            time.sleep(0.001)
        jobs = [queue.submit(Job(run=recorder(order, name), owner=owner, checkpoint=ckpt))
                for name, owner, ckpt in submissions]
        names = {job.id: name for job, (name, _, _) in zip(jobs, submissions, strict=True)}
        predicted = [names[job.id] for job in queue.pending()]
        gate.set()
        for job in jobs:
            assert job.wait(5)
        assert order[1:] == predicted  # pending() foretold the order
        return order[1:]
    finally:
        queue.shutdown()


def test_a_single_owner_keeps_first_in_first_out():
    assert run_all([(f"a{i}", "A", None) for i in range(4)], busy_owner="A") == ["a0", "a1", "a2", "a3"]


def test_b_runs_second_when_a_submitted_five_first():
    queue = JobQueue()
    order: list[str] = []
    gate = threading.Event()
    try:
        a_jobs = [queue.submit(Job(run=recorder(order, "a0", gate), owner="A"))]
        while a_jobs[0].state is not JobState.RUNNING:
            time.sleep(0.001)
        a_jobs += [queue.submit(Job(run=recorder(order, f"a{i}"), owner="A")) for i in range(1, 5)]
        b_job = queue.submit(Job(run=recorder(order, "b0"), owner="B"))
        assert queue.position(b_job) == 1 and queue.position(a_jobs[1]) == 2
        assert [j.owner for j in queue.pending()] == ["B", "A", "A", "A", "A"]
        gate.set()
        assert all(j.wait(5) for j in a_jobs + [b_job])
        assert order == ["a0", "b0", "a1", "a2", "a3", "a4"]
    finally:
        queue.shutdown()


def test_three_owners_take_turns():
    jobs = [(f"a{i}", "A", None) for i in range(3)] + [(f"b{i}", "B", None) for i in range(2)] + [("c0", "C", None)]
    assert run_all(jobs) == ["a0", "b0", "c0", "a1", "b1", "a2"]


def test_an_owner_cannot_jump_the_round_by_resubmitting():
    order = FairOrder()
    a1, b1 = Job(run=print, owner="A"), Job(run=print, owner="B")
    order.add(a1)
    order.add(b1)
    assert order.pop() is a1  # A had its turn in this round and now has nothing queued
    a2 = Job(run=print, owner="A")
    order.add(a2)
    assert order.plan() == [b1, a2] and order.pop() is b1 and order.pop() is a2


def test_same_checkpoint_jobs_go_first_within_a_round():
    # A job on model X holds the worker; then A wants Y, B wants X, C wants Y.
    order = run_all([("a-Y", "A", "Y"), ("b-X", "B", "X"), ("c-Y", "C", "Y")], busy_checkpoint="X")
    assert order == ["b-X", "a-Y", "c-Y"]  # one swap (X -> Y) instead of three
    # With nothing known to be loaded the first in turn goes first, and the other Y job follows it.
    assert run_all([("a-Y", "A", "Y"), ("b-X", "B", "X"), ("c-Y", "C", "Y")]) == ["a-Y", "c-Y", "b-X"]


def test_grouping_saves_swaps_but_never_starves_anyone():
    order = FairOrder()
    order.loaded = "X"
    # A has a long run of X jobs; B wants Y. Grouping may put A first within a round, never twice.
    a_jobs = [Job(run=print, owner="A", checkpoint="X") for _ in range(4)]
    b_job = Job(run=print, owner="B", checkpoint="Y")
    order.add(b_job)
    for job in a_jobs:
        order.add(job)
    plan = order.plan()
    assert plan[:2] == [a_jobs[0], b_job]  # A's X job first (no swap), then B: within one round
    ran = [order.pop() for _ in range(5)]
    assert ran == plan and order.pop() is None


def test_grouping_prefers_the_loaded_checkpoint_among_waiting_owners():
    order = FairOrder()
    order.loaded = "X"
    jobs = {o: Job(run=print, owner=o, checkpoint=c) for o, c in (("A", "Y"), ("B", "X"), ("C", "Y"), ("D", "X"))}
    for job in jobs.values():
        order.add(job)
    assert [j.owner for j in order.plan()] == ["B", "D", "A", "C"]  # one swap instead of three


def test_jobs_without_a_checkpoint_keep_their_turn():
    order = FairOrder()
    order.loaded = "X"
    plain, wants_x = Job(run=print, owner="A"), Job(run=print, owner="B", checkpoint="X")
    order.add(plain)
    order.add(wants_x)
    assert order.plan() == [wants_x, plain]
    order.loaded = None
    assert order.plan() == [plain, wants_x]


def test_interrupt_permissions():
    queue = JobQueue()
    gate = threading.Event()
    try:
        running = queue.submit(Job(run=recorder([], "b", gate), owner="bob"))
        queued = queue.submit(Job(run=recorder([], "b2"), owner="bob"))
        with pytest.raises(PermissionError):
            queue.interrupt(running.id, by="alice")
        with pytest.raises(PermissionError):
            queue.interrupt(queued.id, by="alice")
        assert not running.interrupted and queued.state is JobState.QUEUED
        assert queue.interrupt(queued.id, by="bob") and queued.state is JobState.INTERRUPTED
        assert queue.interrupt(running.id, by="root", admin=True) and running.interrupted
        assert queue.interrupt("no-such-job", by="bob") is False
        gate.set()
        assert running.wait(5) and running.state is JobState.INTERRUPTED
    finally:
        queue.shutdown()


def test_jobs_of_lists_an_owners_jobs_oldest_first():
    queue = JobQueue()
    gate = threading.Event()
    try:
        a1 = queue.submit(Job(run=recorder([], "a1", gate), owner="A"))
        b1 = queue.submit(Job(run=recorder([], "b1"), owner="B"))
        a2 = queue.submit(Job(run=recorder([], "a2"), owner="A"))
        assert queue.jobs_of("A") == [a1, a2] and queue.jobs_of("B") == [b1] and queue.jobs_of("C") == []
        gate.set()
        assert a2.wait(5)
    finally:
        queue.shutdown()


def test_done_callbacks_fire_once_even_when_added_late():
    queue = JobQueue()
    try:
        seen: list[str] = []
        job = queue.submit(Job(run=lambda j: "ok"))
        job.add_done_callback(lambda j: seen.append(f"early {j.state.value}"))
        assert job.wait(5)
        job.add_done_callback(lambda j: seen.append("late"))
        assert seen == ["early done", "late"]

        def broken(_job: Job) -> None:
            raise RuntimeError("a listener's bug")
        survivor = queue.submit(Job(run=lambda j: "ok"))
        survivor.add_done_callback(broken)
        after = queue.submit(Job(run=lambda j: "still working"))
        assert after.wait(5) and after.result == "still working"
    finally:
        queue.shutdown()
