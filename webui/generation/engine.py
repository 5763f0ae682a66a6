"""The generation engine: runs a typed request on a loaded model. Knows nothing of Gradio or HTTP.

One sampling loop serves every job kind. It asks a diffusers scheduler for the timesteps, batches
the unconditional and conditional passes for classifier-free guidance, picks the conditioning of
the current step (prompt editing, alternation), and reports progress / stops when told to. img2img
starts part-way down the noise schedule from the encoded init image; inpainting with an ordinary
checkpoint blends the re-noised original back outside the mask after every step (A1111's latent
blending), while a 9-channel inpainting UNet gets the mask and the masked image as extra input.
"""
from __future__ import annotations

import inspect
import logging
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from webui import __version__
from webui.images.infotext import create_infotext
from webui.models.embeddings import EmbeddingLibrary
from webui.models.lora import LoraLibrary, activate_loras, extract_lora_tags
from webui.models.loader import LoadedModel

from . import masks as M
from .conditioning import DualPromptEncoder, PromptEncoder, ScheduledConditioning
from .noise import image_noise, pick_seed
from .progress import NullProgress, ProgressSink
from .requests import GenerationParams, Img2ImgRequest, Txt2ImgRequest
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


@dataclass
class InitLatents:
    """Where img2img/inpainting sampling starts, per image of a batch."""

    latents: torch.Tensor  # [B, C, h, w], already scaled by the VAE factor
    strength: float
    regenerate: torch.Tensor | None = None  # [B, 1, h, w], 1 = sample anew, 0 = keep the original (blending)
    unet_extra: torch.Tensor | None = None  # [B, 5, h, w] mask + masked-image latents for 9-channel UNets


@dataclass
class _Prepared:
    """What an img2img request turns into before sampling: working images and how to put them back."""

    work_image: Image.Image  # the init image at the generation size (after crop/resize/fill)
    work_mask: Image.Image | None  # at the generation size, white = regenerate
    overlay_base: Image.Image | None  # the picture the result is composited into
    overlay_mask: Image.Image | None
    paste_box: tuple[int, int, int, int] | None


def resolve_request(req: GenerationParams, model: LoadedModel, size: tuple[int, int] | None = None):
    """The request with everything left to Easel decided: seeds, size, canonical sampler names."""
    width, height = size or model.default_size
    return req.model_copy(update={
        "seed": pick_seed(req.seed),
        "subseed": pick_seed(req.subseed),
        "width": req.width or width,
        "height": req.height or height,
    })


def infotext_params(req: GenerationParams, model: LoadedModel, seed: int, subseed: int,
                    extra: dict | None = None) -> dict:
    params = {
        "Steps": req.steps,
        "Sampler": req.sampler_name,
        "Schedule type": req.scheduler,
        "CFG scale": req.cfg_scale,
        "Seed": seed,
        "Size": f"{req.width}x{req.height}",
        "Model hash": model.info.shorthash,
        "Model": model.info.model_name,
        "VAE hash": getattr(model.vae_file, "shorthash", None),
        "VAE": model.vae_file.name.rsplit(".", 1)[0] if model.vae_file is not None else None,
        "Variation seed": subseed if req.subseed_strength > 0 else None,
        "Variation seed strength": req.subseed_strength if req.subseed_strength > 0 else None,
        "Clip skip": req.clip_skip if req.clip_skip > 1 else None,
        "Version": f"easel-{__version__}",
    }
    if isinstance(req, Img2ImgRequest):
        params["Denoising strength"] = req.denoising_strength
        if req.mask is not None:
            params["Mask blur"] = req.mask_blur
            params["Mask mode"] = M.MASK_MODES[req.inpainting_mask_invert]
            params["Masked content"] = M.MASKED_CONTENT[req.inpainting_fill]
            params["Inpaint area"] = M.INPAINT_AREAS[int(req.inpaint_full_res)]
            params["Masked area padding"] = req.inpaint_full_res_padding
    params.update(extra or {})
    return params


def images_to_tensor(images: list[Image.Image], device, dtype) -> torch.Tensor:
    arr = np.stack([np.asarray(im.convert("RGB"), dtype=np.float32) for im in images]) / 127.5 - 1.0
    return torch.from_numpy(arr).permute(0, 3, 1, 2).to(device=device, dtype=dtype)


