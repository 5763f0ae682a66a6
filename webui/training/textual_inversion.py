"""Textual inversion: a new word learned from a few pictures, as A1111's Train tab makes it.

*Create* writes `models/embeddings/NAME.pt` in A1111's format (`string_to_param: {"*": [n, width]}`, `name`,
`step`, `sd_checkpoint`, `sd_checkpoint_name`), or, asked for (`file_format`), `NAME.safetensors` with the
vectors under `emb_params` as community files have them (the same facts in its metadata); an SDXL embedding
has a half per text encoder (`clip_l`, `clip_g`) and is always a `.safetensors`, as the community's are. Its
vectors start from the token embeddings of the initialisation text. *Train* teaches those vectors, and
nothing else, from pictures and captions (a folder on the server, or pictures sent with the request): each
step takes a batch of the pictures' latents, noises them at random timesteps, builds each caption from a
prompt template (`[name]` → the embedding, `[filewords]` → the picture's words), and minimises the UNet's
noise prediction error. The vectors enter the text encoders through the same prompt encoder and forward
hook that generation uses (webui/generation/engine.py `prompt_encoder_for`, conditioning.py; SDXL's pooled
text embedding and size ids too), and their gradient is taken with `torch.autograd.grad`, so no gradient is
ever stored on the shared model's weights: the loaded model is unchanged for everyone else.

Training runs as a job (kind "train") in the one queue: between steps it lets other owners' jobs take a turn
(`job.yield_turn`) and then takes its model back from the lease, it stops at once when interrupted (saving
what it has), and it writes `NAME-STEP` copies in the embedding's own format (in `DATA_DIR/train/NAME/embeddings/`,
A1111's log directory, so they do not crowd the prompt's embedding list), the loss log
(`DATA_DIR/train/NAME/loss.csv`, flushed every step so the Train tab can plot it while it grows) and the
optimizer state (`DATA_DIR/train/NAME/NAME.optim.pt`, so a later run resumes where this one stopped).
"""
from __future__ import annotations

import csv
import random
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Literal

import torch
from diffusers import DDPMScheduler
from PIL import Image
from pydantic import BaseModel, Field, field_validator, model_validator
from safetensors.torch import save_file

from webui.errors import FieldError
from webui.generation.conditioning import pad_to_length
from webui.generation.engine import prompt_encoder_for, sdxl_time_ids
from webui.generation.latents import images_to_tensor
from webui.images.decode import decode_image, open_image
from webui.models.checkpoint_io import read_safetensors_metadata
from webui.models.embeddings import SUFFIXES, Embedding, load_embedding
from webui.models.errors import ModelError

TEMPLATES = Path(__file__).resolve().parent / "templates"
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
MIN_IMAGES = 2
MAX_SENT_IMAGES = 500  # pictures sent with one request (each is also held to the body and picture limits)
TRAINABLE = (".pt", ".safetensors")  # the formats Create writes and Train rewrites


class CreateEmbeddingRequest(BaseModel):
    """A1111's /sdapi/v1/create/embedding body, with Easel's `file_format`."""

    name: str
    num_vectors_per_token: int = Field(1, ge=1, le=75)
    init_text: str = Field("*", max_length=1000)
    overwrite_old: bool = False
    file_format: Literal["pt", "safetensors"] | None = Field(
        None, description="Easel: 'pt' (A1111's string_to_param) or 'safetensors' (emb_params; SDXL: clip_l and "
                          "clip_g); unset: .pt, and .safetensors for SDXL (its only format)")

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not NAME.fullmatch(v.strip()):
            raise ValueError("use 1 to 64 letters, digits and ._- (it becomes the file name and the prompt word)")
        return v.strip()


class TrainEmbeddingRequest(BaseModel):
    """A1111's /sdapi/v1/train/embedding body (the fields Easel uses; the others are accepted and ignored),
    with Easel's `images` and `captions`: pictures sent with the request instead of a folder."""

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
    images: list[str] = Field(default_factory=list, max_length=MAX_SENT_IMAGES,
                              description="Easel: the pictures as base64 (data: URLs too), when data_root is empty")
    captions: list[str] = Field(default_factory=list, max_length=MAX_SENT_IMAGES,
                                description="Easel: each picture's words for [filewords], in the order of images")

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

    @model_validator(mode="after")
    def _captions(self) -> "TrainEmbeddingRequest":
        if len(self.captions) > len(self.images):
            raise ValueError(f"captions: one per picture in images at most ({len(self.captions)} captions, "
                             f"{len(self.images)} pictures)")
        return self


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


