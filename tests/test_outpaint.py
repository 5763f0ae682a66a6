"""Outpainting: box → job kind, masks, pre-fill and the feathered paste; the canvas JSON endpoint."""
from __future__ import annotations

import base64
import io
import time

import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from PIL import Image
from pydantic import ValidationError
from pictures import b64png

from webui.generation.outpaint import (
    OutpaintRequest, box_kind, default_box_size, empty_area, feather_mask, plan_box, prefill, sampling_mask,
)
from webui.generation.requests import Img2ImgRequest, Txt2ImgRequest


def painted_box(width: int, height: int, painted: np.ndarray, seed: int = 0) -> Image.Image:
    """An RGBA box with random colours where `painted` is True and transparency elsewhere."""
    rng = np.random.default_rng(seed)
    rgba = np.zeros((height, width, 4), np.uint8)
    rgba[..., :3] = rng.integers(0, 256, (height, width, 3))
    rgba[..., 3] = np.where(painted, 255, 0)
    return Image.fromarray(rgba, "RGBA")


def brute_distance(empty: np.ndarray) -> np.ndarray:
    """Distance of each pixel to the nearest empty pixel, by brute force (independent of scipy)."""
    ys, xs = np.nonzero(empty)
    gy, gx = np.mgrid[0:empty.shape[0], 0:empty.shape[1]]
    d2 = (gy[..., None] - ys) ** 2 + (gx[..., None] - xs) ** 2
    return np.sqrt(d2.min(axis=-1))


def l_shaped_hole(w: int = 64, h: int = 72) -> np.ndarray:
    painted = np.ones((h, w), bool)
    painted[:, 40:] = False  # a strip on the right…
    painted[30:, 20:] = False  # …and the bottom right: an L-shaped empty part
    return painted


def test_empty_box_is_txt2img_painted_box_is_img2img_partly_painted_is_outpaint():
    params = dict(prompt="a lighthouse", steps=3, seed=11, width=64, height=72, denoising_strength=0.4)
    outside = plan_box(OutpaintRequest(**params, box=Image.new("RGBA", (64, 72), (9, 9, 9, 0))))
    assert outside.kind == "txt2img" and type(outside.request) is Txt2ImgRequest
    assert (outside.request.prompt, outside.request.steps, outside.request.seed) == ("a lighthouse", 3, 11)
    assert (outside.request.width, outside.request.height) == (64, 72)

    inside_box = painted_box(64, 72, np.ones((72, 64), bool))
    inside = plan_box(OutpaintRequest(**params, box=inside_box))
    assert inside.kind == "img2img" and isinstance(inside.request, Img2ImgRequest)
    assert inside.request.mask is None and inside.request.denoising_strength == 0.4
    assert np.array_equal(np.asarray(inside.request.init_image), np.asarray(inside_box)[..., :3])
    image = Image.new("RGB", (64, 72), "blue")
    assert inside.finish(image) is image  # img2img/txt2img results are the candidates as they are

    partly = plan_box(OutpaintRequest(**params, box=painted_box(64, 72, l_shaped_hole())))
    assert partly.kind == "outpaint" and partly.request.mask is not None


def test_faint_alpha_counts_as_empty():
    alpha = np.full((8, 8), 255, np.uint8)
    alpha[:, 4:] = 100
    box = Image.fromarray(np.dstack([np.zeros((8, 8, 3), np.uint8), alpha]), "RGBA")
    assert box_kind(empty_area(box)) == "outpaint" and empty_area(box)[:, 4:].all()


@pytest.mark.parametrize("band", [0, 8, 16])
def test_sampling_mask_is_the_empty_part_grown_by_the_band(band):
    painted = l_shaped_hole()
    mask = np.asarray(sampling_mask(~painted, band)) > 0
    assert np.array_equal(mask, brute_distance(~painted) <= band)


def test_feather_is_full_on_the_empty_part_and_zero_beyond_the_band():
    painted, band = l_shaped_hole(), 12
    feather = np.asarray(feather_mask(~painted, band)).astype(int)
    dist = brute_distance(~painted)
    assert (feather[~painted] == 255).all()
    assert (feather[dist >= band] == 0).all()
    ramp = (dist > 0) & (dist <= band - 1)
    assert ((feather[ramp] > 0) & (feather[ramp] < 255)).all()
    # it falls with the distance: a pixel nearer the empty part never gets less of the new picture
    order = np.argsort(dist[ramp])
    assert (np.diff(feather[ramp][order]) <= 0).all()


@pytest.mark.parametrize("overlap", [0, 8, 32])
def test_paste_keeps_existing_pixels_beyond_the_band_exactly_and_fills_the_empty_part(overlap):
    painted = l_shaped_hole()
    box = painted_box(64, 72, painted, seed=3)
    plan = plan_box(OutpaintRequest(width=64, height=72, overlap=overlap, box=box))
    generated = Image.new("RGB", (64, 72), (0, 255, 0))
    out = np.asarray(plan.finish(generated)).astype(int)
    original = np.asarray(box)[..., :3].astype(int)
    dist = brute_distance(~painted)
    far = dist > overlap
    assert np.array_equal(out[far], original[far])
    assert (out[~painted] == (0, 255, 0)).all()  # the empty part is the new picture, no trace of alpha-0 RGB
    band = painted & (dist <= overlap) & (dist > 0)
    if overlap:  # inside the band: somewhere between the two
        assert not np.array_equal(out[band], original[band])


