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
CLIP_PREFIX = "cond_stage_model.transformer."  # SD1: OpenAI CLIP ViT-L in transformers' layout
OPENCLIP_PREFIX = "cond_stage_model.model."  # SD2: OpenCLIP ViT-H in open_clip's layout
XL_CLIP_PREFIX = "conditioner.embedders.0.transformer."  # SDXL: CLIP ViT-L (transformers' layout)
XL_OPENCLIP_PREFIX = "conditioner.embedders.1.model."  # SDXL: OpenCLIP ViT-bigG (open_clip's layout)
SD1_LATENT_SCALE = 0.18215
SDXL_LATENT_SCALE = 0.13025
FAMILY_TITLES = {"sd1": "SD 1.x", "sd2": "SD 2.x", "sdxl": "SDXL"}


@dataclass(frozen=True)
class ModelFamily:
    """What Easel needs to know about a checkpoint beyond its tensors."""

    name: str  # "sd1" | "sd2" | "sdxl"
    inpainting: bool  # the UNet takes 9 channels: latents + mask + masked-image latents
    prediction_type: str  # "epsilon" | "v_prediction"; "" = not known yet (the loader probes the UNet)
    original_config: dict = field(repr=False, hash=False, compare=False)
    prediction_source: str = "default"  # "yaml" | "metadata" | "key" | "probe" | "default" | "config"

    @property
    def title(self) -> str:
        return FAMILY_TITLES.get(self.name, self.name) + (" inpainting" if self.inpainting else "")


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


def family_name(sd: dict[str, torch.Tensor], filename: str) -> str:
    """sd1 / sd2 / sdxl from which text encoder(s) the file carries."""
    if f"{XL_OPENCLIP_PREFIX}positional_embedding" in sd:
        if f"{XL_CLIP_PREFIX}text_model.embeddings.token_embedding.weight" not in sd:
            raise ModelError(f"{filename}: an SDXL checkpoint without its first (CLIP ViT-L) text encoder")
        return "sdxl"
    if "conditioner.embedders.0.model.positional_embedding" in sd:
        raise ModelError(f"{filename}: this is an SDXL refiner; Easel runs base models (SD1.x, SD2.x, SDXL) only")
    if f"{OPENCLIP_PREFIX}token_embedding.weight" in sd:
        return "sd2"
    if f"{CLIP_PREFIX}text_model.embeddings.token_embedding.weight" in sd:
        return "sd1"
    raise ModelError(f"{filename}: unknown layout: no text encoder (CLIP or OpenCLIP) found")


def detect_family(sd: dict[str, torch.Tensor], filename: str, metadata: dict[str, str] | None = None,
                  yaml_config: dict | None = None) -> ModelFamily:
    """Recognise an SD1.x / SD2.x / SDXL checkpoint and infer its original config from tensor shapes.

    `yaml_config` is a `<name>.yaml` beside the file (A1111's override): its `parameterization`
    and `scale_factor` win over detection. Sizes always come from the tensors.
    """
    if f"{UNET_PREFIX}input_blocks.0.0.weight" not in sd:
        raise ModelError(
            f"{filename}: unknown layout: no Stable Diffusion UNet ({UNET_PREFIX}input_blocks.*) in this file"
        )
    if not any(k.startswith(VAE_PREFIX) for k in sd):
        raise ModelError(f"{filename}: the checkpoint has no VAE ({VAE_PREFIX}*); it is not a full SD checkpoint")
    name = family_name(sd, filename)
    unet = _unet_params(sd, filename, name)
    width = text_width(sd, name)
    if unet["context_dim"] != width:
        raise ModelError(f"{filename}: the UNet expects {unet['context_dim']}-wide text features but the text "
                         f"encoder{'s give' if name == 'sdxl' else ' gives'} {width}; the file mixes two models")
    yaml_params = _yaml_params(yaml_config, filename)
    scale = yaml_params.get("scale_factor", SDXL_LATENT_SCALE if name == "sdxl" else SD1_LATENT_SCALE)
    prediction, source = _prediction_type(sd, name, metadata or {}, yaml_params)
    config = {
        "model": {
            "params": {
                "scale_factor": float(scale),
                "parameterization": {"v_prediction": "v", "epsilon": "eps"}.get(prediction, ""),
                "unet_config": {"params": unet},
                "first_stage_config": {"params": {"ddconfig": _vae_params(sd, filename)}},
            }
        }
    }
    return ModelFamily(name=name, inpainting=unet["in_channels"] == 9, prediction_type=prediction,
                       original_config=config, prediction_source=source)


