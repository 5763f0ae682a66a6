"""Textual inversion: a new word learned from a few pictures, as A1111's Train tab makes it.

*Create* writes `models/embeddings/NAME.pt` in A1111's format (`string_to_param: {"*": [n, width]}`, `name`,
`step`, `sd_checkpoint`, `sd_checkpoint_name`), its vectors started from the token embeddings of the
initialisation text. *Train* teaches those vectors, and nothing else, from pictures and captions: each step
takes a batch of the pictures' latents, noises them at random timesteps, builds each caption from a prompt
template (`[name]` → the embedding, `[filewords]` → the picture's words), and minimises the UNet's noise
prediction error. The vectors enter the text encoder through the same forward hook that generation uses
(webui/generation/conditioning.py), and their gradient is taken with `torch.autograd.grad`, so no gradient
is ever stored on the shared model's weights: the loaded model is unchanged for everyone else.

Training runs as a job (kind "train") in the one queue: between steps it lets other owners' jobs take a turn
(`job.yield_turn`) and then takes its model back from the lease, it stops at once when interrupted (saving
what it has), and it writes `NAME-STEP.pt` copies, the loss log (`DATA_DIR/train/NAME/loss.csv`) and the
optimizer state (`NAME.optim.pt`, so a later run resumes where this one stopped).
"""
from __future__ import annotations

import csv
import random
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from diffusers import DDPMScheduler
from PIL import Image
from pydantic import BaseModel, Field, field_validator

from webui.errors import FieldError
from webui.generation.conditioning import PromptEncoder
from webui.generation.latents import images_to_tensor
from webui.images.decode import open_image
from webui.models.embeddings import Embedding, load_embedding

TEMPLATES = Path(__file__).resolve().parent / "templates"
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
MIN_IMAGES = 2


class CreateEmbeddingRequest(BaseModel):
    """A1111's /sdapi/v1/create/embedding body."""

    name: str
    num_vectors_per_token: int = Field(1, ge=1, le=75)
    init_text: str = Field("*", max_length=1000)
    overwrite_old: bool = False

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not NAME.fullmatch(v.strip()):
            raise ValueError("use 1 to 64 letters, digits and ._- (it becomes the file name and the prompt word)")
        return v.strip()


class TrainEmbeddingRequest(BaseModel):
    """A1111's /sdapi/v1/train/embedding body (the fields Easel uses; the others are accepted and ignored)."""

    model_config = {"extra": "allow"}

    embedding_name: str = Field(description="an embedding in models/embeddings (create it first)")
    learn_rate: str = Field("0.005", description="a rate, or a schedule: '0.005:100, 1e-3:1000, 1e-5'")
    batch_size: int = Field(1, ge=1, le=64)
    gradient_step: int = Field(1, ge=1, le=64)
    data_root: str = Field("", description="a folder of pictures (with a .txt caption beside each, optional)")
    template_filename: str = "style_filewords.txt"
    training_width: int = Field(512, ge=64, le=2048)
    training_height: int = Field(512, ge=64, le=2048)
    steps: int = Field(500, ge=1, le=100_000)
    shuffle_tags: bool = False
    tag_drop_out: float = Field(0.0, ge=0.0, le=1.0)
    latent_sampling_method: str = "once"
    clip_grad_mode: str = "disabled"
    clip_grad_value: str = "0.1"
    save_embedding_every: int = Field(500, ge=0)
    create_image_every: int = Field(0, ge=0)
    seed: int = 0

    @field_validator("latent_sampling_method")
    @classmethod
    def _sampling(cls, v: str) -> str:
        if v not in ("once", "deterministic", "random"):
            raise ValueError("must be once, deterministic or random")
        return v

    @field_validator("clip_grad_mode")
    @classmethod
    def _clip(cls, v: str) -> str:
        if v not in ("disabled", "value", "norm"):
            raise ValueError("must be disabled, value or norm")
        return v


