"""Diffusers components -> one state dict in the original LDM single-file key layout (SD1.x, SD2.x, SDXL).

This is the exact inverse of diffusers' `convert_ldm_unet_checkpoint`,
`convert_ldm_vae_checkpoint` and `convert_ldm_clip_checkpoint`
(`diffusers.loaders.single_file_utils`). The fixed top-level keys are taken from
`DIFFUSERS_TO_LDM_MAPPING` itself; the block keys follow the index arithmetic those
converters use, so any SD1.x-topology size works (any number of blocks, any
`layers_per_block`, attention in some blocks only, 4 or 9 input channels, VAE with any
number of blocks).

Text encoders: SD1's CLIP under `cond_stage_model.transformer.`; SD2's OpenCLIP under
`cond_stage_model.model.` (fused q/k/v `in_proj`, `text_projection` stored transposed), the exact
inverse of diffusers' `convert_open_clip_checkpoint`; SDXL's pair under
`conditioner.embedders.0.transformer.` and `conditioner.embedders.1.model.`.

Used both to ship Easel's demo checkpoint and by the tests to write tiny files of every family.
"""
from __future__ import annotations

import os
import re
import tempfile
from pathlib import Path

import torch

from diffusers.loaders.single_file_utils import DIFFUSERS_TO_LDM_MAPPING, LDM_CLIP_PREFIX_TO_REMOVE, LDM_UNET_KEY

UNET_PREFIX = LDM_UNET_KEY  # "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
CLIP_PREFIX = LDM_CLIP_PREFIX_TO_REMOVE[0]  # "cond_stage_model.transformer."

# Inverse of the fixed-name tables the converters read.
_UNET_FIXED = {**DIFFUSERS_TO_LDM_MAPPING["unet"]["layers"], **DIFFUSERS_TO_LDM_MAPPING["unet"]["addition_embed_type"]}
OPENCLIP_PREFIX = "cond_stage_model.model."
XL_CLIP_PREFIX = LDM_CLIP_PREFIX_TO_REMOVE[1]  # "conditioner.embedders.0.transformer."
XL_OPENCLIP_PREFIX = "conditioner.embedders.1.model."
_OPENCLIP_FIXED = {
    "embeddings.token_embedding.weight": "token_embedding.weight",
    "embeddings.position_embedding.weight": "positional_embedding",
    "final_layer_norm.weight": "ln_final.weight",
    "final_layer_norm.bias": "ln_final.bias",
}
_OPENCLIP_LAYER = {"layer_norm1": "ln_1", "layer_norm2": "ln_2", "mlp.fc1": "mlp.c_fc", "mlp.fc2": "mlp.c_proj",
                   "self_attn.out_proj": "attn.out_proj"}
_VAE_FIXED = dict(DIFFUSERS_TO_LDM_MAPPING["vae"])

# Inverse of `update_unet_resnet_ldm_to_diffusers`' renames (applied to the first
# component after `resnets.N.`).
_UNET_RESNET = {
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "time_emb_proj": "emb_layers.1",
    "conv_shortcut": "skip_connection",
}
# Inverse of `update_vae_resnet_ldm_to_diffusers`.
_VAE_RESNET = {"conv_shortcut": "nin_shortcut"}
# Inverse of `update_vae_attentions_ldm_to_diffusers` (LDM stores these as 1x1 convs).
_VAE_ATTN = {
    "group_norm": "norm",
    "to_q": "q",
    "to_k": "k",
    "to_v": "v",
    "to_out.0": "proj_out",
}


def _rename_first(rest: str, table: dict[str, str]) -> str:
    for old, new in table.items():
        if rest == old or rest.startswith(old + "."):
            return new + rest[len(old):]
    return rest


