"""ControlNet, built in, speaking sd-webui-controlnet's dialect: units in `alwayson_scripts.controlnet.args`
(as `webuiapi.ControlNetUnit.to_dict()` sends them), its module names, field names and infotext lines.

A feature on the extension points:
- `prepare`: each enabled unit's model is loaded for the job's checkpoint (webui/models/controlnet.py),
  its picture (or the img2img input when it has none) preprocessed (webui/features/preprocessors.py)
  and fitted to the generation size with the unit's resize mode;
- `unet_inputs`: at every step inside a unit's guidance window its ControlNet runs on the step's
  latents, and the residuals of all units are summed into the UNet's inputs, with the extension's
  control modes: *Balanced* (both halves of the guided batch), *My prompt is more important* (the
  residuals of shallower layers scaled down, 0.825^(n−1−i)), *ControlNet is more important* (the
  conditional half only);
- the hires pass uses a unit or not by its *hr option* (Both / Low res only / High res only), the control
  map resized to the pass's size; `postprocess` applies tile_colorfix's colour fix.
Infotext: `ControlNet 0: "Module: canny, Model: name [hash8], Weight: 1, …"`, read back on paste.
"""
from __future__ import annotations

import re
from typing import Any, ClassVar

import cv2
import numpy as np
import torch
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from webui.generation.errors import FieldError
from webui.generation.extension_points import Batch, Feature, Output, Run, Step, UnetCall
from webui.generation.masks import resize_image, to_rgb
from webui.generation.outpaint import OutpaintRequest
from webui.generation.requests import GenerationParams, Img2ImgRequest
from webui.images.decode import decode_image
from webui.models.annotators import Annotators
from webui.models.controlnet import ControlNetLibrary
from webui.models.errors import ModelError

from .preprocessors import find_preprocessor, preprocess

NAME = "controlnet"
RESIZE_MODES = ("Just Resize", "Crop and Resize", "Resize and Fill")
RESIZE_ALIASES = {"Scale to Fit (Inner Fit)": "Crop and Resize", "Inner Fit (Scale to Fit)": "Crop and Resize",
                  "Envelope (Outer Fit)": "Resize and Fill", "Outer Fit (Shrink to Fit)": "Resize and Fill"}
CONTROL_MODES = ("Balanced", "My prompt is more important", "ControlNet is more important")
HR_OPTIONS = ("Both", "Low res only", "High res only")
LEGACY_KEYS = {"input_image": "image", "guidance": "guidance_end", "lowvram": "low_vram", "guessmode": "guess_mode"}
SOFT_INJECTION = 0.825  # the extension's per-layer factor for "My prompt is more important"


def _choice(value: Any, choices: tuple[str, ...], aliases: dict[str, str] | None = None) -> str:
    if isinstance(value, bool):
        raise ValueError(f"must be one of {', '.join(choices)}")
    if isinstance(value, (int, float)) and int(value) == value and 0 <= int(value) < len(choices):
        return choices[int(value)]
    text = str(value).strip()
    text = (aliases or {}).get(text, text)
    match = next((c for c in choices if c.lower() == text.lower()), None)
    if match is None:
        raise ValueError(f"must be one of {', '.join(choices)} (or its index)")
    return match