def words_from_name(stem: str) -> str:
    """A picture's words from its file name: without a leading number, `_` and `-` as spaces."""
    return re.sub(r"^\d+[-_ ]*", "", stem).replace("_", " ").replace("-", " ").strip()


def caption_of(path: Path) -> str:
    """A picture's words: the .txt beside it, else its file name (`words_from_name`)."""
    text_file = path.with_suffix(".txt")
    if text_file.is_file():
        return text_file.read_text(encoding="utf-8", errors="replace").strip()
    return words_from_name(path.stem)


def _training_size(image: Image.Image, width: int, height: int) -> Image.Image:
    return image.convert("RGB").resize((width, height), Image.Resampling.LANCZOS)


@dataclass
class Dataset:
    pictures: list[Image.Image]
    captions: list[str]
    source: str = "data_root"  # the request field the pictures came from (what an error about them names)
    means: torch.Tensor | None = None  # [n, 4, h, w] the VAE's latent means, scaled for the UNet
    stds: torch.Tensor | None = None
    once: torch.Tensor | None = None  # one sample per picture, drawn when encoded

    def encode(self, model, gen: torch.Generator) -> None:
        """The pictures' latent distributions (a VAE that overflows in fp16, as SDXL's does, runs again in fp32
        for this, as the engine's decoding does)."""
        vae = model.vae
        means, stds = self._encoded(vae, model.device, vae.dtype)
        if not (torch.isfinite(means).all() and torch.isfinite(stds).all()) and vae.dtype == torch.float16:
            vae.to(torch.float32)
            try:
                means, stds = self._encoded(vae, model.device, torch.float32)
            finally:
                vae.to(torch.float16)
        if not torch.isfinite(means).all():
            raise FieldError(self.source, "the VAE gave NaNs for these pictures even in fp32; try another VAE")
        scale = vae.config.scaling_factor
        self.means, self.stds = means * scale, stds * scale
        self.once = self.means + self.stds * torch.randn(self.means.shape, generator=gen)

    def _encoded(self, vae, device, dtype) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            dists = [vae.encode(images_to_tensor([p], device, dtype)).latent_dist for p in self.pictures]
        return torch.cat([d.mean.float().cpu() for d in dists]), torch.cat([d.std.float().cpu() for d in dists])

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
            pictures.append(_training_size(image, width, height))
            captions.append(caption_of(path))
        if bad:
            raise FieldError("data_root", f"not pictures Easel can read: {', '.join(bad[:5])}")
        if len(pictures) < MIN_IMAGES:
            raise FieldError("data_root", f"give at least {MIN_IMAGES} pictures (found {len(pictures)})")
        return cls(pictures, captions)

    @classmethod
    def from_sent(cls, images: list[str], captions: list[str], width: int, height: int) -> "Dataset":
        """Pictures sent with the request (base64; the page's uploads arrive this way too), each checked from
        its header before it is decoded (FieldError naming `images.N`), with the caption given for it."""
        if len(images) < MIN_IMAGES:
            raise FieldError("images", f"give at least {MIN_IMAGES} pictures (got {len(images)})")
        pictures = [_training_size(decode_image(value, f"images.{n}"), width, height) for n, value in enumerate(images)]
        words = [(captions[n] if n < len(captions) else "").strip() for n in range(len(pictures))]
        return cls(pictures, words, "images")


def prompt_for(template: str, name: str, words: str, rng: random.Random, shuffle: bool, drop: float) -> str:
    tags = [t.strip() for t in words.split(",") if t.strip()]
    if shuffle:
        rng.shuffle(tags)
    if drop > 0:
        tags = [t for t in tags if rng.random() >= drop]
    return template.replace("[name]", name).replace("[filewords]", ", ".join(tags))


