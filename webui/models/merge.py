"""A1111's checkpoint merger: two or three checkpoints in, one `.safetensors` out.

Methods, with A1111's names and arithmetic (M is the multiplier):
  weighted sum      A * (1 - M) + B * M
  add difference    A + (B - C) * M
  no interpolation  A (to bake in a VAE, halve the precision or turn a .ckpt into .safetensors)

Two SDXL checkpoints are about 7 GB each, more than a home PC can hold twice over next to the
result, so nothing here holds a whole model: safetensors inputs are read one tensor at a time and
the output is written one tensor at a time. That works because every output tensor's name, shape
and dtype are known before any arithmetic (they are A's, or float16 with `fp16`), so the
safetensors header can be written first. Only `.ckpt` inputs are loaded whole: a pickle cannot be
read in parts.

Every refusal (another family, a tensor of another shape, an output that exists) happens before the
output is touched; the output appears only complete, by renaming a temporary file in its folder.
"""
from __future__ import annotations

import json
import os
import re
import struct
import tempfile
from collections.abc import Callable, Iterator, KeysView
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import torch
from pydantic import BaseModel, ConfigDict, Field
from safetensors import SafetensorError, safe_open

from .catalog import legacy_model_hash, sha256_of_files
from .checkpoint_io import PICKLE_SUFFIXES, SAFETENSORS_SUFFIXES, read_state_dict
from .errors import ModelError
from .families import FAMILY_TITLES, VAE_PREFIX, family_name, normalise_keys

WEIGHTED_SUM, ADD_DIFFERENCE, NO_INTERPOLATION = "Weighted sum", "Add difference", "No interpolation"
METHODS = (WEIGHTED_SUM, ADD_DIFFERENCE, NO_INTERPOLATION)
UNET_CONV_IN = "model.diffusion_model.input_blocks.0.0.weight"
LATENT_CHANNELS = 4
# channels of the UNet's input conv in A1111's special cases: latents + mask + masked image, latents + image
INPAINTING_CHANNELS, INSTRUCT_CHANNELS = 9, 8

