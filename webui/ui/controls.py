"""Widgets shared by every generation tab, and the plumbing from widget values to a typed request.

Each tab builds the same controls under its own elem_id prefix (`txt2img_steps`, `img2img_steps`, …),
keyed by the request's field names, so turning a click into a request is a dict lookup and filling
the controls from an infotext ("send to", the ↙ paste button) is the reverse lookup.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterator

import gradio as gr
from pydantic import ValidationError

from webui.generation.requests import GenerationParams, describe_validation_error, fields_from_infotext
from webui.generation.samplers import sampler_names, schedule_type_names
from webui.jobs.queue import Job, JobState
from webui.services import Easel, SavedResult

from .widgets import error_html, notice_html, progress_html, session_id

POLL_SECONDS = 0.25
DEFAULTS = GenerationParams()
SHARED_FIELDS = ("checkpoint", "vae")  # page-wide pickers, not per-tab controls
INT_FIELDS = {"steps", "n_iter", "batch_size", "clip_skip", "width", "height", "seed", "mask_blur",
              "inpaint_full_res_padding"}


@dataclass
class GenerationControls:
    """The prompt, sampler, size, batch and seed widgets of one tab."""

    prefix: str
    easel: Easel
    checkpoint: gr.Dropdown
    vae: gr.Dropdown | None = None
    fields: dict[str, Any] = field(default_factory=dict)

    def prompt_row(self) -> tuple[gr.Button, gr.Button]:
        p = self.prefix
        with gr.Row():
            with gr.Column(scale=6):
                self.fields["prompt"] = gr.Textbox(label="Prompt", lines=3, elem_id=f"{p}_prompt",
                                                   placeholder="Prompt (Ctrl+Enter to generate)")
                self.fields["negative_prompt"] = gr.Textbox(label="Negative prompt", lines=2,
                                                            elem_id=f"{p}_neg_prompt")
            with gr.Column(scale=1, min_width=160):
                generate = gr.Button("Generate", variant="primary", elem_id=f"{p}_generate")
                interrupt = gr.Button("Interrupt", elem_id=f"{p}_interrupt")
                self.paste = gr.Button("↙️ Read parameters from prompt", elem_id=f"{p}_paste", size="sm")
        return generate, interrupt

    def sampling(self) -> None:
        p, f = self.prefix, self.fields
        with gr.Row():
            f["sampler_name"] = gr.Dropdown(sampler_names(), value=DEFAULTS.sampler_name, label="Sampling method",
                                            elem_id=f"{p}_sampling")
            f["scheduler"] = gr.Dropdown(schedule_type_names(), value=DEFAULTS.scheduler, label="Schedule type",
                                         elem_id=f"{p}_scheduler")
        f["steps"] = gr.Slider(1, 150, value=DEFAULTS.steps, step=1, label="Sampling steps", elem_id=f"{p}_steps")

    def size(self) -> None:
        p, f = self.prefix, self.fields
        width, height = self.easel.default_size_for(self.checkpoint.value)
        with gr.Row():
            f["width"] = gr.Slider(64, 2048, value=width, step=8, label="Width", elem_id=f"{p}_width")
            f["height"] = gr.Slider(64, 2048, value=height, step=8, label="Height", elem_id=f"{p}_height")

    def batch_cfg_seed(self) -> None:
        p, f = self.prefix, self.fields
        with gr.Row():
            f["n_iter"] = gr.Slider(1, 100, value=1, step=1, label="Batch count", elem_id=f"{p}_batch_count")
            f["batch_size"] = gr.Slider(1, 8, value=1, step=1, label="Batch size", elem_id=f"{p}_batch_size")
        f["cfg_scale"] = gr.Slider(1, 30, value=DEFAULTS.cfg_scale, step=0.5, label="CFG Scale",
                                   elem_id=f"{p}_cfg_scale")
        with gr.Row():
            f["seed"] = gr.Number(value=-1, precision=0, label="Seed", elem_id=f"{p}_seed", scale=4)
            self.dice = gr.Button("🎲", elem_id=f"{p}_random_seed", scale=1, min_width=40)
            self.recycle = gr.Button("♻️", elem_id=f"{p}_reuse_seed", scale=1, min_width=40)
        f["clip_skip"] = gr.Slider(1, 12, value=1, step=1, label="Clip skip", elem_id=f"{p}_clip_skip")
        f["checkpoint"] = self.checkpoint
        if self.vae is not None:
            f["vae"] = self.vae

    def request_values(self, data: dict) -> dict[str, Any]:
        values = {name: data[comp] for name, comp in self.fields.items() if comp in data}
        for name in INT_FIELDS & values.keys():
            if values[name] is not None:
                values[name] = int(values[name])
        values["checkpoint"] = values.get("checkpoint") or None
        values["vae"] = values.get("vae") or None
        return values

    def updates_from_infotext(self, text: str) -> dict:
        """{component: value} for every control an infotext names (others untouched)."""
        fields = fields_from_infotext(text or "")
        return {comp: fields[name] for name, comp in self.fields.items()
                if name in fields and name not in SHARED_FIELDS}


@dataclass
class ResultView:
    """The right-hand column of a tab: progress, gallery, infotext, and what "send to" needs."""

    prefix: str

    def build(self) -> None:
        p = self.prefix
        self.progress = gr.HTML(elem_id=f"{p}_progress")
        self.gallery = gr.Gallery(label="Output", format="png", columns=2, height=512, elem_id=f"{p}_gallery",
                                  interactive=False)
        self.info = gr.Textbox(label="Generation parameters", lines=4, interactive=False, elem_id=f"{p}_info",
                               buttons=["copy"])
        with gr.Row():
            self.send_txt2img = gr.Button("Send to txt2img", size="sm", elem_id=f"{p}_send_to_txt2img")
            self.send_img2img = gr.Button("Send to img2img", size="sm", elem_id=f"{p}_send_to_img2img")
            self.send_inpaint = gr.Button("Send to inpaint", size="sm", elem_id=f"{p}_send_to_inpaint")
        self.last_seed = gr.State(-1)
        self.images = gr.State([])  # paths (or PIL images) of the last results, for "send to"
        self.selected = gr.State(0)
        self.gallery.select(_selected_index, inputs=None, outputs=self.selected, api_name=False)

    @property
    def outputs(self) -> list:
        return [self.gallery, self.info, self.progress, self.last_seed, self.images, self.selected]


def _selected_index(evt: gr.SelectData) -> int:
    return int(evt.index or 0)


@dataclass
class JobRunner:
    """Submits a tab's request to the queue and streams progress until the job ends; one job per session."""

    easel: Easel
    jobs: dict[str, Job] = field(default_factory=dict)

    def run(self, build: Callable[[], GenerationParams], submit: Callable[[GenerationParams, str], Job],
            request: gr.Request) -> Iterator[tuple]:
        skip = gr.skip()
        try:
            req = build()
        except ValidationError as e:
            yield skip, skip, error_html(describe_validation_error(e)), skip, skip, skip
            return
        except ValueError as e:
            yield skip, skip, error_html(str(e)), skip, skip, skip
            return
        owner = session_id(request)
        job = submit(req, owner)
        self.jobs[owner] = job
        try:
            while not job.wait(POLL_SECONDS):
                yield skip, skip, progress_html(job, self.easel.queue.position(job)), skip, skip, skip
        finally:
            if self.jobs.get(owner) is job:
                del self.jobs[owner]
        if job.state is JobState.FAILED:
            yield skip, skip, error_html(job.error or "generation failed"), skip, skip, skip
            return
        saved: SavedResult | None = job.result
        if saved is None or not saved.result.images:
            yield skip, skip, notice_html("Interrupted: no image was finished"), skip, skip, skip
            return
        result = saved.result
        shown = [str(p) for p in saved.paths] or list(result.images)
        note = (f"Interrupted after {len(result.images)} image(s)" if result.interrupted
                else f"{len(result.images)} image(s) in {result.seconds:.1f}s")
        yield [(im, None) for im in shown], result.infotexts[0], notice_html(note), result.seeds[0], shown, 0

    def interrupt(self, request: gr.Request) -> None:
        job = self.jobs.get(session_id(request))
        if job is not None:
            self.easel.queue.interrupt(job.id)
