"""The HTTP API on the tiny models: A1111's /sdapi/v1 routes and Easel's /easel/v1 jobs, round trip by round trip."""
from __future__ import annotations

import base64
import io
import json
import shutil
import time

import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from apiclient import api_client
from tiny_models import build_tiny_sd
from webui.settings import Limits
from webui.jobs.queue import JobState

FAST = {"prompt": "a red circle", "steps": 2, "seed": 1234, "width": 64, "height": 64}


@pytest.fixture()
def client(easel):
    with api_client(easel) as c:
        yield c


def png(b64: str) -> Image.Image:
    image = Image.open(io.BytesIO(base64.b64decode(b64)))
    image.load()
    return image


def outputs(easel) -> list:
    return sorted(easel.settings.outputs_dir.rglob("*.png")) if easel.settings.outputs_dir.exists() else []


def wait_job(client, job_id: str, headers=None, timeout: float = 60) -> dict:
    deadline = time.time() + timeout
    while time.time() < deadline:
        status = client.get(f"/easel/v1/jobs/{job_id}", headers=headers).json()
        if status["state"] in ("done", "failed", "interrupted"):
            return status
        time.sleep(0.05)
    raise AssertionError(f"job {job_id} did not finish")


def wait_running(easel, job_id: str, min_step: int = 1) -> None:
    job = easel.queue.get(job_id)
    deadline = time.time() + 60
    while not (job.state is JobState.RUNNING and job.step >= min_step):
        assert time.time() < deadline and not job.done, f"job {job_id} never ran ({job.state})"
        time.sleep(0.01)


# -- txt2img -----------------------------------------------------------------------------------------


