"""A sized cache for every kind of model, in two tiers, under one set of budgets.

Entries are keyed by (kind, key): checkpoints, and whatever other kind a part of Easel loads
(upscalers, ControlNets, image-embedding models, …). Each entry knows its size in bytes and how to
move its value between devices. Two tiers, least recently used first out:

- the *device tier*: what sits on the GPU (on a CPU-only machine, the models in use);
- the *RAM tier*: what left the device, so that coming back is a host→device copy, not a disk read.

A tier's budget (`TierBudget`) counts checkpoints (`models`), models of the other kinds (`others`),
and bytes of all of them together (`gigabytes`). A VAE or LoRA attached to a checkpoint is part of the
checkpoint's entry and counts in its size (`resize`). Going over a budget demotes (device → RAM) or
drops (RAM → gone) the least recently used entries that are not *pinned*; a running job pins what it
uses, so nothing is moved away under it. When pinned entries alone exceed a budget the cache stays
over it (logged) rather than break a job.

Nothing is global: the cache is created once (by the model manager) and passed down.
"""
from __future__ import annotations

import gc
import logging
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import torch

log = logging.getLogger(__name__)
GB = 1024**3
CHECKPOINT = "checkpoint"

Key = tuple[str, str]  # (kind, key)
Mover = Callable[[Any, torch.device], None]


@dataclass(frozen=True)
class TierBudget:
    """How much one tier may hold: checkpoints, models of other kinds, gigabytes (None = no limit)."""

    models: int | None = 1
    gigabytes: float | None = None
    others: int | None = 4

    def allows(self, entries: Iterable["Entry"]) -> bool:
        entries = list(entries)
        checkpoints = sum(1 for e in entries if e.kind == CHECKPOINT)
        if self.models is not None and checkpoints > self.models:
            return False
        if self.others is not None and len(entries) - checkpoints > self.others:
            return False
        return self.gigabytes is None or sum(e.size for e in entries) <= self.gigabytes * GB


@dataclass
class Entry:
    kind: str
    key: str
    title: str
    value: Any = field(repr=False)
    size: int
    move: Mover = field(repr=False)
    pins: int = 0

    @property
    def id(self) -> Key:
        return (self.kind, self.key)


@dataclass(frozen=True)
class EntryView:
    """What `entries()` shows: one cached model."""

    kind: str
    title: str
    size: int
    tier: str  # "device" | "ram"
    pinned: bool


def tensor_bytes(modules: Iterable[torch.nn.Module]) -> int:
    """Bytes of every parameter and buffer (LoRA adapters and attached VAEs included)."""
    return sum(t.numel() * t.element_size() for m in modules for t in m.state_dict().values())