_SAFETENSORS_DTYPES = {
    "BOOL": torch.bool, "U8": torch.uint8, "I8": torch.int8, "I16": torch.int16, "I32": torch.int32,
    "I64": torch.int64, "F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32, "F64": torch.float64,
    "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}
_DTYPE_NAMES = {dtype: name for name, dtype in _SAFETENSORS_DTYPES.items()}


@dataclass(frozen=True)
class MergeRecipe:
    """What to merge and how: the fields of A1111's Checkpoint merger tab."""

    primary: Path  # A: the result has its tensors, names, shapes and dtypes
    secondary: Path | None  # B: needed by "weighted sum" and "add difference"
    tertiary: Path | None  # C: needed by "add difference", ignored otherwise
    method: str  # "weighted sum" | "add difference" | "no interpolation" (any case)
    multiplier: float  # M, 0..1
    fp16: bool = False  # save float tensors as float16
    bake_vae: Path | None = None  # a VAE file whose weights replace A's first_stage_model.*
    discard: tuple[str, ...] = ()  # regexes (re.search) of tensor names to leave out of the result
    copy_metadata: bool = True  # carry the inputs' safetensors metadata over (A's wins), as A1111 does


@dataclass(frozen=True)
class _Step:
    """One output tensor: its name, shape and dtype (fixed before merging) and how it is made."""

    key: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    how: str  # "copy" (A's), "merge", "first_channels" (merge the latent channels only) or "vae"


class _Reader:
    """One input checkpoint, its tensors under normalised names, each read only when asked for."""

    def __init__(self, path: Path, stack: ExitStack):
        self.path = path
        self.metadata: dict[str, str] = {}
        self._file = None
        self._tensors: dict[str, torch.Tensor] = {}
        if path.suffix.lower() in SAFETENSORS_SUFFIXES:
            try:
                self._file = stack.enter_context(safe_open(str(path), framework="pt"))
                names = list(self._file.offset_keys())  # file order: the disk is read front to back
                self.metadata = dict(self._file.metadata() or {})
            except (SafetensorError, OSError, ValueError) as e:
                raise ModelError(f"{path.name}: not a readable safetensors file ({e}); is it truncated?") from e
        else:
            self._tensors = read_state_dict(path)
            names = list(self._tensors)
        # old SD1 files name the text encoder without `text_model.`; A1111 renames them before merging,
        # so the same tensor meets itself in both files. {name: name} gives {normalised: original}.
        self._originals: dict[str, str] = normalise_keys(dict(zip(names, names)))  # type: ignore[arg-type]

    @property
    def keys(self) -> KeysView[str]:
        """The tensor names, normalised, in file order (a view: `in` is a dict lookup)."""
        return self._originals.keys()

    def shape(self, key: str) -> tuple[int, ...]:
        name = self._originals[key]
        if self._file is None:
            return tuple(self._tensors[name].shape)
        return tuple(self._file.get_slice(name).get_shape())

    def dtype(self, key: str) -> torch.dtype:
        name = self._originals[key]
        if self._file is None:
            return self._tensors[name].dtype
        dtype = self._file.get_slice(name).get_dtype()
        if dtype not in _SAFETENSORS_DTYPES:
            raise ModelError(f"{self.path.name}: tensor {key} has the unsupported dtype {dtype}")
        return _SAFETENSORS_DTYPES[dtype]

    def get(self, key: str) -> torch.Tensor:
        name = self._originals[key]
        if self._file is None:
            return self._tensors[name]
        try:
            return self._file.get_tensor(name)
        except (SafetensorError, OSError, ValueError, RuntimeError) as e:
            raise ModelError(f"{self.path.name}: could not read tensor {key} ({e}); is the file truncated?") from e

    def family(self) -> str:
        """sd1 / sd2 / sdxl, or "unknown" for layouts families.py does not run (e.g. SDXL refiners)."""
        try:
            return family_name(dict.fromkeys(self._originals), self.path.name)  # type: ignore[arg-type]
        except ModelError:
            return "unknown"


def canonical_method(method: str) -> str:
    """A1111's spelling of a merge method named in any case; ModelError for an unknown one."""
    wanted = " ".join(method.split()).lower()
    for name in METHODS:
        if name.lower() == wanted:
            return name
    raise ModelError(f"unknown merge method {method!r}; choose one of: {', '.join(METHODS)}")


def merge_checkpoints(recipe: MergeRecipe, output: Path, *, on_progress: Callable[[int, int], None] | None = None,
                      sha256: Callable[[Path], str] | None = None) -> Path:
    """Merge the recipe's checkpoints into `output` (a new .safetensors file) and return its path.

    Raises ModelError, naming the file and the reason, for anything that makes the merge impossible;
    no file is left behind then. `on_progress(done, total)` is called after each tensor written.
    `sha256` hashes an input for the metadata (pass the catalog's cached hasher to skip re-reading
    multi-GB files); by default the files are hashed here.
    """
    output = Path(output)
    method = canonical_method(recipe.method)
    inputs = _inputs(recipe, method)
    _check_output(output, [*inputs, *([Path(recipe.bake_vae)] if recipe.bake_vae else [])])
    discard = _discard_patterns(recipe.discard)
    with ExitStack() as stack:
        readers = [_Reader(path, stack) for path in inputs]
        _check_families(readers)
        vae = _vae_tensors(recipe.bake_vae, readers[0]) if recipe.bake_vae else {}
        steps = _plan(readers, vae, recipe.fp16, discard, method)
        metadata = _metadata(recipe, method, readers, steps, output, sha256 or (lambda p: sha256_of_files([p])))
        with _atomic_output(output) as f:
            f.write(_header(steps, metadata))
            for done, step in enumerate(steps, 1):
                _write_tensor(f, _produce(step, readers, vae, method, recipe.multiplier), step)
                if on_progress is not None:
                    on_progress(done, len(steps))
    return output


def _inputs(recipe: MergeRecipe, method: str) -> list[Path]:
    """The files the method reads, A first (A1111 ignores B without interpolation, C without a difference)."""
    if not 0.0 <= recipe.multiplier <= 1.0:  # also refuses NaN
        raise ModelError(f"the multiplier must be between 0 and 1, not {recipe.multiplier}")
    needed: list[tuple[str, Path | None]] = [("primary model (A)", recipe.primary)]
    if method != NO_INTERPOLATION:
        needed.append(("secondary model (B)", recipe.secondary))
    if method == ADD_DIFFERENCE:
        needed.append(("tertiary model (C)", recipe.tertiary))
    paths = []
    for role, path in needed:
        if path is None:
            raise ModelError(f"{method} needs a {role}; none was given")
        path = Path(path)
        if not path.is_file():
            raise ModelError(f"{path.name}: the {role} is not a file ({path})")
        if path.suffix.lower() not in SAFETENSORS_SUFFIXES + PICKLE_SUFFIXES:
            raise ModelError(f"{path.name}: unsupported checkpoint type {path.suffix!r} (use .safetensors or .ckpt)")
        paths.append(path)
    return paths


def _check_output(output: Path, inputs: list[Path]) -> None:
    if output.suffix.lower() != ".safetensors":
        raise ModelError(f"{output.name}: the merged checkpoint must be saved as .safetensors")
    resolved = output.resolve()
    if any(resolved == Path(p).resolve() for p in inputs):
        raise ModelError(f"{output.name}: the output would overwrite one of the models being merged")
    if output.exists():
        raise ModelError(f"{output.name}: a file of that name exists already; choose another name")
    if not output.parent.is_dir():
        raise ModelError(f"{output.name}: the folder {output.parent} does not exist")


def _discard_patterns(patterns: tuple[str, ...]) -> list[re.Pattern]:
    compiled = []
    for pattern in patterns:
        if not pattern.strip():
            continue
        try:
            compiled.append(re.compile(pattern))
        except re.error as e:
            raise ModelError(f"discard weights: {pattern!r} is not a regular expression ({e})") from e
    return compiled


def _check_families(readers: list[_Reader]) -> None:
    """Refuse to mix families: their tensors would mostly differ in shape, and the few that match
    would make a model that is neither."""
    first = readers[0]
    for other in readers[1:]:
        a, b = first.family(), other.family()
        if a != b:
            raise ModelError(f"cannot merge models of different families: {first.path.name} is "
                             f"{_family_title(a)}, {other.path.name} is {_family_title(b)}")


def _family_title(name: str) -> str:
    return FAMILY_TITLES.get(name, "of an unknown layout")


def _vae_tensors(path: Path, primary: _Reader) -> dict[str, torch.Tensor]:
    """The VAE file's tensors under A's names (`first_stage_model.*`), checked against A's shapes.

    Like A1111, only tensors A has are taken; a VAE file is small enough to read whole."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path.name}: the VAE to bake in is not a file ({path})")
    own = primary.keys
    found: dict[str, torch.Tensor] = {}
    for name, tensor in read_state_dict(path).items():
        key = name if name.startswith(VAE_PREFIX) else VAE_PREFIX + name
        if key not in own:
            continue
        if tuple(tensor.shape) != primary.shape(key):
            raise ModelError(f"{path.name}: the VAE tensor {name} has shape {tuple(tensor.shape)}, but "
                             f"{primary.path.name} has {primary.shape(key)}; the VAE does not fit this model")
        found[key] = tensor
    if not found:
        raise ModelError(f"{path.name}: none of its tensors is a VAE weight of {primary.path.name} "
                         f"(an original-layout VAE, encoder.* / decoder.*, is expected)")
    return found


def _plan(readers: list[_Reader], vae: dict[str, torch.Tensor], fp16: bool, discard: list[re.Pattern],
          method: str) -> list[_Step]:
    """Every output tensor, with its shape and dtype and how it is made; refuses shape mismatches.

    Ordered by element size, largest first (as safetensors' own writer does), so each tensor starts
    at a multiple of its element size in the file; within a size, in A's file order."""
    primary = readers[0]
    steps = []
    for key in primary.keys:
        if any(p.search(key) for p in discard):
            continue
        dtype = primary.dtype(key)
        if fp16 and dtype.is_floating_point:
            dtype = torch.float16
        steps.append(_Step(key, primary.shape(key), dtype, _how(key, readers, vae, method)))
    if not steps:
        raise ModelError(f"{primary.path.name}: every tensor was discarded; nothing would be saved")
    return sorted(steps, key=lambda s: -s.dtype.itemsize)  # a stable sort keeps A's order within a size


def _how(key: str, readers: list[_Reader], vae: dict[str, torch.Tensor], method: str) -> str:
    """How one tensor is made. Tensors only A has, integer tensors and CLIP's position ids (A1111
    never merges those) are A's; a tensor of another shape in B or C refuses the whole merge."""
    primary, others = readers[0], readers[1:]
    if key in vae:
        return "vae"
    if method == NO_INTERPOLATION or key.endswith("position_ids") or not primary.dtype(key).is_floating_point:
        return "copy"
    if not all(key in r.keys for r in others):
        return "copy"
    a = primary.shape(key)
    shapes = [r.shape(key) for r in others]
    if all(s == a for s in shapes):
        return "merge"
    if key == UNET_CONV_IN and _latents_only(a, shapes, readers):
        return "first_channels"
    mismatch = next(r for r, s in zip(others, shapes) if s != a)
    raise ModelError(f"cannot merge {primary.path.name} with {mismatch.path.name}: tensor {key} has shape "
                     f"{a} in the first and {mismatch.shape(key)} in the second")


def _latents_only(a: tuple[int, ...], shapes: list[tuple[int, ...]], readers: list[_Reader]) -> bool:
    """A1111's special case: an inpainting (9-channel) or instruct-pix2pix (8-channel) A merged with
    normal models, whose UNet input convs see only the 4 latent channels. Those are merged; A's
    extra channels are kept. The normal model must be B (and C): the result has A's shape."""
    def other_dims(shape: tuple[int, ...]) -> tuple[int, ...]:
        return shape[:1] + shape[2:]

    if len(a) != 4 or any(len(s) != 4 or other_dims(s) != other_dims(a) for s in shapes):
        return False
    if a[1] == LATENT_CHANNELS and any(s[1] in (INPAINTING_CHANNELS, INSTRUCT_CHANNELS) for s in shapes):
        other = next(r for r, s in zip(readers[1:], shapes) if s[1] != LATENT_CHANNELS)
        raise ModelError(f"{other.path.name} is an inpainting or instruct-pix2pix model and "
                         f"{readers[0].path.name} is not: to merge them, choose the inpainting model as A")
    return a[1] in (INPAINTING_CHANNELS, INSTRUCT_CHANNELS) and all(s[1] == LATENT_CHANNELS for s in shapes)


def _combine(method: str, m: float, a: torch.Tensor, b: torch.Tensor, c: torch.Tensor | None) -> torch.Tensor:
    """The method's arithmetic, in at least float32; exact at M = 0 (A) and, for a weighted sum, M = 1 (B)."""
    if m == 0.0:
        return a
    if method == WEIGHTED_SUM:
        if m == 1.0:
            return b
        work = torch.promote_types(torch.promote_types(a.dtype, b.dtype), torch.float32)
        return a.to(work) * (1.0 - m) + b.to(work) * m
    assert c is not None  # _inputs() requires C for a difference
    work = torch.promote_types(torch.promote_types(a.dtype, b.dtype), torch.promote_types(c.dtype, torch.float32))
    return a.to(work) + (b.to(work) - c.to(work)) * m


def _produce(step: _Step, readers: list[_Reader], vae: dict[str, torch.Tensor], method: str,
             m: float) -> torch.Tensor:
    """One output tensor, in its planned dtype."""
    if step.how == "vae":
        return vae[step.key].to(step.dtype)
    a = readers[0].get(step.key)
    if step.how == "copy":
        return a.to(step.dtype)
    b = readers[1].get(step.key)
    c = readers[2].get(step.key) if len(readers) > 2 else None
    if step.how == "merge":
        return _combine(method, m, a, b, c).to(step.dtype)
    merged = _combine(method, m, a[:, :LATENT_CHANNELS], b, c)
    out = a.to(merged.dtype, copy=True)
    out[:, :LATENT_CHANNELS] = merged
    return out.to(step.dtype)


def _metadata(recipe: MergeRecipe, method: str, readers: list[_Reader], steps: list[_Step], output: Path,
              sha256: Callable[[Path], str]) -> dict[str, str]:
    """A1111's merge metadata: the recipe, and every model that went into the result (theirs too)."""
    hashes = [sha256(r.path) for r in readers]
    conv_in = next((s for s in steps if s.key == UNET_CONV_IN and s.how == "first_channels"), None)
    channels = conv_in.shape[1] if conv_in is not None else None
    recipe_json = {
        "type": "webui",
        "primary_model_hash": hashes[0],
        "secondary_model_hash": hashes[1] if len(hashes) > 1 else None,
        "tertiary_model_hash": hashes[2] if len(hashes) > 2 else None,
        "interp_method": method,
        "multiplier": recipe.multiplier,
        "save_as_half": recipe.fp16,
        "custom_name": output.stem,
        "bake_in_vae": Path(recipe.bake_vae).name if recipe.bake_vae else "None",
        "discard_weights": "|".join(p for p in recipe.discard if p.strip()),  # one regex, as A1111's field
        "is_inpainting": channels == INPAINTING_CHANNELS,
        "is_instruct_pix2pix": channels == INSTRUCT_CHANNELS,
    }
    models: dict[str, dict] = {}
    for reader, digest in zip(readers, hashes):
        models[digest] = {"name": reader.path.name, "legacy_hash": legacy_model_hash(reader.path),
                          "sd_merge_recipe": _json_or_none(reader.metadata.get("sd_merge_recipe"))}
        models.update(_json_or_none(reader.metadata.get("sd_merge_models")) or {})  # their ancestors
    inherited: dict[str, str] = {}
    if recipe.copy_metadata:
        for reader in reversed(readers):  # A's values win
            inherited.update(reader.metadata)
    return {**inherited, "format": "pt", "sd_merge_recipe": json.dumps(recipe_json),
            "sd_merge_models": json.dumps(models)}


def _json_or_none(text: str | None):
    try:
        return json.loads(text) if text else None
    except ValueError:
        return None


def _header(steps: list[_Step], metadata: dict[str, str]) -> bytes:
    """The safetensors header: 8-byte little-endian length, then JSON padded with spaces to 8 bytes."""
    entries: dict[str, object] = {"__metadata__": {str(k): str(v) for k, v in metadata.items()}}
    offset = 0
    for step in steps:
        if step.dtype not in _DTYPE_NAMES:
            raise ModelError(f"tensor {step.key}: dtype {step.dtype} cannot be saved as safetensors")
        size = step.dtype.itemsize
        for n in step.shape:
            size *= n
        entries[step.key] = {"dtype": _DTYPE_NAMES[step.dtype], "shape": list(step.shape),
                             "data_offsets": [offset, offset + size]}
        offset += size
    text = json.dumps(entries, separators=(",", ":")).encode("utf-8")
    text += b" " * (-len(text) % 8)
    return struct.pack("<Q", len(text)) + text


def _write_tensor(f: BinaryIO, tensor: torch.Tensor, step: _Step) -> None:
    """A tensor's raw bytes (little-endian, as on every platform torch runs Easel on), checked
    against the header already written: a mismatch would make every later offset wrong."""
    if tuple(tensor.shape) != step.shape or tensor.dtype != step.dtype:
        raise ModelError(f"tensor {step.key} came out as {tuple(tensor.shape)} {tensor.dtype}, "
                         f"expected {step.shape} {step.dtype}")
    raw = tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8)  # numpy has no bfloat16
    f.write(raw.numpy().data)


@contextmanager
def _atomic_output(output: Path) -> Iterator[BinaryIO]:
    """A temporary file in the output's folder, renamed to `output` only when complete. The name
    starts with a dot and does not end in .safetensors, so the checkpoint list never shows it."""
    fd, name = tempfile.mkstemp(prefix=f".tmp-{output.stem}-", suffix=".part", dir=str(output.parent))
    tmp = Path(name)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600 files; give the usual mode
        if output.exists():  # appeared while merging: still never overwrite
            raise ModelError(f"{output.name}: a file of that name appeared while merging; choose another name")
        os.replace(tmp, output)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise ModelError(f"{output.name}: could not write the merged checkpoint ({e})") from e
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


__all__ = ["MergeRecipe", "merge_checkpoints", "canonical_method", "METHODS",
           "WEIGHTED_SUM", "ADD_DIFFERENCE", "NO_INTERPOLATION"]


class MergeRequest(BaseModel):
    """The Checkpoint merger tab's fields: checkpoints by name or title (as listed), the new file's name."""

    model_config = ConfigDict(extra="forbid")

    primary: str = Field(min_length=1, description="checkpoint A")
    secondary: str = Field("", description="checkpoint B (not needed by No interpolation)")
    tertiary: str = Field("", description="checkpoint C (Add difference)")
    name: str = Field("", description="the new file's name (default: A's and B's names with the multiplier)")
    method: str = Field(WEIGHTED_SUM, description=", ".join(METHODS))
    multiplier: float = Field(0.3, ge=0.0, le=1.0, description="M")
    fp16: bool = Field(False, description="save float tensors as float16")
    bake_vae: str = Field("", description="a VAE file's name from models/VAE whose weights replace A's")
    discard: str = Field("", description="regular expressions of tensor names to leave out, comma-separated")