class ControlNetUnit(BaseModel):
    """One unit, with sd-webui-controlnet's field names and defaults. Other keys its clients send
    (`low_vram`, `guessmode`, …) are accepted; they change nothing in Easel."""

    model_config = ConfigDict(extra="allow", arbitrary_types_allowed=True)

    enabled: bool = True
    module: str = "none"
    model: str = "None"
    weight: float = Field(1.0, ge=0.0, le=2.0)
    image: Any = Field(None, description="base64 picture, or {'image': base64, 'mask': base64}; empty in "
                                         "img2img: the img2img input")
    mask: Any = Field(None, description="base64 mask (white = the area inpaint_only repaints)")
    resize_mode: str = "Crop and Resize"
    processor_res: int = Field(-1, ge=-1, le=4096, description="-1: 512 (or pixel perfect's)")
    threshold_a: float = -1.0
    threshold_b: float = -1.0
    guidance_start: float = Field(0.0, ge=0.0, le=1.0)
    guidance_end: float = Field(1.0, ge=0.0, le=1.0)
    control_mode: str = "Balanced"
    pixel_perfect: bool = False
    hr_option: str = "Both"
    save_detected_map: bool = True

    @model_validator(mode="before")
    @classmethod
    def _legacy_keys(cls, data: Any) -> Any:
        """The extension's older key names (`input_image`, `guidance`, `lowvram`, `guessmode`), still sent by
        scripts written for it; an empty picture is none."""
        if not isinstance(data, dict):
            return data
        data = dict(data)
        for old, new in LEGACY_KEYS.items():
            if old in data:
                value = data.pop(old)
                data.setdefault(new, value)
        for key in ("image", "mask"):
            if data.get(key) == "":
                data[key] = None
        return data

    @field_validator("resize_mode", mode="before")
    @classmethod
    def _resize(cls, v: Any) -> str:
        return _choice(v, RESIZE_MODES, RESIZE_ALIASES)

    @field_validator("control_mode", mode="before")
    @classmethod
    def _mode(cls, v: Any) -> str:
        return _choice(v, CONTROL_MODES)

    @field_validator("hr_option", mode="before")
    @classmethod
    def _hr(cls, v: Any) -> str:
        return _choice(v, HR_OPTIONS)

    def describe(self, title: str) -> str:
        """The extension's infotext value for this unit."""
        p = find_preprocessor(self.module)
        a, b = p.thresholds(self.threshold_a, self.threshold_b) if p else (self.threshold_a, self.threshold_b)
        parts = {"Module": self.module, "Model": title, "Weight": f"{self.weight:g}", "Resize Mode": self.resize_mode,
                 "Processor Res": self.processor_res if self.processor_res > 0 else 512,
                 "Threshold A": f"{a:g}", "Threshold B": f"{b:g}", "Guidance Start": f"{self.guidance_start:g}",
                 "Guidance End": f"{self.guidance_end:g}", "Pixel Perfect": self.pixel_perfect,
                 "Control Mode": self.control_mode, "Hr Option": self.hr_option}
        return ", ".join(f"{k}: {v}" for k, v in parts.items())


class ControlNetArgs(BaseModel):
    model_config = ConfigDict(arbitrary_types_allowed=True)

    units: list[ControlNetUnit] = Field(default_factory=list)

    def without_images(self) -> "ControlNetArgs":
        """What a finished job keeps: the units without their pictures."""
        return ControlNetArgs(units=[u.model_copy(update={"image": None, "mask": None}) for u in self.units])


def _picture(value: Any, field: str) -> Image.Image | None:
    if value is None or value == "":
        return None
    if isinstance(value, Image.Image):
        return value
    if isinstance(value, dict):  # the extension's {"image": …, "mask": …}
        return _picture(value.get("image"), f"{field}.image")
    if isinstance(value, str):  # never a path: a client must not make Easel open files on the server
        return decode_image(value, field)
    raise FieldError(field, "must be a base64 picture")


