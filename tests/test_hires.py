"""Hires fix: sizes, the second pass's steps, latent and pixel upscalers, denoising 0, prompt editing through
both passes, another checkpoint, the infotext both ways, and the API with A1111's (webuiapi's) fields."""
from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from app import build_app
from sinks import Recorder
from webui.features.hires import target_size, HiresSettings
from webui.generation.extension_points import Feature, Step, UnetCall
from webui.generation.latents import encode_images, latents_to_images
from webui.generation.requests import Txt2ImgRequest
from webui.images.infotext import parse_infotext

BASE = dict(prompt="a red circle", steps=4, width=64, height=64, seed=3, sampler_name="Euler", cfg_scale=5.0,
            checkpoint="tiny-a.safetensors")


def hires(**settings) -> dict:
    return {"hires fix": {"enable_hr": True, **settings}}


def run(easel, sink=None, **changes):
    scripts = changes.pop("alwayson_scripts", {})
    return easel.engine.generate(easel.load_model(changes.get("checkpoint", BASE["checkpoint"])),
                                 Txt2ImgRequest(**{**BASE, **changes}, alwayson_scripts=scripts), sink)


def arr(image) -> np.ndarray:
    return np.asarray(image).astype(np.int16)


@pytest.mark.parametrize("settings, size", [
    ({"hr_scale": 2.0}, (128, 128)),
    ({"hr_scale": 1.5}, (96, 96)),
    ({"hr_resize_x": 96}, (96, 96)),  # one side given: the other keeps the aspect
    ({"hr_resize_x": 128, "hr_resize_y": 96}, (128, 96)),
])
def test_output_size(easel, settings, size):
    result = run(easel, alwayson_scripts=hires(**settings, denoising_strength=0.5))
    assert result.images[0].size == size
    assert target_size(HiresSettings(**settings), 64, 64) == size


def test_the_second_pass_runs_its_own_steps(easel):
    sink = Recorder()
    run(easel, sink, alwayson_scripts=hires(hr_second_pass_steps=6, denoising_strength=0.5))
    assert sink.steps == [(i, 7) for i in range(1, 8)]  # 4 first-pass steps, then 6 × 0.5 = 3


def test_latent_and_lanczos_upscales_both_refine_and_differ(easel):
    plain = run(easel)
    latent = run(easel, alwayson_scripts=hires(hr_upscaler="Latent"))
    lanczos = run(easel, alwayson_scripts=hires(hr_upscaler="Lanczos"))
    assert latent.images[0].size == lanczos.images[0].size == (128, 128)
    assert np.abs(arr(latent.images[0]) - arr(lanczos.images[0])).mean() > 1
    small = arr(plain.images[0])
    assert np.abs(arr(latent.images[0].resize((64, 64))) - small).mean() > 0.5  # the pass did something


def test_denoising_0_with_lanczos_is_the_upscaled_first_pass(easel):
    """Nothing denoised: the first pass upscaled with Pillow's Lanczos, through one VAE round trip."""
    model = easel.load_model("tiny-a.safetensors")
    first = run(easel).images[0]
    upscaled = first.resize((128, 128), 1)  # Image.Resampling.LANCZOS
    expected = latents_to_images(model, encode_images(model, [upscaled]))[0]
    got = run(easel, alwayson_scripts=hires(hr_upscaler="Lanczos", denoising_strength=0.0)).images[0]
    assert np.abs(arr(got) - arr(expected)).max() <= 1


class ContextRecorder(Feature):
    """A test feature: what conditioning the UNet gets at each step of each pass."""

    name = "context recorder"

    def __init__(self):
        self.seen: list[tuple[str, int, torch.Tensor]] = []

    def active(self, run) -> bool:
        return True

    def unet_inputs(self, step: Step, call: UnetCall) -> None:
        self.seen.append((step.pass_name, step.number, call.context[-1:].clone()))


def test_prompt_editing_counts_through_both_passes(easel):
    """`[red:blue:6]` with 4 first-pass steps never switches in the first pass; in the hires pass the count goes
    on from 4, so the switch is after hires step 2 (A1111's rule, webui/prompts.py)."""
    recorder = easel.features.add(ContextRecorder())
    model = easel.load_model("tiny-a.safetensors")
    run(easel, prompt="a [red:blue:6] circle", alwayson_scripts=hires(hr_second_pass_steps=4, denoising_strength=1.0))
    encoder = easel.engine.prompt_encoder(model, 1)
    red, blue = encoder.encode("a red circle"), encoder.encode("a blue circle")
    used = [(p, n, "red" if torch.allclose(c, red) else "blue" if torch.allclose(c, blue) else "?")
            for p, n, c in recorder.seen]
    assert used == [("first", n, "red") for n in range(4)] + \
        [("hires", 0, "red"), ("hires", 1, "red"), ("hires", 2, "red"), ("hires", 3, "blue")]


