"""Textual-inversion embeddings from `models/embeddings/`, used in prompts by file name (A1111-style).

Formats read: A1111 `.pt` (`string_to_param`), A1111 `.safetensors` (`emb_params`), diffusers-style
single-vector files (`{"<name>": tensor}`), and SDXL pairs (`clip_l` / `clip_g`). `.pt`/`.bin`
files go through `torch.load(weights_only=True)` like checkpoints. Files are read once and cached by
path, size and mtime; a file that cannot be used lands in `skipped` with the reason.
"""
from __future__ import annotations

import os
import re
import threading
from dataclasses import dataclass
from pathlib import Path

import torch

from .catalog import HashCache
from .checkpoint_io import read_state_dict
from .errors import ModelError
from .files import files_in

SUFFIXES = (".pt", ".safetensors", ".bin")


@dataclass(frozen=True)
class Embedding:
    name: str
    path: Path
    vectors: dict[str, torch.Tensor]  # text-encoder key ("clip_l", "clip_g") -> [n_vectors, width]
    sha256: str

    @property
    def shorthash(self) -> str:
        return self.sha256[:12]

    @property
    def n_vectors(self) -> int:
        return next(iter(self.vectors.values())).shape[0]

    def for_width(self, width: int) -> torch.Tensor | None:
        for v in self.vectors.values():
            if v.shape[-1] == width:
                return v
        return None


def _vectors(sd: dict[str, torch.Tensor], path: Path) -> dict[str, torch.Tensor]:
    if "clip_l" in sd or "clip_g" in sd:
        out = {k: sd[k] for k in ("clip_l", "clip_g") if k in sd}
    elif "emb_params" in sd:
        out = {"clip_l": sd["emb_params"]}
    elif any(k.startswith("string_to_param.") for k in sd):
        out = {"clip_l": next(v for k, v in sd.items() if k.startswith("string_to_param."))}
    elif len(sd) == 1:
        out = {"clip_l": next(iter(sd.values()))}
    else:
        raise ModelError(f"{path.name}: not a textual-inversion embedding (keys: {', '.join(list(sd)[:5])})")
    return {k: (v[None] if v.ndim == 1 else v).detach().float() for k, v in out.items()}


def _flatten(obj, prefix: str = "") -> dict[str, torch.Tensor]:
    """A1111 `.pt` files nest the vectors (`string_to_param -> {'*': tensor}`)."""
    if isinstance(obj, torch.Tensor):
        return {prefix.rstrip("."): obj}
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    return {}


def load_embedding(path: Path, hashes: HashCache | None = None) -> Embedding:
    if path.suffix == ".safetensors":
        sd = read_state_dict(path)
    else:
        try:
            raw = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception as e:
            raise ModelError(f"{path.name}: refused or unreadable embedding ({str(e).splitlines()[0][:160]})") from e
        sd = _flatten(raw)
        if not sd:
            raise ModelError(f"{path.name}: holds no tensors; not an embedding")
    vectors = _vectors(sd, path)
    if any(v.ndim != 2 or v.shape[0] == 0 or v.shape[0] > 75 for v in vectors.values()):
        raise ModelError(f"{path.name}: unexpected embedding shape {[tuple(v.shape) for v in vectors.values()]}")
    return Embedding(path.stem, path, vectors, (hashes or HashCache(None)).sha256(path))


class EmbeddingLibrary:
    """The embeddings folder, scanned on demand (`refresh`), each file loaded once."""

    def __init__(self, folder: Path, hashes: HashCache | None = None):
        self.folder = folder
        self.hashes = hashes or HashCache(None)
        self._lock = threading.Lock()
        self._cache: dict[Path, tuple[tuple[int, int], Embedding | str]] = {}
        self.loaded: dict[str, Embedding] = {}
        self.skipped: dict[str, str] = {}

    def refresh(self) -> None:
        with self._lock:
            loaded, skipped = {}, {}
            files = files_in(self.folder, SUFFIXES)
            for path in files:
                stamp = (os.path.getsize(path), os.stat(path).st_mtime_ns)
                cached = self._cache.get(path)
                if cached is None or cached[0] != stamp:
                    try:
                        cached = (stamp, load_embedding(path, self.hashes))
                    except ModelError as e:
                        cached = (stamp, str(e))
                    self._cache[path] = cached
                item = cached[1]
                if isinstance(item, Embedding):
                    loaded[item.name] = item
                else:
                    skipped[path.stem] = item
            self.loaded, self.skipped = loaded, skipped

    def find_in(self, text: str) -> list[str]:
        """Embedding names used as whole words in a prompt."""
        return [name for name in self.loaded if re.search(_word(name), text)]

    def snapshot(self) -> dict[str, Embedding]:
        with self._lock:
            return dict(self.loaded)


def _word(name: str) -> str:
    return r"(?<![\w-])" + re.escape(name) + r"(?![\w-])"


def split_on_embeddings(text: str, names: list[str]) -> list[tuple[str, str | None]]:
    """[(piece, embedding name or None)]: the prompt text cut around embedding names."""
    if not names:
        return [(text, None)]
    pattern = re.compile("|".join(_word(n) for n in sorted(names, key=len, reverse=True)))
    out, pos = [], 0
    for m in pattern.finditer(text):
        if m.start() > pos:
            out.append((text[pos:m.start()], None))
        out.append((m.group(0), m.group(0)))
        pos = m.end()
    if pos < len(text):
        out.append((text[pos:], None))
    return out
