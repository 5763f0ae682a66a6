"""Procedurally drawn scenes with captions: the demo model's whole training world.

One or two flat shapes (circle, square, triangle, star) in named colours, at named
positions and sizes, on a plain background of another colour, each with a caption such
as "a small red circle on the left, blue background". Deterministic per (seed, index):
`SceneGenerator(seed).scene(index)` always draws the same picture.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from PIL import Image, ImageDraw

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 165, 50),
    "blue": (35, 65, 225),
    "yellow": (245, 220, 35),
    "orange": (250, 140, 20),
    "purple": (140, 45, 185),
    "white": (245, 245, 245),
    "black": (20, 20, 20),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star")
# name -> centre as a fraction of the image side (x, y)
POSITIONS: dict[str, tuple[float, float]] = {
    "left": (0.25, 0.5),
    "right": (0.75, 0.5),
    "top": (0.5, 0.25),
    "bottom": (0.5, 0.75),
    "centre": (0.5, 0.5),
}
POSITION_PHRASES: dict[str, str] = {
    "left": "on the left",
    "right": "on the right",
    "top": "at the top",
    "bottom": "at the bottom",
    "centre": "in the centre",
}
# name -> half-size as a fraction of the image side; "medium" is not named in captions
SIZES: dict[str, float] = {"small": 0.12, "medium": 0.17, "large": 0.22}
PAIRS: tuple[tuple[str, str], ...] = (("left", "right"), ("top", "bottom"))

SUPERSAMPLE = 4


@dataclass(frozen=True)
class ShapeFact:
    kind: str  # one of SHAPES
    colour: str  # key of COLOURS
    position: str  # key of POSITIONS
    size: str  # key of SIZES
    centre: tuple[float, float]  # pixels (x, y)
    bbox: tuple[int, int, int, int]  # pixels (x0, y0, x1, y1), x1/y1 exclusive


@dataclass
class Scene:
    image: Image.Image
    caption: str
    shapes: list[ShapeFact]
    background: str  # key of COLOURS
    seed: int = 0
    index: int = 0
    extra: dict = field(default_factory=dict)


def shape_phrase(s: ShapeFact) -> str:
    size = "" if s.size == "medium" else s.size + " "
    return f"a {size}{s.colour} {s.kind} {POSITION_PHRASES[s.position]}"


def make_caption(shapes: list[ShapeFact], background: str) -> str:
    return " and ".join(shape_phrase(s) for s in shapes) + f", {background} background"


def shape_polygon(kind: str, cx: float, cy: float, r: float) -> list[tuple[float, float]] | None:
    """Outline of a shape of half-size r around (cx, cy); None for a circle."""
    if kind == "circle":
        return None
    if kind == "square":
        h = r * 0.9
        return [(cx - h, cy - h), (cx + h, cy - h), (cx + h, cy + h), (cx - h, cy + h)]
    if kind == "triangle":
        return [(cx, cy - r), (cx + r * 1.05, cy + r * 0.85), (cx - r * 1.05, cy + r * 0.85)]
    if kind == "star":
        pts = []
        for i in range(10):
            rad = r * 1.1 if i % 2 == 0 else r * 0.45
            a = -math.pi / 2 + i * math.pi / 5
            pts.append((cx + rad * math.cos(a), cy + 0.08 * r + rad * math.sin(a)))
        return pts
    raise ValueError(f"unknown shape {kind!r}")


def draw_scene(shapes: list[ShapeFact], background: str, size: int) -> Image.Image:
    """Render the facts (antialiased by supersampling)."""
    ss = SUPERSAMPLE
    img = Image.new("RGB", (size * ss, size * ss), COLOURS[background])
    d = ImageDraw.Draw(img)
    for s in shapes:
        r = SIZES[s.size] * size * ss
        cx, cy = s.centre[0] * ss, s.centre[1] * ss
        poly = shape_polygon(s.kind, cx, cy, r)
        if poly is None:
            d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=COLOURS[s.colour])
        else:
            d.polygon(poly, fill=COLOURS[s.colour])
    return img.resize((size, size), Image.BOX)


def _bbox(kind: str, cx: float, cy: float, r: float, size: int) -> tuple[int, int, int, int]:
    poly = shape_polygon(kind, cx, cy, r)
    if poly is None:
        xs, ys = [cx - r, cx + r], [cy - r, cy + r]
    else:
        xs, ys = [p[0] for p in poly], [p[1] for p in poly]
    clamp = lambda v: int(min(max(v, 0), size))  # noqa: E731
    return clamp(math.floor(min(xs))), clamp(math.floor(min(ys))), clamp(math.ceil(max(xs))), clamp(math.ceil(max(ys)))


class SceneGenerator:
    """Unlimited seeded scenes. `two_shape_prob` is the share of two-shape scenes."""

    def __init__(self, seed: int = 0, size: int = 64, two_shape_prob: float = 0.25):
        self.seed = int(seed)
        self.size = int(size)
        self.two_shape_prob = float(two_shape_prob)

    def _rng(self, index: int) -> np.random.Generator:
        return np.random.default_rng([self.seed & 0xFFFFFFFF, int(index) & 0xFFFFFFFF, 0x5CE7E])

    def facts(self, index: int, two: bool | None = None) -> tuple[list[ShapeFact], str]:
        rng = self._rng(index)
        names = list(COLOURS)
        if two is None:
            two = rng.random() < self.two_shape_prob
        else:
            rng.random()
        background = names[rng.integers(len(names))]
        others = [c for c in names if c != background]
        n = self.size
        if two:
            positions = list(PAIRS[rng.integers(len(PAIRS))])
            if rng.random() < 0.5:
                positions.reverse()
            sizes = ["small", "medium"]
        else:
            positions = [list(POSITIONS)[rng.integers(len(POSITIONS))]]
            sizes = list(SIZES)
        shapes = []
        for pos in positions:
            kind = SHAPES[rng.integers(len(SHAPES))]
            colour = others[rng.integers(len(others))]
            size = sizes[rng.integers(len(sizes))]
            r = SIZES[size] * n
            fx, fy = POSITIONS[pos]
            jitter = 0.04 * n
            cx = fx * n + float(rng.uniform(-jitter, jitter))
            cy = fy * n + float(rng.uniform(-jitter, jitter))
            shapes.append(ShapeFact(kind, colour, pos, size, (cx, cy), _bbox(kind, cx, cy, r, n)))
        return shapes, background

    def scene(self, index: int, two: bool | None = None) -> Scene:
        shapes, background = self.facts(index, two)
        image = draw_scene(shapes, background, self.size)
        return Scene(image, make_caption(shapes, background), shapes, background, self.seed, int(index))

    def batch(self, start: int, count: int, two: bool | None = None) -> list[Scene]:
        return [self.scene(i, two) for i in range(start, start + count)]


def to_tensor_batch(scenes: list[Scene]):
    """Images as a float tensor in [-1, 1], NCHW."""
    import torch

    arr = np.stack([np.asarray(s.image, dtype=np.uint8) for s in scenes])
    return torch.from_numpy(arr).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)
