"""The img2img tab with its modes: img2img, Sketch, Inpaint (mask brush) and Inpaint upload."""
from __future__ import annotations

from typing import Any

import gradio as gr
import numpy as np
from PIL import Image

from webui.generation.builtins import round8
from webui.generation.masks import to_rgb
from webui.images.decode import open_image
from webui.generation.requests import Img2ImgRequest

from .controlnet import controlnet_section
from .controls import GenerationControls, JobRunner
from .result_view import ResultView
from .txt2img import wire_paste_button, wire_seed_buttons

MODES = ("img2img", "sketch", "inpaint", "inpaint_upload")
SKETCH_COLOURS = ["#000000", "#ffffff", "#ff0000", "#00a000", "#0000ff", "#ffff00", "#ff8000", "#8000ff"]


def picture(source: Any, field: str) -> Image.Image | None:
    """An upload as a picture: Gradio hands over file paths, which are checked from their header before
    they are decoded (webui/images/decode.py); pictures set by "send to" may already be images."""
    if source is None or isinstance(source, Image.Image):
        return source
    return open_image(source, field)


def mask_from_layers(value: dict | None) -> Image.Image | None:
    """The union of the editor's brush layers (any painted, non-transparent pixel) as an L mask."""
    if not value or not value.get("layers"):
        return None
    layers = [picture(layer, "mask") for layer in value["layers"] if layer is not None]
    alphas = [np.asarray(layer.convert("RGBA"))[..., 3] for layer in layers]
    if not alphas:
        return None
    return Image.fromarray((np.maximum.reduce(alphas) > 0).astype(np.uint8) * 255, "L")


class Img2ImgTab:
    def __init__(self, controls: GenerationControls, runner: JobRunner):
        self.controls = controls
        self.results = ResultView("img2img")
        self.runner = runner

    def build(self) -> None:
        c, f = self.controls, self.controls.fields
        generate, interrupt = c.prompt_row()
        self.mode = gr.State("img2img")
        with gr.Row():
            with gr.Column(scale=1):
                with gr.Tabs(elem_id="mode_img2img") as self.mode_tabs:
                    with gr.Tab("img2img", id="img2img", elem_id="img2img_img2img_tab") as t0:
                        self.init_image = gr.Image(label="Image for img2img", type="filepath", image_mode=None,
                                                   format="png", sources=["upload", "clipboard"],
                                                   elem_id="img2img_image", height=420)
                    with gr.Tab("Sketch", id="sketch", elem_id="img2img_sketch_tab") as t1:
                        self.sketch = gr.ImageEditor(label="Sketch", type="filepath", format="png", elem_id="img2img_sketch",
                                                     brush=gr.Brush(colors=SKETCH_COLOURS, color_mode="defaults"),
                                                     sources=["upload", "clipboard"], height=420)
                    with gr.Tab("Inpaint", id="inpaint", elem_id="img2img_inpaint_tab") as t2:
                        self.inpaint = gr.ImageEditor(label="Image and mask: paint the area to regenerate",
                                                      type="filepath", format="png", elem_id="img2img_inpaint",
                                                      brush=gr.Brush(colors=[("#ffffff", 0.75)], color_mode="fixed",
                                                                     default_size=16),
                                                      eraser=gr.Eraser(default_size=16), layers=False,
                                                      sources=["upload", "clipboard"], height=420)
                    with gr.Tab("Inpaint upload", id="inpaint_upload", elem_id="img2img_inpaint_upload_tab") as t3:
                        self.upload_image = gr.Image(label="Image", type="filepath", image_mode=None, format="png",
                                                     elem_id="img2img_upload_image")
                        self.upload_mask = gr.Image(label="Mask (white = regenerate)", type="filepath", image_mode=None,
                                                    format="png", elem_id="img2img_upload_mask")
                for tab, mode in zip((t0, t1, t2, t3), MODES):
                    tab.select(lambda m=mode: m, inputs=None, outputs=self.mode, api_name=False)
                c.add("resize_mode")
                with gr.Group(elem_id="img2img_inpaint_options"):
                    with gr.Row():
                        c.add("mask_blur")
                        c.add("inpainting_mask_invert")
                    c.add("inpainting_fill")
                    with gr.Row():
                        c.add("inpaint_full_res")
                        c.add("inpaint_full_res_padding")
                c.sampling()
                c.size()
                c.batch_cfg_seed()
                c.add("denoising_strength")
                c.pickers()
                c.feature_sections("img2img")
                controlnet_section(c, "img2img")
                c.script_section("img2img")
            with gr.Column(scale=1):
                self.results.build()
        inputs = c.inputs | {self.mode, self.init_image, self.sketch, self.inpaint, self.upload_image, self.upload_mask}
        generate.click(self.generate, inputs=inputs, outputs=self.results.slots.outputs, concurrency_limit=None,
                       api_name="img2img")
        interrupt.click(self.runner.interrupter("img2img"), inputs=None, outputs=None, concurrency_limit=None,
                        api_name=False)
        wire_seed_buttons(c, self.results)
        wire_paste_button(c)
        for image in (self.init_image, self.upload_image):  # a new picture sets the size, as A1111 does
            image.upload(self._size_of, inputs=image, outputs=[f["width"], f["height"]], api_name=False)

    @staticmethod
    def _size_of(path: str | None):
        if path is None:
            return gr.skip(), gr.skip()
        with Image.open(path) as image:  # the header is enough
            return round8(image.width), round8(image.height)

    def images_for_mode(self, data: dict) -> tuple[Image.Image | None, Image.Image | None]:
        mode = data[self.mode]
        if mode == "sketch":
            value = data[self.sketch] or {}
            return picture(value.get("composite") or value.get("background"), "init_image"), None
        if mode == "inpaint":
            value = data[self.inpaint] or {}
            background = picture(value.get("background"), "init_image")
            mask = mask_from_layers(value)
            if background is not None and mask is None:  # nothing painted: the request's own check says so
                mask = Image.new("L", background.size, 0)
            return background, mask
        if mode == "inpaint_upload":
            if data[self.upload_mask] is None and data[self.upload_image] is not None:
                raise ValueError("mask: upload a mask image (white = regenerate)")
            return picture(data[self.upload_image], "init_image"), picture(data[self.upload_mask], "mask")
        return picture(data[self.init_image], "init_image"), None

    def generate(self, data: dict, request: gr.Request):
        def build() -> Img2ImgRequest:
            image, mask = self.images_for_mode(data)
            if image is None:
                raise ValueError("init_image: drop, paste or upload an image first")
            values: dict[str, Any] = self.controls.request_values(data)
            return Img2ImgRequest(**values, init_image=to_rgb(image), mask=mask)
        yield from self.runner.run("img2img", build, request, self.results.slots)
