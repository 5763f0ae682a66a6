"""LoRA from `models/Lora/`, used in prompts as `<lora:name:weight>` (A1111's extra-network syntax).

Files in kohya/A1111 formats are read and injected through diffusers' own LoRA loaders (backed by
peft), once per loaded model, as named adapters; each job then activates exactly the adapters its
prompt names, with their weights, and a job that names none runs with all adapters disabled.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

import torch
from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
from diffusers.loaders.lora_base import set_adapters_for_text_encoder
from diffusers.utils.peft_utils import set_adapter_layers

from .catalog import HashCache
from .checkpoint_io import read_state_dict
from webui.errors import FieldError

from .errors import LoraNotFound, ModelError
from .files import files_in

LORA_SUFFIXES = (".safetensors", ".pt", ".ckpt")
_TAG = re.compile(r"<(?:lora|lyco):([^:>]+)(?::([^:>]*))?(?::([^>]*))?>", re.IGNORECASE)


@dataclass(frozen=True)
class LoraUse:
    name: str
    weight: float


def extract_lora_tags(prompt: str, field: str = "prompt") -> tuple[str, list[LoraUse]]:
    """The prompt without `<lora:…>` tags, and the LoRAs they name, one use per name (A1111 strips them
    before encoding; the same name twice adds its weights, as A1111's stacked networks do).
    `<lora:name>` means weight 1; a second number (A1111's `te:unet` form) gives the UNet its own weight,
    which Easel folds into one weight (the first) for both. FieldError (naming `field`) for a weight
    that is not a number."""
    weights: dict[str, float] = {}
    for m in _TAG.finditer(prompt):
        raw = (m.group(2) or "1").strip().removeprefix("te=")
        try:
            weight = float(raw) if raw else 1.0
        except ValueError:
            raise FieldError(field, f"LoRA tag {m.group(0)[:80]!r} has a weight that is not a number") from None
        name = m.group(1).strip()
        weights[name] = weights.get(name, 0.0) + weight
    return _TAG.sub("", prompt), [LoraUse(name, weight) for name, weight in weights.items()]


@dataclass
class LoraFile:
    name: str
    path: Path
    shorthash: str | None = None


@dataclass
class LoraLibrary:
    folder: Path
    hashes: HashCache = field(default_factory=lambda: HashCache(None))

    def files(self) -> list[LoraFile]:
        return [LoraFile(p.stem, p) for p in files_in(self.folder, LORA_SUFFIXES)]

    def find(self, name: str, *, hashed: bool = True) -> LoraFile:
        """The file a tag names (LoraNotFound if none), with its short hash unless `hashed` is False."""
        files = self.files()
        for f in files:  # names resolve only through the listing: nothing outside the folder
            if name in (f.name, f.path.name):
                if hashed:
                    f.shorthash = self.hashes.sha256(f.path)[:12]
                return f
        shown = ", ".join(f.name for f in files[:20]) + (", …" if len(files) > 20 else "")
        raise LoraNotFound(f"LoRA {name[:80]!r} not found in {self.folder.name}/ (available: {shown or 'none'})")


def _adapter(name: str) -> str:
    return "lora_" + re.sub(r"\W", "_", name)


def _inject(model, f: LoraFile) -> None:
    source = str(f.path) if f.path.suffix == ".safetensors" else read_state_dict(f.path)
    # SDXL files name two text encoders (kohya's lora_te1_/lora_te2_); diffusers' SDXL loader maps both
    pipeline = StableDiffusionXLPipeline if model.text_encoder_2 is not None else StableDiffusionPipeline
    prefixes = tuple(prefix + "." for prefix, _ in model.text_encoders)
    try:
        state, alphas = pipeline.lora_state_dict(source)
        if not any(k.startswith(("unet.", *prefixes)) for k in state):
            raise ValueError("no LoRA weights for a UNet or text encoder in it")
        pipeline.load_lora_into_unet(dict(state), alphas, unet=model.unet, adapter_name=_adapter(f.name))
        for prefix, encoder in model.text_encoders:
            if any(k.startswith(prefix + ".") for k in state):
                pipeline.load_lora_into_text_encoder(dict(state), alphas, text_encoder=encoder, prefix=prefix,
                                                     adapter_name=_adapter(f.name))
    except (ValueError, KeyError, RuntimeError, TypeError, OSError) as e:
        raise ModelError(f"{f.path.name}: not a LoRA this model can use ({type(e).__name__}: "
                         f"{str(e).splitlines()[0][:200] if str(e) else ''})") from e


def activate_loras(model, library: LoraLibrary, uses: list[LoraUse]) -> list[LoraFile]:
    """Make exactly `uses` active on the model (injecting new files once); returns the files used."""
    loaded: dict[str, LoraFile] = model.loras
    files = [library.find(u.name) for u in uses]
    if any(f.name not in loaded for f in files) and next(model.unet.parameters()).is_meta:
        raise ModelError("LoRA cannot be added while --lowvram streams the weights layer by layer; "
                         "use --medvram (or no offload) for prompts with <lora:...>")
    for f in files:
        if f.name not in loaded:
            _inject(model, f)
            loaded[f.name] = f
    if not loaded:
        return files
    if not uses:
        set_adapter_layers(model.unet, enabled=False)
        for _, encoder in model.text_encoders:
            if _has_adapters(encoder):
                set_adapter_layers(encoder, enabled=False)
        return files
    names = [_adapter(u.name) for u in uses]
    weights = [u.weight for u in uses]
    set_adapter_layers(model.unet, enabled=True)
    model.unet.set_adapters(names, weights)
    for _, encoder in model.text_encoders:
        te_names = [(n, w) for n, w in zip(names, weights) if n in _adapters_of(encoder)]
        if te_names:
            set_adapter_layers(encoder, enabled=True)
            set_adapters_for_text_encoder([n for n, _ in te_names], encoder, [w for _, w in te_names])
        elif _has_adapters(encoder):
            set_adapter_layers(encoder, enabled=False)
    return files


def _adapters_of(module: torch.nn.Module) -> set[str]:
    config = getattr(module, "peft_config", None)
    return set(config) if config else set()


def _has_adapters(module: torch.nn.Module) -> bool:
    return bool(_adapters_of(module))
