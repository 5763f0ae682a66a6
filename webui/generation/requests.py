"""The typed job requests: one per kind of job, used alike by the web UI, the HTTP API and the tests.

Defaults live here and only here. Field names follow A1111's API (`sampler_name`, `cfg_scale`,
`n_iter`, …) so the API layer can expose them unchanged. Validation errors name the field.
"""
from __future__ import annotations

from typing import Annotated, Any

from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from webui.images.infotext import parse_infotext

from .samplers import resolve_sampler

MAX_BATCH_SIZE = 8
MAX_BATCH_COUNT = 100
MAX_SEED = 2**32 - 1
MAX_IMAGE_PIXELS = 10000 * 10000

Dimension = Annotated[int | None, Field(default=None, description="pixels, a multiple of 8 from 64 to 4096; "
                                                                "empty = the checkpoint's trained size")]


class GenerationParams(BaseModel):
    """What every generation job shares (txt2img's whole request; img2img and inpaint extend it)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    prompt: str = ""
    negative_prompt: str = ""
    sampler_name: str = "DPM++ 2M"
    scheduler: str = Field("Automatic", description="schedule type: Automatic, Uniform, Karras, Exponential")
    steps: int = Field(20, ge=1, le=500)
    cfg_scale: float = Field(7.0, ge=0.0, le=30.0)
    seed: int = Field(-1, ge=-1, le=MAX_SEED, description="-1 picks a random seed")
    subseed: int = Field(-1, ge=-1, le=MAX_SEED, description="variation seed; -1 picks a random one")
    subseed_strength: float = Field(0.0, ge=0.0, le=1.0)
    width: Dimension = None
    height: Dimension = None
    batch_size: int = Field(1, ge=1, le=MAX_BATCH_SIZE)
    n_iter: int = Field(1, ge=1, le=MAX_BATCH_COUNT, description="batch count")
    clip_skip: int = Field(1, ge=1, le=12)
    checkpoint: str | None = Field(None, description="checkpoint title, name or hash; empty = the default")
    vae: str | None = Field(None, description='"Automatic" (default), "None" (the checkpoint\'s own) '
                                              'or a file in models/VAE')

    @field_validator("width", "height")
    @classmethod
    def _dimension(cls, v: int | None) -> int | None:
        if v is None:
            return v
        if not 64 <= v <= 4096:
            raise ValueError(f"must be between 64 and 4096 (got {v})")
        if v % 8:
            raise ValueError(f"must be a multiple of 8 (got {v})")
        return v

    @field_validator("prompt", "negative_prompt")
    @classmethod
    def _text(cls, v: str) -> str:
        if len(v) > 20000:
            raise ValueError("is longer than 20000 characters")
        return v

    @model_validator(mode="after")
    def _sampler(self) -> "GenerationParams":
        sampler, schedule = resolve_sampler(self.sampler_name, self.scheduler)  # ValueError names the field
        if (sampler.name, schedule) != (self.sampler_name, self.scheduler):
            object.__setattr__(self, "sampler_name", sampler.name)
            object.__setattr__(self, "scheduler", schedule)
        return self

    @property
    def total_images(self) -> int:
        return self.batch_size * self.n_iter


class Txt2ImgRequest(GenerationParams):
    """txt2img: an image from a prompt alone."""


def describe_validation_error(err: ValidationError) -> str:
    """A one-line message per problem, each starting with the field name."""
    lines = []
    for e in err.errors():
        field = ".".join(str(p) for p in e["loc"]) or "request"
        msg = e["msg"].removeprefix("Value error, ")
        if ":" in msg and not e["loc"]:  # model-level validators already name the field
            lines.append(msg)
        else:
            lines.append(f"{field}: {msg}")
    return "; ".join(lines)


class Img2ImgRequest(GenerationParams):
    """img2img, sketch and inpainting: txt2img's parameters plus an init image and, for inpainting, a mask.

    Defaults are A1111's UI defaults (denoising 0.75, mask blur 4, masked content "original", inpaint
    area "Whole picture", padding 32). `width`/`height` empty = the init image's size (rounded to 8).
    """

    model_config = ConfigDict(extra="forbid", validate_assignment=True, arbitrary_types_allowed=True)

    init_image: Image.Image = Field(exclude=True, description="the picture to start from")
    mask: Image.Image | None = Field(None, exclude=True, description="white = regenerate (inpainting)")
    denoising_strength: float = Field(0.75, ge=0.0, le=1.0)
    resize_mode: int = Field(0, ge=0, le=3, description="0 Just resize, 1 Crop and resize, 2 Resize and fill, "
                                                         "3 Just resize (latent upscale)")
    scale_by: float | None = Field(None, gt=0.0, le=8.0, description="resize by this factor instead of width/height")
    mask_blur: int = Field(4, ge=0, le=64)
    inpainting_mask_invert: int = Field(0, ge=0, le=1, description="0 Inpaint masked, 1 Inpaint not masked")
    inpainting_fill: int = Field(1, ge=0, le=3, description="0 fill, 1 original, 2 latent noise, 3 latent nothing")
    inpaint_full_res: bool = Field(False, description="Inpaint area: False Whole picture, True Only masked")
    inpaint_full_res_padding: int = Field(32, ge=0, le=256)

    @field_validator("init_image", "mask")
    @classmethod
    def _image_size(cls, v: Image.Image | None) -> Image.Image | None:
        if v is not None and (v.width * v.height > MAX_IMAGE_PIXELS or min(v.size) < 1):
            raise ValueError(f"image is {v.width}x{v.height}; Easel takes up to {MAX_IMAGE_PIXELS // 1_000_000} megapixels")
        return v


# infotext key -> (request field, converter); A1111's "paste fields"
_TO_FIELDS: dict[str, tuple[str, type]] = {
    "Prompt": ("prompt", str),
    "Negative prompt": ("negative_prompt", str),
    "Steps": ("steps", int),
    "Sampler": ("sampler_name", str),
    "Schedule type": ("scheduler", str),
    "CFG scale": ("cfg_scale", float),
    "Seed": ("seed", int),
    "Size-1": ("width", int),
    "Size-2": ("height", int),
    "Variation seed": ("subseed", int),
    "Variation seed strength": ("subseed_strength", float),
    "Clip skip": ("clip_skip", int),
    "Denoising strength": ("denoising_strength", float),
    "Mask blur": ("mask_blur", int),
    "Masked area padding": ("inpaint_full_res_padding", int),
}
_CHOICES = {
    "Mask mode": ("inpainting_mask_invert", ("Inpaint masked", "Inpaint not masked")),
    "Masked content": ("inpainting_fill", ("fill", "original", "latent noise", "latent nothing")),
    "Inpaint area": ("inpaint_full_res", ("Whole picture", "Only masked")),
}


def fields_from_infotext(text: str) -> dict[str, Any]:
    """Parsed infotext → request field values (what "send to" and the ↙ paste button fill in).
    Values that do not convert are skipped rather than failing the whole paste."""
    out: dict[str, Any] = {}
    for key, value in parse_infotext(text).items():
        if key in _TO_FIELDS:
            name, kind = _TO_FIELDS[key]
            try:
                out[name] = kind(float(value)) if kind is int else kind(value)
            except (TypeError, ValueError):
                continue
        elif key in _CHOICES:
            name, options = _CHOICES[key]
            if value in options:
                index = options.index(value)
                out[name] = bool(index) if name == "inpaint_full_res" else index
    if "sampler_name" in out:  # "DPM++ 2M Karras" (pre-1.9 infotexts) = sampler + schedule type
        try:
            sampler, schedule = resolve_sampler(out["sampler_name"], out.get("scheduler", "Automatic"))
            out["sampler_name"], out["scheduler"] = sampler.name, schedule
        except ValueError:
            out.pop("sampler_name")
    return out
