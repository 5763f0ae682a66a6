"""The X/Y/Z plot: every cell is the image of a separate run with its parameters, legends, a checkpoint axis,
interrupt, A1111's positional script_args over the API, refusals before anything runs, and img2img."""
from __future__ import annotations

import base64
import datetime
import io
import json
from dataclasses import replace

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from app import build_app
from sinks import Recorder
from webui.features.xyz import expand, split_values
from webui.generation.requests import Img2ImgRequest, Txt2ImgRequest
from webui.images.infotext import parse_infotext

BASE = dict(prompt="a red circle", steps=2, width=64, height=64, seed=3, sampler_name="Euler",
            checkpoint="tiny-a.safetensors")


def arr(image) -> np.ndarray:
    return np.asarray(image.convert("RGB")).astype(np.int16)


def plot(easel, sink=None, request_type=Txt2ImgRequest, extra=None, **args):
    request = request_type(**{**BASE, **(extra or {})}, script_name="x/y/z plot", script_args=args)
    return easel.engine.generate(easel.load_model("tiny-a.safetensors"), request, sink)


def single(easel, **changes):
    return easel.engine.generate(easel.load_model("tiny-a.safetensors"), Txt2ImgRequest(**{**BASE, **changes}))


def test_value_syntax():
    assert split_values('1, "a, b", c') == ["1", "a, b", "c"]
    assert expand(["1-5"], int) == [1, 2, 3, 4, 5]
    assert expand(["1-10 (+3)"], int) == [1, 4, 7, 10]
    assert expand(["10-1 (-3)"], int) == [10, 7, 4, 1]
    assert expand(["1-10 [4]"], int) == [1, 4, 7, 10]
    assert expand(["0.5-1.5 (+0.5)", "2.25"], float) == [0.5, 1.0, 1.5, 2.25]
    assert expand(["1-2 [3]"], float) == [1.0, 1.5, 2.0]
    assert expand(["a", "b"], "permutations") == [("a", "b"), ("b", "a")]
    with pytest.raises(ValueError, match="not an integer"):
        expand(["two"], int)


def test_a_2x3_grid_has_six_cells_each_the_image_of_its_own_run(easel):
    result = plot(easel, x_type="Steps", x_values="2,3", y_type="CFG Scale", y_values="3-7 (+2)",
                  include_lone_images=True, draw_legend=False)
    assert len(result.images) == 1 + 6 and result.grids == [True] + [False] * 6
    grid = arr(result.images[0])
    assert grid.shape == (3 * 64, 2 * 64, 3)
    cells = result.images[1:]
    for n, (cfg, steps) in enumerate((c, s) for c in (3, 5, 7) for s in (2, 3)):
        own = single(easel, steps=steps, cfg_scale=cfg)
        assert np.array_equal(arr(cells[n]), arr(own.images[0])), (steps, cfg)
        row, column = divmod(n, 2)
        assert np.array_equal(grid[row * 64:(row + 1) * 64, column * 64:(column + 1) * 64], arr(own.images[0]))
    info = parse_infotext(result.infotexts[0])
    assert (info["Script"], info["X Type"], info["X Values"], info["Y Type"], info["Y Values"]) == \
        ("X/Y/Z plot", "Steps", "2,3", "CFG Scale", "3-7 (+2)")


def test_legends_are_drawn_around_the_cells(easel):
    plain = plot(easel, x_type="Seed", x_values="1,2", y_type="Steps", y_values="2,3", draw_legend=False)
    legend = plot(easel, x_type="Seed", x_values="1,2", y_type="Steps", y_values="2,3", draw_legend=True)
    bare, drawn = arr(plain.images[0]), arr(legend.images[0])
    assert drawn.shape[0] > bare.shape[0] and drawn.shape[1] > bare.shape[1]
    top = drawn[: drawn.shape[0] - bare.shape[0], drawn.shape[1] - bare.shape[1]:]
    left = drawn[drawn.shape[0] - bare.shape[0]:, : drawn.shape[1] - bare.shape[1]]
    assert (top < 100).any() and (left < 100).any()  # dark text on the white bands
    assert np.array_equal(drawn[drawn.shape[0] - bare.shape[0]:, drawn.shape[1] - bare.shape[1]:], bare)


