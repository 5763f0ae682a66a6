"""One admission path: limits on every entry path (page, /sdapi/v1, /easel/v1 jobs, canvas, zoom), how a
request's checkpoint and options are resolved, the options' checkpoint loaded when it is set, and long
jobs giving other people's jobs a turn."""
from __future__ import annotations

import json
import shutil
import threading
import time
from dataclasses import replace

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from app import build_app
from pictures import b64png
from browser import easel_server
from webui.admission import Admission, Caller
from webui.generation.errors import FieldError
from webui.generation.requests import Img2ImgRequest, Txt2ImgRequest
from webui.generation.zoom import ZoomRequest
from webui.jobs.queue import Job, JobQueue, JobState
from webui.settings import Limits

FAST = {"prompt": "a red circle", "steps": 2, "seed": 7, "width": 64, "height": 64}
LIMITS = Limits(max_steps=4, max_pixels=128 * 128, max_batch=4, max_zoom_keyframes=2, max_job_work=0.2)



@pytest.fixture()
def limited(easel):
    easel.manager.preferred = "tiny-a.safetensors"
    easel.settings = replace(easel.settings, api=True, nowebui=True, limits=LIMITS)
    with TestClient(build_app(easel, easel.settings)) as client:
        yield client


def refused(response, field: str, words: str) -> None:
    assert response.status_code == 422, response.text[:500]
    detail = response.json()["detail"][0]
    assert detail["field"] == field and words in detail["msg"], detail


# -- limits, on each entry path -------------------------------------------------------------------------


def test_limits_on_the_a1111_api(limited):
    refused(limited.post("/sdapi/v1/txt2img", json={**FAST, "steps": 5}), "steps", "at most 4 on this server")
    refused(limited.post("/sdapi/v1/txt2img", json={**FAST, "width": 256, "height": 128}), "width",
            "at most 16384 pixels")
    refused(limited.post("/sdapi/v1/txt2img", json={**FAST, "batch_size": 5}), "n_iter", "at most 4 images")
    # each within its own limit, but together 4 images × 4 steps × 128 × 128 = 0.26 megapixel-steps, over 0.2
    refused(limited.post("/sdapi/v1/txt2img", json={**FAST, "steps": 4, "batch_size": 4, "width": 128,
                                                     "height": 128}), "n_iter", "megapixel-steps")
    assert limited.post("/sdapi/v1/txt2img", json={**FAST, "steps": 4, "batch_size": 4}).status_code == 200
    init = b64png(Image.new("RGB", (256, 256), "red"))  # no size given: it would run at the image's size
    refused(limited.post("/sdapi/v1/img2img", json={**FAST, "width": None, "height": None, "init_images": [init]}),
            "width", "would be 256x256")
    assert limited.post("/sdapi/v1/txt2img", json=FAST).status_code == 200


def test_limits_on_easels_job_api_the_canvas_and_the_zoom(limited):
    refused(limited.post("/easel/v1/jobs", json={**FAST, "steps": 9}), "steps", "at most 4")
    box = b64png(Image.new("RGBA", (256, 256)))
    refused(limited.post("/easel/v1/canvas/generate", json={**FAST, "width": 256, "height": 256, "image": box}),
            "width", "at most 16384 pixels")
    refused(limited.post("/easel/v1/canvas/generate", json={**FAST, "steps": 5, "image": b64png(Image.new("RGBA", (64, 64)))}),
            "steps", "at most 4")
    refused(limited.post("/easel/v1/zoom", json={**FAST, "keyframes": 3}), "keyframes", "at most 2 on this server")
    refused(limited.post("/easel/v1/zoom", json={**FAST, "steps": 5}), "steps", "at most 4")
    ok = limited.post("/easel/v1/zoom", json={**FAST, "keyframes": 1, "fps": 2})
    assert ok.status_code == 202, ok.text


def test_limits_on_the_pages_own_events(tmp_path, model_root):
    """The page's Generate is also a Gradio API endpoint (`/txt2img`): it goes through admission too."""
    from gradio_client import Client

    data = tmp_path / "data"
    (data / "models" / "Stable-diffusion").mkdir(parents=True)
    shutil.copy(model_root / "models" / "Stable-diffusion" / "tiny-a.safetensors", data / "models" / "Stable-diffusion")
    with easel_server(data, "--max-pixels", "16384", "--max-steps", "6") as url:
        client = Client(url, verbose=False)
        params = client.view_api(return_format="dict", print_info=False)["named_endpoints"]["/txt2img"]["parameters"]
        names = {p["label"]: p["parameter_name"] for p in params}
        # pictures without a default (ControlNet units' images) are sent empty, as the page sends them
        empty = {p["parameter_name"]: None for p in params if not p.get("parameter_has_default", True)}
        out = client.predict(**{**empty, names["Width"]: 512, names["Height"]: 512, names["Sampling steps"]: 2},
                             api_name="/txt2img")
        assert "width × height is at most 16384 pixels" in out[2]
        view = client.view_api(return_format="dict", print_info=False)["named_endpoints"]["/txt2img"]["parameters"]
        steps = next(p for p in view if p["label"] == "Sampling steps")
        assert steps["parameter_default"] == 6  # the field's default (20), capped by the server's --max-steps
        ok = client.predict(**{**empty, names["Sampling steps"]: 2, names["Seed"]: 5}, api_name="/txt2img")
        assert "Seed: 5" in ok[1]


# -- resolution and options -------------------------------------------------------------------------------


