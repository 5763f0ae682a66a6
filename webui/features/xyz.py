"""The X/Y/Z plot: one job that makes a grid of images, one per combination of up to three axes' values.

A script on the extension interface (`script_name: "x/y/z plot"`), with A1111's axis names, value
syntax and `script_args` order, so API clients written for A1111 work unchanged:

- axes as A1111's index in its txt2img (or img2img) list, or as the label (`"Steps"`); the axes Easel
  has no equivalent for (sigma churn, eta, …) are refused by name;
- values as a comma list (quotes allowed: `"long hair, blond", short`), `1-5` ranges, `1-10 (+2)`
  steps, `1-10 [5]` counts, floats too; an axis value that is wrong for its axis (an unknown sampler,
  checkpoint, VAE or style, a Prompt S/R word not in the prompt, a number that is not one) is refused
  at admission, before anything runs;
- each cell is an ordinary generation through the same pipeline (every feature applies; a checkpoint
  axis loads its checkpoints through the model manager, in the outer loop so each loads once);
- progress counts every cell, and an interrupt stops after the cell being made: the grid has the
  cells done;
- the grid (a legend drawn with Pillow's bundled font) is saved under `outputs/txt2img-grids/DATE/`
  (img2img: `img2img-grids`) with the first cell's infotext plus `Script`, `X Type`, `X Values`, …
"""
from __future__ import annotations

import csv
import io
import random
import re
from dataclasses import dataclass
from itertools import permutations
from typing import Annotated, Any, Callable

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from pydantic import BaseModel, Field

from webui.generation.errors import FieldError
from webui.generation.extension_points import Script, ScriptContext
from webui.generation.fields import Param
from webui.generation.progress import PartProgress
from webui.generation.requests import MAX_SEED, GenerationParams, Img2ImgRequest
from webui.generation.result import GenerationResult
from webui.generation.samplers import resolve_sampler, schedule_type_names
from webui.images.infotext import quote

TITLE = "X/Y/Z plot"


@dataclass(frozen=True)
class Axis:
    label: str
    kind: Any = str  # int, float, str, or "permutations"
    apply: Callable[[GenerationParams, Any, list], GenerationParams] | None = None  # None: Easel has none
    tabs: tuple[str, ...] = ("txt2img", "img2img")
    cost: float = 0.0  # slow to change (a checkpoint): kept in the outer loop
    named: bool = True  # legend "Steps: 20" (True) or just the value


def _field(name: str) -> Callable:
    return lambda req, value, values: req.model_copy(update={name: value})


def _feature(feature: str, name: str) -> Callable:
    """Change one setting of a feature (hires fix), keeping its other settings."""
    def apply(req: GenerationParams, value, values) -> GenerationParams:
        scripts = dict(req.alwayson_scripts)
        current = scripts.get(feature) or {}
        current = current.model_dump() if isinstance(current, BaseModel) else dict(current)
        scripts[feature] = {**current, name: value}
        return req.model_copy(update={"alwayson_scripts": scripts})
    return apply


def _denoising(req: GenerationParams, value, values) -> GenerationParams:
    """img2img's strength; in txt2img the hires pass's, as in A1111."""
    if isinstance(req, Img2ImgRequest):
        return req.model_copy(update={"denoising_strength": value})
    return _feature("hires fix", "denoising_strength")(req, value, values)


def _prompt_sr(req: GenerationParams, value, values) -> GenerationParams:
    return req.model_copy(update={"prompt": req.prompt.replace(values[0], value),
                                  "negative_prompt": req.negative_prompt.replace(values[0], value)})


def _prompt_order(req: GenerationParams, value: tuple, values) -> GenerationParams:
    """The words put into the prompt in this order, each where one of them was."""
    prompt = req.prompt
    places = sorted((prompt.find(word), word) for word in value)
    parts, rest = [], prompt
    for _, word in places:
        at = rest.find(word)
        parts.append(rest[:at])
        rest = rest[at + len(word):]
    return req.model_copy(update={"prompt": "".join(part + value[i] for i, part in enumerate(parts)) + rest})


