"""Turning a checkpoint on disk into the diffusers components Easel runs.

Single files in the original layout are converted with diffusers' own converters
(`diffusers.loaders.single_file_utils`), fed with an original config that `families` infers from
the tensors; diffusers folders load with `from_pretrained(local_files_only=True)`. Either way the
model is built on the meta device and the weights are *assigned*, not copied, so a load costs about
one read of the file. Nothing here touches the network: configs and the tokenizer are Easel's own.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate import init_empty_weights
from diffusers import AutoencoderKL, UNet2DConditionModel
from diffusers.loaders.single_file_utils import (
    convert_ldm_clip_checkpoint,
    convert_ldm_unet_checkpoint,
    convert_ldm_vae_checkpoint,
    create_unet_diffusers_config_from_ldm,
    create_vae_diffusers_config_from_ldm,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer
from transformers.initialization import no_init_weights

from .catalog import CheckpointInfo
from .checkpoint_io import read_safetensors_metadata, read_state_dict
from .errors import ModelError
from .families import ModelFamily, detect_family, exact_widths, normalise_keys, text_encoder_config
from .tokenizers import load_clip_tokenizer

log = logging.getLogger(__name__)
CONFIGS = Path(__file__).resolve().parent / "configs"


@dataclass
class LoadedModel:
    """A checkpoint ready to run: its components, on one device, in one dtype."""

    info: CheckpointInfo
    family: ModelFamily
    unet: UNet2DConditionModel
    vae: AutoencoderKL
    text_encoder: CLIPTextModel
    tokenizer: CLIPTokenizer
    scheduler_config: dict
    device: torch.device
    dtype: torch.dtype
    default_size: tuple[int, int] = (512, 512)
    metadata: dict[str, str] = field(default_factory=dict)
    own_vae: AutoencoderKL | None = None  # the checkpoint's VAE while another one is selected
    vae_file: object | None = None  # the models/VAE file in use (None = the checkpoint's own)
    loras: dict = field(default_factory=dict)  # LoRA name -> file, injected as peft adapters

    @property
    def vae_scale_factor(self) -> int:
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def latent_channels(self) -> int:
        return self.vae.config.latent_channels

    def modules(self) -> list[torch.nn.Module]:
        extra = [self.own_vae] if self.own_vae is not None and self.own_vae is not self.vae else []
        return [self.unet, self.vae, self.text_encoder, *extra]


def _json(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def _assign(module: torch.nn.Module, state: dict[str, torch.Tensor], what: str, filename: str) -> None:
    """Load `state` into a meta-initialised module by assignment; every parameter must be present."""
    expected = module.state_dict()
    missing = [k for k in expected if k not in state]
    if missing:
        raise ModelError(
            f"{filename}: the {what} weights do not match its layout ({len(missing)} missing, e.g. {missing[0]})"
        )
    bad = [k for k in expected if tuple(expected[k].shape) != tuple(state[k].shape)]
    if bad:
        k = bad[0]
        raise ModelError(
            f"{filename}: the {what} tensor {k} has shape {tuple(state[k].shape)}, expected {tuple(expected[k].shape)}"
        )
    module.load_state_dict({k: state[k] for k in expected}, strict=True, assign=True)


def _match_text_encoder_keys(state: dict[str, torch.Tensor], module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """transformers 5's CLIPTextModel has no `text_model.` level; older layouts do. Match the module."""
    own = set(module.state_dict())
    out = {}
    for k, v in state.items():
        if k not in own and k.startswith("text_model.") and k[len("text_model."):] in own:
            k = k[len("text_model."):]
        if k in own:
            out[k] = v
    return out


def _size_from_metadata(meta: dict[str, str], fallback: tuple[int, int]) -> tuple[int, int]:
    """`modelspec.resolution` ("512x512"), the metadata kohya and Stability write, gives the trained size."""
    try:
        w, h = (int(v) for v in meta["modelspec.resolution"].lower().split("x"))
        return (w, h) if w > 0 and h > 0 else fallback
    except (KeyError, ValueError):
        return fallback


