"""The checkpoint catalog: what is under `models/Stable-diffusion` (and `--ckpt-dir`), with A1111's names and hashes.

A1111 identifies a checkpoint by its *title*, `name [shorthash]`, where name is the path relative to
its folder and shorthash the first 10 hex digits of the file's sha256; older clients use the 8-hex
"model hash" (sha256 of the 64 KiB at offset 1 MiB). Hashing a multi-GB file takes seconds, so
hashes are computed on demand and cached on disk, keyed by path, size and mtime.
"""
from __future__ import annotations

import hashlib
import json
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

from .checkpoint_io import PICKLE_SUFFIXES, SAFETENSORS_SUFFIXES
from .errors import CheckpointNotFound
from .files import walk

CHECKPOINT_SUFFIXES = SAFETENSORS_SUFFIXES + (".ckpt",)
DIFFUSERS_WEIGHT_SUFFIXES = (".safetensors", ".bin")
_CHUNK = 1 << 20


def sha256_of_files(paths: list[Path]) -> str:
    h = hashlib.sha256()
    for p in paths:
        with open(p, "rb") as f:
            while chunk := f.read(_CHUNK):
                h.update(chunk)
    return h.hexdigest()


def legacy_model_hash(path: Path) -> str:
    """A1111's old 8-hex model hash: sha256 of the 64 KiB at offset 1 MiB."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        f.seek(0x100000)
        h.update(f.read(0x10000))
    return h.hexdigest()[:8]


class HashCache:
    """sha256 and legacy hashes of files, persisted as JSON; thread-safe. The one place Easel hashes
    model files: checkpoints, VAEs, LoRAs and embeddings all go through it."""

    def __init__(self, path: Path | None):
        self._path = path
        self._lock = threading.Lock()
        self._entries: dict[str, dict] = {}
        if path is not None and path.is_file():
            try:
                self._entries = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                self._entries = {}  # a damaged cache only costs a re-hash

    @staticmethod
    def _key(files: list[Path]) -> tuple[str, list]:
        stamp = [[os.path.getsize(p), os.stat(p).st_mtime_ns] for p in files]
        return "|".join(str(p.resolve()) for p in files), stamp

    def cached(self, files: list[Path]) -> dict | None:
        key, stamp = self._key(files)
        with self._lock:
            entry = self._entries.get(key)
        return entry if entry and entry.get("stamp") == stamp else None

    def get(self, files: list[Path]) -> dict:
        """{'sha256':…, 'legacy':…} for the files (computing and saving it if needed)."""
        if (entry := self.cached(files)) is not None:
            return entry
        key, stamp = self._key(files)
        entry = {"stamp": stamp, "sha256": sha256_of_files(files), "legacy": legacy_model_hash(files[0])}
        with self._lock:
            self._entries[key] = entry
            self._save_locked()
        return entry

    def sha256(self, path: Path) -> str:
        """The sha256 of one file (cached by path, size and mtime)."""
        return self.get([path])["sha256"]

    def _save_locked(self) -> None:
        if self._path is None:
            return
        self._path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self._path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self._entries, indent=1), encoding="utf-8")
        os.replace(tmp, self._path)


@dataclass
class CheckpointInfo:
    """One checkpoint on disk: a single file, or a diffusers folder."""

    path: Path
    name: str  # relative to its root folder, with extension (A1111's `name`)
    is_diffusers_folder: bool = False
    fallback: bool = False  # listed whatever the folders hold (the shipped demo model)
    sha256: str | None = None
    legacy_hash: str | None = None
    hash_files: list[Path] = field(default_factory=list, repr=False)

    @property
    def model_name(self) -> str:
        """A1111's `model_name`: the name without extension, path separators replaced."""
        stem = self.name if self.is_diffusers_folder else os.path.splitext(self.name)[0]
        return stem.replace("/", "_").replace("\\", "_")

    @property
    def shorthash(self) -> str | None:
        return self.sha256[:10] if self.sha256 else None

    @property
    def title(self) -> str:
        return f"{self.name} [{self.shorthash}]" if self.shorthash else self.name

    @property
    def config_yaml(self) -> Path | None:
        """A `<name>.yaml` beside a single-file checkpoint overrides detection, as in A1111."""
        yaml = self.path.with_suffix(".yaml")
        return yaml if not self.is_diffusers_folder and yaml.is_file() else None

    def stamp(self) -> tuple | None:
        """Size and modification time of each of its files (None when one is gone)."""
        try:
            return tuple((p.stat().st_size, p.stat().st_mtime_ns) for p in self.hash_files)
        except OSError:
            return None

    def aliases(self) -> set[str]:
        names = {self.title, self.name, self.model_name, os.path.splitext(self.name)[0], self.path.name}
        if self.sha256:
            names |= {self.sha256, self.shorthash, f"{self.name} [{self.legacy_hash}]"}
        if self.legacy_hash:
            names.add(self.legacy_hash)
        return names