def _styles(req: GenerationParams, value, values) -> GenerationParams:
    scripts = dict(req.alwayson_scripts)
    current = scripts.get("styles") or {}
    names = list(current.styles if isinstance(current, BaseModel) else current.get("styles", []))
    scripts["styles"] = {"styles": names + [n.strip() for n in value.split(",") if n.strip()]}
    return req.model_copy(update={"alwayson_scripts": scripts})


def _size(req: GenerationParams, value: str, values) -> GenerationParams:
    width, height = (int(v) for v in value.lower().split("x"))
    return req.model_copy(update={"width": width, "height": height})


# A1111's axis list, in its order (the index a client sends counts in the txt2img or img2img subset)
AXES: tuple[Axis, ...] = (
    Axis("Nothing", apply=lambda req, value, values: req),
    Axis("Seed", int, _field("seed")),
    Axis("Var. seed", int, _field("subseed")),
    Axis("Var. strength", float, _field("subseed_strength")),
    Axis("Steps", int, _field("steps")),
    Axis("Hires steps", int, _feature("hires fix", "hr_second_pass_steps"), tabs=("txt2img",)),
    Axis("CFG Scale", float, _field("cfg_scale")),
    Axis("Image CFG Scale", float, tabs=("img2img",)),
    Axis("Prompt S/R", str, _prompt_sr, named=False),
    Axis("Prompt order", "permutations", _prompt_order, named=False),
    Axis("Sampler", str, _field("sampler_name"), tabs=("txt2img",), named=False),
    Axis("Hires sampler", str, _feature("hires fix", "hr_sampler_name"), tabs=("txt2img",)),
    Axis("Sampler", str, _field("sampler_name"), tabs=("img2img",), named=False),
    Axis("Checkpoint name", str, _field("checkpoint"), cost=1.0, named=False),
    Axis("Negative Guidance minimum sigma", float),
    Axis("Sigma Churn", float),
    Axis("Sigma min", float),
    Axis("Sigma max", float),
    Axis("Sigma noise", float),
    Axis("Schedule type", str, _field("scheduler")),
    Axis("Schedule min sigma", float),
    Axis("Schedule max sigma", float),
    Axis("Schedule rho", float),
    Axis("Eta", float),
    Axis("Clip skip", int, _field("clip_skip")),
    Axis("Denoising", float, _denoising),
    Axis("Initial noise multiplier", float),
    Axis("Extra noise", float),
    Axis("Hires upscaler", str, _feature("hires fix", "hr_upscaler"), tabs=("txt2img",)),
    Axis("Cond. Image Mask Weight", float, tabs=("img2img",)),
    Axis("VAE", str, _field("vae"), cost=0.7),
    Axis("Styles", str, _styles),
    Axis("UniPC Order", int),
    Axis("Face restore", str),
    Axis("Token merging ratio", float),
    Axis("Token merging ratio high-res", float),
    Axis("Always discard next-to-last sigma", str),
    Axis("SGM noise multiplier", str),
    Axis("Refiner checkpoint", str),
    Axis("Refiner switch at", float),
    Axis("RNG source", str),
    Axis("Size", str, _size),
)


def axes_for(tab: str) -> list[Axis]:
    return [a for a in AXES if tab in a.tabs]


def axis_labels(tab: str = "txt2img") -> list[str]:
    return [a.label for a in axes_for(tab) if a.apply is not None]


