"""The Infinite zoom tab: a table of prompts by keyframe, the zoom's settings, and the video it makes."""
from __future__ import annotations

from typing import Any

import gradio as gr
from pydantic import ValidationError

from webui.generation.outpaint import default_box_size
from webui.generation.requests import describe_validation_error
from webui.generation.zoom import ZoomRequest
from webui.jobs.queue import JobState
from webui.services import Easel

from .controls import POLL_SECONDS, GenerationControls, JobRunner
from .widgets import error_html, notice_html, progress_html, session_id

DEFAULTS = ZoomRequest(batch_size=1)
DIRECTIONS = (("Zoom out", "out"), ("Zoom in", "in"))
EXAMPLE_PROMPT = "a vast fantasy landscape, mountains, rivers, golden light"
INT_FIELDS = frozenset({"keyframes", "fps", "mask_width"})


def prompts_from_table(rows: Any) -> dict[int, str]:
    """{keyframe: prompt} from the table's rows; blank rows are skipped, a bad index names its row."""
    if rows is None:
        return {}
    if hasattr(rows, "values") and hasattr(rows, "columns"):  # a DataFrame, if Gradio hands one over
        rows = rows.values.tolist()
    prompts: dict[int, str] = {}
    for n, row in enumerate(rows, start=1):
        key, text = (list(row) + [None, None])[:2]
        text = "" if text is None else str(text).strip()
        if (key is None or str(key).strip() == "") and not text:
            continue
        try:
            index = int(float(key))
        except (TypeError, ValueError):
            raise ValueError(f"prompts: row {n} needs a keyframe number (got {key!r})") from None
        prompts[index] = text
    return prompts