def test_a_checkpoint_axis_uses_each_checkpoint(easel):
    request = Txt2ImgRequest(**BASE, script_name="x/y/z plot", script_args={
        "x_type": "Checkpoint name", "x_values": "tiny-a.safetensors, tiny-b.safetensors", "include_lone_images": True})
    job = easel.submit("txt2img", request, "me")
    assert job.wait(120) and job.error is None, job.error
    saved = job.result
    models = [parse_infotext(info)["Model"] for info in saved.result.infotexts[1:]]
    assert models == ["tiny-a", "tiny-b"]
    grids = easel.settings.outputs_dir / "txt2img-grids" / datetime.date.today().isoformat()
    assert saved.paths[0].parent == grids and saved.paths[1].parent.name == datetime.date.today().isoformat()
    assert "X Type: Checkpoint name" in Image.open(saved.paths[0]).info["parameters"]


def test_interrupt_keeps_the_cells_made(easel):
    result = plot(easel, Recorder(stop_after=2 * 2 + 1), x_type="Seed", x_values="1,2,3,4", draw_legend=False)
    assert result.interrupted and result.extra["cells"] == 2
    grid = arr(result.images[0])
    assert grid.shape == (64, 4 * 64, 3) and grid[:, 2 * 64:].max() == 0  # the cells not made stay black
    assert np.array_equal(grid[:, :64], arr(single(easel, seed=1).images[0]))


def test_the_api_takes_a1111s_positional_script_args(easel):
    easel.manager.preferred = "tiny-a.safetensors"
    easel.settings = replace(easel.settings, api=True, nowebui=True)
    # x: Steps (A1111's txt2img index 4), y: CFG Scale (6); draw_legend off
    args = [4, "2,3", [], 6, "4, 8", [], 0, "", [], False, False, False, False, 0, True, False]
    with TestClient(build_app(easel, easel.settings)) as client:
        r = client.post("/sdapi/v1/txt2img", json={**BASE, "script_name": "x/y/z plot", "script_args": args,
                                                   "save_images": True})
        assert r.status_code == 200, r.text[:300]
        images = r.json()["images"]
        grid = Image.open(io.BytesIO(base64.b64decode(images[0])))
        assert len(images) == 1 and grid.size == (128, 128)
        assert "X Type: Steps" in json.loads(r.json()["info"])["infotexts"][0]
        before = len(easel.queue.jobs_of("addr:testclient"))
        for bad, field in ((["Image CFG Scale", "2"], "script_args.0"),  # img2img's only
                           ([9, "Nope"], "script_args.1"),  # Sampler (index 9): an unknown one
                           ([7, "blue, green"], "script_args.1"),  # Prompt S/R: "blue" is not in the prompt
                           ([40, "1"], "script_args.0"),  # beyond A1111's list
                           (["Sigma Churn", "1"], "script_args.0"),  # no such thing in Easel
                           (["Steps", "two"], "script_args.1")):
            refused = client.post("/sdapi/v1/txt2img", json={**BASE, "script_name": "X/Y/Z plot", "script_args": bad})
            assert refused.status_code == 422 and refused.json()["detail"][0]["field"] == field, (bad, refused.text)
        assert len(easel.queue.jobs_of("addr:testclient")) == before  # refused before anything was queued


def test_img2img_plots_too(easel):
    result = plot(easel, request_type=Img2ImgRequest,
                  extra={"init_image": Image.new("RGB", (64, 64), "red"), "steps": 10},  # 2 and 9 steps run
                  x_type="Denoising", x_values="0.2, 0.9", include_lone_images=True)
    low, high = result.images[1:]
    red = np.full((64, 64, 3), (255, 0, 0))
    assert np.abs(arr(low) - red).mean() < np.abs(arr(high) - red).mean()
    assert [parse_infotext(i)["Denoising strength"] for i in result.infotexts[1:]] == ["0.2", "0.9"]