def load_single_file(info: CheckpointInfo, device: torch.device, dtype: torch.dtype) -> LoadedModel:
    sd = normalise_keys(read_state_dict(info.path))
    family = detect_family(sd, info.path.name)
    cfg = family.original_config
    try:
        params = cfg["model"]["params"]
        unet_cfg = exact_widths(create_unet_diffusers_config_from_ldm(cfg, sd), params["unet_config"]["params"])
        vae_cfg = exact_widths(create_vae_diffusers_config_from_ldm(cfg, sd),
                               params["first_stage_config"]["params"]["ddconfig"])
        unet_sd = convert_ldm_unet_checkpoint(sd, unet_cfg)
        vae_sd = convert_ldm_vae_checkpoint(sd, vae_cfg)
        clip_sd = convert_ldm_clip_checkpoint(sd)
    except (KeyError, IndexError, ValueError, RuntimeError) as e:
        raise ModelError(f"{info.path.name}: unknown layout; could not convert it ({type(e).__name__}: {e})") from e
    del sd
    te_cfg = CLIPTextConfig(**text_encoder_config(
        {"cond_stage_model.transformer." + k: v for k, v in clip_sd.items()},
        _json(CONFIGS / "sd15" / "text_encoder" / "config.json"),
    ))
    with init_empty_weights(), no_init_weights():  # every weight is assigned below: skip random init
        unet = UNet2DConditionModel.from_config(unet_cfg)
        vae = AutoencoderKL.from_config(vae_cfg)
        text_encoder = CLIPTextModel(te_cfg)

    def cast(state: dict) -> dict:
        return {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}

    _assign(unet, cast(unet_sd), "UNet", info.path.name)
    _assign(vae, cast(vae_sd), "VAE", info.path.name)
    clip_sd = _match_text_encoder_keys(clip_sd, text_encoder)
    _assign(text_encoder, cast(clip_sd), "text encoder", info.path.name)
    meta = read_safetensors_metadata(info.path) if info.path.suffix == ".safetensors" else {}
    sched = _json(CONFIGS / "sd15" / "scheduler" / "scheduler_config.json")
    sched["prediction_type"] = family.prediction_type
    return _finish(LoadedModel(
        info=info, family=family, unet=unet, vae=vae, text_encoder=text_encoder,
        tokenizer=load_clip_tokenizer(), scheduler_config=sched, device=device, dtype=dtype,
        default_size=_size_from_metadata(meta, (512, 512)), metadata=meta,
    ))


def load_diffusers_folder(info: CheckpointInfo, device: torch.device, dtype: torch.dtype) -> LoadedModel:
    root = info.path
    common = {"local_files_only": True, "torch_dtype": dtype}
    try:
        unet = UNet2DConditionModel.from_pretrained(root, subfolder="unet", **common)
        vae = AutoencoderKL.from_pretrained(root, subfolder="vae", **common)
        text_encoder = CLIPTextModel.from_pretrained(root / "text_encoder", local_files_only=True, dtype=dtype)
        tokenizer = (
            CLIPTokenizer.from_pretrained(root / "tokenizer", local_files_only=True)
            if (root / "tokenizer" / "vocab.json").is_file() else load_clip_tokenizer()
        )
    except (OSError, ValueError, RuntimeError, KeyError) as e:
        raise ModelError(f"{info.name}: not a loadable diffusers folder ({type(e).__name__}: {e})") from e
    sched_file = root / "scheduler" / "scheduler_config.json"
    sched = _json(sched_file if sched_file.is_file() else CONFIGS / "sd15" / "scheduler" / "scheduler_config.json")
    family = ModelFamily(
        name="sd1", inpainting=unet.config.in_channels == 9,
        prediction_type=sched.get("prediction_type", "epsilon"), original_config={},
    )
    size = unet.config.sample_size * 2 ** (len(vae.config.block_out_channels) - 1)
    return _finish(LoadedModel(
        info=info, family=family, unet=unet, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
        scheduler_config=sched, device=device, dtype=dtype,
        default_size=(512, 512) if size >= 512 else (size, size),
    ))


def _finish(model: LoadedModel) -> LoadedModel:
    for m in model.modules():
        m.to(model.device)
        m.eval()
        m.requires_grad_(False)
    return model


def load_checkpoint(info: CheckpointInfo, device: torch.device, dtype: torch.dtype) -> LoadedModel:
    """Load any supported checkpoint; raises ModelError naming the file and the reason."""
    loader = load_diffusers_folder if info.is_diffusers_folder else load_single_file
    return loader(info, device, dtype)
