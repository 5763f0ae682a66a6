"""The txt2img tab."""
from __future__ import annotations

import gradio as gr

from webui.generation.requests import Txt2ImgRequest

from .controls import SHARED_FIELDS, GenerationControls, JobRunner
from .result_view import ResultView


class Txt2ImgTab:
    def __init__(self, controls: GenerationControls, runner: JobRunner):
        self.controls = controls
        self.results = ResultView("txt2img")
        self.runner = runner

    def build(self) -> None:
        c = self.controls
        generate, interrupt = c.prompt_row()
        with gr.Row():
            with gr.Column(scale=1):
                c.sampling()
                c.size()
                c.batch_cfg_seed()
                c.pickers()
                c.feature_sections("txt2img")
            with gr.Column(scale=1):
                self.results.build()
        generate.click(self.generate, inputs=c.inputs, outputs=self.results.slots.outputs, concurrency_limit=None,
                       api_name="txt2img")
        interrupt.click(self.runner.interrupter("txt2img"), inputs=None, outputs=None, concurrency_limit=None,
                        api_name=False)
        wire_seed_buttons(c, self.results)
        wire_paste_button(c)

    def generate(self, data: dict, request: gr.Request):
        def build() -> Txt2ImgRequest:
            return Txt2ImgRequest(**self.controls.request_values(data))
        yield from self.runner.run("txt2img", build, request, self.results.slots)


def wire_seed_buttons(controls: GenerationControls, results: ResultView) -> None:
    controls.dice.click(lambda: -1, inputs=None, outputs=controls.fields["seed"], api_name=False)
    controls.recycle.click(lambda s: s, inputs=results.last_seed, outputs=controls.fields["seed"], api_name=False)


def wire_paste_button(controls: GenerationControls) -> None:
    """The paste button: an infotext pasted into the prompt box fills every field it names (A1111's ↙)."""
    targets = [comp for name, comp in controls.fields.items() if name not in SHARED_FIELDS]
    targets += [w for section in controls.sections for w in section.widgets.values()]
    controls.paste.click(lambda text: controls.updates_from_infotext(text) or {},
                         inputs=controls.fields["prompt"], outputs=targets, api_name=False)
