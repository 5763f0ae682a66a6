"""Seeds and initial noise, reproducible across devices.

Noise is drawn on the CPU from a generator seeded per image (`seed + index`, as in A1111), so the same
seed gives the same picture on a CPU, a CUDA card or a Mac, and image k of a batch equals a single
image made with seed + k. A variation seed (`subseed`) is blended in by spherical interpolation.
"""
from __future__ import annotations

import random

import torch

from .requests import MAX_SEED


def pick_seed(seed: int) -> int:
    """-1 means a fresh random seed; anything else is kept."""
    return random.randint(0, MAX_SEED) if seed is None or seed < 0 else int(seed)


def slerp(t: float, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Spherical interpolation between two noise tensors (keeps the noise's norm)."""
    a_n = a / a.norm()
    b_n = b / b.norm()
    dot = (a_n * b_n).sum().clamp(-1.0, 1.0)
    if dot.abs() > 0.9995:
        return (1 - t) * a + t * b
    omega = torch.acos(dot)
    so = torch.sin(omega)
    return (torch.sin((1.0 - t) * omega) / so) * a + (torch.sin(t * omega) / so) * b


def image_noise(shape: tuple[int, ...], seed: int, subseed: int, subseed_strength: float) -> tuple[torch.Tensor, torch.Generator]:
    """Initial noise for one image, and the CPU generator that goes on to feed its sampler."""
    gen = torch.Generator("cpu").manual_seed(seed)
    noise = torch.randn(shape, generator=gen)
    if subseed_strength > 0:
        sub = torch.randn(shape, generator=torch.Generator("cpu").manual_seed(subseed))
        noise = slerp(subseed_strength, noise, sub)
    return noise, gen