class ControlNet(Feature):
    name: ClassVar[str] = NAME
    title: ClassVar[str] = "ControlNet"
    settings: ClassVar[type[BaseModel]] = ControlNetArgs
    # both tabs (GET /sdapi/v1/scripts lists it); its settings carry no widget descriptions, so the page gives
    # it its own accordion (webui/ui/controlnet.py) instead of the generic one
    tabs: ClassVar[tuple[str, ...]] = ("txt2img", "img2img")

    def __init__(self, library: ControlNetLibrary | None = None):
        self.library = library

    # -- settings ---------------------------------------------------------------------------------------
    def parse(self, value: Any) -> BaseModel | None:
        if isinstance(value, ControlNetArgs):
            return value
        units = value.get("args", value.get("units")) if isinstance(value, dict) else value
        base = f"alwayson_scripts.{NAME}.args"
        if not isinstance(units, list):
            raise FieldError(base, "must be a list of ControlNet units")
        parsed = []
        for i, unit in enumerate(units):
            path = f"{base}.{i}"
            if not isinstance(unit, (dict, ControlNetUnit)):
                raise FieldError(path, "must be an object (a ControlNet unit)")
            try:
                u = unit if isinstance(unit, ControlNetUnit) else ControlNetUnit.model_validate(unit)
            except ValidationError as e:
                err = e.errors()[0]
                where = ".".join(str(p) for p in err.get("loc", ()))
                raise FieldError(f"{path}.{where}" if where else path,
                                 err["msg"].removeprefix("Value error, ")) from None
            if u.enabled:
                u = self._checked(u, path, unit if isinstance(unit, dict) else {})
            parsed.append(u)
        return ControlNetArgs(units=parsed)

    def _checked(self, u: ControlNetUnit, path: str, raw: dict) -> ControlNetUnit:
        p = find_preprocessor(u.module)
        if p is None:
            raise FieldError(f"{path}.module", f"no module {u.module!r} (GET /controlnet/module_list)")
        problem = p.problem(self.library.annotators if self.library is not None else None)
        if problem:
            raise FieldError(f"{path}.module", f"{p.name} needs {problem}")
        if u.model in ("", "None", None):
            raise FieldError(f"{path}.model", "choose a ControlNet model (GET /controlnet/model_list)")
        if self.library is None:
            raise FieldError(f"{path}.model", "this Easel has no ControlNet folder")
        try:
            title = self.library.title(self.library.find(u.model))
        except ModelError as e:
            raise FieldError(f"{path}.model", str(e)) from None
        image = _picture(u.image, f"{path}.image")
        mask = _picture(u.mask if u.mask is not None else raw.get("mask_image"), f"{path}.mask")
        if mask is None and isinstance(u.image, dict):
            mask = _picture(u.image.get("mask"), f"{path}.image.mask")
        if u.guidance_end < u.guidance_start:
            raise FieldError(f"{path}.guidance_end", "must not be before guidance_start")
        return u.model_copy(update={"module": p.name, "model": title, "image": image, "mask": mask})

    def check(self, request: GenerationParams, settings: BaseModel) -> None:
        """In txt2img every enabled unit needs its own picture (img2img's units and the canvas's may use the
        input; an empty canvas box has none, which its job then reports)."""
        if isinstance(request, (Img2ImgRequest, OutpaintRequest)):
            return
        for i, u in enumerate(settings.units):
            if u.enabled and u.image is None:
                raise FieldError(f"alwayson_scripts.{NAME}.args.{i}.image", "a txt2img unit needs an image")

    def active(self, run: Run) -> bool:
        s = run.settings_of(self)
        return s is not None and any(u.enabled for u in s.units)

    def infotext(self, run: Run) -> dict[str, Any]:
        s = run.settings_of(self)
        return {f"ControlNet {i}": u.describe(u.model) for i, u in enumerate(s.units) if u.enabled}

    def from_infotext(self, parsed: dict[str, Any]) -> dict[str, Any] | None:
        units = []
        for key in sorted((k for k in parsed if re.fullmatch(r"ControlNet \d+", k)), key=lambda k: int(k.split()[1])):
            fields = dict(part.split(": ", 1) for part in re.split(r",\s*(?=[A-Z][\w ]*: )", str(parsed[key]))
                          if ": " in part)
            units.append({
                "enabled": True, "module": fields.get("Module", "none"), "model": fields.get("Model", "None"),
                "weight": float(fields.get("Weight", 1)), "resize_mode": fields.get("Resize Mode", "Crop and Resize"),
                "processor_res": int(float(fields.get("Processor Res", -1))),
                "threshold_a": float(fields.get("Threshold A", -1)),
                "threshold_b": float(fields.get("Threshold B", -1)),
                "guidance_start": float(fields.get("Guidance Start", 0)),
                "guidance_end": float(fields.get("Guidance End", 1)),
                "pixel_perfect": fields.get("Pixel Perfect", "False") == "True",
                "control_mode": fields.get("Control Mode", "Balanced"), "hr_option": fields.get("Hr Option", "Both"),
            })
        return {"args": units} if units else None

    # -- the points ---------------------------------------------------------------------------------------
    def prepare(self, run: Run) -> None:
        req, model = run.request, run.model
        prepared = []
        for index, u in enumerate(run.settings_of(self).units):
            if not u.enabled:
                continue
            source, mask = self._source(run, u)
            detected = detect(u, source, mask, (req.width, req.height), seed=req.seed,
                              annotators=self.library.annotators)
            fitted = fit_map(detected, u.resize_mode, req.width, req.height)
            net = self.library.load(u.model, model.unet, model.info.name, model.device, model.dtype)
            prepared.append(PreparedUnit(index, u, net, fitted, detected))
        run.state[NAME] = {"units": prepared, "maps": {}}

    @staticmethod
    def _source(run: Run, u: ControlNetUnit) -> tuple[np.ndarray, np.ndarray | None]:
        image, mask = u.image, u.mask
        if image is None:
            if not isinstance(run.request, Img2ImgRequest) or run.init is None:
                raise FieldError(f"alwayson_scripts.{NAME}.args.image", "a txt2img unit needs an image")
            prepared = run.init.prepared  # the img2img input as it is worked on (crop of "only masked" included)
            image, mask = prepared.work_image, mask if mask is not None else prepared.work_mask
        rgb = np.asarray(to_rgb(image), dtype=np.uint8)
        m = np.asarray(mask.convert("L").resize(to_rgb(image).size), dtype=np.uint8) if mask is not None else None
        return rgb, m

    def unet_inputs(self, step: Step, call: UnetCall) -> None:
        state = step.run.state.get(NAME)
        if not state:
            return
        latents = call.latents
        scale = step.run.model.vae_scale_factor  # the map is at the pass's picture size
        height, width = latents.shape[-2] * scale, latents.shape[-1] * scale
        down_total: list[torch.Tensor] | None = None
        mid_total: torch.Tensor | None = None
        for unit in state["units"]:
            u = unit.unit
            if u.hr_option == "Low res only" and step.pass_name != "first":
                continue
            if u.hr_option == "High res only" and step.pass_name == "first":
                continue
            if u.weight == 0 or not u.guidance_start <= step.fraction <= u.guidance_end:
                continue  # (weight 0: the residuals would all be zero)
            only_cond = call.guided and u.control_mode == CONTROL_MODES[2]
            sample, context = latents, call.context
            added = call.added
            if only_cond:  # the conditional half only; the unconditional half gets no control
                half = latents.shape[0] // 2
                sample, context = latents[half:], call.context[half:]
                added = {k: v[half:] for k, v in added.items()} if added else added
            dtype = unit.net.dtype
            sample = sample.to(dtype)
            cond = unit.map_at(width, height, sample.shape[0], sample, state["maps"])
            down, mid = unit.net(sample, call.timestep, encoder_hidden_states=context.to(dtype), controlnet_cond=cond,
                                 conditioning_scale=u.weight, added_cond_kwargs=added, return_dict=False)
            residuals = [*down, mid]
            if u.control_mode == CONTROL_MODES[1]:  # soft injection: deeper layers keep more
                n = len(residuals)
                residuals = [r * SOFT_INJECTION ** (n - 1 - i) for i, r in enumerate(residuals)]
            if only_cond:
                residuals = [torch.cat([torch.zeros_like(r), r]) for r in residuals]
            down_total = residuals[:-1] if down_total is None else [a + b for a, b in zip(down_total, residuals[:-1])]
            mid_total = residuals[-1] if mid_total is None else mid_total + residuals[-1]
        if down_total is not None:
            dtype = step.run.model.dtype  # the UNet's: added to its hidden states
            call.extra["down_block_additional_residuals"] = tuple(r.to(dtype) for r in down_total)
            call.extra["mid_block_additional_residual"] = mid_total.to(dtype)

    def postprocess(self, run: Run, batch: Batch, outputs: list[Output]) -> None:
        for unit in run.state.get(NAME, {}).get("units", []):
            if unit.unit.module == "tile_colorfix":
                sigma = unit.unit.threshold_a if unit.unit.threshold_a > 0 else 8.0
                for out in outputs:
                    out.image = colorfix(out.image, unit.detected, sigma)


