"""SD2.x and SDXL single files in the original layout: detection, v-prediction, and pictures that
match diffusers' own pipelines built from the very modules the files were written from."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
from transformers import CLIPTextConfig, CLIPTextModel

from tiny_models import (
    build_tiny_sd, build_tiny_sd2, build_tiny_sdxl, write_ckpt, write_diffusers_folder, write_safetensors,
)
from webui.generation.noise import image_noise
from webui.generation.requests import Img2ImgRequest, Txt2ImgRequest
from webui.generation.samplers import build_scheduler, resolve_sampler
from webui.models.errors import ModelError
from webui.models.families import detect_family, normalise_keys
from webui.models.ldm_export import export_ldm_state_dict
from webui.models.loader import predicts_v
from webui.models.tokenizers import load_clip_tokenizer

SIZE = {"modelspec.resolution": "64x64"}
FAST = dict(prompt="a red circle on the left", negative_prompt="", steps=3, width=64, height=64, seed=7,
            sampler_name="Euler", cfg_scale=5)


@pytest.fixture(scope="module")
def tiny_sd2():
    return build_tiny_sd2(seed=3)


@pytest.fixture(scope="module")
def tiny_xl():
    return build_tiny_sdxl(seed=4)


@pytest.fixture()
def families(easel, tmp_path, tiny_sd2, tiny_xl):
    folder = tmp_path / "families"
    write_safetensors(tiny_sd2, folder / "sd2-v.safetensors", metadata={**SIZE, "modelspec.prediction_type": "v"})
    write_safetensors(tiny_sd2, folder / "sd2-eps.safetensors", metadata=SIZE)
    (folder / "sd2-eps.yaml").write_text("model:\n  params:\n    parameterization: eps\n")
    write_safetensors(tiny_xl, folder / "xl.safetensors", metadata=SIZE)
    write_safetensors(tiny_xl, folder / "xl-nometa.safetensors")
    write_ckpt(tiny_xl, folder / "xl-ckpt.ckpt")
    write_diffusers_folder(tiny_xl, folder / "xl-diffusers")
    write_diffusers_folder(tiny_sd2, folder / "sd2-diffusers")
    write_safetensors(build_tiny_sdxl(seed=5, in_channels=9), folder / "xl-inpaint.safetensors", metadata=SIZE)
    write_safetensors(build_tiny_sd2(seed=6, in_channels=9), folder / "sd2-inpaint.safetensors",
                      metadata={**SIZE, "modelspec.prediction_type": "epsilon"})
    easel.manager.catalog.roots.append(folder)
    easel.manager.refresh()
    return folder


def pixels(result) -> np.ndarray:
    return np.asarray(result.images[0], dtype=np.int16)


def reference_run(pipe, model_scheduler_config: dict, **extra) -> np.ndarray:
    """diffusers' pipeline with Easel's scheduler and Easel's per-seed noise."""
    sampler, schedule = resolve_sampler(FAST["sampler_name"], "Automatic")
    pipe.scheduler = build_scheduler(sampler, schedule, model_scheduler_config)
    noise, _ = image_noise((1, 4, 16, 16), FAST["seed"], 0, 0.0)
    out = pipe(prompt=FAST["prompt"], num_inference_steps=FAST["steps"], guidance_scale=FAST["cfg_scale"],
               height=64, width=64, latents=noise, output_type="np", **extra).images[0]
    return (out * 255).round().astype(np.int16)


# -- detection -------------------------------------------------------------------------------------

def test_each_family_is_recognised_from_its_keys(tiny_a, tiny_sd2, tiny_xl):
    for tiny, name in ((tiny_a, "sd1"), (tiny_sd2, "sd2"), (tiny_xl, "sdxl")):
        sd = export_ldm_state_dict(tiny.unet, tiny.vae, tiny.text_encoder, tiny.text_encoder_2, tiny.family)
        family = detect_family(normalise_keys(sd), "x.safetensors")
        assert family.name == name and not family.inpainting


