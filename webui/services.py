"""The application's services, built once and passed down: settings, model manager, queue, engine, store.

UI callbacks and API routes reach everything through one `Easel` object; nothing is global. Each
`submit_*` method turns a typed request into a queued job whose work is: get the checkpoint the
request names from the manager, run the engine, save the images with their infotext.
"""
from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from webui.generation.engine import Engine, GenerationResult
from webui.generation.outpaint import OutpaintRequest, plan_box
from webui.generation.requests import Img2ImgRequest, Txt2ImgRequest
from webui.generation.zoom import ZoomRequest, ZoomVideo, run_zoom, save_zoom
from webui.images.preview import Previewer
from webui.images.store import ImageStore
from webui.jobs.queue import Job, JobQueue
from webui.models.catalog import Catalog, HashCache
from webui.models.embeddings import EmbeddingLibrary
from webui.models.errors import ModelError
from webui.models.loader import LoadedModel, default_size_unloaded
from webui.models.lora import LoraLibrary
from webui.models.manager import ModelManager, TierBudget
from webui.models.speed import prepare as prepare_for_speed
from webui.models.speed import xformers_problem
from webui.models.vae import VaeLibrary, apply_vae
from webui.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class SavedResult:
    """A finished generation and where its PNGs were written."""

    result: GenerationResult
    paths: list[Path] = field(default_factory=list)


