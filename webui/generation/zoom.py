"""Infinite zoom: keyframes made by outpainting a border around the previous one, and the video between.

The algorithm of the best-known A1111 zoom extension (infinite-zoom-automatic1111-webui):

* keyframe k+1 = keyframe k shrunk into the centre of an empty frame (by s = inner/frame, ½ with the
  default mask width of a quarter frame), the border outpainted from latent noise at denoising 1 with
  the prompt keyed at or below k+1 (`outpaint.plan_box` does the masks and the feathered paste);
* between two keyframes the frames are centred crops of the outer one, resized to the frame, whose
  side shrinks geometrically, side(t) = frame × s^(1−t) for t in [0, 1): every frame zooms by the same
  factor s^(1/n), so the speed looks even (a linear side would crawl at first and rush at the end);
* the inner keyframe, at full resolution, is pasted over the centre of each of those frames (with the
  feather of the outpaint), because the crop there is the inner picture shrunk and blown up again —
  without it every transition would start blurred;
* zoom out plays the frames as made; zoom in plays the same frames backwards.

Frames are produced lazily and streamed to the video writer (webui/images/video.py): a minute of
512×512 video is 1,800 frames, too many to hold. Keyframes and the video are written by the image
store, like every other output. Between keyframes the job lets other people's jobs have a turn.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Callable, Iterable, Iterator, Literal

from PIL import Image, ImageOps
from pydantic import ConfigDict, Field, field_validator, model_validator

from webui.images.store import ImageStore
from webui.images.video import SavedVideo

from . import masks as M
from .noise import pick_seed
from .fields import Param
from .outpaint import OutpaintRequest, default_box_size, plan_box
from .progress import NullProgress, PartProgress, ProgressSink, yield_turn
from .requests import GenerationParams, Txt2ImgRequest, check_prompt

log = logging.getLogger(__name__)

RESAMPLE = Image.Resampling.BICUBIC


class ZoomRequest(GenerationParams):
    """An infinite-zoom video. Prompt/sampler/steps/CFG/seed/size are GenerationParams' own fields.

    `prompts` maps a keyframe index to the prompt used from that keyframe on (keyframe 0 is the first
    image); when it is empty, `prompt` is used throughout. Keyframe k is made with seed + k.
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True, arbitrary_types_allowed=True)

    prompts: dict[int, str] = Field(default_factory=dict, description="keyframe index -> prompt from there on")
    keyframes: Annotated[int, Field(ge=1, le=200, description="outpaint steps (keyframes after the first image)"),
                         Param("Outpaint steps (keyframes)")] = 4
    direction: Annotated[Literal["out", "in"], Field(), Param("Direction", ui="radio")] = "out"
    mask_width: Annotated[int | None, Field(ge=8, description="new border per side and keyframe, px; empty = a "
                                                              "quarter of the frame width (each step halves)"),
                          Param("Mask width, px (0: a quarter of the frame, so each keyframe halves)", minimum=0,
                                maximum=1016, step=8)] = None
    mask_blur: Annotated[int | None, Field(ge=0, le=256, description="how far the border blends into the shrunk "
                                                                     "picture, px; empty = a quarter of the mask width"),
                         Param("Border blend, px", ui=None)] = None
    fps: Annotated[int, Field(ge=1, le=120), Param("Frames per second")] = 30
    seconds_per_keyframe: Annotated[float, Field(gt=0.0, le=60.0, description="zoom speed"),
                                    Param("Zoom speed: seconds per keyframe", minimum=0.1, step=0.1)] = 1.0
    hold_first: Annotated[float, Field(ge=0.0, le=60.0, description="seconds the video's first frame is held"),
                          Param("Hold first frame, s", step=0.5)] = 0.0
    hold_last: Annotated[float, Field(ge=0.0, le=60.0, description="seconds the video's last frame is held"),
                         Param("Hold last frame, s", step=0.5)] = 0.0
    init_image: Image.Image | None = Field(None, exclude=True, description="first keyframe instead of txt2img")

    @field_validator("prompts")
    @classmethod
    def _keys(cls, v: dict[int, str]) -> dict[int, str]:
        if any(k < 0 for k in v):
            raise ValueError("keyframe indexes start at 0")
        for text in v.values():
            check_prompt(text)
        return dict(sorted(v.items()))

    @model_validator(mode="after")
    def _one_at_a_time(self) -> "ZoomRequest":
        if self.batch_size != 1 or self.n_iter != 1:
            raise ValueError("batch_size: a zoom makes one image per keyframe (batch size and count 1)")
        return self

    def prompt_for(self, keyframe: int) -> str:
        """The prompt keyed at or below `keyframe` (the first keyed one before any key)."""
        if not self.prompts:
            return self.prompt
        keyed = [k for k in self.prompts if k <= keyframe]
        return self.prompts[keyed[-1] if keyed else next(iter(self.prompts))]

    @property
    def frames_per_keyframe(self) -> int:
        return max(1, round(self.fps * self.seconds_per_keyframe))


