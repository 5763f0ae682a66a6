"""The page: checkpoint picker on top, one tab per tool, and the "send to" wiring between tabs.

Every tab's controls come from its request type's field descriptions (webui/ui/controls.py) and
every job goes through admission; extensions add accordions (their features' settings) and tabs.
"""
from __future__ import annotations

import html
import logging
from pathlib import Path

import gradio as gr

from webui.admission import Admission
from webui.auth import Gate
from webui.errors import TooManyJobs
from webui.extensions import UiServices
from webui.extensions.loader import Extensions, write_disabled
from webui.generation.outpaint import OutpaintParams
from webui.generation.requests import Img2ImgRequest, Txt2ImgRequest
from webui.features.travel import TravelRequest
from webui.generation.zoom import ZoomRequest
from webui.services import Easel

from .controls import SHARED_FIELDS, GenerationControls, JobRunner, icon_button
from .img2img import Img2ImgTab
from .outpaint import OutpaintTab
from .pnginfo import PngInfoTab
from .txt2img import Txt2ImgTab
from .widgets import error_html, notice_html, ui_caller
from .result_view import ResultView, load_sent_image
from .extras import ExtrasTab
from .gallery import GalleryTab
from .merger import MergerTab
from .train import TrainTab
from .travel import TravelTab
from .zoom import ZoomTab
from .workers import WorkersSection, workers_html

log = logging.getLogger(__name__)

STATIC = Path(__file__).resolve().parent / "static"


def pick(images: list, selected: int):
    return images[min(selected or 0, len(images) - 1)] if images else None


def build_ui(easel: Easel, admission: Admission, gate: Gate | None = None,
             extensions: Extensions | None = None) -> gr.Blocks:
    runner = JobRunner(easel, admission, gate)
    # uploads and Gradio's copies of results live in its temp folder: files older than a day go, hourly
    with gr.Blocks(title="Easel", delete_cache=(3600, 86400)) as blocks:
        default = easel.manager.default_checkpoint()
        with gr.Row(elem_id="quicksettings"):
            checkpoint = gr.Dropdown(
                choices=easel.manager.titles(), value=default.title if default else None,
                label="Stable Diffusion checkpoint", elem_id="sd_model_checkpoint", scale=4,
            )
            refresh = icon_button("refresh", "refresh_sd_model_checkpoint")
            vae = gr.Dropdown(choices=easel.vaes.choices(), value="Automatic", label="SD VAE", elem_id="sd_vae",
                              scale=2)
            model_status = gr.HTML(elem_id="sd_model_status")

        def controls(prefix: str, model) -> GenerationControls:
            return GenerationControls(prefix, model, easel, admission, checkpoint, vae, gate)

        with gr.Tabs(elem_id="tabs") as tabs:
            with gr.Tab("txt2img", id="txt2img", elem_id="tab_txt2img"):
                txt2img = Txt2ImgTab(controls("txt2img", Txt2ImgRequest), runner)
                txt2img.build()
            with gr.Tab("img2img", id="img2img", elem_id="tab_img2img"):
                img2img = Img2ImgTab(controls("img2img", Img2ImgRequest), runner)
                img2img.build()
            with gr.Tab("Extras", id="extras", elem_id="tab_extras"):
                extras = ExtrasTab(runner)
                extras.build()
            with gr.Tab("Outpaint", id="outpaint", elem_id="tab_outpaint"):
                OutpaintTab(controls("outpaint", OutpaintParams)).build()
            with gr.Tab("Infinite zoom", id="zoom", elem_id="tab_zoom"):
                ZoomTab(controls("zoom", ZoomRequest), runner).build()
            with gr.Tab("Prompt travel", id="travel", elem_id="tab_travel"):
                travel = TravelTab(controls("travel", TravelRequest), runner)
                travel.build()
            with gr.Tab("Gallery", id="gallery", elem_id="tab_gallery") as gallery_tab:
                gallery = GalleryTab(easel.gallery, gate) if easel.gallery is not None else None
                if gallery is not None:
                    gallery.build()
                    gallery_tab.select(gallery.opened, inputs=[gallery.query, gallery.sort, gallery.ids],
                                       outputs=gallery.listing, api_name=False)
            with gr.Tab("PNG Info", id="pnginfo", elem_id="tab_pnginfo"):
                pnginfo = PngInfoTab()
                pnginfo.build()
            with gr.Tab("Checkpoint Merger", id="modelmerger", elem_id="tab_modelmerger"):
                MergerTab(runner, checkpoint).build()
            with gr.Tab("Train", id="train", elem_id="tab_train"):
                TrainTab(easel, runner).build()
            with gr.Tab("Settings", id="settings", elem_id="tab_settings") as settings_tab:
                workers = WorkersSection(easel.queue)
                workers.build()
                settings_tab.select(lambda: workers_html(easel.queue), inputs=None, outputs=workers.table,
                                    api_name=False)
            if extensions is not None:
                extension_tabs(extensions, runner, admission)
                with gr.Tab("Extensions", id="extensions", elem_id="tab_extensions"):
                    extensions_tab(easel, extensions, gate)
        wire_send_to(txt2img, img2img, pnginfo, tabs, [travel.results] + ([gallery.results] if gallery else []), extras)
        if gallery is not None:
            wire_find_similar(gallery, tabs, [txt2img.results, img2img.results, travel.results])
        wire_checkpoint(easel, runner, checkpoint, vae, refresh, model_status, [txt2img.controls, img2img.controls])
    return blocks