class XyzSettings(BaseModel):
    """A1111's script_args, in its order."""

    x_type: Annotated[int | str, Field(description="A1111's axis index, or its label"),
                      Param("X type", ui="dropdown", options=axis_labels)] = "Seed"
    x_values: Annotated[str, Field(), Param("X values")] = ""
    x_values_dropdown: Annotated[list[str], Field(), Param("X values (list)", ui=None)] = []
    y_type: Annotated[int | str, Field(), Param("Y type", ui="dropdown", options=axis_labels)] = "Nothing"
    y_values: Annotated[str, Field(), Param("Y values")] = ""
    y_values_dropdown: Annotated[list[str], Field(), Param("Y values (list)", ui=None)] = []
    z_type: Annotated[int | str, Field(), Param("Z type", ui="dropdown", options=axis_labels)] = "Nothing"
    z_values: Annotated[str, Field(), Param("Z values")] = ""
    z_values_dropdown: Annotated[list[str], Field(), Param("Z values (list)", ui=None)] = []
    draw_legend: Annotated[bool, Field(), Param("Draw legend")] = True
    include_lone_images: Annotated[bool, Field(), Param("Include Sub Images")] = False
    include_sub_grids: Annotated[bool, Field(), Param("Include Sub Grids")] = False
    no_fixed_seeds: Annotated[bool, Field(), Param("Keep -1 for seeds")] = False
    margin_size: Annotated[int, Field(ge=0, le=500), Param("Grid margins (px)", step=2)] = 0
    csv_mode: Annotated[bool, Field(), Param("Use text inputs instead of dropdowns", ui=None)] = True
    raw_mode: Annotated[bool, Field(), Param("Use raw text lines")] = False


# -- values --------------------------------------------------------------------------------------------
_NUMBER = r"[+-]?\s*\d+(?:\.\d*)?"
RANGE_STEP = re.compile(rf"\s*({_NUMBER})\s*-\s*({_NUMBER})\s*(?:\(\s*([+-]\s*\d+(?:\.\d*)?)\s*\))?\s*")
RANGE_COUNT = re.compile(rf"\s*({_NUMBER})\s*-\s*({_NUMBER})\s*\[\s*(\d+)\s*\]\s*")


def split_values(text: str, raw: bool = False) -> list[str]:
    """A comma list with CSV quoting (A1111's), or one value per line with raw mode."""
    if raw and "\n" in text.strip():
        return [line.strip() for line in text.strip().split("\n")]
    rows = list(csv.reader(io.StringIO(text), skipinitialspace=True))
    return [value.strip() for row in rows for value in row if value.strip()]


def expand(values: list[str], kind: Any) -> list[Any]:
    """Ranges expanded and values converted: `1-5`, `1-10 (+2)`, `1-10 [5]` (count), floats alike."""
    out: list[Any] = []
    for value in values:
        if kind in (int, float) and (m := RANGE_COUNT.fullmatch(value)):
            start, end, count = float(m[1].replace(" ", "")), float(m[2].replace(" ", "")), int(m[3])
            points = np.linspace(start, end, count).tolist()
            out.extend(int(p) for p in points) if kind is int else out.extend(points)
        elif kind in (int, float) and (m := RANGE_STEP.fullmatch(value)) and m[2]:
            start, end = float(m[1].replace(" ", "")), float(m[2].replace(" ", ""))
            step = float(m[3].replace(" ", "")) if m[3] else 1.0
            if step == 0 or (end - start) * step < 0:
                raise ValueError(f"the range {value!r} never reaches its end")
            points = np.arange(start, end + step / 2 if kind is float else end + (1 if step > 0 else -1), step)
            out.extend(int(p) for p in points) if kind is int else out.extend(round(float(p), 6) for p in points)
        else:
            out.append(value)
    if kind == "permutations":
        return list(permutations(out))
    converted = []
    for value in out:
        try:
            converted.append(kind(value) if kind in (int, float) else value)
        except (TypeError, ValueError):
            raise ValueError(f"{value!r} is not a{'n integer' if kind is int else ' number'}") from None
    return converted


@dataclass
class PlannedAxis:
    axis: Axis
    values: list[Any]
    text: str  # as given, for the infotext

    def label(self, value: Any) -> str:
        shown = ", ".join(value) if isinstance(value, tuple) else f"{value:g}" if isinstance(value, float) else str(value)
        return f"{self.axis.label}: {shown}" if self.axis.named else shown


