"""ControlNet preprocessors that need no downloaded weights, under sd-webui-controlnet's module names and
with its parameters (threshold_a / threshold_b, processor resolution), built on OpenCV and NumPy.

Each takes an RGB uint8 array (and the img2img mask, for inpaint_only) and returns the control map as
float32 H×W×3 in [0, 1] (inpaint_only marks the masked pixels -1, as the inpaint ControlNet expects).
Modules that need annotator networks run when their weights are in `models/ControlNet/annotators`
(webui/models/annotators.py: depth_midas, depth_anything); the others (openpose, HED, …) are listed with
the reason they are unavailable.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import cv2
import numpy as np

from webui.models.annotators import Annotators

Map = np.ndarray  # float32 H×W×3


@dataclass(frozen=True)
class Slider:
    name: str
    value: float
    min: float
    max: float
    step: float = 1.0


@dataclass(frozen=True)
class Preprocessor:
    name: str
    run: Callable[..., Map] | None
    sliders: tuple[Slider, ...] = ()  # threshold_a, threshold_b, in order
    resolution: bool = True  # whether processor_res applies
    needs: str = ""  # annotator weights it would need (unavailable here)
    aliases: tuple[str, ...] = field(default_factory=tuple)
    annotator: bool = False  # runs a network from models/ControlNet/annotators (webui/models/annotators.py)

    def problem(self, annotators: Annotators | None) -> str | None:
        """Why this module cannot run here (what it needs), or None when it can."""
        if self.annotator:
            return None if annotators is not None and annotators.present(self.name) else (
                annotators.needs(self.name) if annotators is not None else "its annotator folder")
        return None if self.run is not None else self.needs

    def thresholds(self, a: float, b: float) -> tuple[float, float]:
        """-1 (the extension's "unset") means the module's default."""
        defaults = [s.value for s in self.sliders] + [0.0, 0.0]
        return (defaults[0] if a is None or a < 0 else a), (defaults[1] if b is None or b < 0 else b)


def _float(image: np.ndarray) -> Map:
    return image.astype(np.float32) / 255.0


def _lines(gray: np.ndarray) -> Map:
    """A single-channel uint8 map as white-on-black RGB floats."""
    return _float(np.repeat(gray[..., None], 3, axis=2))


def resize_short_side(image: np.ndarray, resolution: int) -> np.ndarray:
    """The picture with its short side at `resolution` (the extension's processor resolution), a multiple
    of 8 on both sides; area interpolation when shrinking, cubic when growing."""
    h, w = image.shape[:2]
    k = resolution / min(h, w)
    size = (max(8, int(round(w * k / 8)) * 8), max(8, int(round(h * k / 8)) * 8))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA if k < 1 else cv2.INTER_CUBIC)


def canny(image: np.ndarray, low: float, high: float, **_) -> Map:
    return _lines(cv2.Canny(image, int(low), int(high)))


def invert(image: np.ndarray, **_) -> Map:
    return 1.0 - _float(image)


def threshold(image: np.ndarray, level: float, *_, **__) -> Map:
    gray = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    return _lines(np.where(gray > level, 255, 0).astype(np.uint8))


def scribble_xdog(image: np.ndarray, level: float, *_, **__) -> Map:
    """Difference of Gaussians (a fine blur minus a coarse one), thresholded: bold scribble-like lines."""
    x = image.astype(np.float32)
    fine, coarse = cv2.GaussianBlur(x, (0, 0), 0.5), cv2.GaussianBlur(x, (0, 0), 5.0)
    darkness = np.max(coarse - fine, axis=2)  # how much darker than its surroundings each pixel is
    return _lines(np.where(2 * darkness > level, 255, 0).astype(np.uint8))


def lineart_standard(image: np.ndarray, **_) -> Map:
    """Lines from a drawing on a white background (the extension's "lineart_standard"): how much darker a
    pixel is than a wide blur of it, normalised by the typical line strength."""
    x = image.astype(np.float32)
    darkness = np.min(cv2.GaussianBlur(x, (0, 0), 6.0) - x, axis=2).clip(0, 255)
    strong = darkness[darkness > 8]
    scale = max(16.0, float(np.median(strong))) if strong.size else 16.0
    return _lines((darkness / scale * 127).clip(0, 255).astype(np.uint8))


def blur_gaussian(image: np.ndarray, sigma: float, *_, **__) -> Map:
    return _float(cv2.GaussianBlur(image, (0, 0), max(0.01, sigma)))


def tile_resample(image: np.ndarray, rate: float, *_, **__) -> Map:
    """The picture made smaller by `rate` (the tile ControlNet fills the detail back in)."""
    if rate <= 1:
        return _float(image)
    h, w = image.shape[:2]
    return _float(cv2.resize(image, (max(8, int(w / rate)), max(8, int(h / rate))), interpolation=cv2.INTER_AREA))


def tile_colorfix(image: np.ndarray, *_, **__) -> Map:
    """The picture itself; the colour fix (the result keeping this picture's colours at low frequency,
    `threshold_a` = blur size) is applied to the generated image by the ControlNet feature."""
    return _float(image)


def color_grid(image: np.ndarray, **_) -> Map:
    """T2I-Adapter's colour grid: the picture in 64-pixel blocks of its average colour."""
    h, w = image.shape[:2]
    small = cv2.resize(image, (max(1, w // 64), max(1, h // 64)), interpolation=cv2.INTER_CUBIC)
    return _float(cv2.resize(small, (w, h), interpolation=cv2.INTER_NEAREST))


def shuffle(image: np.ndarray, seed: int = 0, **_) -> Map:
    """The content moved around by a smooth random displacement field (the "shuffle" ControlNet learns
    the picture's style, not its layout); the seed makes it repeatable."""
    h, w = image.shape[:2]
    rng = np.random.default_rng(seed)
    flows = []
    for size in (w, h):
        coarse = rng.uniform(0, size, (max(2, h // 64), max(2, w // 64))).astype(np.float32)
        flows.append(cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC))
    return _float(cv2.remap(image, flows[0], flows[1], interpolation=cv2.INTER_LINEAR,
                            borderMode=cv2.BORDER_REFLECT))


def inpaint_only(image: np.ndarray, mask: np.ndarray | None = None, **_) -> Map:
    """The picture with the pixels to repaint set to -1 (what the inpaint ControlNet takes)."""
    out = _float(image)
    if mask is not None:
        out[mask > 127] = -1.0
    return out


_NEEDS = "annotator weights Easel does not ship and cannot run yet"
PREPROCESSORS: dict[str, Preprocessor] = {p.name: p for p in (
    Preprocessor("none", lambda image, **_: _float(image), resolution=False),
    Preprocessor("invert", invert, resolution=False, aliases=("invert (from white bg & black line)",)),
    Preprocessor("canny", canny, (Slider("Low Threshold", 100, 1, 255), Slider("High Threshold", 200, 1, 255))),
    Preprocessor("threshold", threshold, (Slider("Binarization Threshold", 127, 0, 255),)),
    Preprocessor("scribble_xdog", scribble_xdog, (Slider("XDoG Threshold", 32, 1, 64),)),
    Preprocessor("lineart_standard", lineart_standard,
                 aliases=("lineart_standard (from white bg & black line)",)),
    Preprocessor("blur_gaussian", blur_gaussian, (Slider("Sigma", 9.0, 0.01, 64.0, 0.01),)),
    Preprocessor("tile_resample", tile_resample, (Slider("Down Sampling Rate", 1.0, 1.0, 8.0, 0.01),)),
    Preprocessor("tile_colorfix", tile_colorfix, (Slider("Variation", 8.0, 3.0, 32.0, 1.0),)),
    Preprocessor("t2ia_color_grid", color_grid),
    Preprocessor("shuffle", shuffle),
    Preprocessor("inpaint_only", inpaint_only, resolution=False),
    Preprocessor("depth_midas", None, annotator=True),
    Preprocessor("depth_anything", None, annotator=True),
    *(Preprocessor(name, None, needs=_NEEDS) for name in (
        "depth_zoe", "depth_leres", "openpose", "openpose_full", "softedge_hed", "softedge_pidinet",
        "lineart_realistic", "lineart_anime", "normal_bae", "mlsd", "seg_ofade20k", "reference_only")),
)}


def find_preprocessor(name: str) -> Preprocessor | None:
    wanted = (name or "none").strip().lower()
    for p in PREPROCESSORS.values():
        if wanted == p.name or wanted in p.aliases:
            return p
    return None


def preprocess(p: Preprocessor, image: np.ndarray, resolution: int, a: float, b: float,
               mask: np.ndarray | None = None, seed: int = 0, annotators: Annotators | None = None) -> Map:
    """The control map of an RGB uint8 picture (at the processor resolution where the module uses one)."""
    problem = p.problem(annotators)
    if problem:
        raise ValueError(f"module: {p.name} needs {problem}")
    if p.annotator:
        return annotators.depth(p.name, resize_short_side(image, resolution) if resolution > 0 else image)
    if p.resolution and resolution > 0:
        image = resize_short_side(image, resolution)
        if mask is not None:
            mask = cv2.resize(mask, (image.shape[1], image.shape[0]), interpolation=cv2.INTER_NEAREST)
    elif mask is not None and mask.shape[:2] != image.shape[:2]:
        mask = cv2.resize(mask, (image.shape[1], image.shape[0]), interpolation=cv2.INTER_NEAREST)
    a, b = p.thresholds(a, b)
    return p.run(image, a, b, mask=mask, seed=seed) if p.sliders else p.run(image, mask=mask, seed=seed)
