"""Upscalers: tiny spandrel models in the layouts people download, detected and run; tiles that blend
without seams; exact sizes for any target; the built-ins; bad files; and what happens without spandrel."""
from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from upscaler_models import write_upscaler
from webui.models import upscalers as U
from webui.models.errors import ModelError
from webui.models.upscalers import UpscalerLibrary, UpscalerNotFound, UpscalerUnavailable

pytestmark = pytest.mark.skipif(U.spandrel_problem() is not None, reason="spandrel cannot be imported")


def picture(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    # smooth content (what photos are), not white noise
    small = rng.integers(0, 256, size=(height // 4 + 1, width // 4 + 1, 3), dtype=np.uint8)
    return Image.fromarray(small).resize((width, height), Image.Resampling.BICUBIC)


@pytest.fixture()
def library(tmp_path):
    models = tmp_path / "models"
    write_upscaler("esrgan", models / "ESRGAN" / "4x-tiny.pth", 4)
    write_upscaler("realesrgan", models / "RealESRGAN" / "RealESRGAN_x2plus-tiny.pth", 2, seed=1)
    write_upscaler("compact", models / "ESRGAN" / "compact-2x.safetensors", 2, seed=2)
    write_upscaler("swinir", models / "SwinIR" / "swinir-2x.pth", 2, seed=3)
    write_upscaler("esrgan", models / "DAT" / "1x-restore.safetensors", 1, seed=4)
    write_upscaler("esrgan", models / "HAT" / "8x-big.safetensors", 8, seed=5)
    return UpscalerLibrary(models, tile=64)


def test_files_in_a1111s_folders_are_listed_after_the_builtins(library):
    assert library.names() == ["None", "Lanczos", "Nearest", "1x-restore", "4x-tiny", "8x-big", "compact-2x",
                               "RealESRGAN_x2plus-tiny", "swinir-2x"]
    assert library.resolve("realesrgan_X2PLUS-tiny") == "RealESRGAN_x2plus-tiny"
    with pytest.raises(UpscalerNotFound, match="no upscaler 'nope'"):
        library.resolve("nope")


@pytest.mark.parametrize("name, architecture, scale", [
    ("4x-tiny", "ESRGAN", 4), ("RealESRGAN_x2plus-tiny", "ESRGAN", 2), ("compact-2x", "RealESRGAN Compact", 2),
    ("swinir-2x", "SwinIR", 2), ("1x-restore", "ESRGAN", 1), ("8x-big", "ESRGAN", 8),
])
def test_each_layout_is_detected_and_runs_at_its_scale(library, name, architecture, scale):
    model = library.load(name)
    assert (model.architecture, model.scale) == (architecture, scale)
    out = model.run(picture(24, 20), tile=64)
    assert out.size == (24 * scale, 20 * scale)
    assert np.asarray(out).std() > 1  # a picture, not a flat colour


@pytest.mark.parametrize("size", [(100, 75), (61, 47), (40, 30), (17, 13)])
def test_any_target_size_is_exact(library, size):
    image = picture(40, 30)
    for name in ("4x-tiny", "compact-2x", "1x-restore", "Lanczos", "Nearest", "None"):
        assert library.upscale(name, image, size).size == size


def test_lanczos_and_nearest_are_pillows(library):
    image = picture(40, 30)
    for name, resample in (("Lanczos", Image.Resampling.LANCZOS), ("Nearest", Image.Resampling.NEAREST)):
        assert np.array_equal(np.asarray(library.upscale(name, image, (97, 71))),
                              np.asarray(image.resize((97, 71), resample)))


def test_a_larger_target_runs_the_model_again_then_resizes(library):
    """A1111's rule: a 2× model towards 3× runs twice (to 4×) and Lanczos brings it down to 3×."""
    image = picture(20, 16)
    model = library.load("compact-2x")
    twice = model.run(model.run(image, 64), 64).resize((60, 48), Image.Resampling.LANCZOS)
    assert np.array_equal(np.asarray(library.upscale("compact-2x", image, (60, 48))), np.asarray(twice))


@pytest.mark.parametrize("name", ["4x-tiny", "compact-2x", "swinir-2x"])
def test_tiles_blend_into_the_untiled_result(library, name):
    model = library.load(name)
    image = picture(96, 80, seed=7)
    whole = np.asarray(model.run(image, tile=512), dtype=np.int16)  # one tile
    tiles_seen = []
    tiled = np.asarray(model.run(image, tile=40, overlap=16, on_tile=lambda done, total: tiles_seen.append(total)),
                       dtype=np.int16)
    assert tiles_seen and tiles_seen[0] > 4  # really tiled
    diff = np.abs(whole - tiled)
    # no visible seam: nearly every pixel as untiled (a window-attention model differs a little more at borders)
    assert diff.mean() < 1.0 and np.percentile(diff, 99.5) <= 12, (diff.mean(), np.percentile(diff, 99.5))
    s = model.scale  # away from the tile borders it is the same picture (receptive field inside the overlap)
    assert np.abs(whole[: 12 * s, : 12 * s] - tiled[: 12 * s, : 12 * s]).max() <= 1


def test_an_interrupt_stops_between_tiles(library):
    model = library.load("4x-tiny")
    seen = []
    assert model.run(picture(96, 96), tile=32, overlap=8, on_tile=lambda d, t: seen.append(d) or d < 2) is None
    assert seen == [1, 2]


def test_bad_files_give_an_error_naming_the_file_and_the_rest_work(library):
    folder = library.models_dir / "ESRGAN"
    (folder / "garbage.pth").write_bytes(b"not a pickle at all")
    torch.save({"weight": torch.zeros(3, 3)}, folder / "not-an-upscaler.pth")

    class Evil:
        def __reduce__(self):
            return (print, ("this must never run",))
    (folder / "evil.pth").write_bytes(pickle.dumps({"x": Evil()}))
    for name, words in (("garbage", "garbage.pth"), ("not-an-upscaler", "not-an-upscaler.pth"), ("evil", "evil.pth")):
        with pytest.raises(ModelError, match=words):
            library.load(name)
    assert library.upscale("4x-tiny", picture(16, 16), (64, 64)).size == (64, 64)


def test_without_spandrel_the_models_are_listed_as_unavailable_and_the_builtins_work(library, monkeypatch):
    monkeypatch.setattr(U, "spandrel_problem", lambda: "spandrel could not be imported (test)")
    rows = {r["name"]: r for r in library.describe()}
    assert rows["Lanczos"]["available"] and not rows["4x-tiny"]["available"]
    assert "spandrel" in rows["4x-tiny"]["problem"]
    with pytest.raises(UpscalerUnavailable, match="4x-tiny: spandrel could not be imported"):
        library.upscale("4x-tiny", picture(16, 16), (64, 64))
    assert library.upscale("Lanczos", picture(16, 16), (64, 64)).size == (64, 64)


def test_models_live_in_the_typed_cache(easel, tmp_path):
    write_upscaler("compact", easel.settings.models_dir / "ESRGAN" / "c2.safetensors", 2)
    first = easel.upscalers.load("c2")
    assert easel.upscalers.load("c2") is first  # cached
    kinds = {e.kind for e in easel.manager.cache.entries()}
    assert "upscaler" in kinds
