"""The Extras tab (A1111's postprocessing): one picture, several at once, or a folder on the server, upscaled
with one or two upscalers; *Scale by* (with a max side) or *Scale to* W×H with crop."""
from __future__ import annotations

from typing import Any

import gradio as gr

from webui.features.extras import ExtrasRequest
from webui.jobs.queue import Job

from .controls import JobRunner, ResultSlots, request_value, widget
from .img2img import picture
from .widgets import notice_html

FIELDS = ("upscaling_resize", "upscaling_max_side", "upscaling_resize_w", "upscaling_resize_h", "upscaling_crop",
          "upscaler_1", "upscaler_2", "extras_upscaler_2_visibility")


class ExtrasTab:
    def __init__(self, runner: JobRunner):
        self.runner = runner
        self.easel = runner.easel

    def build(self) -> None:
        self.fields: dict[str, Any] = {}
        names = self.easel.upscalers.names()
        with gr.Row():
            with gr.Column(scale=1):
                with gr.Tabs(elem_id="extras_source_tabs") as self.sources:
                    with gr.Tab("Single Image", id="single", elem_id="extras_single_tab") as single:
                        self.image = gr.Image(label="Source", type="filepath", image_mode=None, format="png",
                                              sources=["upload", "clipboard"], elem_id="extras_image", height=360)
                    with gr.Tab("Batch Process", id="batch", elem_id="extras_batch_tab") as batch:
                        self.files = gr.File(label="Pictures", file_count="multiple", file_types=["image"],
                                             elem_id="extras_image_batch")
                    with gr.Tab("Batch from Directory", id="folder", elem_id="extras_batch_directory_tab") as folder:
                        self.folder = gr.Textbox(label="Input directory (on the server: inside the data folder or "
                                                       "an --extras-folder; admins only with logins)",
                                                 elem_id="extras_batch_input_dir")
                self.source = gr.State("single")
                for tab, name in ((single, "single"), (batch, "batch"), (folder, "folder")):
                    tab.select(lambda n=name: n, inputs=None, outputs=self.source, api_name=False)
                with gr.Tabs(elem_id="extras_resize_mode"):
                    with gr.Tab("Scale by", id="scale_by", elem_id="extras_scale_by_tab") as scale_by:
                        with gr.Row():
                            self.add("upscaling_resize")
                            self.add("upscaling_max_side")
                    with gr.Tab("Scale to", id="scale_to", elem_id="extras_scale_to_tab") as scale_to:
                        with gr.Row():
                            self.add("upscaling_resize_w")
                            self.add("upscaling_resize_h")
                        self.add("upscaling_crop")
                self.mode = gr.State(0)
                scale_by.select(lambda: 0, inputs=None, outputs=self.mode, api_name=False)
                scale_to.select(lambda: 1, inputs=None, outputs=self.mode, api_name=False)
                self.add("upscaler_1", choices=names)
                with gr.Row():
                    self.add("upscaler_2", choices=names)
                    self.add("extras_upscaler_2_visibility")
                problems = {r["problem"] for r in self.easel.upscalers.describe() if r["problem"]}
                if problems:
                    gr.HTML(notice_html("Model upscalers are unavailable here: " + "; ".join(sorted(problems))),
                            elem_id="extras_upscalers_problem")
                with gr.Row():
                    generate = gr.Button("Generate", variant="primary", elem_id="extras_generate")
                    interrupt = gr.Button("Interrupt", elem_id="extras_interrupt")
            with gr.Column(scale=1):
                self.progress = gr.HTML(elem_id="extras_progress")
                self.gallery = gr.Gallery(label="Result", format="png", columns=2, height=512,
                                          elem_id="extras_gallery", interactive=False)
                self.info = gr.HTML(elem_id="extras_info")
        self.slots = ResultSlots([self.gallery, self.info, self.progress], progress=2, finish=self.finish)
        inputs = {self.image, self.files, self.folder, self.source, self.mode, *self.fields.values()}
        generate.click(self.generate, inputs=inputs, outputs=self.slots.outputs, concurrency_limit=None,
                       api_name="extras")
        interrupt.click(self.runner.interrupter("extras"), inputs=None, outputs=None, concurrency_limit=None,
                        api_name=False)

    def add(self, name: str, **kw: Any) -> Any:
        self.fields[name] = widget(ExtrasRequest, name, f"extras_{name}", **kw)
        return self.fields[name]

    def request_from(self, data: dict) -> ExtrasRequest:
        values = {name: request_value(ExtrasRequest, name, data[w]) for name, w in self.fields.items()}
        values = {k: v for k, v in values.items() if v is not None}
        source = data[self.source]
        if source == "folder":
            return ExtrasRequest(**values, resize_mode=data[self.mode], folder=(data[self.folder] or "").strip()
                                 or None)
        if source == "batch":
            paths = [getattr(f, "name", f) for f in (data[self.files] or [])]
            return ExtrasRequest(**values, resize_mode=data[self.mode], images=[picture(p, "images") for p in paths])
        image = data[self.image]
        return ExtrasRequest(**values, resize_mode=data[self.mode],
                             images=[picture(image, "image")] if image else [])

    def generate(self, data: dict, request: gr.Request):
        yield from self.runner.run("extras", lambda: self.request_from(data), request, self.slots)

    @staticmethod
    def finish(job: Job) -> list:
        made = job.result
        if made is None or not made.infotexts:
            return [gr.skip(), gr.skip(), notice_html("Interrupted before the first picture")]
        shown = [str(p) for p in made.paths] or list(made.images)
        note = (f"Interrupted after {len(made.infotexts)} picture(s)" if made.interrupted
                else f"{len(made.infotexts)} picture(s) in {made.seconds:.1f}s")
        return [[(item, None) for item in shown], notice_html(made.info), notice_html(note)]