def extension_tabs(extensions: Extensions, runner: JobRunner, admission: Admission) -> None:
    """Each enabled extension's tabs; one whose build fails shows why instead of taking the page down."""
    services = UiServices(
        submit=lambda kind, request, gr_request: admission.submit(kind, request, ui_caller(gr_request, runner.gate)).job,
        caller=lambda gr_request: ui_caller(gr_request, runner.gate),
    )
    for name, title, build in extensions.tabs:
        with gr.Tab(title, elem_id=f"tab_ext_{name}"):
            try:
                build(services)
            except Exception as e:
                log.error("extension %s: its tab %r could not be built: %s: %s", name, title, type(e).__name__, e)
                gr.HTML(error_html(f"The extension {name} could not build this tab: {type(e).__name__}: {e}"))


def extensions_tab(easel: Easel, extensions: Extensions, gate: Gate | None) -> None:
    """What was found in extensions/, each one's state, and a switch per extension (stored in config.json,
    applied at the next start; an admin's action when logins are on)."""
    rows = "".join(
        f"<tr><td>{html.escape(e.name)}</td><td>{html.escape(e.state)}</td><td>{html.escape(e.reason)}</td>"
        f"<td>{html.escape(', '.join(e.features))}</td></tr>" for e in extensions.items)
    gr.HTML(f'<table class="easel-extensions"><tr><th>extension</th><th>state</th><th>why</th><th>adds</th></tr>'
            f"{rows}</table>" if rows else notice_html("No extension in extensions/."), elem_id="extensions_table")
    names = [e.name for e in extensions.items]
    switches = gr.CheckboxGroup(names, value=[e.name for e in extensions.items if e.state != "disabled"],
                                label="Enabled at the next start", elem_id="extensions_enabled")
    apply = gr.Button("Apply (takes effect when Easel restarts)", elem_id="extensions_apply")
    status = gr.HTML(elem_id="extensions_status")

    def save(enabled: list[str], request: gr.Request):
        if not ui_caller(request, gate).manager:
            return error_html("Only an admin can switch extensions on or off.")
        write_disabled(easel.settings.config_file, set(names) - set(enabled or []))
        return notice_html("Saved to config.json; restart Easel to apply.")

    apply.click(save, inputs=switches, outputs=status, api_name=False)


def wire_find_similar(gallery: GalleryTab, tabs: gr.Tabs, views: list[ResultView]) -> None:
    """"Find similar" under every gallery of the page: the Gallery tab, searching for the selected image."""
    def find(images: list, selected: int, request: gr.Request) -> list:
        return [*gallery.similar_to_item(pick(images, selected), request), gr.Tabs(selected="gallery")]
    for view in views:
        view.find_similar.click(find, inputs=[view.images, view.selected], outputs=[*gallery.listing, tabs],
                                api_name=False)


def wire_send_to(txt2img: Txt2ImgTab, img2img: Img2ImgTab, pnginfo: PngInfoTab, tabs: gr.Tabs,
                 more: list[ResultView], extras: ExtrasTab) -> None:
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

    def to_extras(item):
        image = item if isinstance(item, str) else load_sent_image(item)[0]  # a saved file keeps its infotext
        return {extras.image: image, extras.source: "single", extras.sources: gr.Tabs(selected="single"),
                tabs: gr.Tabs(selected="extras")}

    extras_targets = [extras.image, extras.source, extras.sources, tabs]
    for view in (txt2img.results, img2img.results, *more):
        src = [view.images, view.selected]
        view.send_txt2img.click(lambda imgs, sel: to_txt2img(pick(imgs, sel)), inputs=src,
                                outputs=t_fields + [tabs], api_name=False)
        view.send_img2img.click(lambda imgs, sel: to_img2img(pick(imgs, sel), False), inputs=src,
                                outputs=img_targets, api_name=False)
        view.send_inpaint.click(lambda imgs, sel: to_img2img(pick(imgs, sel), True), inputs=src,
                                outputs=img_targets, api_name=False)
        view.send_extras.click(lambda imgs, sel: to_extras(pick(imgs, sel)), inputs=src,
                               outputs=extras_targets, api_name=False)
    pnginfo.send_txt2img.click(to_txt2img, inputs=pnginfo.image, outputs=t_fields + [tabs], api_name=False)
    pnginfo.send_img2img.click(lambda p: to_img2img(p, False), inputs=pnginfo.image, outputs=img_targets,
                               api_name=False)
    pnginfo.send_inpaint.click(lambda p: to_img2img(p, True), inputs=pnginfo.image, outputs=img_targets,
                               api_name=False)


def wire_checkpoint(easel: Easel, runner: JobRunner, checkpoint: gr.Dropdown, vae: gr.Dropdown, refresh: gr.Button,
                    status: gr.HTML, controls: list) -> None:
    """The checkpoint picker is each page's own choice (every job names it). Picking one loads it as a
    job of this page's caller, in its fair turn, so the next Generate starts at once."""
    size_fields = [c.fields[n] for c in controls for n in ("width", "height")]

    def on_refresh(current: str | None, current_vae: str | None, request: gr.Request):
        if not ui_caller(request, runner.gate).manager:
            return gr.skip(), gr.skip(), error_html("Only an admin can rescan the model folders on this server.")
        easel.refresh()
        titles, vaes = easel.manager.titles(), easel.vaes.choices()
        value = current if current in titles else (titles[0] if titles else None)
        return (gr.Dropdown(choices=titles, value=value),
                gr.Dropdown(choices=vaes, value=current_vae if current_vae in vaes else "Automatic"),
                notice_html(f"{len(titles)} checkpoint(s), {len(vaes) - 2} VAE file(s)"))

    def on_select(name: str | None, request: gr.Request):
        if not name:
            return [gr.skip()] * (1 + len(size_fields))
        try:
            job = runner.admission.submit("load", name, ui_caller(request, runner.gate)).job
        except (ValueError, TooManyJobs) as e:
            return [error_html(str(e))] + [gr.skip()] * len(size_fields)
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