# -- geometry ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ZoomGeometry:
    """Frame size and where the previous keyframe sits inside the next one."""

    width: int
    height: int
    mask_width: int  # border added on the left and right, px
    mask_height: int  # border added on top and bottom (the same shrink factor as the width)

    @classmethod
    def for_frame(cls, width: int, height: int, mask_width: int | None = None) -> "ZoomGeometry":
        mask = mask_width if mask_width is not None else width // 4
        if not 1 <= mask < width // 2 - 4:
            raise ValueError(f"mask_width: must leave a picture in the middle (1 to {width // 2 - 5} for a "
                             f"{width} px frame, got {mask})")
        # the same shrink factor both ways, so a non-square frame is not squashed as it recedes
        return cls(width, height, mask, round(mask * height / width))

    @property
    def inner_rect(self) -> tuple[int, int, int, int]:
        """Where the previous keyframe lies in the next one, (x0, y0, x1, y1)."""
        return (self.mask_width, self.mask_height, self.width - self.mask_width, self.height - self.mask_height)

    @property
    def inner_size(self) -> tuple[int, int]:
        x0, y0, x1, y1 = self.inner_rect
        return (x1 - x0, y1 - y0)

    def crop_rect(self, t: float) -> tuple[float, float, float, float]:
        """The part of the outer keyframe shown at t ∈ [0, 1]: centred, side = frame × s^(1−t).

        t = 0 is exactly the inner keyframe's rectangle, t = 1 the whole frame; the side ratio between
        any two frames the same time apart is the same (a constant-rate zoom)."""
        iw, ih = self.inner_size
        w = self.width * (iw / self.width) ** (1.0 - t)
        h = self.height * (ih / self.height) ** (1.0 - t)
        x0, y0 = (self.width - w) / 2, (self.height - h) / 2
        return (x0, y0, x0 + w, y0 + h)


def grow_canvas(previous: Image.Image, geometry: ZoomGeometry) -> Image.Image:
    """The next keyframe's starting box: the previous one shrunk into the centre, the border empty (RGBA)."""
    canvas = Image.new("RGBA", (geometry.width, geometry.height), (0, 0, 0, 0))
    canvas.paste(previous.convert("RGB").resize(geometry.inner_size, M.LANCZOS).convert("RGBA"),
                 geometry.inner_rect[:2])
    return canvas


def transition_frame(outer: Image.Image, inner: Image.Image, inner_alpha: Image.Image, t: float,
                     geometry: ZoomGeometry) -> Image.Image:
    """The frame at t between `inner` (t = 0) and `outer` (t = 1): a crop of the outer keyframe, with
    the sharper inner keyframe pasted over where it lies (weighted by `inner_alpha`, inner's size)."""
    size = (geometry.width, geometry.height)
    x0, y0, x1, y1 = geometry.crop_rect(t)
    frame = outer.convert("RGB").resize(size, RESAMPLE, box=(x0, y0, x1, y1))
    # the inner rectangle in frame coordinates; inner pixel = a * frame coordinate + c (continuous)
    ix0, iy0, ix1, iy1 = geometry.inner_rect
    sx, sy = geometry.width / (x1 - x0), geometry.height / (y1 - y0)
    fx0, fy0 = (ix0 - x0) * sx, (iy0 - y0) * sy
    ax, ay = geometry.width / ((ix1 - ix0) * sx), geometry.height / ((iy1 - iy0) * sy)
    layer = inner.convert("RGB").convert("RGBA")
    layer.putalpha(inner_alpha)
    placed = layer.transform(size, Image.Transform.AFFINE, (ax, 0, -fx0 * ax, 0, ay, -fy0 * ay), RESAMPLE)
    frame = frame.convert("RGBA")
    frame.alpha_composite(placed)
    return frame.convert("RGB")


