"""The Outpaint tab: the infinite canvas (static/canvas.js) beside the usual generation controls.

The canvas itself is browser code talking to `/easel/v1/canvas`; this tab only lays out the
controls and hands their current values to the canvas when Generate is pressed (Gradio passes
the values to the `js` function, so nothing goes through hidden textboxes and no Python runs).
The checkpoint, prompt, sampler, steps, CFG and seed are the same `GenerationControls` as in
txt2img, so "↙ paste" and infotexts work the same way here.
"""
from __future__ import annotations

import html
import json

import gradio as gr

from webui.generation.outpaint import default_box_size

from .controls import GenerationControls
from .txt2img import wire_paste_button

PREFILLS = (("Stretched, blurred neighbours", "blur"), ("Latent noise", "noise"))
# what the canvas sends to /easel/v1/canvas/generate (plus "vae" when the page has the VAE picker)
REQUEST_FIELDS = ("prompt", "negative_prompt", "sampler_name", "scheduler", "steps", "width", "height", "n_iter",
                  "batch_size", "cfg_scale", "seed", "clip_skip", "checkpoint", "overlap", "prefill",
                  "outpaint_strength", "denoising_strength")


def canvas_html(width: int, height: int) -> str:
    """The element canvas.js mounts into; it carries the box size the page starts with."""
    return (f'<div id="outpaint_canvas_root" class="easel-canvas-root" data-width="{int(width)}" '
            f'data-height="{int(height)}">{html.escape("Loading the canvas…")}</div>')


class OutpaintTab:
    def __init__(self, controls: GenerationControls):
        self.controls = controls
        self.checkpoint = controls.checkpoint

    def build(self) -> None:
        c = self.controls
        generate, interrupt = c.prompt_row(styles=False)  # the canvas sends its own fields
        width, height = default_box_size(c.easel.default_size_for(self.checkpoint.value))
        with gr.Row():
            with gr.Column(scale=3):
                gr.HTML(canvas_html(width, height), elem_id="outpaint_canvas", js_on_load=None)
                gr.Markdown("Drag the box (it snaps to 8 px), drag elsewhere to pan, scroll to zoom, drop an image "
                            "to place it. An empty box is txt2img, a covered one img2img, anything in between "
                            "grows the picture into the empty part.", elem_id="outpaint_help")
            with gr.Column(scale=1, min_width=320):
                with gr.Row():
                    c.add("width", value=width)
                    c.add("height", value=height)
                c.sampling()
                c.batch_cfg_seed()
                c.add("overlap")
                c.add("prefill", choices=list(PREFILLS))
                c.add("outpaint_strength")
                c.add("denoising_strength")
                c.pickers()
        self.wire(generate, interrupt)

    def wire(self, generate: gr.Button, interrupt: gr.Button) -> None:
        c, f = self.controls, self.controls.fields
        sent = REQUEST_FIELDS + (("vae",) if "vae" in f else ())
        names = json.dumps(sent)
        generate.click(None, inputs=[f[n] for n in sent], outputs=None,
                       js=f"(...values) => {{ window.easelCanvas.generate({names}, values); }}", api_name=False)
        interrupt.click(None, js="() => { window.easelCanvas.interrupt(); }", api_name=False)
        size = [f["width"], f["height"]]
        for slider in size:
            slider.change(None, inputs=size, js="(w, h) => { window.easelCanvas.setBoxSize(w, h); }", api_name=False)
        c.dice.click(None, outputs=f["seed"], js="() => -1", api_name=False)
        c.recycle.click(None, inputs=f["seed"], outputs=f["seed"], js="(s) => window.easelCanvas.lastSeed(s)",
                        api_name=False)
        wire_paste_button(c)
        self.checkpoint.input(self.box_size_for, inputs=self.checkpoint, outputs=size, api_name=False)

    def box_size_for(self, name: str | None):
        """A new checkpoint's box: 512, or its trained size when smaller."""
        if not name:
            return gr.skip(), gr.skip()
        return default_box_size(self.controls.easel.default_size_for(name))