def test_prediction_type_sources(tiny_sd2, tiny_xl):
    sd = export_ldm_state_dict(tiny_sd2.unet, tiny_sd2.vae, tiny_sd2.text_encoder, family="sd2")
    assert detect_family(sd, "f", {"modelspec.prediction_type": "v"}).prediction_type == "v_prediction"
    assert detect_family(sd, "f", {"modelspec.prediction_type": "epsilon"}).prediction_type == "epsilon"
    assert detect_family({**sd, "v_pred": torch.tensor([])}, "f").prediction_type == "v_prediction"
    yaml_v = {"model": {"params": {"parameterization": "v"}}}
    # the .yaml beside the file wins over the metadata
    found = detect_family(sd, "f", {"modelspec.prediction_type": "epsilon"}, yaml_v)
    assert (found.prediction_type, found.prediction_source) == ("v_prediction", "yaml")
    assert detect_family(sd, "f").prediction_source == "probe"  # SD2 without any hint: probe the UNet
    xl = export_ldm_state_dict(tiny_xl.unet, tiny_xl.vae, tiny_xl.text_encoder, tiny_xl.text_encoder_2, "sdxl")
    assert detect_family(xl, "f").prediction_type == "epsilon"
    assert detect_family({**xl, "v_pred": torch.tensor([])}, "f").prediction_type == "v_prediction"


def test_the_v_probe_follows_the_unet_output():
    """A1111's probe: mean(unet(x) - x) at t=999 below -1 means v. Rig the output layer both ways."""
    unet = build_tiny_sd2(seed=8).unet
    with torch.no_grad():
        unet.conv_out.weight.zero_()
        unet.conv_out.bias.fill_(-4.0)  # far below the 0.5 input: what a v model predicts
        assert predicts_v(unet)
        unet.conv_out.bias.fill_(0.5)  # equal to the input: what an epsilon model predicts
        assert not predicts_v(unet)


def test_bad_yaml_and_mixed_files_give_clear_errors(easel, families, tiny_a, tiny_xl):
    (families / "sd2-v.yaml").write_text("model: [unclosed\n")
    with pytest.raises(ModelError, match=r"sd2-v\.yaml: not a readable YAML"):
        easel.load_model("sd2-v.safetensors")
    (families / "sd2-v.yaml").write_text("model:\n  params:\n    parameterization: x0\n")
    with pytest.raises(ModelError, match="parameterization 'x0'"):
        easel.load_model("sd2-v.safetensors")
    # an SD1 UNet with SDXL's text encoders: the widths disagree
    sd1 = export_ldm_state_dict(tiny_a.unet, tiny_a.vae, tiny_a.text_encoder)
    xl = export_ldm_state_dict(tiny_xl.unet, tiny_xl.vae, tiny_xl.text_encoder, tiny_xl.text_encoder_2, "sdxl")
    mixed = {**{k: v for k, v in sd1.items() if not k.startswith("cond_stage_model.")},
             **{k: v for k, v in xl.items() if k.startswith("conditioner.")}}
    with pytest.raises(ModelError, match="expects 32-wide text features but the text encoders give 96"):
        detect_family(mixed, "mixed.safetensors")
    refiner = {k.replace("conditioner.embedders.1.", "conditioner.embedders.0."): v for k, v in xl.items()
               if not k.startswith("conditioner.embedders.0.")}
    with pytest.raises(ModelError, match="SDXL refiner"):
        detect_family(refiner, "refiner.safetensors")
    # the previous model is still loaded and works
    assert easel.engine.txt2img(easel.load_model("tiny-a.safetensors"), Txt2ImgRequest(**FAST)).images


# -- SD2 -------------------------------------------------------------------------------------------

