"""The device side of Easel: what generates, and nothing that serves. One per device.

A `Runtime` holds the model manager (checkpoints in the typed cache), the engine with its features and
extension points, and the libraries the features draw on (VAEs, upscalers, ControlNets, embeddings, LoRA).
The front end (webui/services.py: queue, store, gallery, owners, the page and the API) has one for the
in-process worker; each remote worker (webui/workers: a Ray actor per GPU) builds its own from the same
settings, so a job runs the same code wherever it runs. `run` is the part of a job that can travel: it
takes a typed request and returns what was made; saving it stays with the front end.
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Any

import torch

from webui.features import StyleLibrary, register_features
from webui.generation.builtins import register_builtins
from webui.generation.engine import Engine, GenerationResult
from webui.generation.extension_points import FeatureRegistry
from webui.generation.outpaint import plan_box
from webui.images.preview import Previewer
from webui.jobs.queue import Job
from webui.models.catalog import Catalog, HashCache
from webui.models.controlnet import ControlNetLibrary
from webui.models.embeddings import EmbeddingLibrary
from webui.models.errors import ModelError
from webui.models.loader import LoadedModel
from webui.models.lora import LoraLibrary
from webui.models.manager import ModelManager, TierBudget
from webui.models.speed import prepare as prepare_for_speed
from webui.models.speed import xformers_problem
from webui.models.upscalers import UpscalerLibrary
from webui.models.vae import AUTOMATIC, NONE, VaeLibrary, apply_vae
from webui.settings import Settings

log = logging.getLogger(__name__)

VAE_CHOICES = (AUTOMATIC, NONE)
# the job kinds whose work is `Runtime.run`: they can run on any worker, the result coming back to be saved
PORTABLE_KINDS = ("txt2img", "img2img", "outpaint", "load")
MODEL_FOLDERS = ("Stable-diffusion", "VAE", "VAE-approx", "Lora", "embeddings", "ESRGAN", "ControlNet")


class ModelLease:
    """The checkpoint a job is using, pinned in the cache until the job lets go: when it gives others a
    turn, when it switches to another checkpoint (a hires pass, a script's cell; the previous one may
    then leave the device), and when it ends. Called as the engine's `models` source."""

    def __init__(self, runtime: "Runtime", job: Job):
        self.runtime = runtime
        self.job = job
        self.held: LoadedModel | None = None

    def __call__(self, name: str | None, vae: str | None) -> LoadedModel:
        manager = self.runtime.manager
        if self.held is not None and self.held.info.path != manager.resolve(name).path:
            self.release()
        if self.held is None:
            self.job.set_stage(f"loading {name or 'default checkpoint'}")
        model = self.runtime.load_model(name, vae)  # already on the device: no work
        if self.held is not model:
            self.release()
            manager.pin(model)
            self.held = model
        self.job.latent_family = model.family.name  # for the job's live previews
        return model

    def release(self) -> None:
        if self.held is not None:
            self.runtime.manager.unpin(self.held)
            self.held = None


class Runtime:
    def __init__(self, settings: Settings, manager: ModelManager, engine: Engine, vaes: VaeLibrary,
                 upscalers: UpscalerLibrary, controlnets: ControlNetLibrary):
        self.settings = settings
        self.manager = manager
        self.engine = engine
        self.features: FeatureRegistry = engine.features
        self.vaes = vaes
        self.upscalers = upscalers
        self.controlnets = controlnets
        self.previews = Previewer(settings.models_dir / "VAE-approx")
        self.speed = settings.speed
        if self.speed.attention == "xformers":
            problem = xformers_problem(settings.device)
            if problem:
                log.warning("--xformers: %s; using PyTorch SDPA attention instead", problem)
                self.speed = dataclasses.replace(self.speed, attention="sdpa")

    @classmethod
    def create(cls, settings: Settings, styles: StyleLibrary | None = None,
               hashes: HashCache | None = None) -> "Runtime":
        """Everything that generates, from the settings (the model folders, the device, the budgets)."""
        for sub in MODEL_FOLDERS:
            (settings.models_dir / sub).mkdir(parents=True, exist_ok=True)
        hashes = hashes or HashCache(settings.cache_dir / "hashes.json")
        catalog = Catalog(settings.checkpoint_dirs, hashes, settings.fallback_checkpoints, settings.follow_model_links)
        manager = ModelManager(
            catalog, settings.device, settings.dtype,
            device_budget=TierBudget(settings.models_on_device, settings.device_cache_gb),
            ram_budget=TierBudget(settings.models_in_ram, settings.ram_cache_gb),
            preferred=settings.ckpt,
            offloads=settings.speed.offloads,
        )
        embeddings = EmbeddingLibrary(settings.models_dir / "embeddings", hashes)
        embeddings.refresh()
        vaes = VaeLibrary(settings.models_dir / "VAE", hashes)
        styles = styles or StyleLibrary(settings.styles_files, settings.data_dir / "styles.csv")
        upscalers = upscaler_library(settings, manager)
        controlnets = ControlNetLibrary(settings.models_dir / "ControlNet", hashes, manager.get_model, settings.device)
        features = register_features(
            register_builtins(FeatureRegistry()), styles=styles, wildcards=settings.wildcards_dir, upscalers=upscalers,
            controlnets=controlnets,
            checkpoint_exists=lambda name: _exists(catalog.find, name),
            checkpoint_titles=lambda: [c.title for c in catalog.items()],
            vae_exists=lambda name: any(name in (f.name, f.path.stem) for f in vaes.files()) or name in VAE_CHOICES,
        )
        engine = Engine(embeddings, LoraLibrary(settings.models_dir / "Lora", hashes), features, settings.nan_check)
        return cls(settings, manager, engine, vaes, upscalers, controlnets)

    def load_model(self, name: str | None, vae: str | None = None) -> LoadedModel:
        """The checkpoint on the device with the chosen VAE (see webui.models.vae) in place."""
        model = self.manager.get(name)
        apply_vae(model, self.vaes, vae)
        prepare_for_speed(model, self.speed)
        return model

    def loaded_names(self) -> list[str]:
        """The checkpoints this runtime holds (on the device, then in RAM), by catalog name."""
        return [model.info.name for model in self.manager.loaded_models()]

    def run(self, kind: str, request: Any, job: Job, lease: ModelLease) -> Any:
        """The part of a job of a portable kind that generates: a GenerationResult (a checkpoint's title
        for "load"). txt2img, img2img, sketch and inpainting (a request with a mask) or the request's script;
        "outpaint" is one box of the outpaint canvas, txt2img, img2img or outpaint by how much of it is
        painted (webui/generation/outpaint.py), every image coming back as the whole box."""
        if kind in ("txt2img", "img2img"):
            return self.engine.generate(lease(request.checkpoint, request.vae), request, job, lease)
        if kind == "outpaint":
            plan = plan_box(request)
            result: GenerationResult = self.engine.generate(lease(request.checkpoint, request.vae), plan.request,
                                                            job, lease)
            result.images = [plan.finish(image) for image in result.images]
            result.extra["box_kind"] = plan.kind
            return result
        if kind == "load":
            return lease(request, None).info.title
        raise ValueError(f"job kind {kind!r} does not run on a worker's runtime")


def upscaler_library(settings: Settings, manager: ModelManager) -> UpscalerLibrary:
    """The upscalers in A1111's folders, cached in the model manager's typed cache."""
    return UpscalerLibrary(settings.models_dir, manager.get_model, settings.device,
                           half=settings.dtype == torch.float16, tile=settings.upscaler_tile)


def _exists(find, name: str) -> bool:
    try:
        find(name)
        return True
    except ModelError:
        return False
