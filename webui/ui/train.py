"""The Train tab, as A1111's: *Create embedding* and *Train* (textual inversion), a job like any other.

A thin skin over webui/training/textual_inversion.py: the fields are its requests' (A1111's names and
defaults, and Easel's file format and sent pictures), admission checks them (an existing embedding, and an
allowed folder of at least two pictures or at least two uploaded ones). While the job runs, its progress
shows step, loss, learning rate and ETA, the loss plot follows the growing `loss.csv`, and each preview
picture appears as it is made; at the end, the whole log and this run's previews.
"""
from __future__ import annotations

import base64
import csv
import io
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import gradio as gr
import pandas as pd
from PIL import Image

from webui.errors import FieldError
from webui.images.decode import MAX_IMAGE_BASE64
from webui.jobs.queue import Job
from webui.services import Easel
from webui.training.textual_inversion import (IMAGE_SUFFIXES, NAME, TEMPLATES, CreateEmbeddingRequest,
                                              TrainEmbeddingRequest, log_folder, words_from_name)

from .controls import JobRunner, ResultSlots
from .widgets import notice_html

FILE_FORMATS = [("Automatic (.pt; .safetensors for SDXL)", "auto"), (".pt", "pt"), (".safetensors", "safetensors")]
MAX_CAPTION_CHARS = 10_000
PLOT_SECONDS = 1.0  # read the growing loss log at most this often
PLOT_POINTS = 2000  # a longer log is thinned for the plot (every k-th step, and the last)
SHOWN_PREVIEWS = 12  # the latest previews in the gallery; all of them are in the log folder's images/


def sent_pictures(files: list[Any] | None) -> tuple[list[str], list[str]]:
    """The page's uploads as the request's `images` (base64) and `captions`: each picture with the `.txt` of
    the same name if one was uploaded, else words from its file name. Gradio hands over temporary files; a
    file that is neither a picture nor a caption, or too large, is refused naming `images` (the pictures'
    contents are checked by admission, from their headers, like every picture sent)."""
    paths = sorted((Path(getattr(f, "name", f)) for f in files or []), key=lambda p: p.name)
    texts = {p.stem: p for p in paths if p.suffix.lower() == ".txt"}
    images, captions = [], []
    for path in paths:
        suffix = path.suffix.lower()
        if suffix == ".txt":
            continue
        if suffix not in IMAGE_SUFFIXES:
            raise FieldError("images", f"{path.name} is neither a picture ({', '.join(IMAGE_SUFFIXES)}) nor a .txt "
                                       "caption")
        if path.stat().st_size > MAX_IMAGE_BASE64 * 3 // 4:
            raise FieldError("images", f"{path.name} is too large")
        images.append(base64.b64encode(path.read_bytes()).decode("ascii"))
        caption = texts.get(path.stem)
        captions.append(caption.read_text(encoding="utf-8", errors="replace")[:MAX_CAPTION_CHARS].strip()
                        if caption is not None else words_from_name(path.stem))
    return images, captions


