"""Easel's own parts of generation, on the same extension points an extension uses.

- `ClassifierFreeGuidance` (guidance): uncond + scale × (cond − uncond), the combination every later
  guidance hook starts from;
- `Img2Img` (prepare, before_batch, postprocess): the init image and mask become starting latents, and
  the result is laid back over the original outside the mask (A1111's overlay);
- `InpaintingModelInput` (before_batch, unet_inputs): a 9-channel inpainting UNet gets the mask and
  the masked picture's latents as extra input channels (a grey, fully masked picture for txt2img);
- `LatentBlending` (after_step): with an ordinary checkpoint, the re-noised original is put back
  outside the mask after every step (A1111's latent blending).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from . import masks as M
from .extension_points import Batch, Feature, FeatureRegistry, Guidance, Output, Run, Step, UnetCall
from .latents import InitLatents
from .requests import Img2ImgRequest

LANCZOS = M.LANCZOS


def round8(v: float) -> int:
    return int(min(4096, max(64, round(v / 8) * 8)))


def img2img_size(req: Img2ImgRequest, image: Image.Image) -> tuple[int, int]:
    """Generation size: `scale_by` × the image, else width/height, else the image's own size (multiples of 8)."""
    if req.scale_by:
        return round8(image.width * req.scale_by), round8(image.height * req.scale_by)
    if req.width and req.height:
        return req.width, req.height
    if req.width:
        return req.width, round8(image.height * req.width / image.width)
    if req.height:
        return round8(image.width * req.height / image.height), req.height
    return round8(image.width), round8(image.height)


@dataclass
class Prepared:
    """What an img2img request turns into before sampling: working images and how to put them back."""

    work_image: Image.Image  # the init image at the generation size (after crop/resize/fill)
    work_mask: Image.Image | None  # at the generation size, white = regenerate
    overlay_base: Image.Image | None  # the picture the result is composited into
    overlay_mask: Image.Image | None
    paste_box: tuple[int, int, int, int] | None

    def overlay(self, image: Image.Image) -> Image.Image:
        if self.overlay_mask is None:
            return image
        return M.overlay_original(image, self.overlay_base, self.overlay_mask, self.paste_box)


def prepare_img2img(req: Img2ImgRequest) -> Prepared:
    """A1111's image/mask preparation: resize mode or the "Only masked" crop, blur, invert, overlay."""
    original = M.to_rgb(req.init_image)
    width, height = req.width, req.height
    if req.mask is None:
        return Prepared(M.resize_image(req.resize_mode, original, width, height), None, None, None, None)
    blurred = M.prepare_mask(req.mask, original.size, req.mask_blur, bool(req.inpainting_mask_invert))
    if req.inpaint_full_res:
        box = M.expand_to_aspect(M.crop_region(blurred, req.inpaint_full_res_padding), width, height,
                                 original.width, original.height)
        work = original.crop(box).resize((width, height), LANCZOS)
        work_mask = blurred.crop(box).resize((width, height), LANCZOS)
        return Prepared(work, work_mask, original, blurred, box)
    work = M.resize_image(req.resize_mode, original, width, height)
    work_mask = M.resize_image(req.resize_mode, blurred, width, height)
    # A1111 doubles the blurred mask for the overlay: its band is half as wide as the blur
    overlay = Image.fromarray(np.clip(np.asarray(work_mask, dtype=np.float32) * 2, 0, 255).astype(np.uint8))
    return Prepared(work, work_mask, work, overlay, None)


@dataclass
class Img2ImgInit:
    """An img2img job's starting point, shared by its batches."""

    prepared: Prepared
    base: torch.Tensor  # [1, C, h, w] latents of the working image
    regenerate: torch.Tensor | None  # [1, 1, h, w] latent-size mask (1 = regenerate)
    unet_extra: torch.Tensor | None  # [1, 5, h, w] for 9-channel inpainting UNets
    strength: float
    fill: int  # inpainting_fill


class ClassifierFreeGuidance(Feature):
    name = "cfg"
    title = "Classifier-free guidance"
    builtin = True

    def active(self, run: Run) -> bool:
        return True

    def guidance(self, step: Step, guidance: Guidance) -> None:
        guidance.result = guidance.uncond + guidance.scale * (guidance.cond - guidance.uncond)