class ZoomTab:
    def __init__(self, easel: Easel, checkpoint: gr.Dropdown, vae: gr.Dropdown | None = None):
        self.easel = easel
        self.checkpoint = checkpoint
        self.controls = GenerationControls("zoom", easel, checkpoint, vae)
        self.runner = JobRunner(easel)

    def build(self) -> None:
        c, f = self.controls, self.controls.fields
        width, height = default_box_size(self.easel.default_size_for(self.checkpoint.value))
        with gr.Row():
            with gr.Column(scale=6):
                self.prompts = gr.Dataframe(
                    value=[[0, EXAMPLE_PROMPT]], headers=["keyframe", "prompt"], datatype=["number", "str"],
                    type="array", column_count=2, interactive=True, elem_id="zoom_prompts",
                    label="Prompts: each is used from its keyframe on (keyframe 0 is the first image)")
                f["negative_prompt"] = gr.Textbox(label="Negative prompt", lines=2, elem_id="zoom_neg_prompt")
            with gr.Column(scale=1, min_width=160):
                generate = gr.Button("Generate video", variant="primary", elem_id="zoom_generate")
                interrupt = gr.Button("Interrupt", elem_id="zoom_interrupt")
        with gr.Row():
            with gr.Column(scale=1):
                self.settings(width, height)
            with gr.Column(scale=1):
                self.progress = gr.HTML(elem_id="zoom_progress")
                self.video = gr.Video(label="Video", elem_id="zoom_video", interactive=False, loop=True)
                self.keyframes = gr.Gallery(label="Keyframes", format="png", columns=4, height=240,
                                            elem_id="zoom_keyframes_gallery", interactive=False)
                self.info = gr.Textbox(label="Last keyframe's parameters", lines=3, interactive=False,
                                       elem_id="zoom_info")
        inputs = set(f.values()) | {self.prompts, self.init_image}
        generate.click(self.generate, inputs=inputs, outputs=[self.video, self.keyframes, self.info, self.progress],
                       concurrency_limit=None, api_name="zoom")
        interrupt.click(self.runner.interrupt, inputs=None, outputs=None, concurrency_limit=None, api_name=False)

    def settings(self, width: int, height: int) -> None:
        c, f, d = self.controls, self.controls.fields, DEFAULTS
        with gr.Row():
            f["keyframes"] = gr.Slider(1, 100, value=d.keyframes, step=1, label="Outpaint steps (keyframes)",
                                       elem_id="zoom_keyframes")
            f["direction"] = gr.Radio(list(DIRECTIONS), value=d.direction, label="Direction", elem_id="zoom_direction")
        with gr.Row():
            f["width"] = gr.Slider(64, 2048, value=width, step=8, label="Frame width", elem_id="zoom_width")
            f["height"] = gr.Slider(64, 2048, value=height, step=8, label="Frame height", elem_id="zoom_height")
        f["mask_width"] = gr.Slider(0, 1016, value=0, step=8, elem_id="zoom_mask_width",
                                    label="Mask width, px (0: a quarter of the frame, so each keyframe halves)")
        with gr.Row():
            f["fps"] = gr.Slider(1, 60, value=d.fps, step=1, label="Frames per second", elem_id="zoom_fps")
            f["seconds_per_keyframe"] = gr.Slider(0.1, 10, value=d.seconds_per_keyframe, step=0.1,
                                                  label="Zoom speed: seconds per keyframe",
                                                  elem_id="zoom_seconds_per_keyframe")
        with gr.Row():
            f["hold_first"] = gr.Slider(0, 10, value=d.hold_first, step=0.5, label="Hold first frame, s",
                                        elem_id="zoom_hold_first")
            f["hold_last"] = gr.Slider(0, 10, value=d.hold_last, step=0.5, label="Hold last frame, s",
                                       elem_id="zoom_hold_last")
        c.sampling()
        f["cfg_scale"] = gr.Slider(1, 30, value=d.cfg_scale, step=0.5, label="CFG Scale", elem_id="zoom_cfg_scale")
        f["seed"] = gr.Number(value=-1, precision=0, label="Seed (keyframe k uses seed + k)", elem_id="zoom_seed")
        f["checkpoint"] = self.checkpoint
        if c.vae is not None:
            f["vae"] = c.vae
        self.init_image = gr.Image(label="First image (optional; otherwise txt2img)", type="pil", format="png",
                                   sources=["upload", "clipboard"], elem_id="zoom_init_image", height=200)

    def request_from(self, data: dict) -> ZoomRequest:
        values = self.controls.request_values(data)
        for name in INT_FIELDS & values.keys():
            if values[name] is not None:
                values[name] = int(values[name])
        values["mask_width"] = values.get("mask_width") or None  # 0 = the default quarter
        prompts = prompts_from_table(data[self.prompts])
        return ZoomRequest(**values, prompts=prompts, prompt=next(iter(prompts.values()), ""),
                           init_image=data[self.init_image])

    def generate(self, data: dict, request: gr.Request):
        skip = gr.skip()
        try:
            req = self.request_from(data)
        except ValidationError as e:
            yield skip, skip, skip, error_html(describe_validation_error(e))
            return
        except ValueError as e:
            yield skip, skip, skip, error_html(str(e))
            return
        owner = session_id(request)
        job = self.easel.submit_zoom(req, owner)
        self.runner.jobs[owner] = job
        try:
            while not job.wait(POLL_SECONDS):
                yield skip, skip, skip, progress_html(job, self.easel.queue.position(job))
        finally:
            if self.runner.jobs.get(owner) is job:
                del self.runner.jobs[owner]
        made = job.result
        if job.state is JobState.FAILED or made is None:
            yield skip, skip, skip, error_html(job.error or "the zoom failed")
            return
        if made.video is None:
            yield skip, skip, skip, notice_html("Interrupted before the first keyframe: no video")
            return
        what = f"{made.frames} frames, {made.keyframes} keyframes, {made.size[0]}×{made.size[1]} at {made.fps} fps"
        note = f"Interrupted: a video of the keyframes so far ({what})" if made.interrupted else \
            f"{what} in {made.seconds:.1f}s"
        yield str(made.video), [str(p) for p in made.keyframe_paths], made.info, notice_html(note)
