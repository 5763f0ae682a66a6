"""Offloading (--medvram / --lowvram) and the speed switches: same pictures, really applied."""
from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from webui.generation.requests import Txt2ImgRequest
from webui.services import Easel
from webui.settings import settings_from_args

FAST = dict(prompt="a red circle", negative_prompt="blurry", steps=3, width=64, height=64, seed=11,
            sampler_name="Euler", cfg_scale=5)


def make(model_root, tmp_path, *flags) -> Easel:
    return Easel.create(settings_from_args(["--data-dir", str(tmp_path), "--device", "cpu", "--ckpt-dir",
                                            str(model_root / "models" / "Stable-diffusion"), *flags]))


def pixels(easel: Easel, name: str = "tiny-a.safetensors", **extra) -> np.ndarray:
    result = easel.engine.txt2img(easel.load_model(name), Txt2ImgRequest(**{**FAST, **extra}))
    return np.asarray(result.images[0], dtype=np.int16)


@pytest.fixture()
def reference(easel):
    return {name: pixels(easel, name) for name in ("tiny-a.safetensors", "tiny-b.safetensors")}


def test_flags_map_to_offload_modes():
    assert settings_from_args(["--medvram"]).speed.offload == "model"
    assert settings_from_args(["--lowvram"]).speed.offload == "sequential"
    assert settings_from_args([]).speed.offload == "none"
    with pytest.raises(SystemExit):
        settings_from_args(["--medvram", "--lowvram"])


@pytest.mark.parametrize("flag, mode", [("--medvram", "model"), ("--lowvram", "sequential")])
def test_offloaded_models_give_the_same_pictures(model_root, tmp_path, reference, flag, mode):
    app = make(model_root, tmp_path, flag)
    try:
        for name in ("tiny-a.safetensors", "tiny-b.safetensors", "tiny-a.safetensors"):  # swaps too
            assert np.array_equal(pixels(app, name), reference[name])
        model = app.load_model("tiny-a.safetensors")
        assert all(hasattr(m, "_hf_hook") for m in (model.unet, model.vae, model.text_encoder))  # accelerate's hooks
        if mode == "sequential":  # weights live outside the module and stream in per layer
            assert all(p.is_meta for p in model.unet.parameters())
    finally:
        app.close()


def test_medvram_moves_the_running_part_only(model_root, tmp_path):
    """With CPU as the execution device the hooks' moves are no-ops, but the chain must be the ring
    text encoder -> UNet -> VAE -> text encoder (each hook sends the previous part back to RAM)."""
    app = make(model_root, tmp_path, "--medvram")
    try:
        model = app.load_model("tiny-a.safetensors")
        chain = {id(m): m._hf_hook.prev_module_hook.model for m in (model.text_encoder, model.unet, model.vae)}
        assert chain[id(model.unet)] is model.text_encoder
        assert chain[id(model.vae)] is model.unet
        assert chain[id(model.text_encoder)] is model.vae
    finally:
        app.close()


def test_channels_last_is_applied_and_changes_nothing_visible(model_root, tmp_path, reference):
    app = make(model_root, tmp_path, "--opt-channelslast")
    try:
        assert np.abs(pixels(app) - reference["tiny-a.safetensors"]).max() <= 1
        weight = app.load_model("tiny-a.safetensors").unet.conv_in.weight
        assert weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous()
    finally:
        app.close()


