"""Working on a picture tile by tile, with overlap and a feathered blend, so any size fits in memory.

`tile_boxes` covers a picture with tiles that overlap by `overlap` pixels (the last row and column are
moved back inside the picture rather than shrunk). `feather` gives a tile's blend weights: 1 in its
middle, ramping down towards each side it shares with a neighbour (never at the picture's own border).
`Blender` accumulates weighted tiles and divides by the weights at the end, so where tiles overlap
the result fades from one to the other with no seam, and away from the overlaps it is exactly the
tile's own output.

Used by the upscalers (model inference per tile, in tensors) and by SD upscale (img2img per tile).
"""
from __future__ import annotations

from dataclasses import dataclass

import math

import torch


@dataclass(frozen=True)
class Box:
    x0: int
    y0: int
    x1: int
    y1: int

    @property
    def width(self) -> int:
        return self.x1 - self.x0

    @property
    def height(self) -> int:
        return self.y1 - self.y0

    def scaled(self, scale: int) -> "Box":
        return Box(self.x0 * scale, self.y0 * scale, self.x1 * scale, self.y1 * scale)


def _spans(length: int, tile: int, overlap: int, even: bool) -> list[tuple[int, int]]:
    """(start, end) of the tiles along one side. `even`: as few tiles as fit, all of one size (at most
    `tile`) and evenly spread, so the overlaps are as small as allowed; else tiles of exactly `tile`,
    the last one moved back inside."""
    if length <= tile:
        return [(0, length)]
    count = math.ceil((length - overlap) / (tile - overlap))
    size = math.ceil((length + (count - 1) * overlap) / count) if even else tile
    count = count if even else max(count, 2)
    starts = sorted({round(i * (length - size) / (count - 1)) for i in range(count)})
    return [(s, s + size) for s in starts]


def tile_boxes(width: int, height: int, tile_w: int, tile_h: int | None = None, *, overlap: int,
               even: bool = True) -> list[Box]:
    """Tiles of at most tile_w×tile_h (square when tile_h is not given) covering width×height, neighbours
    overlapping by at least `overlap`; `even=False` keeps every tile exactly tile_w×tile_h (SD upscale's
    img2img tiles), else tiles are made as even and small-overlapped as the picture allows."""
    tile_h = tile_w if tile_h is None else tile_h
    if min(tile_w, tile_h) <= overlap:
        raise ValueError(f"a tile ({tile_w}x{tile_h}) must be larger than the overlap ({overlap}px)")
    return [Box(x0, y0, x1, y1) for y0, y1 in _spans(height, tile_h, overlap, even)
            for x0, x1 in _spans(width, tile_w, overlap, even)]


def _ramp(length: int, before: int, after: int) -> torch.Tensor:
    """1-D weights: rising over `before` pixels, falling over `after`, 1 between (never exactly 0)."""
    w = torch.ones(length)
    if before > 0:
        n = min(before, length)
        w[:n] = torch.minimum(w[:n], (torch.arange(n) + 1) / (n + 1))
    if after > 0:
        n = min(after, length)
        w[length - n:] = torch.minimum(w[length - n:], torch.flip((torch.arange(n) + 1) / (n + 1), [0]))
    return w


def feather(box: Box, width: int, height: int, overlap: int) -> torch.Tensor:
    """[h, w] blend weights of a tile inside a width×height picture."""
    ramp_x = _ramp(box.width, overlap if box.x0 > 0 else 0, overlap if box.x1 < width else 0)
    ramp_y = _ramp(box.height, overlap if box.y0 > 0 else 0, overlap if box.y1 < height else 0)
    return ramp_y[:, None] * ramp_x[None, :]


class Blender:
    """Accumulates tiles ([C, h, w] tensors) into a [C, height, width] picture."""

    def __init__(self, channels: int, width: int, height: int, overlap: int, device: torch.device | None = None):
        self.width, self.height, self.overlap = width, height, overlap
        self.total = torch.zeros(channels, height, width, device=device)
        self.weight = torch.zeros(1, height, width, device=device)

    def add(self, box: Box, tile: torch.Tensor) -> None:
        w = feather(box, self.width, self.height, self.overlap).to(self.total.device)
        self.total[:, box.y0:box.y1, box.x0:box.x1] += tile.to(self.total) * w
        self.weight[:, box.y0:box.y1, box.x0:box.x1] += w

    def result(self) -> torch.Tensor:
        return self.total / self.weight.clamp_min(1e-8)