def test_sd2_loads_with_openclip_conventions(easel, families):
    model = easel.load_model("sd2-v.safetensors")
    assert (model.family.name, model.family.prediction_type) == ("sd2", "v_prediction")
    assert model.scheduler_config["prediction_type"] == "v_prediction"
    assert model.text_encoder.config.num_hidden_layers == 2  # the file has 3; SD2 uses the penultimate
    assert model.text_encoder.config.hidden_act == "gelu"
    assert model.tokenizer.pad_token == "!" and model.tokenizer.pad_token_id == 0
    assert model.text_encoder_2 is None
    assert easel.load_model("sd2-eps.safetensors").family.prediction_type == "epsilon"  # from its .yaml


def _truncated(text_encoder: CLIPTextModel, layers: int) -> CLIPTextModel:
    cfg = CLIPTextConfig(**{**text_encoder.config.to_dict(), "num_hidden_layers": layers})
    short = CLIPTextModel(cfg).eval()
    short.load_state_dict(text_encoder.state_dict(), strict=False)
    return short


@pytest.mark.parametrize("name, prediction", [("sd2-v.safetensors", "v_prediction"), ("sd2-eps.safetensors", "epsilon")])
def test_sd2_picture_matches_diffusers(easel, families, tiny_sd2, name, prediction):
    result = easel.engine.txt2img(easel.load_model(name), Txt2ImgRequest(**FAST))
    pipe = StableDiffusionPipeline(
        vae=tiny_sd2.vae, text_encoder=_truncated(tiny_sd2.text_encoder, 2), tokenizer=load_clip_tokenizer("!"),
        unet=tiny_sd2.unet, scheduler=build_scheduler(*resolve_sampler("Euler", "Automatic"), {}),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    config = {**easel.load_model(name).scheduler_config, "prediction_type": prediction}
    assert np.abs(pixels(result) - reference_run(pipe, config)).max() <= 2
    other = "sd2-eps.safetensors" if prediction == "v_prediction" else "sd2-v.safetensors"
    assert np.abs(pixels(result) - pixels(easel.engine.txt2img(easel.load_model(other), Txt2ImgRequest(**FAST)))).mean() > 1


# -- SDXL ------------------------------------------------------------------------------------------

def test_sdxl_loads_two_text_encoders(easel, families):
    model = easel.load_model("xl.safetensors")
    assert model.family.name == "sdxl" and model.family.prediction_type == "epsilon"
    assert model.text_encoder.config.hidden_size == 32 and model.text_encoder_2.config.hidden_size == 64
    assert model.tokenizer.pad_token == "<|endoftext|>" and model.tokenizer_2.pad_token == "!"
    assert model.unet.config.addition_embed_type == "text_time"
    assert model.vae.config.scaling_factor == pytest.approx(0.13025)
    assert model.default_size == (64, 64)


@pytest.mark.parametrize("name", ["xl.safetensors", "xl-ckpt.ckpt"])
def test_sdxl_picture_matches_diffusers(easel, families, tiny_xl, name):
    """Penultimate hidden states of both encoders side by side, the pooled projection, size ids and
    an all-zero empty negative prompt: diffusers' SDXL pipeline from the original modules agrees."""
    model = easel.load_model(name)
    result = easel.engine.txt2img(model, Txt2ImgRequest(**FAST))
    pipe = StableDiffusionXLPipeline(
        vae=tiny_xl.vae, text_encoder=tiny_xl.text_encoder, text_encoder_2=tiny_xl.text_encoder_2,
        tokenizer=load_clip_tokenizer(), tokenizer_2=load_clip_tokenizer("!"), unet=tiny_xl.unet,
        scheduler=build_scheduler(*resolve_sampler("Euler", "Automatic"), {}), force_zeros_for_empty_prompt=True,
    )
    assert np.abs(pixels(result) - reference_run(pipe, model.scheduler_config)).max() <= 2
    # a real negative prompt is encoded, not zeroed: the picture changes
    negative = easel.engine.txt2img(model, Txt2ImgRequest(**{**FAST, "negative_prompt": "blurry"}))
    assert np.abs(pixels(result) - pixels(negative)).mean() > 0.5


def test_sdxl_size_conditioning_is_the_picture_size(easel, families):
    from webui.generation.conditioning import ScheduledConditioning
    from webui.generation.engine import sdxl_added_conditioning

    model = easel.load_model("xl.safetensors")
    req = Txt2ImgRequest(**{**FAST, "width": 96, "height": 64, "batch_size": 2})
    encoder = easel.engine.prompt_encoder(model, 1)
    cond = ScheduledConditioning(encoder, [req.prompt] * 2, req.steps)
    uncond = ScheduledConditioning(encoder, [""] * 2, req.steps, negative=True)
    added = sdxl_added_conditioning(model, req, cond, uncond, 0)
    assert added["time_ids"].tolist() == [[64, 96, 0, 0, 64, 96]] * 4  # (h, w), crop (0, 0), (h, w)
    assert added["text_embeds"].shape == (4, 64)
    assert added["text_embeds"][:2].abs().max() == 0 and added["text_embeds"][2:].abs().max() > 0
    assert sdxl_added_conditioning(easel.load_model("sd2-v.safetensors"), req, cond, uncond, 0) is None


def test_sdxl_default_size_is_known_before_loading(easel, families):
    assert easel.default_size_for("xl-nometa.safetensors") == (1024, 1024)  # from its tensor names
    assert easel.default_size_for("xl-diffusers") == (1024, 1024)  # from its folder layout
    assert easel.default_size_for("xl.safetensors") == (64, 64)  # modelspec.resolution wins
    assert easel.default_size_for("sd2-eps.safetensors") == (64, 64)
    assert easel.load_model("xl-nometa.safetensors").default_size == (1024, 1024)


def test_sdxl_long_prompts_and_emphasis_run(easel, families):
    model = easel.load_model("xl.safetensors")
    long = ", ".join(["a (red:1.3) circle"] * 30)  # > 75 tokens: two chunks in both encoders
    result = easel.engine.txt2img(model, Txt2ImgRequest(**{**FAST, "prompt": long}))
    assert result.images[0].size == (64, 64)


@pytest.mark.parametrize("name", ["xl-inpaint.safetensors", "sd2-inpaint.safetensors"])
def test_inpainting_checkpoints_of_each_family_run(easel, families, name):
    from PIL import Image

    model = easel.load_model(name)
    assert model.family.inpainting and model.unet.config.in_channels == 9
    image = Image.new("RGB", (64, 64), (200, 30, 30))
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (0, 0, 32, 64))
    req = Img2ImgRequest(**{**FAST, "init_image": image, "mask": mask, "mask_blur": 0, "denoising_strength": 1.0})
    result = easel.engine.img2img(model, req)
    assert result.extra["inpainting_conditioning"]  # the API reports it as is_using_inpainting_conditioning
    out = np.asarray(result.images[0], dtype=np.int16)
    assert (out[:, 40:] == np.asarray(image, dtype=np.int16)[:, 40:]).all()  # outside the mask: untouched
    assert np.abs(out[:, :24] - np.asarray(image, dtype=np.int16)[:, :24]).mean() > 1  # inside: regenerated


