"""The generation engine: the staged pipeline every job kind runs. Knows nothing of Gradio or HTTP.

    prepare ─▶ per batch: before_batch ─▶ sample ─▶ further passes ─▶ decode ─▶ postprocess ─▶ infotext
                                          │ per step: unet_inputs ─▶ UNet ─▶ guidance ─▶ scheduler ─▶ after_step

At every ─▶ the engine calls the active features registered on that point
(webui/generation/extension_points.py); classifier-free guidance, img2img, inpainting-model input and
latent blending are such features themselves (webui/generation/builtins.py). The loop's own work is
what no feature can do for it: asking a diffusers scheduler for the timesteps, drawing the noise,
picking the conditioning of the step (prompt editing, alternation), calling the UNet, reporting
progress and stopping when told to. Saving is the image store's (webui/images/store.py).

A job that names a `script_name` is run by that script instead, which makes its generations
through the same pipeline.
"""
from __future__ import annotations

import inspect
import logging
import time
from typing import Callable

import torch

from webui import __version__
from webui.images.infotext import create_infotext
from webui.models.embeddings import Embedding, EmbeddingLibrary
from webui.models.loader import LoadedModel
from webui.models.lora import LoraFile, LoraLibrary, activate_loras, extract_lora_tags

from . import masks as M
from .builtins import img2img_size, prepare_img2img, register_builtins
from .conditioning import DualPromptEncoder, PromptEncoder, ScheduledConditioning
from .extension_points import Batch, FeatureRegistry, Guidance, Output, Run, ScriptContext, Step, UnetCall
from .fields import infotext_params
from .latents import InitLatents, check_unet_output, encode_images, latents_to_images
from .noise import image_noise, pick_seed
from .progress import NullProgress, ProgressSink, yield_turn
from .result import GenerationResult
from .requests import GenerationParams, Img2ImgRequest, Txt2ImgRequest
from .samplers import build_scheduler, resolve_sampler

log = logging.getLogger(__name__)

# (checkpoint, vae) -> the loaded model; lets the engine get its model back after others had a turn,
# and scripts load the checkpoints their generations name
ModelSource = Callable[[str | None, str | None], LoadedModel]

__all__ = ["Engine", "GenerationResult", "InitLatents", "img2img_size", "prepare_img2img", "encode_images",
           "latents_to_images", "resolve_request", "sdxl_added_conditioning"]


def resolve_request(req: GenerationParams, model: LoadedModel, size: tuple[int, int] | None = None):
    """The request with everything left to Easel decided: seeds, size, canonical sampler names."""
    width, height = size or model.default_size
    return req.model_copy(update={
        "seed": pick_seed(req.seed),
        "subseed": pick_seed(req.subseed),
        "width": req.width or width,
        "height": req.height or height,
    })


def denoise_steps(steps: int, strength: float) -> int:
    """How many of `steps` an img2img pass at `strength` runs (A1111's count)."""
    return steps if strength >= 1.0 else min(steps, max(1, int(steps * strength)))


def sdxl_time_ids(model: LoadedModel, width: int, height: int, rows: int) -> torch.Tensor | None:
    """SDXL's size/crop numbers (original size, crop top-left, target size): the picture's own size
    with no crop, as A1111 does; None for models without them."""
    if model.unet.config.addition_embed_type != "text_time":
        return None
    ids = torch.tensor([[height, width, 0, 0, height, width]], dtype=torch.float32)
    return ids.repeat(rows, 1).to(model.device, model.dtype)


def sdxl_added_conditioning(model: LoadedModel, req: GenerationParams, cond: ScheduledConditioning,
                            uncond: ScheduledConditioning | None, step: int,
                            time_ids: torch.Tensor | None = None) -> dict | None:
    """SDXL's extra UNet inputs at `step`: the pooled text embedding and the size ids (built here
    unless the caller built them once for the whole pass)."""
    if model.unet.config.addition_embed_type != "text_time":
        return None
    pooled = cond.pooled_at(step)
    if uncond is not None:
        pooled = torch.cat([uncond.pooled_at(step), pooled])
    if time_ids is None:
        time_ids = sdxl_time_ids(model, req.width, req.height, pooled.shape[0])
    return {"text_embeds": pooled.to(model.device, model.dtype), "time_ids": time_ids}


