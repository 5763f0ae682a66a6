"""A progress sink for tests: records every step and stage, and can ask to stop after N steps."""
from __future__ import annotations


class Recorder:
    def __init__(self, stop_after: int | None = None):
        self.steps: list[tuple[int, int]] = []  # (step, total) as reported
        self.stages: list[str] = []
        self.stop_after = stop_after

    @property
    def seen(self) -> int:
        return len(self.steps)

    def on_step(self, step, total, latents=None):
        self.steps.append((step, total))

    def should_stop(self):
        return self.stop_after is not None and len(self.steps) >= self.stop_after

    def set_stage(self, text):
        self.stages.append(text)
