"""Content search with Easel's own models: pictures made by the demo checkpoint, embedded by the demo embedding
model in the gallery's background work, found by a description and by an image (its img2img child)."""
from __future__ import annotations

from pathlib import Path

import pytest
from PIL import Image

from webui.admission import Admission, Caller
from webui.demo.shape_checker import read_image
from webui.generation.requests import Img2ImgRequest, Txt2ImgRequest
from webui.models.manager import DEMO_CHECKPOINT
from webui.services import Easel
from webui.settings import settings_from_args

DEMO = Path(__file__).resolve().parents[1] / "models" / "Stable-diffusion" / DEMO_CHECKPOINT
FAST = dict(steps=12, sampler_name="Euler", cfg_scale=5)
CAPTIONS = ["a large red circle in the centre, white background",
            "a large red circle on the left, blue background",
            "a large blue square in the centre, yellow background",
            "a large green triangle at the top, black background",
            "a large yellow star in the centre, purple background",
            "a large white square on the right, red background",
            "a large purple circle at the bottom, green background",
            "a large orange triangle on the left, white background"]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    data = tmp_path_factory.mktemp("gallery-content")
    easel = Easel.create(settings_from_args(["--data-dir", str(data), "--ckpt-dir", str(DEMO.parent),
                                             "--device", "cpu"]))
    assert easel.gallery.load_embedder(), easel.gallery.embedder_problem
    yield easel
    easel.close()


def make(easel, request) -> int:
    job = Admission(easel).submit("img2img" if isinstance(request, Img2ImgRequest) else "txt2img", request,
                                  Caller(owner="tester")).job
    assert job.wait(300) and job.error is None, job.error
    return easel.gallery.index.get_by_path(job.result.paths[0]).id


def test_a_description_finds_red_circles_and_an_image_its_img2img_child(demo):
    ids = {}
    for i, caption in enumerate(CAPTIONS):
        for seed in (1, 2):
            ids[make(demo, Txt2ImgRequest(prompt=caption, seed=10 * i + seed, **FAST))] = caption
    parent = next(i for i, c in ids.items() if c.startswith("a large yellow star"))
    child = make(demo, Img2ImgRequest(prompt="a large yellow star in the centre, purple background", seed=99,
                                      init_image=_picture(demo, parent), denoising_strength=0.35, **FAST))
    while demo.gallery.embed_some():  # what the background thread does between jobs
        pass
    assert not demo.gallery.index.missing_vectors(demo.gallery._embedder.name, 10)

    viewer = Caller(owner="tester")
    found = demo.gallery.similar(viewer, text="a red circle").content[:5]
    red_circles = [r for r in found if _reads(r.path) == ("red", "circle")]
    made_as_red_circles = [r for r in found if ids.get(r.id, "").startswith("a large red circle")]
    assert len(red_circles) >= 3 or len(made_as_red_circles) >= 3, [(ids.get(r.id), _reads(r.path)) for r in found]

    alike = demo.gallery.similar(viewer, row_id=parent).content[:3]
    assert child in [r.id for r in alike], [ids.get(r.id, "child") for r in alike]


def _picture(easel, row_id: int) -> Image.Image:
    with Image.open(easel.gallery.index.get(row_id).path) as image:
        return image.convert("RGB")


def _reads(path: Path) -> tuple[str, str]:
    with Image.open(path) as image:
        reading = read_image(image)
    return reading.colour, reading.kind