@pytest.mark.parametrize("folder, single", [("xl-diffusers", "xl.safetensors"), ("sd2-diffusers", "sd2-v.safetensors")])
def test_diffusers_folders_of_each_family_match_their_single_files(easel, families, folder, single):
    model = easel.load_model(folder)
    reference = easel.load_model(single)
    assert (model.family.name, model.family.prediction_type) == (reference.family.name, reference.family.prediction_type)
    assert model.tokenizer.pad_token == reference.tokenizer.pad_token
    a = easel.engine.txt2img(easel.load_model(folder), Txt2ImgRequest(**FAST))
    b = easel.engine.txt2img(easel.load_model(single), Txt2ImgRequest(**FAST))
    assert np.abs(pixels(a) - pixels(b)).max() <= 1


def test_sd1_still_loads_next_to_the_others(easel, families):
    a = easel.load_model("tiny-a.safetensors")
    assert a.family.name == "sd1" and a.text_encoder_2 is None and a.tokenizer.pad_token == "<|endoftext|>"
    _ = build_tiny_sd  # SD1 is covered in depth by test_models


# -- LoRA and embeddings on SDXL -------------------------------------------------------------------

def kohya_xl_lora(tiny, seed: int) -> dict[str, torch.Tensor]:
    """kohya's SDXL layout: lora_unet_*, lora_te1_* (CLIP ViT-L) and lora_te2_* (OpenCLIP bigG)."""
    from test_lora import kohya_weights, linear_targets

    targets = linear_targets("lora_unet_", tiny.unet, ("to_q", "to_k", "to_v", "to_out.0"))
    for prefix, encoder in (("lora_te1_", tiny.text_encoder), ("lora_te2_", tiny.text_encoder_2)):
        targets += linear_targets(prefix, encoder, ("q_proj", "k_proj", "v_proj", "out_proj"),
                                  rename=lambda n: "text_model." + n.removeprefix("text_model."))
    return kohya_weights(targets, seed)


