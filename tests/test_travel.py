"""Prompt travel: the frame plan, frames that start and end on the keyframes' stills, the video read back,
easing, interrupt and resume, the demo model's colour moving from red to blue, and the HTTP API."""
from __future__ import annotations

import time
from pathlib import Path

import imageio.v2 as iio
import numpy as np
import pytest
from PIL import Image
from pydantic import ValidationError

from apiclient import api_client
from sinks import Recorder
from webui.features.travel import (EASINGS, FramePlan, TravelFrames, TravelKeyframe, TravelRequest, frame_prompts,
                                   plan_frames, split_prompts)
from webui.generation.requests import Txt2ImgRequest
from webui.images.infotext import parse_infotext
from webui.jobs.queue import JobState

FAST = {"steps": 3, "width": 64, "height": 64, "sampler_name": "Euler", "cfg_scale": 5}


def pixels(image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.int16)


def still(easel, prompt: str, seed: int) -> np.ndarray:
    job = easel.submit("txt2img", Txt2ImgRequest(prompt=prompt, seed=seed, **FAST), "me", save=False)
    assert job.wait(120) and job.error is None, job.error
    return pixels(job.result.result.images[0])


def travel(easel, owner: str = "me", **fields):
    job = easel.submit("travel", TravelRequest(**{**FAST, **fields}), owner)
    assert job.wait(300), "the travel job did not finish"
    return job


# -- the plan ----------------------------------------------------------------------------------------------


def test_prompts_split_on_bars_outside_brackets_or_by_line():
    assert split_prompts("a cat | a [dog|wolf] | (a horse|zebra:1.1)") == ["a cat", "a [dog|wolf]", "(a horse|zebra:1.1)"]
    assert split_prompts("a cat, by night\n\na dog | with a bar\n") == ["a cat, by night", "a dog | with a bar"]
    assert split_prompts("   ") == []


def test_frame_counts_per_transition_and_loop():
    three = [TravelKeyframe(prompt="a", frames=2), TravelKeyframe(prompt="b"), TravelKeyframe(prompt="c", frames=5)]
    req = TravelRequest(keyframes=three, frames=3)
    plan = plan_frames(req)
    assert len(plan) == req.total_frames == 2 + 3 + 1  # a→b in 2, b→c in 3 (the default), then c's own
    assert [(f.a, f.b) for f in plan] == [(0, 1), (0, 1), (1, 2), (1, 2), (1, 2), (2, 2)]
    assert [round(f.t, 3) for f in plan] == [0, 0.5, 0, 0.333, 0.667, 0]
    looped = plan_frames(req.model_copy(update={"loop": True}))
    assert len(looped) == 2 + 3 + 5 and (looped[-1].a, looped[-1].b) == (2, 0)  # back to a, without repeating it
    assert len(plan_frames(req.model_copy(update={"keyframes_only": True}))) == 3


def test_easing_changes_the_spacing():
    keys = [TravelKeyframe(prompt="a"), TravelKeyframe(prompt="b")]
    spacing = {name: [f.t for f in plan_frames(TravelRequest(keyframes=keys, frames=4, easing=name))][:4]
               for name in EASINGS}
    assert spacing["linear"] == [0, 0.25, 0.5, 0.75]
    assert spacing["ease in"][1] < 0.25 < spacing["ease out"][1]
    assert spacing["ease in out"][1] < 0.25 and spacing["ease in out"][2] == pytest.approx(0.5)


@pytest.mark.parametrize("fields, field", [
    ({"prompt": ""}, "keyframes"),
    ({"prompt": "only one"}, "keyframes"),
    ({"prompt": "a | b", "frames": 0}, "frames"),
    ({"keyframes": [{"prompt": "a", "frames": 0}, {"prompt": "b"}]}, "keyframes.0.frames"),
    ({"keyframes": [{"prompt": ""}, {"prompt": "b"}]}, "keyframes.0.prompt"),
    ({"prompt": "a | b", "n_iter": 2}, "n_iter"),
])
def test_bad_requests_name_the_field(fields, field):
    with pytest.raises(ValidationError) as err:
        TravelRequest(**fields)
    problem = err.value.errors()[0]
    where = ".".join(str(p) for p in problem["loc"]) or problem["msg"].removeprefix("Value error, ").split(":")[0]
    assert where == field, err.value


