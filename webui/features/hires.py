"""Hires. fix: generate small, then refine large, with A1111's fields, semantics and infotext.

A feature on the `further_pass` point: after the first pass, its latents are upscaled (in latent
space, or decoded, upscaled as pixels and encoded again) to the target size, and denoised once more
at `denoising_strength` with the hires sampler, steps, prompts and, if named, another checkpoint.
Prompt editing counts through both passes (`[a:b:25]` after 20 first-pass steps switches at hires
step 5; webui/prompts.py). The target is `hr_resize_x`×`hr_resize_y` when given (one of them: the
other keeps the aspect), else `hr_scale` × the first pass, rounded to multiples of 8.

The API takes A1111's top-level fields (`enable_hr`, `hr_scale`, `hr_upscaler`, …, and txt2img's
`denoising_strength`); the infotext has A1111's keys (`Hires upscale`, `Hires resize`, `Hires steps`,
`Hires upscaler`, `Denoising strength`, `Hires checkpoint`, `Hires sampler`, `Hires prompt`, …), read
back on paste.
"""
from __future__ import annotations

from typing import Annotated, Any, Callable

import torch
import torch.nn.functional as F
from pydantic import BaseModel, Field, field_validator

from webui.generation.engine import denoise_steps
from webui.generation.errors import FieldError, GenerationError
from webui.generation.extension_points import Batch, Feature, Run
from webui.generation.fields import Param
from webui.generation.latents import InitLatents
from webui.generation.requests import Txt2ImgRequest
from webui.generation.samplers import resolve_sampler, sampler_names, schedule_type_names
from webui.models.errors import ModelError
from webui.models.upscalers import BUILTIN, UpscalerLibrary

SAME_CHECKPOINT, SAME_SAMPLER, SAME_SCHEDULER = "Use same checkpoint", "Use same sampler", "Use same scheduler"
# A1111's latent upscale modes: name -> (torch interpolation, antialias)
LATENT_MODES: dict[str, tuple[str, bool]] = {
    "Latent": ("bilinear", False),
    "Latent (antialiased)": ("bilinear", True),
    "Latent (bicubic)": ("bicubic", False),
    "Latent (bicubic antialiased)": ("bicubic", True),
    "Latent (nearest)": ("nearest", False),
    "Latent (nearest-exact)": ("nearest-exact", False),
}


def upscaler_names() -> list[str]:
    """The choices known without looking at the model folders (the page asks the feature for all)."""
    return [*LATENT_MODES, *BUILTIN]


def _resizing(s: "HiresSettings") -> bool:
    return bool(s.hr_resize_x or s.hr_resize_y)


