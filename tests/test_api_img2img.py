"""POST /sdapi/v1/img2img (and img2img jobs in /easel/v1/jobs) on the tiny models: A1111's fields and
answer, the same images as the engine gives, inpainting that keeps what is outside the mask, and a
422 naming the field for every image that is not one."""
from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
from PIL import Image, ImageDraw

from apiclient import api_client
from test_api import outputs, png, wait_job
from webui.settings import Limits
from webui.generation.requests import Img2ImgRequest

FAST = {"prompt": "a green square", "steps": 2, "seed": 21, "sampler_name": "Euler", "cfg_scale": 5}


@pytest.fixture()
def client(easel):
    with api_client(easel) as c:
        yield c


def picture(width: int = 64, height: int = 64) -> Image.Image:
    """Structure everywhere, so any change shows."""
    return Image.fromarray(np.random.default_rng(0).integers(0, 255, (height, width, 3), dtype=np.uint8))


def left_half_mask(size: int = 64) -> Image.Image:
    mask = Image.new("L", (size, size), 0)
    ImageDraw.Draw(mask).rectangle((0, 0, size // 2 - 1, size - 1), fill=255)
    return mask


def b64(image: Image.Image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def arr(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB")).astype(np.int16)


def test_img2img_round_trip_gives_the_engines_image_with_its_infotext(easel, client):
    init = picture()
    r = client.post("/sdapi/v1/img2img", json={
        **FAST, "init_images": ["data:image/png;base64," + b64(init)], "denoising_strength": 0.5,
        # A1111 clients' extras: the values Easel applies anyway are no request; the others are named
        "mask_round": True, "initial_noise_multiplier": 1.0, "image_cfg_scale": 1.5, "include_init_images": False})
    assert r.status_code == 200, r.text
    body = r.json()
    image = png(body["images"][0])
    assert image.format == "PNG" and image.size == (64, 64)  # no width/height: the init image's size
    text = image.info["parameters"]
    assert "Denoising strength: 0.5" in text and "Seed: 21" in text and "Mask blur" not in text
    info = json.loads(body["info"])
    assert info["denoising_strength"] == 0.5 and info["infotexts"] == [text] and info["width"] == 64
    assert info["easel_ignored"] == ["image_cfg_scale"]
    assert body["parameters"]["init_images"] is None and body["parameters"]["denoising_strength"] == 0.5

    model = easel.load_model("tiny-a.safetensors")
    direct = easel.engine.img2img(model, Img2ImgRequest(**FAST, init_image=init, denoising_strength=0.5))
    assert np.array_equal(arr(image), arr(direct.images[0]))  # the API adds nothing of its own
    assert outputs(easel) == []  # save_images defaults to false, as in A1111's API
    assert [j.description for j in easel.queue.jobs_of("addr:testclient")] == ["img2img"]


def test_the_first_init_image_is_used_and_the_others_are_named(client):
    first, second = b64(picture(96, 64)), b64(Image.new("RGB", (64, 64), "white"))
    r = client.post("/sdapi/v1/img2img", json={**FAST, "init_images": [first, second], "denoising_strength": 0,
                                               "include_init_images": True})
    assert r.status_code == 200, r.text
    assert png(r.json()["images"][0]).size == (96, 64)
    assert json.loads(r.json()["info"])["easel_ignored"] == ["init_images[1:]"]
    assert r.json()["parameters"]["init_images"] == [first, second]  # include_init_images echoes them


@pytest.mark.parametrize("fill", [1, 2])
def test_inpainting_keeps_the_pixels_outside_the_mask(client, fill):
    init = picture()
    r = client.post("/sdapi/v1/img2img", json={
        **FAST, "init_images": [b64(init)], "mask": b64(left_half_mask()), "mask_blur": 0, "inpainting_fill": fill,
        "denoising_strength": 0.8})
    assert r.status_code == 200, r.text
    image = png(r.json()["images"][0])
    out = arr(image)
    assert np.array_equal(out[:, 32:], arr(init)[:, 32:])
    assert np.abs(out[:, :32] - arr(init)[:, :32]).mean() > 3
    assert "Mask blur: 0" in image.info["parameters"]


def test_inpaint_not_masked_and_only_masked(client):
    init = picture()
    r = client.post("/sdapi/v1/img2img", json={
        **FAST, "init_images": [b64(init)], "mask": b64(left_half_mask()), "mask_blur": 0,
        "inpainting_mask_invert": 1, "inpaint_full_res": True, "inpaint_full_res_padding": 8})
    assert r.status_code == 200, r.text
    out = arr(png(r.json()["images"][0]))
    assert np.array_equal(out[:, :32], arr(init)[:, :32])
    assert np.abs(out[:, 32:] - arr(init)[:, 32:]).mean() > 3
    text = json.loads(r.json()["info"])["infotexts"][0]
    assert "Mask mode: Inpaint not masked" in text and "Inpaint area: Only masked" in text


NOT_AN_IMAGE = base64.b64encode(b"plain text, not an image").decode()
TRUNCATED = b64(picture())[:400]  # a PNG header and then nothing


@pytest.mark.parametrize("body, field, words", [
    ({"init_images": ["not base64 at all!"]}, "init_images", "not valid base64"),
    ({"init_images": ["data:image/png;base64,%%%"]}, "init_images", "not valid base64"),
    ({"init_images": [NOT_AN_IMAGE]}, "init_images", "not an image"),
    ({"init_images": [TRUNCATED]}, "init_images", "not an image"),
    ({"init_images": ["https://example.com/cat.png"]}, "init_images", "not fetched"),
    ({"init_images": [""]}, "init_images", "empty"),
    ({"init_images": []}, "init_images", "at least 1"),
    ({"init_images": None}, "init_images", "required"),
    ({"mask": "not base64 at all!"}, "mask", "not valid base64"),
    ({"mask": NOT_AN_IMAGE}, "mask", "not an image"),
    ({"mask": b64(Image.new("L", (64, 64), 0))}, "mask", "empty"),
    ({"mask": b64(Image.new("L", (64, 64), 255)), "inpainting_mask_invert": 1}, "mask", "empty"),
    ({"denoising_strength": 1.5}, "denoising_strength", "less than or equal to 1"),
    ({"inpainting_fill": 4}, "inpainting_fill", "less than or equal to 3"),
    ({"resize_mode": -1}, "resize_mode", "greater than or equal to 0"),
])
def test_what_is_not_an_image_or_not_allowed_gets_a_422_naming_the_field(easel, client, body, field, words):
    r = client.post("/sdapi/v1/img2img", json={**FAST, "init_images": [b64(picture())], "save_images": True, **body})
    assert r.status_code == 422, r.text
    detail = r.json()["detail"][0]
    assert detail["field"] == field and words in detail["msg"] and r.json()["message"].startswith(field)
    assert easel.queue.jobs_of("addr:testclient") == [] and outputs(easel) == []  # refused before queueing


def test_limits_size_an_img2img_by_its_init_image(easel):
    with api_client(easel, Limits(max_pixels=64 * 64)) as client:
        big = b64(picture(128, 128))
        r = client.post("/sdapi/v1/img2img", json={**FAST, "init_images": [big], "denoising_strength": 0})
        assert r.status_code == 422 and r.json()["detail"][0]["field"] == "width"
        assert "128x128" in r.json()["message"]
        scaled = client.post("/sdapi/v1/img2img", json={**FAST, "init_images": [big], "scale_by": 0.5,
                                                        "denoising_strength": 0})
        assert scaled.status_code == 200 and png(scaled.json()["images"][0]).size == (64, 64)
        sized = client.post("/sdapi/v1/img2img", json={**FAST, "init_images": [big], "width": 64, "height": 64,
                                                       "denoising_strength": 0})
        assert sized.status_code == 200 and png(sized.json()["images"][0]).size == (64, 64)


def test_img2img_as_an_easel_job(client):
    me = {"X-Easel-Client": "frank"}
    init = b64(picture())
    r = client.post("/easel/v1/jobs", headers=me, json={**FAST, "kind": "img2img", "init_images": [init],
                                                        "denoising_strength": 0.6})
    assert r.status_code == 202, r.text
    status = wait_job(client, r.json()["id"], me)
    assert status["state"] == "done" and status["kind"] == "img2img"
    assert status["info"]["denoising_strength"] == 0.6
    assert png(status["images"][0]).info["parameters"] == status["info"]["infotexts"][0]
    same = client.post("/sdapi/v1/img2img", json={**FAST, "init_images": [init], "denoising_strength": 0.6})
    assert png(same.json()["images"][0]).tobytes() == png(status["images"][0]).tobytes()

    for body, field in (({"kind": "img2img"}, "init_images"), ({"kind": "img2img", "init_images": ["x"]}, "init_images"),
                        ({"kind": "img2img", "init_images": [init], "mask_blur": 99}, "mask_blur"),
                        ({"kind": "zoom"}, "kind"), ({"kind": ["img2img"]}, "kind")):
        bad = client.post("/easel/v1/jobs", headers=me, json={**FAST, **body})
        assert bad.status_code == 422 and bad.json()["detail"][0]["field"] == field, bad.text
        assert bad.json()["detail"][0]["loc"][0] == "body"


def test_openapi_documents_the_derived_img2img_request(client):
    schema = client.get("/openapi.json").json()
    request = schema["components"]["schemas"]["ApiImg2ImgRequest"]
    props = request["properties"]
    assert props["denoising_strength"]["maximum"] == 1 and props["denoising_strength"]["default"] == 0.75
    assert props["inpainting_fill"]["default"] == 1 and props["steps"]["default"] == 20
    assert request["required"] == ["init_images"] and "init_image" not in props and props["mask"]["anyOf"]
    assert request["additionalProperties"] is True and "override_settings" in props
    jobs = schema["paths"]["/easel/v1/jobs"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert [s["title"] for s in jobs["oneOf"]] == ["EaselTxt2ImgJob", "EaselImg2ImgJob"]


def test_info_says_when_an_inpainting_model_was_used(easel, client, tmp_path):
    from tiny_models import build_tiny_sd, write_safetensors

    write_safetensors(build_tiny_sd(seed=9, in_channels=9), tmp_path / "inp" / "tiny-inpaint.safetensors",
                      metadata={"modelspec.resolution": "64x64"})
    easel.manager.catalog.roots.append(tmp_path / "inp")
    easel.refresh()
    for checkpoint, expected in (("tiny-inpaint.safetensors", True), ("tiny-a.safetensors", False)):
        r = client.post("/sdapi/v1/img2img", json={
            **FAST, "init_images": [b64(picture())], "mask": b64(left_half_mask()), "denoising_strength": 0.9,
            "override_settings": {"sd_model_checkpoint": checkpoint}})
        assert r.status_code == 200, r.text
        assert json.loads(r.json()["info"])["is_using_inpainting_conditioning"] is expected
