"""The typed job requests: one per kind of job, used alike by the web UI, the HTTP API and the tests.

Each field is described once, here: pydantic gives its type, default and limits (and the API schema),
and a `Param` (webui/generation/fields.py) its label, infotext key and widget. Field names are
A1111's API names (`sampler_name`, `cfg_scale`, `n_iter`, …) so the API exposes them unchanged.
Validation errors name the field.

Per-feature settings travel in `alwayson_scripts` (A1111's shape: `{"feature name": {"args": [...]}}`
or the settings by name), and a whole-job script in `script_name` / `script_args`; the feature or
script that owns them validates them (webui/generation/extension_points.py).
"""
from __future__ import annotations

import re
from typing import Annotated, Any

from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, ValidationError, ValidationInfo, field_validator, model_validator

from webui.images.decode import MAX_INPUT_PIXELS
from webui.images.infotext import parse_infotext

from . import masks as M
from .fields import Param, check_range, values_from_infotext
from .samplers import resolve_sampler, sampler_names, schedule_type_names

MAX_BATCH_SIZE = 8
MAX_BATCH_COUNT = 100
MAX_SEED = 2**32 - 1
MAX_IMAGE_PIXELS = MAX_INPUT_PIXELS  # one cap for every picture Easel is given
MAX_PROMPT = 20000
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")  # all but tab and line ends


def check_prompt(text: str) -> str:
    """A prompt Easel can run and write into a PNG as it is: not too long, no control characters (a PNG
    text chunk must not hold NUL, and none of them means anything in a prompt)."""
    if len(text) > MAX_PROMPT:
        raise ValueError(f"is longer than {MAX_PROMPT} characters")
    if m := _CONTROL.search(text):
        raise ValueError(f"holds the control character U+{ord(m.group()):04X} at position {m.start()}")
    return text


def _variation(r: "GenerationParams") -> bool:
    return r.subseed_strength > 0


def _has_mask(r: "Img2ImgRequest") -> bool:
    return r.mask is not None