class HiresSettings(BaseModel):
    enable_hr: Annotated[bool, Field(), Param("Hires. fix")] = False
    hr_upscaler: Annotated[str, Field(description="a latent mode or an upscaler (GET /sdapi/v1/upscalers)"),
                           Param("Upscaler", infotext="Hires upscaler", ui="dropdown", options=upscaler_names)] = "Latent"
    hr_second_pass_steps: Annotated[int, Field(ge=0, le=500, description="0 = the first pass's steps"),
                                    Param("Hires steps", infotext="Hires steps",
                                          written=lambda s: s.hr_second_pass_steps > 0)] = 0
    denoising_strength: Annotated[float, Field(ge=0.0, le=1.0),
                                  Param("Denoising strength", infotext="Denoising strength", step=0.01)] = 0.7
    hr_scale: Annotated[float, Field(ge=1.0, le=8.0), Param("Upscale by", infotext="Hires upscale", step=0.05,
                                                             written=lambda s: not _resizing(s))] = 2.0
    hr_resize_x: Annotated[int, Field(ge=0, le=4096, description="0 = from hr_scale (or from the height)"),
                           Param("Resize width to", infotext="Hires resize", part=0, step=8, written=_resizing)] = 0
    hr_resize_y: Annotated[int, Field(ge=0, le=4096, description="0 = from hr_scale (or from the width)"),
                           Param("Resize height to", infotext="Hires resize", part=1, step=8, written=_resizing)] = 0
    hr_checkpoint_name: Annotated[str, Field(description=f'a checkpoint, or "{SAME_CHECKPOINT}"'),
                                  Param("Hires checkpoint", infotext="Hires checkpoint", ui="dropdown",
                                        written=lambda s: s.hr_checkpoint_name != SAME_CHECKPOINT)] = SAME_CHECKPOINT
    hr_sampler_name: Annotated[str, Field(), Param("Hires sampling method", infotext="Hires sampler", ui="dropdown",
                                                   options=lambda: [SAME_SAMPLER, *sampler_names()],
                                                   written=lambda s: s.hr_sampler_name != SAME_SAMPLER)] = SAME_SAMPLER
    hr_scheduler: Annotated[str, Field(), Param("Hires schedule type", infotext="Hires schedule type", ui="dropdown",
                                                options=lambda: [SAME_SCHEDULER, *schedule_type_names()],
                                                written=lambda s: s.hr_scheduler != SAME_SCHEDULER)] = SAME_SCHEDULER
    hr_prompt: Annotated[str, Field(description="empty = the prompt"),
                         Param("Hires prompt", infotext="Hires prompt", ui="textarea", written=lambda s: bool(s.hr_prompt))] = ""
    hr_negative_prompt: Annotated[str, Field(description="empty = the negative prompt"),
                                  Param("Hires negative prompt", infotext="Hires negative prompt", ui="textarea",
                                        written=lambda s: bool(s.hr_negative_prompt))] = ""

    @field_validator("hr_upscaler")
    @classmethod
    def _upscaler(cls, v: str) -> str:
        """A latent mode or built-in by its own spelling; a model upscaler is checked by the feature,
        which knows the folders (HiresFix.parse)."""
        if not v.strip():
            raise ValueError("choose a latent mode or an upscaler (GET /sdapi/v1/upscalers)")
        return next((n for n in upscaler_names() if n.lower() == v.strip().lower()), v.strip())

    @field_validator("hr_sampler_name")
    @classmethod
    def _sampler(cls, v: str) -> str:
        return v if v in (SAME_SAMPLER, "") else resolve_sampler(v, "Automatic")[0].name

    @field_validator("hr_scheduler")
    @classmethod
    def _scheduler(cls, v: str) -> str:
        return v if v in (SAME_SCHEDULER, "") else resolve_sampler("Euler", v)[1]

    @field_validator("hr_resize_x", "hr_resize_y")
    @classmethod
    def _multiple_of_8(cls, v: int) -> int:
        if v and (v < 64 or v % 8):
            raise ValueError(f"must be 0 or a multiple of 8 from 64 (got {v})")
        return v


def round8(v: float) -> int:
    return max(64, int(round(v / 8)) * 8)


def target_size(s: HiresSettings, width: int, height: int) -> tuple[int, int]:
    """A1111's rule: both resize sides given → those; one → it, and the other keeping the aspect; none → scale."""
    if s.hr_resize_x and s.hr_resize_y:
        return s.hr_resize_x, s.hr_resize_y
    if s.hr_resize_x:
        return s.hr_resize_x, round8(height * s.hr_resize_x / width)
    if s.hr_resize_y:
        return round8(width * s.hr_resize_y / height), s.hr_resize_y
    return round8(width * s.hr_scale), round8(height * s.hr_scale)


