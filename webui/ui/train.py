"""The Train tab, as A1111's: *Create embedding* and *Train* (textual inversion), a job like any other.

A thin skin over webui/training/textual_inversion.py: the fields are its requests' (A1111's names and
defaults), admission checks them (an allowed folder of at least two pictures, an existing embedding), the
job's progress shows step, loss and learning rate, and at the end the loss plot and the preview pictures.
"""
from __future__ import annotations

import csv

import gradio as gr
import pandas as pd

from webui.services import Easel
from webui.training.textual_inversion import TEMPLATES, CreateEmbeddingRequest, TrainEmbeddingRequest

from .controls import JobRunner, ResultSlots
from .widgets import notice_html


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
        self.create.click(self.create_embedding, inputs=[self.name, self.init_text, self.vectors, self.overwrite],
                          outputs=[self.created, self.embedding], api_name=False)
        fields = [self.embedding, self.data_root, self.template, self.learn_rate, self.batch_size, self.gradient_step,
                  self.width, self.height, self.steps, self.save_every, self.image_every, self.sampling, self.shuffle,
                  self.drop, self.clip_mode, self.clip_value]
        self.fields = fields
        self.train.click(self.start, inputs=fields, outputs=[self.progress, self.plot, self.previews], api_name=False,
                         concurrency_limit=None)
        self.interrupt.click(self.runner.interrupter("train"), inputs=None, outputs=None, api_name=False)

    def create_embedding(self, name: str, init_text: str, vectors: float, overwrite: bool, request: gr.Request):
        slots = ResultSlots([self.created, self.embedding], progress=0, finish=lambda job: [
            notice_html(f"Embedding created: {job.result.name}"),
            gr.Dropdown(choices=self.embedding_names(), value=job.result.stem)])
        yield from self.runner.run("create_embedding", lambda: CreateEmbeddingRequest(
            name=name or "", init_text=init_text, num_vectors_per_token=int(vectors), overwrite_old=bool(overwrite)),
            request, slots)

    def start(self, embedding_name: str, data_root: str, template_filename: str, learn_rate: str, batch_size: float,
              gradient_step: float, training_width: float, training_height: float, steps: float,
              save_embedding_every: float, create_image_every: float, latent_sampling_method: str,
              shuffle_tags: bool, tag_drop_out: float, clip_grad_mode: str, clip_grad_value: str,
              request: gr.Request):
        given = dict(embedding_name=embedding_name or "", data_root=data_root or "",
                     template_filename=template_filename, learn_rate=learn_rate, batch_size=batch_size,
                     gradient_step=gradient_step, training_width=training_width, training_height=training_height,
                     steps=steps, save_embedding_every=save_embedding_every, create_image_every=create_image_every,
                     latent_sampling_method=latent_sampling_method, shuffle_tags=bool(shuffle_tags),
                     tag_drop_out=tag_drop_out, clip_grad_mode=clip_grad_mode, clip_grad_value=clip_grad_value)
        for key in ("batch_size", "gradient_step", "training_width", "training_height", "steps",
                    "save_embedding_every", "create_image_every"):
            given[key] = int(given[key] or 0)
        slots = ResultSlots([self.progress, self.plot, self.previews], progress=0, finish=self.finished)
        yield from self.runner.run("train", lambda: TrainEmbeddingRequest(**given), request, slots)

    def finished(self, job) -> list:
        result = job.result
        with result.log.open() as handle:
            rows = [(int(r["step"]), float(r["loss"])) for r in csv.DictReader(handle)]
        state = "interrupted" if result.interrupted else "finished"
        note = notice_html(f"Training {state} at step {result.steps_done}; saved {result.embedding.name}")
        return [note, pd.DataFrame(rows, columns=["step", "loss"]), [str(p) for p in result.previews]]