class GenerationParams(BaseModel):
    """What every generation job shares (txt2img's whole request; img2img and inpaint extend it)."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    prompt: Annotated[str, Field(), Param("Prompt", infotext="Prompt", ui="textarea")] = ""
    negative_prompt: Annotated[str, Field(), Param("Negative prompt", infotext="Negative prompt", ui="textarea",
                                                     elem="neg_prompt")] = ""
    steps: Annotated[int, Field(ge=1, le=500), Param("Sampling steps", infotext="Steps")] = 20
    sampler_name: Annotated[str, Field(), Param("Sampling method", infotext="Sampler", ui="dropdown",
                                                          options=sampler_names, elem="sampling")] = "DPM++ 2M"
    scheduler: Annotated[str, Field(description="schedule type: Automatic, Uniform, Karras, Exponential"),
                         Param("Schedule type", infotext="Schedule type", ui="dropdown",
                               options=schedule_type_names)] = "Automatic"
    cfg_scale: Annotated[float, Field(ge=0.0, le=30.0), Param("CFG Scale", infotext="CFG scale", step=0.5)] = 7.0
    seed: Annotated[int, Field(ge=-1, le=MAX_SEED, description="-1 picks a random seed"),
                    Param("Seed", infotext="Seed", ui="number")] = -1
    width: Annotated[int | None, Field(description="pixels, a multiple of 8 from 64 to 4096; empty = the "
                                                         "checkpoint's trained size"),
                     Param("Width", infotext="Size", part=0, minimum=64, maximum=4096, step=8)] = None
    height: Annotated[int | None, Field(description="pixels, a multiple of 8 from 64 to 4096; empty = the "
                                                          "checkpoint's trained size"),
                      Param("Height", infotext="Size", part=1, minimum=64, maximum=4096, step=8)] = None
    subseed: Annotated[int, Field(ge=-1, le=MAX_SEED, description="variation seed; -1 picks a random one"),
                       Param("Variation seed", infotext="Variation seed", written=_variation, ui="number")] = -1
    subseed_strength: Annotated[float, Field(ge=0.0, le=1.0),
                                Param("Variation strength", infotext="Variation seed strength",
                                      written=_variation, step=0.01)] = 0.0
    clip_skip: Annotated[int, Field(ge=1, le=12), Param("Clip skip", infotext="Clip skip",
                                                           written=lambda r: r.clip_skip > 1)] = 1
    batch_size: Annotated[int, Field(ge=1, le=MAX_BATCH_SIZE), Param("Batch size")] = 1
    n_iter: Annotated[int, Field(ge=1, le=MAX_BATCH_COUNT, description="batch count"),
                      Param("Batch count", elem="batch_count")] = 1
    checkpoint: Annotated[str | None, Field(description="checkpoint title, name or hash; empty = the caller's "
                                                              "option, else the default"),
                          Param("Stable Diffusion checkpoint", ui=None)] = None
    vae: Annotated[str | None, Field(description='"Automatic" (default), "None" (the checkpoint\'s own) or a '
                                                       "file in models/VAE"), Param("SD VAE", ui=None)] = None
    alwayson_scripts: dict[str, Any] = Field(default_factory=dict, description=(
        "per-feature settings, A1111's shape: {name: {\"args\": [...]}} (or {name: {field: value}}); "
        "GET /sdapi/v1/scripts lists the names"))
    script_name: str | None = Field(None, description="a script that runs the whole job (A1111's script_name)")
    script_args: list[Any] | dict[str, Any] = Field(default_factory=list, description="the script's settings")
    override_settings: dict[str, Any] = Field(default_factory=dict, description=(
        "options for this request only (sd_model_checkpoint, sd_vae, CLIP_stop_at_last_layers, extensions' "
        "options); never changes anyone's options"))

    @field_validator("width", "height")
    @classmethod
    def _dimension(cls, v: int | None, info: ValidationInfo) -> int | None:
        return check_range(cls, info.field_name, v)

    @field_validator("prompt", "negative_prompt")
    @classmethod
    def _text(cls, v: str) -> str:
        return check_prompt(v)

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

    def without_images(self) -> "GenerationParams":
        """The request with its input pictures (init image, mask, canvas box) dropped: what a finished
        job keeps, so a big upload is released when the job ends."""
        pictures: dict[str, Any] = {name: None for name in type(self).model_fields
                                    if isinstance(getattr(self, name), Image.Image)}
        settings = self.alwayson_scripts or {}
        if any(hasattr(s, "without_images") for s in settings.values()):  # features' own (ControlNet's images)
            pictures["alwayson_scripts"] = {k: s.without_images() if hasattr(s, "without_images") else s
                                            for k, s in settings.items()}
        return self.model_copy(update=pictures) if pictures else self


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

    init_image: Annotated[Image.Image, Field(exclude=True, description="the picture to start from"),
                          Param("Image for img2img", ui=None)]
    mask: Annotated[Image.Image | None, Field(exclude=True, description="white = regenerate (inpainting)"),
                    Param("Mask", ui=None)] = None
    denoising_strength: Annotated[float, Field(ge=0.0, le=1.0),
                                  Param("Denoising strength", infotext="Denoising strength", step=0.01)] = 0.75
    resize_mode: Annotated[int, Field(ge=0, le=3, description="0 Just resize, 1 Crop and resize, 2 Resize and "
                                                                 "fill, 3 Just resize (latent upscale)"),
                           Param("Resize mode", choices=M.RESIZE_MODES, ui="radio")] = 0
    scale_by: Annotated[float | None, Field(gt=0.0, le=8.0, description="resize by this factor instead of "
                                                                              "width/height"),
                        Param("Scale by", ui=None)] = None
    mask_blur: Annotated[int, Field(ge=0, le=64), Param("Mask blur", infotext="Mask blur", written=_has_mask)] = 4
    inpainting_mask_invert: Annotated[int, Field(ge=0, le=1, description="0 Inpaint masked, 1 Inpaint not masked"),
                                      Param("Mask mode", infotext="Mask mode", choices=M.MASK_MODES, ui="radio",
                                            written=_has_mask, elem="mask_mode")] = 0
    inpainting_fill: Annotated[int, Field(ge=0, le=3, description="0 fill, 1 original, 2 latent noise, "
                                                                     "3 latent nothing"),
                               Param("Masked content", infotext="Masked content", choices=M.MASKED_CONTENT,
                                     ui="radio", written=_has_mask)] = 1
    inpaint_full_res: Annotated[bool, Field(description="Inpaint area: False Whole picture, True Only masked"),
                                Param("Inpaint area", infotext="Inpaint area", choices=M.INPAINT_AREAS, ui="radio",
                                      written=_has_mask)] = False
    inpaint_full_res_padding: Annotated[int, Field(ge=0, le=256),
                                        Param("Only masked padding, pixels", infotext="Masked area padding",
                                              written=_has_mask, step=4)] = 32

    @field_validator("init_image", "mask")
    @classmethod
    def _image_size(cls, v: Image.Image | None) -> Image.Image | None:
        if v is not None and (v.width * v.height > MAX_IMAGE_PIXELS or min(v.size) < 1):
            raise ValueError(f"image is {v.width}x{v.height}; Easel takes up to {MAX_IMAGE_PIXELS // 1_000_000} megapixels")
        return v

    @model_validator(mode="after")
    def _mask_not_empty(self) -> "Img2ImgRequest":
        if self.mask is not None:
            M.check_mask(self.mask, self.init_image.size, bool(self.inpainting_mask_invert))
        return self


def fields_from_infotext(text: str, model: type[BaseModel] = Img2ImgRequest) -> dict[str, Any]:
    """Parsed infotext → the request fields it names (what "send to" and the ↙ paste button fill in).
    Values that do not convert are skipped rather than failing the whole paste."""
    out = values_from_infotext(parse_infotext(text), model)
    if "sampler_name" in out:  # "DPM++ 2M Karras" (pre-1.9 infotexts) = sampler + schedule type
        try:
            sampler, schedule = resolve_sampler(out["sampler_name"], out.get("scheduler", "Automatic"))
            out["sampler_name"], out["scheduler"] = sampler.name, schedule
        except ValueError:
            out.pop("sampler_name")
    return out