def text_width(sd: dict[str, torch.Tensor], name: str) -> int:
    """Width of the text features the UNet cross-attends to (both encoders' together for SDXL)."""
    if name == "sdxl":
        return (sd[f"{XL_CLIP_PREFIX}text_model.embeddings.token_embedding.weight"].shape[1]
                + sd[f"{XL_OPENCLIP_PREFIX}positional_embedding"].shape[1])
    if name == "sd2":
        return sd[f"{OPENCLIP_PREFIX}token_embedding.weight"].shape[1]
    return sd[f"{CLIP_PREFIX}text_model.embeddings.token_embedding.weight"].shape[1]


def _yaml_params(yaml_config: dict | None, filename: str) -> dict:
    if yaml_config is None:
        return {}
    model = yaml_config.get("model")
    params = model.get("params") if isinstance(model, dict) else None
    if not isinstance(params, dict):
        raise ModelError(f"{filename}: its .yaml has no model.params section (an LDM config is expected)")
    out = {}
    if "parameterization" in params:
        value = str(params["parameterization"]).lower()
        if value not in ("v", "eps", "epsilon"):
            raise ModelError(f"{filename}: its .yaml says parameterization {value!r}; expected 'eps' or 'v'")
        out["prediction_type"] = "v_prediction" if value == "v" else "epsilon"
    else:
        out["prediction_type"] = "epsilon"  # LDM's default when the key is absent
    if "scale_factor" in params:
        try:
            out["scale_factor"] = float(params["scale_factor"])
        except (TypeError, ValueError):
            raise ModelError(f"{filename}: its .yaml has a scale_factor that is not a number") from None
    return out


def _prediction_type(sd: dict, name: str, metadata: dict[str, str], yaml_params: dict) -> tuple[str, str]:
    """epsilon or v: a `<name>.yaml`, then the modelspec metadata, then a `v_pred` marker key;
    SD2 files without any of these are probed later (like A1111); SD1/SDXL default to epsilon."""
    if "prediction_type" in yaml_params:
        return yaml_params["prediction_type"], "yaml"
    spec = metadata.get("modelspec.prediction_type", "").strip().lower()
    if spec in ("v", "v_prediction", "v-prediction"):
        return "v_prediction", "metadata"
    if spec in ("epsilon", "eps"):
        return "epsilon", "metadata"
    if "v_pred" in sd:  # marker tensor some trainers write (ComfyUI reads it too)
        return "v_prediction", "key"
    if name == "sd2":
        return "", "probe"
    return "epsilon", "default"


def _indices(sd: dict, pattern: str) -> list[int]:
    rx = re.compile(pattern)
    return sorted({int(m.group(1)) for k in sd if (m := rx.match(k))})