@torch.no_grad()
def encode_images(model: LoadedModel, images: list[Image.Image]) -> torch.Tensor:
    """VAE latents (the distribution's mean, so img2img is deterministic), scaled for the UNet."""
    vae = model.vae
    latents = vae.encode(images_to_tensor(images, model.device, vae.dtype)).latent_dist.mean
    return latents.float() * vae.config.scaling_factor


@torch.no_grad()
def latents_to_images(model: LoadedModel, latents: torch.Tensor) -> list[Image.Image]:
    vae = model.vae
    remembered = ("vae_needs_fp32", id(vae))  # a VAE that overflowed once (SDXL's does) goes straight to fp32
    if vae.dtype != torch.float16 or model.speed_state.get(remembered) is not vae:
        decoded = vae.decode(latents.to(vae.dtype) / vae.config.scaling_factor).sample
        if vae.dtype != torch.float16 or not torch.isnan(decoded).any():
            return _to_images(decoded)
        if next(vae.parameters()).is_meta:  # --lowvram streams fp16 weights: no fp32 copy to decode with
            log.warning("the VAE produced NaNs in fp16; with --lowvram it cannot be re-run in fp32 (use --no-half "
                        "or another VAE)")
            return _to_images(decoded)
        # some VAEs overflow in fp16 (A1111's "NaNs in VAE"): decode once more in fp32, and from now on
        log.warning("the VAE produced NaNs in fp16; decoding again in fp32 (and in fp32 from now on for this VAE)")
        model.speed_state[remembered] = vae
    vae.to(torch.float32)
    try:
        decoded = vae.decode(latents.float() / vae.config.scaling_factor).sample
    finally:
        vae.to(torch.float16)
    return _to_images(decoded)


def _to_images(decoded: torch.Tensor) -> list[Image.Image]:
    arr = ((decoded.float() / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8)
    arr = arr.permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(np.ascontiguousarray(a)) for a in arr]


def _round8(v: float) -> int:
    return int(min(4096, max(64, round(v / 8) * 8)))


def img2img_size(req: Img2ImgRequest, image: Image.Image) -> tuple[int, int]:
    """Generation size: `scale_by` × the image, else width/height, else the image's own size (multiples of 8)."""
    if req.scale_by:
        return _round8(image.width * req.scale_by), _round8(image.height * req.scale_by)
    if req.width and req.height:
        return req.width, req.height
    if req.width or req.height:  # one side given: keep the aspect ratio
        w = req.width or req.height * image.width / image.height
        h = req.height or req.width * image.height / image.width
        return _round8(w), _round8(h)
    return _round8(image.width), _round8(image.height)


def prepare_img2img(req: Img2ImgRequest) -> _Prepared:
    """Resize/crop the init image and mask as A1111 does; raises ValueError naming the field on bad input."""
    original = M.to_rgb(req.init_image)
    width, height = req.width, req.height
    if req.mask is None:
        return _Prepared(M.resize_image(req.resize_mode, original, width, height), None, None, None, None)
    sharp = M.prepare_mask(req.mask, original.size, 0, bool(req.inpainting_mask_invert))
    if M.mask_is_empty(sharp):
        raise ValueError("mask: the mask is empty; paint the area to regenerate, or use img2img without a mask")
    blurred = M.prepare_mask(req.mask, original.size, req.mask_blur, bool(req.inpainting_mask_invert))
    if req.inpaint_full_res:
        box = M.expand_to_aspect(M.crop_region(blurred, req.inpaint_full_res_padding), width, height,
                                 original.width, original.height)
        work = original.crop(box).resize((width, height), M.LANCZOS)
        work_mask = blurred.crop(box).resize((width, height), M.LANCZOS)
        return _Prepared(work, work_mask, original, blurred, box)
    work = M.resize_image(req.resize_mode, original, width, height)
    work_mask = M.resize_image(req.resize_mode, blurred, width, height)
    # A1111 doubles the blurred mask for the overlay: its band is half as wide as the blur
    overlay = Image.fromarray(np.clip(np.asarray(work_mask, dtype=np.float32) * 2, 0, 255).astype(np.uint8))
    return _Prepared(work, work_mask, work, overlay, None)


