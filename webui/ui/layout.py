"""The page: checkpoint picker on top, one tab per tool, and the "send to" wiring between tabs."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import gradio as gr
from PIL import Image

from webui.images.store import read_infotext
from webui.services import Easel

from .controls import SHARED_FIELDS
from .img2img import Img2ImgTab
from .outpaint import OutpaintTab
from .pnginfo import PngInfoTab
from .txt2img import Txt2ImgTab
from .widgets import error_html, notice_html
from .zoom import ZoomTab

STATIC = Path(__file__).resolve().parent / "static"


def load_sent_image(item: Any) -> tuple[Image.Image | None, str]:
    """A gallery item (a saved PNG's path, or an image) as a PIL image plus its infotext."""
    if item is None:
        return None, ""
    if isinstance(item, Image.Image):
        return item.convert("RGB"), read_infotext(item) or ""
    with Image.open(item) as im:
        im.load()
        return im.convert("RGB"), read_infotext(im) or ""


def pick(images: list, selected: int):
    return images[min(selected or 0, len(images) - 1)] if images else None


def build_ui(easel: Easel) -> gr.Blocks:
    with gr.Blocks(title="Easel") as blocks:
        default = easel.manager.default_checkpoint()
        with gr.Row(elem_id="quicksettings"):
            checkpoint = gr.Dropdown(
                choices=easel.manager.titles(), value=default.title if default else None,
                label="Stable Diffusion checkpoint", elem_id="sd_model_checkpoint", scale=4,
            )
            refresh = gr.Button("🔄", elem_id="refresh_sd_model_checkpoint", scale=0, min_width=40)
            vae = gr.Dropdown(choices=easel.vaes.choices(), value="Automatic", label="SD VAE", elem_id="sd_vae",
                              scale=2)
            model_status = gr.HTML(elem_id="sd_model_status")
        with gr.Tabs(elem_id="tabs") as tabs:
            with gr.Tab("txt2img", id="txt2img", elem_id="tab_txt2img"):
                txt2img = Txt2ImgTab(easel, checkpoint, vae)
                txt2img.build()
            with gr.Tab("img2img", id="img2img", elem_id="tab_img2img"):
                img2img = Img2ImgTab(easel, checkpoint, vae)
                img2img.build()
            with gr.Tab("Outpaint", id="outpaint", elem_id="tab_outpaint"):
                OutpaintTab(easel, checkpoint, vae).build()
            with gr.Tab("Infinite zoom", id="zoom", elem_id="tab_zoom"):
                ZoomTab(easel, checkpoint, vae).build()
            with gr.Tab("PNG Info", id="pnginfo", elem_id="tab_pnginfo"):
                pnginfo = PngInfoTab()
                pnginfo.build()
        wire_send_to(txt2img, img2img, pnginfo, tabs)
        wire_checkpoint(easel, checkpoint, vae, refresh, model_status, [txt2img.controls, img2img.controls])
    return blocks


def wire_send_to(txt2img: Txt2ImgTab, img2img: Img2ImgTab, pnginfo: PngInfoTab, tabs: gr.Tabs) -> None:
    """Every gallery (and PNG Info) can send its image and parameters to txt2img, img2img or inpaint."""
    t_fields = [c for n, c in txt2img.controls.fields.items() if n not in SHARED_FIELDS]
    i_fields = [c for n, c in img2img.controls.fields.items() if n not in SHARED_FIELDS]

    def to_txt2img(item):
        _, text = load_sent_image(item)
        return {**txt2img.controls.updates_from_infotext(text), tabs: gr.Tabs(selected="txt2img")}

    def to_img2img(item, inpaint: bool):
        image, text = load_sent_image(item)
        updates: dict = img2img.controls.updates_from_infotext(text)
        if image is not None:
            updates[img2img.controls.fields["width"]] = image.width
            updates[img2img.controls.fields["height"]] = image.height
        mode = "inpaint" if inpaint else "img2img"
        if inpaint:
            updates[img2img.inpaint] = {"background": image, "layers": [], "composite": image}
        else:
            updates[img2img.init_image] = image
        updates[img2img.mode] = mode
        updates[img2img.mode_tabs] = gr.Tabs(selected=mode)
        updates[tabs] = gr.Tabs(selected="img2img")
        return updates

    img_targets = i_fields + [img2img.init_image, img2img.inpaint, img2img.mode, img2img.mode_tabs, tabs]
    for view in (txt2img.results, img2img.results):
        src = [view.images, view.selected]
        view.send_txt2img.click(lambda imgs, sel: to_txt2img(pick(imgs, sel)), inputs=src,
                                outputs=t_fields + [tabs], api_name=False)
        view.send_img2img.click(lambda imgs, sel: to_img2img(pick(imgs, sel), False), inputs=src,
                                outputs=img_targets, api_name=False)
        view.send_inpaint.click(lambda imgs, sel: to_img2img(pick(imgs, sel), True), inputs=src,
                                outputs=img_targets, api_name=False)
    pnginfo.send_txt2img.click(to_txt2img, inputs=pnginfo.image, outputs=t_fields + [tabs], api_name=False)
    pnginfo.send_img2img.click(lambda p: to_img2img(p, False), inputs=pnginfo.image, outputs=img_targets,
                               api_name=False)
    pnginfo.send_inpaint.click(lambda p: to_img2img(p, True), inputs=pnginfo.image, outputs=img_targets,
                               api_name=False)


def wire_checkpoint(easel: Easel, checkpoint: gr.Dropdown, vae: gr.Dropdown, refresh: gr.Button,
                    status: gr.HTML, controls: list) -> None:
    size_fields = [c.fields[n] for c in controls for n in ("width", "height")]

    def on_refresh(current: str | None, current_vae: str | None):
        easel.refresh()
        titles, vaes = easel.manager.titles(), easel.vaes.choices()
        value = current if current in titles else (titles[0] if titles else None)
        return (gr.Dropdown(choices=titles, value=value),
                gr.Dropdown(choices=vaes, value=current_vae if current_vae in vaes else "Automatic"),
                notice_html(f"{len(titles)} checkpoint(s), {len(vaes) - 2} VAE file(s)"))

    def on_select(name: str | None):
        if not name:
            return [gr.skip()] * (1 + len(size_fields))
        job = easel.submit_load(name)
        job.wait()
        if job.error:
            return [error_html(job.error)] + [gr.skip()] * len(size_fields)
        width, height = easel.default_size_for(name)
        return [notice_html(f"Loaded {job.result}")] + [width, height] * len(controls)

    refresh.click(on_refresh, inputs=[checkpoint, vae], outputs=[checkpoint, vae, status], api_name=False)
    checkpoint.input(on_select, inputs=checkpoint, outputs=[status] + size_fields, api_name=False)


def launch_kwargs() -> dict:
    """Theme, CSS and JS go to `launch()` in Gradio 6. The canvas script goes in the page head: it
    waits for its element itself, since Gradio renders a tab's contents only when it is first shown."""
    return {
        "css": "\n".join((STATIC / name).read_text(encoding="utf-8") for name in ("easel.css", "canvas.css")),
        "js": (STATIC / "easel.js").read_text(encoding="utf-8"),
        "head": f"<script>{(STATIC / 'canvas.js').read_text(encoding='utf-8')}</script>",
    }
