"""Extras (A1111's postprocessing tab): upscale pictures with one or two upscalers, keep their infotext.

*Scale by* multiplies the size (optionally capped so the longer side is at most *max side*); *Scale to*
reaches W×H: the picture is scaled to cover it, then (with *crop*) cut to exactly W×H around the
centre, as A1111 does. Upscaler 2 runs on the original too and is blended over upscaler 1's result
with its visibility. Each result is saved under `outputs/extras-images/DATE/` with the source's
infotext plus A1111's `Postprocess upscale by` / `Postprocess upscale to` / `Postprocess crop to`,
`Postprocess upscaler` and `Postprocess upscaler 2` keys.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, model_validator

from webui.generation.fields import Param
from webui.generation.progress import ProgressSink
from webui.images.decode import MAX_INPUT_PIXELS, open_image
from webui.images.infotext import quote
from webui.images.store import ImageStore, read_infotext
from webui.models.upscalers import BUILTIN, UpscalerLibrary

OUTPUT_KIND = "extras-images"
PICTURE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")


class ExtrasRequest(BaseModel):
    """A1111's extras fields (what `webuiapi` sends); the pictures are decoded by the caller."""

    model_config = ConfigDict(extra="forbid", arbitrary_types_allowed=True)

    resize_mode: Annotated[Literal[0, 1], Field(description="0: scale by upscaling_resize, 1: scale to W×H"),
                           Param("Resize", choices=("Scale by", "Scale to"))] = 0
    upscaling_resize: Annotated[float, Field(ge=1.0, le=8.0), Param("Resize", step=0.05)] = 2.0
    upscaling_max_side: Annotated[int, Field(ge=0, le=16384, description="Scale by: cap the longer side (0: no "
                                                                         "cap)"), Param("Max side (0: none)")] = 0
    upscaling_resize_w: Annotated[int, Field(ge=8, le=16384), Param("Width", step=8, maximum=8192)] = 512
    upscaling_resize_h: Annotated[int, Field(ge=8, le=16384), Param("Height", step=8, maximum=8192)] = 512
    upscaling_crop: Annotated[bool, Field(description="Scale to: crop to fit"), Param("Crop to fit")] = True
    upscaler_1: Annotated[str, Field(description="GET /sdapi/v1/upscalers"),
                          Param("Upscaler 1", ui="dropdown", options=lambda: list(BUILTIN))] = "None"
    upscaler_2: Annotated[str, Field(description="GET /sdapi/v1/upscalers"),
                          Param("Upscaler 2", ui="dropdown", options=lambda: list(BUILTIN))] = "None"
    extras_upscaler_2_visibility: Annotated[float, Field(ge=0.0, le=1.0),
                                            Param("Upscaler 2 visibility", step=0.05)] = 0.0
    upscale_first: bool = Field(False, description="A1111's order switch for face restorers (none in Easel)")
    gfpgan_visibility: float = Field(0.0, ge=0.0, le=1.0, description="face restoration: not in Easel (must be 0)")
    codeformer_visibility: float = Field(0.0, ge=0.0, le=1.0, description="face restoration: not in Easel (0)")
    codeformer_weight: float = Field(0.0, ge=0.0, le=1.0, description="face restoration: not in Easel")
    show_extras_results: bool = True
    save: bool = Field(True, description="write the results under outputs/extras-images/DATE/")
    images: list[Any] = Field(default_factory=list, exclude=True, description="PIL pictures, or paths to open")
    names: list[str] = Field(default_factory=list, exclude=True)
    folder: str | None = Field(None, description="the page's batch from a folder on the server (admins; inside "
                                                 "the data folder or an --extras-folder)")

    @model_validator(mode="after")
    def _checks(self) -> "ExtrasRequest":
        if self.gfpgan_visibility > 0 or self.codeformer_visibility > 0:
            raise ValueError("gfpgan_visibility: face restoration (GFPGAN, CodeFormer) is not part of Easel; "
                             "send 0")
        return self

    def target_size(self, width: int, height: int) -> tuple[tuple[int, int], tuple[int, int] | None]:
        """(the size the upscalers make, the crop box size or None)."""
        if self.resize_mode == 0:
            scale = self.upscaling_resize
            if self.upscaling_max_side and max(width, height) * scale > self.upscaling_max_side:
                scale = self.upscaling_max_side / max(width, height)
            return (max(1, round(width * scale)), max(1, round(height * scale))), None
        w, h = self.upscaling_resize_w, self.upscaling_resize_h
        scale = max(w / width, h / height)
        cover = (max(w, round(width * scale)), max(h, round(height * scale)))
        return cover, ((w, h) if self.upscaling_crop else None)

    def infotext_fields(self, upscalers: tuple[str, str]) -> dict[str, Any]:
        fields: dict[str, Any] = {}
        if self.resize_mode == 0:
            fields["Postprocess upscale by"] = self.upscaling_resize
        else:
            fields["Postprocess upscale to"] = f"{self.upscaling_resize_w}x{self.upscaling_resize_h}"
            if self.upscaling_crop:
                fields["Postprocess crop to"] = f"{self.upscaling_resize_w}x{self.upscaling_resize_h}"
        fields["Postprocess upscaler"] = upscalers[0]
        if upscalers[1] != "None" and self.extras_upscaler_2_visibility > 0:
            fields["Postprocess upscaler 2"] = upscalers[1]
        return fields