class HiresFix(Feature):
    name = "hires fix"
    title = "Hires. fix"
    settings = HiresSettings
    tabs = ("txt2img",)
    top_level = True

    def __init__(self, checkpoint_exists: Callable[[str], bool] | None = None,
                 checkpoint_titles: Callable[[], list[str]] | None = None, upscalers: UpscalerLibrary | None = None):
        self.checkpoint_exists = checkpoint_exists  # checks hr_checkpoint_name at admission
        self.checkpoint_titles = checkpoint_titles  # the page's dropdown of them
        self.upscalers = upscalers or UpscalerLibrary()  # without one: the built-ins only

    def choices(self, field: str, tab: str) -> list[str] | None:
        if field == "hr_checkpoint_name" and self.checkpoint_titles is not None:
            return [SAME_CHECKPOINT, *self.checkpoint_titles()]
        if field == "hr_upscaler":
            return [*LATENT_MODES, *self.upscalers.names()]
        return None

    def parse(self, value: Any) -> BaseModel | None:
        settings = super().parse(value)
        if settings.hr_upscaler not in LATENT_MODES:
            try:
                settings = settings.model_copy(update={"hr_upscaler": self.upscalers.resolve(settings.hr_upscaler)})
            except ModelError:
                raise FieldError("hr_upscaler", f"unknown upscaler {settings.hr_upscaler!r}; choose one of: "
                                                f"{', '.join([*LATENT_MODES, *self.upscalers.names()])}") from None
        name = settings.hr_checkpoint_name
        if name not in (SAME_CHECKPOINT, "") and self.checkpoint_exists is not None and not self.checkpoint_exists(name):
            raise FieldError("hr_checkpoint_name", f"no checkpoint {name!r} (GET /sdapi/v1/sd-models lists them)")
        return settings

    def from_infotext(self, parsed: dict[str, Any]) -> dict[str, Any] | None:
        """A1111 writes no "enabled" key: the hires keys mean it was on (Denoising strength alone does not)."""
        if not ({"Hires upscale", "Hires resize", "Hires upscaler", "Hires steps"} & parsed.keys()):
            return None
        return {**super().from_infotext(parsed), "enable_hr": True}

    def active(self, run: Run) -> bool:
        settings = run.settings_of(self)
        return settings is not None and settings.enable_hr and isinstance(run.request, Txt2ImgRequest)

    def steps(self, run: Run) -> int:
        return run.settings_of(self).hr_second_pass_steps or run.request.steps

    def pass_steps(self, run: Run) -> int:
        strength = run.settings_of(self).denoising_strength
        return denoise_steps(self.steps(run), strength) if strength else 0

    def prepare(self, run: Run) -> None:
        width, height = target_size(run.settings_of(self), run.request.width, run.request.height)
        run.state[self.name] = {"size": (width, height)}

    def further_pass(self, run: Run, batch: Batch, latents: torch.Tensor) -> torch.Tensor | None:
        s, req = run.settings_of(self), run.request
        width, height = run.state[self.name]["size"]
        first = batch.model or run.model
        run.progress.set_stage("hires fix: upscaling")
        latents = self.upscale(run, first, latents, s.hr_upscaler, width, height)
        if latents is None:  # interrupted while a model upscaler ran
            return None
        model = first
        if s.hr_checkpoint_name not in (SAME_CHECKPOINT, ""):
            if run.models is None:
                raise GenerationError("hr_checkpoint_name: another checkpoint needs the model manager (run the "
                                      "request as a job)")
            model = run.models(s.hr_checkpoint_name, req.vae)
        if s.denoising_strength == 0:  # nothing to denoise: the upscaled first pass
            batch.model = model
            return latents
        steps = self.steps(run)
        prompts = [s.hr_prompt or p for p in batch.prompts]
        negatives = [s.hr_negative_prompt or n for n in batch.negative_prompts]
        cond, uncond = run.conditioning(prompts, negatives, steps, steps, model)
        run.progress.set_stage("hires fix")
        out = run.sample(batch, InitLatents(latents, s.denoising_strength), steps=steps, width=width, height=height,
                         sampler_name=None if s.hr_sampler_name in (SAME_SAMPLER, "") else s.hr_sampler_name,
                         scheduler=None if s.hr_scheduler in (SAME_SCHEDULER, "") else s.hr_scheduler,
                         pass_name="hires", cond=cond, uncond=uncond, model=model)
        batch.model = model
        return out

    def upscale(self, run: Run, model, latents: torch.Tensor, upscaler: str, width: int,
                height: int) -> torch.Tensor | None:
        """Latent modes resize the latents; an upscaler decodes, upscales each picture (a model one tile by
        tile, stopping between tiles when the job is interrupted) and encodes again, as A1111 does."""
        factor = model.vae_scale_factor
        if upscaler in LATENT_MODES:
            mode, antialias = LATENT_MODES[upscaler]
            return F.interpolate(latents, size=(height // factor, width // factor), mode=mode, antialias=antialias,
                                 **({"align_corners": False} if mode in ("bilinear", "bicubic") else {}))
        images = run.decode(latents, model)
        upscaled = []
        for n, image in enumerate(images):
            def on_tile(done: int, total: int, n: int = n) -> bool:
                run.progress.set_stage(f"hires fix: {upscaler}, image {n + 1}, tile {done} of {total}")
                return not run.progress.should_stop()
            made = self.upscalers.upscale(upscaler, image, (width, height), on_tile)
            if made is None:
                return None
            upscaled.append(made)
        return run.encode(upscaled, model)
