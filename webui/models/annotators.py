"""Annotator networks for ControlNet preprocessors that need weights, read from `models/ControlNet/annotators/`.

Easel downloads nothing: a module that needs an annotator runs when its folder is there and is listed as
unavailable (naming the folder it wants) when not. Supported so far, as transformers folders (config.json +
weights; loaded with `local_files_only`, so nothing reaches for the network):

    depth_midas      annotators/dpt-hybrid-midas          a DPT depth model (Intel's dpt-hybrid-midas, or any DPT)
    depth_anything   annotators/depth-anything-small-hf   a Depth Anything model (small, base or large)

The networks live in the model manager's typed cache (kind "annotator") under the same budgets as the
checkpoints, so repeated detections do not reload them.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import cv2
import numpy as np
import torch

from .cache import tensor_bytes
from .errors import ModelError

log = logging.getLogger(__name__)

ANNOTATOR = "annotator"  # the model cache's kind


@dataclass(frozen=True)
class AnnotatorSpec:
    folder: str  # under models/ControlNet/annotators
    square: bool  # DPT's position embeddings want the square size it was trained at; Depth Anything any multiple
    multiple: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
SPECS = {
    "depth_midas": AnnotatorSpec("dpt-hybrid-midas", square=True, multiple=32, mean=(0.5,) * 3, std=(0.5,) * 3),
    "depth_anything": AnnotatorSpec("depth-anything-small-hf", square=False, multiple=14, mean=IMAGENET[0],
                                    std=IMAGENET[1]),
}


class Annotators:
    """The annotator folders present, and running them (depth maps)."""

    def __init__(self, folder: Path, get_model: Callable[..., Any] | None = None,
                 device: torch.device = torch.device("cpu")):
        self.folder = folder
        self.get_model = get_model
        self.device = device

    def path(self, module: str) -> Path | None:
        spec = SPECS.get(module)
        return self.folder / spec.folder if spec else None

    def present(self, module: str) -> bool:
        path = self.path(module)
        return path is not None and (path / "config.json").is_file()

    def needs(self, module: str) -> str:
        path = self.path(module)
        return f"its annotator in models/ControlNet/annotators/{path.name} (a transformers folder)" if path else ""

    def _model(self, module: str) -> torch.nn.Module:
        from transformers import AutoModelForDepthEstimation

        path = self.path(module)
        stamp = (path / "config.json").stat().st_mtime_ns

        def load() -> torch.nn.Module:
            try:
                model = AutoModelForDepthEstimation.from_pretrained(path, local_files_only=True)
            except (OSError, ValueError, KeyError) as e:
                raise ModelError(f"annotator {path.name}: not a depth model transformers can read "
                                 f"({type(e).__name__}: {e})") from e
            log.info("annotator %s for %s", path.name, module)
            return model.eval().requires_grad_(False).to(self.device)
        if self.get_model is None:
            return load()
        return self.get_model(ANNOTATOR, f"{path.resolve()}|{stamp}", path.name, load, lambda m: tensor_bytes([m]),
                              lambda m, where: m.to(where))

    def depth(self, module: str, image: np.ndarray) -> np.ndarray:
        """A depth map (near = white) of an RGB uint8 picture, float32 H×W×3 in [0, 1], at the picture's size."""
        spec = SPECS[module]
        model = self._model(module)
        h, w = image.shape[:2]
        if spec.square:
            side = _config_size(self.path(module)) or max(spec.multiple, round(min(h, w) / spec.multiple) * spec.multiple)
            size = (side, side)
        else:
            size = tuple(max(spec.multiple, round(s / spec.multiple) * spec.multiple) for s in (w, h))
        x = cv2.resize(image, size, interpolation=cv2.INTER_CUBIC).astype(np.float32) / 255.0
        x = (x - np.array(spec.mean, np.float32)) / np.array(spec.std, np.float32)
        pixels = torch.from_numpy(x).permute(2, 0, 1)[None].to(self.device, next(model.parameters()).dtype)
        with torch.no_grad():
            predicted = model(pixel_values=pixels).predicted_depth[0].float().cpu().numpy()
        lo, hi = float(predicted.min()), float(predicted.max())
        depth = (predicted - lo) / (hi - lo) if hi > lo else np.zeros_like(predicted)
        depth = cv2.resize(depth.astype(np.float32), (w, h), interpolation=cv2.INTER_CUBIC).clip(0, 1)
        return np.repeat(depth[..., None], 3, axis=2)


def _config_size(folder: Path) -> int | None:
    try:
        size = json.loads((folder / "config.json").read_text()).get("image_size")
    except (OSError, ValueError):
        return None
    return int(size) if isinstance(size, int) else None