def inner_alpha_from_feather(feather: Image.Image | None, geometry: ZoomGeometry) -> Image.Image:
    """How much of the inner keyframe shows, at its own size: 1 − the outpaint's feather over its rect."""
    size = (geometry.width, geometry.height)
    if feather is None:
        return Image.new("L", size, 255)
    return ImageOps.invert(feather.crop(geometry.inner_rect).resize(size, Image.Resampling.BILINEAR))


def transition_times(n: int) -> list[float]:
    """The in-between frames of one transition: t = 0, 1/n, …, (n−1)/n (t = 1 is the next transition's)."""
    return [j / n for j in range(n)]


def zoom_out_frames(keyframes: list[Image.Image], alphas: list[Image.Image], n: int,
                    geometry: ZoomGeometry) -> Iterator[Image.Image]:
    """Zoom-out order: transition 0→1, 1→2, …, then the last keyframe whole."""
    for k in range(len(keyframes) - 1):
        for t in transition_times(n):
            yield transition_frame(keyframes[k + 1], keyframes[k], alphas[k], t, geometry)
    yield keyframes[-1].convert("RGB")


def zoom_in_frames(keyframes: list[Image.Image], alphas: list[Image.Image], n: int,
                   geometry: ZoomGeometry) -> Iterator[Image.Image]:
    """The zoom-out frames backwards, made in that order (nothing is held to be reversed)."""
    yield keyframes[-1].convert("RGB")
    for k in reversed(range(len(keyframes) - 1)):
        for t in reversed(transition_times(n)):
            yield transition_frame(keyframes[k + 1], keyframes[k], alphas[k], t, geometry)


def with_holds(frames: Iterable[Image.Image], first: int, last: int) -> Iterator[Image.Image]:
    """The first frame repeated `first` extra times, the last `last` extra times."""
    previous = None
    for i, frame in enumerate(frames):
        if i == 0:
            yield from [frame] * first
        yield frame
        previous = frame
    if previous is not None:
        yield from [previous] * last


def frame_count(keyframes: int, n: int, fps: int, hold_first: float, hold_last: float) -> int:
    """Frames in a video of `keyframes` keyframes (the first image included)."""
    return (keyframes - 1) * n + 1 + round(hold_first * fps) + round(hold_last * fps)


# -- making the keyframes ------------------------------------------------------------------------------
@dataclass
class ZoomResult:
    request: ZoomRequest  # with size, mask, seed resolved
    geometry: ZoomGeometry
    keyframes: list[Image.Image] = field(default_factory=list)
    inner_alphas: list[Image.Image] = field(default_factory=list)  # [k]: keyframe k inside keyframe k+1
    infotexts: list[str] = field(default_factory=list)
    interrupted: bool = False
    seconds: float = 0.0

    def frames(self) -> Iterator[Image.Image]:
        req, n = self.request, self.request.frames_per_keyframe
        make = zoom_out_frames if req.direction == "out" else zoom_in_frames
        return with_holds(make(self.keyframes, self.inner_alphas, n, self.geometry),
                          round(req.hold_first * req.fps), round(req.hold_last * req.fps))

    @property
    def frame_count(self) -> int:
        req = self.request
        return frame_count(len(self.keyframes), req.frames_per_keyframe, req.fps, req.hold_first, req.hold_last)


