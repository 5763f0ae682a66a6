"""Tiny SD1.x / SD2.x / SDXL models with real topology and random weights, written the ways users' files come.

Used by the tests (and the CPU benchmark). Widths are multiples of 32 (GroupNorm groups), the UNet
uses SD1's 8 attention heads and the text encoder CLIP's 64-wide-head convention with one head, so
the loader's size inference has to work exactly as it does for full-size checkpoints.
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import AutoencoderKL, ControlNetModel, UNet2DConditionModel
from safetensors.torch import save_file
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from webui.models.ldm_export import controlnet_to_ldm, export_ldm_state_dict, save_ldm_checkpoint

CONFIGS = Path(__file__).resolve().parents[1] / "webui" / "models" / "configs"


@dataclass
class TinySD:
    unet: UNet2DConditionModel
    vae: AutoencoderKL
    text_encoder: CLIPTextModel
    text_encoder_2: CLIPTextModelWithProjection | None = None
    family: str = "sd1"


def _tiny_vae(scaling_factor: float = 0.18215) -> AutoencoderKL:
    return AutoencoderKL(
        in_channels=3, out_channels=3, block_out_channels=(32, 32, 64),
        down_block_types=("DownEncoderBlock2D",) * 3, up_block_types=("UpDecoderBlock2D",) * 3,
        latent_channels=4, layers_per_block=1, norm_num_groups=32, scaling_factor=scaling_factor,
    )


def _clip(width: int, layers: int, act: str, projection: bool = False):
    cfg = CLIPTextConfig(
        vocab_size=49408, hidden_size=width, intermediate_size=2 * width, num_hidden_layers=layers,
        num_attention_heads=max(1, width // 64), max_position_embeddings=77, hidden_act=act,
        projection_dim=width, bos_token_id=0, eos_token_id=2, pad_token_id=1,
    )
    return CLIPTextModelWithProjection(cfg) if projection else CLIPTextModel(cfg)


def build_tiny_sd2(seed: int = 0, in_channels: int = 4) -> TinySD:
    """SD2.x topology: OpenCLIP-style text encoder (GELU, 64-wide heads), linear projections in the
    transformers, 64-wide attention heads. The text encoder has one layer more than SD2 uses (the
    file carries it; the loader drops it)."""
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=16, in_channels=in_channels, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=64, attention_head_dim=[1, 1], use_linear_projection=True, upcast_attention=True,
        norm_num_groups=32,
    )
    models = TinySD(unet, _tiny_vae(), _clip(64, 3, "gelu"), family="sd2")
    for m in (models.unet, models.vae, models.text_encoder):
        m.eval()
    return models


def build_tiny_sdxl(seed: int = 0, in_channels: int = 4) -> TinySD:
    """SDXL topology: no attention at the first level, 1 then 2 transformer blocks, two text
    encoders of different widths (32 + 64 = 96-wide context), pooled text + size embedding."""
    torch.manual_seed(seed)
    time_dim, pooled = 8, 64
    unet = UNet2DConditionModel(
        sample_size=16, in_channels=in_channels, out_channels=4, block_out_channels=(32, 64), layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"), up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=[1, 2], cross_attention_dim=96, attention_head_dim=[1, 1],
        use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=time_dim,
        projection_class_embeddings_input_dim=pooled + 6 * time_dim, norm_num_groups=32,
    )
    models = TinySD(unet, _tiny_vae(0.13025), _clip(32, 2, "quick_gelu"),
                    _clip(pooled, 2, "gelu", projection=True), family="sdxl")
    for m in (models.unet, models.vae, models.text_encoder, models.text_encoder_2):
        m.eval()
    return models


def build_tiny_sd(seed: int = 0, in_channels: int = 4, width: int = 32) -> TinySD:
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=16,
        in_channels=in_channels,
        out_channels=4,
        block_out_channels=(width, width * 2),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=32,
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        block_out_channels=(32, 32, 64),  # x4 downsampling: 64 px images are 16x16 latents
        down_block_types=("DownEncoderBlock2D",) * 3,
        up_block_types=("UpDecoderBlock2D",) * 3,
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=32,
    )
    text_encoder = CLIPTextModel(CLIPTextConfig(
        vocab_size=49408, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=1,
        max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=32,
        bos_token_id=0, eos_token_id=2, pad_token_id=1,
    ))
    for m in (unet, vae, text_encoder):
        m.eval()
    return TinySD(unet, vae, text_encoder)


def write_safetensors(tiny: TinySD, path: Path, metadata: dict | None = None) -> Path:
    return save_ldm_checkpoint(path, tiny.unet, tiny.vae, tiny.text_encoder, metadata=metadata,
                               text_encoder_2=tiny.text_encoder_2, family=tiny.family)


def write_ckpt(tiny: TinySD, path: Path, wrap: bool = True, old_clip_keys: bool = False) -> Path:
    """A `.ckpt` as the original repos saved them: a pickled dict with a `state_dict`."""
    sd = export_ldm_state_dict(tiny.unet, tiny.vae, tiny.text_encoder, tiny.text_encoder_2, tiny.family)
    if old_clip_keys:  # some community SD1 files lack the `text_model.` part
        sd = {k.replace("cond_stage_model.transformer.text_model.", "cond_stage_model.transformer."): v
              for k, v in sd.items()}
    sd = {k: v.contiguous().clone() for k, v in sd.items()}
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": sd, "global_step": 1} if wrap else sd, path)
    return path


def write_diffusers_folder(tiny: TinySD, folder: Path) -> Path:
    """A diffusers folder as diffusers saves one (SD2's text encoder without its unused last layer)."""
    configs = CONFIGS / {"sd1": "sd15", "sd2": "sd2", "sdxl": "sdxl"}[tiny.family]
    folder.mkdir(parents=True, exist_ok=True)
    tiny.unet.save_pretrained(folder / "unet")
    tiny.vae.save_pretrained(folder / "vae")
    text_encoder = tiny.text_encoder
    if tiny.family == "sd2":
        cfg = CLIPTextConfig(**{**text_encoder.config.to_dict(), "num_hidden_layers": text_encoder.config.num_hidden_layers - 1})
        text_encoder = CLIPTextModel(cfg)
        text_encoder.load_state_dict(tiny.text_encoder.state_dict(), strict=False)
    text_encoder.save_pretrained(folder / "text_encoder")
    if tiny.text_encoder_2 is not None:
        tiny.text_encoder_2.save_pretrained(folder / "text_encoder_2")
    shutil.copytree(configs / "scheduler", folder / "scheduler", dirs_exist_ok=True)
    shutil.copy(configs / "model_index.json", folder / "model_index.json")
    return folder


TINY_HINT = (16, 32, 96)  # two stride-2 steps: the tiny VAE's 4× (a full-size one has 4 widths for 8×)


def tiny_controlnet(unet, seed: int = 0) -> ControlNetModel:
    """A ControlNet copied from the tiny UNet with its zero convolutions made non-zero (a trained one's are)."""
    torch.manual_seed(seed)
    cn = ControlNetModel.from_unet(unet, conditioning_embedding_out_channels=TINY_HINT)
    with torch.no_grad():
        for conv in [*cn.controlnet_down_blocks, cn.controlnet_mid_block]:
            conv.weight.normal_(0, 0.3)
            conv.bias.normal_(0, 0.1)
        cn.controlnet_cond_embedding.conv_out.weight.normal_(0, 1.0)  # the picture counts as much as the latents
        cn.controlnet_cond_embedding.conv_out.bias.zero_()
    return cn.eval()


def write_controlnet(cn: ControlNetModel, path: Path, layers_per_block: int = 1) -> Path:
    """A ControlNet file in the original layout (`control_model.*`), as sd-webui-controlnet's users have them."""
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in controlnet_to_ldm(cn.state_dict(), layers_per_block).items()}, path)
    return path
