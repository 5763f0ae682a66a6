"""Easel's own `/easel/v1` routes: submit a job, poll it, interrupt it, without holding a connection.

The request body is the same as `/sdapi/v1/txt2img`'s or `/sdapi/v1/img2img`'s, picked by `kind`
(`"txt2img"`, the default, or `"img2img"`); answers use the same images and `info`. A caller sees and
stops only their own jobs; an admin sees and stops anyone's. Someone else's job answers 404, so job
ids reveal nothing.
"""
# No `from __future__ import annotations`: FastAPI must see the route-local `CallerDep` type.
from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends
from fastapi.responses import JSONResponse
from pydantic import Field, ValidationError, create_model
from starlette.concurrency import run_in_threadpool

from fastapi.responses import FileResponse

from webui.features.travel import TravelRequest
from webui.generation.zoom import ZoomRequest
from webui.images.video import SavedVideo

from .context import ApiContext, Caller, caller_dependency, job_answer
from .errors import ApiError, EaselRoute, InvalidFields, field_error, printable
from .images import decode_image
from .results import job_status
from .schemas import EASEL_JOB_KINDS, JobList, JobStatus, JobSubmitted, WorkerList

# The zoom body: ZoomRequest's own fields, with the first image as base64 (for the schema only; the
# body is validated by ZoomRequest itself after the image is decoded).
_ZoomJobBody = create_model(
    "ZoomJobBody",
    **{name: (f.annotation, f) for name, f in ZoomRequest.model_fields.items() if name != "init_image"},
    init_image=(str | None, Field(None, description="base64 image to zoom from instead of a txt2img start")),
)
_ZOOM_BODY = _ZoomJobBody.model_json_schema(ref_template="#/components/schemas/{model}")
_TRAVEL_BODY = TravelRequest.model_json_schema(ref_template="#/components/schemas/{model}")

# The body is one of the kinds' models, picked by `kind` before validating, so errors name the field
# as sent (a pydantic tagged union would put the tag in front of every error's location).
_JOB_BODY = {"oneOf": [model.model_json_schema(ref_template="#/components/schemas/{model}")
                       for model in EASEL_JOB_KINDS.values()]}


