"""SD upscale (A1111's built-in img2img script): upscale the picture with an upscaler, then redraw it with
img2img tile by tile (tiles of the request's width × height, overlapping), and blend the tiles back
with feathered seams. Every tile goes through the normal pipeline (hires, ControlNet and extension
features apply), with the request's seed.

`script_args` as A1111 sends them: `["", overlap, upscaler (index into GET /sdapi/v1/upscalers, or its
name), scale_factor]`, or the settings by name.
"""
from __future__ import annotations

import random
from typing import Annotated, Any, ClassVar

import numpy as np
import torch
from PIL import Image
from pydantic import BaseModel, Field

from webui.generation.errors import FieldError
from webui.generation.extension_points import Script, ScriptContext
from webui.generation.fields import Param
from webui.generation.masks import to_rgb
from webui.generation.progress import PartProgress
from webui.generation.requests import MAX_SEED, GenerationParams, Img2ImgRequest
from webui.generation.result import GenerationResult
from webui.images.decode import MAX_INPUT_PIXELS
from webui.images.infotext import create_infotext, parse_infotext, quote
from webui.images.tiles import Blender, Box, tile_boxes
from webui.models.errors import ModelError
from webui.models.upscalers import BUILTIN, UpscalerLibrary

TITLE = "SD upscale"


class SdUpscaleSettings(BaseModel):
    info: str = Field("", description="A1111's first argument (a label); ignored")
    overlap: Annotated[int, Field(ge=0, le=256, description="pixels the tiles overlap"),
                       Param("Tile overlap", step=8)] = 64
    upscaler: Annotated[int | str, Field(description="index into GET /sdapi/v1/upscalers, or its name"),
                        Param("Upscaler", ui="dropdown", options=lambda: list(BUILTIN))] = "Lanczos"
    scale_factor: Annotated[float, Field(ge=1.0, le=8.0), Param("Scale factor", step=0.05)] = 2.0


class SdUpscale(Script):
    name: ClassVar[str] = "sd upscale"
    title: ClassVar[str] = TITLE
    settings: ClassVar[type[BaseModel]] = SdUpscaleSettings
    tabs: ClassVar[tuple[str, ...]] = ("img2img",)

    def __init__(self, upscalers: UpscalerLibrary | None = None):
        self.upscalers = upscalers or UpscalerLibrary()

    def choices(self, field: str, tab: str) -> list[str] | None:
        return self.upscalers.names() if field == "upscaler" else None

    def upscaler_name(self, s: SdUpscaleSettings) -> str:
        names = self.upscalers.names()
        if isinstance(s.upscaler, int):
            if not 0 <= s.upscaler < len(names):
                raise FieldError("script_args.upscaler", f"index {s.upscaler} is not one of the {len(names)} "
                                                         "upscalers (GET /sdapi/v1/upscalers)")
            return names[s.upscaler]
        try:
            return self.upscalers.resolve(s.upscaler)
        except ModelError as e:
            raise FieldError("script_args.upscaler", str(e)) from None

    def plan(self, request: GenerationParams, s: SdUpscaleSettings) -> tuple[tuple[int, int], list[Box]]:
        if not isinstance(request, Img2ImgRequest) or request.init_image is None:
            raise FieldError("script_name", f"{TITLE} is an img2img script: it needs an init image")
        if request.mask is not None:
            raise FieldError("mask", f"{TITLE} redraws the whole picture; send no mask")
        width, height = request.width or 512, request.height or 512
        if s.overlap >= min(width, height):
            raise FieldError("script_args.overlap", f"must be smaller than the tile ({width}x{height})")
        w, h = request.init_image.size
        size = (max(8, round(w * s.scale_factor)), max(8, round(h * s.scale_factor)))
        if size[0] * size[1] > MAX_INPUT_PIXELS:
            raise FieldError("script_args.scale_factor", f"the result would be {size[0]}x{size[1]}, over "
                                                         f"{MAX_INPUT_PIXELS // 1_000_000} megapixels")
        return size, tile_boxes(*size, tile_w=width, tile_h=height, overlap=s.overlap, even=False)

    def check(self, request: GenerationParams, settings: BaseModel | None) -> None:
        self.upscaler_name(settings)
        self.plan(request, settings)

    def images(self, request: GenerationParams, settings: BaseModel | None) -> int:
        return len(self.plan(request, settings)[1]) * request.batch_size

    def run(self, context: ScriptContext, request: GenerationParams, s: SdUpscaleSettings) -> GenerationResult:
        name = self.upscaler_name(s)
        size, boxes = self.plan(request, s)
        context.progress.set_stage(f"{TITLE}: upscaling with {name}")
        source = to_rgb(request.init_image)
        upscaled = self.upscalers.upscale(name, source, size,
                                          lambda done, total: not context.progress.should_stop())
        if upscaled is None:
            return GenerationResult([], [], [], [], request, interrupted=True)
        seed = random.randint(0, MAX_SEED) if request.seed < 0 else request.seed
        pixels = _tensor(upscaled)
        blender = Blender(3, *size, overlap=s.overlap)
        first: GenerationResult | None = None
        interrupted = False
        for n, box in enumerate(boxes):
            piece = upscaled.crop((box.x0, box.y0, box.x1, box.y1))
            done = None
            if not interrupted and not context.progress.should_stop():
                tile_request = request.model_copy(update={
                    "init_image": piece, "width": box.width // 8 * 8, "height": box.height // 8 * 8,
                    "batch_size": 1, "n_iter": 1, "seed": seed, "resize_mode": 0})
                out = context.generate(tile_request, PartProgress(context.progress, n, len(boxes), "tile"))
                if out.images and not out.interrupted:
                    done = out.images[0].convert("RGB")
                    first = first or out
                interrupted = interrupted or out.interrupted or not out.images
            if done is None:  # not redrawn (interrupted): the upscaled picture shows there
                blender.add(box, pixels[:, box.y0:box.y1, box.x0:box.x1])
            else:
                if done.size != (box.width, box.height):
                    done = done.resize((box.width, box.height), Image.Resampling.LANCZOS)
                blender.add(box, _tensor(done))
        picture = _image(blender.result())
        info = first.infotexts[0] if first is not None else ""
        extra = {"SD upscale overlap": s.overlap, "SD upscale upscaler": name, "Size": f"{size[0]}x{size[1]}"}
        info = _with_fields(info, extra)
        return GenerationResult([picture], [info], [seed], [first.subseeds[0] if first else seed], request,
                                interrupted=interrupted, prompts=[request.prompt],
                                negative_prompts=[request.negative_prompt])


def _tensor(image: Image.Image) -> torch.Tensor:
    return torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32)).permute(2, 0, 1)


def _image(tensor: torch.Tensor) -> Image.Image:
    return Image.fromarray(tensor.round().clamp(0, 255).byte().permute(1, 2, 0).numpy(), "RGB")


def _with_fields(infotext: str, fields: dict[str, Any]) -> str:
    """The infotext with these fields set on its parameters line (replacing any of the same key)."""
    if not infotext:
        return ", ".join(f"{k}: {quote(v)}" for k, v in fields.items())
    parsed = parse_infotext(infotext)
    prompt, negative = parsed.pop("Prompt", ""), parsed.pop("Negative prompt", "")
    parsed.pop("Size-1", None)
    parsed.pop("Size-2", None)
    return create_infotext(prompt, negative, {**parsed, **fields})