def _unet_key(key: str, layers_per_block: int, attn_blocks_up: set[int]) -> str:
    """Diffusers UNet2DConditionModel key -> LDM key (without the model prefix)."""
    if key in _UNET_FIXED:
        return _UNET_FIXED[key]
    per = layers_per_block + 1
    m = re.fullmatch(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", key)
    if m:
        b, kind, l, rest = int(m[1]), m[2], int(m[3]), m[4]
        idx = 1 + b * per + l
        if kind == "resnets":
            return f"input_blocks.{idx}.0.{_rename_first(rest, _UNET_RESNET)}"
        return f"input_blocks.{idx}.1.{rest}"
    m = re.fullmatch(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)", key)
    if m:
        b = int(m[1])
        return f"input_blocks.{1 + b * per + layers_per_block}.0.op.{m[2]}"
    m = re.fullmatch(r"mid_block\.(resnets|attentions)\.(\d+)\.(.+)", key)
    if m:
        kind, j, rest = m[1], int(m[2]), m[3]
        if kind == "resnets":
            return f"middle_block.{2 * j}.{_rename_first(rest, _UNET_RESNET)}"
        return f"middle_block.{2 * j + 1}.{rest}"
    m = re.fullmatch(r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", key)
    if m:
        b, kind, l, rest = int(m[1]), m[2], int(m[3]), m[4]
        idx = b * per + l
        if kind == "resnets":
            return f"output_blocks.{idx}.0.{_rename_first(rest, _UNET_RESNET)}"
        return f"output_blocks.{idx}.1.{rest}"
    m = re.fullmatch(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)", key)
    if m:
        b = int(m[1])
        slot = 2 if b in attn_blocks_up else 1
        return f"output_blocks.{b * per + layers_per_block}.{slot}.conv.{m[2]}"
    raise KeyError(f"no LDM name for UNet key {key!r}")


def _vae_key(key: str, num_up_blocks: int) -> tuple[str, bool]:
    """Diffusers AutoencoderKL key -> (LDM key without prefix, is_attention_weight_to_conv)."""
    if key in _VAE_FIXED:
        return _VAE_FIXED[key], False
    m = re.fullmatch(r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key)
    if m:
        return f"encoder.down.{m[1]}.block.{m[2]}.{_rename_first(m[3], _VAE_RESNET)}", False
    m = re.fullmatch(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)", key)
    if m:
        return f"encoder.down.{m[1]}.downsample.conv.{m[2]}", False
    m = re.fullmatch(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key)
    if m:
        block_id = num_up_blocks - 1 - int(m[1])
        return f"decoder.up.{block_id}.block.{m[2]}.{_rename_first(m[3], _VAE_RESNET)}", False
    m = re.fullmatch(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)", key)
    if m:
        block_id = num_up_blocks - 1 - int(m[1])
        return f"decoder.up.{block_id}.upsample.conv.{m[2]}", False
    m = re.fullmatch(r"(encoder|decoder)\.mid_block\.resnets\.(\d+)\.(.+)", key)
    if m:
        return f"{m[1]}.mid.block_{int(m[2]) + 1}.{_rename_first(m[3], _VAE_RESNET)}", False
    m = re.fullmatch(r"(encoder|decoder)\.mid_block\.attentions\.0\.(.+)", key)
    if m:
        rest = _rename_first(m[2], _VAE_ATTN)
        is_linear_weight = rest.endswith(".weight") and not rest.startswith("norm.")
        return f"{m[1]}.mid.attn_1.{rest}", is_linear_weight
    raise KeyError(f"no LDM name for VAE key {key!r}")


def _config(model) -> dict:
    cfg = getattr(model, "config", {})
    return dict(cfg) if not isinstance(cfg, dict) else cfg


def unet_to_ldm(unet_sd: dict[str, torch.Tensor], layers_per_block: int) -> dict[str, torch.Tensor]:
    """UNet2DConditionModel state dict -> LDM keys prefixed `model.diffusion_model.`."""
    attn_up = {int(m[1]) for k in unet_sd if (m := re.match(r"up_blocks\.(\d+)\.attentions\.", k))}
    out = {}
    for k, v in unet_sd.items():
        out[UNET_PREFIX + _unet_key(k, layers_per_block, attn_up)] = v
    return out


def vae_to_ldm(vae_sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """AutoencoderKL state dict -> LDM keys prefixed `first_stage_model.`."""
    up = {int(m[1]) for k in vae_sd if (m := re.match(r"decoder\.up_blocks\.(\d+)\.", k))}
    n_up = max(up) + 1
    out = {}
    for k, v in vae_sd.items():
        name, to_conv = _vae_key(k, n_up)
        if to_conv and v.ndim == 2:
            v = v[:, :, None, None]
        out[VAE_PREFIX + name] = v
    return out


def clip_to_ldm(clip_sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """CLIPTextModel state dict -> `cond_stage_model.transformer.text_model.*`.

    transformers >= 5 names CLIPTextModel's parameters without the `text_model.` level
    (`embeddings.*`, `encoder.*`, `final_layer_norm.*`); older versions keep it. Both give
    the original layout, which always has it.
    """
    out = {}
    for k, v in clip_sd.items():
        if not k.startswith("text_model."):
            k = "text_model." + k
        out[CLIP_PREFIX + k] = v
    return out


def ldm_clip_to_text_model(converted: dict[str, torch.Tensor], text_encoder) -> dict[str, torch.Tensor]:
    """Output of diffusers' `convert_ldm_clip_checkpoint` -> keys `text_encoder.load_state_dict` takes.

    Drops the `text_model.` level when this transformers version has none, and
    `position_ids`, which is not a persistent buffer any more.
    """
    own = set(text_encoder.state_dict())
    out = {}
    for k, v in converted.items():
        if k not in own and k.startswith("text_model.") and k[len("text_model."):] in own:
            k = k[len("text_model."):]
        if k.endswith("position_ids") and k not in own:
            continue
        out[k] = v
    return out


def openclip_to_ldm(clip_sd: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """CLIPTextModel(WithProjection) state dict -> open_clip's text-tower keys under `prefix`."""
    out: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[int, str], dict[str, torch.Tensor]] = {}
    for k, v in clip_sd.items():
        k = k[len("text_model."):] if k.startswith("text_model.") else k
        if k.endswith("position_ids"):
            continue
        if k == "text_projection.weight":
            out[prefix + "text_projection"] = v.T.contiguous()
            continue
        if k in _OPENCLIP_FIXED:
            out[prefix + _OPENCLIP_FIXED[k]] = v
            continue
        m = re.fullmatch(r"encoder\.layers\.(\d+)\.self_attn\.([qkv])_proj\.(weight|bias)", k)
        if m:
            qkv.setdefault((int(m[1]), m[3]), {})[m[2]] = v
            continue
        m = re.fullmatch(r"encoder\.layers\.(\d+)\.(.+)", k)
        if not m:
            raise KeyError(f"no open_clip name for text-encoder key {k!r}")
        out[f"{prefix}transformer.resblocks.{m[1]}.{_rename_first(m[2], _OPENCLIP_LAYER)}"] = v
    for (layer, kind), parts in qkv.items():
        out[f"{prefix}transformer.resblocks.{layer}.attn.in_proj_{kind}"] = torch.cat([parts[c] for c in "qkv"])
    return out


def export_ldm_state_dict(unet, vae, text_encoder, text_encoder_2=None, family: str = "sd1") -> dict[str, torch.Tensor]:
    """One single-file state dict from diffusers/transformers modules.

    family "sd1": CLIP text encoder; "sd2": `text_encoder` written as OpenCLIP (give it one layer
    more than the model should use: SD2 files carry the last layer, the loader drops it); "sdxl":
    `text_encoder` (CLIP ViT-L) + `text_encoder_2` (OpenCLIP with projection)."""
    lpb = _config(unet)["layers_per_block"]
    if not isinstance(lpb, int):
        raise ValueError("per-block layers_per_block lists have no original layout")
    if family == "sd1":
        text = [clip_to_ldm(text_encoder.state_dict())]
    elif family == "sd2":
        text = [openclip_to_ldm(text_encoder.state_dict(), OPENCLIP_PREFIX)]
    elif family == "sdxl":
        if text_encoder_2 is None:
            raise ValueError("an SDXL checkpoint needs both text encoders")
        first = {XL_CLIP_PREFIX + k[len(CLIP_PREFIX):]: v for k, v in clip_to_ldm(text_encoder.state_dict()).items()}
        text = [first, openclip_to_ldm(text_encoder_2.state_dict(), XL_OPENCLIP_PREFIX)]
    else:
        raise ValueError(f"unknown family {family!r}")
    sd: dict[str, torch.Tensor] = {}
    for part in (unet_to_ldm(unet.state_dict(), lpb), vae_to_ldm(vae.state_dict()), *text):
        for k, v in part.items():
            if k in sd:
                raise KeyError(f"duplicate LDM key {k!r}")
            sd[k] = v
    return sd


def save_ldm_checkpoint(
    path,
    unet,
    vae,
    text_encoder,
    metadata: dict[str, str] | None = None,
    dtype: torch.dtype | None = None,
    text_encoder_2=None,
    family: str = "sd1",
) -> Path:
    """Write the LDM-layout checkpoint as .safetensors, atomically (temp file + os.replace)."""
    from safetensors.torch import save_file

    path = Path(path)
    sd = export_ldm_state_dict(unet, vae, text_encoder, text_encoder_2, family)
    tensors = {}
    for k, v in sd.items():
        v = v.detach().to("cpu")
        if dtype is not None and v.is_floating_point():
            v = v.to(dtype)
        tensors[k] = v.contiguous().clone()
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=str(path.parent))
    os.close(fd)
    try:
        save_file(tensors, tmp, metadata={str(k): str(v) for k, v in (metadata or {}).items()})
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600 files; give the usual mode
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    return path


def controlnet_to_ldm(cn_sd: dict[str, torch.Tensor], layers_per_block: int) -> dict[str, torch.Tensor]:
    """ControlNetModel state dict -> the original layout (`control_model.*`), the inverse of diffusers'
    `convert_controlnet_checkpoint` (the shape sd-webui-controlnet's files have)."""
    fixed = {d: ldm for table in DIFFUSERS_TO_LDM_MAPPING["controlnet"].values() for d, ldm in table.items()}
    out = {}
    for k, v in cn_sd.items():
        if k in fixed:
            name = fixed[k]
        elif m := re.fullmatch(r"controlnet_cond_embedding\.blocks\.(\d+)\.(weight|bias)", k):
            name = f"input_hint_block.{2 * (int(m[1]) + 1)}.{m[2]}"
        elif m := re.fullmatch(r"controlnet_down_blocks\.(\d+)\.(weight|bias)", k):
            name = f"zero_convs.{m[1]}.0.{m[2]}"
        elif m := re.fullmatch(r"controlnet_mid_block\.(weight|bias)", k):
            name = f"middle_block_out.0.{m[1]}"
        else:
            name = _unet_key(k, layers_per_block, set())
        out["control_model." + name] = v
    return out
