"""Between pictures and latents: the VAE both ways, and the NaN checks A1111 users know.

A UNet or VAE that overflows (fp16 without enough range, a broken merge) gives NaNs, which would
come out as a black picture. Easel stops with a message naming the cause and the remedy instead, as
A1111 does; `--disable-nan-check` turns the check off. A VAE that overflows in fp16 is first run
again in fp32 (and in fp32 from then on), which is the usual cure for SDXL's VAE.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image

from webui.models.loader import LoadedModel

from .errors import GenerationError

log = logging.getLogger(__name__)

UNET_NANS = ("the UNet produced NaNs (not-a-number values) instead of an image: this usually means fp16 has not "
             "enough range for this checkpoint, or the checkpoint itself is broken. Start Easel with --no-half "
             "(fp32 weights), try another checkpoint, or pass --disable-nan-check to get the (black) image anyway")
VAE_NANS = ("the VAE produced NaNs (not-a-number values) instead of an image, even in fp32: choose another VAE "
            "in 'SD VAE' (or the checkpoint's own with 'None'), start Easel with --no-half, or pass "
            "--disable-nan-check to get the (black) image anyway")


@dataclass
class InitLatents:
    """Where img2img/inpainting sampling starts, per image of a batch."""

    latents: torch.Tensor  # [B, C, h, w], already scaled by the VAE factor
    strength: float
    regenerate: torch.Tensor | None = None  # [B, 1, h, w], 1 = sample anew, 0 = keep the original (blending)
    unet_extra: torch.Tensor | None = None  # [B, 5, h, w] mask + masked-image latents for 9-channel UNets


def images_to_tensor(images: list[Image.Image], device, dtype) -> torch.Tensor:
    arr = np.stack([np.asarray(im.convert("RGB"), dtype=np.float32) for im in images]) / 127.5 - 1.0
    return torch.from_numpy(arr).permute(0, 3, 1, 2).to(device=device, dtype=dtype)


@torch.no_grad()
def encode_images(model: LoadedModel, images: list[Image.Image]) -> torch.Tensor:
    """VAE latents (the distribution's mean, so img2img is deterministic), scaled for the UNet."""
    vae = model.vae
    latents = vae.encode(images_to_tensor(images, model.device, vae.dtype)).latent_dist.mean
    return latents.float() * vae.config.scaling_factor


def check_unet_output(latents: torch.Tensor, nan_check: bool = True) -> None:
    if nan_check and bool(torch.isnan(latents).any()):
        raise GenerationError(UNET_NANS)


@torch.no_grad()
def latents_to_images(model: LoadedModel, latents: torch.Tensor, nan_check: bool = True) -> list[Image.Image]:
    vae = model.vae
    remembered = ("vae_needs_fp32", id(vae))  # a VAE that overflowed once (SDXL's does) goes straight to fp32
    if vae.dtype != torch.float16 or model.speed_state.get(remembered) is not vae:
        decoded = vae.decode(latents.to(vae.dtype) / vae.config.scaling_factor).sample
        if not torch.isnan(decoded).any():
            return _to_images(decoded)
        if vae.dtype != torch.float16:
            return _checked(decoded, nan_check)
        if next(vae.parameters()).is_meta:  # --lowvram streams fp16 weights: no fp32 copy to decode with
            log.warning("the VAE produced NaNs in fp16; with --lowvram it cannot be re-run in fp32")
            return _checked(decoded, nan_check)
        # some VAEs overflow in fp16 (A1111's "NaNs in VAE"): decode once more in fp32, and from now on
        log.warning("the VAE produced NaNs in fp16; decoding again in fp32 (and in fp32 from now on for this VAE)")
        model.speed_state[remembered] = vae
    vae.to(torch.float32)
    try:
        decoded = vae.decode(latents.float() / vae.config.scaling_factor).sample
    finally:
        vae.to(torch.float16)
    return _checked(decoded, nan_check)


def _checked(decoded: torch.Tensor, nan_check: bool) -> list[Image.Image]:
    if nan_check and bool(torch.isnan(decoded).any()):
        raise GenerationError(VAE_NANS)
    return _to_images(decoded)


def _to_images(decoded: torch.Tensor) -> list[Image.Image]:
    arr = ((decoded.float().nan_to_num(-1.0) / 2 + 0.5).clamp(0, 1) * 255).round().to(torch.uint8)
    arr = arr.permute(0, 2, 3, 1).cpu().numpy()
    return [Image.fromarray(np.ascontiguousarray(a)) for a in arr]
