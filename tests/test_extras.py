"""Upscalers at work: Extras (one picture, several, a server folder; over HTTP in A1111's shapes), hires
fix through a model upscaler, and SD upscale (tiles redrawn by img2img and blended back)."""
from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image

from apiclient import api_client
from pictures import b64png
from upscaler_models import write_upscaler
from webui.admission import Admission, Caller
from webui.features.extras import ExtrasRequest
from webui.generation.errors import FieldError
from webui.generation.requests import Img2ImgRequest, Txt2ImgRequest
from webui.images.infotext import create_infotext, parse_infotext
from webui.images.store import png_bytes
from webui.jobs.queue import JobState
from webui.models import upscalers as U
from webui.settings import Limits

needs_spandrel = pytest.mark.skipif(U.spandrel_problem() is not None, reason="spandrel cannot be imported")
FAST = {"prompt": "a red circle", "steps": 2, "seed": 3, "width": 64, "height": 64, "sampler_name": "Euler"}


def gradient(width: int, height: int, infotext: str | None = None) -> Image.Image:
    x = np.linspace(0, 255, width, dtype=np.float32)[None, :, None]
    y = np.linspace(0, 255, height, dtype=np.float32)[:, None, None]
    rgb = np.concatenate([x + 0 * y, y + 0 * x, (x + y) / 2], axis=2).astype(np.uint8)
    image = Image.fromarray(rgb)
    if infotext:
        image = Image.open(io.BytesIO(png_bytes(image, infotext)))
    return image


@pytest.fixture()
def upscaler_files(easel):
    models = easel.settings.models_dir
    write_upscaler("compact", models / "ESRGAN" / "2x-compact.safetensors", 2)
    write_upscaler("esrgan", models / "RealESRGAN" / "4x-tiny.pth", 4, seed=1)
    return models


def extras(easel, owner="me", **fields):
    admitted = Admission(easel, Limits.none()).submit("extras", ExtrasRequest(**fields), Caller(owner, manager=True))
    assert admitted.job.wait(120)
    return admitted.job


# -- Extras --------------------------------------------------------------------------------------------------


def test_scale_by_keeps_the_infotext_and_adds_a1111s_postprocess_keys(easel):
    source = gradient(40, 30, create_infotext("a red circle", "", {"Steps": 2, "Seed": 9, "Size": "40x30"}))
    job = extras(easel, images=[source], upscaler_1="Lanczos", upscaling_resize=2.5)
    assert job.error is None, job.error
    made = job.result
    assert made.images[0].size == (100, 75)
    saved = Image.open(made.paths[0])
    assert made.paths[0].parent.parent.name == "extras-images" and saved.size == (100, 75)
    info = parse_infotext(saved.info["parameters"])
    assert info["Prompt"] == "a red circle" and info["Seed"] == "9"
    assert info["Postprocess upscale by"] == "2.5" and info["Postprocess upscaler"] == "Lanczos"
    assert np.array_equal(np.asarray(saved), np.asarray(source.convert("RGB").resize((100, 75), Image.LANCZOS)))


def test_max_side_scale_to_and_crop(easel):
    job = extras(easel, images=[gradient(40, 20)], upscaler_1="Nearest", upscaling_resize=4, upscaling_max_side=100)
    assert job.result.images[0].size == (100, 50)
    cropped = extras(easel, images=[gradient(40, 20)], upscaler_1="Lanczos", resize_mode=1, upscaling_resize_w=64,
                     upscaling_resize_h=64, upscaling_crop=True)
    assert cropped.result.images[0].size == (64, 64)
    info = parse_infotext(cropped.result.infotexts[0])
    assert info["Postprocess upscale to"] == "64x64" and info["Postprocess crop to"] == "64x64"
    uncropped = extras(easel, images=[gradient(40, 20)], upscaler_1="Lanczos", resize_mode=1, upscaling_resize_w=64,
                       upscaling_resize_h=64, upscaling_crop=False)
    assert uncropped.result.images[0].size == (128, 64)  # covers 64×64, aspect kept


