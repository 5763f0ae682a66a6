"""The txt2img core: reproducibility, seeds, batches, samplers, validation, interrupt, prompt syntax effects."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from sinks import Recorder
from webui.generation.engine import Engine
from webui.generation.requests import Txt2ImgRequest, describe_validation_error
from webui.generation.samplers import SAMPLERS, resolve_sampler
from webui.images.infotext import parse_infotext

BASE = dict(prompt="a red circle", steps=3, width=64, height=64, sampler_name="Euler", cfg_scale=5)


@pytest.fixture()
def model(easel):
    return easel.load_model("tiny-a.safetensors")


def arr(image) -> np.ndarray:
    return np.asarray(image).astype(np.int16)


def run(easel, model, **kw):
    return easel.engine.txt2img(model, Txt2ImgRequest(**{**BASE, **kw}))


def test_same_seed_same_pixels_other_seed_other_pixels(easel, model):
    a = run(easel, model, seed=42)
    b = run(easel, model, seed=42)
    c = run(easel, model, seed=43)
    assert np.array_equal(arr(a.images[0]), arr(b.images[0]))
    assert np.abs(arr(a.images[0]) - arr(c.images[0])).mean() > 0.5


def test_random_seed_is_picked_and_reported(easel, model):
    r = run(easel, model, seed=-1)
    assert r.seeds[0] >= 0 and r.request.seed == r.seeds[0]
    assert f"Seed: {r.seeds[0]}," in r.infotexts[0]
    again = run(easel, model, seed=r.seeds[0])
    assert np.array_equal(arr(r.images[0]), arr(again.images[0]))


def test_batch_image_k_equals_single_image_with_seed_plus_k(easel, model):
    batch = run(easel, model, seed=100, batch_size=2, n_iter=2, sampler_name="Euler a")
    assert batch.seeds == [100, 101, 102, 103]
    assert len(batch.images) == 4
    single = run(easel, model, seed=103, sampler_name="Euler a")
    assert np.abs(arr(batch.images[3]) - arr(single.images[0])).max() <= 2


def test_variation_seed_moves_the_image_gradually(easel, model):
    base = arr(run(easel, model, seed=5).images[0])
    little = arr(run(easel, model, seed=5, subseed=9, subseed_strength=0.1).images[0])
    much = arr(run(easel, model, seed=5, subseed=9, subseed_strength=0.9).images[0])
    assert 0 < np.abs(base - little).mean() < np.abs(base - much).mean()
    r = run(easel, model, seed=5, subseed=9, subseed_strength=0.5)
    info = parse_infotext(r.infotexts[0])
    assert info["Variation seed"] == "9" and info["Variation seed strength"] == "0.5"


def diffusers_reference(model, sampler_name: str, steps: int, seed: int, cfg: float, prompt: str) -> np.ndarray:
    """The same sampling done by diffusers' own StableDiffusionPipeline on the same modules: the scheduler
    Easel builds for the sampler name, Easel's conditioning, its per-seed noise and the generator that
    drew it (ancestral and SDE samplers keep drawing from it)."""
    from diffusers import StableDiffusionPipeline

    from webui.generation.conditioning import ScheduledConditioning
    from webui.generation.noise import image_noise
    from webui.generation.samplers import build_scheduler

    sampler, schedule = resolve_sampler(sampler_name, "Automatic")
    scheduler = build_scheduler(sampler, schedule, model.scheduler_config)
    if "noise_sampler_seed" in scheduler.config:
        scheduler.register_to_config(noise_sampler_seed=seed)
    pipe = StableDiffusionPipeline(vae=model.vae, text_encoder=model.text_encoder, tokenizer=model.tokenizer,
                                   unet=model.unet, scheduler=scheduler, safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)
    encoder = Engine().prompt_encoder(model, 1)
    cond = ScheduledConditioning(encoder, [prompt], steps).at(0)
    uncond = ScheduledConditioning(encoder, [""], steps, negative=True).at(0)
    noise, generator = image_noise((1, 4, 16, 16), seed, 0, 0.0)
    out = pipe(prompt_embeds=cond, negative_prompt_embeds=uncond, num_inference_steps=steps, guidance_scale=cfg,
               height=64, width=64, latents=noise, generator=generator, output_type="np").images[0]
    return (out * 255).round().astype(np.int16)


@pytest.mark.parametrize("sampler", [s.name for s in SAMPLERS])
def test_every_sampler_matches_diffusers_own_loop(easel, model, sampler):
    steps = 3 if sampler in ("PLMS", "Heun", "DPM2", "DPM2 a") else 2
    r = run(easel, model, seed=1, sampler_name=sampler, steps=steps)
    assert f"Sampler: {sampler}," in r.infotexts[0]
    reference = diffusers_reference(model, sampler, steps, 1, BASE["cfg_scale"], BASE["prompt"])
    assert np.abs(arr(r.images[0]) - reference).max() <= 2, sampler
    other = run(easel, model, seed=2, sampler_name=sampler, steps=steps)
    assert np.abs(arr(other.images[0]) - reference).mean() > 0.5  # (the comparison can tell seeds apart)


def test_schedule_types_change_the_sigmas(easel, model):
    plain = run(easel, model, seed=3, sampler_name="DPM++ 2M", scheduler="Uniform")
    karras = run(easel, model, seed=3, sampler_name="DPM++ 2M", scheduler="Karras")
    assert "Schedule type: Karras" in karras.infotexts[0]
    assert np.abs(arr(plain.images[0]) - arr(karras.images[0])).mean() > 0.1


def test_old_combined_sampler_names_are_accepted():
    sampler, schedule = resolve_sampler("DPM++ 2M Karras", "Automatic")
    assert (sampler.name, schedule) == ("DPM++ 2M", "Karras")
    req = Txt2ImgRequest(sampler_name="k_euler_a")
    assert req.sampler_name == "Euler a"


@pytest.mark.parametrize("field,value,words", [
    ("width", 100, "multiple of 8"),
    ("height", 4104, "between 64 and 4096"),
    ("steps", 0, "greater than or equal to 1"),
    ("steps", 501, "less than or equal to 500"),
    ("batch_size", 64, "less than or equal"),
    ("sampler_name", "Nonsense", "unknown sampler"),
    ("scheduler", "Sideways", "unknown schedule type"),
    ("cfg_scale", -1, "greater than or equal"),
])
def test_invalid_requests_name_the_field(field, value, words):
    with pytest.raises(ValidationError) as err:
        Txt2ImgRequest(**{field: value})
    message = describe_validation_error(err.value)
    assert message.startswith(f"{field}:") or f"{field}:" in message
    assert words in message


def test_cfg_changes_the_image_and_cfg_1_skips_the_negative(easel, model):
    low = arr(run(easel, model, seed=2, cfg_scale=1).images[0])
    high = arr(run(easel, model, seed=2, cfg_scale=9).images[0])
    assert np.abs(low - high).mean() > 0.5
    neg_a = arr(run(easel, model, seed=2, cfg_scale=1, negative_prompt="blue").images[0])
    assert np.array_equal(low, neg_a)  # at CFG 1 the negative prompt has no effect, as in A1111


def test_prompt_weights_change_the_image_and_escaped_brackets_are_plain_text(easel, model):
    plain = arr(run(easel, model, seed=4, prompt="red circle").images[0])
    weighted = arr(run(easel, model, seed=4, prompt="(red:1.8) circle").images[0])
    assert np.abs(plain - weighted).mean() > 0.1
    # `\(red:1.8\)` is the text "(red:1.8)" at weight 1: not the weighting, and exactly that text
    escaped = run(easel, model, seed=4, prompt="\\(red:1.8\\) circle")
    assert np.abs(arr(escaped.images[0]) - weighted).mean() > 0.1
    encoder = easel.engine.prompt_encoder(model, 1)
    chunk = encoder.chunks("\\(red:1.8\\) circle")[0]
    assert chunk.weights == [1.0] * len(chunk.tokens)
    assert chunk.tokens == encoder.tokenize_fragments(["(red:1.8) circle"])[0]
    assert not np.array_equal(arr(escaped.images[0]), plain)


def test_progress_is_reported_per_step(easel, model):
    rec = Recorder()
    easel.engine.txt2img(model, Txt2ImgRequest(**{**BASE, "steps": 4, "n_iter": 2}), rec)
    assert rec.steps == [(1, 8), (2, 8), (3, 8), (4, 8), (5, 8), (6, 8), (7, 8), (8, 8)]


def test_interrupt_stops_and_keeps_finished_images(easel, model):
    rec = Recorder(stop_after=6)  # stop in the middle of the second of three batches
    r = easel.engine.txt2img(model, Txt2ImgRequest(**{**BASE, "steps": 4, "n_iter": 3}), rec)
    assert r.interrupted
    assert len(r.images) == 1
    assert len(rec.steps) == 6


def test_prompt_editing_switches_conditioning_mid_run(easel, model):
    """`[red:blue:2]` differs from both plain prompts (the exact step of the switch is checked on the UNet's
    inputs in test_extensions.py::test_the_prompt_schedule_switches_at_a1111s_step)."""
    edit = arr(run(easel, model, seed=8, steps=4, prompt="a [red:blue:2] circle").images[0])
    red = arr(run(easel, model, seed=8, steps=4, prompt="a red circle").images[0])
    blue = arr(run(easel, model, seed=8, steps=4, prompt="a blue circle").images[0])
    assert not np.array_equal(edit, red) and not np.array_equal(edit, blue)
    late = arr(run(easel, model, seed=8, steps=4, prompt="a [red:blue:10] circle").images[0])
    assert np.array_equal(late, red)  # a switch after the last step never happens


def test_infotext_describes_the_run(easel, model):
    r = run(easel, model, seed=11, prompt="a, b: c", negative_prompt="ugly", clip_skip=2)
    info = parse_infotext(r.infotexts[0])
    assert info["Prompt"] == "a, b: c"
    assert info["Negative prompt"] == "ugly"
    assert info["Steps"] == "3" and info["Sampler"] == "Euler" and info["CFG scale"] == "5"
    assert info["Seed"] == "11" and info["Size-1"] == 64 and info["Size-2"] == 64
    assert info["Model"] == "tiny-a" and info["Model hash"] == model.info.shorthash
    assert info["Clip skip"] == "2"


def test_clip_skip_changes_the_conditioning(easel, model):
    one = arr(run(easel, model, seed=12).images[0])
    two = arr(run(easel, model, seed=12, clip_skip=2).images[0])
    assert np.abs(one - two).mean() > 0.1


def test_no_gradients_and_no_state_left_between_runs(easel, model):
    run(easel, model, seed=1)
    assert not any(p.requires_grad for p in model.unet.parameters())
    assert torch.is_grad_enabled()


def test_nans_stop_the_job_with_the_cause_and_the_remedy(easel, tmp_path):
    """A UNet (or VAE) that produces NaNs would give a black picture; Easel stops and says why, as A1111
    does, unless --disable-nan-check."""
    from tiny_models import build_tiny_sd, write_safetensors

    from webui.generation.errors import GenerationError
    from webui.jobs.queue import JobState

    folder = easel.settings.checkpoint_dirs[0]
    broken_unet, broken_vae = build_tiny_sd(seed=0), build_tiny_sd(seed=0)
    with torch.no_grad():
        broken_unet.unet.conv_out.bias.fill_(float("nan"))
        broken_vae.vae.decoder.conv_out.bias.fill_(float("nan"))
    write_safetensors(broken_unet, folder / "nan-unet.safetensors", metadata={"modelspec.resolution": "64x64"})
    write_safetensors(broken_vae, folder / "nan-vae.safetensors", metadata={"modelspec.resolution": "64x64"})
    easel.refresh()
    job = easel.submit("txt2img", Txt2ImgRequest(**BASE, seed=1, checkpoint="nan-unet.safetensors"), "me", save=False)
    assert job.wait(60) and job.state is JobState.FAILED
    assert "UNet produced NaNs" in job.error and "--no-half" in job.error and "--disable-nan-check" in job.error
    assert issubclass(job.error_type, GenerationError)
    with pytest.raises(GenerationError, match="VAE produced NaNs .* choose another VAE"):
        run(easel, easel.load_model("nan-vae.safetensors"), seed=1)
    unchecked = Engine(features=easel.engine.features, nan_check=False)
    black = unchecked.txt2img(easel.load_model("nan-unet.safetensors"), Txt2ImgRequest(**BASE, seed=1))
    assert arr(black.images[0]).max() == 0  # what --disable-nan-check gives: A1111's black picture