def test_txt2img_returns_pngs_with_infotext_and_a1111_info(client):
    r = client.post("/sdapi/v1/txt2img", json={**FAST, "batch_size": 2, "negative_prompt": "blurry"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert len(body["images"]) == 2
    image = png(body["images"][0])
    assert image.size == (64, 64) and image.format == "PNG"
    assert "Seed: 1234" in image.info["parameters"] and "Negative prompt: blurry" in image.info["parameters"]
    info = json.loads(body["info"])
    assert info["seed"] == 1234 and info["all_seeds"] == [1234, 1235]
    assert info["sd_model_name"] == "tiny-a" and len(info["sd_model_hash"]) == 10
    assert info["infotexts"][1] == png(body["images"][1]).info["parameters"]
    assert info["width"] == 64 and info["steps"] == 2 and info["sampler_name"] == "DPM++ 2M"
    for key in ("prompt", "all_prompts", "subseed", "all_subseeds", "cfg_scale", "batch_size", "job_timestamp"):
        assert key in info
    assert body["parameters"]["prompt"] == "a red circle" and body["parameters"]["steps"] == 2


def test_the_same_request_twice_gives_the_same_image(client):
    first = client.post("/sdapi/v1/txt2img", json=FAST).json()["images"][0]
    second = client.post("/sdapi/v1/txt2img", json=FAST).json()["images"][0]
    assert png(first).tobytes() == png(second).tobytes()
    other = client.post("/sdapi/v1/txt2img", json={**FAST, "seed": 99}).json()["images"][0]
    assert png(first).tobytes() != png(other).tobytes()


def test_defaults_are_easels_and_the_size_is_the_checkpoints(client):
    r = client.post("/sdapi/v1/txt2img", json={"prompt": "x", "steps": 2})
    info = json.loads(r.json()["info"])
    assert (info["width"], info["height"]) == (64, 64)  # trained size from the metadata, not A1111's 512
    assert info["cfg_scale"] == 7.0 and info["sampler_name"] == "DPM++ 2M"
    assert r.json()["parameters"]["width"] is None  # parameters echo the request; info says what ran


def test_a1111_client_fields_are_accepted_and_unapplied_ones_are_named(client):
    body = {**FAST, "sampler_name": None, "sampler_index": "Euler a", "scheduler": None, "alwayson_scripts": {},
            "script_args": [], "script_name": None, "send_images": True, "restore_faces": True, "tiling": False,
            "do_not_save_samples": False, "override_settings_restore_afterwards": True, "enable_hr": False,
            "styles": [], "comments": {}, "denoising_strength": 0}
    r = client.post("/sdapi/v1/txt2img", json=body)
    assert r.status_code == 200, r.text
    info = json.loads(r.json()["info"])
    assert info["sampler_name"] == "Euler a"  # sampler_index stands in for a null sampler_name
    assert info["easel_ignored"] == ["restore_faces"]
    assert r.json()["parameters"]["restore_faces"] is True


def test_send_images_false_returns_none_and_save_images_writes_pngs(easel, client):
    r = client.post("/sdapi/v1/txt2img", json={**FAST, "send_images": False})
    assert r.json()["images"] == [] and json.loads(r.json()["info"])["all_seeds"] == [1234]
    assert outputs(easel) == []  # A1111's API default: save_images false
    client.post("/sdapi/v1/txt2img", json={**FAST, "save_images": True})
    saved = outputs(easel)
    assert len(saved) == 1 and "Seed: 1234" in Image.open(saved[0]).info["parameters"]


def test_override_settings_pick_the_model_for_one_request_only(client):
    r = client.post("/sdapi/v1/txt2img", json={**FAST, "override_settings": {
        "sd_model_checkpoint": "tiny-b.safetensors", "CLIP_stop_at_last_layers": 2, "unknown_option": 1}})
    info = json.loads(r.json()["info"])
    assert info["sd_model_name"] == "tiny-b" and info["clip_skip"] == 2
    assert "Clip skip: 2" in info["infotexts"][0] and "override_settings.unknown_option" not in info["easel_ignored"]
    assert "unknown_option" in info["easel_ignored"]
    options = client.get("/sdapi/v1/options").json()
    assert options["CLIP_stop_at_last_layers"] == 1
    next_one = json.loads(client.post("/sdapi/v1/txt2img", json=FAST).json()["info"])
    assert next_one["sd_model_name"] == "tiny-a"  # the override did not stick


# -- options -----------------------------------------------------------------------------------------


def test_options_belong_to_each_client_and_are_validated(client):
    alice, bob = {"X-Easel-Client": "alice"}, {"X-Easel-Client": "bob"}
    # CLIP skip 2: the tiny text encoder has only 2 layers
    r = client.post("/sdapi/v1/options", headers=alice,
                    json={"sd_model_checkpoint": "tiny-b", "CLIP_stop_at_last_layers": 2, "show_progressbar": True})
    assert r.status_code == 200 and r.json() == {"updated": ["CLIP_stop_at_last_layers", "sd_model_checkpoint"],
                                                 "ignored": ["show_progressbar"]}
    mine = client.get("/sdapi/v1/options", headers=alice).json()
    assert mine["sd_model_checkpoint"].startswith("tiny-b.safetensors") and mine["CLIP_stop_at_last_layers"] == 2
    assert mine["samples_format"] == "png" and mine["sd_vae"] == "Automatic"
    assert not client.get("/sdapi/v1/options", headers=bob).json()["sd_model_checkpoint"].startswith("tiny-b")
    info = json.loads(client.post("/sdapi/v1/txt2img", headers=alice, json=FAST).json()["info"])
    assert info["sd_model_name"] == "tiny-b" and info["clip_skip"] == 2
    bad = client.post("/sdapi/v1/options", headers=alice, json={"CLIP_stop_at_last_layers": 99})
    assert bad.status_code == 422 and bad.json()["detail"][0]["field"] == "CLIP_stop_at_last_layers"
    bad = client.post("/sdapi/v1/options", headers=alice, json={"samples_format": "jpg"})
    assert bad.status_code == 422 and bad.json()["detail"][0]["field"] == "samples_format"
    assert client.get("/sdapi/v1/options", headers=alice).json()["CLIP_stop_at_last_layers"] == 2


# -- listings ----------------------------------------------------------------------------------------


def test_model_sampler_and_scheduler_listings(easel, client, model_root):
    models = client.get("/sdapi/v1/sd-models").json()
    names = {m["model_name"]: m for m in models}
    assert {"tiny-a", "tiny-b", "tiny-a-diffusers", "sub_tiny-a-ckpt"} <= set(names)
    assert set(names["tiny-a"]) == {"title", "model_name", "hash", "sha256", "filename", "config"}
    assert names["tiny-a"]["filename"].endswith("tiny-a.safetensors")
    extra = easel.settings.models_dir / "Stable-diffusion" / "tiny-c.safetensors"
    shutil.copy(model_root / "models" / "Stable-diffusion" / "tiny-b.safetensors", extra)
    assert "tiny-c" not in {m["model_name"] for m in client.get("/sdapi/v1/sd-models").json()}
    assert client.post("/sdapi/v1/refresh-checkpoints").status_code == 200
    assert "tiny-c" in {m["model_name"] for m in client.get("/sdapi/v1/sd-models").json()}

    samplers = {s["name"]: s for s in client.get("/sdapi/v1/samplers").json()}
    assert "k_euler_a" in samplers["Euler a"]["aliases"] and samplers["Euler a"]["options"]["stochastic"] == "True"
    assert samplers["DPM++ 2M"]["options"]["algorithm_type"] == "dpmsolver++"
    schedulers = client.get("/sdapi/v1/schedulers").json()
    assert [s["label"] for s in schedulers] == ["Automatic", "Uniform", "Karras", "Exponential"]
    assert schedulers[2]["name"] == "karras" and schedulers[2]["default_rho"] == 7.0
    # a scheduler's `name`, as listed, is accepted back in a request
    r = client.post("/sdapi/v1/txt2img", json={**FAST, "scheduler": "karras", "sampler_name": "Euler"})
    assert json.loads(r.json()["info"])["scheduler"] == "Karras"

    assert client.get("/sdapi/v1/sd-vae").json() == []  # empty folders
    assert client.get("/sdapi/v1/loras").json() == []
    assert client.get("/sdapi/v1/embeddings").json() == {"loaded": {}, "skipped": {}}
    for path in ("prompt-styles", "hypernetworks", "face-restorers", "extensions"):  # none here
        assert client.get(f"/sdapi/v1/{path}").json() == []
    assert [u["name"] for u in client.get("/sdapi/v1/upscalers").json()] == ["None", "Lanczos", "Nearest"]
    assert client.get("/sdapi/v1/latent-upscale-modes").json()[0] == {"name": "Latent"}


def test_vae_lora_and_embedding_listings_reflect_the_folders(easel, client):
    models = easel.settings.models_dir
    (models / "VAE" / "sub").mkdir()
    save_file({"x": torch.zeros(1)}, str(models / "VAE" / "sub" / "soft.safetensors"))
    (models / "VAE" / "notes.txt").write_text("not a VAE file")
    save_file({"x": torch.zeros(1)}, str(models / "Lora" / "shiny.safetensors"))
    assert client.get("/sdapi/v1/sd-vae").json() == [
        {"model_name": "sub/soft.safetensors", "filename": str(models / "VAE" / "sub" / "soft.safetensors")}]
    assert client.get("/sdapi/v1/loras").json() == [
        {"name": "shiny", "alias": "shiny", "path": str(models / "Lora" / "shiny.safetensors"), "metadata": {}}]
    for path in ("refresh-vae", "refresh-loras"):
        assert client.post(f"/sdapi/v1/{path}").status_code == 200

    g = torch.Generator().manual_seed(0)
    save_file({"emb_params": torch.randn(3, 32, generator=g)}, str(models / "embeddings" / "dark-mood.safetensors"))
    assert client.get("/sdapi/v1/embeddings").json()["loaded"] == {}  # as last scanned, like A1111
    assert client.post("/sdapi/v1/refresh-checkpoints").status_code == 200  # checkpoints and embeddings
    assert client.get("/sdapi/v1/embeddings").json() == {"loaded": {"dark-mood": {
        "step": None, "sd_checkpoint": None, "sd_checkpoint_name": None, "shape": 32, "vectors": 3}}, "skipped": {}}
    torch.save({"clip_l": torch.randn(2, 32, generator=g), "clip_g": torch.randn(2, 64, generator=g)},
               models / "embeddings" / "xl-pair.pt")
    (models / "embeddings" / "broken.pt").write_bytes(b"not a pickle at all")
    assert client.post("/sdapi/v1/refresh-embeddings").status_code == 200
    listed = client.get("/sdapi/v1/embeddings").json()
    assert set(listed["loaded"]) == {"dark-mood", "xl-pair"}
    assert (listed["loaded"]["xl-pair"]["shape"], listed["loaded"]["xl-pair"]["vectors"]) == (96, 2)
    assert set(listed["skipped"]) == {"broken"} and "broken.pt" in listed["skipped"]["broken"]["error"]


@pytest.fixture()
def vae_file(easel):
    """A VAE from another tiny model, in diffusers' layout: it decodes visibly differently."""
    path = easel.settings.models_dir / "VAE" / "other.safetensors"
    save_file({k: v.contiguous() for k, v in build_tiny_sd(seed=7).vae.state_dict().items()}, str(path))
    return path


def test_sd_vae_per_caller_and_override_settings_per_request(easel, client, vae_file):
    assert client.get("/sdapi/v1/sd-vae").json() == [{"model_name": "other.safetensors", "filename": str(vae_file)}]
    plain = client.post("/sdapi/v1/txt2img", json=FAST).json()
    assert "VAE:" not in png(plain["images"][0]).info["parameters"]  # Automatic: no VAE named after tiny-a
    r = client.post("/sdapi/v1/txt2img", json={**FAST, "override_settings": {"sd_vae": "other.safetensors"}})
    assert r.status_code == 200, r.text
    info = json.loads(r.json()["info"])
    assert "VAE: other" in png(r.json()["images"][0]).info["parameters"] and "VAE hash: " in info["infotexts"][0]
    assert info["sd_vae_name"] == "other" and len(info["sd_vae_hash"]) == 10 and info["easel_ignored"] == []
    assert png(r.json()["images"][0]).tobytes() != png(plain["images"][0]).tobytes()
    assert client.get("/sdapi/v1/options").json()["sd_vae"] == "Automatic"  # the override did not stick
    again = client.post("/sdapi/v1/txt2img", json=FAST).json()
    assert png(again["images"][0]).tobytes() == png(plain["images"][0]).tobytes()

    alice = {"X-Easel-Client": "alice"}
    assert client.post("/sdapi/v1/options", headers=alice, json={"sd_vae": "other"}).status_code == 200
    assert client.get("/sdapi/v1/options", headers=alice).json()["sd_vae"] == "other.safetensors"
    mine = json.loads(client.post("/sdapi/v1/txt2img", headers=alice, json=FAST).json()["info"])
    assert mine["sd_vae_name"] == "other"
    own = json.loads(client.post("/sdapi/v1/txt2img", headers=alice, json={**FAST, "vae": "None"}).json()["info"])
    assert own["sd_vae_name"] is None  # the request's own `vae` wins over the caller's option
    assert json.loads(client.post("/sdapi/v1/txt2img", json=FAST).json()["info"])["sd_vae_name"] is None

    for r, field in (
        (client.post("/sdapi/v1/options", json={"sd_vae": "nope"}), "sd_vae"),
        (client.post("/sdapi/v1/options", json={"sd_vae": "../VAE/other.safetensors"}), "sd_vae"),
        (client.post("/sdapi/v1/txt2img", json={**FAST, "override_settings": {"sd_vae": "nope"}}),
         "override_settings.sd_vae"),
        (client.post("/sdapi/v1/txt2img", json={**FAST, "vae": "/etc/passwd"}), "vae"),
    ):
        assert r.status_code == 422 and r.json()["detail"][0]["field"] == field, r.text


def test_memory_and_cmd_flags(client):
    memory = client.get("/sdapi/v1/memory").json()
    assert memory["ram"]["total"] > memory["ram"]["used"] > 0
    assert "error" in memory["cuda"] or "system" in memory["cuda"]
    flags = client.get("/sdapi/v1/cmd-flags").json()
    assert flags["device"] == "cpu" and flags["api"] is False and flags["gradio_auth"] is None


# -- png-info ----------------------------------------------------------------------------------------


def test_png_info_reads_back_what_txt2img_wrote(client):
    image = client.post("/sdapi/v1/txt2img", json={**FAST, "negative_prompt": "ugly"}).json()["images"][0]
    r = client.post("/sdapi/v1/png-info", json={"image": "data:image/png;base64," + image})
    assert r.status_code == 200
    body = r.json()
    assert body["info"].startswith("a red circle\nNegative prompt: ugly\nSteps: 2")
    assert body["parameters"]["Seed"] == "1234" and body["parameters"]["Size-1"] == 64
    assert body["parameters"]["Negative prompt"] == "ugly"
    plain = io.BytesIO()
    Image.new("RGB", (8, 8)).save(plain, format="PNG")
    empty = client.post("/sdapi/v1/png-info", json={"image": base64.b64encode(plain.getvalue()).decode()}).json()
    assert empty == {"info": "", "items": {}, "parameters": {}}


@pytest.mark.parametrize("value, words", [
    ("not base64 at all!", "not valid base64"),
    (base64.b64encode(b"plain text, not an image").decode(), "not an image"),
    ("https://example.com/cat.png", "not fetched"),
    ("file:///etc/passwd", "not fetched"),
    ("", "empty"),
])
def test_png_info_refuses_what_is_not_an_image(client, value, words):
    r = client.post("/sdapi/v1/png-info", json={"image": value})
    assert r.status_code == 422
    detail = r.json()["detail"][0]
    assert detail["field"] == "image" and words in detail["msg"]


# -- bad input ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("body, field", [
    ({"steps": 0}, "steps"),
    ({"steps": "many"}, "steps"),
    ({"width": 65}, "width"),
    ({"height": 8192}, "height"),
    ({"batch_size": 9}, "batch_size"),
    ({"seed": -2}, "seed"),
    ({"cfg_scale": 31}, "cfg_scale"),
    ({"sampler_name": "Euler b"}, "sampler_name"),
    ({"scheduler": "cosine"}, "scheduler"),
    ({"prompt": ["a", "list"]}, "prompt"),
    ({"override_settings": {"CLIP_stop_at_last_layers": 0}}, "override_settings.CLIP_stop_at_last_layers"),
    ({"override_settings": "tiny-b"}, "override_settings"),
    ({"checkpoint": "no-such-model"}, "checkpoint"),
    ({"send_images": "perhaps"}, "send_images"),
])
def test_invalid_fields_get_a_422_naming_the_field(easel, client, body, field):
    r = client.post("/sdapi/v1/txt2img", json={**FAST, "save_images": True, **body})
    assert r.status_code == 422, r.text
    assert field in [d["field"] for d in r.json()["detail"]] and r.json()["message"].startswith(field)
    assert outputs(easel) == []