@needs_spandrel
def test_two_upscalers_blend_by_visibility(easel, upscaler_files):
    image = gradient(24, 24)
    one = extras(easel, images=[image], upscaler_1="2x-compact", save=False).result.images[0]
    lanczos = image.resize((48, 48), Image.LANCZOS)
    half = extras(easel, images=[image], upscaler_1="2x-compact", upscaler_2="Lanczos",
                  extras_upscaler_2_visibility=0.5, save=False)
    expected = Image.blend(one, lanczos, 0.5)
    assert np.abs(np.asarray(half.result.images[0], dtype=int) - np.asarray(expected, dtype=int)).max() <= 1
    assert parse_infotext(half.result.infotexts[0])["Postprocess upscaler 2"] == "Lanczos"


def test_a_server_folder_only_for_managers_and_only_inside_allowed_folders(easel, tmp_path):
    folder = easel.settings.data_dir / "to-upscale"
    folder.mkdir()
    for n in range(3):
        gradient(16 + n, 16).save(folder / f"p{n}.png")
    admission = Admission(easel, Limits.none())
    with pytest.raises(FieldError) as err:
        admission.submit("extras", ExtrasRequest(folder="to-upscale"), Caller("user", manager=False))
    assert err.value.field == "folder"
    with pytest.raises(FieldError, match="outside the data folder"):
        admission.submit("extras", ExtrasRequest(folder=str(tmp_path.parent)), Caller("admin", manager=True))
    job = admission.submit("extras", ExtrasRequest(folder="to-upscale", upscaler_1="Nearest"),
                           Caller("admin", manager=True)).job
    assert job.wait(60) and [im.size for im in job.result.images] == [(32, 32), (34, 32), (36, 32)]


def test_bad_extras_requests_name_the_field(easel):
    admission = Admission(easel, Limits(max_batch=2))
    caller = Caller("me", manager=True)
    for request, field in ((ExtrasRequest(images=[gradient(8, 8)], upscaler_1="nope"), "upscaler_1"),
                           (ExtrasRequest(images=[gradient(8, 8)] * 3), "images"),
                           (ExtrasRequest(images=[]), "images")):
        with pytest.raises(FieldError) as err:
            admission.submit("extras", request, caller)
        assert err.value.field == field
    with pytest.raises(ValueError, match="face restoration"):
        ExtrasRequest(images=[gradient(8, 8)], gfpgan_visibility=0.5)


# -- over HTTP --------------------------------------------------------------------------------------------------


@pytest.fixture()
def client(easel):
    with api_client(easel) as c:
        yield c


@needs_spandrel
def test_extras_over_http_in_a1111s_shapes(client, upscaler_files):
    names = [u["name"] for u in client.get("/sdapi/v1/upscalers").json()]
    assert names[:3] == ["None", "Lanczos", "Nearest"] and {"2x-compact", "4x-tiny"} <= set(names)
    one = client.post("/sdapi/v1/extra-single-image", json={"image": b64png(gradient(20, 10)), "upscaler_1": "4x-tiny",
                                                             "upscaling_resize": 4})
    assert one.status_code == 200, one.text
    picture = Image.open(io.BytesIO(base64.b64decode(one.json()["image"])))
    assert picture.size == (80, 40) and "Postprocess upscaler: 4x-tiny" in one.json()["html_info"]
    batch = client.post("/sdapi/v1/extra-batch-images", json={
        "imageList": [{"data": b64png(gradient(10, 10)), "name": "a.png"}, {"data": b64png(gradient(12, 8)),
                                                                             "name": "b.png"}],
        "upscaler_1": "2x-compact", "upscaling_resize": 2})
    assert batch.status_code == 200, batch.text
    sizes = [Image.open(io.BytesIO(base64.b64decode(b))).size for b in batch.json()["images"]]
    assert sizes == [(20, 20), (24, 16)]
    bad = client.post("/sdapi/v1/extra-single-image", json={"image": b64png(gradient(8, 8)), "upscaler_1": "nope"})
    assert bad.status_code == 422 and bad.json()["detail"][0]["field"] == "upscaler_1"
    (upscaler_files / "ESRGAN" / "new-2x.pth").write_bytes((upscaler_files / "RealESRGAN" / "4x-tiny.pth").read_bytes())
    assert client.post("/sdapi/v1/refresh-upscalers").status_code == 200
    assert "new-2x" in [u["name"] for u in client.get("/sdapi/v1/upscalers").json()]


