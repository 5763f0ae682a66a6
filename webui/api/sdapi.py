"""A1111's `/sdapi/v1` routes: the same paths, field names and response shapes, on Easel's services.

Where Easel differs, it is on purpose and documented in the README (HTTP API section): defaults come from
the request types (one set for UI and API), options are per caller, a checkpoint change is
per request or per caller and never a global swap, and interrupt/progress concern the caller's
own jobs.
"""
# No `from __future__ import annotations`: FastAPI must see the route-local `CallerDep` type.
import os
from typing import Annotated, Any

import psutil
import torch
from fastapi import APIRouter, Depends
from starlette.concurrency import run_in_threadpool

from pydantic import Field, create_model

from webui.features.hires import LATENT_MODES
from webui.generation.fields import bounds
from webui.generation.samplers import SAMPLERS, SCHEDULE_TYPES
from webui.options import with_limits
from webui.images.infotext import parse_infotext
from webui.images.store import read_infotext
from webui.jobs.queue import Job, JobState

from .context import ApiContext, Caller, Submission, caller_dependency, manager_only
from .errors import EaselRoute, printable
from .images import decode_image
from .results import failure_error, generation_response, job_timestamp, preview_base64, wait_for
from .schemas import (
    ApiImg2ImgRequest,
    ApiTxt2ImgRequest,
    EmbeddingItem,
    Embeddings,
    ExtensionItem,
    GenerationResponse,
    InterruptResponse,
    LoraItem,
    MemoryResponse,
    OptionsUpdateBase,
    OptionsUpdated,
    PngInfoRequest,
    PngInfoResponse,
    ProgressResponse,
    ProgressState,
    SamplerItem,
    ScriptArg,
    ScriptInfo,
    ScriptList,
    SchedulerItem,
    SDModelItem,
    SkippedEmbedding,
    StyleItem,
    UpscalerItem,
    VaeItem,
)


def options_models(ctx: ApiContext) -> tuple[type, type]:
    """(the options as GET shows them, the POST body: every option optional, same limits), built from the
    option keys there are (Easel's and the extensions')."""
    model = ctx.easel.options.model
    view = create_model("OptionsView", __base__=model, sd_checkpoint_hash=(
        str | None, Field(None, description="sha256 of sd_model_checkpoint, when known")))
    update = create_model(  # unknown keys are accepted (and reported as ignored)
        "OptionsUpdate", __base__=OptionsUpdateBase,
        **{name: (with_limits(f) | None, Field(None, description=f.description)) for name, f in model.model_fields.items()},
    )
    return view, update