@pytest.mark.parametrize("raw, field", [
    ('{"prompt": "x", "cfg_scale": NaN}', "cfg_scale"),
    ('{"prompt": "x", "alwayson_scripts": {"a": Infinity}}', "alwayson_scripts.a"),
    ('{"prompt": "\\ud800"}', "prompt"),
    ('{"prompt": "x", "steps": 2', "body"),
    ('[1, 2, 3]', "body"),
    ('', "body"),
])
def test_malformed_json_gets_a_422_never_a_500(client, raw, field):
    r = client.post("/sdapi/v1/txt2img", content=raw.encode(), headers={"content-type": "application/json"})
    assert r.status_code == 422, r.text
    assert field in r.json()["message"]


@pytest.mark.parametrize("name", [
    "../../etc/passwd", "/etc/passwd", "..\\..\\windows\\win.ini", "C:\\models\\x.safetensors",
    "sub/../../tiny-a.safetensors", "~/models/x.safetensors", "tiny-a.safetensors\x00.txt",
])
def test_checkpoint_names_never_become_paths(client, name):
    for r, field in (
        (client.post("/sdapi/v1/txt2img", json={**FAST, "checkpoint": name}), "checkpoint"),
        (client.post("/sdapi/v1/txt2img", json={**FAST, "override_settings": {"sd_model_checkpoint": name}}),
         "override_settings.sd_model_checkpoint"),
        (client.post("/sdapi/v1/options", json={"sd_model_checkpoint": name}), "sd_model_checkpoint"),
        (client.post("/easel/v1/jobs", json={**FAST, "checkpoint": name}), "checkpoint"),
    ):
        assert r.status_code == 422, r.text
        assert r.json()["detail"][0]["field"] == field and "not a file path" in r.json()["message"]