# -- hires fix and SD upscale -----------------------------------------------------------------------------------


@needs_spandrel
def test_hires_fix_runs_a_model_upscaler(easel, upscaler_files):
    request = Txt2ImgRequest(**FAST, alwayson_scripts={"hires fix": {"enable_hr": True, "hr_scale": 2,
                                                                     "hr_upscaler": "2x-compact",
                                                                     "denoising_strength": 0.0}})
    job = easel.submit("txt2img", easel.features.validate(request), "me", save=False)
    assert job.wait(120) and job.error is None, job.error
    image = job.result.result.images[0]
    assert image.size == (128, 128)
    info = parse_infotext(job.result.result.infotexts[0])
    assert info["Hires upscaler"] == "2x-compact"
    lanczos = easel.submit("txt2img", easel.features.validate(request.model_copy(update={"alwayson_scripts": {
        "hires fix": {"enable_hr": True, "hr_scale": 2, "hr_upscaler": "Lanczos", "denoising_strength": 0.0}}})),
        "me", save=False)
    assert lanczos.wait(120)
    assert np.abs(np.asarray(lanczos.result.result.images[0], dtype=int) - np.asarray(image, dtype=int)).mean() > 1
    with pytest.raises(FieldError) as err:
        easel.features.validate(Txt2ImgRequest(**FAST, alwayson_scripts={"hires fix": {"enable_hr": True,
                                                                                       "hr_upscaler": "nope"}}))
    assert err.value.field == "hr_upscaler"


def test_sd_upscale_redraws_tiles_and_blends_them(easel):
    init = gradient(64, 64)
    request = Img2ImgRequest(**{**FAST, "width": 64, "height": 64}, init_image=init, denoising_strength=0.3,
                             script_name="sd upscale", script_args=["", 16, "Lanczos", 2.0])
    admission = Admission(easel, Limits.none())
    job = admission.submit("img2img", request, Caller("me")).job
    assert job.wait(300) and job.error is None, job.error
    result = job.result.result
    image = result.images[0]
    assert image.size == (128, 128)
    info = parse_infotext(result.infotexts[0])
    assert info["SD upscale overlap"] == "16" and info["SD upscale upscaler"] == "Lanczos" and info["Size"] == "128x128"
    # no seams: neighbouring pixels across a tile border differ no more than elsewhere
    a = np.asarray(image, dtype=np.float32)
    steps = np.abs(np.diff(a, axis=1)).mean(axis=(0, 2))
    border = steps[56:72].max()  # tiles start at 0 and 64 - 16 = 48 + …: the overlap band is around 48..64
    assert border < 4 * np.median(steps) + 8
    # the A1111 form with the upscaler's index
    by_index = request.model_copy(update={"script_args": ["", 16, 1, 2.0]})
    assert easel.features.find_script("sd upscale").upscaler_name(
        easel.features.validate(by_index).script_args) == "Lanczos"
    with pytest.raises(FieldError) as err:
        admission.submit("img2img", request.model_copy(update={"script_args": ["", 16, "nope", 2.0]}), Caller("me"))
    assert err.value.field == "script_args.upscaler"
    # tiles count against --max-batch: 2× of 64² in 32² tiles overlapping 16 → 49 tiles
    with pytest.raises(FieldError):
        Admission(easel, Limits(max_batch=10)).submit(
            "img2img", request.model_copy(update={"width": 32, "height": 32}), Caller("me"))


def test_an_interrupted_extras_job_keeps_what_it_finished(easel):
    from sinks import Recorder
    from webui.features.extras import run_extras
    sink = Recorder(stop_after=1)  # told to stop once the first picture is done
    made = run_extras(ExtrasRequest(images=[gradient(16, 16)] * 3, upscaler_1="Lanczos"), easel.upscalers,
                      easel.store, "me", sink)
    assert made.interrupted and len(made.paths) == 1 and made.paths[0].is_file()
    job = Admission(easel, Limits.none()).submit("extras", ExtrasRequest(images=[gradient(16, 16)] * 3,
                                                                         upscaler_1="Lanczos"),
                                                 Caller("me", manager=True)).job
    assert job.wait(60) and job.state is JobState.DONE and len(job.result.infotexts) == 3