class XyzPlot(Script):
    name = "x/y/z plot"
    title = TITLE
    settings = XyzSettings

    def __init__(self, checks: dict[str, Callable[[str], bool]] | None = None):
        # name -> does it exist? for "checkpoint", "vae", "style" (the listings a value must be in)
        self.checks = checks or {}

    def choices(self, field: str, tab: str) -> list[str] | None:
        return axis_labels(tab) if field in ("x_type", "y_type", "z_type") else None

    # -- checking, at admission ---------------------------------------------------------------------------
    def plan(self, request: GenerationParams, s: XyzSettings) -> list[PlannedAxis]:
        tab = "img2img" if isinstance(request, Img2ImgRequest) else "txt2img"
        planned = []
        for letter, position in (("x", 0), ("y", 3), ("z", 6)):
            kind, text = getattr(s, f"{letter}_type"), getattr(s, f"{letter}_values")
            axis = self._axis(kind, tab, f"script_args.{position}")
            listed = getattr(s, f"{letter}_values_dropdown")
            if axis.label == "Nothing":
                planned.append(PlannedAxis(axis, [None], ""))
                continue
            where = f"script_args.{position + 1}"
            raw = listed if listed and not s.csv_mode else split_values(text, s.raw_mode)
            if not raw:
                raise FieldError(where, f"{axis.label}: give at least one value")
            try:
                values = expand(raw, axis.kind)
            except ValueError as e:
                raise FieldError(where, f"{axis.label}: {e}") from None
            self._confirm(axis, values, request, where)
            planned.append(PlannedAxis(axis, values, text or ", ".join(listed)))
        return planned

    @staticmethod
    def _axis(kind: int | str, tab: str, where: str) -> Axis:
        options = axes_for(tab)
        if isinstance(kind, int) or (isinstance(kind, str) and kind.strip().isdigit()):
            index = int(kind)
            if not 0 <= index < len(options):
                raise FieldError(where, f"axis index {index} is outside A1111's {tab} list (0-{len(options) - 1})")
            axis = options[index]
        else:
            axis = next((a for a in options if a.label.lower() == str(kind).strip().lower()), None)
            if axis is None:
                raise FieldError(where, f"unknown axis {kind!r}; Easel's: {', '.join(axis_labels(tab))}")
        if axis.apply is None:
            raise FieldError(where, f"the axis {axis.label!r} has no equivalent in Easel; Easel's: "
                                    f"{', '.join(axis_labels(tab))}")
        return axis

    def _confirm(self, axis: Axis, values: list, request: GenerationParams, where: str) -> None:
        label = axis.label
        for value in values:
            try:
                if label in ("Sampler", "Hires sampler"):
                    resolve_sampler(value, "Automatic")
                elif label == "Schedule type" and value not in schedule_type_names():
                    raise ValueError(f"unknown schedule type {value!r}")
                elif label == "Size" and not re.fullmatch(r"\d+x\d+", value.lower()):
                    raise ValueError(f"{value!r} is not WIDTHxHEIGHT")
                elif label == "Prompt S/R" and values[0] not in request.prompt + request.negative_prompt:
                    raise ValueError(f"{values[0]!r} is not in the prompt or the negative prompt")
                elif label == "Prompt order" and any(word not in request.prompt for word in value):
                    raise ValueError(f"every value must be in the prompt ({value!r})")
                elif label == "Seed" and not -1 <= value <= MAX_SEED:
                    raise ValueError(f"seed {value} is out of range")
                for check, name in (("checkpoint", "Checkpoint name"), ("vae", "VAE"), ("style", "Styles")):
                    if label == name and check in self.checks and not all(
                            self.checks[check](v.strip()) for v in str(value).split(",") if v.strip()):
                        raise ValueError(f"no {check} {value!r}")
            except ValueError as e:
                raise FieldError(where, f"{label}: {e}".replace("sampler_name: ", "")) from None
        if label in ("Steps", "Hires steps") and any(v < (1 if label == "Steps" else 0) or v > 500 for v in values):
            raise FieldError(where, f"{label}: values must be between {1 if label == 'Steps' else 0} and 500")

    def check(self, request: GenerationParams, settings: XyzSettings) -> None:
        self.plan(request, settings)

    def images(self, request: GenerationParams, settings: XyzSettings) -> int:
        """One image per cell (for admission's limits)."""
        cells = 1
        for planned in self.plan(request, settings):
            cells *= len(planned.values)
        return cells

    # -- running --------------------------------------------------------------------------------------------
    def run(self, context: ScriptContext, request: GenerationParams, s: XyzSettings) -> GenerationResult:
        xs, ys, zs = self.plan(request, s)
        base = request.model_copy(update={"batch_size": 1, "n_iter": 1})
        if not s.no_fixed_seeds:  # every cell with the same seed, so the axes are what differs
            base = base.model_copy(update={"seed": random.randint(0, MAX_SEED) if base.seed < 0 else base.seed})
            for planned in (xs, ys, zs):
                if planned.axis.label in ("Seed", "Var. seed"):
                    planned.values = [random.randint(0, MAX_SEED) if v == -1 else v for v in planned.values]
        shape = (len(zs.values), len(ys.values), len(xs.values))
        cells: dict[tuple[int, int, int], GenerationResult] = {}
        order = sorted(((iz, iy, ix) for iz in range(shape[0]) for iy in range(shape[1]) for ix in range(shape[2])),
                       key=lambda c: tuple(c[i] for i in self._loop_order(xs, ys, zs)))
        total = len(order)
        for n, (iz, iy, ix) in enumerate(order):
            if context.progress.should_stop():
                break
            cell = base
            for planned, index in ((xs, ix), (ys, iy), (zs, iz)):
                cell = planned.axis.apply(cell, planned.values[index], planned.values)
            result = context.generate(cell, PartProgress(context.progress, n, total, "cell"))
            if result.images:
                cells[(iz, iy, ix)] = result
        return self.assemble(request, s, xs, ys, zs, cells, shape, context.progress.should_stop())

    @staticmethod
    def _loop_order(xs: PlannedAxis, ys: PlannedAxis, zs: PlannedAxis) -> tuple[int, int, int]:
        """Indexes into (z, y, x) from the outer loop in: the costliest axis outermost (checkpoints)."""
        ranked = sorted(((zs.axis.cost, 0), (ys.axis.cost, 1), (xs.axis.cost, 2)), key=lambda c: -c[0])
        return tuple(i for _, i in ranked)

    def assemble(self, request, s: XyzSettings, xs, ys, zs, cells, shape, interrupted: bool) -> GenerationResult:
        first = next(iter(cells.values()), None)
        if first is None:
            return GenerationResult([], [], [], [], request, interrupted=True)
        size = first.images[0].size
        blank = Image.new("RGB", size, (0, 0, 0))
        grids = []
        for iz in range(shape[0]):
            grid_cells = [[cells[(iz, iy, ix)].images[0] if (iz, iy, ix) in cells else blank
                           for ix in range(shape[2])] for iy in range(shape[1])]
            grids.append(draw_grid(grid_cells, [xs.label(v) for v in xs.values] if xs.values != [None] else [],
                                   [ys.label(v) for v in ys.values] if ys.values != [None] else [],
                                   s.draw_legend, s.margin_size))
        if len(grids) > 1:
            main = draw_grid([grids], [zs.label(v) for v in zs.values], [], s.draw_legend, s.margin_size)
        else:
            main = grids[0]
        extra = {"Script": TITLE}
        for letter, planned in (("X", xs), ("Y", ys), ("Z", zs)):
            if planned.axis.label != "Nothing":
                extra[f"{letter} Type"] = planned.axis.label
                extra[f"{letter} Values"] = planned.text
                if planned.axis.label in ("Seed", "Var. seed") and not s.no_fixed_seeds:
                    extra[f"Fixed {letter} Values"] = ", ".join(str(v) for v in planned.values)
        info = first.infotexts[0] + "".join(f", {k}: {quote(v)}" for k, v in extra.items())
        images, infotexts, seeds, subseeds, prompts, negatives, grid_flags = [main], [info], [first.seeds[0]], \
            [first.subseeds[0]], [first.prompts[0] if first.prompts else request.prompt], \
            [first.negative_prompts[0] if first.negative_prompts else request.negative_prompt], [True]
        if s.include_sub_grids and len(grids) > 1:
            for grid in grids:
                images.append(grid), infotexts.append(info), seeds.append(first.seeds[0])
                subseeds.append(first.subseeds[0]), prompts.append(prompts[0]), negatives.append(negatives[0])
                grid_flags.append(True)
        if s.include_lone_images:
            for key in sorted(cells):
                r = cells[key]
                images.append(r.images[0]), infotexts.append(r.infotexts[0]), seeds.append(r.seeds[0])
                subseeds.append(r.subseeds[0]), prompts.append(r.prompts[0] if r.prompts else request.prompt)
                negatives.append(r.negative_prompts[0] if r.negative_prompts else request.negative_prompt)
                grid_flags.append(False)
        return GenerationResult(images, infotexts, seeds, subseeds, first.request, interrupted,
                                extra={**first.extra, "cells": len(cells), "grid_shape": shape},
                                prompts=prompts, negative_prompts=negatives, grids=grid_flags)