def test_loras_are_interpolated_by_weight_on_both_sides():
    travel_ = TravelFrames(prompts=["a cat <lora:shiny:1>", "a dog <lora:moody:0.5>"], seeds=[1, 2],
                           frames=[FramePlan(0, 0, 1, 0.25, 0.25)])
    towards_a, towards_b = frame_prompts(travel_, travel_.frames[0])
    assert towards_a == "a cat <lora:shiny:0.75><lora:moody:0.125>"
    assert towards_b == "a dog <lora:shiny:0.75><lora:moody:0.125>"  # one set of LoRAs for the whole frame
    at_start = frame_prompts(travel_, FramePlan(0, 0, 1, 0.0, 0.0))
    assert at_start[0] == "a cat <lora:shiny:1>"  # frame 0: the keyframe's own prompt


# -- the frames and the video ----------------------------------------------------------------------------


def test_the_video_starts_and_ends_on_the_keyframes_stills(easel):
    job = travel(easel, prompt="a red circle | a blue square", frames=3, seed=11, fps=6)
    assert job.error is None, job.error
    made = job.result
    assert (made.frames, made.fps, made.size, made.interrupted) == (4, 6, (64, 64), False)
    frames = [pixels(Image.open(p)) for p in made.frame_paths]
    assert np.array_equal(frames[0], still(easel, "a red circle", 11))
    assert np.array_equal(frames[-1], still(easel, "a blue square", 11))
    distance = [np.abs(f - frames[0]).mean() for f in frames]
    assert distance == sorted(distance) and distance[1] > 0  # moving away from the first keyframe
    info = parse_infotext(Image.open(made.frame_paths[1]).info["parameters"])
    assert (info["Travel frame"], info["Travel keyframes"], info["Travel position"]) == ("1", "1-2", "0.3333")
    assert info["Prompt"] == "a red circle" and info["Seed"] == "11"
    reader = iio.get_reader(made.video)
    try:
        meta = reader.get_meta_data()
        assert meta["codec"] == "h264" and meta["fps"] == 6 and meta["size"] == (64, 64)
        assert reader.count_frames() == 4
    finally:
        reader.close()
    assert made.video.parent.name == made.frame_paths[0].parent.parent.name  # outputs/travel/DATE/


def test_keyframes_with_their_own_seeds_batched_frames_and_upscaled_frames(easel):
    keys = [{"prompt": "a red circle", "seed": 3, "frames": 2}, {"prompt": "a green circle", "seed": 9}]
    job = travel(easel, keyframes=keys, batch_size=3, upscaler="Lanczos", upscale_by=1.5)
    assert job.error is None, job.error
    assert len(job.result.frame_paths) == 3 and job.result.size == (96, 96)
    last = Image.open(job.result.frame_paths[-1])
    assert last.size == (96, 96)
    reference = Image.fromarray(still(easel, "a green circle", 9).astype(np.uint8)).resize((96, 96), Image.LANCZOS)
    assert np.abs(pixels(last) - pixels(reference)).max() <= 2  # batched on CPU: the same picture


def test_an_interrupted_travel_keeps_a_shorter_video_and_resumes_from_its_frames(easel):
    request = TravelRequest(prompt="a red circle | a blue circle", frames=4, seed=2, **FAST)
    from webui.features.travel import StoreFrames, run_travel, save_travel
    model = easel.load_model("tiny-a.safetensors")
    folder = easel.store.reserve("travel", 2)
    sink = Recorder(stop_after=2 * FAST["steps"] + 1)  # frames 0 and 1 finish, frame 2 is cut short
    result = run_travel(easel.engine, model, request, StoreFrames(easel.store, folder, "me"), sink)
    short = save_travel(result, easel.store, folder, "me")
    assert short.interrupted and short.frames == 2 and len(list(folder.glob("frame-*.png"))) == 2
    reader = iio.get_reader(short.video)
    try:
        assert reader.count_frames() == 2
    finally:
        reader.close()
    first_made = Path(short.frame_paths[0]).stat().st_mtime_ns
    resumed = travel(easel, resume=short.folder, prompt="a red circle | a blue circle", frames=4, seed=2)
    assert resumed.error is None, resumed.error
    assert (resumed.result.resumed, resumed.result.frames, resumed.result.interrupted) == (2, 5, False)
    assert Path(resumed.result.frame_paths[0]).stat().st_mtime_ns == first_made  # kept, not made again
    whole = travel(easel, prompt="a red circle | a blue circle", frames=4, seed=2)
    for a, b in zip(resumed.result.frame_paths, whole.result.frame_paths):
        assert np.array_equal(pixels(Image.open(a)), pixels(Image.open(b)))
    other = easel.submit("travel", TravelRequest(**FAST, prompt="x | y", resume=short.folder), "someone else")
    assert other.wait(60) and other.state is JobState.FAILED and "resume" in other.error