def test_outpaint_request_samples_the_grown_mask_from_a_prefilled_box():
    painted = np.zeros((72, 64), bool)
    painted[:, :32] = True
    box = painted_box(64, 72, painted)
    req = plan_box(OutpaintRequest(width=64, height=72, overlap=8, box=box, outpaint_strength=0.8)).request
    mask = np.asarray(req.mask) > 0
    assert mask[:, 24:].all() and not mask[:, :24].any()  # the empty half grown 8 px into the picture
    assert req.inpainting_fill == 1 and req.denoising_strength == 0.8  # blur: start from the pre-fill
    init = np.asarray(req.init_image)
    assert np.array_equal(init[:, :32], np.asarray(box)[:, :32, :3])
    noise = plan_box(OutpaintRequest(width=64, height=72, box=box, prefill="noise")).request
    assert noise.inpainting_fill == 2 and noise.denoising_strength == 1.0  # latent noise, from scratch


def test_blur_prefill_continues_the_neighbouring_colours():
    rgb = np.zeros((32, 64, 3), np.uint8)
    rgb[:16, :32] = (200, 40, 40)  # red above, blue below, on the painted left half
    rgb[16:, :32] = (40, 40, 200)
    empty = np.zeros((32, 64), bool)
    empty[:, 32:] = True
    filled = np.asarray(prefill(Image.fromarray(rgb), empty, "blur")).astype(int)
    assert np.array_equal(filled[:, :32], rgb[:, :32])
    assert filled[4, 36, 0] > filled[4, 36, 2] and filled[28, 36, 2] > filled[28, 36, 0]  # red stays up, blue down
    flat = np.asarray(prefill(Image.fromarray(rgb), empty, "noise")).astype(int)
    assert np.array_equal(flat[:, :32], rgb[:, :32])
    assert (np.abs(flat[:, 32:] - rgb[:, :32].mean(axis=(0, 1))) <= 1).all()


@pytest.mark.parametrize("field, value, words", [
    ("width", 100, "multiple of 8"), ("height", 4096, "2048"), ("width", 5000, "2048"), ("overlap", -1, ""),
])
def test_request_refuses_bad_boxes_naming_the_field(field, value, words):
    params = {"width": 64, "height": 64, field: value}
    with pytest.raises(ValidationError) as err:
        OutpaintRequest(**params, box=Image.new("RGBA", (params["width"], params["height"])))
    assert field in str(err.value) and words in str(err.value)


def test_request_refuses_pixels_of_another_size():
    with pytest.raises(ValidationError, match="box: the image is 32x32 but the box is 64x64"):
        OutpaintRequest(width=64, height=64, box=Image.new("RGBA", (32, 32)))


@pytest.mark.parametrize("trained, box", [((512, 512), (512, 512)), ((1024, 1024), (512, 512)),
                                          ((64, 64), (64, 64)), ((256, 768), (256, 512))])
def test_default_box_is_512_or_the_trained_size_when_smaller(trained, box):
    assert default_box_size(trained) == box


# -- through Easel, on the tiny model ----------------------------------------------------------------
def test_outpaint_job_returns_whole_boxes_with_the_old_pixels_kept(easel):
    painted = np.zeros((64, 64), bool)
    painted[:, :40] = True
    box = painted_box(64, 64, painted, seed=5)
    req = OutpaintRequest(prompt="a red circle", steps=2, seed=42, batch_size=2, width=64, height=64, overlap=16,
                          box=box, checkpoint="tiny-a")
    job = easel.submit("outpaint", req)
    assert job.wait(120) and job.error is None, job.error
    saved = job.result
    assert saved.result.extra["box_kind"] == "outpaint" and saved.result.seeds == [42, 43]
    keep = brute_distance(~painted) > 16
    original = np.asarray(box)[..., :3]
    for image in saved.result.images:
        assert image.size == (64, 64)
        assert np.array_equal(np.asarray(image)[keep], original[keep])
    assert len(saved.paths) == 2 and all(p.parent.parent.name == "outpaint-images" for p in saved.paths)
    with Image.open(saved.paths[0]) as png:
        assert "Denoising strength: 0.9" in png.info["parameters"] and "Seed: 42" in png.info["parameters"]


# -- the JSON endpoint -----------------------------------------------------------------------------------

@pytest.fixture()
def client(easel):
    from webui.admission import Admission
    from webui.api import ApiContext, build_canvas_router

    app = FastAPI()
    app.include_router(build_canvas_router(ApiContext(easel, Admission(easel))))
    with TestClient(app, raise_server_exceptions=False) as c:
        yield c


def refusal(response, *fields: str) -> str:
    assert response.status_code == 422, response.text
    body = response.json()
    assert [d["field"] for d in body["detail"]] == list(fields), body
    return body["message"]