def sdapi_router(ctx: ApiContext) -> APIRouter:
    router = APIRouter(prefix="/sdapi/v1", tags=["A1111 API"], route_class=EaselRoute)
    CallerDep = Annotated[Caller, Depends(caller_dependency(ctx))]
    easel = ctx.easel
    OptionsView, OptionsUpdate = options_models(ctx)

    @router.post("/txt2img", response_model=GenerationResponse)
    async def txt2img(body: ApiTxt2ImgRequest, caller: CallerDep) -> GenerationResponse:
        """Generate and wait; the job takes its fair turn in the queue like any other."""
        submission = await run_in_threadpool(ctx.submit, "txt2img", body, caller)
        await wait_for(submission.job, easel.queue)
        return await run_in_threadpool(_finished_response, submission)

    @router.post("/img2img", response_model=GenerationResponse)
    async def img2img(body: ApiImg2ImgRequest, caller: CallerDep) -> GenerationResponse:
        """img2img, or inpainting when a mask is given; generates and waits like txt2img."""
        submission = await run_in_threadpool(ctx.submit, "img2img", body, caller)
        await wait_for(submission.job, easel.queue)
        return await run_in_threadpool(_finished_response, submission)

    @router.get("/options", response_model=OptionsView)
    def get_options(caller: CallerDep) -> dict[str, Any]:
        """The caller's options (each user or client has their own)."""
        return ctx.admission.options_view(caller.owner)

    @router.post("/options", response_model=OptionsUpdated)
    async def set_options(body: OptionsUpdate, caller: CallerDep) -> OptionsUpdated:  # type: ignore[valid-type]
        """Change the caller's options; unknown keys are accepted and ignored. A new
        `sd_model_checkpoint` is loaded first (a job of the caller's, in its fair turn); if it cannot be
        loaded the answer is a 422 and the previous choice stays, as in A1111."""
        changes = body.model_dump(exclude_unset=True) | dict(body.model_extra or {})
        updated, ignored = await run_in_threadpool(ctx.admission.set_options, caller, changes)
        return OptionsUpdated(updated=updated, ignored=ignored)

    @router.get("/sd-models", response_model=list[SDModelItem])
    def sd_models(caller: CallerDep) -> list[SDModelItem]:
        return [
            SDModelItem(title=c.title, model_name=c.model_name, hash=c.shorthash, sha256=c.sha256,
                        filename=ctx.path_for(c.path, caller),
                        config=ctx.path_for(c.config_yaml, caller) if c.config_yaml else None)
            for c in easel.manager.list()
        ]

    @router.post("/refresh-checkpoints")
    def refresh_checkpoints(caller: CallerDep) -> None:
        """Rescan the checkpoint folders and the embeddings (an admin's action when logins are on)."""
        manager_only(caller)
        easel.refresh()

    @router.post("/refresh-embeddings")
    def refresh_embeddings(caller: CallerDep) -> None:
        """Rescan models/embeddings."""
        manager_only(caller)
        if easel.engine.embeddings is not None:
            easel.engine.embeddings.refresh()

    @router.post("/refresh-vae")
    def refresh_vae(caller: CallerDep) -> None:
        """Rescan models/VAE (Easel lists the folder afresh on every use, so this only checks it)."""
        manager_only(caller)
        easel.vaes.files()

    @router.post("/refresh-loras")
    def refresh_loras(caller: CallerDep) -> None:
        """Rescan models/Lora (Easel lists the folder afresh on every use, so this only checks it)."""
        manager_only(caller)
        if easel.engine.loras is not None:
            easel.engine.loras.files()

    @router.get("/samplers", response_model=list[SamplerItem])
    def samplers(caller: CallerDep) -> list[SamplerItem]:
        return [
            SamplerItem(name=s.name, aliases=list(s.aliases), options={k: str(v) for k, v in s.options.items()}
                        | ({"stochastic": "True"} if s.stochastic else {}))
            for s in SAMPLERS
        ]

    @router.get("/schedulers", response_model=list[SchedulerItem])
    def schedulers(caller: CallerDep) -> list[SchedulerItem]:
        return [SchedulerItem(name=name.lower(), label=name, default_rho=7.0 if name == "Karras" else -1)
                for name in SCHEDULE_TYPES]

    @router.get("/sd-vae", response_model=list[VaeItem])
    def sd_vae(caller: CallerDep) -> list[VaeItem]:
        """The files in models/VAE; `model_name` is what `sd_vae` (and `vae`) take, beside "Automatic" and
        "None"."""
        return [VaeItem(model_name=f.name, filename=ctx.path_for(f.path, caller)) for f in easel.vaes.files()]

    @router.get("/loras", response_model=list[LoraItem])
    def loras(caller: CallerDep) -> list[LoraItem]:
        """The files in models/Lora, used in a prompt as <lora:name:weight>."""
        files = easel.engine.loras.files() if easel.engine.loras is not None else []
        return [LoraItem(name=f.name, alias=f.name, path=ctx.path_for(f.path, caller)) for f in files]

    @router.get("/embeddings", response_model=Embeddings)
    def embeddings(caller: CallerDep) -> Embeddings:
        """The textual-inversion embeddings as last scanned (POST refresh-embeddings or refresh-checkpoints
        rescans); `skipped` are files that could not be used, with the reason."""
        library = easel.engine.embeddings
        if library is None:
            return Embeddings()
        loaded = {name: EmbeddingItem(shape=sum(v.shape[-1] for v in e.vectors.values()), vectors=e.n_vectors)
                  for name, e in library.snapshot().items()}
        skipped = {name: SkippedEmbedding(error=reason) for name, reason in dict(library.skipped).items()}
        return Embeddings(loaded=loaded, skipped=skipped)

    @router.get("/scripts", response_model=ScriptList)
    def scripts(caller: CallerDep) -> ScriptList:
        """A1111's shape: the scripts (`script_name`) and the always-on features (`alwayson_scripts`) of both
        tabs; Easel's features serve txt2img and img2img alike unless they say otherwise."""
        features, whole = easel.features.with_settings(), easel.features.scripts
        return ScriptList(
            txt2img=[s.name for s in whole if "txt2img" in s.tabs] + [f.name for f in features if "txt2img" in f.tabs],
            img2img=[s.name for s in whole if "img2img" in s.tabs] + [f.name for f in features if "img2img" in f.tabs],
        )

    @router.get("/script-info", response_model=list[ScriptInfo])
    def script_info(caller: CallerDep) -> list[ScriptInfo]:
        """Each feature's and script's settings, in the order `args` takes them."""
        items = [(f, True) for f in easel.features.with_settings()] + [(s, False) for s in easel.features.scripts]
        return [ScriptInfo(
            name=item.name, is_alwayson=alwayson, is_img2img="img2img" in item.tabs,
            args=[ScriptArg(label=name, value=default, minimum=lo, maximum=hi)
                  for name, default, (lo, hi) in _settings_fields(item.settings)],
        ) for item, alwayson in items]

    @router.get("/extensions", response_model=list[ExtensionItem])
    def extensions(caller: CallerDep) -> list[ExtensionItem]:
        """The extensions found in extensions/: A1111's keys, plus `state` (enabled, disabled, failed) and
        why (`reason`)."""
        return [ExtensionItem(name=e.name, enabled=e.enabled, state=e.state, reason=e.reason, features=e.features)
                for e in ctx.extensions.items]

    @router.get("/prompt-styles", response_model=list[StyleItem])
    def prompt_styles(caller: CallerDep) -> list[StyleItem]:
        """The styles (styles.csv), what `styles` takes."""
        return [StyleItem(name=s.name, prompt=s.prompt, negative_prompt=s.negative_prompt) for s in easel.styles.all()]

    @router.get("/latent-upscale-modes", response_model=list[dict[str, str]])
    def latent_upscale_modes(caller: CallerDep) -> list[dict[str, str]]:
        """The hires fix's latent upscalers (`hr_upscaler`)."""
        return [{"name": name} for name in LATENT_MODES]

    @router.get("/upscalers", response_model=list[UpscalerItem])
    def upscalers(caller: CallerDep) -> list[UpscalerItem]:
        """The upscalers (`hr_upscaler`, Extras, SD upscale): the built-ins, then the model files of
        models/ESRGAN, RealESRGAN, SwinIR, DAT, HAT and ScuNET; `available` is false, with the reason,
        where spandrel cannot be imported."""
        return [UpscalerItem(**{**row, "model_path": ctx.path_for(row["model_path"], caller) if row["model_path"]
                                else None}) for row in easel.upscalers.describe()]

    for path in ("/hypernetworks", "/face-restorers"):
        router.add_api_route(path, _empty_list, methods=["GET"], response_model=list[dict[str, Any]],
                             dependencies=[Depends(caller_dependency(ctx))],
                             summary=f"{path[1:]}: none in Easel yet")

    @router.get("/progress", response_model=ProgressResponse)
    def progress(caller: CallerDep, skip_current_image: bool = False) -> ProgressResponse:
        """The caller's own current job (running, else next queued); idle when they have none."""
        return _progress(ctx, caller, skip_current_image)

    @router.post("/interrupt", response_model=InterruptResponse)
    def interrupt(caller: CallerDep) -> InterruptResponse:
        """Stop the caller's running job and drop their queued ones. An admin also stops whatever runs."""
        jobs = [j for j in easel.queue.jobs_of(caller.owner) if not j.done]
        if caller.admin:  # and whatever runs, on every worker
            jobs += [j for j in easel.queue.current_jobs() if j not in jobs]
        stopped = [j.id for j in jobs if easel.queue.interrupt(j.id, by=caller.owner, admin=caller.admin)]
        return InterruptResponse(interrupted=stopped)

    @router.post("/skip", response_model=InterruptResponse)
    def skip(caller: CallerDep) -> InterruptResponse:
        """Easel has no per-image skip: this stops the caller's running job (finished images are kept)."""
        current = next((j for j in easel.queue.current_jobs() if caller.may_see(j)), None)
        if current is None:
            return InterruptResponse(interrupted=[])
        easel.queue.interrupt(current.id, by=caller.owner, admin=caller.admin)
        return InterruptResponse(interrupted=[current.id])

    @router.post("/png-info", response_model=PngInfoResponse)
    def png_info(body: PngInfoRequest, caller: CallerDep) -> PngInfoResponse:
        """The infotext of an image, raw and parsed."""
        image = decode_image(body.image, "image")
        text = read_infotext(image) or ""
        items = {printable(k): printable(v) if isinstance(v, str) else v for k, v in image.info.items()
                 if k != "parameters" and isinstance(v, (str, int, float, bool))}
        return PngInfoResponse(info=text, items=items, parameters=parse_infotext(text) if text else {})

    @router.get("/memory", response_model=MemoryResponse)
    def memory(caller: CallerDep) -> MemoryResponse:
        return MemoryResponse(ram=_ram(), cuda=_cuda())

    @router.get("/cmd-flags", response_model=dict[str, Any])
    def cmd_flags(caller: CallerDep) -> dict[str, Any]:
        """The command-line flags, logins blanked."""
        flags = dict(easel.settings.cmd_flags)
        if not ctx.shows_paths(caller):  # server paths: admins only on a shared instance
            for key in ("data_dir", "ckpt_dir", "gradio_auth_path", "styles_file"):
                if flags.get(key):
                    flags[key] = "<hidden>"
        return flags

    return router


