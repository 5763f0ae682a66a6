"""Which model family a checkpoint in the original (LDM) layout belongs to, and its sizes.

Sizes are read from tensor shapes, so distilled or tiny variants load through the same path as
full-size community checkpoints. What shapes cannot tell (attention heads, norm groups) follows the
family's conventions. The result is an *original config* in the LDM YAML's structure: the same
lingua franca a `<name>.yaml` beside a checkpoint speaks, so diffusers' own converters take it from
there.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch

from .errors import ModelError

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
CLIP_PREFIX = "cond_stage_model.transformer."
SD1_LATENT_SCALE = 0.18215


@dataclass(frozen=True)
class ModelFamily:
    """What Easel needs to know about a checkpoint beyond its tensors."""

    name: str  # "sd1"
    inpainting: bool  # the UNet takes 9 channels: latents + mask + masked-image latents
    prediction_type: str  # "epsilon" | "v_prediction"
    original_config: dict = field(repr=False, hash=False, compare=False)


def normalise_keys(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename old text-encoder keys (no `text_model.` part) to the layout the converters expect."""
    old = CLIP_PREFIX
    if any(k.startswith(old + "text_model.") for k in sd) or not any(k.startswith(old) for k in sd):
        return sd
    renamed = {}
    for k, v in sd.items():
        if k.startswith(old) and not k.startswith(old + "text_model."):
            k = old + "text_model." + k[len(old) :]
        renamed[k] = v
    return renamed


def detect_family(sd: dict[str, torch.Tensor], filename: str) -> ModelFamily:
    """Recognise an SD1.x-layout checkpoint and infer its original config from tensor shapes."""
    if f"{UNET_PREFIX}input_blocks.0.0.weight" not in sd:
        raise ModelError(
            f"{filename}: unknown layout: no Stable Diffusion UNet ({UNET_PREFIX}input_blocks.*) in this file"
        )
    if not any(k.startswith(VAE_PREFIX) for k in sd):
        raise ModelError(f"{filename}: the checkpoint has no VAE ({VAE_PREFIX}*); it is not a full SD checkpoint")
    if f"{CLIP_PREFIX}text_model.embeddings.token_embedding.weight" not in sd:
        raise ModelError(f"{filename}: unknown layout: no CLIP text encoder ({CLIP_PREFIX}*) found")
    unet = _unet_params(sd, filename)
    config = {
        "model": {
            "params": {
                "scale_factor": SD1_LATENT_SCALE,
                "parameterization": "eps",
                "unet_config": {"params": unet},
                "first_stage_config": {"params": {"ddconfig": _vae_params(sd, filename)}},
            }
        }
    }
    return ModelFamily(
        name="sd1", inpainting=unet["in_channels"] == 9, prediction_type="epsilon", original_config=config
    )


def _indices(sd: dict, pattern: str) -> list[int]:
    rx = re.compile(pattern)
    return sorted({int(m.group(1)) for k in sd if (m := rx.match(k))})