@pytest.mark.parametrize("field, size", [("width", (60, 64)), ("height", (64, 100))])
def test_endpoint_refuses_boxes_that_are_not_multiples_of_8(client, field, size):
    box = b64png(Image.new("RGBA", size))
    message = refusal(client.post("/easel/v1/canvas/generate", json={"width": size[0], "height": size[1],
                                                                      "image": box}), field)
    assert field in message


@pytest.mark.parametrize("size", [(2056, 64), (64, 4096), (8192, 8192)])
def test_endpoint_refuses_huge_boxes(client, size):
    # the size is checked before the image is even decoded: a tiny PNG is enough to ask
    body = {"width": size[0], "height": size[1], "image": b64png(Image.new("RGBA", (8, 8)))}
    fields = [f for f, side in zip(("width", "height"), size) if side > 2048]
    assert "2048" in refusal(client.post("/easel/v1/canvas/generate", json=body), *fields)


@pytest.mark.parametrize("image, words", [
    ("not base64 at all!", "base64"),
    (base64.b64encode(b"plain text, no image").decode(), "not an image"),
    (b64png(Image.new("RGBA", (32, 32))), "32x32 but the box is 64x64"),
    (base64.b64encode(base64.b64decode(b64png(painted_box(64, 64, np.ones((64, 64), bool))))[:300]).decode(),
     "not an image Easel can read"),  # a PNG cut short: the header reads, the pixels do not
    ("http://example.com/box.png", "not fetched"),
    ("", ""),
])
def test_endpoint_refuses_bad_images_naming_the_field(client, image, words):
    message = refusal(client.post("/easel/v1/canvas/generate", json={"width": 64, "height": 64, "image": image}),
                      "image")
    assert words in message


def test_endpoint_refuses_unknown_fields_and_checkpoints(client):
    box = b64png(Image.new("RGBA", (64, 64)))
    refusal(client.post("/easel/v1/canvas/generate", json={"width": 64, "height": 64, "image": box, "x": 1}), "x")
    refusal(client.post("/easel/v1/canvas/generate",
                        json={"width": 64, "height": 64, "image": box, "checkpoint": "../../etc/passwd"}), "checkpoint")
    refusal(client.post("/easel/v1/canvas/generate",
                        json={"width": 64, "height": 64, "image": box, "vae": "/etc/passwd"}), "vae")
    assert client.post("/easel/v1/canvas/generate", content=b"{not json").status_code == 422


def test_endpoint_generates_polls_and_returns_candidates_to_their_owner_only(client):
    painted = np.zeros((64, 64), bool)
    painted[:32] = True  # the top half: the box grows the picture downwards
    box = painted_box(64, 64, painted, seed=9)
    body = {"width": 64, "height": 64, "image": b64png(box), "prompt": "a blue square", "steps": 2, "seed": 7,
            "overlap": 8, "save_images": False}
    headers = {"X-Easel-Client": "alice"}
    submitted = client.post("/easel/v1/canvas/generate", json=body, headers=headers)
    assert submitted.status_code == 202 and submitted.headers["Location"].endswith(submitted.json()["id"])
    url = f"/easel/v1/canvas/jobs/{submitted.json()['id']}"
    assert client.get(url, headers={"X-Easel-Client": "mallory"}).status_code == 404
    assert client.post(url + "/interrupt", headers={"X-Easel-Client": "mallory"}).status_code == 404
    deadline = time.time() + 120
    while (job := client.get(url, headers=headers).json())["state"] in ("queued", "running"):
        assert time.time() < deadline
        time.sleep(0.1)
    assert job["state"] == "done" and job["kind"] == "outpaint" and job["progress"] == 1.0
    [candidate] = job["candidates"]
    assert candidate["seed"] == 7 and "Seed: 7" in candidate["info"]
    with Image.open(io.BytesIO(base64.b64decode(candidate["image"]))) as png:
        assert png.size == (64, 64) and png.info["parameters"] == candidate["info"]
        assert np.array_equal(np.asarray(png.convert("RGB"))[:24], np.asarray(box)[:24, :, :3])
    assert client.get("/easel/v1/canvas/jobs/nope", headers=headers).status_code == 404


def test_endpoint_interrupt_stops_the_callers_job(client):
    body = {"width": 64, "height": 64, "image": b64png(Image.new("RGBA", (64, 64))), "steps": 150, "n_iter": 4,
            "save_images": False}
    headers = {"X-Easel-Client": "bob"}
    url = f"/easel/v1/canvas/jobs/{client.post('/easel/v1/canvas/generate', json=body, headers=headers).json()['id']}"
    deadline = time.time() + 60
    while client.get(url, headers=headers, params={"images": False}).json()["step"] < 1:
        assert time.time() < deadline
        time.sleep(0.05)
    assert client.post(url + "/interrupt", headers=headers).json()["interrupted"] is True
    while (job := client.get(url, headers=headers).json())["state"] == "running":
        assert time.time() < deadline
        time.sleep(0.05)
    assert job["state"] == "interrupted" and len(job["candidates"]) < 4 and job["kind"] == "txt2img"