class ModelCache:
    def __init__(self, device: torch.device, device_budget: TierBudget = TierBudget(),
                 ram_budget: TierBudget = TierBudget()):
        self.device = device
        self.device_budget = device_budget
        self.ram_budget = ram_budget
        self.lock = threading.RLock()  # the manager holds it across a load, so loads are one at a time
        self._device: OrderedDict[Key, Entry] = OrderedDict()
        self._ram: OrderedDict[Key, Entry] = OrderedDict()

    # -- lookups ---------------------------------------------------------------------------------------
    def find(self, kind: str, key: str) -> tuple[Entry, str] | None:
        """(entry, tier) without changing anything."""
        with self.lock:
            if (kind, key) in self._device:
                return self._device[(kind, key)], "device"
            if (kind, key) in self._ram:
                return self._ram[(kind, key)], "ram"
            return None

    def take(self, kind: str, key: str) -> Any | None:
        """The cached value on the device (brought back from RAM if it was there), most recently used
        now; None when it is not cached."""
        with self.lock:
            if (kind, key) in self._device:
                self._device.move_to_end((kind, key))
                return self._device[(kind, key)].value
            entry = self._ram.pop((kind, key), None)
            if entry is None:
                return None
            self._make_room(entry.size, entry.kind)
            entry.move(entry.value, self.device)
            self._device[entry.id] = entry
            return entry.value

    def put(self, kind: str, key: str, title: str, value: Any, size: int, move: Mover) -> Any:
        """Cache a freshly loaded value (on the CPU) on the device, making room first."""
        with self.lock:
            self._forget((kind, key))
            self._make_room(size, kind)
            move(value, self.device)
            self._device[(kind, key)] = Entry(kind, key, title, value, size, move)
            return value

    def get(self, kind: str, key: str, title: str, load: Callable[[], Any], size: Callable[[Any], int],
            move: Mover) -> Any:
        """The cached value, or `load()`'s (called under the lock, so one load at a time). A load that
        raises leaves the cache as it was."""
        with self.lock:
            value = self.take(kind, key)
            if value is None:
                value = load()
                self.put(kind, key, title, value, size(value), move)
            return value

    # -- sizes and pins --------------------------------------------------------------------------------
    def resize(self, kind: str, key: str, size: int) -> None:
        """An entry grew or shrank (a VAE or LoRA attached to a checkpoint); budgets are applied again."""
        with self.lock:
            found = self.find(kind, key)
            if found is None or found[0].size == size:
                return
            found[0].size = size
            self._make_room(0, kind)

    def pin(self, kind: str, key: str) -> None:
        with self.lock:
            found = self.find(kind, key)
            if found is not None:
                found[0].pins += 1

    def unpin(self, kind: str, key: str) -> None:
        """Let go of an entry; budgets it held over are applied now."""
        with self.lock:
            found = self.find(kind, key)
            if found is not None and found[0].pins > 0:
                found[0].pins -= 1
                if not found[0].pins:
                    self._make_room(0, kind)

    # -- eviction --------------------------------------------------------------------------------------
    def doomed_by(self, size: int, kind: str) -> Entry | None:
        """The entry that making room for a new one of `size` bytes would drop first, if any (its
        modules may be reused by the new model: a weights-only swap)."""
        with self.lock:
            on_device = [e for e in self._device.values()]
            in_ram = [e for e in self._ram.values()]
            incoming = Entry(kind, "", "", None, size, lambda v, d: None)
            while not self.device_budget.allows([*on_device, incoming]):
                victim = next((e for e in on_device if not e.pins), None)
                if victim is None:
                    break
                on_device.remove(victim)
                in_ram.append(victim)
            if not self.ram_budget.allows(in_ram):
                return next((e for e in in_ram if not e.pins), None)
            return None

    def forget(self, kind: str, key: str) -> None:
        """Drop one entry without moving it (its value was taken over, e.g. by a weights-only swap)."""
        with self.lock:
            self._forget((kind, key))

    def _forget(self, key: Key) -> None:
        self._device.pop(key, None)
        self._ram.pop(key, None)

    def _make_room(self, incoming: int, kind: str) -> None:
        """Demote and drop unpinned entries, least recently used first, until the budgets hold with an
        incoming entry of `incoming` bytes (0: just apply the budgets)."""
        extra = [Entry(kind, "", "", None, incoming, lambda v, d: None)] if incoming else []
        while not self.device_budget.allows([*self._device.values(), *extra]):
            victim = next((k for k, e in self._device.items() if not e.pins), None)
            if victim is None:
                log.warning("the models in use exceed the device budget; keeping them until their jobs end")
                break
            entry = self._device.pop(victim)
            entry.move(entry.value, torch.device("cpu"))
            self._ram[victim] = entry
        dropped = False
        while not self.ram_budget.allows(self._ram.values()):
            victim = next((k for k, e in self._ram.items() if not e.pins), None)
            if victim is None:
                break
            entry = self._ram.pop(victim)
            log.info("dropping %s %s from memory", entry.kind, entry.title)
            del entry
            dropped = True
        if dropped:  # a full collection costs ~0.1-0.5 s: only when memory is really to be returned
            gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def clear(self) -> None:
        with self.lock:
            self._device.clear()
            self._ram.clear()
            gc.collect()
            if self.device.type == "cuda":
                torch.cuda.empty_cache()

    # -- listing ---------------------------------------------------------------------------------------
    def entries(self, kind: str | None = None) -> list[EntryView]:
        """Cached models, device tier then RAM tier, least recently used first in each."""
        with self.lock:
            return [EntryView(e.kind, e.title, e.size, tier, e.pins > 0)
                    for tier, entries in (("device", self._device), ("ram", self._ram))
                    for e in entries.values() if kind is None or e.kind == kind]

    def values(self, kind: str, tier: str | None = None) -> list[Any]:
        with self.lock:
            tiers = [self._device, self._ram] if tier is None else [self._device if tier == "device" else self._ram]
            return [e.value for t in tiers for e in t.values() if e.kind == kind]
