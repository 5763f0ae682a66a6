"""The model manager's two-tier cache: LRU order, budgets in models and GB, memory really released."""
from __future__ import annotations

import gc
import weakref

import numpy as np
import pytest
import torch

from webui.models.catalog import Catalog, HashCache
from webui.models.errors import ModelError
from webui.models.cache import GB, tensor_bytes
from webui.models.manager import ModelManager, TierBudget, model_bytes


@pytest.fixture()
def make_manager(model_root, tmp_path):
    def make(device_budget=TierBudget(models=1), ram_budget=TierBudget(models=1)):
        catalog = Catalog([model_root / "models" / "Stable-diffusion"], HashCache(tmp_path / "hashes.json"))
        return ModelManager(catalog, torch.device("cpu"), torch.float32, device_budget, ram_budget)
    return make


def names(titles):
    return [t.split(" [")[0] for t in titles]


def test_lru_order_across_tiers(make_manager):
    m = make_manager(TierBudget(models=1), TierBudget(models=2))
    m.get("tiny-a.safetensors")
    m.get("tiny-b.safetensors")
    assert names(m.loaded_titles()) == ["tiny-b.safetensors"]
    assert names(m.cached_titles()) == ["tiny-a.safetensors"]
    m.get("sub/tiny-a-ckpt.ckpt")
    assert names(m.cached_titles()) == ["tiny-a.safetensors", "tiny-b.safetensors"]
    m.get("tiny-a.safetensors")  # comes back from RAM, not from disk
    assert m.last_source == "ram"
    assert names(m.loaded_titles()) == ["tiny-a.safetensors"]
    assert names(m.cached_titles()) == ["tiny-b.safetensors", "sub/tiny-a-ckpt.ckpt"]
    m.get("tiny-a-diffusers")  # RAM tier over budget: the least recently used (tiny-b) is dropped
    assert names(m.cached_titles()) == ["sub/tiny-a-ckpt.ckpt", "tiny-a.safetensors"]
    m.get("tiny-a-diffusers")
    assert m.last_source == "device"


def test_ram_tier_swap_returns_the_same_objects(make_manager):
    m = make_manager()
    a = m.get("tiny-a.safetensors")
    m.get("tiny-b.safetensors")
    assert m.get("tiny-a.safetensors") is a and m.last_source == "ram"


def test_zero_ram_budget_drops_and_memory_is_released(make_manager):
    m = make_manager(TierBudget(models=1), TierBudget(models=0))
    a = m.get("tiny-a.safetensors")
    refs = [weakref.ref(a.unet), weakref.ref(a.vae), weakref.ref(a.text_encoder)]
    del a
    m.get("tiny-a-diffusers")  # a folder never takes over another model's modules
    gc.collect()
    assert all(r() is None for r in refs), "an evicted model's modules are still referenced somewhere"
    assert m.cached_titles() == []
    m.get("tiny-a.safetensors")
    assert m.last_source == "disk"


def test_same_architecture_swaps_only_the_weights(make_manager, easel):
    """A model about to be dropped lends its modules to a checkpoint of the same architecture: the
    pictures are exactly those of a fresh load, and the old model is gone from both tiers."""
    from webui.generation.requests import Txt2ImgRequest

    req = Txt2ImgRequest(prompt="a red circle", steps=2, width=64, height=64, seed=3, sampler_name="Euler")
    fresh_b = np.asarray(easel.engine.txt2img(easel.load_model("tiny-b.safetensors"), req).images[0])
    fresh_a = np.asarray(easel.engine.txt2img(easel.load_model("tiny-a.safetensors"), req).images[0])
    m = make_manager(TierBudget(models=1), TierBudget(models=0))
    a = m.get("tiny-a.safetensors")
    unet = a.unet
    b = m.get("tiny-b.safetensors")
    assert m.last_source == "disk (weights-only swap)" and b.unet is unet
    assert names(m.loaded_titles()) == ["tiny-b.safetensors"] and m.cached_titles() == []
    assert np.array_equal(np.asarray(easel.engine.txt2img(b, req).images[0]), fresh_b)
    again = m.get("tiny-a.safetensors")
    assert again.unet is unet
    assert np.array_equal(np.asarray(easel.engine.txt2img(again, req).images[0]), fresh_a)


def test_gigabyte_budget(make_manager):
    m = make_manager(TierBudget(models=None, gigabytes=None), TierBudget(models=0))
    size = model_bytes(m.get("tiny-a.safetensors"))
    m.get("tiny-b.safetensors")
    assert len(m.loaded_titles()) == 2  # no limit: both stay on the device
    tight = make_manager(TierBudget(models=None, gigabytes=1.5 * size / 1024**3), TierBudget(models=0))
    tight.get("tiny-a.safetensors")
    tight.get("tiny-b.safetensors")
    assert names(tight.loaded_titles()) == ["tiny-b.safetensors"]


def test_a_failed_load_evicts_nothing(make_manager, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "broken.safetensors").write_bytes(b"\x00" * 100)
    m = make_manager()
    m.catalog.roots.append(bad)
    m.refresh()
    m.get("tiny-a.safetensors")
    m.get("tiny-b.safetensors")
    with pytest.raises(Exception):
        m.get("broken.safetensors")
    assert names(m.loaded_titles()) == ["tiny-b.safetensors"]
    assert names(m.cached_titles()) == ["tiny-a.safetensors"]


