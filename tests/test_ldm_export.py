"""Round trip: diffusers components -> LDM single-file layout -> diffusers' own converters."""
from __future__ import annotations

import pytest
import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from diffusers.loaders.single_file_utils import (
    convert_ldm_clip_checkpoint,
    convert_ldm_unet_checkpoint,
    convert_ldm_vae_checkpoint,
)
from transformers import CLIPTextConfig, CLIPTextModel

from webui.models.ldm_export import export_ldm_state_dict, ldm_clip_to_text_model, save_ldm_checkpoint


def _randomise(module: torch.nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.state_dict().values():
            if p.is_floating_point():
                p.copy_(torch.randn(p.shape, generator=g))


def _unet(down, up, channels, layers_per_block, in_channels=4, cross=32):
    torch.manual_seed(0)
    return UNet2DConditionModel(
        sample_size=8,
        in_channels=in_channels,
        out_channels=4,
        down_block_types=down,
        up_block_types=up,
        block_out_channels=channels,
        layers_per_block=layers_per_block,
        attention_head_dim=8,
        norm_num_groups=32,
        cross_attention_dim=cross,
        use_linear_projection=False,
    )


def _vae(channels, layers_per_block=1):
    torch.manual_seed(0)
    n = len(channels)
    return AutoencoderKL(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * n,
        up_block_types=("UpDecoderBlock2D",) * n,
        block_out_channels=channels,
        layers_per_block=layers_per_block,
        latent_channels=4,
        norm_num_groups=32,
    )


def _clip(width=32, layers=2, vocab=1000):
    torch.manual_seed(0)
    return CLIPTextModel(
        CLIPTextConfig(
            vocab_size=vocab,
            hidden_size=width,
            intermediate_size=width * 4,
            num_hidden_layers=layers,
            num_attention_heads=1,
            max_position_embeddings=77,
            hidden_act="quick_gelu",
            projection_dim=width,
        )
    )


TOPOLOGIES = [
    # (down, up, channels, layers_per_block, in_channels)
    (("CrossAttnDownBlock2D", "DownBlock2D"), ("UpBlock2D", "CrossAttnUpBlock2D"), (32, 64), 1, 4),
    (
        ("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        ("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        (32, 64, 96),
        2,
        9,
    ),
    (
        ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        (32, 32, 64, 64),
        1,
        4,
    ),
]


def _check_equal(original: dict, converted: dict, what: str) -> None:
    assert set(converted) == set(original), f"{what}: key sets differ: " + repr(
        sorted(set(original) ^ set(converted))[:10]
    )
    for k, v in original.items():
        got = converted[k]
        assert got is not None, f"{what}: {k} lost"
        assert got.shape == v.shape, f"{what}: {k} shape {tuple(got.shape)} != {tuple(v.shape)}"
        assert torch.equal(got, v), f"{what}: {k} differs"


@pytest.mark.parametrize("down,up,channels,lpb,in_ch", TOPOLOGIES)
def test_unet_round_trip(down, up, channels, lpb, in_ch):
    unet = _unet(down, up, channels, lpb, in_channels=in_ch)
    _randomise(unet, 1)
    vae, clip = _vae((32, 64)), _clip()
    ldm = export_ldm_state_dict(unet, vae, clip)
    assert all(k.startswith(("model.diffusion_model.", "first_stage_model.", "cond_stage_model.transformer.")) for k in ldm)
    back = convert_ldm_unet_checkpoint(ldm, dict(unet.config))
    _check_equal(unet.state_dict(), back, "unet")
    # the model loads the converted weights strictly
    fresh = _unet(down, up, channels, lpb, in_channels=in_ch)
    fresh.load_state_dict(back, strict=True)


@pytest.mark.parametrize("channels,lpb", [((32, 64), 1), ((32, 32, 64), 2), ((32, 64, 64, 96), 1)])
def test_vae_round_trip(channels, lpb):
    vae = _vae(channels, lpb)
    _randomise(vae, 2)
    ldm = export_ldm_state_dict(_unet(*TOPOLOGIES[0][:2], (32, 64), 1), vae, _clip())
    # LDM stores the VAE attention projections as 1x1 convolutions
    q = ldm["first_stage_model.encoder.mid.attn_1.q.weight"]
    assert q.ndim == 4 and q.shape[2:] == (1, 1)
    assert "first_stage_model.decoder.up.0.block.0.conv1.weight" in ldm
    back = convert_ldm_vae_checkpoint(ldm, dict(vae.config))
    _check_equal(vae.state_dict(), back, "vae")


def test_clip_round_trip():
    clip = _clip(width=64, layers=2)
    _randomise(clip, 3)
    unet = _unet(*TOPOLOGIES[0][:2], (32, 64), 1, cross=64)
    ldm = export_ldm_state_dict(unet, _vae((32, 64)), clip)
    back = convert_ldm_clip_checkpoint(ldm)
    assert all(k.startswith("text_model.") for k in back)  # the original layout's names
    _check_equal(clip.state_dict(), ldm_clip_to_text_model(back, clip), "clip")
    fresh = _clip(width=64, layers=2)
    fresh.load_state_dict(ldm_clip_to_text_model(back, fresh), strict=True)
    assert "cond_stage_model.transformer.text_model.final_layer_norm.weight" in ldm


def test_known_sd1_names():
    """A few names every SD1.x loader looks for."""
    unet = _unet(("CrossAttnDownBlock2D", "DownBlock2D"), ("UpBlock2D", "CrossAttnUpBlock2D"), (32, 64), 2)
    ldm = export_ldm_state_dict(unet, _vae((32, 64)), _clip())
    for name in [
        "model.diffusion_model.input_blocks.0.0.weight",
        "model.diffusion_model.input_blocks.1.0.in_layers.0.weight",
        "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight",
        "model.diffusion_model.input_blocks.3.0.op.weight",
        "model.diffusion_model.middle_block.1.proj_in.weight",
        "model.diffusion_model.middle_block.2.emb_layers.1.weight",
        "model.diffusion_model.output_blocks.2.1.conv.weight",  # no attention in up block 0
        "model.diffusion_model.output_blocks.3.1.transformer_blocks.0.attn1.to_q.weight",
        "model.diffusion_model.out.2.weight",
        "model.diffusion_model.time_embed.0.weight",
        "first_stage_model.quant_conv.weight",
        "first_stage_model.encoder.down.0.downsample.conv.weight",
        "first_stage_model.decoder.up.1.upsample.conv.weight",
        "first_stage_model.encoder.mid.block_1.norm1.weight",
        "cond_stage_model.transformer.text_model.embeddings.token_embedding.weight",
    ]:
        assert name in ldm, name


def test_save_is_atomic_and_loadable(tmp_path):
    from safetensors import safe_open

    unet = _unet(*TOPOLOGIES[0][:2], (32, 64), 1)
    vae, clip = _vae((32, 64)), _clip()
    out = tmp_path / "tiny.safetensors"
    save_ldm_checkpoint(out, unet, vae, clip, metadata={"modelspec.title": "tiny"}, dtype=torch.float16)
    assert [p.name for p in tmp_path.iterdir()] == ["tiny.safetensors"]
    with safe_open(str(out), "pt") as f:
        assert f.metadata()["modelspec.title"] == "tiny"
        keys = set(f.keys())
        t = f.get_tensor("model.diffusion_model.out.2.weight")
    assert t.dtype == torch.float16
    assert keys == set(export_ldm_state_dict(unet, vae, clip))
