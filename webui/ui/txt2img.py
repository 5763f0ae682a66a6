"""The txt2img tab."""
from __future__ import annotations

import gradio as gr

from webui.generation.requests import Txt2ImgRequest, fields_from_infotext

from .controlnet import controlnet_section
from .controls import SHARED_FIELDS, GenerationControls, JobRunner
from .result_view import ResultView, load_sent_image


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
                controlnet_section(c, "txt2img")
                c.script_section("txt2img")
            with gr.Column(scale=1):
                self.results.build()
                self.upscale = gr.Button("Upscale this image (hires fix, same seed)", size="sm",
                                         elem_id="txt2img_upscale")
        generate.click(self.generate, inputs=c.inputs, outputs=self.results.slots.outputs, concurrency_limit=None,
                       api_name="txt2img")
        self.upscale.click(self.upscale_selected, inputs=c.inputs | {self.results.images, self.results.selected},
                           outputs=self.results.slots.outputs, concurrency_limit=None, api_name=False)
        interrupt.click(self.runner.interrupter("txt2img"), inputs=None, outputs=None, concurrency_limit=None,
                        api_name=False)
        wire_seed_buttons(c, self.results)
        wire_paste_button(c)

    def generate(self, data: dict, request: gr.Request):
        def build() -> Txt2ImgRequest:
            return Txt2ImgRequest(**self.controls.request_values(data))
        yield from self.runner.run("txt2img", build, request, self.results.slots)

    def upscale_selected(self, data: dict, request: gr.Request):
        """A1111's "upscale" action: the selected result again, with its own prompt and seeds, through the
        hires fix as set in its accordion (switched on) and one image."""
        def build() -> Txt2ImgRequest:
            images = data[self.results.images] or []
            if not images:
                raise ValueError("seed: generate an image first, then upscale it")
            _, infotext = load_sent_image(images[min(data[self.results.selected] or 0, len(images) - 1)])
            values = self.controls.request_values(data)
            own = fields_from_infotext(infotext, Txt2ImgRequest)
            values.update({k: own[k] for k in ("prompt", "negative_prompt", "seed", "subseed", "subseed_strength",
                                               "width", "height") if k in own})
            scripts = dict(values.get("alwayson_scripts", {}))
            scripts["hires fix"] = {**scripts.get("hires fix", {}), "enable_hr": True}
            return Txt2ImgRequest(**{**values, "batch_size": 1, "n_iter": 1, "alwayson_scripts": scripts})
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