def test_sdxl_lora_reaches_both_text_encoders(easel, families, tiny_xl):
    from safetensors.torch import save_file

    save_file(kohya_xl_lora(tiny_xl, 1), str(easel.settings.models_dir / "Lora" / "xl-style.safetensors"))
    model = easel.load_model("xl.safetensors")
    base = easel.engine.txt2img(model, Txt2ImgRequest(**FAST))
    zero = easel.engine.txt2img(model, Txt2ImgRequest(**{**FAST, "prompt": FAST["prompt"] + " <lora:xl-style:0>"}))
    one = easel.engine.txt2img(model, Txt2ImgRequest(**{**FAST, "prompt": FAST["prompt"] + " <lora:xl-style:1>"}))
    assert np.array_equal(pixels(base), pixels(zero))
    assert np.abs(pixels(base) - pixels(one)).mean() > 0.5
    assert getattr(model.text_encoder, "peft_config", None) and getattr(model.text_encoder_2, "peft_config", None)
    assert "Lora hashes: \"xl-style: " in one.infotexts[0] or "Lora hashes: xl-style: " in one.infotexts[0]


def test_sdxl_embeddings_need_both_halves(easel, families):
    from safetensors.torch import save_file

    folder = easel.settings.models_dir / "embeddings"
    g = torch.Generator().manual_seed(0)
    save_file({"clip_l": torch.randn(2, 32, generator=g), "clip_g": torch.randn(2, 64, generator=g)},
              str(folder / "xlstyle.safetensors"))
    save_file({"emb_params": torch.randn(2, 32, generator=g)}, str(folder / "onlyl.safetensors"))
    easel.refresh()
    model = easel.load_model("xl.safetensors")
    plain = easel.engine.txt2img(model, Txt2ImgRequest(**FAST))
    styled = easel.engine.txt2img(model, Txt2ImgRequest(**{**FAST, "prompt": FAST["prompt"] + " xlstyle"}))
    assert np.abs(pixels(plain) - pixels(styled)).mean() > 0.5
    assert "TI hashes" in styled.infotexts[0]
    # an embedding with vectors for one encoder only is plain text on SDXL
    from webui.generation.conditioning import PromptEncoder

    encoder = easel.engine.prompt_encoder(model, 1)
    bare = PromptEncoder(model.tokenizer, model.text_encoder, layer="penultimate")  # no embeddings at all
    assert torch.equal(encoder.encode("a onlyl")[..., :32], bare.encode("a onlyl"))
    assert "onlyl" not in encoder.used_embeddings
