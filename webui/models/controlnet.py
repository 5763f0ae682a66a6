"""ControlNet models from `models/ControlNet/`, matched to the checkpoint they run with.

Accepted: single files in the original layout (`control_v11p_sd15_canny.pth` / `.safetensors`, keys
`control_model.*`, read weights-only), single files in diffusers' layout (common for SDXL ControlNets)
and diffusers folders (`config.json` + weights). Listed as sd-webui-controlnet lists them:
`name [hash8]` (the file's sha256).

A ControlNet is a copy of its UNet's encoder, so its architecture is the checkpoint's UNet's
(diffusers' `ControlNetModel.from_unet`, built on the meta device), adjusted to what the tensors say
(transformer depth per level, the hint encoder's widths and input channels: SDXL's "mid" and "small"
ControlNets are shallower). A ControlNet for another family (an SD1.5 one with an SDXL checkpoint) is
refused with a message naming both. Loaded ControlNets live in the model manager's typed cache (kind
"controlnet") beside the checkpoints, under the same budgets, one entry per (file, checkpoint
architecture, dtype).
"""
from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from accelerate import init_empty_weights
from diffusers import ControlNetModel
from diffusers.loaders.single_file_utils import convert_controlnet_checkpoint

from .annotators import Annotators
from .cache import tensor_bytes
from .catalog import HashCache
from .checkpoint_io import read_state_dict
from .errors import ModelError
from .files import files_in

log = logging.getLogger(__name__)

CONTROLNET = "controlnet"  # the model cache's kind
SUFFIXES = (".safetensors", ".pth", ".pt", ".ckpt", ".bin")
WEIGHT_FILES = ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin")
CONTEXT_FAMILIES = {768: "SD 1.x", 1024: "SD 2.x", 2048: "SDXL"}


class ControlNetNotFound(ModelError):
    field = "model"


@dataclass(frozen=True)
class ControlNetFile:
    name: str  # the file's stem (a folder's name)
    path: Path  # the file, or the diffusers folder
    folder: bool = False

    def weights(self) -> Path:
        if not self.folder:
            return self.path
        for name in WEIGHT_FILES:
            if (self.path / name).is_file():
                return self.path / name
        raise ModelError(f"{self.path.name}: a diffusers folder without {' or '.join(WEIGHT_FILES)}")


def family_name(context: int, sdxl: bool) -> str:
    """How a message names a model's family: SD 1.x / SD 2.x / SDXL, else its context width."""
    if sdxl:
        return "SDXL" if context == 2048 else f"SDXL-style (a {context}-wide text context)"
    return CONTEXT_FAMILIES.get(context, f"a {context}-wide text context")


