"""Infinite zoom: the geometric crops, the frames between keyframes, the keyframes, the video on disk."""
from __future__ import annotations

import datetime
import math

import imageio.v2 as iio
import numpy as np
import pytest
from PIL import Image
from pydantic import ValidationError

from sinks import Recorder
from webui.images.store import ImageStore
from webui.generation.zoom import (
    ZoomGeometry, ZoomRequest, frame_count, grow_canvas, inner_alpha_from_feather, run_zoom, save_zoom,
    transition_frame, zoom_in_frames, zoom_out_frames,
)


def smooth_image(size=(64, 64), phase=0.0) -> Image.Image:
    """Gentle gradients: resampling changes them little, so frame comparisons can be tight."""
    w, h = size
    y, x = np.mgrid[0:h, 0:w] / max(w, h)
    rgb = np.stack([0.5 + 0.4 * np.sin(3 * x + phase), 0.5 + 0.4 * np.cos(2 * y + phase), 0.3 + 0.4 * x * y], -1)
    return Image.fromarray((rgb * 255).round().astype(np.uint8))


def outer_of(inner: Image.Image, geometry: ZoomGeometry) -> Image.Image:
    """A next keyframe as the outpaint would leave it: the inner shrunk in the centre, some border around."""
    border = smooth_image((geometry.width, geometry.height), phase=1.0).convert("RGBA")
    border.alpha_composite(grow_canvas(inner, geometry))
    return border.convert("RGB")


def mean_diff(a: Image.Image, b: Image.Image) -> float:
    return float(np.abs(np.asarray(a, float) - np.asarray(b, float)).mean())


@pytest.mark.parametrize("size, mask", [((64, 64), None), ((512, 512), None), ((96, 64), 16), ((512, 384), 96)])
def test_crop_rect_follows_the_geometric_zoom(size, mask):
    g = ZoomGeometry.for_frame(*size, mask)
    w, h = size
    s = g.inner_size[0] / w
    for t in (0.0, 0.1, 0.25, 0.5, 0.8, 1.0):
        x0, y0, x1, y1 = g.crop_rect(t)
        assert math.isclose(x1 - x0, w * s ** (1 - t), rel_tol=1e-9)
        assert math.isclose((x0 + x1) / 2, w / 2) and math.isclose((y0 + y1) / 2, h / 2)
        assert math.isclose((y1 - y0) / h, (x1 - x0) / w, rel_tol=0.02)  # same zoom both ways (rounding only)
    assert g.crop_rect(0.0) == tuple(float(v) for v in g.inner_rect)
    assert g.crop_rect(1.0) == (0.0, 0.0, float(w), float(h))
    # a constant rate: every step of 1/n zooms by the same factor
    n = 7
    sides = [g.crop_rect(j / n)[2] - g.crop_rect(j / n)[0] for j in range(n + 1)]
    ratios = np.array(sides[1:]) / np.array(sides[:-1])
    assert np.allclose(ratios, ratios[0]) and math.isclose(ratios[0], s ** (-1 / n))


def test_default_mask_width_halves_each_keyframe_and_bad_widths_are_refused():
    g = ZoomGeometry.for_frame(512, 512)
    assert g.mask_width == 128 and g.inner_rect == (128, 128, 384, 384)
    assert ZoomGeometry.for_frame(512, 384).inner_size == (256, 192)  # no squash on a wide frame
    with pytest.raises(ValueError, match="mask_width"):
        ZoomGeometry.for_frame(64, 64, 30)


def test_transition_starts_on_the_inner_keyframe_which_is_the_outer_ones_centre():
    g = ZoomGeometry.for_frame(64, 64)
    inner = smooth_image()
    outer = outer_of(inner, g)
    alpha = inner_alpha_from_feather(None, g)
    first = transition_frame(outer, inner, alpha, 0.0, g)
    assert np.array_equal(np.asarray(first), np.asarray(inner))  # the sharp keyframe itself
    centre = outer.crop(g.inner_rect).resize((64, 64), Image.Resampling.BICUBIC)
    assert mean_diff(first, centre) < 2.0  # …which is the outer keyframe's centre, blown up
    # further on, the frame is the crop of the outer keyframe (with the sharper inner pasted over)
    later = transition_frame(outer, inner, alpha, 0.6, g)
    crop = outer.resize((64, 64), Image.Resampling.BICUBIC, box=g.crop_rect(0.6))
    assert mean_diff(later, crop) < 2.0


def test_zoom_in_plays_the_zoom_out_frames_backwards_ending_each_transition_on_the_centre():
    g = ZoomGeometry.for_frame(64, 64)
    kf0 = smooth_image()
    kf1 = outer_of(kf0, g)
    kf2 = outer_of(kf1, g)
    keyframes, alphas, n = [kf0, kf1, kf2], [inner_alpha_from_feather(None, g)] * 2, 5
    out = [np.asarray(f) for f in zoom_out_frames(keyframes, alphas, n, g)]
    back = [np.asarray(f) for f in zoom_in_frames(keyframes, alphas, n, g)]
    assert len(out) == len(back) == 2 * n + 1 == frame_count(3, n, 30, 0, 0)
    assert all(np.array_equal(a, b) for a, b in zip(out, reversed(back)))
    assert np.array_equal(back[0], np.asarray(kf2)) and np.array_equal(out[-1], np.asarray(kf2))
    # zooming in, the last in-between frame of the first transition is keyframe 2's centre region
    centre = kf2.crop(g.inner_rect).resize((64, 64), Image.Resampling.BICUBIC)
    assert mean_diff(Image.fromarray(back[n]), centre) < 2.0
    # each frame is a small, even step from the one before: no jump between transitions
    steps = [mean_diff(Image.fromarray(a), Image.fromarray(b)) for a, b in zip(out, out[1:])]
    assert max(steps) < 8 * np.median(steps) + 1


