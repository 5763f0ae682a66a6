"""Shared fixtures: tiny checkpoints on disk in every supported form, and an Easel built on them."""
from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
os.environ["HF_HUB_OFFLINE"] = "1"

import torch  # noqa: E402

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

import webui  # noqa: E402,F401
from spandrel_here import import_spandrel  # noqa: E402

import_spandrel()  # before Easel asks whether it can (see tests/spandrel_here.py)
from tiny_models import build_tiny_sd, write_ckpt, write_diffusers_folder, write_safetensors  # noqa: E402


@pytest.fixture(scope="session")
def tiny_a():
    return build_tiny_sd(seed=0)


@pytest.fixture(scope="session")
def model_root(tmp_path_factory, tiny_a) -> Path:
    """A data dir whose models/Stable-diffusion holds the tiny model as .safetensors, .ckpt and a folder,
    plus a second, different model to swap to."""
    root = tmp_path_factory.mktemp("easel-data")
    sd_dir = root / "models" / "Stable-diffusion"
    write_safetensors(tiny_a, sd_dir / "tiny-a.safetensors", metadata={"modelspec.resolution": "64x64"})
    write_ckpt(tiny_a, sd_dir / "sub" / "tiny-a-ckpt.ckpt")
    write_diffusers_folder(tiny_a, sd_dir / "tiny-a-diffusers")
    write_safetensors(build_tiny_sd(seed=1), sd_dir / "tiny-b.safetensors", metadata={"modelspec.resolution": "64x64"})
    return root


@pytest.fixture()
def easel(model_root, tmp_path):
    """An Easel over the tiny models, with its own outputs and cache folders."""
    from webui.services import Easel
    from webui.settings import settings_from_args

    settings = settings_from_args(["--data-dir", str(tmp_path), "--ckpt-dir", str(model_root / "models" / "Stable-diffusion"),
                                   "--device", "cpu"])
    app = Easel.create(settings)
    yield app
    app.close()
