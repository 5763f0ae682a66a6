"""The model manager's two-tier cache: LRU order, budgets in models and GB, memory really released."""
from __future__ import annotations

import gc
import weakref

import pytest
import torch

from webui.models.catalog import Catalog, HashCache
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
    m.get("tiny-b.safetensors")
    gc.collect()
    assert all(r() is None for r in refs), "an evicted model's modules are still referenced somewhere"
    assert m.cached_titles() == []
    m.get("tiny-a.safetensors")
    assert m.last_source == "disk"


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