@dataclass
class ExtrasResult:
    images: list[Image.Image] = field(default_factory=list)
    infotexts: list[str] = field(default_factory=list)
    paths: list[Path] = field(default_factory=list)
    interrupted: bool = False
    seconds: float = 0.0

    @property
    def info(self) -> str:
        return self.infotexts[-1] if self.infotexts else ""


def postprocess_one(req: ExtrasRequest, image: Image.Image, upscalers: UpscalerLibrary,
                    on_tile=None) -> tuple[Image.Image, str] | None:
    """One picture upscaled as the request says, and its infotext; None when interrupted."""
    source = image.convert("RGB")
    first, second = upscalers.resolve(req.upscaler_1), upscalers.resolve(req.upscaler_2)
    size, crop = req.target_size(*source.size)
    if size[0] * size[1] > MAX_INPUT_PIXELS:
        raise ValueError(f"upscaling_resize: the result would be {size[0]}x{size[1]}, over "
                         f"{MAX_INPUT_PIXELS // 1_000_000} megapixels")
    out = upscalers.upscale(first, source, size, on_tile)
    if out is None:
        return None
    if second != "None" and req.extras_upscaler_2_visibility > 0:
        other = upscalers.upscale(second, source, size, on_tile)
        if other is None:
            return None
        out = Image.blend(out, other, req.extras_upscaler_2_visibility)
    if crop is not None and out.size != crop:
        left, top = (out.width - crop[0]) // 2, (out.height - crop[1]) // 2
        out = out.crop((left, top, left + crop[0], top + crop[1]))
    fields = ", ".join(f"{k}: {quote(v)}" for k, v in req.infotext_fields((first, second)).items())
    original = read_infotext(image) or ""
    return out, f"{original}, {fields}" if original.strip() else fields


def run_extras(req: ExtrasRequest, upscalers: UpscalerLibrary, store: ImageStore | None, owner: str | None,
               progress: ProgressSink) -> ExtrasResult:
    """Every picture of the request (PIL images, or paths opened one at a time), saved as it is done."""
    started = time.perf_counter()
    result = ExtrasResult()
    count = len(req.images)
    for n, source in enumerate(req.images):
        if progress.should_stop():
            result.interrupted = True
            break
        image = source if isinstance(source, Image.Image) else open_image(source, "images")

        def on_tile(done: int, total: int, n: int = n) -> bool:
            progress.set_stage(f"image {n + 1} of {count}: tile {done} of {total}")
            progress.on_step(n * 1000 + done * 1000 // total, count * 1000)
            return not progress.should_stop()
        made = postprocess_one(req, image, upscalers, on_tile)
        if made is None:
            result.interrupted = True
            break
        picture, info = made
        progress.on_step((n + 1) * 1000, count * 1000)
        if req.save and store is not None:
            result.paths.append(store.save(picture, info, OUTPUT_KIND, owner=owner))
        if req.show_extras_results:
            result.images.append(picture)
        result.infotexts.append(info)
    result.seconds = time.perf_counter() - started
    return result


def pictures_in(folder: Path) -> list[Path]:
    """The pictures directly inside a folder, by name."""
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in PICTURE_SUFFIXES)