# -- pieces -------------------------------------------------------------------------------------------------
def learning_rates(text: str, steps: int) -> Callable[[int], float]:
    """A1111's rate schedule: `0.005` or `0.005:100, 1e-3:1000, 1e-5` (each rate until that step)."""
    plan: list[tuple[float, int]] = []
    for part in [p.strip() for p in str(text).split(",") if p.strip()]:
        rate, _, until = part.partition(":")
        try:
            plan.append((float(rate), int(until) if until.strip() else steps))
        except ValueError:
            raise FieldError("learn_rate", f"{part!r} is not a rate or rate:step") from None
        if plan[-1][0] <= 0:
            raise FieldError("learn_rate", "rates must be positive")
    if not plan:
        raise FieldError("learn_rate", "give a rate such as 0.005")

    def at(step: int) -> float:
        return next((rate for rate, until in plan if step < until), plan[-1][0])
    return at


def templates(name: str) -> list[str]:
    path = TEMPLATES / Path(name).name
    if path.suffix != ".txt" or not path.is_file():
        known = ", ".join(sorted(p.name for p in TEMPLATES.glob("*.txt")))
        raise FieldError("template_filename", f"no template {name!r}; available: {known}")
    lines = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    return lines


def caption_of(path: Path) -> str:
    """A picture's words: the .txt beside it, else its file name without a leading number and punctuation."""
    text_file = path.with_suffix(".txt")
    if text_file.is_file():
        return text_file.read_text(encoding="utf-8", errors="replace").strip()
    return re.sub(r"^\d+[-_ ]*", "", path.stem).replace("_", " ").replace("-", " ").strip()


@dataclass
class Dataset:
    pictures: list[Image.Image]
    captions: list[str]
    means: torch.Tensor | None = None  # [n, 4, h, w] the VAE's latent means, scaled for the UNet
    stds: torch.Tensor | None = None
    once: torch.Tensor | None = None  # one sample per picture, drawn when encoded

    def encode(self, model, gen: torch.Generator) -> None:
        vae = model.vae
        with torch.no_grad():
            dists = [vae.encode(images_to_tensor([p], model.device, vae.dtype)).latent_dist for p in self.pictures]
        scale = vae.config.scaling_factor
        self.means = torch.cat([d.mean.float().cpu() for d in dists]) * scale
        self.stds = torch.cat([d.std.float().cpu() for d in dists]) * scale
        self.once = self.means + self.stds * torch.randn(self.means.shape, generator=gen)

    def latents(self, picks: list[int], method: str, gen: torch.Generator) -> torch.Tensor:
        """deterministic: the means; once: one sample per picture drawn at the start; random: a new sample."""
        if method == "deterministic":
            return self.means[picks]
        if method == "once":
            return self.once[picks]
        return self.means[picks] + self.stds[picks] * torch.randn(self.means[picks].shape, generator=gen)

    @classmethod
    def from_folder(cls, folder: Path, width: int, height: int) -> "Dataset":
        files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        if not files:
            raise FieldError("data_root", f"{folder.name} holds no pictures ({', '.join(IMAGE_SUFFIXES)})")
        pictures, captions, bad = [], [], []
        for path in files:
            try:
                image = open_image(path, "data_root")
            except FieldError:
                bad.append(path.name)
                continue
            pictures.append(image.convert("RGB").resize((width, height), Image.Resampling.LANCZOS))
            captions.append(caption_of(path))
        if bad:
            raise FieldError("data_root", f"not pictures Easel can read: {', '.join(bad[:5])}")
        if len(pictures) < MIN_IMAGES:
            raise FieldError("data_root", f"give at least {MIN_IMAGES} pictures (found {len(pictures)})")
        return cls(pictures, captions)


def prompt_for(template: str, name: str, words: str, rng: random.Random, shuffle: bool, drop: float) -> str:
    tags = [t.strip() for t in words.split(",") if t.strip()]
    if shuffle:
        rng.shuffle(tags)
    if drop > 0:
        tags = [t for t in tags if rng.random() >= drop]
    return template.replace("[name]", name).replace("[filewords]", ", ".join(tags))


