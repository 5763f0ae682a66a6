"""Widgets built from the requests' field descriptions, and the way from widget values to an admitted job.

A widget's label, range, step, default and choices come from the field's one description
(webui/generation/fields.py): the page never restates them. Each tab builds its controls under its
own elem_id prefix (`txt2img_steps`, `img2img_steps`, …), keyed by the request's field names, so
turning a click into a request is a dict lookup and filling the controls from an infotext ("send to",
the paste button) is the reverse lookup. Features with settings (built-ins and extensions) get an
accordion each, made the same way from their settings' descriptions.

Every job from the page goes through admission (`JobRunner`), exactly as API jobs do.
"""
from __future__ import annotations

import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import gradio as gr
from pydantic import BaseModel, ValidationError

from webui.admission import Admission
from webui.auth import Gate
from webui.errors import TooManyJobs
from webui.generation.extension_points import Feature
from webui.generation.fields import Param, base_type, bounds, param_of
from webui.generation.requests import GenerationParams, describe_validation_error, fields_from_infotext
from webui.images.infotext import parse_infotext
from webui.jobs.queue import Job, JobState
from webui.services import Easel

from .styles import StylesRow
from .widgets import error_html, progress_html, ui_caller

POLL_SECONDS = 0.25
SHARED_FIELDS = ("checkpoint", "vae")  # page-wide pickers, not per-tab controls
ICONS = Path(__file__).resolve().parent / "static" / "icons"
_DEFAULT = object()


def icon_button(icon: str, elem_id: str) -> gr.Button:
    """A small button showing one of Easel's SVG icons (emoji need a font many systems lack)."""
    return gr.Button("", icon=str(ICONS / f"{icon}.svg"), elem_id=elem_id, elem_classes=["easel-icon"],
                     scale=0, min_width=40)


def widget(model: type[BaseModel], name: str, elem_id: str, *, value: Any = _DEFAULT, label: str | None = None,
           maximum: float | None = None, choices: list | None = None, **extra: Any) -> gr.components.Component:
    """The widget a described field gets: its label, range, step, default and choices from the description."""
    f = model.model_fields[name]
    param = param_of(f) or Param(name)
    kind = base_type(f)
    default = f.get_default(call_default_factory=True) if value is _DEFAULT else value
    ui = param.ui
    literal = typing.get_args(f.annotation) if typing.get_origin(f.annotation) is typing.Literal else ()
    if ui == "auto":
        low, high = bounds(model, name)
        if kind is bool and param.choices is None:
            ui = "checkbox"
        elif param.choices or literal:
            ui = "radio"
        elif kind in (int, float) and low is not None and high is not None:
            ui = "slider"
        elif kind in (int, float):
            ui = "number"
        else:
            ui = "text"
    common = dict(label=label or param.label, elem_id=elem_id, **extra)
    if ui == "slider":
        low, high = bounds(model, name)
        high = min(high, maximum) if maximum is not None else high
        step = param.step or (1 if kind is int else 0.01)
        start = low if low is not None else 0
        value = start if default is None else min(default, high)  # a server limit below the default wins
        return gr.Slider(start, high, value=value, step=step, **common)
    if ui == "number":
        return gr.Number(value=default, precision=0 if kind is int else None, **common)
    if ui == "dropdown":
        return gr.Dropdown(choices or (param.options() if param.options else []), value=default, **common)
    if ui == "radio":
        if param.choices is not None:
            return gr.Radio(list(param.choices), value=param.choices[int(default)], type="index", **common)
        return gr.Radio(choices or list(literal), value=default, **common)
    if ui == "checkbox":
        return gr.Checkbox(value=bool(default), **common)
    common.setdefault("lines", 3 if ui == "textarea" else 1)
    return gr.Textbox(value=default or "", **common)


def widget_value(model: type[BaseModel], name: str, value: Any) -> Any:
    """A field's value as its widget shows it (choice labels for index/bool fields)."""
    param = param_of(model.model_fields[name])
    if param is not None and param.choices is not None and isinstance(value, (bool, int)):
        return param.choices[int(value)]
    return value


def request_value(model: type[BaseModel], name: str, value: Any) -> Any:
    """A widget's value as the field takes it (whole numbers for int fields, bools for bool fields)."""
    if value is None:
        return None
    kind = base_type(model.model_fields[name])
    if kind is int and isinstance(value, float):
        return int(value)
    if kind is bool and isinstance(value, int):
        return bool(value)
    return value


def slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


@dataclass
class FeatureSection:
    """One feature's accordion in a tab: its settings' widgets."""

    feature: Feature
    widgets: dict[str, Any]

    def value(self, data: dict) -> Any:
        """The feature's settings from the widgets' values (what `alwayson_scripts` takes)."""
        model = self.feature.settings
        return {n: request_value(model, n, data[w]) for n, w in self.widgets.items() if w in data}

    def updates(self, given: dict[str, Any]) -> dict:
        """{widget: value} for the settings an infotext gave this feature."""
        model = self.feature.settings
        return {w: widget_value(model, n, given[n]) for n, w in self.widgets.items() if n in given}