def test_checkpoint_resolution_order_and_options(easel):
    easel.manager.preferred = "tiny-a.safetensors"
    admission = Admission(easel, Limits.none())
    alice, bob = Caller("alice"), Caller("bob")
    assert admission.prepare("txt2img", Txt2ImgRequest(**FAST), alice).request.checkpoint == "tiny-a.safetensors"
    admission.set_options(alice, {"sd_model_checkpoint": "tiny-b", "CLIP_stop_at_last_layers": 2}, timeout=60)
    mine = admission.prepare("txt2img", Txt2ImgRequest(**FAST), alice).request
    assert (mine.checkpoint, mine.clip_skip) == ("tiny-b.safetensors", 2)
    assert admission.prepare("txt2img", Txt2ImgRequest(**FAST), bob).request.checkpoint == "tiny-a.safetensors"
    override = Txt2ImgRequest(**FAST, override_settings={"sd_model_checkpoint": "tiny-a-diffusers"})
    assert admission.prepare("txt2img", override, alice).request.checkpoint == "tiny-a-diffusers"
    named = Txt2ImgRequest(**FAST, checkpoint="sub/tiny-a-ckpt.ckpt", clip_skip=1)
    assert admission.prepare("txt2img", named, alice).request.checkpoint == "sub/tiny-a-ckpt.ckpt"
    assert admission.prepare("txt2img", named, alice).request.clip_skip == 1  # given: the option does not apply
    with pytest.raises(FieldError) as err:
        admission.prepare("txt2img", Txt2ImgRequest(**FAST, checkpoint="../../etc/passwd"), alice)
    assert err.value.field == "checkpoint"


def test_an_option_checkpoint_that_cannot_load_is_refused_and_the_previous_one_stays(easel, tmp_path):
    bad = easel.settings.checkpoint_dirs[0] / "broken.safetensors"
    bad.write_bytes(b"\x00" * 64)
    easel.refresh()
    easel.manager.preferred = "tiny-a.safetensors"
    easel.settings = replace(easel.settings, api=True, nowebui=True)
    with TestClient(build_app(easel, easel.settings)) as client:
        me = {"X-Easel-Client": "me"}
        assert client.post("/sdapi/v1/options", headers=me, json={"sd_model_checkpoint": "tiny-b"}).status_code == 200
        r = client.post("/sdapi/v1/options", headers=me, json={"sd_model_checkpoint": "broken.safetensors"})
        refused(r, "sd_model_checkpoint", "could not be loaded, the previous choice stays")
        assert client.get("/sdapi/v1/options", headers=me).json()["sd_model_checkpoint"].startswith("tiny-b.safetensors")
        ok = client.post("/sdapi/v1/txt2img", headers=me, json=FAST)
        assert ok.status_code == 200 and json.loads(ok.json()["info"])["sd_model_name"] == "tiny-b"


# -- turns: a long job lets others' short jobs through ------------------------------------------------------


def test_a_running_job_gives_one_waiting_job_of_another_owner_a_turn():
    q = JobQueue()
    order: list[str] = []
    try:
        started = threading.Event()
        proceed = threading.Event()

        def long(job: Job):
            started.set()
            proceed.wait(5)
            for i in range(3):
                order.append(f"long {i}")
                order.append("gave" if job.yield_turn() else "kept")
            return "done"

        def short(name):
            def run(job: Job):
                order.append(name)
                assert not job.yield_turn()  # a job run in another's turn does not give turns itself
                return name
            return run

        a = q.submit(Job(run=long, owner="a"))
        assert started.wait(5)
        a2 = q.submit(Job(run=short("a's second"), owner="a"))
        b = q.submit(Job(run=short("b"), owner="b"))
        c = q.submit(Job(run=short("c"), owner="c"))
        proceed.set()
        assert a2.wait(5) and a.done and b.done and c.done
        assert order == ["long 0", "b", "gave", "long 1", "c", "gave", "long 2", "kept", "a's second"]
        assert all(j.state is JobState.DONE for j in (a, a2, b, c))
    finally:
        q.shutdown()


def test_a_long_batch_lets_another_user_through_and_its_pictures_do_not_change(easel):
    """User A's 4-batch job gives user B's single image (on another checkpoint) a turn after each batch; A's
    model is swapped out and back meanwhile, and A's pictures are exactly those of the same job run alone."""
    big = Txt2ImgRequest(**{**FAST, "n_iter": 4, "steps": 3}, checkpoint="tiny-a.safetensors")
    alone = easel.submit("txt2img", big, "a", save=False)
    assert alone.wait(120) and alone.error is None, alone.error
    easel.submit("load", "tiny-a.safetensors", "a").wait(60)
    job = easel.submit("txt2img", big, "a", save=False)
    while job.step < 1 and not job.done:
        time.sleep(0.01)
    other = easel.submit("txt2img", Txt2ImgRequest(**FAST, checkpoint="tiny-b.safetensors"), "b", save=False)
    assert other.wait(120) and other.error is None, other.error
    assert not job.done, "B's image waited for all of A's batches"
    assert job.wait(120) and job.error is None, job.error
    assert other.finished < job.finished
    for mine, reference in zip(job.result.result.images, alone.result.result.images):
        assert np.array_equal(np.asarray(mine), np.asarray(reference))
    assert len(job.result.result.images) == 4


def test_a_zoom_lets_another_user_through_between_keyframes(easel):
    zoom = easel.submit("zoom", ZoomRequest(prompt="a red circle", keyframes=4, steps=2, seed=1, fps=2,
                                            checkpoint="tiny-a.safetensors"), "a")
    while zoom.step < 1 and not zoom.done:
        time.sleep(0.01)
    other = easel.submit("img2img", Img2ImgRequest(**FAST, init_image=Image.new("RGB", (64, 64), "blue"),
                                                   checkpoint="tiny-a.safetensors"), "b", save=False)
    assert other.wait(120) and other.error is None, other.error
    assert not zoom.done
    assert zoom.wait(120) and zoom.error is None and zoom.result.keyframes == 5
