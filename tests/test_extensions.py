"""Extensions: loading (and failing to), every extension point's effect through a test extension, the
settings' one description (API, infotext, paste), scripts, options, routes, and the shipped example."""
from __future__ import annotations

import json
import logging
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from app import build_app
from sinks import Recorder
from webui.extensions.loader import load_extensions
from webui.generation.extension_points import Guidance
from webui.generation.requests import Txt2ImgRequest
from webui.generation.zoom import ZoomRequest
from webui.images.infotext import parse_infotext
from webui.services import Easel
from webui.settings import settings_from_args

HERE = Path(__file__).resolve().parent
BASE = dict(prompt="a red circle", steps=3, width=64, height=64, sampler_name="Euler", cfg_scale=5.0, seed=3,
            checkpoint="tiny-a.safetensors")


def make(tmp_path: Path, model_root: Path, *flags: str) -> tuple[Easel, object]:
    data = tmp_path / "data"
    shutil.copytree(HERE / "extensions", data / "extensions")
    settings = settings_from_args(["--data-dir", str(data), "--ckpt-dir", str(model_root / "models" / "Stable-diffusion"),
                                   "--device", "cpu", *flags])
    easel = Easel.create(settings)
    return easel, load_extensions(settings, easel.features, easel.options)


@pytest.fixture()
def extended(tmp_path, model_root):
    easel, extensions = make(tmp_path, model_root)
    yield easel, extensions
    easel.close()


def arr(image) -> np.ndarray:
    return np.asarray(image.convert("RGB")).astype(np.int16)


def generate(easel, probe: dict | None = None, **changes):
    request = Txt2ImgRequest(**{**BASE, **changes}, alwayson_scripts={"probe": probe} if probe is not None else {})
    return easel.engine.generate(easel.load_model("tiny-a.safetensors"), request)


def info(result) -> dict:
    return parse_infotext(result.infotexts[0])


# -- loading ----------------------------------------------------------------------------------------


def test_broken_extensions_are_disabled_with_a_reason_and_the_rest_works(tmp_path, model_root, caplog):
    with caplog.at_level(logging.ERROR):
        easel, extensions = make(tmp_path, model_root)
    try:
        states = {e.name: e.state for e in extensions.items}
        assert states == {"broken-import": "failed", "broken-register": "failed", "probe": "enabled",
                          "cfg-rescale": "enabled"}
        assert "RuntimeError: this extension is broken on purpose" in extensions.find("broken-import").reason
        assert "ValueError: register failed half-way" in extensions.find("broken-register").reason
        assert "extension broken-import is disabled" in caplog.text and "extension broken-register is disabled" in caplog.text
        assert easel.features.find("half registered") is None  # nothing of a failed extension stays
        assert easel.features.find("probe") is not None and easel.features.find_script("probe pair") is not None
        assert info(generate(easel, {"invert": True}))["Probe invert"] == "True"
    finally:
        easel.close()


@pytest.mark.parametrize("flags, config, off", [
    (["--disable-extensions"], None, {"probe", "cfg-rescale", "broken-import", "broken-register"}),
    (["--disable-extension", "probe"], None, {"probe"}),
    ([], ["probe", "broken-import"], {"probe", "broken-import"}),
])
def test_extensions_can_be_switched_off(tmp_path, model_root, flags, config, off):
    if config is not None:
        (tmp_path / "data").mkdir()
        (tmp_path / "data" / "config.json").write_text(json.dumps({"disabled_extensions": config}))
    easel, extensions = make(tmp_path, model_root, *flags)
    try:
        assert {e.name for e in extensions.items if e.state == "disabled"} == off
        assert (easel.features.find("probe") is None) == ("probe" in off)
        assert generate(easel).images  # generation works either way
    finally:
        easel.close()


# -- every extension point ----------------------------------------------------------------------------


def test_prepare_changes_each_images_prompt_and_the_infotext_says_so(extended):
    easel, _ = extended
    result = generate(easel, {"suffix": ", blue background"}, batch_size=2)
    assert result.prompts == ["a red circle, blue background"] * 2
    assert info(result)["Prompt"] == "a red circle, blue background"
    assert info(result)["Probe suffix"] == ", blue background"
    assert not np.array_equal(arr(result.images[0]), arr(generate(easel, {}).images[0]))


def test_before_batch_can_replace_the_starting_noise(extended):
    easel, _ = extended
    swapped = generate(easel, {"noise_seed": 50})
    assert np.array_equal(arr(swapped.images[0]), arr(generate(easel, None, seed=50).images[0]))
    assert info(swapped)["Seed"] == "3"  # the job's own seed is still what it reports


def test_unet_inputs_and_after_step_run_once_per_step(extended):
    easel, _ = extended
    params = info(generate(easel, {}, steps=4))
    assert params["Probe UNet calls"] == "4" and params["Probe steps"] == "4"