class Img2Img(Feature):
    name = "img2img"
    title = "img2img and inpainting"
    builtin = True

    def active(self, run: Run) -> bool:
        return isinstance(run.request, Img2ImgRequest)

    def prepare(self, run: Run) -> None:
        req: Img2ImgRequest = run.request  # type: ignore[assignment]
        model = run.model
        prep = prepare_img2img(req)
        work_image = prep.work_image
        if prep.work_mask is not None and req.inpainting_fill == 0:
            work_image = M.fill_masked(work_image, prep.work_mask)
        latent_upscale = req.resize_mode == 3 and prep.work_mask is None
        source = M.to_rgb(req.init_image) if latent_upscale else work_image
        if latent_upscale:
            source = source.resize((round8(source.width), round8(source.height)), LANCZOS)
        scale = model.vae_scale_factor
        latent_size = (req.height // scale, req.width // scale)
        base = run.encode([source]) if req.denoising_strength > 0 else None
        if base is not None and base.shape[-2:] != latent_size:
            base = F.interpolate(base, size=latent_size, mode="bilinear", align_corners=False)
        regenerate = unet_extra = None
        if prep.work_mask is not None:
            m = torch.from_numpy(np.asarray(prep.work_mask, dtype=np.float32) / 255.0)[None, None].to(model.device)
            regenerate = torch.round(F.interpolate(m, size=latent_size, mode="bilinear", align_corners=False))
        if model.family.inpainting and base is not None:
            if prep.work_mask is not None:
                pixel_mask = np.asarray(prep.work_mask) < 128
                masked = Image.fromarray(np.asarray(work_image) * pixel_mask[..., None].astype(np.uint8))
                mask_latent = regenerate
            else:
                masked = Image.new("RGB", work_image.size, (128, 128, 128))
                mask_latent = torch.ones(1, 1, *latent_size, device=model.device)
            unet_extra = torch.cat([mask_latent, run.encode([masked])], dim=1)
        run.init = Img2ImgInit(prep, base, regenerate, unet_extra, req.denoising_strength, req.inpainting_fill)

    def before_batch(self, run: Run, batch: Batch) -> None:
        init: Img2ImgInit = run.init
        if init.base is None:  # denoising strength 0: the engine returns the prepared picture
            return
        n = len(batch.seeds)
        noise = batch.noise.to(init.base.device)
        latents = init.base.repeat(n, 1, 1, 1)
        keep = None
        if init.regenerate is not None:
            keep = init.regenerate.repeat(n, 1, 1, 1)
            if init.fill == 2:  # latent noise
                latents = latents * (1 - keep) + noise * keep
            elif init.fill == 3:  # latent nothing
                latents = latents * (1 - keep)
        extra = init.unet_extra.repeat(n, 1, 1, 1) if init.unet_extra is not None else None
        blend = None if run.model.family.inpainting else keep
        batch.start = InitLatents(latents, init.strength, blend, extra)

    def postprocess(self, run: Run, batch: Batch, outputs: list[Output]) -> None:
        for out in outputs:
            out.image = run.init.prepared.overlay(out.image)


class InpaintingModelInput(Feature):
    name = "inpainting model input"
    title = "Inpainting checkpoints' extra input"
    builtin = True

    def active(self, run: Run) -> bool:
        return run.model.family.inpainting

    def before_batch(self, run: Run, batch: Batch) -> None:
        if batch.start is not None or isinstance(run.request, Img2ImgRequest):
            return
        # txt2img on an inpainting checkpoint: the whole (grey) picture is "masked"
        req, n = run.request, len(batch.seeds)
        h, w = batch.noise.shape[-2:]
        grey = run.encode([Image.new("RGB", (req.width, req.height), (128, 128, 128))])
        extra = torch.cat([torch.ones(1, 1, h, w, device=grey.device), grey], dim=1).repeat(n, 1, 1, 1)
        batch.start = InitLatents(batch.noise, 1.0, None, extra)

    def unet_inputs(self, step: Step, call: UnetCall) -> None:
        start = step.batch.start
        if start is None or start.unet_extra is None:
            return
        extra = start.unet_extra.to(call.sample.dtype)
        call.sample = torch.cat([call.sample, torch.cat([extra, extra]) if call.guided else extra], dim=1)


class LatentBlending(Feature):
    name = "latent blending"
    title = "Inpainting: keep the original outside the mask while sampling"
    builtin = True

    def active(self, run: Run) -> bool:
        return isinstance(run.request, Img2ImgRequest) and run.request.mask is not None

    def after_step(self, step: Step, latents: torch.Tensor) -> torch.Tensor | None:
        start = step.batch.start
        if start is None or start.regenerate is None:
            return None
        original = start.latents
        nxt = step.next_timestep
        if nxt is not None:
            original = step.scheduler.add_noise(start.latents, step.batch.noise.to(start.latents.device), nxt)
        return original * (1 - start.regenerate) + latents * start.regenerate


def register_builtins(registry: FeatureRegistry) -> FeatureRegistry:
    for feature in (ClassifierFreeGuidance(), Img2Img(), InpaintingModelInput(), LatentBlending()):
        registry.add(feature)
    return registry
