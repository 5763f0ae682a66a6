"""Cheap live previews: latents -> a rough RGB picture by one linear map per latent channel.

This is A1111's "Approx cheap" preview: no VAE, no weights, microseconds per step. (TAESD, the
tiny preview decoder, needs weights that cannot be obtained offline, so Easel does not use it.)
SD1 and SD2 share a latent space; SDXL's VAE has its own, with its own map.
"""
from __future__ import annotations

import torch
from PIL import Image

# rows: latent channels; columns: R, G, B
_LATENT_RGB = {
    "sd1": (torch.tensor([
        [0.298, 0.207, 0.208],
        [0.187, 0.286, 0.173],
        [-0.158, 0.189, 0.264],
        [-0.184, -0.271, -0.473],
    ]), torch.zeros(3)),
    "sdxl": (torch.tensor([
        [0.3651, 0.4232, 0.4341],
        [-0.2533, -0.0042, 0.1068],
        [0.1076, 0.1111, -0.0362],
        [-0.3165, -0.2492, -0.2188],
    ]), torch.tensor([0.1084, -0.0175, -0.0011])),
}
_LATENT_RGB["sd2"] = _LATENT_RGB["sd1"]


def latent_preview(latents: torch.Tensor | None, family: str = "sd1") -> Image.Image | None:
    """A rough RGB picture of the first latent of a batch, or None when there is nothing to show."""
    weights, bias = _LATENT_RGB.get(family, _LATENT_RGB["sd1"])
    if latents is None or latents.ndim != 4 or latents.shape[1] != weights.shape[0]:
        return None
    sample = latents[0].detach().float().cpu()
    rgb = torch.einsum("chw,cr->hwr", sample, weights) + bias
    pixels = ((rgb + 1) / 2).clamp(0, 1).mul(255).round().to(torch.uint8).numpy()
    return Image.fromarray(pixels, "RGB")