def _unet_params(sd: dict[str, torch.Tensor], filename: str) -> dict:
    p = UNET_PREFIX
    conv_in = sd[f"{p}input_blocks.0.0.weight"]
    model_channels, in_channels = conv_in.shape[0], conv_in.shape[1]
    blocks = [i for i in _indices(sd, re.escape(p) + r"input_blocks\.(\d+)\.") if i > 0]
    levels: list[list[int]] = [[]]
    for i in blocks:
        if f"{p}input_blocks.{i}.0.op.weight" in sd:  # a downsampler closes a level
            levels.append([])
        else:
            levels[-1].append(i)
    if not levels[0]:
        raise ModelError(f"{filename}: unknown layout: the UNet has no residual blocks")
    channels, attention_levels, depth, context_dim, linear = [], [], 1, None, False
    for level, ids in enumerate(levels):
        channels.append(sd[f"{p}input_blocks.{ids[0]}.0.out_layers.3.weight"].shape[0])
        if f"{p}input_blocks.{ids[0]}.1.proj_in.weight" in sd:
            attention_levels.append(2**level)
            ids0 = ids[0]
            depth = len(_indices(sd, re.escape(f"{p}input_blocks.{ids0}.1.transformer_blocks.") + r"(\d+)\."))
            context_dim = sd[f"{p}input_blocks.{ids0}.1.transformer_blocks.0.attn2.to_k.weight"].shape[1]
            linear = sd[f"{p}input_blocks.{ids0}.1.proj_in.weight"].ndim == 2
    if context_dim is None:
        key = f"{p}middle_block.1.transformer_blocks.0.attn2.to_k.weight"
        if key not in sd:
            raise ModelError(f"{filename}: unknown layout: the UNet has no cross-attention")
        context_dim = sd[key].shape[1]
    return {
        "in_channels": in_channels,
        "out_channels": sd[f"{p}out.2.weight"].shape[0],
        "model_channels": model_channels,
        # LDM configs can only say whole multiples of model_channels; small models (64/96/128) are not,
        # so the real widths travel along and replace the computed ones (see block_out_channels()).
        "channel_mult": [max(1, c // model_channels) for c in channels],
        "block_out_channels": channels,
        "num_res_blocks": len(levels[0]),
        "attention_resolutions": attention_levels,
        "transformer_depth": depth,
        "context_dim": context_dim,
        "use_linear_in_transformer": linear,
        "num_heads": 8,  # SD1 convention; shapes cannot tell
    }


def _vae_params(sd: dict[str, torch.Tensor], filename: str) -> dict:
    p = VAE_PREFIX + "encoder."
    if f"{p}conv_in.weight" not in sd:
        raise ModelError(f"{filename}: unknown layout: no VAE encoder ({p}conv_in) found")
    ch = sd[f"{p}conv_in.weight"].shape[0]
    down = _indices(sd, re.escape(p) + r"down\.(\d+)\.")
    channels = [sd[f"{p}down.{i}.block.0.conv2.weight"].shape[0] for i in down]
    return {
        "double_z": True,
        "z_channels": sd[f"{p}conv_out.weight"].shape[0] // 2,
        "resolution": 256,
        "in_channels": sd[f"{p}conv_in.weight"].shape[1],
        "out_ch": sd[f"{VAE_PREFIX}decoder.conv_out.weight"].shape[0],
        "ch": ch,
        "ch_mult": [max(1, c // ch) for c in channels],
        "block_out_channels": channels,
        "num_res_blocks": len(_indices(sd, re.escape(f"{p}down.0.block.") + r"(\d+)\.")),
        "attn_resolutions": [],
        "dropout": 0.0,
    }


def exact_widths(diffusers_config: dict, ldm_params: dict) -> dict:
    """A diffusers config made by diffusers' converter, with the block widths the tensors really have."""
    if "block_out_channels" in ldm_params:
        diffusers_config = {**diffusers_config, "block_out_channels": list(ldm_params["block_out_channels"])}
    return diffusers_config


def text_encoder_config(sd: dict[str, torch.Tensor], base: dict) -> dict:
    """CLIPTextConfig values for the checkpoint's text encoder: the shipped config resized to its tensors."""
    p = CLIP_PREFIX + "text_model."
    vocab, width = sd[f"{p}embeddings.token_embedding.weight"].shape
    layers = _indices(sd, re.escape(f"{p}encoder.layers.") + r"(\d+)\.")
    return {
        **base,
        "vocab_size": vocab,
        "hidden_size": width,
        "projection_dim": width,
        "num_hidden_layers": len(layers),
        "intermediate_size": sd[f"{p}encoder.layers.0.mlp.fc1.weight"].shape[0],
        "max_position_embeddings": sd[f"{p}embeddings.position_embedding.weight"].shape[0],
        "num_attention_heads": max(1, width // 64),  # CLIP convention: 64-wide heads
    }