def sdxl_time_ids(model: LoadedModel, req: GenerationParams, rows: int) -> torch.Tensor | None:
    """SDXL's size/crop numbers (original size, crop top-left, target size): the picture's own size
    with no crop, as A1111 does; None for models without them."""
    if model.unet.config.addition_embed_type != "text_time":
        return None
    ids = torch.tensor([[req.height, req.width, 0, 0, req.height, req.width]], dtype=torch.float32)
    return ids.repeat(rows, 1).to(model.device, model.dtype)


def sdxl_added_conditioning(model: LoadedModel, req: GenerationParams, cond: ScheduledConditioning,
                            uncond: ScheduledConditioning | None, step: int,
                            time_ids: torch.Tensor | None = None) -> dict | None:
    """SDXL's extra UNet inputs at `step`: the pooled text embedding and the size ids (built here
    unless the caller built them once for the whole run)."""
    if model.unet.config.addition_embed_type != "text_time":
        return None
    pooled = cond.pooled_at(step)
    if uncond is not None:
        pooled = torch.cat([uncond.pooled_at(step), pooled])
    if time_ids is None:
        time_ids = sdxl_time_ids(model, req, pooled.shape[0])
    return {"text_embeds": pooled.to(model.device, model.dtype), "time_ids": time_ids}


