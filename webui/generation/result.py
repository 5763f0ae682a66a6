"""What a generation job (or a script) gives back."""
from __future__ import annotations

from dataclasses import dataclass, field

from PIL import Image

from .requests import GenerationParams


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
    prompts: list[str] = field(default_factory=list)  # each image's own (features may vary them)
    negative_prompts: list[str] = field(default_factory=list)
    grids: list[bool] = field(default_factory=list)  # which images are grids (saved under <kind>-grids)

    @property
    def info(self) -> str:
        return self.infotexts[0] if self.infotexts else ""
