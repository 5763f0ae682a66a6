"""Model manager: listing, A1111 hashes, loading every form offline, hot-swap, bad files."""
from __future__ import annotations

import hashlib
import os
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from tiny_models import write_ckpt, write_safetensors
from webui.generation.requests import Txt2ImgRequest
from webui.models.catalog import Catalog, HashCache
from webui.models.errors import CheckpointNotFound, ModelError, UnsafeCheckpoint

FAST = dict(prompt="a red circle", steps=2, width=64, height=64, seed=7, sampler_name="Euler")


def pixels(result) -> np.ndarray:
    return np.asarray(result.images[0]).astype(np.int16)


def test_lists_all_three_forms_recursively(easel):
    names = [c.name for c in easel.manager.list() if not c.fallback]
    assert names == ["sub/tiny-a-ckpt.ckpt", "tiny-a-diffusers", "tiny-a.safetensors", "tiny-b.safetensors"]
    folder = next(c for c in easel.manager.list() if c.name == "tiny-a-diffusers")
    assert folder.is_diffusers_folder


def test_hashes_match_a1111_definitions(easel):
    info = easel.manager.catalog.find("tiny-a.safetensors")
    easel.manager.catalog.ensure_hash(info)
    data = info.path.read_bytes()
    assert len(data) > 0x110000, "the tiny file must be big enough for the legacy hash to read real bytes"
    assert info.sha256 == hashlib.sha256(data).hexdigest()
    assert info.shorthash == info.sha256[:10]
    assert info.legacy_hash == hashlib.sha256(data[0x100000:0x110000]).hexdigest()[:8]
    assert info.title == f"tiny-a.safetensors [{info.sha256[:10]}]"
    # every A1111 way of naming it resolves to it
    for alias in (info.title, info.name, "tiny-a", info.sha256, info.shorthash, info.legacy_hash):
        assert easel.manager.catalog.find(alias).path == info.path


def test_hash_cache_is_persistent_and_keyed_by_mtime(tmp_path, model_root):
    src = model_root / "models" / "Stable-diffusion" / "tiny-b.safetensors"
    folder = tmp_path / "ckpts"
    folder.mkdir()
    shutil.copy(src, folder / "m.safetensors")
    cache_file = tmp_path / "hashes.json"
    catalog = Catalog([folder], HashCache(cache_file))
    info = catalog.ensure_hash(catalog.items()[0])
    assert cache_file.is_file() and info.sha256 in cache_file.read_text()
    # a new catalog sees the hash without hashing (title carries it straight away)
    again = Catalog([folder], HashCache(cache_file)).items()[0]
    assert again.sha256 == info.sha256
    # the file changes: the cached hash no longer applies
    with open(folder / "m.safetensors", "r+b") as f:
        f.seek(0x100100)
        f.write(b"\x01\x02\x03")
    os.utime(folder / "m.safetensors", ns=(1, 1))
    changed = Catalog([folder], HashCache(cache_file)).items()[0]
    assert changed.sha256 is None


@pytest.mark.parametrize("name", ["tiny-a.safetensors", "sub/tiny-a-ckpt.ckpt", "tiny-a-diffusers"])
def test_every_form_loads_offline_and_gives_the_same_image(easel, name):
    reference = easel.engine.txt2img(easel.load_model("tiny-a.safetensors"), Txt2ImgRequest(**FAST))
    result = easel.engine.txt2img(easel.load_model(name), Txt2ImgRequest(**FAST))
    assert np.abs(pixels(result) - pixels(reference)).max() <= 1


def test_sizes_come_from_the_tensors(easel):
    model = easel.load_model("tiny-a.safetensors")
    assert tuple(model.unet.config.block_out_channels) == (32, 64)
    assert model.unet.config.layers_per_block == 1
    assert model.unet.config.cross_attention_dim == 32
    assert model.text_encoder.config.num_hidden_layers == 2
    assert tuple(model.vae.config.block_out_channels) == (32, 32, 64)
    assert model.default_size == (64, 64)  # from the file's modelspec.resolution


def test_old_text_encoder_key_names_load(tmp_path, tiny_a, easel):
    path = write_ckpt(tiny_a, tmp_path / "old" / "old-keys.ckpt", old_clip_keys=True)
    easel.manager.catalog.roots.append(path.parent)
    easel.manager.refresh()
    old = easel.engine.txt2img(easel.load_model("old-keys.ckpt"), Txt2ImgRequest(**FAST))
    new = easel.engine.txt2img(easel.load_model("tiny-a.safetensors"), Txt2ImgRequest(**FAST))
    assert np.abs(pixels(old) - pixels(new)).max() <= 1


def test_hot_swap_changes_the_output(easel):
    a = easel.engine.txt2img(easel.load_model("tiny-a.safetensors"), Txt2ImgRequest(**FAST))
    b = easel.engine.txt2img(easel.load_model("tiny-b.safetensors"), Txt2ImgRequest(**FAST))
    assert easel.manager.loaded_titles() == [easel.manager.catalog.find("tiny-b.safetensors").title]
    assert np.abs(pixels(a) - pixels(b)).mean() > 1
    assert "Model: tiny-b" in b.infotexts[0]


