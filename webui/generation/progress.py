"""How the engine reports progress, learns it should stop, and lets others have a turn, without knowing
who is listening (the job queue, a test, a script)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch


class ProgressSink(Protocol):
    """Implemented by the job queue's jobs (and by tests); the engine calls it once per sampling step.

    A sink may also have `yield_turn() -> bool`: called between batches (and between a zoom's keyframes),
    it lets other people's queued jobs run first and says whether any did (so the caller re-acquires
    its model, which may have been moved meanwhile)."""

    def on_step(self, step: int, total_steps: int, latents: torch.Tensor | None = None) -> None: ...

    def should_stop(self) -> bool: ...

    def set_stage(self, text: str) -> None: ...


def yield_turn(progress: ProgressSink) -> bool:
    """Let other owners' jobs run now if the sink can; True when something else ran."""
    give = getattr(progress, "yield_turn", None)
    return bool(give()) if give is not None else False


class NullProgress:
    """A sink that listens to nothing and never stops; for scripts and benchmarks."""

    def on_step(self, step: int, total_steps: int, latents: torch.Tensor | None = None) -> None:
        return None

    def should_stop(self) -> bool:
        return False

    def set_stage(self, text: str) -> None:
        return None

    def yield_turn(self) -> bool:
        return False


@dataclass
class PartProgress:
    """Reports the steps of part `index` of `count` (a zoom's keyframe, an X/Y/Z plot's cell) as progress
    through the whole job ("keyframe 2 of 5: …"), assuming the parts are alike."""

    sink: ProgressSink
    index: int
    count: int
    noun: str = "part"
    label: str = ""  # what the stage says; default "<noun> <index + 1> of <count>"

    def __post_init__(self) -> None:
        self.label = self.label or f"{self.noun} {self.index + 1} of {self.count}"

    def on_step(self, step: int, total_steps: int, latents: torch.Tensor | None = None) -> None:
        self.sink.on_step(self.index * total_steps + step, self.count * total_steps, latents)
        self.sink.set_stage(self.label)

    def should_stop(self) -> bool:
        return self.sink.should_stop()

    def set_stage(self, text: str) -> None:
        self.sink.set_stage(f"{self.label}: {text}")