def easel_router(ctx: ApiContext) -> APIRouter:
    router = APIRouter(prefix="/easel/v1", tags=["Easel API"], route_class=EaselRoute)
    CallerDep = Annotated[Caller, Depends(caller_dependency(ctx))]
    queue = ctx.easel.queue

    @router.post("/jobs", response_model=JobSubmitted, status_code=202,
                 openapi_extra={"requestBody": {"required": True,
                                                "content": {"application/json": {"schema": _JOB_BODY}}}})
    async def submit(raw: Annotated[dict[str, Any], Body()], caller: CallerDep) -> JSONResponse:
        """Queue a job and return its id at once; poll GET /easel/v1/jobs/{id}. The body is
        /sdapi/v1/txt2img's (`"kind": "txt2img"`, the default) or /sdapi/v1/img2img's (`"kind": "img2img"`)."""
        kind = raw.get("kind") or "txt2img"
        model = EASEL_JOB_KINDS.get(kind) if isinstance(kind, str) else None
        if model is None:
            raise field_error("kind", f"must be one of {', '.join(EASEL_JOB_KINDS)} (got {printable(repr(kind))[:80]})")
        try:
            body = model.model_validate(raw)
        except ValidationError as e:
            raise InvalidFields(e.errors(), prefix=("body",)) from None
        submission = await run_in_threadpool(ctx.submit, kind, body, caller)
        return _accepted(submission.job)

    @router.post("/zoom", response_model=JobSubmitted, status_code=202,
                 openapi_extra={"requestBody": {"required": True,
                                                "content": {"application/json": {"schema": _ZOOM_BODY}}}})
    async def submit_zoom(raw: Annotated[dict[str, Any], Body()], caller: CallerDep) -> JSONResponse:
        """Queue an infinite-zoom video; poll GET /easel/v1/jobs/{id}, then fetch GET /easel/v1/jobs/{id}/video."""
        def admit():
            fields = dict(raw)
            if isinstance(fields.get("init_image"), str) and fields["init_image"]:
                fields["init_image"] = decode_image(fields["init_image"], "init_image").convert("RGB")
            return admit_body("zoom", ZoomRequest, fields, caller)
        return _accepted(await run_in_threadpool(admit))

    @router.post("/travel", response_model=JobSubmitted, status_code=202,
                 openapi_extra={"requestBody": {"required": True,
                                                "content": {"application/json": {"schema": _TRAVEL_BODY}}}})
    async def submit_travel(raw: Annotated[dict[str, Any], Body()], caller: CallerDep) -> JSONResponse:
        """Queue a prompt-travel video: `{"keyframes": [{"prompt", "seed", "frames"}, …]}` (or `prompt`:
        `a cat | a dog`) plus the txt2img fields and `fps`; poll GET /easel/v1/jobs/{id}, then fetch
        GET /easel/v1/jobs/{id}/video. `frames` counts the frames from a keyframe up to the next; the video
        ends on the last keyframe's own frame (sum of frames + 1 in all)."""
        return _accepted(await run_in_threadpool(admit_body, "travel", TravelRequest, raw, caller))

    @router.get("/jobs/{job_id}/video", response_class=FileResponse)
    def get_video(job_id: str, caller: CallerDep) -> FileResponse:
        """The mp4 of a finished zoom or travel job (an interrupted one has the frames it finished)."""
        job = ctx.visible_job(job_id, caller)
        video = job.result if isinstance(job.result, SavedVideo) else None
        if video is None or video.video is None or not video.video.is_file():
            raise ApiError(404, f"job {job_id!r} has no video (yet)")
        return FileResponse(video.video, media_type="video/mp4", filename=video.video.name)

    @router.get("/workers", response_model=WorkerList)
    def workers(caller: CallerDep) -> WorkerList:
        """Where jobs run: the in-process worker and, with `--workers ray`, each Ray worker (its device, the
        checkpoints it holds, the job it runs, jobs done and errors)."""
        return WorkerList(workers=queue.workers())

    @router.get("/jobs", response_model=JobList)
    def list_jobs(caller: CallerDep) -> JobList:
        """The caller's queued, running and recently finished jobs (without images)."""
        return JobList(jobs=[job_status(j, queue, with_images=False) for j in queue.jobs_of(caller.owner)])

    @router.get("/jobs/{job_id}", response_model=JobStatus)
    def get_job(job_id: str, caller: CallerDep, images: bool = True) -> JobStatus:
        """State, progress, ETA and queue position; the images and info once finished."""
        return job_status(ctx.visible_job(job_id, caller), queue, with_images=images)

    @router.post("/jobs/{job_id}/interrupt", response_model=JobStatus)
    def interrupt_job(job_id: str, caller: CallerDep) -> JobStatus:
        """Stop one job: dropped if queued, stopped at its next step if running."""
        job = ctx.visible_job(job_id, caller)
        queue.interrupt(job.id, by=caller.owner, admin=caller.admin)
        return job_status(job, queue, with_images=False)

    def admit_body(kind: str, model: type, fields: dict[str, Any], caller: Caller):
        """A job request validated from a body (errors named as sent: `body.<field>`) and admitted."""
        try:
            request = model.model_validate(fields)
        except ValidationError as e:
            raise InvalidFields(e.errors(), prefix=("body",)) from None
        return ctx.admission.submit(kind, request, caller).job

    def _accepted(job) -> JSONResponse:
        answer = job_answer(job, queue.position(job), f"/easel/v1/jobs/{job.id}")
        return JSONResponse(answer, status_code=202, headers={"Location": answer["url"]})

    return router