class ControlNetLibrary:
    """The ControlNets in models/ControlNet (annotator weights in its `annotators/` are not models)."""

    def __init__(self, folder: Path, hashes: HashCache | None = None, get_model: Callable[..., Any] | None = None,
                 device: torch.device = torch.device("cpu")):
        self.folder = folder
        self.hashes = hashes or HashCache(None)
        self.get_model = get_model
        self.annotators = Annotators(folder / "annotators", get_model, device)  # preprocessors' networks

    def files(self) -> list[ControlNetFile]:
        if not self.folder.is_dir():
            return []
        found: list[ControlNetFile] = []
        for entry in sorted(self.folder.iterdir(), key=lambda p: p.name.lower()):
            if entry.is_dir() and (entry / "config.json").is_file():
                found.append(ControlNetFile(entry.name, entry, folder=True))
        for path in files_in(self.folder, SUFFIXES):
            if "annotators" in path.relative_to(self.folder).parts or any(p.is_dir() and path.is_relative_to(p)
                                                                         for p in (f.path for f in found)):
                continue
            found.append(ControlNetFile(path.stem, path))
        return sorted(found, key=lambda f: f.name.lower())

    def title(self, f: ControlNetFile) -> str:
        return f"{f.name} [{self.hashes.sha256(f.weights())[:8]}]"

    def titles(self) -> list[str]:
        return [self.title(f) for f in self.files()]

    def find(self, name: str) -> ControlNetFile:
        """A ControlNet by its name, file name or title (`name [hash8]`; a stale hash still names the file)."""
        wanted = name.strip()
        base = re.sub(r"\s*\[[0-9a-fA-F]{8,10}\]$", "", wanted)
        for f in self.files():  # names resolve only through the listing
            if base in (f.name, f.path.name):
                return f
        known = ", ".join(f.name for f in self.files()) or "none (put ControlNets in models/ControlNet)"
        raise ControlNetNotFound(f"no ControlNet {name!r}; available: {known}")

    # -- loading ----------------------------------------------------------------------------------------
    def load(self, name: str, unet: torch.nn.Module, checkpoint: str, device: torch.device,
             dtype: torch.dtype) -> ControlNetModel:
        """The ControlNet `name` shaped for `unet` (the checkpoint it runs with), on device in dtype."""
        f = self.find(name)
        stamp = f.weights().stat()
        signature = json.dumps({k: v for k, v in unet.config.items() if not k.startswith("_")}, sort_keys=True,
                               default=str)
        key = f"{f.weights().resolve()}|{stamp.st_size}|{stamp.st_mtime_ns}|{hash(signature)}|{dtype}"
        load = lambda: self._load(f, unet, checkpoint, device, dtype)  # noqa: E731
        if self.get_model is None:
            return load()
        return self.get_model(CONTROLNET, key, f.name, load, lambda m: tensor_bytes([m]),
                              lambda m, where: m.to(where))

    def _load(self, f: ControlNetFile, unet: torch.nn.Module, checkpoint: str, device: torch.device,
              dtype: torch.dtype) -> ControlNetModel:
        state = read_state_dict(f.weights())
        if any(k.startswith("control_model.") for k in state) or "time_embed.0.weight" in state:
            layout = "original"
        elif "controlnet_cond_embedding.conv_in.weight" in state:
            layout = "diffusers"
        else:
            raise ModelError(f"{f.path.name}: not a ControlNet (no control_model.* or controlnet_cond_embedding "
                             "weights)")
        config = controlnet_config(unet, state, layout, f, checkpoint)
        with init_empty_weights():
            model = ControlNetModel.from_config(config)
        try:
            converted = convert_controlnet_checkpoint(state, model.config) if layout == "original" else state
        except (KeyError, IndexError, ValueError, RuntimeError) as e:
            raise ModelError(f"{f.path.name}: could not convert this ControlNet ({type(e).__name__}: {e})") from e
        expected = model.state_dict()
        missing = [k for k in expected if k not in converted]
        wrong = [k for k in expected if k in converted and tuple(converted[k].shape) != tuple(expected[k].shape)]
        if missing or wrong:
            k = (missing or wrong)[0]
            got = tuple(converted[k].shape) if k in converted else "missing"
            raise ModelError(f"ControlNet {f.name} does not fit checkpoint {checkpoint}: {k} is {got}, the "
                             f"checkpoint's UNet needs {tuple(expected[k].shape)}")
        model.load_state_dict({k: converted[k].to(dtype) for k in expected}, assign=True)
        model.to(device).eval()  # the tensors are already in dtype
        log.info("ControlNet %s (%s layout) for %s", f.name, layout, checkpoint)
        return model


def _original_keys(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k.removeprefix("control_model."): v for k, v in state.items()}