def test_a_checkpoint_in_a_subfolder_is_still_found_by_its_name(client):
    r = client.post("/sdapi/v1/txt2img", json={**FAST, "checkpoint": "sub/tiny-a-ckpt.ckpt"})
    assert r.status_code == 200 and json.loads(r.json()["info"])["sd_model_name"] == "sub_tiny-a-ckpt"


def test_server_limits_refuse_oversized_requests(easel):
    with api_client(easel, Limits(max_steps=3, max_pixels=64 * 64, max_batch=2, max_body_bytes=4096)) as client:
        assert client.post("/sdapi/v1/txt2img", json={**FAST, "prompt": "x" * 5000}).status_code == 413
        assert client.post("/sdapi/v1/txt2img", json={**FAST, "steps": 4}).json()["detail"][0]["field"] == "steps"
        big = client.post("/sdapi/v1/txt2img", json={**FAST, "width": 128})
        assert big.status_code == 422 and big.json()["detail"][0]["field"] == "width"
        many = client.post("/sdapi/v1/txt2img", json={**FAST, "batch_size": 2, "n_iter": 2})
        assert many.status_code == 422 and many.json()["detail"][0]["field"] == "n_iter"
        assert client.post("/sdapi/v1/txt2img", json={**FAST, "steps": 3, "width": None}).status_code == 200


