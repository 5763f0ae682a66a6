"""Live previews: latents -> RGB per family (cheap map, or TAESD from models/VAE-approx/), shown by the
API and under the UI's progress bar."""
from __future__ import annotations

import numpy as np
import torch

from webui.images.preview import Previewer, latent_preview
from webui.jobs.queue import Job, JobState
from webui.ui.widgets import progress_html


def test_each_family_maps_its_own_latent_space():
    latents = torch.zeros(1, 4, 8, 8)
    latents[0, 0] = 1.0  # only the first channel: the preview is that channel's colour row
    sd1 = np.asarray(latent_preview(latents, "sd1"), dtype=np.int16)
    xl = np.asarray(latent_preview(latents, "sdxl"), dtype=np.int16)
    assert sd1.shape == (8, 8, 3)
    assert tuple(sd1[0, 0]) == tuple(round((v + 1) / 2 * 255) for v in (0.298, 0.207, 0.208))
    assert tuple(xl[0, 0]) == tuple(round((w + b + 1) / 2 * 255) for w, b in
                                   zip((0.3651, 0.4232, 0.4341), (0.1084, -0.0175, -0.0011)))
    assert np.array_equal(np.asarray(latent_preview(latents, "sd2")), sd1)
    assert latent_preview(torch.zeros(1, 16, 8, 8)) is None and latent_preview(None) is None


def test_progress_shows_a_preview_only_while_running():
    job = Job(run=lambda j: None, description="txt2img", previewer=latent_preview)
    job.on_step(1, 10, torch.randn(1, 4, 8, 8))
    assert "easel-live-preview" not in progress_html(job)  # still queued
    job.state = JobState.RUNNING
    assert 'src="data:image/png;base64,' in progress_html(job)
    job.state = JobState.DONE
    assert "easel-live-preview" not in progress_html(job)


def test_taesd_from_models_vae_approx_gives_full_size_previews(tmp_path, caplog):
    import logging

    from diffusers import AutoencoderTiny

    torch.manual_seed(0)
    AutoencoderTiny(encoder_block_out_channels=(8, 8, 8, 8), decoder_block_out_channels=(8, 8, 8, 8)).save_pretrained(
        tmp_path / "taesd")
    previews = Previewer(tmp_path)
    latents = torch.randn(2, 4, 8, 8)
    sharp = previews.image(latents, "sd1")
    assert sharp.size == (64, 64)  # decoded to pixels: 8x the latent size, not the latent grid
    assert previews.image(latents, "sd2").size == (64, 64)  # SD2 shares SD1's latent space
    assert previews.image(latents, "sdxl").size == (8, 8)  # no taesdxl/ folder: the cheap map
    (tmp_path / "taesdxl").mkdir()
    (tmp_path / "taesdxl" / "config.json").write_text("{ not json")
    with caplog.at_level(logging.WARNING):
        assert previews.image(latents, "sdxl").size == (8, 8)
        previews.image(latents, "sdxl")
    assert caplog.text.count("not a usable TAESD folder") == 1  # reported once


def test_jobs_from_easel_use_its_previewer(easel):
    from webui.generation.requests import Txt2ImgRequest

    job = easel.submit("txt2img", Txt2ImgRequest(prompt="a cat", steps=2, width=64, height=64))
    job.wait()
    assert job.previewer == easel.previews.image
    assert (easel.settings.models_dir / "VAE-approx").is_dir()