def loss_frame(log: Path) -> pd.DataFrame:
    """The loss log as a table for the plot; a line still being written is left out."""
    try:
        text = log.read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        text = ""
    rows = []
    for row in csv.DictReader(io.StringIO(text[:text.rfind("\n") + 1])):  # whole lines only
        try:
            rows.append((int(row["step"]), float(row["loss"])))
        except (KeyError, TypeError, ValueError):
            continue
    if len(rows) > PLOT_POINTS:
        every = -(-len(rows) // PLOT_POINTS)
        rows = rows[::every] + ([rows[-1]] if (len(rows) - 1) % every else [])
    return pd.DataFrame(rows, columns=["step", "loss"])


def preview_items(paths: list[Path]) -> list[tuple[Image.Image, str]]:
    """The latest preview pictures for the gallery, opened here (Gradio then serves its own copies, wherever
    the data folder is), captioned with their step."""
    items = []
    for path in paths[-SHOWN_PREVIEWS:]:
        try:
            with Image.open(path) as image:
                items.append((image.convert("RGB"), f"step {path.stem.rsplit('-', 1)[-1]}"))
        except OSError:  # being written right now: it shows at the next look
            continue
    return items


@dataclass
class TrainingWatch:
    """What the Train tab shows while a training job runs: the loss plot when the log has grown (read at
    most every PLOT_SECONDS) and the preview pictures this job has written so far. One per training run."""

    folder: Path  # the embedding's log folder (textual_inversion.log_folder)
    name: str
    last_size: int = -1
    last_read: float = 0.0
    shown: list[Path] = field(default_factory=list)

    def __call__(self, job: Job) -> list:
        plot, gallery = gr.skip(), gr.skip()
        log = self.folder / "loss.csv"
        now = time.monotonic()
        if now - self.last_read >= PLOT_SECONDS:
            self.last_read = now
            size = log.stat().st_size if log.is_file() else -1
            if size != self.last_size:
                self.last_size = size
                plot = loss_frame(log)
            made = self.previews_since(job.started) if job.started else []
            if made != self.shown:
                self.shown = made
                gallery = preview_items(made)
        return [gr.skip(), plot, gallery]

    def previews_since(self, started: float) -> list[Path]:
        """This job's previews (`NAME-STEP.png` written since it started), by step."""
        folder = self.folder / "images"
        if not folder.is_dir():
            return []
        found = []
        for path in folder.glob(f"{self.name}-*.png"):
            step = path.stem[len(self.name) + 1:]
            try:
                if step.isdigit() and path.stat().st_mtime >= started - 1:
                    found.append((int(step), path))
            except FileNotFoundError:
                continue
        return [path for _, path in sorted(found)]


class TrainTab:
    def __init__(self, easel: Easel, runner: JobRunner):
        self.easel = easel
        self.runner = runner

    def embedding_names(self) -> list[str]:
        library = self.easel.engine.embeddings
        if library is None:
            return []
        library.refresh()
        return sorted(library.loaded)

    def build(self) -> None:
        defaults = TrainEmbeddingRequest(embedding_name="x")
        with gr.Tabs():
            with gr.Tab("Create embedding", elem_id="train_create_tab"):
                self.name = gr.Textbox(label="Name", elem_id="train_new_name")
                self.init_text = gr.Textbox(label="Initialization text", value="*", elem_id="train_init_text")
                self.vectors = gr.Slider(1, 75, value=1, step=1, label="Number of vectors per token",
                                         elem_id="train_vectors")
                self.file_format = gr.Radio(FILE_FORMATS, value="auto", label="File format",
                                            elem_id="train_file_format")
                self.overwrite = gr.Checkbox(label="Overwrite Old Embedding", elem_id="train_overwrite")
                self.create = gr.Button("Create embedding", variant="primary", elem_id="train_create")
                self.created = gr.HTML(elem_id="train_create_status")
            with gr.Tab("Train", elem_id="train_train_tab"):
                with gr.Row():
                    self.embedding = gr.Dropdown(self.embedding_names(), label="Embedding", elem_id="train_embedding",
                                                 allow_custom_value=True)
                    self.data_root = gr.Textbox(label="Dataset directory (inside the data folder)",
                                                elem_id="train_data_root")
                    self.template = gr.Dropdown(sorted(p.name for p in TEMPLATES.glob("*.txt")),
                                                value=defaults.template_filename, label="Prompt template",
                                                elem_id="train_template")
                self.uploads = gr.File(label="Or upload the pictures (used when the dataset directory is empty; a "
                                             ".txt of the same name is a picture's caption)",
                                       file_count="multiple", file_types=["image", ".txt"], elem_id="train_uploads")
                with gr.Row():
                    self.learn_rate = gr.Textbox(label="Embedding Learning rate", value=defaults.learn_rate,
                                                 elem_id="train_learn_rate")
                    self.batch_size = gr.Number(label="Batch size", value=defaults.batch_size, precision=0,
                                                elem_id="train_batch_size")
                    self.gradient_step = gr.Number(label="Gradient accumulation steps", value=1, precision=0,
                                                   elem_id="train_gradient_step")
                with gr.Row():
                    self.width = gr.Slider(64, 2048, value=defaults.training_width, step=8, label="Width",
                                           elem_id="train_width")
                    self.height = gr.Slider(64, 2048, value=defaults.training_height, step=8, label="Height",
                                            elem_id="train_height")
                with gr.Row():
                    self.steps = gr.Number(label="Max steps", value=defaults.steps, precision=0, elem_id="train_steps")
                    self.save_every = gr.Number(label="Save a copy of embedding to log directory every N steps",
                                                value=defaults.save_embedding_every, precision=0,
                                                elem_id="train_save_every")
                    self.image_every = gr.Number(label="Save an image to log directory every N steps, 0 to disable",
                                                 value=defaults.create_image_every, precision=0,
                                                 elem_id="train_image_every")
                with gr.Row():
                    self.sampling = gr.Radio(["once", "deterministic", "random"], value="once",
                                             label="Choose latent sampling method", elem_id="train_sampling")
                    self.shuffle = gr.Checkbox(label="Shuffle tags by ',' when creating prompts",
                                               elem_id="train_shuffle")
                    self.drop = gr.Slider(0, 1, value=0, step=0.05, label="Drop out tags when creating prompts",
                                          elem_id="train_drop")
                    self.clip_mode = gr.Radio(["disabled", "value", "norm"], value="disabled",
                                              label="Gradient Clipping", elem_id="train_clip_mode")
                    self.clip_value = gr.Textbox(label="Clip value", value="0.1", elem_id="train_clip_value")
                with gr.Row():
                    self.train = gr.Button("Train Embedding", variant="primary", elem_id="train_start")
                    self.interrupt = gr.Button("Interrupt", elem_id="train_interrupt")
                self.progress = gr.HTML(elem_id="train_progress")
                self.plot = gr.LinePlot(x="step", y="loss", label="Loss", elem_id="train_loss_plot", height=260)
                self.previews = gr.Gallery(label="Previews", columns=4, height=220, elem_id="train_previews")
        self.create.click(self.create_embedding,
                          inputs=[self.name, self.init_text, self.vectors, self.overwrite, self.file_format],
                          outputs=[self.created, self.embedding], api_name=False)
        fields = [self.embedding, self.data_root, self.template, self.learn_rate, self.batch_size, self.gradient_step,
                  self.width, self.height, self.steps, self.save_every, self.image_every, self.sampling, self.shuffle,
                  self.drop, self.clip_mode, self.clip_value, self.uploads]
        self.fields = fields
        self.train.click(self.start, inputs=fields, outputs=[self.progress, self.plot, self.previews], api_name=False,
                         concurrency_limit=None)
        self.interrupt.click(self.runner.interrupter("train"), inputs=None, outputs=None, api_name=False)

    def create_embedding(self, name: str, init_text: str, vectors: float, overwrite: bool, file_format: str,
                         request: gr.Request):
        slots = ResultSlots([self.created, self.embedding], progress=0, finish=lambda job: [
            notice_html(f"Embedding created: {job.result.name}"),
            gr.Dropdown(choices=self.embedding_names(), value=job.result.stem)])
        yield from self.runner.run("create_embedding", lambda: CreateEmbeddingRequest(
            name=name or "", init_text=init_text, num_vectors_per_token=int(vectors), overwrite_old=bool(overwrite),
            file_format=None if file_format in (None, "", "auto") else file_format), request, slots)

    def start(self, embedding_name: str, data_root: str, template_filename: str, learn_rate: str, batch_size: float,
              gradient_step: float, training_width: float, training_height: float, steps: float,
              save_embedding_every: float, create_image_every: float, latent_sampling_method: str,
              shuffle_tags: bool, tag_drop_out: float, clip_grad_mode: str, clip_grad_value: str,
              uploads: list[Any] | None, request: gr.Request):
        given = dict(embedding_name=embedding_name or "", data_root=(data_root or "").strip(),
                     template_filename=template_filename, learn_rate=learn_rate, batch_size=batch_size,
                     gradient_step=gradient_step, training_width=training_width, training_height=training_height,
                     steps=steps, save_embedding_every=save_embedding_every, create_image_every=create_image_every,
                     latent_sampling_method=latent_sampling_method, shuffle_tags=bool(shuffle_tags),
                     tag_drop_out=tag_drop_out, clip_grad_mode=clip_grad_mode, clip_grad_value=clip_grad_value)
        for key in ("batch_size", "gradient_step", "training_width", "training_height", "steps",
                    "save_embedding_every", "create_image_every"):
            given[key] = int(given[key] or 0)

        def build() -> TrainEmbeddingRequest:
            if not given["data_root"]:  # the uploads stand in for an empty dataset directory
                given["images"], given["captions"] = sent_pictures(uploads)
            return TrainEmbeddingRequest(**given)
        name = given["embedding_name"]
        watch = TrainingWatch(log_folder(self.easel.settings.data_dir, name), name) if NAME.fullmatch(name) else None
        slots = ResultSlots([self.progress, self.plot, self.previews], progress=0, finish=self.finished,
                            running=watch)
        yield from self.runner.run("train", build, request, slots)

    def finished(self, job) -> list:
        result = job.result
        state = "interrupted" if result.interrupted else "finished"
        note = notice_html(f"Training {state} at step {result.steps_done}; saved {result.embedding.name}")
        return [note, loss_frame(result.log), preview_items(result.previews)]