def test_progress_says_which_frame(easel):
    sink = Recorder()
    from webui.features.travel import StoreFrames, run_travel
    folder = easel.store.reserve("travel", 1)
    run_travel(easel.engine, easel.load_model("tiny-a.safetensors"),
               TravelRequest(prompt="a | b", frames=2, seed=1, **FAST), StoreFrames(easel.store, folder, None), sink)
    assert any(s.startswith("frame 2 of 3") for s in sink.stages), sink.stages
    assert sink.steps[-1] == (3 * FAST["steps"], 3 * FAST["steps"])


# -- the API ------------------------------------------------------------------------------------------------


@pytest.fixture()
def client(easel):
    with api_client(easel) as c:
        yield c


def test_the_api_queues_a_travel_and_serves_its_video(client):
    body = {"keyframes": [{"prompt": "a red circle", "seed": 4, "frames": 2}, {"prompt": "a blue circle", "seed": 4}],
            **FAST, "fps": 5}
    r = client.post("/easel/v1/travel", json=body)
    assert r.status_code == 202, r.text
    url = r.json()["url"]
    deadline = time.time() + 120
    while (status := client.get(url).json())["state"] not in ("done", "failed", "interrupted"):
        assert time.time() < deadline
        time.sleep(0.1)
    assert status["state"] == "done", status
    assert status["video"]["frames"] == 3 and status["video"]["fps"] == 5 and status["video"]["size"] == [64, 64]
    video = client.get(status["video"]["url"])
    assert video.status_code == 200 and video.headers["content-type"] == "video/mp4" and len(video.content) > 100
    previews = client.post("/easel/v1/travel", json={**body, "keyframes_only": True}).json()["url"]
    while (done := client.get(previews).json())["state"] not in ("done", "failed"):
        time.sleep(0.1)
    assert len(done["images"]) == 2 and done["video"]["url"] is None


@pytest.mark.parametrize("body, field", [
    ({"prompt": "only one"}, "keyframes"),
    ({"keyframes": [{"prompt": "a", "frames": 0}, {"prompt": "b"}]}, "keyframes.0.frames"),
    ({"prompt": "a | b", "frames": 9000}, "frames"),  # over the server's --max-travel-frames (600)
    ({"prompt": "a <lora:nope> | b"}, "prompt"),  # the keyframes came from `prompt`: that is the field sent
    ({"keyframes": [{"prompt": "a"}, {"prompt": "b <lora:nope>"}]}, "keyframes.1.prompt"),
    ({"prompt": "a | b", "resume": "../../etc"}, "resume"),
    ({"prompt": "a | b", "upscaler": "ESRGAN_4x"}, "upscaler"),  # no such file in the upscaler folders
])
def test_bad_travel_requests_are_a_422_naming_the_field(client, body, field):
    r = client.post("/easel/v1/travel", json={**FAST, **body})
    assert r.status_code == 422, r.text
    assert r.json()["detail"][0]["field"] == field, r.json()


# -- meaning: the demo model -----------------------------------------------------------------------------


def test_with_the_demo_model_the_circle_turns_from_red_to_blue(tmp_path):
    from webui.models.manager import DEMO_CHECKPOINT
    from webui.services import Easel
    from webui.settings import settings_from_args
    demo = Path(__file__).resolve().parents[1] / "models" / "Stable-diffusion" / DEMO_CHECKPOINT
    easel = Easel.create(settings_from_args(["--data-dir", str(tmp_path), "--ckpt-dir", str(demo.parent),
                                             "--device", "cpu"]))
    try:
        job = easel.submit("travel", TravelRequest(
            prompt="a large red circle in the centre, white background | a large blue circle in the centre, white "
                   "background", frames=5, seed=1, steps=12, sampler_name="Euler", cfg_scale=5), "me")
        assert job.wait(600) and job.error is None, job.error
        redness = []  # red minus blue over the shape's pixels (not the white background), per frame
        for path in job.result.frame_paths:
            rgb = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32)
            shape = rgb.min(axis=2) < 200
            redness.append(float((rgb[..., 0] - rgb[..., 2])[shape].mean()))
        assert redness[0] > 100 and redness[-1] < -100, redness
        assert all(later < earlier for earlier, later in zip(redness, redness[1:])), redness
    finally:
        easel.close()
