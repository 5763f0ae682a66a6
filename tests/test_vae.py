"""VAE choice: Automatic / None / a file from models/VAE, in LDM or diffusers layout; bad files."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from tiny_models import build_tiny_sd
from webui.generation.requests import Txt2ImgRequest
from webui.images.infotext import parse_infotext
from webui.models.errors import ModelError
from webui.models.ldm_export import vae_to_ldm

FAST = dict(prompt="a cat", steps=2, width=64, height=64, seed=5, sampler_name="Euler")


@pytest.fixture()
def vae_dir(easel):
    folder = easel.settings.models_dir / "VAE"
    other = build_tiny_sd(seed=7).vae
    ldm = vae_to_ldm(other.state_dict())  # keys `first_stage_model.encoder.down.0…`
    # A1111-style VAE files carry the LDM keys without the checkpoint prefix
    save_file({k.removeprefix("first_stage_model."): v.contiguous() for k, v in ldm.items()},
              str(folder / "other-ldm.safetensors"))
    save_file({k: v.contiguous() for k, v in other.state_dict().items()}, str(folder / "other-diffusers.safetensors"))
    torch.save({"state_dict": {k: v.contiguous() for k, v in ldm.items()}}, folder / "other-wrapped.ckpt")
    save_file({"encoder.conv_in.weight": torch.zeros(8, 3, 3, 3)}, str(folder / "wrong-size.safetensors"))
    (folder / "garbage.pt").write_bytes(b"garbage")
    return folder


def pixels(r):
    return np.asarray(r.images[0]).astype(np.int16)


def run(easel, vae):
    return easel.engine.txt2img(easel.load_model("tiny-a.safetensors", vae), Txt2ImgRequest(**FAST, vae=vae))


def test_a_vae_file_replaces_the_checkpoints_own_and_none_restores_it(easel, vae_dir):
    own = run(easel, "None")
    ldm = run(easel, "other-ldm.safetensors")
    diffusers_layout = run(easel, "other-diffusers.safetensors")
    wrapped = run(easel, "other-wrapped.ckpt")
    again = run(easel, "None")
    assert np.abs(pixels(own) - pixels(ldm)).mean() > 1
    assert np.array_equal(pixels(ldm), pixels(diffusers_layout)) and np.array_equal(pixels(ldm), pixels(wrapped))
    assert np.array_equal(pixels(own), pixels(again))
    info = parse_infotext(ldm.infotexts[0])
    assert info["VAE"] == "other-ldm" and len(info["VAE hash"]) == 10
    assert "VAE" not in parse_infotext(own.infotexts[0])


def test_automatic_picks_the_vae_named_after_the_checkpoint(easel, vae_dir):
    plain = run(easel, "Automatic")
    assert "VAE" not in parse_infotext(plain.infotexts[0])
    (vae_dir / "other-ldm.safetensors").rename(vae_dir / "tiny-a.vae.safetensors")
    auto = run(easel, "Automatic")
    assert parse_infotext(auto.infotexts[0])["VAE"] == "tiny-a.vae"
    assert np.abs(pixels(plain) - pixels(auto)).mean() > 1


@pytest.mark.parametrize("name,words", [("wrong-size.safetensors", "does not fit"), ("garbage.pt", "garbage.pt"),
                                        ("../escape.safetensors", "not found"), ("nope", "not found")])
def test_bad_vae_files_give_clear_errors_and_generation_goes_on(easel, vae_dir, name, words):
    with pytest.raises(ModelError) as err:
        run(easel, name)
    assert words in str(err.value)
    assert run(easel, "None").images