def resolve_zoom(req: ZoomRequest, trained_size: tuple[int, int]) -> tuple[ZoomRequest, ZoomGeometry]:
    """Size (512, or the trained size when smaller), seed and mask decided; ValueError names the field."""
    width, height = default_box_size(trained_size)
    width, height = req.width or width, req.height or height
    geometry = ZoomGeometry.for_frame(width, height, req.mask_width)
    blur = req.mask_blur if req.mask_blur is not None else max(4, geometry.mask_width // 4)
    resolved = req.model_copy(update={"width": width, "height": height, "seed": pick_seed(req.seed),
                                      "mask_width": geometry.mask_width, "mask_blur": blur})
    return resolved, geometry


def keyframe_params(req: ZoomRequest, k: int) -> dict:
    params = req.model_dump(include=set(GenerationParams.model_fields))
    params.update(prompt=req.prompt_for(k), seed=(req.seed + k) % 2**32)
    return params


def run_zoom(engine, model, request: ZoomRequest, progress: ProgressSink | None = None,
             models: Callable | None = None) -> ZoomResult:
    """Make the keyframes (the engine does the sampling); stops early, keeping what is done, when told to.
    Between keyframes other owners' jobs may run (`models` gives the model back afterwards)."""
    started = time.perf_counter()
    progress = progress or NullProgress()
    req, geometry = resolve_zoom(request, model.default_size)
    result = ZoomResult(req, geometry)
    count = req.keyframes + 1
    first = first_keyframe(engine, model, req, PartProgress(progress, 0, count, "keyframe"))
    if first is not None:
        result.keyframes.append(first[0])
        result.infotexts.append(first[1])
    for k in range(1, count):
        if yield_turn(progress) and models is not None:
            model = models(req.checkpoint, req.vae)
        if not result.keyframes or progress.should_stop():
            break
        plan = plan_box(OutpaintRequest(**keyframe_params(req, k), box=grow_canvas(result.keyframes[-1], geometry),
                                        prefill="noise", overlap=req.mask_blur, mask_blur=req.mask_blur))
        out = engine.img2img(model, plan.request, PartProgress(progress, k, count, "keyframe"))
        if out.interrupted or not out.images:
            break
        result.keyframes.append(plan.finish(out.images[0]))
        result.inner_alphas.append(inner_alpha_from_feather(plan.feather, geometry))
        result.infotexts.append(out.infotexts[0])
    result.interrupted = progress.should_stop() or len(result.keyframes) < count
    result.seconds = time.perf_counter() - started
    return result


def first_keyframe(engine, model, req: ZoomRequest, progress: PartProgress) -> tuple[Image.Image, str] | None:
    """The given first image (cropped to the frame), or txt2img with keyframe 0's prompt."""
    size = (req.width, req.height)
    if req.init_image is not None:
        image = M.resize_image(1, M.to_rgb(req.init_image), *size)
        return image, ""
    out = engine.txt2img(model, Txt2ImgRequest(**keyframe_params(req, 0)), progress)
    if out.interrupted or not out.images:
        return None
    return out.images[0], out.infotexts[0]


# -- writing -----------------------------------------------------------------------------------------------
@dataclass
class ZoomVideo(SavedVideo):
    """What a zoom job leaves behind: `NNNNN-SEED.mp4` and `NNNNN-SEED/keyframe-KKK.png` in one folder."""

    keyframe_paths: list[Path] = field(default_factory=list)
    keyframes: int = 0


def save_zoom(result: ZoomResult, store: ImageStore, owner: str | None = None) -> ZoomVideo:
    """Keyframes (PNG with infotext) and the video of whatever keyframes there are, through the store:
    `outputs/zoom/DATE/NNNNN-SEED/keyframe-KKK.png` and `NNNNN-SEED.mp4`."""
    req = result.request
    size = (result.geometry.width, result.geometry.height)
    if not result.keyframes:
        return ZoomVideo(None, 0, req.fps, size, True, result.seconds, "")
    target = store.reserve("zoom", req.seed)
    paths = [store.save(image, info or None, "zoom", owner=owner, folder=target, name=f"keyframe-{k:03d}")
             for k, (image, info) in enumerate(zip(result.keyframes, result.infotexts))]
    video = target.with_suffix(".mp4")
    frames = store.save_video(result.frames(), video, req.fps, size, owner)
    return ZoomVideo(video, frames, req.fps, size, result.interrupted, result.seconds,
                     result.infotexts[-1] if result.infotexts else "", keyframe_paths=paths,
                     keyframes=len(result.keyframes))