def test_prompts_apply_from_their_keyframe_on():
    req = ZoomRequest(prompts={3: "city", 0: "forest"}, prompt="unused")
    assert [req.prompt_for(k) for k in range(6)] == ["forest"] * 3 + ["city"] * 3
    assert ZoomRequest(prompts={2: "sea"}).prompt_for(0) == "sea"  # nothing keyed yet: the first one
    assert ZoomRequest(prompt="plain").prompt_for(4) == "plain"


@pytest.mark.parametrize("changes, field", [({"batch_size": 2}, "batch_size"), ({"prompts": {-1: "x"}}, "prompts"),
                                            ({"fps": 0}, "fps"), ({"direction": "sideways"}, "direction")])
def test_zoom_request_refuses_bad_values_naming_the_field(changes, field):
    with pytest.raises(ValidationError) as err:
        ZoomRequest(**changes)
    assert field in str(err.value)


# -- on the tiny model ---------------------------------------------------------------------------------------
def test_zoom_job_writes_an_mp4_of_the_expected_frames_and_its_keyframes(easel):
    req = ZoomRequest(prompts={0: "a red circle", 1: "a blue square"}, keyframes=2, steps=2, seed=5, fps=8,
                      seconds_per_keyframe=0.5, hold_last=0.25, checkpoint="tiny-a")
    job = easel.submit("zoom", req)
    stages = set()
    while not job.wait(0.05):
        stages.add(job.progress_text())
    assert job.error is None, job.error
    made = job.result
    assert (made.keyframes, made.interrupted, made.size, made.fps) == (3, False, (64, 64), 8)
    assert made.frames == 2 * 4 + 1 + 2
    folder = easel.settings.outputs_dir / "zoom" / datetime.date.today().isoformat()
    assert made.video.parent == folder and made.video.name.endswith("-5.mp4")
    assert not [p for p in folder.iterdir() if p.name.startswith(".tmp")]
    reader = iio.get_reader(made.video)
    try:
        meta = reader.get_meta_data()
        assert meta["codec"] == "h264" and meta["fps"] == 8 and meta["size"] == (64, 64)
        assert reader.count_frames() == made.frames
        last = reader.get_data(made.frames - 1)
    finally:
        reader.close()
    keyframes = [Image.open(p) for p in made.keyframe_paths]
    for image in keyframes:
        image.load()
    assert [p.name for p in made.keyframe_paths] == ["keyframe-000.png", "keyframe-001.png", "keyframe-002.png"]
    assert "Seed: 5," in keyframes[0].info["parameters"] and "Seed: 7," in keyframes[2].info["parameters"]
    assert keyframes[1].info["parameters"].startswith("a blue square")
    # the zoom ends on the last keyframe (H.264 is lossy: closer to it than to anything else by far)
    last = Image.fromarray(last)
    assert mean_diff(last, keyframes[2]) < 0.5 * min(mean_diff(last, keyframes[0]), mean_diff(last, keyframes[1]))
    # keyframe 1's centre is keyframe 0 shrunk, untouched beyond the blend band (mask 16 px, band 4 px)
    shrunk = np.asarray(grow_canvas(keyframes[0], ZoomGeometry.for_frame(64, 64)))[..., :3]
    assert np.array_equal(np.asarray(keyframes[1])[20:44, 20:44], shrunk[20:44, 20:44])
    assert any(text.startswith("keyframe ") and " of 3" in text for text in stages), stages  # "keyframe i of N"


def test_interrupted_zoom_keeps_a_video_of_the_keyframes_so_far(easel, tmp_path):
    model = easel.load_model("tiny-a")
    sink = Recorder(stop_after=2 * 2 + 1)  # the first image and keyframe 1 finish; keyframe 2 is cut short
    req = ZoomRequest(prompt="a red circle", keyframes=4, steps=2, seed=1, fps=4, seconds_per_keyframe=1.0,
                      direction="in")
    result = run_zoom(easel.engine, model, req, sink)
    assert result.interrupted and len(result.keyframes) == 2
    assert any(stage.startswith("keyframe 1 of 5") for stage in sink.stages)
    made = save_zoom(result, ImageStore(tmp_path))
    assert made.interrupted and made.keyframes == 2 and made.frames == 4 + 1
    reader = iio.get_reader(made.video)
    try:
        assert reader.count_frames() == 5
        first = reader.get_data(0)
    finally:
        reader.close()
    # zooming in starts on the outermost keyframe made (H.264 is lossy: compare with the other one)
    first = Image.fromarray(first)
    assert mean_diff(first, result.keyframes[-1]) < 0.5 * mean_diff(first, result.keyframes[0])