def controlnet_config(unet: torch.nn.Module, state: dict[str, torch.Tensor], layout: str, f: ControlNetFile,
                      checkpoint: str) -> dict[str, Any]:
    """The ControlNet's diffusers config: the UNet's (from_unet), with the depth per level, the context
    width and the hint encoder read from the tensors; a different family is refused naming both."""
    with init_empty_weights():
        base = dict(ControlNetModel.from_unet(unet, load_weights_from_unet=False).config)
    if f.folder:
        own = json.loads((f.path / "config.json").read_text())
        base.update({k: v for k, v in own.items() if not k.startswith("_") and k in base})
    if layout == "original":
        sd = _original_keys(state)
        attn2 = [k for k in sd if re.match(r"input_blocks\.\d+\.1\.transformer_blocks\.0\.attn2\.to_k\.weight$", k)]
        context = sd[attn2[0]].shape[1] if attn2 else sd.get(
            "middle_block.1.transformer_blocks.0.attn2.to_k.weight", torch.empty(0, 0)).shape[-1]
        hint = sorted({int(m.group(1)) for k in sd if (m := re.match(r"input_hint_block\.(\d+)\.weight$", k))})
        hint_channels = sd[f"input_hint_block.{hint[0]}.weight"].shape[1]
        widths = [sd[f"input_hint_block.{i}.weight"].shape[0] for i in hint[:-1]]
        embed_widths = tuple(dict.fromkeys(widths))  # 16, 32, 96, 256 for the usual hint encoder
        depths = _original_depths(sd, len(base["block_out_channels"]), base["layers_per_block"])
        in_channels = sd["input_blocks.0.0.weight"].shape[1]
    else:
        attn2 = [k for k in state if re.match(r"down_blocks\.\d+\.attentions\.0\.transformer_blocks\.0\.attn2\.to_k"
                                              r"\.weight$", k)]
        context = state[attn2[0]].shape[1] if attn2 else state.get(
            "mid_block.attentions.0.transformer_blocks.0.attn2.to_k.weight", torch.empty(0, 0)).shape[-1]
        hint_channels = state["controlnet_cond_embedding.conv_in.weight"].shape[1]
        blocks = sorted({int(m.group(1)) for k in state
                         if (m := re.match(r"controlnet_cond_embedding\.blocks\.(\d+)\.weight$", k))})
        embed_widths = (state["controlnet_cond_embedding.conv_in.weight"].shape[0],
                        *(state[f"controlnet_cond_embedding.blocks.{i}.weight"].shape[0] for i in blocks[1::2]))
        depths = _diffusers_depths(state, len(base["block_out_channels"]))
        in_channels = state["conv_in.weight"].shape[1]
    unet_context = unet.config.cross_attention_dim
    unet_xl = unet.config.addition_embed_type == "text_time"
    xl = any(k.startswith(("label_emb.", "control_model.label_emb.", "add_embedding.")) for k in state)
    if (context, xl) != (unet_context, unet_xl):
        raise ModelError(f"ControlNet {f.name} is for {family_name(context, xl)} but checkpoint {checkpoint} is "
                         f"{family_name(unet_context, unet_xl)}")
    base["conditioning_channels"] = hint_channels
    base["in_channels"] = in_channels  # 4 (its checkpoint may be an inpainting one with 9)
    base["conditioning_embedding_out_channels"] = list(embed_widths)
    if depths is not None:
        base["transformer_layers_per_block"] = depths
    return base


def _original_depths(sd: dict[str, torch.Tensor], levels: int, per_level: int) -> list[int] | None:
    depths = []
    for level in range(levels):
        block = 1 + level * (per_level + 1)
        count = len({int(m.group(1)) for k in sd
                     if (m := re.match(rf"input_blocks\.{block}\.1\.transformer_blocks\.(\d+)\.", k))})
        depths.append(max(1, count))
    return depths


def _diffusers_depths(state: dict[str, torch.Tensor], levels: int) -> list[int]:
    depths = []
    for level in range(levels):
        count = len({int(m.group(1)) for k in state
                     if (m := re.match(rf"down_blocks\.{level}\.attentions\.0\.transformer_blocks\.(\d+)\.", k))})
        depths.append(max(1, count))
    return depths
