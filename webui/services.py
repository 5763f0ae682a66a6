"""The application's services, built once and passed down: settings, model manager, queue, engine, store,
the feature registry and the option keys.

UI callbacks and API routes never call `Easel.submit` themselves: they go through admission
(webui/admission.py), which resolves, checks and owns every job. `submit` is what admission hands the
queue: a job whose work is to take its models from the manager (pinned while it runs), run the
engine (or the zoom, or the canvas box), and save through the store.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from webui.errors import FieldError
from webui.features import StyleLibrary
from webui.features.extras import run_extras
from webui.features.travel import StoreFrames, TravelRequest, TravelVideo, resume_folder, run_travel, save_travel
from webui.gallery.embedder import find_embedder
from webui.gallery.index import GalleryIndex
from webui.gallery.service import Gallery
from webui.generation.engine import GenerationResult
from webui.generation.noise import pick_seed
from webui.generation.requests import Txt2ImgRequest
from webui.generation.zoom import ZoomRequest, ZoomVideo, run_zoom, save_zoom
from webui.images.owners import OwnerIndex
from webui.images.store import ImageStore, png_bytes
from webui.jobs.queue import Job, JobQueue, LocalWorker, RemoteWork
from webui.memory import release_freed_memory
from webui.models.errors import ModelError
from webui.models.loader import LoadedModel, default_size_unloaded
from webui.models.merge import MergeRecipe, merge_checkpoints
from webui.options import OptionRegistry
from webui.runtime import PORTABLE_KINDS, ModelLease, Runtime
from webui.training.textual_inversion import (CreateEmbeddingRequest, Dataset, TrainEmbeddingRequest, TrainResult,
                                              create_embedding, log_folder, train_embedding)
from webui.settings import Settings

log = logging.getLogger(__name__)

# job kind -> the outputs folder its images are saved in
OUTPUT_FOLDERS = {"txt2img": "txt2img-images", "img2img": "img2img-images", "outpaint": "outpaint-images"}
JOB_KINDS = (*OUTPUT_FOLDERS, "zoom", "travel", "extras", "merge", "load", "create_embedding", "train")


@dataclass
class SavedResult:
    """A finished generation and where its PNGs were written."""

    result: GenerationResult
    paths: list[Path] = field(default_factory=list)


class Easel:
    """The front end's services: the queue and its workers, the store, the gallery, owners, styles, options,
    and the in-process `Runtime` (the device side: models, engine, libraries; see webui/runtime.py)."""

    def __init__(self, settings: Settings, runtime: Runtime, queue: JobQueue, store: ImageStore,
                 options: OptionRegistry | None = None, styles: StyleLibrary | None = None,
                 owners: OwnerIndex | None = None, gallery: Gallery | None = None):
        self.settings = settings
        self.runtime = runtime
        self.queue = queue
        self.store = store
        self.manager = runtime.manager
        self.engine = runtime.engine
        self.features = runtime.features
        self.upscalers = runtime.upscalers
        self.controlnets = runtime.controlnets
        self.vaes = runtime.vaes
        self.previews = runtime.previews
        self.speed = runtime.speed
        self.options = options or OptionRegistry()
        self.styles = styles or StyleLibrary(settings.styles_files, settings.data_dir / "styles.csv")
        self.owners = owners  # who made each output (the file routes check it when logins are on)
        self.gallery = gallery  # the index of every output, searched by the Gallery tab and /easel/v1/images

    @classmethod
    def create(cls, settings: Settings) -> "Easel":
        """The services for these settings. With `--workers ray` the in-process worker keeps only the jobs that
        cannot travel (zoom, travel, training, merges, extras); app.py then adds the Ray workers."""
        styles = StyleLibrary(settings.styles_files, settings.data_dir / "styles.csv")
        runtime = Runtime.create(settings, styles)
        owners = OwnerIndex(settings.cache_dir / "owners.sqlite")
        logins = bool(settings.ui_credentials or settings.api_credentials)
        local = LocalWorker(str(settings.device), models=lambda: runtime.loaded_names(),
                            remote_jobs=settings.workers == "local", after_each=release_freed_memory)
        queue = JobQueue(max_queued=settings.limits.max_queued_jobs, workers=[local])
        gallery = Gallery(GalleryIndex(settings.cache_dir / "gallery.sqlite"), settings.outputs_dir,
                          settings.cache_dir / "thumbnails", folders=[Path(f) for f in settings.gallery_folders],
                          owner_of=owners.owner_of, busy=lambda: local.busy(queue),
                          embedder=lambda: find_embedder(settings.models_dir, settings.device))
        store = ImageStore(settings.outputs_dir, hooks=[owners, runtime.features, gallery], private_names=logins)
        store.remove_leftovers()  # temp files of a process that was killed mid-write
        return cls(settings, runtime, queue, store, styles=styles, owners=owners, gallery=gallery)

    def close(self) -> None:
        self.queue.shutdown()
        self.manager.unload_all()
        if self.owners is not None:
            self.owners.close()
        if self.gallery is not None:
            self.gallery.close()

    # -- models ----------------------------------------------------------------------------------
    def refresh(self) -> None:
        """Rescan checkpoints, embeddings and styles (the refresh button, the API's refresh-checkpoints)."""
        self.manager.refresh()
        if self.engine.embeddings is not None:
            self.engine.embeddings.refresh()
        self.styles.refresh()

    def load_model(self, name: str | None, vae: str | None = None) -> LoadedModel:
        """The checkpoint on this process's device with the chosen VAE in place (Runtime.load_model)."""
        return self.runtime.load_model(name, vae)

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
    def submit(self, kind: str, request: Any, owner: str = "anonymous", save: bool = True,
               work: float = 1.0) -> Job:
        """Queue one job of `kind` (JOB_KINDS) for `owner`, costing `work` (megapixel-steps) in the queue's
        fairness. Admission calls this after checking the request; nothing else should (tests aside).
        TooManyJobs when the owner already has the server's maximum waiting."""
        task: Callable[[Job, ModelLease], Any]
        remote: RemoteWork | None = None
        if kind in PORTABLE_KINDS:  # generated by a runtime (this process's or a remote worker's), saved here
            folder = OUTPUT_FOLDERS.get(kind) if save else None
            finish = (lambda job, made: made) if kind == "load" else (  # noqa: E731
                lambda job, made: self._save(job, made, folder))
            task = lambda job, lease: finish(job, self.runtime.run(kind, request, job, lease))  # noqa: E731
            remote = RemoteWork(kind, request, finish)
        elif kind == "zoom":
            task = self._zoom(request)
        elif kind == "travel":
            task = self._travel(request)
        elif kind == "merge":
            task = self._merge(*request)  # (recipe, output) from admission
        elif kind == "extras":
            task = lambda job, lease: run_extras(request, self.upscalers, self.store if save else None,  # noqa: E731
                                                 job.owner, job)
        elif kind == "create_embedding":
            task = self._create_embedding(request)
        elif kind == "train":
            task = self._train(*request)  # (request, its dataset) from admission
        else:
            raise ValueError(f"unknown job kind {kind!r}")

        def run(job: Job) -> Any:
            lease = ModelLease(self.runtime, job)
            job.before_yield.append(lease.release)
            try:
                done = task(job, lease)
            finally:
                lease.release()
            if isinstance(done, SavedResult):  # keep what the owner can fetch, not the decoded inputs
                done.result.request = done.result.request.without_images()
            return done

        checkpoint = request if kind == "load" else getattr(request, "checkpoint", None)
        return self.queue.submit(Job(run=run, description=kind, owner=owner, previewer=self.previews.image,
                                     checkpoint=self.checkpoint_key(checkpoint), work=work, remote=remote))

    def _save(self, job: Job, result: GenerationResult, folder: str | None) -> SavedResult:
        """The images under `folder` (grids, from a script, under `<kind>-grids`, as A1111 does)."""
        paths = []
        if folder is not None and result.images:
            job.set_stage("saving")
            grids = result.grids or [False] * len(result.images)
            grid_folder = folder.replace("-images", "-grids")
            paths = [self.store.save(img, info, grid_folder if grid else folder, seed, owner=job.owner)
                     for img, info, seed, grid in zip(result.images, result.infotexts, result.seeds, grids)]
        return SavedResult(result, paths)

    def _zoom(self, request: ZoomRequest) -> Callable[[Job, ModelLease], Any]:
        """An infinite-zoom video: keyframes, then the mp4 under outputs/zoom/DATE/. An interrupted job
        still writes the video of the keyframes it finished."""
        def work(job: Job, lease: ModelLease) -> ZoomVideo:
            result = run_zoom(self.engine, lease(request.checkpoint, request.vae), request, job, lease)
            job.set_stage("writing the video")
            return save_zoom(result, self.store, job.owner)
        return work


    def _travel(self, request: TravelRequest) -> Callable[[Job, ModelLease], Any]:
        """A prompt-travel video: frames written as they are made under outputs/travel/DATE/NNNNN-SEED/,
        then the mp4 beside them; an interrupted job writes the video of the frames it finished, and a
        request naming that folder in `resume` goes on from them."""
        def work(job: Job, lease: ModelLease) -> TravelVideo:
            req = request.model_copy(update={"seed": pick_seed(request.seed)})  # the folder is named after it
            folder = self.travel_folder(req.resume, job.owner) if req.resume else self.store.reserve("travel", req.seed)
            model = lease(req.checkpoint, req.vae)
            result = run_travel(self.engine, model, req, StoreFrames(self.store, folder, job.owner), job, lease,
                                self.upscalers)
            job.set_stage("writing the video")
            return save_travel(result, self.store, folder, job.owner)
        return work

    def _merge(self, recipe: MergeRecipe, output: Path) -> Callable[[Job, ModelLease], Any]:
        """A1111's checkpoint merger, as a job (it reads and writes gigabytes): tensor by tensor, stopping
        between tensors when interrupted (nothing is left behind then); the new file is listed at once."""
        def work(job: Job, lease: ModelLease) -> Path:
            def progress(done: int, total: int) -> None:
                job.on_step(done, total)
                if job.should_stop():
                    raise MergeInterrupted("interrupted")
            job.set_stage(f"merging into {output.name}")
            try:
                made = merge_checkpoints(recipe, output, on_progress=progress,
                                         sha256=self.manager.catalog.hashes.sha256)
            except MergeInterrupted:
                return None
            self.manager.refresh()
            return made
        return work

    def _create_embedding(self, request: CreateEmbeddingRequest) -> Callable[[Job, ModelLease], Any]:
        """A new embedding from the default checkpoint's token embeddings; usable in prompts at once."""
        def work(job: Job, lease: ModelLease) -> Path:
            path = create_embedding(self.settings.models_dir / "embeddings", lease(None, None), request)
            if self.engine.embeddings is not None:
                self.engine.embeddings.refresh()
            return path
        return work

    def _train(self, request: TrainEmbeddingRequest, dataset: Dataset) -> Callable[[Job, ModelLease], Any]:
        """Textual-inversion training: only the embedding's vectors learn; the model others use is unchanged."""
        def work(job: Job, lease: ModelLease) -> TrainResult:
            path = self.settings.models_dir / "embeddings" / f"{request.embedding_name}.pt"  # names it (any format)
            folder = log_folder(self.settings.data_dir, request.embedding_name)

            def preview(model: LoadedModel, prompt: str, step: int) -> Path:
                if self.engine.embeddings is not None:
                    self.engine.embeddings.refresh()  # the vectors as they are at this step
                made = self.engine.txt2img(model, Txt2ImgRequest(
                    prompt=prompt, seed=request.seed, steps=20, width=request.training_width,
                    height=request.training_height))
                (folder / "images").mkdir(parents=True, exist_ok=True)
                out = folder / "images" / f"{request.embedding_name}-{step}.png"
                out.write_bytes(png_bytes(made.images[0], made.infotexts[0]))
                return out
            result = train_embedding(request, path, dataset, folder, lambda: lease(None, None), job, preview)
            if self.engine.embeddings is not None:
                self.engine.embeddings.refresh()
            return result
        return work

    def extras_folder(self, name: str) -> Path:
        """A folder of pictures on the server for the Extras tab's batch: inside the data folder or one given
        with --extras-folder (FieldError naming `folder` otherwise)."""
        path = Path(name).expanduser()
        path = (path if path.is_absolute() else self.settings.data_dir / path).resolve()
        roots = [self.settings.data_dir.resolve(), *(Path(r).resolve() for r in self.settings.extras_folders)]
        if not any(path.is_relative_to(root) for root in roots):
            raise FieldError("folder", f"{name!r} is outside the data folder and the --extras-folder folders")
        if not path.is_dir():
            raise FieldError("folder", f"{name!r} is not a folder")
        return path

    def travel_folder(self, name: str, owner: str) -> Path:
        """An earlier travel job's frames folder, if it is the owner's (FieldError naming `resume` if not)."""
        owner_of = self.owners.owner_of if self.owners is not None else (lambda path: None)
        return resume_folder(self.store, name, owner, owner_of)


class MergeInterrupted(Exception):
    pass
