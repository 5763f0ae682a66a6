"""The txt2img tab: prompt boxes, sampler controls, Generate/Interrupt, progress, gallery, infotext."""
from __future__ import annotations

from dataclasses import dataclass, field

import gradio as gr
from pydantic import ValidationError

from webui.generation.requests import GenerationParams, Txt2ImgRequest, describe_validation_error
from webui.generation.samplers import sampler_names, schedule_type_names
from webui.jobs.queue import Job, JobState
from webui.services import Easel, SavedResult

from .widgets import error_html, notice_html, progress_html, session_id

POLL_SECONDS = 0.25
DEFAULTS = GenerationParams()


@dataclass
class Txt2ImgTab:
    easel: Easel
    checkpoint: gr.Dropdown
    jobs: dict[str, Job] = field(default_factory=dict)  # the running job of each browser session

    def build(self) -> None:
        fields: dict[str, gr.components.Component] = {}
        with gr.Row():
            with gr.Column(scale=6):
                fields["prompt"] = gr.Textbox(label="Prompt", lines=3, elem_id="txt2img_prompt",
                                              placeholder="Prompt (Ctrl+Enter to generate)")
                fields["negative_prompt"] = gr.Textbox(label="Negative prompt", lines=2, elem_id="txt2img_neg_prompt")
            with gr.Column(scale=1, min_width=160):
                generate = gr.Button("Generate", variant="primary", elem_id="txt2img_generate")
                interrupt = gr.Button("Interrupt", elem_id="txt2img_interrupt")
        with gr.Row():
            with gr.Column(scale=1):
                with gr.Row():
                    fields["sampler_name"] = gr.Dropdown(sampler_names(), value=DEFAULTS.sampler_name,
                                                         label="Sampling method", elem_id="txt2img_sampling")
                    fields["scheduler"] = gr.Dropdown(schedule_type_names(), value=DEFAULTS.scheduler,
                                                      label="Schedule type", elem_id="txt2img_scheduler")
                fields["steps"] = gr.Slider(1, 150, value=DEFAULTS.steps, step=1, label="Sampling steps",
                                            elem_id="txt2img_steps")
                width, height = self.easel.default_size_for(self.checkpoint.value)
                with gr.Row():
                    fields["width"] = gr.Slider(64, 2048, value=width, step=8, label="Width", elem_id="txt2img_width")
                    fields["height"] = gr.Slider(64, 2048, value=height, step=8, label="Height",
                                                 elem_id="txt2img_height")
                with gr.Row():
                    fields["n_iter"] = gr.Slider(1, 100, value=1, step=1, label="Batch count", elem_id="txt2img_batch_count")
                    fields["batch_size"] = gr.Slider(1, 8, value=1, step=1, label="Batch size", elem_id="txt2img_batch_size")
                fields["cfg_scale"] = gr.Slider(1, 30, value=DEFAULTS.cfg_scale, step=0.5, label="CFG Scale",
                                                elem_id="txt2img_cfg_scale")
                with gr.Row():
                    fields["seed"] = gr.Number(value=-1, precision=0, label="Seed", elem_id="txt2img_seed", scale=4)
                    dice = gr.Button("🎲", elem_id="txt2img_random_seed", scale=1, min_width=40)
                    recycle = gr.Button("♻️", elem_id="txt2img_reuse_seed", scale=1, min_width=40)
                fields["clip_skip"] = gr.Slider(1, 12, value=1, step=1, label="Clip skip", elem_id="txt2img_clip_skip")
            with gr.Column(scale=1):
                progress = gr.HTML(elem_id="txt2img_progress")
                gallery = gr.Gallery(label="Output", format="png", columns=2, height=512, elem_id="txt2img_gallery",
                                     interactive=False)
                info = gr.Textbox(label="Generation parameters", lines=4, interactive=False, elem_id="txt2img_info",
                                  buttons=["copy"])
        last_seed = gr.State(-1)
        fields["checkpoint"] = self.checkpoint
        self.fields = fields
        self.outputs = (gallery, info, progress, last_seed)

        inputs = set(fields.values())
        generate.click(self.generate, inputs=inputs, outputs=[gallery, info, progress, last_seed],
                       concurrency_limit=None, api_name="txt2img")
        interrupt.click(self.interrupt, inputs=None, outputs=None, concurrency_limit=None, api_name=False)
        dice.click(lambda: -1, inputs=None, outputs=fields["seed"], api_name=False)
        recycle.click(lambda s: s, inputs=last_seed, outputs=fields["seed"], api_name=False)

    def _request(self, data: dict) -> Txt2ImgRequest:
        values = {name: data[comp] for name, comp in self.fields.items()}
        for name in ("steps", "n_iter", "batch_size", "clip_skip", "width", "height", "seed"):
            if values[name] is not None:
                values[name] = int(values[name])
        values["checkpoint"] = values["checkpoint"] or None
        return Txt2ImgRequest(**values)

    def generate(self, data: dict, request: gr.Request):
        try:
            req = self._request(data)
        except ValidationError as e:
            yield gr.skip(), gr.skip(), error_html(describe_validation_error(e)), gr.skip()
            return
        owner = session_id(request)
        job = self.easel.submit_txt2img(req, owner=owner)
        self.jobs[owner] = job
        try:
            while not job.wait(POLL_SECONDS):
                yield gr.skip(), gr.skip(), progress_html(job, self.easel.queue.position(job)), gr.skip()
        finally:
            if self.jobs.get(owner) is job:
                del self.jobs[owner]
        if job.state is JobState.FAILED:
            yield gr.skip(), gr.skip(), error_html(job.error or "generation failed"), gr.skip()
            return
        saved: SavedResult | None = job.result
        if saved is None or not saved.result.images:
            yield gr.skip(), gr.skip(), notice_html("Interrupted: no image was finished"), gr.skip()
            return
        result = saved.result
        images = [(str(p), None) for p in saved.paths] or list(result.images)
        note = f"Interrupted after {len(result.images)} image(s)" if result.interrupted else (
            f"{len(result.images)} image(s) in {result.seconds:.1f}s")
        yield images, result.infotexts[0], notice_html(note), result.seeds[0]

    def interrupt(self, request: gr.Request) -> None:
        job = self.jobs.get(session_id(request))
        if job is not None:
            self.easel.queue.interrupt(job.id)