class PreparedUnit:
    def __init__(self, index: int, unit: ControlNetUnit, net: Any, fitted: np.ndarray, detected: np.ndarray):
        self.index, self.unit, self.net, self.fitted, self.detected = index, unit, net, fitted, detected

    def map_at(self, width: int, height: int, batch: int, like: torch.Tensor, cache: dict) -> torch.Tensor:
        """[batch, 3, H, W] control map at a pass's size (the first pass's is the fitted map itself), on the
        device and in the dtype of `like`; made once per job and shape (a contiguous batch, as diffusers'
        pipeline passes it: the ControlNet's convolutions are slower on a broadcast or permuted view)."""
        key = (self.index, width, height, batch, like.device, like.dtype)
        if key not in cache:
            m = self.fitted
            if m.shape[:2] != (height, width):
                m = cv2.resize(m, (width, height), interpolation=cv2.INTER_LINEAR)
            planes = torch.from_numpy(np.ascontiguousarray(m.transpose(2, 0, 1)))[None]
            cache[key] = planes.to(like.device, like.dtype).repeat(batch, 1, 1, 1)
        return cache[key]


def pixel_perfect_resolution(image: np.ndarray, target: tuple[int, int], resize_mode: str) -> int:
    """The processor resolution that maps the picture's short side onto the generation size exactly, as
    the extension's pixel perfect: covering (Crop and Resize), fitting (Resize and Fill), else the short side."""
    h, w = image.shape[:2]
    kw, kh = target[0] / w, target[1] / h
    if resize_mode == "Crop and Resize":
        k = max(kw, kh)
    elif resize_mode == "Resize and Fill":
        k = min(kw, kh)
    else:
        return int(round(min(target)))
    return int(round(min(h, w) * k))