def test_a_guidance_hook_changes_the_combination(extended):
    easel, _ = extended
    doubled = generate(easel, {"guidance_factor": 2.0}, cfg_scale=3.0)
    assert np.array_equal(arr(doubled.images[0]), arr(generate(easel, None, cfg_scale=6.0).images[0]))


def test_a_further_pass_denoises_again_and_counts_in_progress(extended):
    easel, _ = extended

    sink = Recorder()
    request = Txt2ImgRequest(**{**BASE, "steps": 4}, alwayson_scripts={"probe": {"second_pass": 0.5}})
    result = easel.engine.generate(easel.load_model("tiny-a.safetensors"), request, sink)
    assert sink.steps == [(i, 6) for i in range(1, 7)]  # 4 steps, then the pass's 2
    assert info(result)["Probe UNet calls"] == "6"
    assert not np.array_equal(arr(result.images[0]), arr(generate(easel, {}, steps=4).images[0]))


def test_postprocess_changes_the_decoded_images(extended):
    easel, _ = extended
    plain = arr(generate(easel, {}).images[0])
    assert np.array_equal(arr(generate(easel, {"invert": True}).images[0]), 255 - plain)


def test_before_save_and_after_save_see_every_saved_image_with_its_owner(extended):
    easel, _ = extended
    probe = easel.features.find("probe")
    job = easel.submit("txt2img", Txt2ImgRequest(**BASE, alwayson_scripts={"probe": {"mark_saved": True}}), "alice")
    assert job.wait(60) and job.error is None, job.error
    path = job.result.paths[0]
    from PIL import Image
    with Image.open(path) as im:
        assert im.info["parameters"].endswith("Probe saved: yes")
    assert (str(path), "alice", "txt2img-images") in probe.saved
    zoom = easel.submit("zoom", ZoomRequest(prompt="a red circle", keyframes=1, steps=2, seed=1, fps=2,
                                            checkpoint="tiny-a.safetensors"), "bob")
    assert zoom.wait(60) and zoom.error is None, zoom.error
    zoom_files = [s for s in probe.saved if s[2] == "zoom"]
    keyframes = [s for s in zoom_files if s[0].endswith(".png")]
    assert len(keyframes) == 2 and all(owner == "bob" for _, owner, _ in zoom_files)
    assert [s[0] for s in zoom_files if s[0].endswith(".mp4")] == [str(zoom.result.video)]  # the video too


def test_a_script_runs_the_whole_job_through_the_pipeline(extended):
    easel, _ = extended
    request = Txt2ImgRequest(**BASE, script_name="Probe Pair", script_args=[5])
    result = easel.engine.generate(easel.load_model("tiny-a.safetensors"), request)
    assert result.seeds == [3, 8]
    assert np.array_equal(arr(result.images[1]), arr(generate(easel, None, seed=8).images[0]))


def test_the_prompt_schedule_switches_at_a1111s_step(extended):
    """`[red:blue:2]` at 4 steps: A1111's 0-based step counter gives steps 0, 1 and 2 the first prompt and
    step 3 the second (its `current_step <= end_at_step` rule); checked on what the UNet is given."""
    easel, _ = extended
    model = easel.load_model("tiny-a.safetensors")
    request = Txt2ImgRequest(**{**BASE, "steps": 4, "prompt": "a [red:blue:2] circle"}, alwayson_scripts={"probe": {}})
    probe = easel.features.find("probe")
    seen = {}
    original = probe.postprocess

    def keep(run, batch, outputs):
        seen["contexts"] = run.state["probe"]["contexts"]
        original(run, batch, outputs)

    probe.postprocess = keep
    try:
        easel.engine.generate(model, request)
    finally:
        del probe.postprocess
    encoder = easel.engine.prompt_encoder(model, 1)
    red, blue = encoder.encode("a red circle"), encoder.encode("a blue circle")
    used = []
    for _, number, context in seen["contexts"]:
        cond = context[1:]  # [uncond, cond]
        used.append("red" if torch.allclose(cond, red) else "blue" if torch.allclose(cond, blue) else "?")
    assert [n for _, n, _ in seen["contexts"]] == [0, 1, 2, 3]
    assert used == ["red", "red", "red", "blue"]


# -- the API and options ------------------------------------------------------------------------------


@pytest.fixture()
def api(extended):
    easel, extensions = extended
    easel.manager.preferred = "tiny-a.safetensors"
    easel.settings = replace(easel.settings, api=True, nowebui=True)
    with TestClient(build_app(easel, easel.settings, extensions)) as client:
        yield client


def field_of(response) -> str:
    assert response.status_code == 422, response.text
    return response.json()["detail"][0]["field"]