def initial_vectors(model, init_text: str, n: int) -> torch.Tensor:
    """[n, width] from the token embeddings of `init_text` (repeated to n; zeros when it has no tokens)."""
    table = model.text_encoder.get_input_embeddings().weight
    ids = model.tokenizer(init_text, add_special_tokens=False)["input_ids"] if init_text else []
    if not ids:
        return torch.zeros(n, table.shape[1])
    rows = table[torch.tensor(ids, device=table.device)].detach().float().cpu()
    return rows.repeat((n + len(ids) - 1) // len(ids), 1)[:n].clone()


def save_embedding(path: Path, name: str, vectors: torch.Tensor, step: int, checkpoint: Any) -> Path:
    """A1111's `.pt` layout, written to a temporary file and renamed (never half a file under the name)."""
    data = {"string_to_token": {"*": 265}, "string_to_param": {"*": vectors.detach().float().cpu().clone()},
            "name": name, "step": int(step), "sd_checkpoint": checkpoint.info.shorthash if checkpoint else None,
            "sd_checkpoint_name": checkpoint.info.model_name if checkpoint else None}
    tmp = path.with_name(f".{path.name}.tmp")
    torch.save(data, tmp)
    tmp.replace(path)
    return path


def create_embedding(folder: Path, model, request: CreateEmbeddingRequest) -> Path:
    path = folder / f"{request.name}.pt"
    if path.exists() and not request.overwrite_old:
        raise FieldError("name", f"{path.name} exists (set overwrite_old to replace it)")
    folder.mkdir(parents=True, exist_ok=True)
    vectors = initial_vectors(model, request.init_text, request.num_vectors_per_token)
    return save_embedding(path, request.name, vectors, 0, model)


# -- training ------------------------------------------------------------------------------------------------
@dataclass
class TrainResult:
    embedding: Path
    steps_done: int
    last_loss: float | None
    log: Path
    interrupted: bool = False
    copies: list[Path] = field(default_factory=list)
    previews: list[Path] = field(default_factory=list)


def train_embedding(request: TrainEmbeddingRequest, embedding_path: Path, dataset: Dataset, log_dir: Path,
                    models: Callable[[], Any], job: Any,
                    preview: Callable[[Any, str, int], Path] | None = None) -> TrainResult:
    """Train the embedding's vectors (only those) for `request.steps` steps from the step it is at.

    `models()` gives the job's checkpoint on its device (called again after every turn given to others);
    `job` is the queue's job (progress, interrupt, turns); every `create_image_every` steps the embedding
    is saved and `preview(model, prompt, step)` makes a picture with it."""
    existing = load_embedding(embedding_path)
    name = embedding_path.stem
    start_step = int(_stored_step(embedding_path))
    vectors = torch.nn.Parameter(next(iter(existing.vectors.values())).clone().float())
    optimizer = torch.optim.AdamW([vectors], lr=1e-3, weight_decay=0.0)
    state_path = embedding_path.with_name(f"{name}.optim.pt")
    if state_path.is_file() and start_step > 0:
        optimizer.load_state_dict(torch.load(state_path, map_location="cpu", weights_only=True))
    rate = learning_rates(request.learn_rate, request.steps)
    lines = templates(request.template_filename)
    rng = random.Random(request.seed + start_step)
    gen = torch.Generator().manual_seed(request.seed + start_step)
    log_dir.mkdir(parents=True, exist_ok=True)
    log = log_dir / "loss.csv"
    new_log = not log.exists()
    copies: list[Path] = []
    previews: list[Path] = []
    model = models()
    if getattr(model, "text_encoder_2", None) is not None:
        raise FieldError("embedding_name", "training SDXL embeddings (two text encoders) is not supported yet")
    dataset.encode(model, gen)
    encoder, encoder_for = None, None  # rebuilt only when the lease hands back another model object
    scheduler = DDPMScheduler.from_config(model.scheduler_config)
    prediction = model.family.prediction_type
    loss_value: float | None = None
    step = start_step
    total = start_step + request.steps
    accumulated = 0
    with log.open("a", newline="") as handle:
        writer = csv.writer(handle)
        if new_log:
            writer.writerow(["step", "loss", "learn_rate", "seconds"])
        started = time.perf_counter()
        while step < total:
            if job is not None and job.should_stop():
                break
            model = models()
            if encoder_for is not model:
                encoder = PromptEncoder(model.tokenizer, model.text_encoder, 1,
                                        embeddings={name: Embedding(name, embedding_path, {"clip_l": vectors}, "")})
                encoder_for = model
            picks = [rng.randrange(len(dataset.pictures)) for _ in range(request.batch_size)]
            x = dataset.latents(picks, request.latent_sampling_method, gen).to(model.device)
            noise = torch.randn(x.shape, generator=gen).to(model.device)
            t = torch.randint(0, scheduler.config.num_train_timesteps, (len(picks),), generator=gen).to(model.device)
            noisy = scheduler.add_noise(x, noise, t)
            prompts = [prompt_for(rng.choice(lines), name, dataset.captions[i], rng, request.shuffle_tags,
                                  request.tag_drop_out) for i in picks]
            with torch.enable_grad():
                cond = torch.cat([encoder.encode_for_training(p) for p in prompts])
                pred = model.unet(noisy.to(model.dtype), t, encoder_hidden_states=cond.to(model.dtype)).sample
                target = scheduler.get_velocity(x, noise, t) if prediction == "v_prediction" else noise
                loss = torch.nn.functional.mse_loss(pred.float(), target.float())
                (grad,) = torch.autograd.grad(loss / request.gradient_step, [vectors])
            vectors.grad = grad if vectors.grad is None else vectors.grad + grad
            accumulated += 1
            loss_value = float(loss.detach())
            if accumulated == request.gradient_step:
                _clip(vectors, request)
                for group in optimizer.param_groups:
                    group["lr"] = rate(step)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                accumulated = 0
                step += 1
                writer.writerow([step, f"{loss_value:.6f}", f"{rate(step - 1):g}",
                                 f"{time.perf_counter() - started:.2f}"])
                if job is not None:
                    job.on_step(step - start_step, request.steps)
                    job.set_stage(f"training {name}: step {step}, loss {loss_value:.4f}, lr {rate(step - 1):g}")
                if request.save_embedding_every and step % request.save_embedding_every == 0 and step < total:
                    copies.append(save_embedding(embedding_path.with_name(f"{name}-{step}.pt"), name, vectors, step,
                                                 model))
                if preview is not None and request.create_image_every and step % request.create_image_every == 0:
                    save_embedding(embedding_path, name, vectors, step, model)
                    words = dataset.captions[0]
                    previews.append(preview(model, prompt_for(lines[0], name, words, rng, False, 0.0), step))
                if job is not None:
                    job.yield_turn()  # another owner's job may run now; `models()` takes ours back next step
    save_embedding(embedding_path, name, vectors, step, model)
    torch.save(optimizer.state_dict(), state_path)
    return TrainResult(embedding_path, step, loss_value, log, interrupted=step < total, copies=copies,
                       previews=previews)


def _clip(vectors: torch.Tensor, request: TrainEmbeddingRequest) -> None:
    if request.clip_grad_mode == "disabled" or vectors.grad is None:
        return
    try:
        limit = float(request.clip_grad_value)
    except ValueError:
        raise FieldError("clip_grad_value", "must be a number") from None
    if request.clip_grad_mode == "value":
        torch.nn.utils.clip_grad_value_([vectors], limit)
    else:
        torch.nn.utils.clip_grad_norm_([vectors], limit)


def _stored_step(path: Path) -> int:
    raw = torch.load(path, map_location="cpu", weights_only=True)
    return int(raw.get("step", 0) or 0) if isinstance(raw, dict) else 0
