"""The model manager: the one object every tab, the API and the queue ask for a loaded checkpoint.

Created once in `app.py` and passed down. It owns the catalog and a two-tier cache of loaded models:

- the *device tier* holds the models that sit on the GPU (or, on a CPU-only machine, the active
  ones), least recently used first;
- the *RAM tier* holds models moved off the device, so switching back costs a host→device copy
  instead of a read from disk.

Each tier has a budget in models and/or GB; going over it demotes the least recently used model
(device → RAM → dropped). A dropped model's tensors are released (references deleted, `gc`, the CUDA
cache emptied), and tests check that its modules are really gone.

A load that fails (truncated file, unknown layout, unsafe pickle) raises `ModelError` and leaves the
cache untouched: the new model is built completely on the CPU before anything is evicted.
"""
from __future__ import annotations

import gc
import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Callable
from pathlib import Path

import torch

from .catalog import Catalog, CheckpointInfo
from .errors import CheckpointNotFound, ModelError
from .loader import LoadedModel, load_checkpoint

log = logging.getLogger(__name__)
DEMO_CHECKPOINT = "easel-demo-shapes.safetensors"
GB = 1024**3


@dataclass(frozen=True)
class TierBudget:
    """How much one cache tier may hold: a number of models and/or gigabytes (None = no limit)."""

    models: int | None = 1
    gigabytes: float | None = None

    def allows(self, sizes: list[int]) -> bool:
        if self.models is not None and len(sizes) > self.models:
            return False
        return self.gigabytes is None or sum(sizes) <= self.gigabytes * GB


def model_bytes(model: LoadedModel) -> int:
    return sum(t.numel() * t.element_size() for m in model.modules() for t in m.state_dict().values())