def test_alwayson_scripts_in_a1111s_shape_and_their_refusals(api):
    body = {**BASE, "alwayson_scripts": {"probe": {"args": [True, "", -1, 1.0, 0.0, True]}}}
    r = api.post("/sdapi/v1/txt2img", json=body)
    assert r.status_code == 200, r.text
    assert "Probe invert: True" in json.loads(r.json()["info"])["infotexts"][0]
    assert "alwayson_scripts" not in json.loads(r.json()["info"])["easel_ignored"]
    assert field_of(api.post("/sdapi/v1/txt2img", json={**BASE, "alwayson_scripts": {"nope": {"args": []}}})) \
        == "alwayson_scripts.nope"
    bad = {**BASE, "alwayson_scripts": {"probe": {"args": [True, "", -1, 9.0]}}}
    assert field_of(api.post("/sdapi/v1/txt2img", json=bad)) == "alwayson_scripts.probe.args.3"
    assert field_of(api.post("/sdapi/v1/txt2img", json={**BASE, "alwayson_scripts": {"probe": {"invert": "x"}}})) \
        == "alwayson_scripts.probe.invert"
    assert field_of(api.post("/sdapi/v1/txt2img", json={**BASE, "script_name": "nope"})) == "script_name"
    assert field_of(api.post("/sdapi/v1/txt2img", json={**BASE, "script_name": "probe pair", "script_args": [0]})) \
        == "script_args.0"
    pair = api.post("/sdapi/v1/txt2img", json={**BASE, "script_name": "probe pair", "script_args": [2]})
    assert json.loads(pair.json()["info"])["all_seeds"] == [3, 5] and len(pair.json()["images"]) == 2


def test_options_of_extensions_are_per_caller_and_overridable(api):
    alice = {"X-Easel-Client": "alice"}
    assert api.get("/sdapi/v1/options", headers=alice).json()["probe_label"] == "plain"
    assert api.post("/sdapi/v1/options", headers=alice, json={"probe_label": "mine"}).status_code == 200
    def label(headers, **extra):
        r = api.post("/sdapi/v1/txt2img", headers=headers, json={**BASE, "alwayson_scripts": {"probe": {}}, **extra})
        return parse_infotext(json.loads(r.json()["info"])["infotexts"][0])["Probe label"]
    assert label(alice) == "mine"
    assert label({"X-Easel-Client": "bob"}) == "plain"
    assert label(alice, override_settings={"probe_label": "once"}) == "once"
    assert label(alice) == "mine"


def test_listings_and_an_extensions_own_route(api):
    scripts = api.get("/sdapi/v1/scripts").json()
    assert {"probe", "probe pair", "cfg rescale"} <= set(scripts["txt2img"])
    infos = {i["name"]: i for i in api.get("/sdapi/v1/script-info").json()}
    assert [a["label"] for a in infos["probe"]["args"]][:3] == ["enabled", "suffix", "noise_seed"]
    assert infos["probe"]["is_alwayson"] and not infos["probe pair"]["is_alwayson"]
    listed = {e["name"]: e for e in api.get("/sdapi/v1/extensions").json()}
    assert listed["probe"]["enabled"] and listed["broken-import"]["state"] == "failed"
    assert "probe pair" in listed["probe"]["features"]
    mine = api.get("/easel/v1/ext/probe/saved", headers={"X-Easel-Client": "carol"}).json()
    assert mine["caller"] == "client:carol"


# -- the shipped example: CFG Rescale ------------------------------------------------------------------


def test_cfg_rescale_is_diffusers_rescale_and_round_trips_through_the_infotext(extended):
    easel, _ = extended
    feature = easel.features.find("cfg rescale")
    plain = generate(easel)
    off = easel.engine.generate(easel.load_model("tiny-a.safetensors"),
                                Txt2ImgRequest(**BASE, alwayson_scripts={"cfg rescale": {"args": [0.0]}}))
    assert np.array_equal(arr(off.images[0]), arr(plain.images[0]))  # φ = 0: not active at all
    assert "CFG Rescale phi" not in info(off)
    on = easel.engine.generate(easel.load_model("tiny-a.safetensors"),
                               Txt2ImgRequest(**BASE, alwayson_scripts={"cfg rescale": {"phi": 0.7}}))
    assert np.abs(arr(on.images[0]) - arr(plain.images[0])).mean() > 0.1
    assert info(on)["CFG Rescale phi"] == "0.7"
    assert easel.features.settings_from_infotext(info(on)) == {"cfg rescale": {"phi": 0.7}}
    # the combination itself, against the formula of Lin et al. §3.4
    torch.manual_seed(0)
    uncond, cond = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    g = Guidance(uncond, cond, 7.0, result=uncond + 7.0 * (cond - uncond))
    cfg = g.result.clone()

    class FakeRun:
        def settings_of(self, _):
            return feature.settings(phi=0.7)

    class FakeStep:
        run = FakeRun()

    feature.guidance(FakeStep(), g)
    rescaled = cfg * cond.std(dim=(1, 2, 3), keepdim=True) / cfg.std(dim=(1, 2, 3), keepdim=True)
    assert torch.allclose(g.result, 0.7 * rescaled + 0.3 * cfg)
