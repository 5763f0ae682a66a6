"""Outpainting on the infinite canvas: what one selection box becomes, and how its result goes back.

The canvas sends the box's pixels with their alpha (transparent = nothing painted there yet). The
box decides the job by itself: nothing painted → txt2img, fully painted → img2img, partly painted →
outpaint. For an outpaint:

1. the empty part is pre-filled (see `prefill`);
2. the mask given to the sampler is the empty part grown by an overlap band (default 32 px), so the
   new content is sampled together with a strip of the old picture and can join it;
3. every candidate is pasted back over the original through a feather that is 1 on the empty part
   and falls to 0 across the band, so pixels farther than the band from the empty part come back
   byte for byte (the engine's own blurred overlay would leak a few pixels past any band).

Pure functions on PIL images and numpy arrays plus `plan_box`, which turns a box into the typed
engine request and the paste that finishes it. No models here.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

import numpy as np
from PIL import Image
from pydantic import ConfigDict, Field, field_validator, model_validator
from scipy import ndimage

from . import masks as M
from .fields import Param
from .requests import GenerationParams, Img2ImgRequest, Txt2ImgRequest

MAX_BOX_SIDE = 2048
DEFAULT_BOX_SIDE = 512
GRID = 8
COVERED_ALPHA = 128  # alpha at or above this counts as painted; fainter pixels are regenerated

BoxKind = Literal["txt2img", "img2img", "outpaint"]
Prefill = Literal["blur", "noise"]


def default_box_size(trained: tuple[int, int]) -> tuple[int, int]:
    """512×512, or the checkpoint's trained size where that is smaller (a 64-px test model, SD at 256)."""
    return tuple(max(64, min(DEFAULT_BOX_SIDE, side) // GRID * GRID) for side in trained)  # type: ignore[return-value]


class OutpaintParams(GenerationParams):
    """Everything about a canvas box except its pixels; what the JSON endpoint's body extends.

    `width`/`height` are the box (never "the checkpoint's size": the page always knows it), at most
    2048 px a side, so one request cannot ask for an enormous sampling run. `denoising_strength` is how
    far a fully painted box (img2img) is repainted; `outpaint_strength` is the same for the newly
    painted part of a partly painted box with the "blur" pre-fill ("noise" always samples from 1).
    """

    width: Annotated[int, Field(description="box width in pixels, a multiple of 8 from 64 to 2048"),
                     Param("Box width", infotext="Size", part=0, minimum=64, maximum=MAX_BOX_SIDE, step=GRID)
                     ] = DEFAULT_BOX_SIDE
    height: Annotated[int, Field(description="box height in pixels, a multiple of 8 from 64 to 2048"),
                      Param("Box height", infotext="Size", part=1, minimum=64, maximum=MAX_BOX_SIDE, step=GRID)
                      ] = DEFAULT_BOX_SIDE
    overlap: Annotated[int, Field(ge=0, le=256, description="how far into the existing picture the new part "
                                                            "blends, px"),
                       Param("Overlap band, px", step=8)] = 32
    prefill: Annotated[Prefill, Field(description="blur: stretch and blur the surrounding colours into the empty "
                                                  "part; noise: start the empty part from latent noise"),
                       Param("The empty part starts from", ui="radio")] = "blur"
    denoising_strength: Annotated[float, Field(ge=0.0, le=1.0, description="img2img strength of a fully painted box"),
                                  Param("Denoising strength (covered box)", step=0.01)] = 0.75
    outpaint_strength: Annotated[float, Field(gt=0.0, le=1.0, description="strength over the empty part ('blur' "
                                                                          "only)"),
                                 Param("Outpaint strength", minimum=0.05, step=0.01)] = 0.9
    mask_blur: Annotated[int, Field(ge=0, le=64, description="blur of the sampling mask (the paste uses the "
                                                             "feather)"),
                         Param("Mask blur", ui=None)] = 4


class OutpaintRequest(OutpaintParams):
    """One canvas box to fill: the parameters plus the box's RGBA pixels (transparent = empty)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, arbitrary_types_allowed=True)

    box: Image.Image = Field(exclude=True, description="the box's pixels, RGBA, exactly width×height")

    @field_validator("box")
    @classmethod
    def _rgba(cls, v: Image.Image) -> Image.Image:
        return v if v.mode == "RGBA" else v.convert("RGBA")

    @model_validator(mode="after")
    def _box_size(self) -> "OutpaintRequest":
        if self.box.size != (self.width, self.height):
            raise ValueError(f"box: the image is {self.box.width}x{self.box.height} but the box is "
                             f"{self.width}x{self.height}")
        return self


# -- geometry ------------------------------------------------------------------------------------
def empty_area(box: Image.Image) -> np.ndarray:
    """Boolean [H, W]: where nothing is painted (alpha below `COVERED_ALPHA`)."""
    return np.asarray(box.convert("RGBA"))[..., 3] < COVERED_ALPHA


def box_kind(empty: np.ndarray) -> BoxKind:
    if empty.all():
        return "txt2img"
    if not empty.any():
        return "img2img"
    return "outpaint"


def distance_to_empty(empty: np.ndarray) -> np.ndarray:
    """Euclidean distance (px) of every pixel to the nearest empty pixel; 0 on the empty part."""
    return ndimage.distance_transform_edt(~empty)


def sampling_mask(empty: np.ndarray, band: int) -> Image.Image:
    """What the sampler regenerates: the empty part grown by `band` px (white = regenerate)."""
    grown = distance_to_empty(empty) <= band
    return Image.fromarray(grown.astype(np.uint8) * 255, "L")


def feather_mask(empty: np.ndarray, band: int) -> Image.Image:
    """The paste weight: 255 on the empty part, a smoothstep down to 0 at `band` px from it, 0 beyond.

    Smoothstep rather than a straight ramp: its slope is 0 at both ends, so neither edge of the band
    shows as a line."""
    if band <= 0:
        return Image.fromarray(empty.astype(np.uint8) * 255, "L")
    x = np.clip(1.0 - distance_to_empty(empty) / band, 0.0, 1.0)
    weight = x * x * (3.0 - 2.0 * x)
    return Image.fromarray(np.round(weight * 255).astype(np.uint8), "L")


def prefill(rgb: Image.Image, empty: np.ndarray, mode: Prefill) -> Image.Image:
    """The box with its empty part pre-filled, the rest untouched.

    "blur" (the default) is A1111's *fill*: the surrounding colours stretched outward and blurred
    (`masks.fill_masked`), then sampled at `outpaint_strength` < 1. "noise" starts the empty part
    from latent noise at strength 1 (masked content "latent noise"); the pixels put here are only
    the painted part's mean colour, which the engine then replaces by noise.

    Why blur, measured on 64-px boxes half painted (8-px band, 12 steps), as the jump across the
    old/new boundary column and the mean-colour difference of the 8 columns either side of it:
    on a half-trained demo checkpoint (8 seeds) blur at 0.75 / 0.9 gave jumps of 2.3 / 2.25 against
    2.5 for noise and colour differences of 9.3 / 10.5 against 16.3 — from noise the sampler invents
    its own palette and the band must bridge two unrelated ones, a visible tone step. On the
    finished demo checkpoint (20 seeds, paired) the two are level: colour difference blur − noise
    −1.0 ± 0.65 (0.75) and −0.6 ± 0.6 (0.9), boundary jump +0.2 ± 0.24, i.e. within seed noise,
    because that model continues flat backgrounds well either way. Blur is never worse on colour
    and helps most where the model is weakest, so it is the default; on the random test models both
    are noise. "noise" stays for what should not continue (a cut-off object) and for the zoom's
    border, where the extension samples from noise too and a stretched edge would smear a quarter
    of the frame."""
    if not empty.any():
        return rgb
    mask = Image.fromarray(empty.astype(np.uint8) * 255, "L")
    if mode == "blur":
        return M.fill_masked(rgb, mask)
    arr = np.asarray(rgb).copy()
    arr[empty] = arr[~empty].mean(axis=0).round().astype(np.uint8) if (~empty).any() else 127
    return Image.fromarray(arr)


def paste_feathered(generated: Image.Image, original: Image.Image, feather: Image.Image) -> Image.Image:
    """generated × feather + original × (1 − feather); where the feather is 0 the original, exactly."""
    if generated.size != original.size:
        generated = generated.resize(original.size, M.LANCZOS)
    return Image.composite(generated.convert("RGB"), original.convert("RGB"), feather)


# -- one box → one engine request --------------------------------------------------------------------
@dataclass
class BoxPlan:
    """The engine request a box needs and how each of its images becomes a candidate for the box."""

    kind: BoxKind
    request: Txt2ImgRequest | Img2ImgRequest
    original: Image.Image | None = None  # RGB box (outpaint only)
    feather: Image.Image | None = None  # L, the paste weight (outpaint only)

    def finish(self, image: Image.Image) -> Image.Image:
        if self.kind != "outpaint":
            return image
        return paste_feathered(image, self.original, self.feather)


def plan_box(req: OutpaintRequest) -> BoxPlan:
    """txt2img for an empty box, img2img for a painted one, a masked img2img for one in between."""
    params = req.model_dump(include=set(GenerationParams.model_fields) - {"alwayson_scripts", "script_args"})
    params.update(alwayson_scripts=req.alwayson_scripts, script_args=req.script_args)  # validated: kept as they are
    empty = empty_area(req.box)
    kind = box_kind(empty)
    if kind == "txt2img":
        return BoxPlan(kind, Txt2ImgRequest(**params))
    rgb = req.box.convert("RGB")  # the painted colours as they are (to_rgb would matte them on white)
    if kind == "img2img":
        return BoxPlan(kind, Img2ImgRequest(**params, init_image=rgb, denoising_strength=req.denoising_strength))
    noise = req.prefill == "noise"
    request = Img2ImgRequest(
        **params, init_image=prefill(rgb, empty, req.prefill), mask=sampling_mask(empty, req.overlap),
        mask_blur=req.mask_blur, inpainting_fill=2 if noise else 1,
        denoising_strength=1.0 if noise else req.outpaint_strength,
    )
    return BoxPlan(kind, request, rgb, feather_mask(empty, req.overlap))
