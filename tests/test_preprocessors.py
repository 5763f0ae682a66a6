"""ControlNet's preprocessors on crafted pictures, the processor resolution and pixel perfect, and fitting a map
to the generation size with each resize mode."""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw

from webui.features.controlnet import ControlNetUnit, detect, fit_map, pixel_perfect_resolution, preview
from webui.features.preprocessors import PREPROCESSORS, find_preprocessor, preprocess


def drawn(size=(128, 96), box=(32, 24, 96, 72), fill=(255, 255, 255), background=(0, 0, 0)) -> np.ndarray:
    image = Image.new("RGB", size, background)
    ImageDraw.Draw(image).rectangle(box, fill=fill)
    return np.asarray(image)


def run(name: str, image: np.ndarray, a: float = -1, b: float = -1, resolution: int = -1, mask=None, seed=0):
    p = find_preprocessor(name)
    return preprocess(p, image, resolution if resolution > 0 else min(image.shape[:2]), a, b, mask, seed)


def test_every_map_is_float_rgb_in_range():
    image = drawn()
    for p in PREPROCESSORS.values():
        if p.problem(None):
            continue
        out = run(p.name, image)
        assert out.dtype == np.float32 and out.ndim == 3 and out.shape[2] == 3, p.name
        assert out.min() >= (-1 if p.name == "inpaint_only" else 0) and out.max() <= 1, p.name


def test_canny_finds_the_edges_of_a_square():
    edges = run("canny", drawn(), 100, 200)[..., 0]
    assert edges.shape == (96, 128)
    on = np.argwhere(edges > 0.5)
    assert len(on) > 150  # the outline: about 2 × (64 + 48) pixels
    ys, xs = on[:, 0], on[:, 1]
    assert ys.min() >= 22 and ys.max() <= 74 and xs.min() >= 30 and xs.max() <= 98
    assert edges[48, 64] == 0 and edges[5, 5] == 0  # inside and outside are empty
    assert (np.abs(ys - 24) <= 1).sum() > 40 and (np.abs(xs - 32) <= 1).sum() > 30  # top and left sides
    faint = drawn(fill=(20, 20, 20))
    assert run("canny", faint, 100, 200).max() == 0  # a weak edge is below the thresholds
    assert run("canny", faint, 10, 20).max() == 1


def test_invert_and_threshold():
    image = drawn(fill=(200, 200, 200), background=(20, 20, 20))
    inverted = run("invert", image)
    assert np.allclose(inverted, 1 - image / 255.0, atol=1e-6)
    binary = run("threshold", image, 127)
    assert set(np.unique(binary)) == {0.0, 1.0} and binary[48, 64, 0] == 1 and binary[5, 5, 0] == 0
    assert run("threshold", image, 250).max() == 0


def test_processor_resolution_sets_the_short_side():
    image = drawn(size=(256, 128), box=(64, 32, 192, 96))
    assert run("canny", image, resolution=64).shape[:2] == (64, 128)
    assert run("blur_gaussian", image, 2, resolution=256).shape[:2] == (256, 512)
    assert run("invert", image, resolution=64).shape[:2] == (128, 256)  # a module without a resolution


def test_tile_resample_shrinks_by_its_rate():
    image = drawn(size=(128, 128), box=(0, 0, 64, 128))
    assert run("tile_resample", image, 1).shape[:2] == (128, 128)
    assert run("tile_resample", image, 2).shape[:2] == (64, 64)
    assert run("tile_resample", image, 4).shape[:2] == (32, 32)


def test_color_grid_is_blocks_of_average_colour():
    image = np.zeros((128, 128, 3), np.uint8)
    image[:, :64] = (255, 0, 0)
    image[:, 64:] = (0, 0, 255)
    grid = run("t2ia_color_grid", image)
    assert grid.shape == (128, 128, 3)
    assert np.allclose(grid[10, 10], (1, 0, 0), atol=0.05) and np.allclose(grid[100, 120], (0, 0, 1), atol=0.05)
    assert len(np.unique(grid[:, :, 0])) <= 4  # flat blocks, not the picture's detail


def test_lines_from_drawings():
    sketch = drawn(fill=(0, 0, 0), background=(255, 255, 255))  # a dark square on white
    for name in ("lineart_standard", "scribble_xdog"):
        lines = run(name, sketch)[..., 0]
        assert lines[24, 64] > 0.4 and lines[5, 5] == 0 and lines[90, 5] == 0, name


def test_blur_shuffle_and_inpaint_only():
    image = drawn()
    blurred = run("blur_gaussian", image, 4)
    assert 0.05 < blurred[24, 64, 0] < 0.95  # the edge is soft
    a, b = run("shuffle", image, seed=1), run("shuffle", image, seed=2)
    assert np.array_equal(a, run("shuffle", image, seed=1)) and not np.array_equal(a, b)
    mask = np.zeros(image.shape[:2], np.uint8)
    mask[:, :64] = 255
    out = run("inpaint_only", image, mask=mask)
    assert (out[:, :64] == -1).all() and (out[:, 64:] >= 0).all()


def test_unavailable_modules_say_why():
    p = find_preprocessor("openpose")
    assert p is not None and "annotator weights" in p.problem(None)
    with pytest.raises(ValueError, match="openpose"):
        preprocess(p, drawn(), 512, -1, -1)
    assert find_preprocessor("invert (from white bg & black line)").name == "invert"


def test_pixel_perfect_and_fitting():
    picture = drawn(size=(200, 100), box=(50, 25, 150, 75))
    assert pixel_perfect_resolution(picture, (512, 512), "Crop and Resize") == 512  # covering: 100 → 512
    assert pixel_perfect_resolution(picture, (512, 512), "Resize and Fill") == 256  # fitting: 200 → 512
    unit = ControlNetUnit(module="canny", pixel_perfect=True, resize_mode="Resize and Fill")
    assert detect(unit, picture, None, (512, 512)).shape[:2] == (256, 512)
    detected = np.asarray(picture, np.float32) / 255
    crop = fit_map(detected, "Crop and Resize", 64, 64)
    fill = fit_map(detected, "Resize and Fill", 64, 64)
    just = fit_map(detected, "Just Resize", 64, 64)
    assert crop.shape == fill.shape == just.shape == (64, 64, 3)
    assert crop[2, 32, 0] < 0.1 and crop[32, 2, 0] > 0.9  # the middle 100×100: the square reaches its sides
    assert fill[2, 32, 0] < 0.1 and fill[32, 32, 0] > 0.9 and fill[32, 2, 0] < 0.1  # letterboxed, square whole
    assert just[32, 2, 0] < 0.1 and just[32, 32, 0] > 0.9 and just[5, 32, 0] < 0.1  # stretched
    masked = detected.copy()
    masked[:, :100] = -1
    assert fit_map(masked, "Just Resize", 64, 64)[10, 10, 0] == pytest.approx(-1, abs=0.02)
    assert preview(masked).getpixel((10, 10)) == (0, 0, 0)