def draw_grid(rows: list[list[Image.Image]], column_labels: list[str], row_labels: list[str], legend: bool,
              margin: int) -> Image.Image:
    """Images in rows and columns (`margin` px apart), with the column labels above and the row labels to
    the left when `legend` is on; text in Pillow's bundled font, wrapped to fit."""
    width, height = rows[0][0].size
    columns = max(len(r) for r in rows)
    font = ImageFont.load_default(size=max(12, min(width, height) // 12))
    top = left = 0
    if legend and column_labels:
        top = _text_height(column_labels, font, width) + 12
    if legend and row_labels:
        left = max(int(font.getlength(line)) for label in row_labels for line in _wrap(label, font, width)) + 16
    grid = Image.new("RGB", (left + columns * width + (columns - 1) * margin,
                             top + len(rows) * height + (len(rows) - 1) * margin), "white")
    draw = ImageDraw.Draw(grid)
    for iy, row in enumerate(rows):
        for ix, image in enumerate(row):
            grid.paste(image.convert("RGB"), (left + ix * (width + margin), top + iy * (height + margin)))
    if legend and column_labels:
        for ix, label in enumerate(column_labels[:columns]):
            _draw_centered(draw, label, font, left + ix * (width + margin) + width / 2, 6, width)
    if legend and row_labels:
        for iy, label in enumerate(row_labels[:len(rows)]):
            lines = _wrap(label, font, left)
            y = top + iy * (height + margin) + height / 2 - len(lines) * font.size * 0.6
            for n, line in enumerate(lines):
                draw.text((left - 8 - font.getlength(line), y + n * font.size * 1.2), line, fill="black", font=font)
    return grid


def _wrap(text: str, font: ImageFont.FreeTypeFont, width: int) -> list[str]:
    lines, line = [], ""
    for word in text.split(" "):
        candidate = f"{line} {word}".strip()
        if line and font.getlength(candidate) > width - 8:
            lines.append(line)
            line = word
        else:
            line = candidate
    return lines + [line] if line else lines or [""]


def _text_height(labels: list[str], font, width: int) -> int:
    return int(max(len(_wrap(label, font, width)) for label in labels) * font.size * 1.2)


def _draw_centered(draw: ImageDraw.ImageDraw, text: str, font, x: float, y: float, width: int) -> None:
    for n, line in enumerate(_wrap(text, font, width)):
        draw.text((x - font.getlength(line) / 2, y + n * font.size * 1.2), line, fill="black", font=font)