# -- progress and interrupt ---------------------------------------------------------------------------


def test_progress_is_the_callers_own_job(easel, client):
    alice, bob = {"X-Easel-Client": "alice"}, {"X-Easel-Client": "bob"}
    idle = client.get("/sdapi/v1/progress", headers=alice).json()
    assert idle["progress"] == 0 and idle["state"]["job_count"] == 0 and idle["current_image"] is None
    job_id = client.post("/easel/v1/jobs", headers=alice, json={**FAST, "steps": 40}).json()["id"]
    wait_running(easel, job_id, min_step=2)
    mine = client.get("/sdapi/v1/progress", headers=alice).json()
    assert 0 < mine["progress"] < 1 and mine["state"]["job_count"] == 1 and mine["state"]["job_id"] == job_id
    assert mine["state"]["sampling_steps"] == 40 and mine["eta_relative"] > 0
    assert png(mine["current_image"]).size == (16, 16)  # the latent preview
    assert client.get("/sdapi/v1/progress", headers=alice, params={"skip_current_image": True}).json()[
        "current_image"] is None
    theirs = client.get("/sdapi/v1/progress", headers=bob).json()
    assert theirs["state"]["job_count"] == 0 and theirs["progress"] == 0
    client.post("/sdapi/v1/interrupt", headers=alice)
    assert wait_job(client, job_id, alice)["state"] == "interrupted"


