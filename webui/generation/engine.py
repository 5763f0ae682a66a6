"""The generation engine: runs a typed request on a loaded model. Knows nothing of Gradio or HTTP.

One sampling loop serves every job kind: it asks a diffusers scheduler for the timesteps, batches
the unconditional and conditional passes for classifier-free guidance, picks the conditioning of
the current step (prompt editing, alternation), reports progress and stops when told to.
"""
from __future__ import annotations

import inspect
import logging
import time
from dataclasses import dataclass, field

import numpy as np
import torch
from PIL import Image

from webui import __version__
from webui.images.infotext import create_infotext
from webui.models.loader import LoadedModel

from .conditioning import PromptEncoder, ScheduledConditioning
from .noise import image_noise, pick_seed
from .progress import NullProgress, ProgressSink
from .requests import GenerationParams, Txt2ImgRequest
from .samplers import build_scheduler, resolve_sampler

log = logging.getLogger(__name__)


@dataclass
class GenerationResult:
    images: list[Image.Image]
    infotexts: list[str]
    seeds: list[int]
    subseeds: list[int]
    request: GenerationParams  # with seed, size and sampler resolved
    interrupted: bool = False
    seconds: float = 0.0
    extra: dict = field(default_factory=dict)

    @property
    def info(self) -> str:
        return self.infotexts[0] if self.infotexts else ""


def resolve_request(req: GenerationParams, model: LoadedModel) -> GenerationParams:
    """The request with everything left to Easel decided: seeds, size, canonical sampler names."""
    width, height = model.default_size
    return req.model_copy(update={
        "seed": pick_seed(req.seed),
        "subseed": pick_seed(req.subseed),
        "width": req.width or width,
        "height": req.height or height,
    })


def infotext_params(req: GenerationParams, model: LoadedModel, seed: int, subseed: int) -> dict:
    return {
        "Steps": req.steps,
        "Sampler": req.sampler_name,
        "Schedule type": req.scheduler,
        "CFG scale": req.cfg_scale,
        "Seed": seed,
        "Size": f"{req.width}x{req.height}",
        "Model hash": model.info.shorthash,
        "Model": model.info.model_name,
        "Variation seed": subseed if req.subseed_strength > 0 else None,
        "Variation seed strength": req.subseed_strength if req.subseed_strength > 0 else None,
        "Clip skip": req.clip_skip if req.clip_skip > 1 else None,
        "Version": f"easel-{__version__}",
    }


def latents_to_images(model: LoadedModel, latents: torch.Tensor) -> list[Image.Image]:
    vae = model.vae
    with torch.no_grad():
        decoded = vae.decode(latents.to(vae.dtype) / vae.config.scaling_factor).sample
    arr = ((decoded.float() / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8)
    arr = arr.permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(np.ascontiguousarray(a)) for a in arr]


class Engine:
    """Stateless: every call gets the model and request it works on."""

    def txt2img(self, model: LoadedModel, req: Txt2ImgRequest, progress: ProgressSink | None = None) -> GenerationResult:
        progress = progress or NullProgress()
        started = time.perf_counter()
        req = resolve_request(req, model)
        encoder = PromptEncoder(model.tokenizer, model.text_encoder, req.clip_skip)
        cond = ScheduledConditioning(encoder, [req.prompt] * req.batch_size, req.steps)
        uncond = ScheduledConditioning(encoder, [req.negative_prompt] * req.batch_size, req.steps)
        images, infotexts, seeds, subseeds = [], [], [], []
        interrupted = False
        total_steps = req.steps * req.n_iter
        for n in range(req.n_iter):
            batch_seeds = [req.seed + n * req.batch_size + i for i in range(req.batch_size)]
            batch_subseeds = [req.subseed + n * req.batch_size + i for i in range(req.batch_size)]
            latents = self.sample(
                model, req, cond, uncond, batch_seeds, batch_subseeds, progress,
                step_offset=n * req.steps, total_steps=total_steps,
            )
            if latents is None:
                interrupted = True
                break
            progress.set_stage("decoding")
            for image, s, ss in zip(latents_to_images(model, latents), batch_seeds, batch_subseeds):
                images.append(image)
                infotexts.append(create_infotext(req.prompt, req.negative_prompt, infotext_params(req, model, s, ss)))
                seeds.append(s)
                subseeds.append(ss)
        return GenerationResult(images, infotexts, seeds, subseeds, req, interrupted, time.perf_counter() - started)

    @torch.no_grad()
    def sample(
        self,
        model: LoadedModel,
        req: GenerationParams,
        cond: ScheduledConditioning,
        uncond: ScheduledConditioning,
        seeds: list[int],
        subseeds: list[int],
        progress: ProgressSink,
        step_offset: int = 0,
        total_steps: int | None = None,
    ) -> torch.Tensor | None:
        """Denoise a batch from seeded noise; returns final latents, or None when told to stop."""
        device, dtype = model.device, model.dtype
        sampler, schedule = resolve_sampler(req.sampler_name, req.scheduler)
        scheduler = build_scheduler(sampler, schedule, model.scheduler_config)
        if hasattr(scheduler.config, "noise_sampler_seed") and "noise_sampler_seed" in scheduler.config:
            scheduler.register_to_config(noise_sampler_seed=seeds[0])
        scheduler.set_timesteps(req.steps, device=device)
        shape = (1, model.latent_channels, req.height // model.vae_scale_factor, req.width // model.vae_scale_factor)
        noises, generators = zip(*(image_noise(shape, s, ss, req.subseed_strength) for s, ss in zip(seeds, subseeds)))
        latents = torch.cat(noises).to(device=device, dtype=torch.float32) * scheduler.init_noise_sigma
        step_kwargs = {"generator": list(generators)} if "generator" in inspect.signature(scheduler.step).parameters else {}
        guided = req.cfg_scale != 1.0
        length = max(cond.max_length(req.steps), uncond.max_length(req.steps)) if guided else None
        timesteps = scheduler.timesteps
        total_steps = total_steps or req.steps
        for i, t in enumerate(timesteps):
            if progress.should_stop():
                return None
            step = i * req.steps // len(timesteps)  # Heun/DPM2 run two model passes per step
            model_in = torch.cat([latents, latents]) if guided else latents
            model_in = scheduler.scale_model_input(model_in, t).to(dtype)
            c = cond.at(step, length)
            context = torch.cat([uncond.at(step, length), c]) if guided else c
            pred = model.unet(model_in, t, encoder_hidden_states=context.to(dtype)).sample.float()
            if guided:
                pred_uncond, pred_cond = pred.chunk(2)
                pred = pred_uncond + req.cfg_scale * (pred_cond - pred_uncond)
            latents = scheduler.step(pred, t, latents, **step_kwargs, return_dict=False)[0]
            done = step_offset + (i + 1) * req.steps // len(timesteps)
            progress.on_step(done, total_steps, latents)
        return latents
