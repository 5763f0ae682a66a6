"""The page: checkpoint picker on top, one tab per tool."""
from __future__ import annotations

from pathlib import Path

import gradio as gr

from webui.services import Easel

from .txt2img import Txt2ImgTab
from .widgets import error_html, notice_html

STATIC = Path(__file__).resolve().parent / "static"


def build_ui(easel: Easel) -> gr.Blocks:
    with gr.Blocks(title="Easel") as blocks:
        default = easel.manager.default_checkpoint()
        with gr.Row(elem_id="quicksettings"):
            checkpoint = gr.Dropdown(
                choices=easel.manager.titles(), value=default.title if default else None,
                label="Stable Diffusion checkpoint", elem_id="sd_model_checkpoint", scale=4,
            )
            refresh = gr.Button("🔄", elem_id="refresh_sd_model_checkpoint", scale=0, min_width=40)
            model_status = gr.HTML(elem_id="sd_model_status")
        with gr.Tabs(elem_id="tabs"):
            with gr.Tab("txt2img", id="txt2img", elem_id="tab_txt2img"):
                txt2img = Txt2ImgTab(easel, checkpoint)
                txt2img.build()

        def on_refresh(current: str | None):
            easel.manager.refresh()
            titles = easel.manager.titles()
            value = current if current in titles else (titles[0] if titles else None)
            return gr.Dropdown(choices=titles, value=value), notice_html(f"{len(titles)} checkpoint(s)")

        def on_select(name: str | None):
            if not name:
                return gr.skip(), gr.skip(), gr.skip()
            job = easel.submit_load(name)
            job.wait()
            if job.error:
                return error_html(job.error), gr.skip(), gr.skip()
            width, height = easel.default_size_for(name)
            return notice_html(f"Loaded {job.result}"), width, height

        refresh.click(on_refresh, inputs=checkpoint, outputs=[checkpoint, model_status], api_name=False)
        checkpoint.input(on_select, inputs=checkpoint, api_name=False,
                         outputs=[model_status, txt2img.fields["width"], txt2img.fields["height"]])
    return blocks


def launch_kwargs() -> dict:
    """Theme, CSS and JS go to `launch()` in Gradio 6."""
    return {
        "css": (STATIC / "easel.css").read_text(encoding="utf-8"),
        "js": (STATIC / "easel.js").read_text(encoding="utf-8"),
    }