@dataclass
class GenerationControls:
    """The prompt, sampler, size, batch and seed widgets of one tab, and its features' sections."""

    prefix: str
    model: type[GenerationParams]
    easel: Easel
    admission: Admission
    checkpoint: gr.Dropdown
    vae: gr.Dropdown | None = None
    gate: Gate | None = None
    fields: dict[str, Any] = field(default_factory=dict)
    sections: list[FeatureSection] = field(default_factory=list)
    scripts: dict[str, tuple[Any, dict[str, Any]]] = field(default_factory=dict)  # name -> (script, widgets)
    script: gr.Dropdown | None = None
    styles: Any = None

    def add(self, name: str, **kw: Any) -> Any:
        param = param_of(self.model.model_fields[name])
        elem = param.elem if param is not None and param.elem else name
        self.fields[name] = widget(self.model, name, f"{self.prefix}_{elem}", **kw)
        return self.fields[name]

    def prompt_row(self, styles: bool = True) -> tuple[gr.Button, gr.Button]:
        p = self.prefix
        with gr.Row():
            with gr.Column(scale=6):
                self.add("prompt", placeholder="Prompt (Ctrl+Enter to generate)")
                self.add("negative_prompt", lines=2)
                if styles:
                    self.styles_row()
            with gr.Column(scale=1, min_width=160):
                generate = gr.Button("Generate", variant="primary", elem_id=f"{p}_generate")
                interrupt = gr.Button("Interrupt", elem_id=f"{p}_interrupt")
                self.paste = gr.Button("Read parameters from prompt", icon=str(ICONS / "paste.svg"),
                                       elem_id=f"{p}_paste", size="sm")
        return generate, interrupt

    def sampling(self) -> None:
        with gr.Row():
            self.add("sampler_name")
            self.add("scheduler")
        self.add("steps", maximum=self.admission.limits.max_steps)

    def size(self, label_prefix: str = "", default: tuple[int, int] | None = None) -> None:
        width, height = default or self.easel.default_size_for(self.checkpoint.value)
        with gr.Row():
            self.add("width", value=width, label=f"{label_prefix}Width" if label_prefix else None)
            self.add("height", value=height, label=f"{label_prefix}Height" if label_prefix else None)

    def batch_cfg_seed(self) -> None:
        limits = self.admission.limits
        with gr.Row():
            self.add("n_iter", maximum=limits.max_batch)
            self.add("batch_size", maximum=limits.max_batch)
        self.add("cfg_scale")
        self.seed_row()
        self.add("clip_skip")

    def seed_row(self, label: str | None = None) -> None:
        p = self.prefix
        with gr.Row():
            self.add("seed", label=label, scale=4)
            self.dice = icon_button("dice", f"{p}_random_seed")
            self.recycle = icon_button("recycle", f"{p}_reuse_seed")

    def pickers(self) -> None:
        """The page-wide checkpoint and VAE pickers count as this tab's fields."""
        self.fields["checkpoint"] = self.checkpoint
        if self.vae is not None:
            self.fields["vae"] = self.vae

    def feature_sections(self, tab: str) -> None:
        """An accordion per feature with settings that serves this tab (built-ins and extensions alike);
        features whose settings have no widget of their own (styles: beside the prompt) get none."""
        for feature in self.easel.features.with_settings():
            shown = [n for n, f in feature.settings.model_fields.items()
                     if (p := param_of(f)) is not None and p.ui is not None]
            if tab not in feature.tabs or not shown:
                continue
            with gr.Accordion(feature.title or feature.name, open=False, elem_id=f"{self.prefix}_{slug(feature.name)}"):
                widgets = self.settings_widgets(feature, shown, tab)
            self.sections.append(FeatureSection(feature, widgets))

    def settings_widgets(self, owner, names: list[str], tab: str) -> dict[str, Any]:
        """Widgets for a feature's or script's settings, with the choices it knows only at run time."""
        return {name: widget(owner.settings, name, f"{self.prefix}_{slug(owner.name)}_{name}",
                             choices=owner.choices(name, tab)) for name in names}

    def script_section(self, tab: str) -> None:
        """A1111's Script dropdown: "None" or a script, whose settings show below it when chosen."""
        scripts = [s for s in self.easel.features.scripts if tab in s.tabs]
        if not scripts:
            return
        self.script = gr.Dropdown(["None", *[s.title or s.name for s in scripts]], value="None", label="Script",
                                  elem_id=f"{self.prefix}_script")
        groups = []
        for script in scripts:
            shown = [n for n, f in (script.settings.model_fields if script.settings else {}).items()
                     if (p := param_of(f)) is not None and p.ui is not None]
            with gr.Group(visible=False, elem_id=f"{self.prefix}_{slug(script.name)}") as group:
                self.scripts[script.name] = (script, self.settings_widgets(script, shown, tab))
            groups.append(group)
        titles = [s.title or s.name for s in scripts]
        self.script.change(lambda chosen: {g: gr.Group(visible=chosen == t) for g, t in zip(groups, titles)},
                           inputs=self.script, outputs=groups, api_name=False)

    def styles_row(self) -> None:
        """The styles picker beside the prompt, when the styles feature is there (webui/ui/styles.py)."""
        feature = self.easel.features.find("styles")
        if feature is None:
            return
        self.styles = StylesRow(self.prefix, feature.library, self.fields["prompt"], self.fields["negative_prompt"],
                                self.gate)
        self.styles.build()
        self.sections.append(FeatureSection(feature, {"styles": self.styles.picker}))

    @property
    def inputs(self) -> set:
        scripts = {w for _, widgets in self.scripts.values() for w in widgets.values()}
        script = {self.script} if self.script is not None else set()
        return set(self.fields.values()) | {w for s in self.sections for w in s.widgets.values()} | scripts | script

    def request_values(self, data: dict) -> dict[str, Any]:
        values = {name: request_value(self.model, name, data[comp]) for name, comp in self.fields.items()
                  if comp in data and name in self.model.model_fields}
        values["checkpoint"] = values.get("checkpoint") or None
        values["vae"] = values.get("vae") or None
        scripts = {section.feature.name: section.value(data) for section in self.sections}
        if scripts:
            values["alwayson_scripts"] = scripts
        chosen = data.get(self.script) if self.script is not None else None
        for name, (script, widgets) in self.scripts.items():
            if chosen in (script.title, script.name):
                values["script_name"] = name
                values["script_args"] = {n: request_value(script.settings, n, data[w]) for n, w in widgets.items()
                                         if w in data}
        return values

    def updates_from_infotext(self, text: str) -> dict:
        """{component: value} for every control an infotext names (others untouched)."""
        values = fields_from_infotext(text or "", self.model)
        updates = {comp: widget_value(self.model, name, values[name]) for name, comp in self.fields.items()
                   if name in values and name not in SHARED_FIELDS}
        by_feature = self.easel.features.settings_from_infotext(parse_infotext(text or ""))
        for section in self.sections:
            updates.update(section.updates(by_feature.get(section.feature.name, {})))
        return updates


