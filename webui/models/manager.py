"""The model manager: the one object every tab, the API and the queue ask for a loaded checkpoint.

Created once in `app.py` and passed down. It owns the catalog and the loaded models; `get(name)`
returns the named checkpoint ready to run, hot-swapping when another one is loaded. A load that
fails (truncated file, unknown layout, unsafe pickle) raises `ModelError` and leaves whatever was
loaded before active and usable: the new model is built completely on the CPU before the old one
is let go.
"""
from __future__ import annotations

import gc
import logging
import threading
import time
from collections import OrderedDict
from pathlib import Path

import torch

from .catalog import Catalog, CheckpointInfo
from .errors import CheckpointNotFound, ModelError
from .loader import LoadedModel, load_checkpoint

log = logging.getLogger(__name__)
DEMO_CHECKPOINT = "easel-demo-shapes.safetensors"


class ModelManager:
    def __init__(
        self,
        catalog: Catalog,
        device: torch.device,
        dtype: torch.dtype,
        max_loaded: int = 1,
        preferred: str | None = None,
    ):
        self.catalog = catalog
        self.device = device
        self.dtype = dtype
        self.max_loaded = max(1, max_loaded)
        self.preferred = preferred
        self._lock = threading.RLock()
        self._loaded: OrderedDict[Path, LoadedModel] = OrderedDict()
        self.last_load_seconds: float | None = None

    # -- catalog ---------------------------------------------------------------------------------
    def list(self) -> list[CheckpointInfo]:
        return self.catalog.items()

    def refresh(self) -> list[CheckpointInfo]:
        return self.catalog.refresh()

    def titles(self) -> list[str]:
        return [c.title for c in self.list()]

    def default_checkpoint(self) -> CheckpointInfo | None:
        """The checkpoint used when a request names none: the last loaded, the preferred, the demo, the first."""
        with self._lock:
            if self._loaded:
                return next(reversed(self._loaded.values())).info
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
            return next(reversed(self._loaded.values())) if self._loaded else None

    def get(self, name: str | None = None) -> LoadedModel:
        """The named checkpoint (or the default), loaded and ready; swaps models when needed."""
        with self._lock:
            info = self.resolve(name)
            key = info.path.resolve()
            if key in self._loaded:
                self._loaded.move_to_end(key)
                return self._loaded[key]
            started = time.perf_counter()
            self.catalog.ensure_hash(info)
            model = load_checkpoint(info, torch.device("cpu"), self.dtype)
            while len(self._loaded) >= self.max_loaded:
                self._evict_oldest()
            if self.device.type != "cpu":
                for m in model.modules():
                    m.to(self.device)
                model.device = self.device
            self._loaded[key] = model
            self.last_load_seconds = time.perf_counter() - started
            log.info("loaded %s in %.2fs", info.title, self.last_load_seconds)
            return model

    def _evict_oldest(self) -> None:
        _, old = self._loaded.popitem(last=False)
        log.info("unloading %s", old.info.title)
        del old
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def unload_all(self) -> None:
        with self._lock:
            while self._loaded:
                self._evict_oldest()

    def loaded_titles(self) -> list[str]:
        with self._lock:
            return [m.info.title for m in self._loaded.values()]


__all__ = ["ModelManager", "ModelError", "CheckpointNotFound", "DEMO_CHECKPOINT"]
