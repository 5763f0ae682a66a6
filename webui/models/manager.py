"""The model manager: the one object every tab, the API and the queue ask for a loaded checkpoint.

Created once in `app.py` and passed down. It owns the catalog and the typed model cache
(webui/models/cache.py), where checkpoints live beside every other kind of model under the same
budgets: the device tier (the GPU, or on a CPU-only machine the active models) and the RAM tier
(models moved off the device, so switching back costs a host→device copy instead of a disk read).

A load that fails (truncated file, unknown layout, unsafe pickle) raises `ModelError` and leaves the
cache untouched: the new model is built completely on the CPU before anything is evicted. When a
checkpoint from disk has exactly the architecture of the model it pushes out, its weights move into
the old model's modules (a *weights-only swap*).
"""
from __future__ import annotations

import logging
import time
from typing import Any, Callable

import torch

from .cache import CHECKPOINT, Entry, ModelCache, TierBudget, tensor_bytes
from .catalog import Catalog, CheckpointInfo
from .errors import CheckpointNotFound, ModelError
from .loader import LoadedModel, load_checkpoint

log = logging.getLogger(__name__)
DEMO_CHECKPOINT = "easel-demo-shapes.safetensors"


def model_bytes(model: LoadedModel) -> int:
    """A checkpoint's size in the cache: its modules, with an attached VAE and LoRA adapters."""
    return tensor_bytes(model.modules())


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
        self.cache = ModelCache(device, device_budget, ram_budget)
        self.preferred = preferred
        # --medvram/--lowvram(/--medvram-sdxl), by family: accelerate's hooks move the parts, models stay in RAM
        self.offloads = offloads
        self.reuse_modules = reuse_modules  # weights-only swaps into a dropped model's modules
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
        """The checkpoint used when nothing names one: the last used, the preferred (--ckpt), the demo model
        in the checkpoint folders, the first of them, and only then a fallback (the shipped demo when
        --data-dir is elsewhere)."""
        current = self.current
        if current is not None:
            return current.info
        items = self.list()
        own = [i for i in items if not i.fallback]
        if self.preferred:
            try:
                return self.catalog.find(self.preferred)
            except CheckpointNotFound:
                pass
        demo = next((i for i in own if i.path.name == DEMO_CHECKPOINT), None)
        return demo or (own[0] if own else items[0] if items else None)

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
        """The most recently used checkpoint on the device."""
        on_device = self.cache.values(CHECKPOINT, "device")
        return on_device[-1] if on_device else None

    @staticmethod
    def key(info: CheckpointInfo) -> str:
        return str(info.path.resolve())

    def get(self, name: str | None = None) -> LoadedModel:
        """The named checkpoint (or the default), on the device and ready; swaps models when needed."""
        with self.cache.lock:
            info = self.resolve(name)
            key = self.key(info)
            started = time.perf_counter()
            found = self.cache.find(CHECKPOINT, key)
            if found is not None and not found[0].pins and found[0].value.stamp != info.stamp():
                # the file changed on disk since it was loaded (a new version copied over it): load it again,
                # under its new hash, rather than keep labelling the old weights with a stale name
                log.warning("%s changed on disk since it was loaded; loading it again", info.title)
                self.cache.forget(CHECKPOINT, key)
                found = None
            if found is not None:
                model = self.cache.take(CHECKPOINT, key)
                self.last_source = found[1]
                if found[1] == "device":
                    return model
            else:
                stamp = info.stamp()
                if stamp is None:
                    raise CheckpointNotFound(f"checkpoint {info.name!r} is gone from disk; press refresh")
                self.catalog.ensure_hash(info)
                incoming = info.path.stat().st_size if info.path.is_file() else 0  # estimate: the file's size
                doomed = self._reusable(self.cache.doomed_by(incoming, CHECKPOINT))
                # may raise: nothing is evicted yet, and a model to reuse is only touched once all checks passed
                model = load_checkpoint(info, torch.device("cpu"), self.dtype,
                                        reuse=doomed.value if doomed else None)
                if doomed and model.unet is doomed.value.unet:  # weights-only swap: the old model is gone
                    self.cache.forget(CHECKPOINT, doomed.key)
                    self.last_source = "disk (weights-only swap)"
                else:
                    self.last_source = "disk"
                model.stamp = stamp
                self.cache.put(CHECKPOINT, key, info.title, model, model_bytes(model), self._move)
            self.last_load_seconds = time.perf_counter() - started
            log.info("%s (%s, %s from %s) from %s in %.3fs", info.title, model.family.title,
                     model.family.prediction_type, model.family.prediction_source, self.last_source,
                     self.last_load_seconds)
            return model

    def _reusable(self, doomed: Entry | None) -> Entry | None:
        """A checkpoint about to be dropped whose modules a new load may take over."""
        if not self.reuse_modules or doomed is None or doomed.kind != CHECKPOINT:
            return None
        return None if self.offloads(doomed.value.family.name) else doomed  # hooked modules: not reused

    def _move(self, model: LoadedModel, device: torch.device) -> None:
        if model.device != device:
            if not self.offloads(model.family.name):
                for m in model.modules():
                    m.to(device)
            model.device = device

    # -- the models a job uses -----------------------------------------------------------------------
    def pin(self, model: LoadedModel) -> None:
        """Keep a checkpoint where it is (not demoted, not dropped) until `unpin`: a job is using it."""
        self.cache.pin(CHECKPOINT, self.key(model.info))

    def unpin(self, model: LoadedModel) -> None:
        """The job is done with it; its size is measured again (a VAE or LoRA may have been attached)."""
        key = self.key(model.info)
        self.cache.unpin(CHECKPOINT, key)
        self.cache.resize(CHECKPOINT, key, model_bytes(model))

    def get_model(self, kind: str, key: str, title: str, load: Callable[[], Any], size: Callable[[Any], int],
                  move: Callable[[Any, torch.device], None]) -> Any:
        """Any other kind of model (upscaler, ControlNet, …) through the same cache and budgets."""
        if kind == CHECKPOINT:
            raise ValueError("checkpoints load through get()")
        return self.cache.get(kind, key, title, load, size, move)

    def unload_all(self) -> None:
        self.cache.clear()

    def loaded_models(self) -> list[LoadedModel]:
        """The checkpoints held, on the device then in RAM, least recently used first in each."""
        return self.cache.values(CHECKPOINT)

    def loaded_titles(self) -> list[str]:
        """Checkpoint titles on the device, least recently used first."""
        return [e.title for e in self.cache.entries(CHECKPOINT) if e.tier == "device"]

    def cached_titles(self) -> list[str]:
        """Checkpoint titles kept in the RAM tier, least recently used first."""
        return [e.title for e in self.cache.entries(CHECKPOINT) if e.tier == "ram"]


__all__ = ["ModelManager", "TierBudget", "ModelError", "CheckpointNotFound", "DEMO_CHECKPOINT", "model_bytes"]