@dataclass
class ResultSlots:
    """How a tab shows a job: its output components, which one takes the progress HTML, what a finished
    job puts in them, and (optionally) what they show while it runs (`running(job)`: a value per output,
    `gr.skip()` for those that did not change; its progress slot is overwritten)."""

    outputs: list
    progress: int
    finish: Callable[[Job], list]
    running: Callable[[Job], list] | None = None

    def only_progress(self, html: str) -> list:
        values = [gr.skip()] * len(self.outputs)
        values[self.progress] = html
        return values

    def while_running(self, job: Job, html: str) -> list:
        if self.running is None:
            return self.only_progress(html)
        values = list(self.running(job))
        values[self.progress] = html
        return values


@dataclass
class JobRunner:
    """Admits a tab's request and streams its progress until the job ends; one job per session and tab."""

    easel: Easel
    admission: Admission
    gate: Gate | None = None
    jobs: dict[tuple[str, str], Job] = field(default_factory=dict)  # (owner, kind) -> the page's running job

    def run(self, kind: str, build: Callable[[], Any], request: gr.Request, slots: ResultSlots) -> Iterator[list]:
        caller = ui_caller(request, self.gate)
        try:
            job = self.admission.submit(kind, build(), caller).job
        except ValidationError as e:
            yield slots.only_progress(error_html(describe_validation_error(e)))
            return
        except (ValueError, TooManyJobs) as e:  # FieldError from admission, a tab's own check, a full queue
            yield slots.only_progress(error_html(str(e)))
            return
        key = (caller.owner, kind)
        self.jobs[key] = job
        try:
            while not job.wait(POLL_SECONDS):
                yield slots.while_running(job, progress_html(job, self.easel.queue.position(job)))
        finally:
            if self.jobs.get(key) is job:
                del self.jobs[key]
        if job.state is JobState.FAILED:
            yield slots.only_progress(error_html(job.error or "the job failed"))
            return
        yield slots.finish(job)

    def interrupter(self, kind: str) -> Callable[[gr.Request], None]:
        """The Interrupt button of a tab: stops this page's running job of that tab's kind."""
        def interrupt(request: gr.Request) -> None:
            job = self.jobs.get((ui_caller(request, self.gate).owner, kind))
            if job is not None:
                self.easel.queue.interrupt(job.id)
        return interrupt