def test_interrupt_and_skip_stop_only_the_callers_jobs(easel, client):
    alice, bob = {"X-Easel-Client": "alice"}, {"X-Easel-Client": "bob"}
    running = client.post("/easel/v1/jobs", headers=bob, json={**FAST, "steps": 20}).json()["id"]
    queued = client.post("/easel/v1/jobs", headers=bob, json=FAST).json()["id"]
    wait_running(easel, running)
    assert client.post("/sdapi/v1/interrupt", headers=alice).json() == {"interrupted": []}
    assert client.post("/sdapi/v1/skip", headers=alice).json() == {"interrupted": []}
    assert client.post(f"/easel/v1/jobs/{running}/interrupt", headers=alice).status_code == 404
    assert client.get(f"/easel/v1/jobs/{running}", headers=alice).status_code == 404
    done = wait_job(client, running, bob)
    assert done["state"] == "done" and len(done["images"]) == 1
    assert wait_job(client, queued, bob)["state"] == "done"

    running = client.post("/easel/v1/jobs", headers=bob, json={**FAST, "steps": 40}).json()["id"]
    queued = client.post("/easel/v1/jobs", headers=bob, json=FAST).json()["id"]
    wait_running(easel, running)
    assert sorted(client.post("/sdapi/v1/interrupt", headers=bob).json()["interrupted"]) == sorted([running, queued])
    assert wait_job(client, running, bob)["state"] == "interrupted"
    assert wait_job(client, queued, bob)["state"] == "interrupted"


