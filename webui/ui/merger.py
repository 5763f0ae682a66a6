"""The Checkpoint Merger tab (A1111's): two or three checkpoints into a new .safetensors file."""
from __future__ import annotations

import html

import gradio as gr

from webui.errors import TooManyJobs
from webui.models.merge import METHODS, WEIGHTED_SUM, MergeRequest

from .controls import JobRunner
from .widgets import error_html, notice_html, progress_html, ui_caller

POLL_SECONDS = 0.3


class MergerTab:
    def __init__(self, runner: JobRunner, checkpoint: gr.Dropdown):
        self.runner = runner
        self.easel = runner.easel
        self.checkpoint = checkpoint  # the page's own picker: the new checkpoint shows there at once

    def build(self) -> None:
        titles = self.easel.manager.titles()
        vaes = [v for v in self.easel.vaes.choices() if v not in ("Automatic",)]
        with gr.Row():
            with gr.Column():
                with gr.Row():
                    self.primary = gr.Dropdown(titles, label="Primary model (A)",
                                               elem_id="modelmerger_primary_model_name")
                    self.secondary = gr.Dropdown(titles, label="Secondary model (B)",
                                                 elem_id="modelmerger_secondary_model_name")
                    self.tertiary = gr.Dropdown(titles, label="Tertiary model (C)",
                                                elem_id="modelmerger_tertiary_model_name")
                    refresh = gr.Button("Refresh", size="sm", elem_id="modelmerger_refresh")
                self.name = gr.Textbox(label="Custom name (optional)", elem_id="modelmerger_custom_name")
                self.multiplier = gr.Slider(0.0, 1.0, value=0.3, step=0.05, label="Multiplier (M)",
                                            elem_id="modelmerger_interp_amount")
                self.method = gr.Radio(list(METHODS), value=WEIGHTED_SUM, label="Interpolation Method",
                                       elem_id="modelmerger_interp_method")
                self.fp16 = gr.Checkbox(label="Save as float16", elem_id="modelmerger_save_as_half")
                self.bake_vae = gr.Dropdown(vaes, value="None", label="Bake in VAE", elem_id="modelmerger_bake_in_vae")
                self.discard = gr.Textbox(label="Discard weights with matching name (regular expressions, comma-"
                                                "separated)", elem_id="modelmerger_discard_weights")
                merge = gr.Button("Merge", variant="primary", elem_id="modelmerger_merge")
            with gr.Column():
                self.status = gr.HTML(elem_id="modelmerger_result")
        pickers = [self.primary, self.secondary, self.tertiary, self.checkpoint]
        inputs = [self.primary, self.secondary, self.tertiary, self.name, self.method, self.multiplier, self.fp16, self.bake_vae, self.discard]
        merge.click(self.merge, inputs=inputs, outputs=[self.status, *pickers], concurrency_limit=None,
                    api_name=False)
        refresh.click(self.refreshed, inputs=None, outputs=pickers, api_name=False)

    def refreshed(self):
        self.easel.refresh()
        titles = self.easel.manager.titles()
        return [gr.Dropdown(choices=titles) for _ in range(4)]

    def merge(self, primary, secondary, tertiary, name, method, multiplier, fp16, bake_vae, discard,
              request: gr.Request):
        skip = [gr.skip()] * 4
        try:
            merge_request = MergeRequest(primary=primary or "", secondary=secondary or "", tertiary=tertiary or "",
                                         name=name or "", method=method, multiplier=multiplier, fp16=bool(fp16),
                                         bake_vae="" if bake_vae in (None, "None") else bake_vae,
                                         discard=discard or "")
            job = self.runner.admission.submit("merge", merge_request, ui_caller(request, self.runner.gate)).job
        except (ValueError, TooManyJobs) as e:
            yield [error_html(str(e)), *skip]
            return
        while not job.wait(POLL_SECONDS):
            yield [progress_html(job, self.easel.queue.position(job)), *skip]
        if job.error:
            yield [error_html(job.error), *skip]
            return
        if job.result is None:
            yield [notice_html("Interrupted: nothing was written"), *skip]
            return
        yield [notice_html(f"Checkpoint saved to {html.escape(job.result.name)} and listed"), *self.refreshed()]