class Engine:
    """Holds no model: every call gets the model and request it works on. The embeddings library is
    shared (read-only here) so prompts can name textual-inversion embeddings."""

    def __init__(self, embeddings: EmbeddingLibrary | None = None, loras: LoraLibrary | None = None):
        self.embeddings = embeddings
        self.loras = loras

    def prompt_encoder(self, model: LoadedModel, clip_skip: int) -> PromptEncoder | DualPromptEncoder:
        library = self.embeddings.snapshot() if self.embeddings is not None else {}
        if model.text_encoder_2 is None:
            return PromptEncoder(model.tokenizer, model.text_encoder, clip_skip, embeddings=library,
                                 device=model.device)
        # SDXL: an embedding is usable only with vectors for both encoders (clip_l and clip_g), or
        # the two would chunk the prompt differently
        widths = (model.text_encoder.config.hidden_size, model.text_encoder_2.config.hidden_size)
        both = {n: e for n, e in library.items() if all(e.for_width(w) is not None for w in widths)}
        return DualPromptEncoder(
            PromptEncoder(model.tokenizer, model.text_encoder, clip_skip, embeddings=both, layer="penultimate",
                          device=model.device),
            PromptEncoder(model.tokenizer_2, model.text_encoder_2, clip_skip, embeddings=both, layer="penultimate",
                          device=model.device),
        )

    def _extra_params(self, encoder: PromptEncoder, loras: list) -> dict:
        extra = {}
        if loras:
            extra["Lora hashes"] = ", ".join(f"{f.name}: {f.shorthash}" for f in loras)
        if encoder.used_embeddings and self.embeddings is not None:
            known = self.embeddings.snapshot()
            hashes = ", ".join(f"{n}: {known[n].shorthash}" for n in sorted(encoder.used_embeddings) if n in known)
            if hashes:
                extra["TI hashes"] = hashes
        return extra

    # -- job kinds -------------------------------------------------------------------------------
    def txt2img(self, model: LoadedModel, req: Txt2ImgRequest, progress: ProgressSink | None = None) -> GenerationResult:
        req = resolve_request(req, model)
        init = None
        if model.family.inpainting:  # a 9-channel UNet: the whole (grey) picture is "masked"
            def init(batch_noise: torch.Tensor, n: int) -> InitLatents:
                h, w = batch_noise.shape[-2:]
                grey = encode_images(model, [Image.new("RGB", (req.width, req.height), (128, 128, 128))])
                extra = torch.cat([torch.ones(1, 1, h, w, device=grey.device), grey], dim=1).repeat(n, 1, 1, 1)
                return InitLatents(batch_noise, 1.0, None, extra)
        return self._generate(model, req, progress, init)

    def img2img(self, model: LoadedModel, req: Img2ImgRequest, progress: ProgressSink | None = None) -> GenerationResult:
        size = img2img_size(req, M.to_rgb(req.init_image))
        req = resolve_request(req.model_copy(update={"width": size[0], "height": size[1]}), model)
        prep = prepare_img2img(req)
        if req.denoising_strength == 0:  # nothing to denoise: the (resized) input itself
            return self._finish_unchanged(model, req, prep)
        work_image = prep.work_image
        if prep.work_mask is not None and req.inpainting_fill == 0:
            work_image = M.fill_masked(work_image, prep.work_mask)
        latent_upscale = req.resize_mode == 3 and prep.work_mask is None
        source = M.to_rgb(req.init_image) if latent_upscale else work_image
        if latent_upscale:
            source = source.resize((_round8(source.width), _round8(source.height)), M.LANCZOS)
        base = encode_images(model, [source])
        scale = model.vae_scale_factor
        latent_size = (req.height // scale, req.width // scale)
        if base.shape[-2:] != latent_size:
            base = F.interpolate(base, size=latent_size, mode="bilinear", align_corners=False)
        regenerate = unet_extra = None
        if prep.work_mask is not None:
            m = torch.from_numpy(np.asarray(prep.work_mask, dtype=np.float32) / 255.0)[None, None].to(base.device)
            regenerate = torch.round(F.interpolate(m, size=latent_size, mode="bilinear", align_corners=False))
        if model.family.inpainting:
            if prep.work_mask is not None:
                pixel_mask = np.asarray(prep.work_mask) < 128
                masked = Image.fromarray(np.asarray(work_image) * pixel_mask[..., None].astype(np.uint8))
                mask_latent = regenerate
            else:
                masked = Image.new("RGB", work_image.size, (128, 128, 128))
                mask_latent = torch.ones(1, 1, *latent_size, device=base.device)
            unet_extra = torch.cat([mask_latent, encode_images(model, [masked])], dim=1)

        def init(batch_noise: torch.Tensor, n: int) -> InitLatents:
            latents = base.repeat(n, 1, 1, 1)
            keep = None
            if regenerate is not None:
                keep = regenerate.repeat(n, 1, 1, 1)
                if req.inpainting_fill == 2:  # latent noise
                    latents = latents * (1 - keep) + batch_noise * keep
                elif req.inpainting_fill == 3:  # latent nothing
                    latents = latents * (1 - keep)
            extra = unet_extra.repeat(n, 1, 1, 1) if unet_extra is not None else None
            blend = None if model.family.inpainting else keep
            return InitLatents(latents, req.denoising_strength, blend, extra)

        result = self._generate(model, req, progress, init)
        if prep.overlay_mask is not None:
            result.images = [M.overlay_original(im, prep.overlay_base, prep.overlay_mask, prep.paste_box)
                             for im in result.images]
        return result

    # -- shared machinery ------------------------------------------------------------------------
    def _finish_unchanged(self, model: LoadedModel, req: Img2ImgRequest, prep: _Prepared) -> GenerationResult:
        image = prep.work_image
        if prep.overlay_mask is not None:
            image = M.overlay_original(prep.work_image, prep.overlay_base, prep.overlay_mask, prep.paste_box)
        seeds = [req.seed + i for i in range(req.total_images)]
        subseeds = [req.subseed + i for i in range(req.total_images)]
        infos = [create_infotext(req.prompt, req.negative_prompt, infotext_params(req, model, s, ss))
                 for s, ss in zip(seeds, subseeds)]
        return GenerationResult([image.copy() for _ in seeds], infos, seeds, subseeds, req,
                                extra={"inpainting_conditioning": model.family.inpainting})

    def _generate(self, model: LoadedModel, req: GenerationParams, progress: ProgressSink | None,
                  init: Callable[[torch.Tensor, int], InitLatents] | None) -> GenerationResult:
        progress = progress or NullProgress()
        started = time.perf_counter()
        prompt, uses = extract_lora_tags(req.prompt)
        negative, _ = extract_lora_tags(req.negative_prompt)
        loras = activate_loras(model, self.loras, uses) if self.loras is not None else []
        encoder = self.prompt_encoder(model, req.clip_skip)
        cond = ScheduledConditioning(encoder, [prompt] * req.batch_size, req.steps)
        uncond = ScheduledConditioning(encoder, [negative] * req.batch_size, req.steps, negative=True)
        images, infotexts, seeds, subseeds = [], [], [], []
        interrupted = False
        for n in range(req.n_iter):
            batch_seeds = [req.seed + n * req.batch_size + i for i in range(req.batch_size)]
            batch_subseeds = [req.subseed + n * req.batch_size + i for i in range(req.batch_size)]
            latents = self.sample(model, req, cond, uncond, batch_seeds, batch_subseeds, progress, init,
                                  iteration=n)
            if latents is None:
                interrupted = True
                break
            progress.set_stage("decoding")
            for image, s, ss in zip(latents_to_images(model, latents), batch_seeds, batch_subseeds):
                images.append(image)
                params = infotext_params(req, model, s, ss, self._extra_params(encoder, loras))
                infotexts.append(create_infotext(req.prompt, req.negative_prompt, params))
                seeds.append(s)
                subseeds.append(ss)
        return GenerationResult(images, infotexts, seeds, subseeds, req, interrupted, time.perf_counter() - started,
                                extra={"inpainting_conditioning": model.family.inpainting})

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
        init: Callable[[torch.Tensor, int], InitLatents] | None = None,
        iteration: int = 0,
    ) -> torch.Tensor | None:
        """Denoise one batch; returns the final latents, or None when told to stop."""
        device, dtype = model.device, model.dtype
        sampler, schedule = resolve_sampler(req.sampler_name, req.scheduler)
        scheduler = build_scheduler(sampler, schedule, model.scheduler_config)
        if "noise_sampler_seed" in scheduler.config:
            scheduler.register_to_config(noise_sampler_seed=seeds[0])
        scheduler.set_timesteps(req.steps, device=device)
        shape = (1, model.latent_channels, req.height // model.vae_scale_factor, req.width // model.vae_scale_factor)
        noises, generators = zip(*(image_noise(shape, s, ss, req.subseed_strength) for s, ss in zip(seeds, subseeds)))
        noise = torch.cat(noises).to(device=device, dtype=torch.float32)
        start = init(noise, len(seeds)) if init is not None else None
        timesteps = scheduler.timesteps
        if start is not None and start.strength < 1.0:
            order = getattr(scheduler, "order", 1)
            t_start = req.steps - min(req.steps, max(1, int(req.steps * start.strength)))
            timesteps = timesteps[t_start * order:]
            if hasattr(scheduler, "set_begin_index"):
                scheduler.set_begin_index(t_start * order)
            latents = scheduler.add_noise(start.latents, noise, timesteps[:1])
        else:
            latents = noise * scheduler.init_noise_sigma
        step_kwargs = {"generator": list(generators)} if "generator" in inspect.signature(scheduler.step).parameters else {}
        guided = req.cfg_scale != 1.0
        length = max(cond.max_length(req.steps), uncond.max_length(req.steps)) if guided else None
        n_steps = max(1, len(timesteps) // getattr(scheduler, "order", 1))
        time_ids = sdxl_time_ids(model, req, len(seeds) * (2 if guided else 1))
        total = n_steps * req.n_iter
        for i, t in enumerate(timesteps):
            if progress.should_stop():
                return None
            step = (req.steps - n_steps) + i * n_steps // len(timesteps)
            model_in = torch.cat([latents, latents]) if guided else latents
            model_in = scheduler.scale_model_input(model_in, t)
            if start is not None and start.unet_extra is not None:
                extra = start.unet_extra.to(model_in.dtype)
                model_in = torch.cat([model_in, torch.cat([extra, extra]) if guided else extra], dim=1)
            c = cond.at(step, length)
            context = torch.cat([uncond.at(step, length), c]) if guided else c
            added = sdxl_added_conditioning(model, req, cond, uncond if guided else None, step, time_ids)
            pred = model.unet(model_in.to(dtype), t, encoder_hidden_states=context.to(dtype),
                              added_cond_kwargs=added).sample.float()
            if guided:
                pred_uncond, pred_cond = pred.chunk(2)
                pred = pred_uncond + req.cfg_scale * (pred_cond - pred_uncond)
            latents = scheduler.step(pred, t, latents, **step_kwargs, return_dict=False)[0]
            if start is not None and start.regenerate is not None:  # latent blending outside the mask
                original = start.latents
                if i < len(timesteps) - 1:
                    original = scheduler.add_noise(start.latents, noise, timesteps[i + 1:i + 2])
                latents = original * (1 - start.regenerate) + latents * start.regenerate
            progress.on_step(iteration * n_steps + (i + 1) * n_steps // len(timesteps), total, latents)
        return latents
