"""Live previews of a running job's latents.

- **Approx cheap** (always there): one linear map per latent channel, A1111's "Approx cheap"
  preview; no weights, microseconds per step. SD1 and SD2 share a latent space; SDXL's VAE has
  its own, with its own map.
- **TAESD** (when the user provides it): the tiny preview decoder as a diffusers
  `AutoencoderTiny` folder in `models/VAE-approx/` — `taesd/` for SD1/SD2, `taesdxl/` for SDXL.
  Easel cannot download its weights, so it ships none; with a folder in place previews are
  full-size and sharp. A folder that does not load is reported once and the cheap map is used.
"""
from __future__ import annotations

import logging
import threading
from pathlib import Path

import torch
from PIL import Image

log = logging.getLogger(__name__)

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
TAESD_FOLDERS = {"sd1": "taesd", "sd2": "taesd", "sdxl": "taesdxl"}


def latent_preview(latents: torch.Tensor | None, family: str = "sd1") -> Image.Image | None:
    """A rough RGB picture of the first latent of a batch, or None when there is nothing to show."""
    weights, bias = _LATENT_RGB.get(family, _LATENT_RGB["sd1"])
    if latents is None or latents.ndim != 4 or latents.shape[1] != weights.shape[0]:
        return None
    sample = latents[0].detach().float().cpu()
    rgb = torch.einsum("chw,cr->hwr", sample, weights) + bias
    return _to_image(rgb)


def _to_image(rgb: torch.Tensor) -> Image.Image:
    """[h, w, 3] in [-1, 1] -> an RGB image."""
    pixels = ((rgb + 1) / 2).clamp(0, 1).mul(255).round().to(torch.uint8).numpy()
    return Image.fromarray(pixels, "RGB")


class Previewer:
    """Turns a job's latest latents into a preview: TAESD when its folder is there, else the cheap map.

    One per Easel (created with the services, passed to jobs); decoders load on first use and stay."""

    def __init__(self, folder: Path):
        self.folder = folder
        self._decoders: dict[str, object] = {}
        self._lock = threading.Lock()

    def decoder(self, family: str):
        """The TAESD decoder for `family`'s latent space, or None (no folder, or it did not load)."""
        name = TAESD_FOLDERS.get(family, "taesd")
        path = self.folder / name
        if not (path / "config.json").is_file():
            return None
        with self._lock:
            if name not in self._decoders:
                from diffusers import AutoencoderTiny

                try:
                    model = AutoencoderTiny.from_pretrained(path, local_files_only=True)
                    self._decoders[name] = model.eval().requires_grad_(False)
                    log.info("live previews use TAESD from %s", path)
                except (OSError, ValueError, RuntimeError, KeyError) as e:
                    log.warning("%s: not a usable TAESD folder (%s: %s); previews use the cheap approximation",
                                path, type(e).__name__, str(e).splitlines()[0][:200] if str(e) else "")
                    self._decoders[name] = None
            return self._decoders[name]

    @torch.no_grad()
    def image(self, latents: torch.Tensor | None, family: str = "sd1") -> Image.Image | None:
        if latents is None or latents.ndim != 4:
            return None
        taesd = self.decoder(family)
        if taesd is None or latents.shape[1] != taesd.config.latent_channels:
            return latent_preview(latents, family)
        # TAESD reads the latents as the UNet sees them (already scaled); on the CPU, in fp32, so a
        # preview never competes with the job for device memory
        decoded = taesd.decode(latents[:1].detach().float().cpu()).sample[0]
        return _to_image(decoded.permute(1, 2, 0))