def test_hires_prompt_and_another_checkpoint(easel):
    same = run(easel, alwayson_scripts=hires())
    job = easel.submit("txt2img", Txt2ImgRequest(**BASE, alwayson_scripts=hires(hr_checkpoint_name="tiny-b.safetensors")),
                       "me", save=False)  # a job: its model lease loads the other checkpoint
    assert job.wait(60) and job.error is None, job.error
    other = job.result.result
    prompt = run(easel, alwayson_scripts=hires(hr_prompt="a blue square"))
    assert np.abs(arr(other.images[0]) - arr(same.images[0])).mean() > 1
    assert np.abs(arr(prompt.images[0]) - arr(same.images[0])).mean() > 0.1
    info = parse_infotext(other.infotexts[0])
    assert info["Hires checkpoint"] == "tiny-b.safetensors" and info["Model"] == "tiny-a"
    assert parse_infotext(prompt.infotexts[0])["Hires prompt"] == "a blue square"


def test_infotext_keys_are_a1111s_and_paste_back(easel):
    result = run(easel, alwayson_scripts=hires(hr_scale=1.5, hr_second_pass_steps=3, denoising_strength=0.45,
                                                 hr_upscaler="Latent (bicubic)", hr_sampler_name="DPM++ 2M"))
    info = parse_infotext(result.infotexts[0])
    assert (info["Hires upscale"], info["Hires steps"], info["Denoising strength"], info["Hires upscaler"],
            info["Hires sampler"]) == ("1.5", "3", "0.45", "Latent (bicubic)", "DPM++ 2M")
    assert "Hires resize" not in info and info["Size"] == "64x64"  # Size is the first pass's, as A1111 writes
    pasted = easel.features.settings_from_infotext(info)["hires fix"]
    assert pasted == {"enable_hr": True, "hr_scale": 1.5, "hr_second_pass_steps": 3, "denoising_strength": 0.45,
                      "hr_upscaler": "Latent (bicubic)", "hr_sampler_name": "DPM++ 2M"}
    resized = parse_infotext(run(easel, alwayson_scripts=hires(hr_resize_x=96, hr_resize_y=128)).infotexts[0])
    assert resized["Hires resize"] == "96x128" and "Hires upscale" not in resized
    # an img2img infotext's Denoising strength alone does not switch the hires fix on
    assert "hires fix" not in easel.features.settings_from_infotext({"Denoising strength": "0.5"})


def test_the_api_takes_webuiapis_fields(easel):
    easel.manager.preferred = "tiny-a.safetensors"
    easel.settings = replace(easel.settings, api=True, nowebui=True)
    body = {**BASE, "enable_hr": True, "hr_scale": 2, "hr_upscaler": "Lanczos", "hr_second_pass_steps": 2,
            "denoising_strength": 0.5, "hr_resize_x": 0, "hr_resize_y": 0, "hr_sampler_name": "Euler a",
            "hr_prompt": "", "hr_negative_prompt": "", "hr_checkpoint_name": "Use same checkpoint"}
    with TestClient(build_app(easel, easel.settings)) as client:
        r = client.post("/sdapi/v1/txt2img", json=body)
        assert r.status_code == 200, r.text[:300]
        info = json.loads(r.json()["info"])
        assert info["width"] == 64 and "Hires upscaler: Lanczos" in info["infotexts"][0]
        assert not {k for k in body if k.startswith("hr_") or k == "enable_hr"} & set(info["easel_ignored"])
        from PIL import Image
        import base64, io
        assert Image.open(io.BytesIO(base64.b64decode(r.json()["images"][0]))).size == (128, 128)
        bad = client.post("/sdapi/v1/txt2img", json={**body, "hr_upscaler": "Bicubic-9000"})
        assert bad.status_code == 422 and bad.json()["detail"][0]["field"] == "hr_upscaler"
        bad = client.post("/sdapi/v1/txt2img", json={**body, "hr_checkpoint_name": "nope"})
        assert bad.status_code == 422 and bad.json()["detail"][0]["field"] == "hr_checkpoint_name"
        off = client.post("/sdapi/v1/txt2img", json={**body, "enable_hr": False})
        assert "Hires" not in json.loads(off.json()["info"])["infotexts"][0]
