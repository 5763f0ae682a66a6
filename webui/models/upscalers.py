"""Upscalers: A1111's built-ins (None, Lanczos, Nearest) and the ESRGAN family from A1111's folders.

A file in `models/ESRGAN/`, `models/RealESRGAN/`, `models/SwinIR/`, `models/DAT/`, `models/HAT/` or
`models/ScuNET/` (`.pth` or `.safetensors`: Real-ESRGAN, 4x-UltraSharp, SwinIR, DAT, HAT, SCUNet,
Real-ESRGAN compact, …) is an upscaler named after its file stem. spandrel (MIT) reads the
architecture and its scale from the weights; `.pth` files are read weights-only (a pickle that needs
more than tensors is refused, never run). Loaded models live in the model manager's typed cache
(kind "upscaler") under the same budgets and LRU as checkpoints; on CUDA they run in fp16 where the
architecture supports it.

A picture is upscaled tile by tile (webui/images/tiles.py): any size fits in memory, the tiles
overlap and blend without seams, progress is reported per tile, and an interrupt stops between
tiles. A target scale other than the model's is reached as A1111 does: the model runs (up to three
times) until the picture is at least the target size, then Lanczos resizes it to the exact size.

spandrel imports torchvision when it is imported. Where no torchvision matching the installed torch
exists (the CPU build of torch on a machine whose package index has only CUDA builds of
torchvision), spandrel cannot be imported: the model upscalers are then listed as unavailable with
that reason (in the page, the API and the log) and the built-ins keep working.
"""
from __future__ import annotations

import functools
import importlib
import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image

from webui.images.tiles import Blender, tile_boxes

from .cache import tensor_bytes
from .checkpoint_io import read_state_dict
from .errors import ModelError
from .files import files_in

log = logging.getLogger(__name__)

UPSCALER = "upscaler"  # the model cache's kind
FOLDERS = ("ESRGAN", "RealESRGAN", "SwinIR", "DAT", "HAT", "ScuNET")
SUFFIXES = (".pth", ".pt", ".safetensors")
BUILTIN: dict[str, Image.Resampling | None] = {"None": None, "Lanczos": Image.Resampling.LANCZOS,
                                               "Nearest": Image.Resampling.NEAREST}
MAX_PASSES = 3  # A1111: the model runs at most three times towards a larger target


class UpscalerNotFound(ModelError):
    field = "upscaler"


class UpscalerUnavailable(ModelError):
    field = "upscaler"


@functools.cache
def spandrel_problem() -> str | None:
    """Why spandrel cannot be imported here, or None when it can."""
    try:
        importlib.import_module("spandrel")
    except Exception as e:  # ImportError, or torchvision's own failure at import (a mismatched build)
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        return (f"model upscalers need spandrel, which could not be imported ({type(e).__name__}: {first}); "
                "spandrel needs a torchvision built for the installed torch")
    return None


@dataclass(frozen=True)
class UpscalerFile:
    name: str
    path: Path

    @property
    def folder(self) -> str:
        return self.path.parent.name


class UpscalerModel:
    """A loaded model (spandrel's descriptor) and how to run it on a picture, tile by tile."""

    def __init__(self, descriptor: Any, name: str):
        self.descriptor = descriptor
        self.name = name
        self.scale: int = int(descriptor.scale)
        self.architecture: str = descriptor.architecture.name

    @property
    def device(self) -> torch.device:
        return self.descriptor.device

    @property
    def dtype(self) -> torch.dtype:
        return self.descriptor.dtype

    def move(self, device: torch.device) -> None:
        self.descriptor.to(device)

    def nbytes(self) -> int:
        return tensor_bytes([self.descriptor.model])

    @torch.no_grad()
    def run(self, image: Image.Image, tile: int, overlap: int = 16,
            on_tile: Callable[[int, int], bool] | None = None) -> Image.Image | None:
        """The picture at the model's scale; `on_tile(done, total)` is called after each tile and may
        return False to stop (None is returned then)."""
        rgb = torch.from_numpy(_array(image)).permute(2, 0, 1).float().div(255)  # [3, H, W]
        width, height = image.size
        s = self.scale
        boxes = tile_boxes(width, height, tile, overlap=overlap)
        out = Blender(3, width * s, height * s, overlap * s)
        for n, box in enumerate(boxes):
            piece = rgb[:, box.y0:box.y1, box.x0:box.x1].unsqueeze(0).to(self.device, self.dtype)
            made = self.descriptor(piece)[0].float().clamp(0, 1)
            if made.shape[-2:] != (box.height * s, box.width * s):
                raise ModelError(f"{self.name}: made a {made.shape[-1]}x{made.shape[-2]} tile from "
                                 f"{box.width}x{box.height} at scale {s}")
            out.add(box.scaled(s), made.cpu())
            if on_tile is not None and on_tile(n + 1, len(boxes)) is False:
                return None
        pixels = out.result().mul(255).round().clamp(0, 255).byte().permute(1, 2, 0).numpy()
        return Image.fromarray(pixels, "RGB")