def test_a_bad_file_of_the_same_architecture_leaves_the_model_to_reuse_intact(make_manager, model_root, tmp_path):
    from safetensors.torch import load_file, save_file

    sd = load_file(str(model_root / "models" / "Stable-diffusion" / "tiny-b.safetensors"))
    sd["first_stage_model.decoder.conv_out.bias"] = torch.zeros(5)  # same architecture, one tensor wrong
    save_file(sd, str(model_root / "models" / "Stable-diffusion" / "zz-bad-shape.safetensors"))
    try:
        m = make_manager(TierBudget(models=1), TierBudget(models=0))
        a = m.get("tiny-a.safetensors")
        before = {k: v.clone() for k, v in a.vae.state_dict().items()}
        with pytest.raises(ModelError, match="conv_out.bias has shape"):
            m.get("zz-bad-shape.safetensors")
        assert names(m.loaded_titles()) == ["tiny-a.safetensors"]
        assert all(torch.equal(before[k], v) for k, v in m.get("tiny-a.safetensors").vae.state_dict().items())
    finally:
        (model_root / "models" / "Stable-diffusion" / "zz-bad-shape.safetensors").unlink()


# -- every kind of model in one cache ------------------------------------------------------------------


def fake_model(megabytes: float) -> torch.nn.Module:
    """A stand-in for an upscaler or ControlNet: a module of a known size."""
    return torch.nn.Linear(1, int(megabytes * 2**20 / 4), bias=False)


def get_fake(m, kind: str, key: str, megabytes: float):
    return m.get_model(kind, key, key, load=lambda: fake_model(megabytes), size=lambda v: tensor_bytes([v]),
                       move=lambda v, device: v.to(device))


def kinds(m, tier: str) -> list[tuple[str, str]]:
    return [(e.kind, e.title.split(" [")[0]) for e in m.cache.entries() if e.tier == tier]


def test_every_kind_shares_the_gigabyte_budget_least_recently_used_first(make_manager):
    probe = make_manager(TierBudget(models=None), TierBudget(models=0))
    checkpoint = model_bytes(probe.get("tiny-a.safetensors"))
    mb = checkpoint / 2**20
    # room on the device for the checkpoint and one model of its size, not two
    m = make_manager(TierBudget(models=1, gigabytes=2.5 * checkpoint / GB, others=None),
                     TierBudget(models=1, gigabytes=None, others=1))
    m.get("tiny-a.safetensors")
    get_fake(m, "upscaler", "up", mb)
    assert kinds(m, "device") == [("checkpoint", "tiny-a.safetensors"), ("upscaler", "up")]
    m.get("tiny-a.safetensors")  # now the upscaler is the least recently used
    get_fake(m, "controlnet", "cn", mb)
    assert kinds(m, "device") == [("checkpoint", "tiny-a.safetensors"), ("controlnet", "cn")]
    assert kinds(m, "ram") == [("upscaler", "up")]
    get_fake(m, "controlnet", "cn2", mb)  # the checkpoint is the oldest now: it leaves the device
    assert kinds(m, "device") == [("controlnet", "cn"), ("controlnet", "cn2")]
    assert kinds(m, "ram") == [("upscaler", "up"), ("checkpoint", "tiny-a.safetensors")]
    get_fake(m, "upscaler", "up2", mb)  # cn goes to RAM, where one model of another kind fits: up is dropped
    assert kinds(m, "ram") == [("checkpoint", "tiny-a.safetensors"), ("controlnet", "cn")]


def test_counts_per_kind_and_pins(make_manager):
    m = make_manager(TierBudget(models=1, others=2), TierBudget(models=0, others=0))
    model = m.get("tiny-a.safetensors")
    m.pin(model)
    for key in ("a", "b", "c"):
        get_fake(m, "upscaler", key, 0.01)
    assert kinds(m, "device") == [("checkpoint", "tiny-a.safetensors"), ("upscaler", "b"), ("upscaler", "c")]
    m.get("tiny-b.safetensors")  # one checkpoint on the device, but tiny-a is in use: both stay until it is free
    assert {k for k in kinds(m, "device") if k[0] == "checkpoint"} == {("checkpoint", "tiny-a.safetensors"),
                                                                       ("checkpoint", "tiny-b.safetensors")}
    m.unpin(model)
    m.get("tiny-b.safetensors")
    assert [k for k in kinds(m, "device") if k[0] == "checkpoint"] == [("checkpoint", "tiny-b.safetensors")]


def test_an_attached_vae_counts_in_its_checkpoints_size(easel):
    from safetensors.torch import save_file

    from tiny_models import build_tiny_sd

    other = build_tiny_sd(seed=7).vae
    save_file({k: v.contiguous() for k, v in other.state_dict().items()},
              str(easel.settings.models_dir / "VAE" / "extra.safetensors"))
    model = easel.load_model("tiny-a.safetensors")
    easel.manager.pin(model)
    easel.manager.unpin(model)
    (before,) = [e.size for e in easel.manager.cache.entries("checkpoint")]
    model = easel.load_model("tiny-a.safetensors", "extra.safetensors")
    easel.manager.pin(model)
    easel.manager.unpin(model)  # the job that attached it is done: the entry is measured again
    (after,) = [e.size for e in easel.manager.cache.entries("checkpoint")]
    assert after - before == tensor_bytes([other])
