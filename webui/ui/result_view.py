"""The right-hand column of a generation tab: progress, gallery, infotext, and what "send to" needs."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import gradio as gr
from PIL import Image

from webui.images.store import read_infotext
from webui.jobs.queue import Job
from webui.services import SavedResult

from .controls import ResultSlots
from .widgets import notice_html


@dataclass
class ResultView:
    prefix: str
    label: str = "Output"
    columns: int = 2

    def build(self) -> None:
        p = self.prefix
        self.progress = gr.HTML(elem_id=f"{p}_progress")
        self.gallery = gr.Gallery(label=self.label, format="png", columns=self.columns, height=512,
                                  elem_id=f"{p}_gallery", interactive=False)
        self.info = gr.Textbox(label="Generation parameters", lines=4, interactive=False, elem_id=f"{p}_info",
                               buttons=["copy"])
        with gr.Row():
            self.send_txt2img = gr.Button("Send to txt2img", size="sm", elem_id=f"{p}_send_to_txt2img")
            self.send_img2img = gr.Button("Send to img2img", size="sm", elem_id=f"{p}_send_to_img2img")
            self.send_inpaint = gr.Button("Send to inpaint", size="sm", elem_id=f"{p}_send_to_inpaint")
            self.send_extras = gr.Button("Send to extras", size="sm", elem_id=f"{p}_send_to_extras")
            self.find_similar = gr.Button("Find similar", size="sm", elem_id=f"{p}_find_similar")
        self.last_seed = gr.State(-1)
        self.images = gr.State([])  # paths (or PIL images) of the last results, for "send to"
        self.selected = gr.State(0)
        self.gallery.select(_selected_index, inputs=None, outputs=self.selected, api_name=False)

    @property
    def slots(self) -> ResultSlots:
        return ResultSlots([self.gallery, self.info, self.progress, self.last_seed, self.images, self.selected],
                           progress=2, finish=self.finish)

    def finish(self, job: Job) -> list:
        skip = gr.skip()
        saved: SavedResult | None = job.result
        if saved is None or not saved.result.images:
            return [skip, skip, notice_html("Interrupted: no image was finished"), skip, skip, skip]
        result = saved.result
        shown = [str(p) for p in saved.paths] or list(result.images)
        note = (f"Interrupted after {len(result.images)} image(s)" if result.interrupted
                else f"{len(result.images)} image(s) in {result.seconds:.1f}s")
        return [[(im, None) for im in shown], result.infotexts[0], notice_html(note), result.seeds[0], shown, 0]


def load_sent_image(item: Any) -> tuple[Image.Image | None, str]:
    """A gallery item (a saved PNG's path, or an image) as a PIL image plus its infotext."""
    if item is None:
        return None, ""
    if isinstance(item, Image.Image):
        return item.convert("RGB"), read_infotext(item) or ""
    with Image.open(item) as im:
        im.load()
        return im.convert("RGB"), read_infotext(im) or ""


def _selected_index(evt: gr.SelectData) -> int:
    return int(evt.index or 0)
