"""The PNG Info tab: the infotext of any dropped image, and "send to" buttons that fill a tab with it."""
from __future__ import annotations

import html

import gradio as gr
from PIL import Image, UnidentifiedImageError

from webui.images.infotext import parse_infotext
from webui.images.store import read_infotext


def read_image_info(path: str | None) -> tuple[str, str]:
    """(infotext, HTML table) for an image file; a readable message when it has none or is no image."""
    if not path:
        return "", ""
    try:
        with Image.open(path) as im:
            text = read_infotext(im) or ""
            extra = {k: v for k, v in im.info.items() if isinstance(v, str) and k != "parameters"}
    except (UnidentifiedImageError, OSError):
        return "", '<div class="easel-error" role="alert">Not an image file.</div>'
    if not text and not extra:
        return "", '<div class="easel-notice">This image has no generation parameters.</div>'
    rows = "".join(f"<tr><th>{html.escape(k)}</th><td>{html.escape(str(v))}</td></tr>"
                   for k, v in {**parse_infotext(text), **extra}.items() if k not in ("Size-1", "Size-2") and v != "")
    return text, f'<table class="easel-pnginfo">{rows}</table>'


class PngInfoTab:
    def build(self) -> None:
        with gr.Row():
            with gr.Column():
                self.image = gr.Image(label="Source", type="filepath", sources=["upload", "clipboard"],
                                      elem_id="pnginfo_image", height=420)
            with gr.Column():
                self.html = gr.HTML(elem_id="pnginfo_html")
                self.text = gr.Textbox(label="Parameters", lines=6, interactive=False, elem_id="pnginfo_text",
                                       buttons=["copy"])
                with gr.Row():
                    self.send_txt2img = gr.Button("Send to txt2img", size="sm", elem_id="pnginfo_send_to_txt2img")
                    self.send_img2img = gr.Button("Send to img2img", size="sm", elem_id="pnginfo_send_to_img2img")
                    self.send_inpaint = gr.Button("Send to inpaint", size="sm", elem_id="pnginfo_send_to_inpaint")
        self.image.change(read_image_info, inputs=self.image, outputs=[self.text, self.html], api_name=False)