def log_folder(data_dir: Path, name: str) -> Path:
    """Where an embedding's training writes its loss log and preview pictures (`images/NAME-STEP.png`)."""
    return data_dir / "train" / name


def embedding_file(folder: Path, name: str) -> Path | None:
    """The embedding `name`'s file in `folder`, whichever format it is in (None if there is none); FieldError
    naming `embedding_name` when it is not one Train rewrites, or when two files claim the name."""
    found = [folder / f"{name}{suffix}" for suffix in SUFFIXES if (folder / f"{name}{suffix}").is_file()]
    if len(found) > 1:
        raise FieldError("embedding_name", f"{' and '.join(p.name for p in found)} both exist; remove one (the "
                                           "prompt word must name one file)")
    if found and found[0].suffix not in TRAINABLE:
        raise FieldError("embedding_name", f"{found[0].name}: Easel trains .pt and .safetensors embeddings")
    return found[0] if found else None


def encoder_widths(model) -> dict[str, int]:
    """The vectors an embedding needs for this model: SD1/SD2 one set (the loader's `clip_l` key, whatever
    the width), SDXL one per text encoder."""
    widths = {"clip_l": model.text_encoder.config.hidden_size}
    if getattr(model, "text_encoder_2", None) is not None:
        widths["clip_g"] = model.text_encoder_2.config.hidden_size
    return widths


def _describe(widths: dict[str, int]) -> str:
    if set(widths) == {"clip_l"}:
        return f"{widths['clip_l']}-wide vectors"
    return " + ".join(f"{key} {width}" for key, width in widths.items()) + " wide vectors"