def detect(u: ControlNetUnit, image: np.ndarray, mask: np.ndarray | None, target: tuple[int, int],
           seed: int = 0, annotators: Annotators | None = None) -> np.ndarray:
    """The unit's control map (float H×W×3) of a picture."""
    p = find_preprocessor(u.module)
    resolution = pixel_perfect_resolution(image, target, u.resize_mode) if u.pixel_perfect else (
        u.processor_res if u.processor_res > 0 else 512)
    try:
        return preprocess(p, image, resolution, u.threshold_a, u.threshold_b, mask, seed, annotators)
    except (ValueError, ModelError) as e:
        raise FieldError("module", str(e).removeprefix("module: ")) from None


def fit_map(detected: np.ndarray, resize_mode: str, width: int, height: int) -> np.ndarray:
    """A control map fitted to width×height with A1111's resize modes (the masked -1s of inpaint_only kept)."""
    mode = RESIZE_MODES.index(resize_mode)
    lo = detected.min()
    shifted = ((detected - min(0.0, lo)) / (1.0 - min(0.0, lo)) * 255).clip(0, 255).astype(np.uint8)
    fitted = np.asarray(resize_image(mode, Image.fromarray(shifted), width, height), dtype=np.float32) / 255
    return fitted * (1.0 - min(0.0, lo)) + min(0.0, lo)


def preview(detected: np.ndarray) -> Image.Image:
    """A detected map as a picture (inpaint_only's masked pixels black)."""
    return Image.fromarray((detected.clip(0, 1) * 255).round().astype(np.uint8))


def colorfix(image: Image.Image, reference: np.ndarray, sigma: float) -> Image.Image:
    """The picture's detail with the reference's colours at low frequency (tile_colorfix)."""
    out = np.asarray(image.convert("RGB"), dtype=np.float32)
    ref = cv2.resize((reference.clip(0, 1) * 255).astype(np.float32), (out.shape[1], out.shape[0]))
    blur = lambda x: cv2.GaussianBlur(x, (0, 0), sigma)  # noqa: E731
    fixed = out - blur(out) + blur(ref)
    return Image.fromarray(fixed.clip(0, 255).round().astype(np.uint8))


__all__ = ["ControlNet", "ControlNetArgs", "ControlNetUnit", "detect", "fit_map", "preview"]