def test_a_sync_txt2img_interrupted_midway_answers_with_what_it_has(easel, client):
    import threading

    answer: dict = {}
    worker = threading.Thread(target=lambda: answer.update(
        r=client.post("/sdapi/v1/txt2img", headers={"X-Easel-Client": "carol"}, json={**FAST, "steps": 40})))
    worker.start()
    deadline = time.time() + 60
    while not (easel.queue.current and easel.queue.current.step >= 1):
        assert time.time() < deadline
        time.sleep(0.01)
    assert client.post("/sdapi/v1/skip", headers={"X-Easel-Client": "carol"}).json()["interrupted"]
    worker.join(60)
    r = answer["r"]
    assert r.status_code == 200 and r.json()["images"] == [] and json.loads(r.json()["info"])["interrupted"] is True


# -- Easel's job API ----------------------------------------------------------------------------------


def test_easel_jobs_submit_poll_and_list(easel, client):
    me = {"X-Easel-Client": "dave"}
    r = client.post("/easel/v1/jobs", headers=me, json={**FAST, "kind": "txt2img"})
    assert r.status_code == 202 and r.headers["location"] == f"/easel/v1/jobs/{r.json()['id']}"
    job_id = r.json()["id"]
    status = wait_job(client, job_id, me)
    assert status["state"] == "done" and status["progress"] == 1.0 and status["position"] == 0
    assert status["owner"] == "client:dave" and status["kind"] == "txt2img"
    assert png(status["images"][0]).info["parameters"] == status["info"]["infotexts"][0]
    same = client.post("/sdapi/v1/txt2img", json=FAST).json()["images"][0]
    assert png(same).tobytes() == png(status["images"][0]).tobytes()
    assert client.get(f"/easel/v1/jobs/{job_id}", headers=me, params={"images": False}).json()["images"] is None
    listed = client.get("/easel/v1/jobs", headers=me).json()["jobs"]
    assert [j["id"] for j in listed] == [job_id]
    assert client.get("/easel/v1/jobs", headers={"X-Easel-Client": "erin"}).json()["jobs"] == []
    assert client.get("/easel/v1/jobs/000000000000", headers=me).status_code == 404
    bad = client.post("/easel/v1/jobs", headers=me, json={**FAST, "kind": "inpaint"})
    assert bad.status_code == 422 and bad.json()["detail"][0]["field"] == "kind"


def test_queued_jobs_report_their_position(easel, client):
    first = client.post("/easel/v1/jobs", headers={"X-Easel-Client": "a"}, json={**FAST, "steps": 20}).json()["id"]
    wait_running(easel, first)
    second = client.post("/easel/v1/jobs", headers={"X-Easel-Client": "a"}, json=FAST).json()
    third = client.post("/easel/v1/jobs", headers={"X-Easel-Client": "b"}, json=FAST).json()
    assert (second["position"], third["position"]) == (1, 1)  # when each was submitted
    now = client.get(f"/easel/v1/jobs/{second['id']}", headers={"X-Easel-Client": "a"}).json()
    assert now["position"] == 2  # b has not had a turn yet, so b's job overtook a's second
    progress = client.get("/sdapi/v1/progress", headers={"X-Easel-Client": "b"}).json()
    assert progress["state"]["queue_position"] == 1 and "queue" in progress["textinfo"]
    for job_id, who in ((first, "a"), (second["id"], "a"), (third["id"], "b")):
        assert wait_job(client, job_id, {"X-Easel-Client": who})["state"] == "done"


def test_a_bad_client_header_is_a_422(client):
    r = client.get("/sdapi/v1/options", headers={"X-Easel-Client": "has spaces and / slashes"})
    assert r.status_code == 422 and r.json()["detail"][0]["field"] == "X-Easel-Client"


def test_openapi_documents_the_derived_request(client):
    schema = client.get("/openapi.json").json()
    assert "/sdapi/v1/txt2img" in schema["paths"] and "/easel/v1/jobs/{job_id}" in schema["paths"]
    request = schema["components"]["schemas"]["ApiTxt2ImgRequest"]
    assert request["properties"]["steps"]["maximum"] == 500 and request["properties"]["steps"]["default"] == 20
    assert request["additionalProperties"] is True and "override_settings" in request["properties"]
    assert client.get("/docs").status_code == 200
