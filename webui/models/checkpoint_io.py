"""Reading checkpoint files into state dicts, safely.

`.safetensors` is read with safetensors. `.ckpt`/`.pt` files are pickles: they are only ever read
with `torch.load(weights_only=True)`, whose unpickler accepts tensors and plain containers and
refuses every other global, so a file that would run code when loaded is rejected, not executed.
"""
from __future__ import annotations

import json
import pickle
import struct
import zipfile
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from .errors import ModelError, UnsafeCheckpoint

SAFETENSORS_SUFFIXES = (".safetensors",)
PICKLE_SUFFIXES = (".ckpt", ".pt", ".pth", ".bin")


def _safetensors_header(path: Path) -> dict:
    with open(path, "rb") as f:
        (size,) = struct.unpack("<Q", f.read(8))
        if size > 100 * 1024 * 1024:
            raise ValueError("header too large")
        return json.loads(f.read(size))


def read_safetensors_keys(path: Path) -> set[str]:
    """The tensor names in a safetensors header, without reading the tensors (empty if unreadable)."""
    try:
        return {k for k in _safetensors_header(path) if k != "__metadata__"}
    except (OSError, ValueError, struct.error):
        return set()


def read_safetensors_metadata(path: Path) -> dict[str, str]:
    """The `__metadata__` of a safetensors header, without reading the tensors."""
    try:
        return dict(_safetensors_header(path).get("__metadata__") or {})
    except (OSError, ValueError, struct.error):
        return {}


def _load_safetensors(path: Path) -> dict[str, torch.Tensor]:
    """All tensors, copied out of the mapped file in the order they lie in it.

    Copying, rather than using the mapping, makes the model own its memory: a file truncated or
    overwritten while it is loaded can then neither crash Easel (SIGBUS on a vanished page) nor change
    the weights of a model already in use. Copying in file order also makes the OS read the file
    sequentially (the model would otherwise touch it in module order: thousands of small random reads,
    measured 2.5x slower)."""
    header = _safetensors_header(path)
    sd = load_file(str(path), device="cpu")
    return {key: sd[key].clone() for key in sorted(sd, key=lambda k: header[k]["data_offsets"][0])}


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """All tensors of a checkpoint file, on the CPU, unwrapped from a `state_dict` if nested."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix in SAFETENSORS_SUFFIXES:
        try:
            sd = _load_safetensors(path)
        except (SafetensorError, OSError, ValueError, RuntimeError, KeyError, TypeError, struct.error) as e:
            raise ModelError(f"{path.name}: not a readable safetensors file ({_short(e)}); is it truncated?") from e
    elif suffix in PICKLE_SUFFIXES:
        sd = _read_pickle(path)
    else:
        raise ModelError(f"{path.name}: unsupported checkpoint type {suffix!r} (use .safetensors or .ckpt)")
    return _unwrap(sd, path)


def _read_pickle(path: Path) -> dict:
    """A .ckpt read into memory (never mapped: the model owns its weights, see _load_safetensors)."""
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise UnsafeCheckpoint(
            f"{path.name}: refused to load: this .ckpt needs Python objects beyond tensors to unpickle, "
            f"which could run arbitrary code. Convert it to .safetensors with a tool you trust. ({_short(e)})"
        ) from e
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as e:
        raise ModelError(f"{path.name}: not a readable checkpoint ({_short(e)}); is it truncated?") from e


def _unwrap(obj, path: Path) -> dict[str, torch.Tensor]:
    # nested under `state_dict` (SD checkpoints), `params_ema` or `params` (Real-ESRGAN's training wrapper)
    for key in ("state_dict", "params_ema", "params"):
        if isinstance(obj, dict) and isinstance(obj.get(key), dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not obj:
        raise ModelError(f"{path.name}: holds no tensors; not a model checkpoint")
    tensors = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    if not tensors:
        raise ModelError(f"{path.name}: holds no tensors; not a model checkpoint")
    return tensors


def _short(e: Exception) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return text[:200]
