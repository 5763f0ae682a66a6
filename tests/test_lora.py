"""LoRA: kohya-format files from models/Lora used as <lora:name:weight>, via diffusers/peft adapters."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from tiny_models import build_tiny_sd
from webui.generation.requests import Txt2ImgRequest
from webui.images.infotext import parse_infotext
from webui.models.errors import ModelError
from webui.models.lora import LoraUse, extract_lora_tags

FAST = dict(steps=2, width=64, height=64, seed=5, sampler_name="Euler", cfg_scale=5)


def kohya_weights(targets, seed: int, rank: int = 4, scale: float = 0.3) -> dict[str, torch.Tensor]:
    """kohya's key layout for (prefix, module name, Linear) targets: lora_down / lora_up / alpha each."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for prefix, name, module in targets:
        key = prefix + name.replace(".", "_")
        sd[f"{key}.lora_down.weight"] = torch.randn(rank, module.in_features, generator=g) * scale
        sd[f"{key}.lora_up.weight"] = torch.randn(module.out_features, rank, generator=g) * scale
        sd[f"{key}.alpha"] = torch.tensor(float(rank))
    return sd


def linear_targets(prefix: str, module: torch.nn.Module, ends: tuple[str, ...], rename=lambda n: n):
    return [(prefix, rename(n), m) for n, m in module.named_modules() if n.endswith(ends) and isinstance(m, torch.nn.Linear)]


def kohya_lora(seed: int, rank: int = 4, scale: float = 0.3) -> dict[str, torch.Tensor]:
    """A LoRA in kohya's key layout for the tiny model: UNet attention projections and CLIP's q/k/v/out."""
    tiny = build_tiny_sd(0)
    targets = linear_targets("lora_unet_", tiny.unet, ("to_q", "to_k", "to_v", "to_out.0"))
    targets += linear_targets("lora_te_text_model_", tiny.text_encoder, ("q_proj", "k_proj", "v_proj", "out_proj"))
    return kohya_weights(targets, seed, rank, scale)


@pytest.fixture()
def lora_dir(easel):
    folder = easel.settings.models_dir / "Lora"
    save_file(kohya_lora(1), str(folder / "shiny.safetensors"))
    save_file(kohya_lora(2), str(folder / "moody.safetensors"))
    save_file({"foo": torch.zeros(2)}, str(folder / "notalora.safetensors"))
    return folder


def pixels(r):
    return np.asarray(r.images[0]).astype(np.int16)


def run(easel, prompt):
    return easel.engine.txt2img(easel.load_model("tiny-a.safetensors"), Txt2ImgRequest(prompt=prompt, **FAST))


def test_tags_are_parsed_and_stripped():
    text, uses = extract_lora_tags("a cat <lora:shiny:0.7>, <lora:moody> at night <lyco:x:-1>")
    assert text == "a cat ,  at night "
    assert uses == [LoraUse("shiny", 0.7), LoraUse("moody", 1.0), LoraUse("x", -1.0)]
    with pytest.raises(ValueError, match="prompt: LoRA tag"):
        extract_lora_tags("<lora:shiny:lots>")


def test_weight_0_equals_no_lora_and_weight_1_changes_the_image(easel, lora_dir):
    base = run(easel, "a cat")
    zero = run(easel, "a cat <lora:shiny:0>")
    one = run(easel, "a cat <lora:shiny:1>")
    assert np.array_equal(pixels(base), pixels(zero))
    assert np.abs(pixels(base) - pixels(one)).mean() > 0.5
    info = parse_infotext(one.infotexts[0])
    assert info["Prompt"] == "a cat <lora:shiny:1>"  # the tag stays in the recipe, as in A1111
    assert info["Lora hashes"].startswith("shiny: ") and len(info["Lora hashes"]) == len("shiny: ") + 12
    after = run(easel, "a cat")  # a later job without the tag is back to the base model
    assert np.array_equal(pixels(base), pixels(after))


def test_several_loras_at_once(easel, lora_dir):
    one = run(easel, "a cat <lora:shiny:1>")
    both = run(easel, "a cat <lora:shiny:1> <lora:moody:0.8>")
    assert np.abs(pixels(one) - pixels(both)).mean() > 0.5
    assert parse_infotext(both.infotexts[0])["Lora hashes"].count(":") == 2


def test_bad_and_unknown_loras_give_clear_errors_and_generation_goes_on(easel, lora_dir):
    with pytest.raises(ModelError, match="not found"):
        run(easel, "a cat <lora:nope:1>")
    with pytest.raises(ModelError, match="notalora.safetensors"):
        run(easel, "a cat <lora:notalora:1>")
    with pytest.raises(ModelError, match="not found"):
        run(easel, "a cat <lora:../../etc/passwd:1>")
    assert run(easel, "a cat").images


def test_repeated_tags_are_one_lora_and_one_hash(easel, lora_dir):
    text, uses = extract_lora_tags("<lora:shiny:0.25> a cat <lora:shiny:0.25> <lora:moody>")
    assert uses == [LoraUse("shiny", 0.5), LoraUse("moody", 1.0)]  # the same name adds up, as in A1111
    many = run(easel, "a cat " + "<lora:shiny:0.001>" * 500)
    once = run(easel, "a cat <lora:shiny:0.5>")
    hashes = parse_infotext(many.infotexts[0])["Lora hashes"]
    assert hashes == parse_infotext(once.infotexts[0])["Lora hashes"] and hashes.count("shiny") == 1
    assert np.abs(pixels(many) - pixels(once)).max() <= 1