def prompt_encoder_for(model: LoadedModel, clip_skip: int,
                       embeddings: dict[str, Embedding]) -> PromptEncoder | DualPromptEncoder:
    """The model's prompt encoder (both of SDXL's side by side) knowing `embeddings` by name; generation
    passes the library, textual-inversion training the one embedding it trains."""
    if model.text_encoder_2 is None:
        return PromptEncoder(model.tokenizer, model.text_encoder, clip_skip, embeddings=embeddings,
                             device=model.device)
    # SDXL: an embedding is usable only with vectors for both encoders (clip_l and clip_g), or
    # the two would chunk the prompt differently
    widths = (model.text_encoder.config.hidden_size, model.text_encoder_2.config.hidden_size)
    both = {n: e for n, e in embeddings.items() if all(e.for_width(w) is not None for w in widths)}
    return DualPromptEncoder(
        PromptEncoder(model.tokenizer, model.text_encoder, clip_skip, embeddings=both, layer="penultimate",
                      device=model.device),
        PromptEncoder(model.tokenizer_2, model.text_encoder_2, clip_skip, embeddings=both, layer="penultimate",
                      device=model.device),
    )


class Engine:
    """Holds no model: every call gets the model and request it works on. The embeddings library is
    shared (read-only here) so prompts can name textual-inversion embeddings; the feature registry
    holds what runs on the extension points."""

    def __init__(self, embeddings: EmbeddingLibrary | None = None, loras: LoraLibrary | None = None,
                 features: FeatureRegistry | None = None, nan_check: bool = True):
        self.embeddings = embeddings
        self.loras = loras
        self.features = features if features is not None else register_builtins(FeatureRegistry())
        self.nan_check = nan_check

    def prompt_encoder(self, model: LoadedModel, clip_skip: int) -> PromptEncoder | DualPromptEncoder:
        library = self.embeddings.snapshot() if self.embeddings is not None else {}
        return prompt_encoder_for(model, clip_skip, library)

    # -- job kinds -------------------------------------------------------------------------------
    def txt2img(self, model: LoadedModel, req: Txt2ImgRequest, progress: ProgressSink | None = None,
                models: ModelSource | None = None) -> GenerationResult:
        return self.generate(model, req, progress, models)

    def img2img(self, model: LoadedModel, req: Img2ImgRequest, progress: ProgressSink | None = None,
                models: ModelSource | None = None) -> GenerationResult:
        return self.generate(model, req, progress, models)

    def generate(self, model: LoadedModel, req: GenerationParams, progress: ProgressSink | None = None,
                 models: ModelSource | None = None) -> GenerationResult:
        """Run one request (txt2img, or img2img/inpainting for an Img2ImgRequest) through the stages,
        or through its script. `models` loads a checkpoint by name (scripts; and the model is taken
        again from it after other jobs had a turn)."""
        progress = progress or NullProgress()
        req = self.features.validate(req)
        if req.script_name:
            return self._run_script(model, req, progress, models)
        run = self._prepare(model, req, progress, models)
        return self._generate(run, models)

    def _run_script(self, model: LoadedModel, req: GenerationParams, progress: ProgressSink,
                    models: ModelSource | None) -> GenerationResult:
        script = self.features.find_script(req.script_name)
        plain = req.model_copy(update={"script_name": None, "script_args": []})

        def generate(request: GenerationParams, sink: ProgressSink) -> GenerationResult:
            use = models(request.checkpoint, request.vae) if models is not None else model
            return self.generate(use, request, sink, models)

        started = time.perf_counter()
        result = script.run(ScriptContext(generate, progress), plain, req.script_args)
        result.seconds = result.seconds or time.perf_counter() - started
        return result

    # -- stages -----------------------------------------------------------------------------------
    def _prepare(self, model: LoadedModel, req: GenerationParams, progress: ProgressSink,
                 models: ModelSource | None) -> Run:
        """prepare: size, seeds and sampler resolved, the active features chosen and prepared."""
        if isinstance(req, Img2ImgRequest):
            size = img2img_size(req, M.to_rgb(req.init_image))
            req = req.model_copy(update={"width": size[0], "height": size[1]})
        req = resolve_request(req, model)
        total = req.total_images
        run = Run(model, req, progress, features=[], settings=dict(req.alwayson_scripts),
                  prompts=[req.prompt] * total, negative_prompts=[req.negative_prompt] * total,
                  options=dict(req.override_settings))
        run.sampler = self._sample
        run.decoder = lambda latents, model=None: latents_to_images(model or run.model, latents, self.nan_check)
        run.encoder = lambda images, model=None: encode_images(model or run.model, images)
        run.conditioner = lambda *args: self._conditioning(run, *args)[:2]
        run.models = models
        run.features = [f for f in self.features.features if f.active(run)]
        for feature in run.features:
            feature.prepare(run)
        if len(run.prompts) != total or len(run.negative_prompts) != total:
            raise RuntimeError(f"a feature left {len(run.prompts)} prompts for {total} images")
        strength = getattr(req, "denoising_strength", 1.0)
        first = denoise_steps(req.steps, strength) if isinstance(req, Img2ImgRequest) else req.steps
        run.state["steps_total"] = req.n_iter * (first + sum(f.pass_steps(run) for f in run.features))
        run.state["steps_done"] = 0
        return run

    def _generate(self, run: Run, models: ModelSource | None) -> GenerationResult:
        started = time.perf_counter()
        req, progress = run.request, run.progress
        result = GenerationResult([], [], [], [], req, extra={"inpainting_conditioning": run.model.family.inpainting})
        unchanged = isinstance(req, Img2ImgRequest) and req.denoising_strength == 0
        for n in range(req.n_iter):
            if n > 0:
                yield_turn(progress)  # others may run a job here
                if models is not None:  # ... or a pass used another checkpoint: take ours back (a no-op if here)
                    run.model = models(req.checkpoint, req.vae)
            if progress.should_stop():
                result.interrupted = True
                break
            batch = self._batch(run, n)
            for feature in run.features:
                feature.before_batch(run, batch)
            loras, encoder = [], None
            if unchanged:  # nothing to denoise: the (resized) input itself
                images = [run.init.prepared.work_image.copy() for _ in batch.seeds]
            else:
                batch.cond, batch.uncond, loras, encoder = self._conditioning(
                    run, batch.prompts, batch.negative_prompts, req.steps, None, run.model)
                latents = self._sample(run, batch, batch.start)
                for feature in run.features:  # further passes; None from a hook means "no change"
                    if latents is None or progress.should_stop():
                        break
                    changed = feature.further_pass(run, batch, latents)
                    latents = changed if changed is not None else latents
                if latents is None or progress.should_stop():
                    result.interrupted = True
                    break
                progress.set_stage("decoding")
                images = run.decode(latents, batch.model)
            outputs = [Output(im, s, ss, p, np_) for im, s, ss, p, np_ in
                       zip(images, batch.seeds, batch.subseeds, batch.prompts, batch.negative_prompts)]
            for feature in run.features:
                feature.postprocess(run, batch, outputs)
            hashes = self._hashes(encoder, loras)
            for out in outputs:
                result.images.append(out.image)
                result.infotexts.append(self._infotext(run, out, hashes))
                result.seeds.append(out.seed)
                result.subseeds.append(out.subseed)
                result.prompts.append(out.prompt)
                result.negative_prompts.append(out.negative_prompt)
        result.seconds = time.perf_counter() - started
        return result

    def _batch(self, run: Run, n: int) -> Batch:
        req, model = run.request, run.model
        size = req.batch_size
        seeds = [req.seed + n * size + i for i in range(size)]
        subseeds = [req.subseed + n * size + i for i in range(size)]
        shape = (1, model.latent_channels, req.height // model.vae_scale_factor, req.width // model.vae_scale_factor)
        noises, generators = zip(*(image_noise(shape, s, ss, req.subseed_strength) for s, ss in zip(seeds, subseeds)))
        noise = torch.cat(noises).to(device=model.device, dtype=torch.float32)
        part = slice(n * size, (n + 1) * size)
        return Batch(n, seeds, subseeds, run.prompts[part], run.negative_prompts[part], noise, list(generators))

    def _conditioning(self, run: Run, prompts: list[str], negatives: list[str], steps: int,
                      hires_steps: int | None, model: LoadedModel) -> tuple:
        """(cond, uncond, LoRA files, encoder) for prompts on `model`: their LoRAs switched on and their
        per-step conditioning (prompt editing counts through a hires pass when `hires_steps` is given)."""
        plain, plain_negatives, uses = [], [], []
        for text, negative in zip(prompts, negatives):
            stripped, found = extract_lora_tags(text)
            plain.append(stripped)
            plain_negatives.append(extract_lora_tags(negative, "negative_prompt")[0])
            uses.extend(u for u in found if all(u.name != seen.name for seen in uses))  # one per name
        loras = activate_loras(model, self.loras, uses) if self.loras is not None else []
        encoders = run.state.setdefault("encoders", {})
        key = (id(model), id(model.unet), tuple((u.name, u.weight) for u in uses))
        if key not in encoders:
            if len(encoders) > 2:  # conditioning made with other LoRAs or another model is not reused
                encoders.clear()
            encoders[key] = self.prompt_encoder(model, run.request.clip_skip)
        encoder = encoders[key]
        cond = ScheduledConditioning(encoder, plain, steps, hires_steps=hires_steps)
        uncond = ScheduledConditioning(encoder, plain_negatives, steps, negative=True, hires_steps=hires_steps)
        return cond, uncond, loras, encoder

    @torch.no_grad()
    def _sample(self, run: Run, batch: Batch, start: InitLatents | None = None, *, steps: int | None = None,
                sampler_name: str | None = None, scheduler: str | None = None, width: int | None = None,
                height: int | None = None, pass_name: str = "first", noise: torch.Tensor | None = None,
                cond: ScheduledConditioning | None = None, uncond: ScheduledConditioning | None = None,
                model: LoadedModel | None = None) -> torch.Tensor | None:
        """Denoise one batch (one pass); returns the final latents, or None when told to stop. A further
        pass may change the steps, sampler, size, noise, conditioning and even the model."""
        req, progress = run.request, run.progress
        model = model or run.model
        device, dtype = model.device, model.dtype
        steps = steps or req.steps
        width, height = width or req.width, height or req.height
        sampler, schedule = resolve_sampler(sampler_name or req.sampler_name, scheduler or req.scheduler)
        sched = build_scheduler(sampler, schedule, model.scheduler_config)
        if "noise_sampler_seed" in sched.config:
            sched.register_to_config(noise_sampler_seed=batch.seeds[0])
        sched.set_timesteps(steps, device=device)
        if noise is None:
            noise = batch.noise
            shape = (model.latent_channels, height // model.vae_scale_factor, width // model.vae_scale_factor)
            if tuple(noise.shape[1:]) != shape:  # another size than the first pass: fresh noise, same seeds
                noise = torch.cat([torch.randn((1, *shape), generator=g) for g in batch.generators])
        noise = noise.to(device=device, dtype=torch.float32)
        timesteps = sched.timesteps
        if start is not None and start.strength < 1.0:
            order = getattr(sched, "order", 1)
            t_start = steps - denoise_steps(steps, start.strength)
            timesteps = timesteps[t_start * order:]
            if hasattr(sched, "set_begin_index"):
                sched.set_begin_index(t_start * order)
            latents = sched.add_noise(start.latents, noise, timesteps[:1])
        else:
            latents = noise * sched.init_noise_sigma
        step_kwargs = {"generator": batch.generators} if "generator" in inspect.signature(sched.step).parameters else {}
        guided = req.cfg_scale != 1.0
        cond, uncond = cond or batch.cond, uncond or batch.uncond
        length = max(cond.max_length(steps), uncond.max_length(steps)) if guided else None
        n_steps = max(1, len(timesteps) // getattr(sched, "order", 1))
        time_ids = sdxl_time_ids(model, width, height, len(batch.seeds) * (2 if guided else 1))
        done, total = run.state["steps_done"], max(run.state["steps_total"], run.state["steps_done"] + n_steps)
        for i, t in enumerate(timesteps):
            if progress.should_stop():
                return None
            number = (steps - n_steps) + i * n_steps // len(timesteps)
            step = Step(run, batch, i, len(timesteps), number, t, sched, timesteps, pass_name)
            scaled = sched.scale_model_input(torch.cat([latents, latents]) if guided else latents, t)
            c = cond.at(number, length)
            call = UnetCall(
                latents=scaled, sample=scaled, timestep=t, guided=guided,
                context=torch.cat([uncond.at(number, length), c]) if guided else c,
                added=sdxl_added_conditioning(model, req, cond, uncond if guided else None, number, time_ids),
            )
            for feature in run.features:
                feature.unet_inputs(step, call)
            pred = model.unet(call.sample.to(dtype), call.timestep, encoder_hidden_states=call.context.to(dtype),
                              added_cond_kwargs=call.added, **call.extra).sample.float()
            if guided:
                pred_uncond, pred_cond = pred.chunk(2)
                guidance = Guidance(pred_uncond, pred_cond, req.cfg_scale)
                for feature in run.features:
                    feature.guidance(step, guidance)
                pred = guidance.result if guidance.result is not None else pred_cond
            latents = sched.step(pred, t, latents, **step_kwargs, return_dict=False)[0]
            for feature in run.features:
                changed = feature.after_step(step, latents)
                if changed is not None:
                    latents = changed
            progress.on_step(done + (i + 1) * n_steps // len(timesteps), total, latents)
        run.state["steps_done"] = done + n_steps
        check_unet_output(latents, self.nan_check)  # before any further pass or upscale reads them
        return latents

    # -- infotext ---------------------------------------------------------------------------------
    def _hashes(self, encoder, loras: list[LoraFile]) -> dict:
        extra = {}
        if loras:
            extra["Lora hashes"] = ", ".join(f"{f.name}: {f.shorthash}" for f in loras)
        if encoder is not None and encoder.used_embeddings and self.embeddings is not None:
            known = self.embeddings.snapshot()
            hashes = ", ".join(f"{n}: {known[n].shorthash}" for n in sorted(encoder.used_embeddings) if n in known)
            if hashes:
                extra["TI hashes"] = hashes
        return extra

    def _infotext(self, run: Run, out: Output, hashes: dict) -> str:
        """One image's infotext: the request's described fields (A1111's keys and order), the model,
        what each active feature adds, and this image's own seed and fields."""
        model = run.model
        params: dict = {}
        for key, value in infotext_params(run.request).items():
            if key in ("Prompt", "Negative prompt"):
                continue
            params[key] = value
            if key == "Size":
                params.update({
                    "Model hash": model.info.shorthash,
                    "Model": model.info.model_name,
                    "VAE hash": getattr(model.vae_file, "shorthash", None),
                    "VAE": model.vae_file.name.rsplit(".", 1)[0] if model.vae_file is not None else None,
                })
        params["Seed"] = out.seed
        if "Variation seed" in params:
            params["Variation seed"] = out.subseed
        for feature in run.features:
            params.update(feature.infotext(run))
        params.update(run.infotext)
        params.update(hashes)
        params.update(out.params)
        params["Version"] = f"easel-{__version__}"
        return create_infotext(out.prompt, out.negative_prompt, params)