def _array(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"), dtype=np.uint8).copy()


def auto_tile(device: torch.device, scale: int) -> int:
    """A tile side for the free memory: on CUDA from what is free (about 60 KB of activations per input
    pixel for a full-size ESRGAN at 4×, halved for safety), else 256."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        per_pixel = 60_000 * max(1, scale) / 4
        side = int(math.sqrt(free * 0.5 / per_pixel)) // 8 * 8
        return max(128, min(1024, side))
    return 256


class UpscalerLibrary:
    """The upscalers Easel knows: the built-ins and the files in A1111's upscaler folders."""

    def __init__(self, models_dir: Path | None = None, get_model: Callable[..., Any] | None = None,
                 device: torch.device | None = None, half: bool = False, tile: int = 0):
        self.models_dir = models_dir  # None: the built-ins only
        self.get_model = get_model  # the model manager's typed cache (None: load on every use)
        self.device = device or torch.device("cpu")
        self.half = half  # fp16 where the architecture supports it (CUDA)
        self.tile = tile  # 0 = chosen from free memory (auto_tile)

    @property
    def folders(self) -> list[Path]:
        return [self.models_dir / name for name in FOLDERS] if self.models_dir is not None else []

    def files(self) -> list[UpscalerFile]:
        found: dict[str, UpscalerFile] = {}
        for folder in self.folders:
            for path in files_in(folder, SUFFIXES):
                found.setdefault(path.stem, UpscalerFile(path.stem, path))  # the first folder's wins
        return sorted(found.values(), key=lambda f: f.name.lower())

    def names(self) -> list[str]:
        """Everything an `upscaler` field accepts: the built-ins, then the model files."""
        return [*BUILTIN, *(f.name for f in self.files())]

    def resolve(self, name: str) -> str:
        """The upscaler's own name for `name` (case-insensitive); UpscalerNotFound if none."""
        wanted = (name or "").strip().lower()
        for known in self.names():
            if known.lower() == wanted:
                return known
        raise UpscalerNotFound(f"no upscaler {name!r}; available: {', '.join(self.names())}")

    def find(self, name: str) -> UpscalerFile:
        wanted = name.strip().lower()
        for f in self.files():  # names resolve only through the listing: nothing outside the folders
            if f.name.lower() == wanted:
                return f
        raise UpscalerNotFound(f"no upscaler {name!r} in models/{{{','.join(FOLDERS)}}}")

    def load(self, name: str) -> UpscalerModel:
        """The model file `name`, loaded (through the cache when there is one)."""
        problem = spandrel_problem()
        if problem is not None:
            raise UpscalerUnavailable(f"{name}: {problem}")
        f = self.find(name)
        stamp = f.path.stat()
        key = f"{f.path.resolve()}|{stamp.st_size}|{stamp.st_mtime_ns}"
        if self.get_model is None:
            return self._load(f)
        return self.get_model(UPSCALER, key, f"{f.name} ({f.folder})", lambda: self._load(f),
                              lambda m: m.nbytes(), lambda m, device: m.move(device))

    def _load(self, f: UpscalerFile) -> UpscalerModel:
        from spandrel import ImageModelDescriptor, ModelLoader, UnsupportedModelError

        state = read_state_dict(f.path)
        try:
            descriptor = ModelLoader(torch.device("cpu")).load_from_state_dict(state)
        except UnsupportedModelError:
            raise ModelError(f"{f.path.name}: not an upscaler architecture spandrel knows") from None
        except (KeyError, RuntimeError, ValueError, TypeError, AssertionError, IndexError) as e:
            raise ModelError(f"{f.path.name}: could not be read as an upscaler ({type(e).__name__}: "
                             f"{str(e).splitlines()[0][:160] if str(e) else ''})") from e
        if not isinstance(descriptor, ImageModelDescriptor) or descriptor.input_channels != 3 \
                or descriptor.output_channels != 3:
            raise ModelError(f"{f.path.name}: a {descriptor.architecture.name} model, not an RGB upscaler")
        descriptor.eval()
        if self.half and descriptor.supports_half and self.device.type == "cuda":
            descriptor.half()
        descriptor.to(self.device)
        log.info("upscaler %s: %s, %dx, from %s", f.name, descriptor.architecture.name, descriptor.scale, f.path)
        return UpscalerModel(descriptor, f.name)

    # -- using them --------------------------------------------------------------------------------------
    def upscale(self, name: str, image: Image.Image, size: tuple[int, int],
                on_tile: Callable[[int, int], bool] | None = None) -> Image.Image | None:
        """`image` at exactly `size` through the upscaler `name` (a built-in resizes; a model runs, up to
        three times, until the picture is at least that large; a 1× model once), then Lanczos gives the exact
        size. None
        when `on_tile` said to stop."""
        name = self.resolve(name)
        resample = BUILTIN.get(name)
        if name in BUILTIN:
            resample = Image.Resampling.LANCZOS if resample is None else resample  # "None" still meets the size
            return image.resize(size, resample) if image.size != size else image.copy()
        model = self.load(name)
        picture = image.convert("RGB")
        tile = self.tile or auto_tile(self.device, model.scale)
        for _ in range(MAX_PASSES):
            if picture.width >= size[0] and picture.height >= size[1]:
                break
            done = model.run(picture, tile, on_tile=on_tile)
            if done is None:
                return None
            grew = done.size != picture.size
            picture = done
            if not grew:  # a 1× model (restoration): once is enough
                break
        return picture if picture.size == size else picture.resize(size, Image.Resampling.LANCZOS)

    def describe(self) -> list[dict[str, Any]]:
        """For the API and the page: name, file, folder, scale where known, and why one is unavailable."""
        problem = spandrel_problem()
        rows: list[dict[str, Any]] = [{"name": n, "model_name": None, "model_path": None, "scale": None,
                                       "available": True, "problem": None} for n in BUILTIN]
        for f in self.files():
            rows.append({"name": f.name, "model_name": f.folder, "model_path": f.path, "scale": _scale_hint(f.name),
                         "available": problem is None, "problem": problem})
        return rows


def _scale_hint(name: str) -> int | None:
    """The scale a file's name states (`4x-UltraSharp`, `RealESRGAN_x2plus`), as A1111 lists it."""
    m = re.search(r"(?:^|[^a-z0-9])(\d)x|x(\d)(?:[^0-9]|$)", name.lower())
    return int(m.group(1) or m.group(2)) if m else None
