"""The txt2img tab."""
from __future__ import annotations

import gradio as gr

from webui.generation.requests import Txt2ImgRequest
from webui.services import Easel

from .controls import SHARED_FIELDS, GenerationControls, JobRunner, ResultView


class Txt2ImgTab:
    def __init__(self, easel: Easel, checkpoint: gr.Dropdown, vae: gr.Dropdown | None = None):
        self.easel = easel
        self.controls = GenerationControls("txt2img", easel, checkpoint, vae)
        self.results = ResultView("txt2img")
        self.runner = JobRunner(easel)

    def build(self) -> None:
        c = self.controls
        generate, interrupt = c.prompt_row()
        with gr.Row():
            with gr.Column(scale=1):
                c.sampling()
                c.size()
                c.batch_cfg_seed()
            with gr.Column(scale=1):
                self.results.build()
        inputs = set(c.fields.values())
        generate.click(self.generate, inputs=inputs, outputs=self.results.outputs, concurrency_limit=None,
                       api_name="txt2img")
        interrupt.click(self.runner.interrupt, inputs=None, outputs=None, concurrency_limit=None, api_name=False)
        wire_seed_buttons(c, self.results)
        wire_paste_button(c)

    def generate(self, data: dict, request: gr.Request):
        def build() -> Txt2ImgRequest:
            return Txt2ImgRequest(**self.controls.request_values(data))
        yield from self.runner.run(build, lambda req, owner: self.easel.submit_txt2img(req, owner), request)


def wire_seed_buttons(controls: GenerationControls, results: ResultView) -> None:
    controls.dice.click(lambda: -1, inputs=None, outputs=controls.fields["seed"], api_name=False)
    controls.recycle.click(lambda s: s, inputs=results.last_seed, outputs=controls.fields["seed"], api_name=False)


def wire_paste_button(controls: GenerationControls) -> None:
    """↙: an infotext pasted into the prompt box fills every field it names (A1111's behaviour)."""
    targets = [comp for name, comp in controls.fields.items() if name not in SHARED_FIELDS]
    controls.paste.click(lambda text: controls.updates_from_infotext(text) or {},
                         inputs=controls.fields["prompt"], outputs=targets, api_name=False)