def initial_vectors(model, init_text: str, n: int) -> dict[str, torch.Tensor]:
    """{half: [n, width]} from the token embeddings of `init_text` in each text encoder (repeated to n; zeros
    when it has no tokens)."""
    halves = {"clip_l": (model.tokenizer, model.text_encoder)}
    if getattr(model, "text_encoder_2", None) is not None:
        halves["clip_g"] = (model.tokenizer_2, model.text_encoder_2)
    out = {}
    for key, (tokenizer, encoder) in halves.items():
        table = encoder.get_input_embeddings().weight
        ids = tokenizer(init_text, add_special_tokens=False)["input_ids"] if init_text else []
        if not ids:
            out[key] = torch.zeros(n, table.shape[1])
            continue
        rows = table[torch.tensor(ids, device=table.device)].detach().float().cpu()
        out[key] = rows.repeat((n + len(ids) - 1) // len(ids), 1)[:n].clone()
    return out


def save_embedding(path: Path, name: str, vectors: dict[str, torch.Tensor], step: int, checkpoint: Any) -> Path:
    """The embedding in the format its suffix names, written to a temporary file and renamed (never half a file
    under the name). `.pt`: A1111's layout (`string_to_param`, `name`, `step`, …); `.safetensors`: `emb_params`,
    or SDXL's `clip_l`/`clip_g`, with the same facts as metadata. (An SDXL `.pt`, made elsewhere, keeps just its
    two tensors: A1111 reads such a file only when it holds nothing else.)"""
    tensors = {key: v.detach().float().cpu().contiguous().clone() for key, v in vectors.items()}
    facts = {"name": name, "step": int(step), "sd_checkpoint": checkpoint.info.shorthash if checkpoint else None,
             "sd_checkpoint_name": checkpoint.info.model_name if checkpoint else None}
    single = set(tensors) == {"clip_l"}
    tmp = path.with_name(f".{path.name}.tmp")
    if path.suffix == ".safetensors":
        save_file({"emb_params": tensors["clip_l"]} if single else tensors, str(tmp),
                  metadata={k: str(v) for k, v in facts.items() if v is not None})
    else:
        torch.save({"string_to_token": {"*": 265}, "string_to_param": {"*": tensors["clip_l"]}, **facts} if single
                   else tensors, tmp)
    tmp.replace(path)
    return path


def create_embedding(folder: Path, model, request: CreateEmbeddingRequest) -> Path:
    """A new embedding file for `model` (SDXL: both halves); a file of another format under the same name is
    removed when overwriting, so the prompt word names one file."""
    taken = [folder / f"{request.name}{suffix}" for suffix in SUFFIXES if (folder / f"{request.name}{suffix}").exists()]
    if taken and not request.overwrite_old:
        raise FieldError("name", f"{taken[0].name} exists (set overwrite_old to replace it)")
    sdxl = getattr(model, "text_encoder_2", None) is not None
    if sdxl and request.file_format == "pt":
        raise FieldError("file_format", "SDXL embeddings are .safetensors (clip_l and clip_g, the format A1111 and "
                                        "ComfyUI read); leave file_format unset or choose safetensors")
    file_format = request.file_format or ("safetensors" if sdxl else "pt")
    folder.mkdir(parents=True, exist_ok=True)
    vectors = initial_vectors(model, request.init_text, request.num_vectors_per_token)
    path = save_embedding(folder / f"{request.name}.{file_format}", request.name, vectors, 0, model)
    for old in taken:
        if old != path:
            old.unlink(missing_ok=True)
    return path


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
    """Train the embedding's vectors (only those; SDXL: both halves together) for `request.steps` steps from
    the step it is at.

    `embedding_path` names the embedding: its file in whichever format it was made (`NAME.pt` or
    `NAME.safetensors` beside it) is the one trained and rewritten. `models()` gives the job's checkpoint on
    its device (called again after every turn given to others); `job` is the queue's job (progress,
    interrupt, turns); every `create_image_every` steps the embedding is saved and `preview(model, prompt,
    step)` makes a picture with it."""
    name = embedding_path.stem
    path = embedding_file(embedding_path.parent, name)
    if path is None:
        raise FieldError("embedding_name", f"no embedding {name!r} in {embedding_path.parent.name} (create it first)")
    try:
        existing = load_embedding(path)
    except ModelError as e:
        raise FieldError("embedding_name", str(e)) from None
    start_step = _stored_step(path)
    model = models()
    halves = encoder_widths(model)
    have = {key: v.shape[-1] for key, v in existing.vectors.items()}
    if have != halves:
        raise FieldError("embedding_name", f"{path.name} holds {_describe(have)}; this checkpoint takes "
                                           f"{_describe(halves)} (create the embedding with this checkpoint)")
    vectors = {key: torch.nn.Parameter(existing.vectors[key].clone().float()) for key in halves}
    params = list(vectors.values())
    optimizer = torch.optim.AdamW(params, lr=1e-3, weight_decay=0.0)
    state_path = log_dir / f"{name}.optim.pt"  # beside the loss log: models/embeddings holds embeddings only
    if state_path.is_file() and start_step > 0:
        try:
            optimizer.load_state_dict(torch.load(state_path, map_location="cpu", weights_only=True))
        except (ValueError, KeyError, RuntimeError):  # another embedding's state under this name: start afresh
            pass
    rate = learning_rates(request.learn_rate, request.steps)
    lines = templates(request.template_filename)
    rng = random.Random(request.seed + start_step)
    gen = torch.Generator().manual_seed(request.seed + start_step)
    log_dir.mkdir(parents=True, exist_ok=True)
    log = log_dir / "loss.csv"
    new_log = not log.exists()
    copies: list[Path] = []
    previews: list[Path] = []
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
                encoder = prompt_encoder_for(model, 1, {name: Embedding(name, path, vectors, "")})
                encoder_for = model
            picks = [rng.randrange(len(dataset.pictures)) for _ in range(request.batch_size)]
            x = dataset.latents(picks, request.latent_sampling_method, gen).to(model.device)
            noise = torch.randn(x.shape, generator=gen).to(model.device)
            t = torch.randint(0, scheduler.config.num_train_timesteps, (len(picks),), generator=gen).to(model.device)
            noisy = scheduler.add_noise(x, noise, t)
            prompts = [prompt_for(rng.choice(lines), name, dataset.captions[i], rng, request.shuffle_tags,
                                  request.tag_drop_out) for i in picks]
            with torch.enable_grad():
                cond, added = _conditioning(encoder, model, prompts, request)
                pred = model.unet(noisy.to(model.dtype), t, encoder_hidden_states=cond.to(model.dtype),
                                  added_cond_kwargs=added).sample
                target = scheduler.get_velocity(x, noise, t) if prediction == "v_prediction" else noise
                loss = torch.nn.functional.mse_loss(pred.float(), target.float())
                grads = torch.autograd.grad(loss / request.gradient_step, params)
            for param, grad in zip(params, grads):
                param.grad = grad if param.grad is None else param.grad + grad
            accumulated += 1
            loss_value = float(loss.detach())
            if accumulated == request.gradient_step:
                _clip(params, request)
                for group in optimizer.param_groups:
                    group["lr"] = rate(step)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                accumulated = 0
                step += 1
                writer.writerow([step, f"{loss_value:.6f}", f"{rate(step - 1):g}",
                                 f"{time.perf_counter() - started:.2f}"])
                handle.flush()  # the Train tab plots the log while it grows
                if job is not None:
                    job.on_step(step - start_step, request.steps)
                    resumed = f", the embedding at step {step}" if start_step else ""  # the job's own steps follow
                    job.set_stage(f"training {name}: loss {loss_value:.4f}, lr {rate(step - 1):g}{resumed}")
                if request.save_embedding_every and step % request.save_embedding_every == 0 and step < total:
                    copy = log_dir / "embeddings" / f"{name}-{step}{path.suffix}"  # A1111's "copy to log directory"
                    copy.parent.mkdir(exist_ok=True)
                    copies.append(save_embedding(copy, name, vectors, step, model))
                if preview is not None and request.create_image_every and step % request.create_image_every == 0:
                    save_embedding(path, name, vectors, step, model)
                    words = dataset.captions[0]
                    previews.append(preview(model, prompt_for(lines[0], name, words, rng, False, 0.0), step))
                if job is not None:
                    job.yield_turn()  # another owner's job may run now; `models()` takes ours back next step
    save_embedding(path, name, vectors, step, model)
    torch.save(optimizer.state_dict(), state_path)
    return TrainResult(path, step, loss_value, log, interrupted=step < total, copies=copies, previews=previews)


def _conditioning(encoder, model, prompts: list[str],
                  request: TrainEmbeddingRequest) -> tuple[torch.Tensor, dict | None]:
    """The batch's text conditioning with gradients to the vectors, and SDXL's added inputs (the pooled text
    embedding and the size ids at the training size, as generation builds them), else None."""
    encoded = [encoder.encode_for_training(p) for p in prompts]
    longest = max(c.shape[1] for c, _ in encoded)
    if any(c.shape[1] != longest for c, _ in encoded):  # a caption past 75 tokens: pad the others, as generation
        empty = encoder.empty_chunk()
        encoded = [(pad_to_length(c, longest, empty), pooled) for c, pooled in encoded]
    cond = torch.cat([c for c, _ in encoded])
    time_ids = sdxl_time_ids(model, request.training_width, request.training_height, len(prompts))
    if time_ids is None:
        return cond, None
    pooled = torch.cat([p for _, p in encoded]).to(model.device, model.dtype)
    return cond, {"text_embeds": pooled, "time_ids": time_ids}


def _clip(params: list[torch.Tensor], request: TrainEmbeddingRequest) -> None:
    if request.clip_grad_mode == "disabled" or any(p.grad is None for p in params):
        return
    try:
        limit = float(request.clip_grad_value)
    except ValueError:
        raise FieldError("clip_grad_value", "must be a number") from None
    if request.clip_grad_mode == "value":
        torch.nn.utils.clip_grad_value_(params, limit)
    else:
        torch.nn.utils.clip_grad_norm_(params, limit)


def _stored_step(path: Path) -> int:
    """The step an embedding file says it is at (A1111's `step`; a .safetensors' metadata), 0 if it says none."""
    if path.suffix == ".safetensors":
        raw_step = read_safetensors_metadata(path).get("step", "0")
    else:
        raw = torch.load(path, map_location="cpu", weights_only=True)
        raw_step = raw.get("step", 0) if isinstance(raw, dict) else 0
    try:
        return int(raw_step or 0)
    except (TypeError, ValueError):
        return 0