class Easel:
    def __init__(self, settings: Settings, manager: ModelManager, queue: JobQueue, engine: Engine, store: ImageStore):
        self.settings = settings
        self.manager = manager
        self.queue = queue
        self.engine = engine
        self.store = store
        self.vaes = VaeLibrary(settings.models_dir / "VAE")
        self.previews = Previewer(settings.models_dir / "VAE-approx")
        self.speed = settings.speed
        if self.speed.attention == "xformers":
            problem = xformers_problem(settings.device)
            if problem:
                log.warning("--xformers: %s; using PyTorch SDPA attention instead", problem)
                self.speed = dataclasses.replace(self.speed, attention="sdpa")

    @classmethod
    def create(cls, settings: Settings) -> "Easel":
        for sub in ("Stable-diffusion", "VAE", "VAE-approx", "Lora", "embeddings"):
            (settings.models_dir / sub).mkdir(parents=True, exist_ok=True)
        catalog = Catalog(settings.checkpoint_dirs, HashCache(settings.cache_dir / "hashes.json"))
        manager = ModelManager(
            catalog, settings.device, settings.dtype,
            device_budget=TierBudget(settings.models_on_device, settings.device_cache_gb),
            ram_budget=TierBudget(settings.models_in_ram, settings.ram_cache_gb),
            preferred=settings.ckpt,
            offloads=settings.speed.offloads,
        )
        embeddings = EmbeddingLibrary(settings.models_dir / "embeddings")
        embeddings.refresh()
        loras = LoraLibrary(settings.models_dir / "Lora")
        return cls(settings, manager, JobQueue(), Engine(embeddings, loras), ImageStore(settings.outputs_dir))

    def close(self) -> None:
        self.queue.shutdown()
        self.manager.unload_all()

    # -- models ----------------------------------------------------------------------------------
    def refresh(self) -> None:
        """Rescan checkpoints and embeddings (the 🔄 button, the API's refresh-checkpoints)."""
        self.manager.refresh()
        if self.engine.embeddings is not None:
            self.engine.embeddings.refresh()

    def load_model(self, name: str | None, vae: str | None = None) -> LoadedModel:
        """The checkpoint on the device with the chosen VAE (see webui.models.vae) in place."""
        model = self.manager.get(name)
        apply_vae(model, self.vaes, vae)
        prepare_for_speed(model, self.speed)
        return model

    def default_size_for(self, name: str | None) -> tuple[int, int]:
        """The trained size of a checkpoint, without loading it (see loader.default_size_unloaded)."""
        try:
            info = self.manager.resolve(name)
        except Exception:
            return (512, 512)
        current = self.manager.current
        if current is not None and current.info.path == info.path:
            return current.default_size
        return default_size_unloaded(info)

    def checkpoint_key(self, name: str | None) -> str | None:
        """The checkpoint a job will need (for the queue's same-checkpoint grouping); None if unknown."""
        try:
            return self.manager.resolve(name).name
        except ModelError:
            return None

    # -- jobs ------------------------------------------------------------------------------------
    def submit_txt2img(self, request: Txt2ImgRequest, owner: str = "anonymous", save: bool = True) -> Job:
        return self._submit("txt2img", request, owner, lambda model, job: self.engine.txt2img(model, request, job),
                            "txt2img-images" if save else None)

    def submit_img2img(self, request: Img2ImgRequest, owner: str = "anonymous", save: bool = True) -> Job:
        """img2img, sketch and inpainting (a request with a mask) share one job kind and output folder."""
        return self._submit("img2img", request, owner, lambda model, job: self.engine.img2img(model, request, job),
                            "img2img-images" if save else None)

    def submit_outpaint(self, request: OutpaintRequest, owner: str = "anonymous", save: bool = True) -> Job:
        """One box of the outpaint canvas: txt2img, img2img or outpaint by how much of it is painted
        (webui/generation/outpaint.py). Every image comes back as the whole box, ready to lay on the canvas."""
        def generate(model: LoadedModel, job: Job) -> GenerationResult:
            plan = plan_box(request)
            engine_call = self.engine.txt2img if plan.kind == "txt2img" else self.engine.img2img
            result = engine_call(model, plan.request, job)
            result.images = [plan.finish(image) for image in result.images]
            result.extra["box_kind"] = plan.kind
            return result

        return self._submit("outpaint", request, owner, generate, "outpaint-images" if save else None)

    def _load_for(self, job: Job, request) -> LoadedModel:
        """The request's checkpoint and VAE, loaded inside its job (so swaps happen between jobs)."""
        job.set_stage(f"loading {request.checkpoint or 'default checkpoint'}")
        model = self.load_model(request.checkpoint, request.vae)
        job.latent_family = model.family.name  # for the job's live previews
        return model

    def _submit(self, kind: str, request, owner: str,
                generate: Callable[[LoadedModel, Job], GenerationResult], folder: str | None) -> Job:
        """Queue one generation: load the checkpoint (and VAE) it names, generate, save the PNGs."""
        def run(job: Job) -> SavedResult:
            result = generate(self._load_for(job, request), job)
            paths = []
            if folder is not None:
                job.set_stage("saving")
                paths = [self.store.save(img, info, folder, seed)
                         for img, info, seed in zip(result.images, result.infotexts, result.seeds)]
            return SavedResult(result, paths)

        return self.queue.submit(Job(run=run, description=kind, owner=owner, previewer=self.previews.image,
                                     checkpoint=self.checkpoint_key(request.checkpoint)))

    def submit_load(self, name: str | None, owner: str = "anonymous") -> Job:
        """Load (hot-swap to) a checkpoint between jobs, as a job of its own."""
        return self.queue.submit(Job(run=lambda job: self.load_model(name).info.title, description="load",
                                     owner=owner, checkpoint=self.checkpoint_key(name)))

    def submit_zoom(self, request: ZoomRequest, owner: str = "anonymous") -> Job:
        """An infinite-zoom video: keyframes, then the mp4 under outputs/zoom/DATE/. An interrupted job
        still writes the video of the keyframes it finished."""
        def run(job: Job) -> ZoomVideo:
            result = run_zoom(self.engine, self._load_for(job, request), request, job)
            job.set_stage("writing the video")
            return save_zoom(result, self.store.folder("zoom"))

        return self.queue.submit(Job(run=run, description="zoom", owner=owner, previewer=self.previews.image,
                                     checkpoint=self.checkpoint_key(request.checkpoint)))