def _diffusers_weight_files(folder: Path) -> list[Path]:
    files = [
        p for sub in ("unet", "vae", "text_encoder", "text_encoder_2") if (folder / sub).is_dir()
        for p in sorted((folder / sub).iterdir()) if p.suffix in DIFFUSERS_WEIGHT_SUFFIXES
    ]
    return files


def scan_checkpoints(roots: list[Path], anywhere: bool = False) -> list[CheckpointInfo]:
    """Checkpoints found recursively under the roots, sorted by name; diffusers folders are not descended into.
    Links are followed only within the roots, and link loops are walked once (webui/models/files.py)."""
    found: dict[Path, CheckpointInfo] = {}
    for root in roots:
        for here, dirnames, filenames in walk(root, [Path("/")] if anywhere else roots):
            if "model_index.json" in filenames:
                files = _diffusers_weight_files(here)
                if files:
                    rel = here.relative_to(root).as_posix() if here != root else here.name
                    found.setdefault(here.resolve(), CheckpointInfo(here, rel, True, hash_files=files))
                dirnames.clear()
                continue
            for fn in filenames:
                p = here / fn
                if p.suffix.lower() in CHECKPOINT_SUFFIXES:
                    rel = p.relative_to(root).as_posix()
                    found.setdefault(p.resolve(), CheckpointInfo(p, rel, hash_files=[p]))
    return sorted(found.values(), key=lambda c: c.name.lower())


class Catalog:
    """The listing of checkpoints plus their hashes; `refresh()` rescans the folders. `fallbacks` are
    single files listed whatever the folders hold (the shipped demo model, when --data-dir is elsewhere);
    a checkpoint of the same name in the folders wins."""

    def __init__(self, roots: list[Path], hash_cache: HashCache, fallbacks: list[Path] | None = None,
                 links_anywhere: bool = False):
        self.roots = roots
        self.links_anywhere = links_anywhere  # --follow-model-links: links may lead outside the folders
        self.fallbacks = list(fallbacks or [])
        self._hashes = hash_cache
        self._lock = threading.Lock()
        self._items: list[CheckpointInfo] = []
        self.refresh()

    @property
    def hashes(self) -> HashCache:
        return self._hashes

    def refresh(self) -> list[CheckpointInfo]:
        items = scan_checkpoints(self.roots, self.links_anywhere)
        names = {i.name for i in items}
        items += [CheckpointInfo(p, p.name, fallback=True, hash_files=[p]) for p in self.fallbacks
                  if p.is_file() and p.name not in names]
        for item in items:  # titles carry the hash as soon as it is known
            if (entry := self._hashes.cached(item.hash_files)) is not None:
                item.sha256, item.legacy_hash = entry["sha256"], entry["legacy"]
        with self._lock:
            self._items = items
        return list(items)

    def items(self) -> list[CheckpointInfo]:
        with self._lock:
            return list(self._items)

    def ensure_hash(self, info: CheckpointInfo) -> CheckpointInfo:
        """The checkpoint with the hashes of its files as they are now (the cache is keyed by size and
        modification time, so this is a stat when nothing changed, a new hash when something did)."""
        entry = self._hashes.get(info.hash_files)
        info.sha256, info.legacy_hash = entry["sha256"], entry["legacy"]
        return info

    def find(self, name: str) -> CheckpointInfo:
        """Resolve a title, name, model name, sha256, short hash or legacy hash to a checkpoint."""
        wanted = name.strip()
        items = self.items()
        for item in items:
            if wanted in item.aliases():
                return item
        # "name [stalehash]": a title whose hash changed still names the file
        base = wanted.rsplit(" [", 1)[0] if wanted.endswith("]") else None
        for item in items:
            if base and base in (item.name, item.model_name):
                return item
        # hashes that are not cached yet
        if all(c in "0123456789abcdef" for c in wanted.lower()) and len(wanted) in (8, 10, 64):
            for item in items:
                self.ensure_hash(item)
                if wanted.lower() in (item.sha256, item.shorthash, item.legacy_hash):
                    return item
        known = ", ".join(i.title for i in items) or "none (put .safetensors files in models/Stable-diffusion)"
        raise CheckpointNotFound(f"checkpoint {name!r} not found; available: {known}")


__all__ = ["Catalog", "CheckpointInfo", "HashCache", "scan_checkpoints", "legacy_model_hash", "PICKLE_SUFFIXES"]