class ModelManager:
    def __init__(
        self,
        catalog: Catalog,
        device: torch.device,
        dtype: torch.dtype,
        device_budget: TierBudget = TierBudget(models=1),
        ram_budget: TierBudget = TierBudget(models=1),
        preferred: str | None = None,
        offloads: Callable[[str], bool] = lambda family: False,
        reuse_modules: bool = True,
    ):
        self.catalog = catalog
        self.device = device
        self.dtype = dtype
        self.device_budget = device_budget
        self.ram_budget = ram_budget
        self.preferred = preferred
        # --medvram/--lowvram(/--medvram-sdxl), by family: accelerate's hooks move the parts, models stay in RAM
        self.offloads = offloads
        self.reuse_modules = reuse_modules  # weights-only swaps into a dropped model's modules
        self._lock = threading.RLock()
        self._on_device: OrderedDict[Path, LoadedModel] = OrderedDict()
        self._in_ram: OrderedDict[Path, LoadedModel] = OrderedDict()
        self._sizes: dict[Path, int] = {}
        self.last_load_seconds: float | None = None
        self.last_source: str | None = None  # "device" | "ram" | "disk": where the last get() found its model

    # -- catalog ---------------------------------------------------------------------------------
    def list(self) -> list[CheckpointInfo]:
        return self.catalog.items()

    def refresh(self) -> list[CheckpointInfo]:
        return self.catalog.refresh()

    def titles(self) -> list[str]:
        return [c.title for c in self.list()]

    def default_checkpoint(self) -> CheckpointInfo | None:
        """The checkpoint used when a request names none: the last used, the preferred, the demo, the first."""
        with self._lock:
            if self._on_device:
                return next(reversed(self._on_device.values())).info
        items = self.list()
        for wanted in (self.preferred, DEMO_CHECKPOINT):
            if wanted:
                try:
                    return self.catalog.find(wanted)
                except CheckpointNotFound:
                    pass
        return items[0] if items else None

    def resolve(self, name: str | None) -> CheckpointInfo:
        if name:
            return self.catalog.find(name)
        info = self.default_checkpoint()
        if info is None:
            raise CheckpointNotFound(
                "no checkpoint found: put a .safetensors or .ckpt file in models/Stable-diffusion and press refresh"
            )
        return info

    # -- loading ---------------------------------------------------------------------------------
    @property
    def current(self) -> LoadedModel | None:
        with self._lock:
            return next(reversed(self._on_device.values())) if self._on_device else None

    def get(self, name: str | None = None) -> LoadedModel:
        """The named checkpoint (or the default), on the device and ready; swaps models when needed."""
        with self._lock:
            info = self.resolve(name)
            key = info.path.resolve()
            started = time.perf_counter()
            if key in self._on_device:
                self._on_device.move_to_end(key)
                self.last_source = "device"
                return self._on_device[key]
            if key in self._in_ram:
                model = self._in_ram.pop(key)
                self.last_source = "ram"
            else:
                self.catalog.ensure_hash(info)
                doomed = self._doomed_by(info) if self.reuse_modules else None
                # may raise: nothing is evicted yet, and a model to reuse is only touched once all checks passed
                model = load_checkpoint(info, torch.device("cpu"), self.dtype,
                                        reuse=doomed[1] if doomed else None)
                if doomed and model.unet is doomed[1].unet:  # weights-only swap: the old model is gone
                    self._forget(doomed[0])
                    self.last_source = "disk (weights-only swap)"
                else:
                    self.last_source = "disk"
                self._sizes[key] = model_bytes(model)
            self._make_room_on_device(self._sizes[key])
            self._move(model, self.device)
            self._on_device[key] = model
            self.last_load_seconds = time.perf_counter() - started
            log.info("%s (%s, %s from %s) from %s in %.3fs", info.title, model.family.title,
                     model.family.prediction_type, model.family.prediction_source, self.last_source,
                     self.last_load_seconds)
            return model

    def _move(self, model: LoadedModel, device: torch.device) -> None:
        if model.device != device:
            if not self.offloads(model.family.name):
                for m in model.modules():
                    m.to(device)
            model.device = device

    def _doomed_by(self, info: CheckpointInfo) -> tuple[Path, LoadedModel] | None:
        """The model that making room for `info` will drop first (its modules can be reused), if any."""
        incoming = info.path.stat().st_size if info.path.is_file() else 0  # estimate: the file's size
        on_device = list(self._on_device.items())
        in_ram = list(self._in_ram.items())
        while on_device and not self.device_budget.allows([*(self._sizes[k] for k, _ in on_device), incoming]):
            in_ram.append(on_device.pop(0))
        if in_ram and not self.ram_budget.allows([self._sizes[k] for k, _ in in_ram]):
            key, model = in_ram[0]
            return None if self.offloads(model.family.name) else (key, model)  # hooked modules: not reused
        return None

    def _forget(self, key: Path) -> None:
        self._on_device.pop(key, None)
        self._in_ram.pop(key, None)
        self._sizes.pop(key, None)

    def _make_room_on_device(self, incoming: int) -> None:
        while self._on_device and not self.device_budget.allows([*self._tier_sizes(self._on_device), incoming]):
            key, old = self._on_device.popitem(last=False)
            self._move(old, torch.device("cpu"))
            self._in_ram[key] = old
        dropped = False
        while self._in_ram and not self.ram_budget.allows(self._tier_sizes(self._in_ram)):
            key, old = self._in_ram.popitem(last=False)
            log.info("dropping %s from memory", old.info.title)
            del old
            self._sizes.pop(key, None)
            dropped = True
        if dropped:  # a full collection costs ~0.1-0.5 s: only when memory is really to be returned
            gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def _tier_sizes(self, tier: OrderedDict[Path, LoadedModel]) -> list[int]:
        return [self._sizes[k] for k in tier]

    def unload_all(self) -> None:
        with self._lock:
            self._on_device.clear()
            self._in_ram.clear()
            self._sizes.clear()
            gc.collect()
            if self.device.type == "cuda":
                torch.cuda.empty_cache()

    def loaded_titles(self) -> list[str]:
        """Titles on the device, least recently used first."""
        with self._lock:
            return [m.info.title for m in self._on_device.values()]

    def cached_titles(self) -> list[str]:
        """Titles kept in the RAM tier, least recently used first."""
        with self._lock:
            return [m.info.title for m in self._in_ram.values()]


__all__ = ["ModelManager", "TierBudget", "ModelError", "CheckpointNotFound", "DEMO_CHECKPOINT"]