def _bad_files(folder: Path, good: Path) -> dict[str, Path]:
    truncated = folder / "truncated.safetensors"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    text = folder / "notes.safetensors"
    text.write_text("this is not a checkpoint")
    other = folder / "other.safetensors"
    from safetensors.torch import save_file
    save_file({"foo.weight": torch.zeros(3)}, str(other))
    return {"truncated": truncated, "not a checkpoint": text, "unknown layout": other}


def test_bad_files_give_clear_errors_and_keep_the_previous_model(tmp_path, easel, model_root):
    good = model_root / "models" / "Stable-diffusion" / "tiny-a.safetensors"
    bad_dir = tmp_path / "bad"
    bad_dir.mkdir()
    bad = _bad_files(bad_dir, good)
    easel.manager.catalog.roots.append(bad_dir)
    easel.manager.refresh()
    before = easel.engine.txt2img(easel.load_model("tiny-a.safetensors"), Txt2ImgRequest(**FAST))
    for path in bad.values():
        with pytest.raises(ModelError) as err:
            easel.load_model(path.name)
        assert path.name in str(err.value)
    assert "truncated" in str(easel_error(easel, "truncated.safetensors"))
    assert "unknown layout" in str(easel_error(easel, "other.safetensors"))
    current = easel.manager.current
    assert current is not None and current.info.name == "tiny-a.safetensors"
    after = easel.engine.txt2img(current, Txt2ImgRequest(**FAST))
    assert np.array_equal(pixels(before), pixels(after))


def easel_error(easel, name: str) -> ModelError:
    try:
        easel.load_model(name)
    except ModelError as e:
        return e
    raise AssertionError(f"{name} loaded")


class _RunsCode:
    """Unpickling this calls os.system: the attack a malicious .ckpt carries."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_pickle_that_runs_code_is_refused_and_never_runs(tmp_path, easel, tiny_a):
    marker = tmp_path / "pwned"
    evil_dir = tmp_path / "evil"
    evil = write_ckpt(tiny_a, evil_dir / "evil.ckpt")
    sd = torch.load(evil, weights_only=True)
    sd["payload"] = _RunsCode(marker)
    torch.save(sd, evil, pickle_protocol=pickle.DEFAULT_PROTOCOL)
    easel.manager.catalog.roots.append(evil_dir)
    easel.manager.refresh()
    easel.load_model("tiny-a.safetensors")
    with pytest.raises(UnsafeCheckpoint) as err:
        easel.load_model("evil.ckpt")
    assert "evil.ckpt" in str(err.value) and "refused" in str(err.value)
    assert not marker.exists()
    assert easel.manager.current.info.name == "tiny-a.safetensors"


def test_unknown_checkpoint_name_lists_what_exists(easel):
    with pytest.raises(CheckpointNotFound) as err:
        easel.load_model("does-not-exist")
    assert "tiny-a.safetensors" in str(err.value)


def test_refresh_finds_a_new_file(easel, tmp_path, tiny_a):
    folder = tmp_path / "drop"
    folder.mkdir()
    easel.manager.catalog.roots.append(folder)
    easel.manager.refresh()
    assert not any(c.name == "new.safetensors" for c in easel.manager.list())
    write_safetensors(tiny_a, folder / "new.safetensors")
    easel.manager.refresh()
    assert any(c.name == "new.safetensors" for c in easel.manager.list())


def test_the_shipped_demo_model_stays_available_with_another_data_dir(tmp_path, model_root):
    """A Colab Drive or LAN-share --data-dir has its own (maybe empty) models folder; the demo model Easel
    ships is still listed as the fallback, and only chosen when the data dir has no checkpoint."""
    from webui.models.manager import DEMO_CHECKPOINT
    from webui.services import Easel
    from webui.settings import SHIPPED_DEMO, settings_from_args

    empty = Easel.create(settings_from_args(["--data-dir", str(tmp_path / "drive"), "--device", "cpu"]))
    try:
        listed = empty.manager.list()
        assert [c.name for c in listed] == [DEMO_CHECKPOINT] and listed[0].path == SHIPPED_DEMO
        assert empty.manager.default_checkpoint().fallback
        assert empty.load_model(None).info.path == SHIPPED_DEMO
    finally:
        empty.close()
    own = tmp_path / "share"
    (own / "models" / "Stable-diffusion").mkdir(parents=True)
    shutil.copy(model_root / "models" / "Stable-diffusion" / "tiny-b.safetensors", own / "models" / "Stable-diffusion")
    mine = Easel.create(settings_from_args(["--data-dir", str(own), "--device", "cpu"]))
    try:
        assert [c.name for c in mine.manager.list()] == ["tiny-b.safetensors", DEMO_CHECKPOINT]
        assert mine.manager.default_checkpoint().name == "tiny-b.safetensors"
    finally:
        mine.close()
