"""The Prompt travel tab: a table of keyframes (prompt, seed, frames), the video's settings, keyframe
previews, and the video with its frames (each can be sent to txt2img/img2img like any result)."""
from __future__ import annotations

from typing import Any

import gradio as gr

from webui.features.travel import TravelKeyframe, TravelRequest
from webui.jobs.queue import Job

from .controls import GenerationControls, JobRunner, ResultSlots
from .result_view import ResultView
from .widgets import notice_html, table_rows

EXAMPLE = [["a red circle, white background", "", ""], ["a blue circle, white background", "", ""]]


def keyframes_from_table(rows: Any) -> list[TravelKeyframe]:
    """Keyframes from the table's rows (blank rows skipped; blank seed: the request's; blank frames: the
    default); a bad number names its row."""
    keyframes = []
    for n, (prompt, seed, frames) in table_rows(rows, 3):
        prompt = "" if prompt is None else str(prompt).strip()
        if not prompt:
            continue
        values: dict[str, Any] = {"prompt": prompt}
        for name, value in (("seed", seed), ("frames", frames)):
            if value is None or str(value).strip() == "":
                continue
            try:
                values[name] = int(float(value))
            except (TypeError, ValueError):
                raise ValueError(f"keyframes: row {n}'s {name} is not a number ({value!r})") from None
        keyframes.append(TravelKeyframe(**values))
    return keyframes


class TravelTab:
    def __init__(self, controls: GenerationControls, runner: JobRunner):
        self.controls = controls
        self.runner = runner

    def build(self) -> None:
        c = self.controls
        with gr.Row():
            with gr.Column(scale=6):
                self.keyframes = gr.Dataframe(
                    value=EXAMPLE, headers=["prompt", "seed", "frames to the next"], datatype=["str", "str", "str"],
                    type="array", column_count=3, interactive=True, elem_id="travel_keyframes",
                    label="Keyframes: the video travels from each prompt to the next (blank seed: the seed "
                          "below; blank frames: the default below)")
                c.add("negative_prompt", lines=2)
            with gr.Column(scale=1, min_width=160):
                preview = gr.Button("Preview keyframes", elem_id="travel_preview")
                generate = gr.Button("Generate video", variant="primary", elem_id="travel_generate")
                interrupt = gr.Button("Interrupt", elem_id="travel_interrupt")
        with gr.Row():
            with gr.Column(scale=1):
                self.settings()
            with gr.Column(scale=1):
                self.video = gr.Video(label="Video", elem_id="travel_video", interactive=False, loop=True)
                self.results = ResultView("travel")
                self.results.build()
        view = self.results
        self.slots = ResultSlots([self.video, view.gallery, view.info, view.progress, view.images, view.selected],
                                 progress=3, finish=self.finish)
        inputs = c.inputs | {self.keyframes}
        generate.click(self.generate, inputs=inputs, outputs=self.slots.outputs, concurrency_limit=None,
                       api_name="travel")
        preview.click(self.preview, inputs=inputs, outputs=self.slots.outputs, concurrency_limit=None,
                      api_name="travel_preview")
        interrupt.click(self.runner.interrupter("travel"), inputs=None, outputs=None, concurrency_limit=None,
                        api_name=False)

    def settings(self) -> None:
        c = self.controls
        with gr.Row():
            c.add("frames", maximum=c.admission.limits.max_travel_frames or 240)
            c.add("fps")
        with gr.Row():
            c.add("easing")
            c.add("loop")
        c.size()
        c.sampling()
        c.add("cfg_scale")
        c.add("seed", label="Seed (of every keyframe without its own)")
        c.add("batch_size", label="Frames sampled together")
        with gr.Row():
            c.add("upscaler")
            c.add("upscale_by")
        c.pickers()

    def request_from(self, data: dict, keyframes_only: bool) -> TravelRequest:
        values = self.controls.request_values(data)
        keyframes = keyframes_from_table(data[self.keyframes])
        return TravelRequest(**values, keyframes=keyframes, keyframes_only=keyframes_only,
                             prompt=keyframes[0].prompt if keyframes else "")

    def generate(self, data: dict, request: gr.Request):
        yield from self.runner.run("travel", lambda: self.request_from(data, False), request, self.slots)

    def preview(self, data: dict, request: gr.Request):
        yield from self.runner.run("travel", lambda: self.request_from(data, True), request, self.slots)

    @staticmethod
    def finish(job: Job) -> list:
        skip = gr.skip()
        made = job.result
        if made is None or not made.frame_paths:
            return [skip, skip, skip, notice_html("Interrupted before the first frame: no video"), skip, skip]
        frames = [str(p) for p in made.frame_paths]
        if made.video is None:  # keyframe previews
            note = f"{len(frames)} keyframe stills in {made.seconds:.1f}s"
        else:
            what = f"{made.frames} frames, {made.size[0]}×{made.size[1]} at {made.fps} fps"
            kept = f" ({made.resumed} kept from before)" if made.resumed else ""
            note = (f"Interrupted: a video of the frames so far ({what}){kept}" if made.interrupted
                    else f"{what} in {made.seconds:.1f}s{kept}; frames in outputs/travel/{made.folder}")
        return [str(made.video) if made.video else None, [(p, None) for p in frames], made.info, notice_html(note),
                frames, 0]