def _unet_params(sd: dict[str, torch.Tensor], filename: str, family: str = "sd1") -> dict:
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
    channels, attention_levels, depths, context_dim, linear = [], [], [], None, False
    for level, ids in enumerate(levels):
        channels.append(sd[f"{p}input_blocks.{ids[0]}.0.out_layers.3.weight"].shape[0])
        ids0 = ids[0]
        if f"{p}input_blocks.{ids0}.1.proj_in.weight" in sd:
            attention_levels.append(2**level)
            depths.append(len(_indices(sd, re.escape(f"{p}input_blocks.{ids0}.1.transformer_blocks.") + r"(\d+)\.")))
            context_dim = sd[f"{p}input_blocks.{ids0}.1.transformer_blocks.0.attn2.to_k.weight"].shape[1]
            linear = sd[f"{p}input_blocks.{ids0}.1.proj_in.weight"].ndim == 2
        else:
            depths.append(1)  # no attention at this level: diffusers ignores the value
    middle = f"{p}middle_block.1.transformer_blocks.0.attn2.to_k.weight"
    if context_dim is None:
        if middle not in sd:
            raise ModelError(f"{filename}: unknown layout: the UNet has no cross-attention")
        context_dim = sd[middle].shape[1]
    params = {
        "in_channels": in_channels,
        "out_channels": sd[f"{p}out.2.weight"].shape[0],
        "model_channels": model_channels,
        # LDM configs can only say whole multiples of model_channels; small models (64/96/128) are not,
        # so the real widths travel along and replace the computed ones (see block_out_channels()).
        "channel_mult": [max(1, c // model_channels) for c in channels],
        "block_out_channels": channels,
        "num_res_blocks": len(levels[0]),
        "attention_resolutions": attention_levels,
        # one depth for SD1/SD2; SDXL's differs per level (1, 2, 10)
        "transformer_depth": depths if len(set(depths)) > 1 else depths[0],
        "context_dim": context_dim,
        "use_linear_in_transformer": linear,
        # SD1 uses 8 heads everywhere; SD2 and SDXL 64-wide heads. Shapes cannot tell: the family's convention.
        "num_heads": 8 if family == "sd1" else [max(1, c // 64) for c in channels],
    }
    if f"{p}label_emb.0.0.weight" in sd:  # SDXL: pooled text + size/crop embeddings
        params["num_classes"] = "sequential"
        params["adm_in_channels"] = sd[f"{p}label_emb.0.0.weight"].shape[1]
    return params


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


def sdxl_embedding_config(sd: dict[str, torch.Tensor], ldm_params: dict) -> dict:
    """SDXL's pooled-text + size/crop embedding, sized from the tensors.

    diffusers' converter recognises it only at full size (context 2048), so tiny and distilled
    SDXL models get it here: adm_in = pooled width + 6 size/crop numbers x time_dim."""
    pooled = sd[f"{XL_OPENCLIP_PREFIX}text_projection"].shape[1]
    adm = ldm_params["adm_in_channels"]
    if (adm - pooled) <= 0 or (adm - pooled) % 6:
        raise ModelError(f"the SDXL size embedding takes {adm} inputs, which does not fit a {pooled}-wide pooled text")
    return {"class_embed_type": None, "addition_embed_type": "text_time",
            "addition_time_embed_dim": (adm - pooled) // 6, "projection_class_embeddings_input_dim": adm}


def exact_widths(diffusers_config: dict, ldm_params: dict) -> dict:
    """A diffusers config made by diffusers' converter, with the block widths the tensors really have."""
    if "block_out_channels" in ldm_params:
        diffusers_config = {**diffusers_config, "block_out_channels": list(ldm_params["block_out_channels"])}
    return diffusers_config


def text_encoder_config(hf_sd: dict[str, torch.Tensor], base: dict, layers: int | None = None) -> dict:
    """CLIPTextConfig values for a converted text encoder (transformers' key layout, with or without
    `text_model.`): the shipped config resized to its tensors. `layers` overrides the count (SD2
    drops OpenCLIP's last layer, whose output it never uses)."""
    def key(name: str) -> str:
        return name if name in hf_sd else "text_model." + name

    vocab, width = hf_sd[key("embeddings.token_embedding.weight")].shape
    found = {int(m.group(1)) for k in hf_sd if (m := re.search(r"encoder\.layers\.(\d+)\.", k))}
    projection = hf_sd.get("text_projection.weight")
    return {
        **base,
        "vocab_size": vocab,
        "hidden_size": width,
        "projection_dim": projection.shape[0] if projection is not None else width,
        "num_hidden_layers": layers if layers is not None else len(found),
        "intermediate_size": hf_sd[key("encoder.layers.0.mlp.fc1.weight")].shape[0],
        "max_position_embeddings": hf_sd[key("embeddings.position_embedding.weight")].shape[0],
        "num_attention_heads": max(1, width // 64),  # CLIP convention: 64-wide heads
    }


def openclip_layers(sd: dict[str, torch.Tensor], prefix: str) -> int:
    """How many residual blocks an OpenCLIP text tower in the original layout has."""
    return len(_indices(sd, re.escape(f"{prefix}transformer.resblocks.") + r"(\d+)\."))
