"""Easel's jobs on Ray workers (issue "Many GPUs"): a local Ray cluster started here with two CPU workers
over the tiny checkpoints, behind one Easel front end. Marked `ray` (about a minute and a half in all)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from dataclasses import replace

import numpy as np
import pytest

from webui.generation.requests import Txt2ImgRequest
from webui.jobs.queue import Job, JobState
from webui.runtime import ModelLease
from webui.settings import settings_from_args

ray = pytest.importorskip("ray")
pytestmark = pytest.mark.ray

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def cluster(model_root, tmp_path_factory):
    """An Easel front end with `--workers ray --ray-workers 2` (CPU workers), models kept one at a time."""
    from webui.services import Easel
    from webui.workers.ray_pool import RayPool

    data = tmp_path_factory.mktemp("ray-front")
    checkpoints = model_root / "models" / "Stable-diffusion"
    settings = settings_from_args(["--data-dir", str(data), "--ckpt-dir", str(checkpoints), "--device", "cpu",
                                   "--models-in-ram", "0", "--workers", "ray", "--ray-workers", "2",
                                   "--worker-timeout", "6"])
    easel = Easel.create(settings)
    pool = RayPool(settings, easel.queue, every=1.0, cpus=3).start(wait=True)  # room for one more to join
    yield easel, pool
    easel.queue.shutdown()
    pool.close()
    easel.close()


def two_workers(pool, timeout: float = 120) -> list:
    deadline = time.monotonic() + timeout
    while len(pool.workers()) < 2:
        assert time.monotonic() < deadline, "the pool did not get back to two workers"
        time.sleep(0.2)
    return pool.workers()


def request(checkpoint: str = "tiny-a.safetensors", **changes) -> Txt2ImgRequest:
    fields = dict(prompt="a red square", steps=4, width=64, height=64, seed=7, checkpoint=checkpoint)
    return Txt2ImgRequest(**{**fields, **changes})


def wait_all(jobs, timeout: float = 120) -> None:
    for job in jobs:
        assert job.wait(timeout), f"job {job.id} did not finish"


def pixels(job) -> list[np.ndarray]:
    return [np.asarray(image) for image in job.result.result.images]


def test_jobs_of_two_owners_spread_over_both_workers_and_are_saved_here(cluster):
    easel, pool = cluster
    two_workers(pool)
    jobs = [easel.submit("txt2img", request(steps=12, batch_size=2, seed=i), owner=owner)
            for i, owner in enumerate(["alice", "bob", "alice", "bob"])]
    wait_all(jobs)
    assert all(job.state is JobState.DONE for job in jobs), [job.error for job in jobs]
    assert {job.worker for job in jobs} == {w.id for w in pool.workers()}
    for job in jobs:  # saved by the front end, in its outputs folder, with the infotext
        assert len(job.result.paths) == 2 and all(p.is_file() for p in job.result.paths)
        assert job.result.paths[0].is_relative_to(easel.settings.outputs_dir)
    status = {w["id"]: w for w in easel.queue.workers()}
    assert sum(status[w.id]["jobs_done"] for w in pool.workers()) >= 4
    assert status["local"]["jobs_done"] == 0  # the in-process worker leaves portable jobs to Ray


def test_images_are_identical_to_the_in_process_workers(cluster):
    easel, pool = cluster
    two_workers(pool)
    remote = easel.submit("txt2img", request(seed=1234, batch_size=2), owner="carol", save=False)
    wait_all([remote])
    here = Job(run=None)
    made = easel.runtime.run("txt2img", request(seed=1234, batch_size=2), here, ModelLease(easel.runtime, here))
    assert remote.worker.startswith("ray-")
    assert len(pixels(remote)) == 2
    for a, b in zip(pixels(remote), [np.asarray(image) for image in made.images], strict=True):
        assert np.array_equal(a, b)
    assert remote.result.result.infotexts == made.infotexts


def test_inpainting_an_outpaint_box_and_a_checkpoint_load_travel_to_the_workers_too(cluster):
    from PIL import Image, ImageDraw

    from webui.generation.outpaint import OutpaintRequest
    from webui.generation.requests import Img2ImgRequest

    easel, pool = cluster
    two_workers(pool)
    picture = Image.new("RGB", (64, 64), "navy")
    mask = Image.new("L", (64, 64), 0)
    ImageDraw.Draw(mask).rectangle((16, 16, 47, 47), fill=255)
    box = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    box.paste(Image.new("RGBA", (64, 32), (200, 30, 30, 255)))  # the top half painted, the rest empty
    base = dict(prompt="a red square", steps=4, width=64, height=64, seed=11, checkpoint="tiny-a.safetensors")
    requests = {"img2img": Img2ImgRequest(**base, init_image=picture, mask=mask, denoising_strength=0.9),
                "outpaint": OutpaintRequest(**base, box=box)}
    for kind, req in requests.items():
        job = easel.submit(kind, req, owner="olga", save=False)
        wait_all([job])
        assert job.state is JobState.DONE and job.worker.startswith("ray-"), job.error
        here = Job(run=None)
        made = easel.runtime.run(kind, req, here, ModelLease(easel.runtime, here))
        assert np.array_equal(pixels(job)[0], np.asarray(made.images[0])), kind
    load = easel.submit("load", "tiny-b.safetensors", owner="olga")
    wait_all([load])
    assert load.result.startswith("tiny-b.safetensors") and load.worker.startswith("ray-")
    assert "tiny-b.safetensors" in {w["id"]: w for w in easel.queue.workers()}[load.worker]["models"]


def test_a_job_goes_to_the_worker_that_holds_its_checkpoint(cluster):
    easel, pool = cluster
    two_workers(pool)
    first = easel.submit("txt2img", request("tiny-b.safetensors"), owner="dave")
    wait_all([first])
    holder_b = first.worker
    assert {w["id"]: w for w in easel.queue.workers()}[holder_b]["models"] == ["tiny-b.safetensors"]
    other = next(w.id for w in pool.workers() if w.id != holder_b)
    second = easel.submit("txt2img", request("tiny-a.safetensors"), owner="dave")
    wait_all([second])
    assert second.worker == other  # tiny-b's holder was also free, but the other one holds tiny-a (or nothing)
    for checkpoint in ["tiny-b.safetensors", "tiny-a.safetensors"] * 3:
        job = easel.submit("txt2img", request(checkpoint), owner="dave")
        wait_all([job])
        assert job.worker == (holder_b if checkpoint.startswith("tiny-b") else other), checkpoint


def long_job(easel, owner: str, **changes) -> Job:
    job = easel.submit("txt2img", request(steps=40, batch_size=1, n_iter=12, **changes), owner=owner)
    deadline = time.monotonic() + 60
    while job.step < 2:
        assert time.monotonic() < deadline and not job.done, job.error
        time.sleep(0.05)
    return job


def test_interrupting_a_job_on_a_worker_stops_it_there(cluster):
    easel, pool = cluster
    two_workers(pool)
    job = long_job(easel, "erin")
    assert job.worker.startswith("ray-") and job.total_steps > 0
    assert job.preview_image() is not None  # the worker's latents came back for the live preview
    easel.queue.interrupt(job.id)
    wait_all([job], 30)
    assert job.state is JobState.INTERRUPTED
    assert len(job.result.result.images) < 12
    again = easel.submit("txt2img", request(), owner="erin")  # the worker goes on taking jobs
    wait_all([again])
    assert again.state is JobState.DONE


def saved(easel) -> set:
    return {p for p in easel.settings.outputs_dir.rglob("*.png")}


def test_a_worker_killed_mid_job_hands_the_job_to_the_other_and_it_is_saved_once(cluster):
    easel, pool = cluster
    workers = {w.id: w for w in two_workers(pool)}
    before = saved(easel)
    job = long_job(easel, "frank", seed=99)
    first = job.worker
    os.kill(workers[first].pid, signal.SIGKILL)
    wait_all([job], 120)
    assert job.state is JobState.DONE, job.error
    assert job.worker != first and job.lost == 1
    new = saved(easel) - before
    assert len(new) == 12 and set(job.result.paths) == new  # every image once, none from the lost attempt
    two_workers(pool)  # the pool replaced the lost worker
    assert first not in {w.id for w in pool.workers()}


def test_an_idle_worker_that_dies_is_dropped_and_replaced(cluster):
    easel, pool = cluster
    workers = two_workers(pool)
    gone = workers[0]
    os.kill(gone.pid, signal.SIGKILL)
    deadline = time.monotonic() + 60
    while gone.id in {w["id"] for w in easel.queue.workers()}:  # noticed by the pool's check, not by a job
        assert time.monotonic() < deadline, "the dead worker is still listed"
        time.sleep(0.2)
    assert gone.id not in {w.id for w in two_workers(pool)}
    job = easel.submit("txt2img", request(), owner="oscar")
    wait_all([job])
    assert job.state is JobState.DONE and job.lost == 0


def test_a_hung_worker_is_stopped_and_its_job_retried_elsewhere(cluster):
    easel, pool = cluster
    workers = {w.id: w for w in two_workers(pool)}
    job = long_job(easel, "grace", seed=5)
    first = job.worker
    os.kill(workers[first].pid, signal.SIGSTOP)  # alive, but no longer answering (worker timeout: 6 s)
    try:
        wait_all([job], 120)
    finally:
        try:
            os.kill(workers[first].pid, signal.SIGCONT)
        except ProcessLookupError:
            pass
    assert job.state is JobState.DONE and job.worker != first, job.error
    assert not workers[first].alive


def test_a_checkpoint_no_worker_can_load_fails_with_a_clear_message_and_workers_go_on(cluster, model_root):
    easel, pool = cluster
    two_workers(pool)
    broken = model_root / "models" / "Stable-diffusion" / "broken.safetensors"
    broken.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\": 1}" + b"\0" * 64)
    try:
        easel.manager.refresh()
        errors = sum(w["errors"] for w in easel.queue.workers())
        bad = easel.submit("txt2img", request("broken.safetensors"), owner="heidi")
        wait_all([bad])
        assert bad.state is JobState.FAILED
        assert "could not load" in bad.error and "broken" in bad.error, bad.error
        assert sum(w["errors"] for w in easel.queue.workers()) == errors + 2  # each worker tried it once
        good = easel.submit("txt2img", request(), owner="heidi")
        wait_all([good])
        assert good.state is JobState.DONE
    finally:
        broken.unlink()
        easel.manager.refresh()


def test_a_worker_that_joins_later_takes_jobs(cluster):
    easel, pool = cluster
    two_workers(pool)
    before = {w.id for w in pool.workers()}
    settings = pool.settings
    pool.settings = replace(settings, ray_workers=3)  # as when a host with one more GPU joins the cluster
    try:
        deadline = time.monotonic() + 120
        while len(pool.workers()) < 3:
            assert time.monotonic() < deadline, "no third worker joined"
            time.sleep(0.2)
        late = next(w for w in pool.workers() if w.id not in before)
        jobs = [long_job(easel, owner) for owner in ("ivan", "judy")]
        third = long_job(easel, "mallory")
        assert late.id in {job.worker for job in [*jobs, third]}
        assert len({job.worker for job in [*jobs, third]}) == 3
        for job in [*jobs, third]:
            easel.queue.interrupt(job.id)
        wait_all([*jobs, third])
    finally:
        pool.settings = settings
        for worker in pool.workers():
            if worker.id not in before:
                worker._alive = False
                ray.kill(worker.handle, no_restart=True)


def test_the_workers_route_lists_every_worker(cluster):
    from apiclient import api_client

    easel, pool = cluster
    two_workers(pool)
    with api_client(easel) as client:
        answer = client.get("/easel/v1/workers")
        job = client.post("/easel/v1/jobs", json={"prompt": "a red square", "steps": 2, "width": 64, "height": 64,
                                                  "sd_model_checkpoint": "tiny-a"})
        assert job.status_code == 202, job.text
        status = client.get(job.json()["url"].replace("/easel/v1", "/easel/v1", 1))
    assert answer.status_code == 200
    rows = {w["id"]: w for w in answer.json()["workers"]}
    assert "local" in rows and {w.id for w in pool.workers()} <= set(rows)
    for row in rows.values():
        assert set(row) >= {"id", "device", "models", "current_job", "jobs_done", "errors"}
    assert "CPU" in rows[pool.workers()[0].id]["device"]
    assert status.status_code == 200


def test_without_ray_installed_easel_starts_and_generates_and_says_how_to_get_ray(model_root, tmp_path):
    code = f"""
import sys
sys.modules["ray"] = None  # as if Ray were not installed
sys.path.insert(0, {ROOT!r})
from webui.services import Easel
from webui.settings import settings_from_args
from webui.generation.requests import Txt2ImgRequest
args = ["--data-dir", {str(tmp_path)!r}, "--ckpt-dir", {str(model_root / "models" / "Stable-diffusion")!r},
        "--device", "cpu"]
easel = Easel.create(settings_from_args(args))
job = easel.submit("txt2img", Txt2ImgRequest(prompt="a red square", steps=2, width=64, height=64,
                                             checkpoint="tiny-a.safetensors"))
job.wait(120)
assert job.state.value == "done", job.error
assert job.worker == "local" and len(job.result.paths) == 1
easel.close()
from webui.workers.ray_pool import RayPool
try:
    RayPool(settings_from_args(args + ["--workers", "ray"]), None).start()
except SystemExit as e:
    print("EXIT:", e)
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "EXIT: --workers ray needs Ray" in done.stdout and "requirements-ray.txt" in done.stdout
