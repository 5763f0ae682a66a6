"""How the engine reports progress and learns it should stop, without knowing who is listening."""
from __future__ import annotations

from typing import Protocol

import torch


class ProgressSink(Protocol):
    """Implemented by the job queue (and by tests); the engine calls it once per sampling step."""

    def on_step(self, step: int, total_steps: int, latents: torch.Tensor | None = None) -> None: ...

    def should_stop(self) -> bool: ...

    def set_stage(self, text: str) -> None: ...


class NullProgress:
    """A sink that listens to nothing and never stops; for scripts and benchmarks."""

    def on_step(self, step: int, total_steps: int, latents: torch.Tensor | None = None) -> None:
        return None

    def should_stop(self) -> bool:
        return False

    def set_stage(self, text: str) -> None:
        return None
