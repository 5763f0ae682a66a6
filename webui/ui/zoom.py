"""The Infinite zoom tab: a table of prompts by keyframe, the zoom's settings, and the video it makes."""
from __future__ import annotations

from typing import Any

import gradio as gr

from webui.generation.outpaint import default_box_size
from webui.generation.zoom import ZoomRequest
from webui.images.decode import open_image
from webui.jobs.queue import Job

from .controls import GenerationControls, JobRunner, ResultSlots
from .widgets import notice_html, table_rows

DIRECTIONS = (("Zoom out", "out"), ("Zoom in", "in"))
EXAMPLE_PROMPT = "a vast fantasy landscape, mountains, rivers, golden light"


def prompts_from_table(rows: Any) -> dict[int, str]:
    """{keyframe: prompt} from the table's rows; blank rows are skipped, a bad index names its row."""
    prompts: dict[int, str] = {}
    for n, (key, text) in table_rows(rows, 2):
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
    def __init__(self, controls: GenerationControls, runner: JobRunner):
        self.controls = controls
        self.runner = runner

    def build(self) -> None:
        c = self.controls
        with gr.Row():
            with gr.Column(scale=6):
                self.prompts = gr.Dataframe(
                    value=[[0, EXAMPLE_PROMPT]], headers=["keyframe", "prompt"], datatype=["number", "str"],
                    type="array", column_count=2, interactive=True, elem_id="zoom_prompts",
                    label="Prompts: each is used from its keyframe on (keyframe 0 is the first image)")
                c.add("negative_prompt", lines=2)
            with gr.Column(scale=1, min_width=160):
                generate = gr.Button("Generate video", variant="primary", elem_id="zoom_generate")
                interrupt = gr.Button("Interrupt", elem_id="zoom_interrupt")
        with gr.Row():
            with gr.Column(scale=1):
                self.settings()
            with gr.Column(scale=1):
                self.progress = gr.HTML(elem_id="zoom_progress")
                self.video = gr.Video(label="Video", elem_id="zoom_video", interactive=False, loop=True)
                self.keyframes = gr.Gallery(label="Keyframes", format="png", columns=4, height=240,
                                            elem_id="zoom_keyframes_gallery", interactive=False)
                self.info = gr.Textbox(label="Last keyframe's parameters", lines=3, interactive=False,
                                       elem_id="zoom_info")
        self.slots = ResultSlots([self.video, self.keyframes, self.info, self.progress], progress=3,
                                 finish=self.finish)
        inputs = c.inputs | {self.prompts, self.init_image}
        generate.click(self.generate, inputs=inputs, outputs=self.slots.outputs, concurrency_limit=None,
                       api_name="zoom")
        interrupt.click(self.runner.interrupter("zoom"), inputs=None, outputs=None, concurrency_limit=None,
                        api_name=False)

    def settings(self) -> None:
        c, limits = self.controls, self.controls.admission.limits
        with gr.Row():
            c.add("keyframes", maximum=limits.max_zoom_keyframes)
            c.add("direction", choices=list(DIRECTIONS))
        c.size("Frame ", default=default_box_size(c.easel.default_size_for(c.checkpoint.value)))
        c.add("mask_width", value=0)
        with gr.Row():
            c.add("fps")
            c.add("seconds_per_keyframe")
        with gr.Row():
            c.add("hold_first")
            c.add("hold_last")
        c.sampling()
        c.add("cfg_scale")
        c.add("seed", label="Seed (keyframe k uses seed + k)")
        c.pickers()
        self.init_image = gr.Image(label="First image (optional; otherwise txt2img)", type="filepath", format="png",
                                   sources=["upload", "clipboard"], elem_id="zoom_init_image", height=200)

    def request_from(self, data: dict) -> ZoomRequest:
        values = self.controls.request_values(data)
        values["mask_width"] = values.get("mask_width") or None  # 0 = the default quarter
        prompts = prompts_from_table(data[self.prompts])
        init = data[self.init_image]
        return ZoomRequest(**values, prompts=prompts, prompt=next(iter(prompts.values()), ""),
                           init_image=open_image(init, "init_image").convert("RGB") if init else None)

    def generate(self, data: dict, request: gr.Request):
        yield from self.runner.run("zoom", lambda: self.request_from(data), request, self.slots)

    @staticmethod
    def finish(job: Job) -> list:
        skip = gr.skip()
        made = job.result
        if made is None or made.video is None:
            return [skip, skip, skip, notice_html("Interrupted before the first keyframe: no video")]
        what = f"{made.frames} frames, {made.keyframes} keyframes, {made.size[0]}×{made.size[1]} at {made.fps} fps"
        note = f"Interrupted: a video of the keyframes so far ({what})" if made.interrupted else \
            f"{what} in {made.seconds:.1f}s"
        return [str(made.video), [str(p) for p in made.keyframe_paths], made.info, notice_html(note)]