def _empty_list() -> list[dict[str, Any]]:
    return []


def _settings_fields(model) -> list:
    """(name, default, (minimum, maximum)) of a feature's or script's settings, in `args` order."""
    if model is None:
        return []
    return [(name, None if f.is_required() else f.default, bounds(model, name)) for name, f in model.model_fields.items()]


def _finished_response(submission: Submission) -> GenerationResponse:
    if submission.job.state is JobState.FAILED:
        raise failure_error(submission.job)
    return generation_response(submission)


def _current_job(ctx: ApiContext, caller: Caller) -> tuple[Job | None, int]:
    mine = [j for j in ctx.easel.queue.jobs_of(caller.owner) if not j.done]
    running = next((j for j in mine if j.state is JobState.RUNNING), None)
    if running is not None:
        return running, len(mine)
    queued = [j for j in ctx.easel.queue.pending() if j.owner == caller.owner]
    return (queued[0] if queued else None), len(mine)


def _progress(ctx: ApiContext, caller: Caller, skip_current_image: bool) -> ProgressResponse:
    job, count = _current_job(ctx, caller)
    if job is None:
        return ProgressResponse()
    position = ctx.easel.queue.position(job)
    state = ProgressState(
        interrupted=job.interrupted, stopping_generation=job.interrupted, job=f"{job.description} {job.id}",
        job_count=count, job_timestamp=job_timestamp(job),
        sampling_step=job.step, sampling_steps=job.total_steps, job_id=job.id, queue_position=position,
        stage=job.stage,
    )
    text = job.progress_text(position)
    return ProgressResponse(
        progress=job.progress, eta_relative=job.eta_seconds or 0.0, state=state,
        current_image=None if skip_current_image else preview_base64(job), textinfo=text,
        current_task=job.id,
    )


def _ram() -> dict[str, float]:
    vm = psutil.virtual_memory()
    rss = psutil.Process(os.getpid()).memory_info().rss
    return {"free": float(vm.available), "used": float(rss), "total": float(vm.total)}


def _cuda() -> dict[str, Any]:
    if not torch.cuda.is_available():
        return {"error": "no CUDA device"}
    free, total = torch.cuda.mem_get_info()
    s = torch.cuda.memory_stats()
    return {
        "system": {"free": free, "used": total - free, "total": total},
        "active": {"current": s.get("active_bytes.all.current", 0), "peak": s.get("active_bytes.all.peak", 0)},
        "allocated": {"current": s.get("allocated_bytes.all.current", 0), "peak": s.get("allocated_bytes.all.peak", 0)},
        "reserved": {"current": s.get("reserved_bytes.all.current", 0), "peak": s.get("reserved_bytes.all.peak", 0)},
        "inactive": {"current": s.get("inactive_split_bytes.all.current", 0),
                     "peak": s.get("inactive_split_bytes.all.peak", 0)},
        "events": {"retries": s.get("num_alloc_retries", 0), "oom": s.get("num_ooms", 0)},
    }
