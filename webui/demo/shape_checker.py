"""A simple, model-free reader of a shape picture: background colour, the dominant shape's
colour, centre, nearest named position and kind.

Kind comes from two numbers of the shape's mask: how much of its bounding box it fills
(square ~1.0, circle ~0.79, triangle ~0.5, star ~0.4) and its solidity, area over convex
hull area (convex shapes ~1, a five-pointed star ~0.55).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image
from scipy import ndimage

from .scenes import COLOURS, POSITIONS

_NAMES = list(COLOURS)
_RGB = np.array([COLOURS[n] for n in _NAMES], dtype=np.float32)


@dataclass
class Reading:
    background: str
    colour: str | None = None
    kind: str | None = None
    position: str | None = None
    centre: tuple[float, float] | None = None
    area: int = 0
    fill: float = 0.0
    solidity: float = 0.0


def nearest_colour(rgb) -> str:
    d = ((_RGB - np.asarray(rgb, dtype=np.float32)[None]) ** 2).sum(1)
    return _NAMES[int(d.argmin())]


def nearest_position(cx: float, cy: float, size: int) -> str:
    best, dist = None, None
    for name, (fx, fy) in POSITIONS.items():
        d = (cx - fx * size) ** 2 + (cy - fy * size) ** 2
        if dist is None or d < dist:
            best, dist = name, d
    return best


def _hull_area(points: np.ndarray) -> float:
    """Area of the convex hull of 2-D points (Andrew's monotone chain + shoelace)."""
    pts = sorted(set(map(tuple, points.tolist())))
    if len(pts) < 3:
        return 0.0

    def cross(o, a, b):
        return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])

    lower, upper = [], []
    for p in pts:
        while len(lower) >= 2 and cross(lower[-2], lower[-1], p) <= 0:
            lower.pop()
        lower.append(p)
    for p in reversed(pts):
        while len(upper) >= 2 and cross(upper[-2], upper[-1], p) <= 0:
            upper.pop()
        upper.append(p)
    hull = np.array(lower[:-1] + upper[:-1], dtype=np.float64)
    x, y = hull[:, 0], hull[:, 1]
    return 0.5 * abs(np.dot(x, np.roll(y, 1)) - np.dot(y, np.roll(x, 1)))


def classify_mask(mask: np.ndarray) -> tuple[str, float, float]:
    """(kind, fill ratio of the bounding box, solidity) of a boolean mask."""
    ys, xs = np.nonzero(mask)
    area = float(len(xs))
    if area == 0:
        return "none", 0.0, 0.0
    bw, bh = xs.max() - xs.min() + 1, ys.max() - ys.min() + 1
    fill = area / float(bw * bh)
    # pixel squares' corners, so the hull covers whole pixels
    corners = np.concatenate([np.stack([xs + dx, ys + dy], 1) for dx in (0, 1) for dy in (0, 1)])
    hull = _hull_area(corners)
    solidity = area / hull if hull > 0 else 0.0
    if solidity < 0.78:
        kind = "star"
    elif fill < 0.64:
        kind = "triangle"
    elif fill > 0.89:
        kind = "square"
    else:
        kind = "circle"
    return kind, fill, solidity


def read_image(image: Image.Image, threshold: float = 60.0) -> Reading:
    """Read the background colour and the largest shape of a picture."""
    arr = np.asarray(image.convert("RGB"), dtype=np.float32)
    h, w, _ = arr.shape
    border = np.concatenate([arr[0], arr[-1], arr[:, 0], arr[:, -1]])
    bg_rgb = np.median(border, axis=0)
    reading = Reading(background=nearest_colour(bg_rgb))
    dist = np.sqrt(((arr - bg_rgb[None, None]) ** 2).sum(-1))
    mask = dist > threshold
    mask = ndimage.binary_opening(mask, iterations=1)
    labels, n = ndimage.label(mask)
    if n == 0:
        return reading
    sizes = ndimage.sum(mask, labels, index=np.arange(1, n + 1))
    biggest = int(np.argmax(sizes)) + 1
    comp = ndimage.binary_fill_holes(labels == biggest)
    if comp.sum() < 6:
        return reading
    ys, xs = np.nonzero(comp)
    cx, cy = float(xs.mean()) + 0.5, float(ys.mean()) + 0.5
    inner = ndimage.binary_erosion(comp, iterations=1)
    px = arr[inner] if inner.sum() >= 4 else arr[comp]
    reading.colour = nearest_colour(np.median(px, axis=0))
    reading.kind, reading.fill, reading.solidity = classify_mask(comp)
    reading.centre = (cx, cy)
    reading.position = nearest_position(cx, cy, w)
    reading.area = int(comp.sum())
    return reading