def test_xformers_on_cpu_falls_back_to_sdpa_with_a_reason(model_root, tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        app = make(model_root, tmp_path, "--xformers")
    try:
        assert app.speed.attention == "sdpa"
        assert "xformers needs CUDA" in caplog.text
    finally:
        app.close()


def test_lora_under_lowvram_is_refused_clearly_and_the_model_stays_usable(model_root, tmp_path):
    from safetensors.torch import save_file
    from test_lora import kohya_lora

    from webui.models.errors import ModelError

    app = make(model_root, tmp_path, "--lowvram")
    try:
        save_file(kohya_lora(1), str(app.settings.models_dir / "Lora" / "shiny.safetensors"))
        with pytest.raises(ModelError, match="--lowvram .* use --medvram"):
            pixels(app, prompt="a cat <lora:shiny:1>")
        assert pixels(app).shape == (64, 64, 3)
    finally:
        app.close()


@pytest.mark.parametrize("flag", ["--medvram"])
def test_loras_work_when_offloaded(model_root, tmp_path, flag):
    from safetensors.torch import save_file
    from test_lora import kohya_lora

    plain = make(model_root, tmp_path / "plain")
    offloaded = make(model_root, tmp_path / "offloaded", flag)
    try:
        for app in (plain, offloaded):
            save_file(kohya_lora(1), str(app.settings.models_dir / "Lora" / "shiny.safetensors"))
        prompt = FAST["prompt"] + " <lora:shiny:1>"
        with_lora = pixels(offloaded, prompt=prompt)
        assert np.abs(with_lora - pixels(plain, prompt=prompt)).max() <= 1
        assert np.abs(with_lora - pixels(offloaded)).mean() > 0.5
    finally:
        plain.close()
        offloaded.close()


def test_compile_flag_compiles_the_unet_in_place(model_root, tmp_path):
    """Only the wiring: a CPU compile of even the tiny UNet takes ~50 s (bench/RESULTS.md has timings)."""
    app = make(model_root, tmp_path, "--compile")
    try:
        model = app.load_model("tiny-a.safetensors")
        assert model.unet._compiled_call_impl is not None  # nn.Module.compile: same module, compiled forward
        assert model.unet.config.cross_attention_dim == 32  # config, adapters, etc. still reachable
    finally:
        app.close()


def test_gpu_benchmark_runs_on_tiny_models_on_cpu(capsys):
    """The CPU part of bench/gpu_speed.py, so the GPU benchmark cannot rot unseen."""
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    import gpu_speed

    rows = gpu_speed.main(["--tiny", "--device", "cpu", "--dtype", "fp32", "--batch", "1", "--variants", "",
                           "--short", "1", "--long", "2", "--repeats", "1"])
    assert {(r["arch"], r["variant"]) for r in rows} == {
        (a, v) for a in ("sd15", "sdxl") for v in ("diffusers (bare, eager)", "easel default")}
    # figures from 1-2 tiny steps on a busy CPU are noise (the slope may even be negative): only finite
    assert all(np.isfinite([r["ms_per_step"], r["tflops"], r["speedup_vs_bare"]]).all() for r in rows)
    assert "MFU" in capsys.readouterr().out


def test_a_vae_that_overflows_in_fp16_is_decoded_in_fp32_and_remembered(model_root, tmp_path, caplog):
    """SDXL's VAE overflows in fp16 on every image: after the first NaN it goes straight to fp32."""
    app = make(model_root, tmp_path, "--precision", "fp16")
    try:
        model = app.load_model("tiny-a.safetensors")
        with torch.no_grad():
            model.vae.decoder.conv_in.weight.mul_(30000)  # still finite in fp16, but its outputs are not
        with caplog.at_level(logging.WARNING):
            first = pixels(app)
        assert caplog.text.count("NaNs in fp16") == 1
        assert len(np.unique(first.reshape(-1, 3), axis=0)) > 1  # a picture, not NaNs turned black
        caplog.clear()
        with caplog.at_level(logging.WARNING):
            second = pixels(app)
        assert "NaNs" not in caplog.text and np.array_equal(first, second)
        assert model.vae.dtype == torch.float16  # back in fp16 between decodes
    finally:
        app.close()


def test_medvram_sdxl_offloads_sdxl_checkpoints_only(model_root, tmp_path):
    from tiny_models import build_tiny_sdxl, write_safetensors

    assert settings_from_args(["--medvram-sdxl"]).speed.offload_for("sd1") == "none"
    assert settings_from_args(["--medvram-sdxl"]).speed.offload_for("sdxl") == "model"
    xl_dir = tmp_path / "xl"
    write_safetensors(build_tiny_sdxl(seed=2), xl_dir / "tiny-xl.safetensors", metadata={"modelspec.resolution": "64x64"})
    plain, lean = make(model_root, tmp_path / "plain"), make(model_root, tmp_path / "lean", "--medvram-sdxl")
    try:
        for app in (plain, lean):
            app.manager.catalog.roots.append(xl_dir)
            app.refresh()
        for name in ("tiny-xl.safetensors", "tiny-a.safetensors", "tiny-xl.safetensors"):
            assert np.array_equal(pixels(lean, name), pixels(plain, name))
        assert hasattr(lean.load_model("tiny-xl.safetensors").unet, "_hf_hook")
        assert not hasattr(lean.load_model("tiny-a.safetensors").unet, "_hf_hook")
    finally:
        plain.close()
        lean.close()
