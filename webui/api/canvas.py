"""`/easel/v1/canvas`: the outpaint canvas's small JSON endpoint (the page's canvas.js talks to it).

POST /generate takes one selection box (its RGBA pixels as a base64 PNG plus the generation
parameters of `OutpaintParams`) and answers 202 with a job id at once; GET /jobs/{id} gives state,
progress and, when finished, the candidates (whole boxes as base64 PNGs with their infotext);
POST /jobs/{id}/interrupt stops it. A caller sees and stops only their own jobs (an admin anyone's).

Every refusal is a 422 naming the field (a box side that is not a multiple of 8, over 2048 px,
an image that is not base64 or not a PNG of the box's size); nothing a client sends gives a 500.
"""
# No `from __future__ import annotations`: FastAPI must see the route-local `CallerDep` type.
from typing import Annotated, Literal

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field, ValidationError
from starlette.concurrency import run_in_threadpool

from webui.generation.outpaint import OutpaintParams, OutpaintRequest
from webui.jobs.queue import Job

from .context import ApiContext, Caller, caller_dependency
from .errors import ApiError, EaselRoute, InvalidFields, field_error
from .images import decode_image, encode_png
from .results import generation_result, job_fields, saved_images
from .schemas import JobView

JOB_KIND = "outpaint"


class CanvasGenerateBody(OutpaintParams):
    """One box to fill: the generation parameters, the box size, and its pixels."""

    image: str = Field(description="the box as a base64 PNG (or data URL) with alpha; transparent = empty")
    save_images: bool = Field(True, description="also save every candidate under outputs/outpaint-images")


class Candidate(BaseModel):
    image: str = Field(description="the whole box as a base64 PNG with its infotext")
    info: str
    seed: int


class CanvasJob(JobView):
    kind: Literal["txt2img", "img2img", "outpaint"] | None = Field(None, description="what the box became")
    candidates: list[Candidate] | None = Field(None, description="once finished")


def to_request(body: CanvasGenerateBody) -> OutpaintRequest:
    """The typed job request; 422 naming `image` when it is not a PNG of exactly the box's size."""
    image = decode_image(body.image, "image")
    if image.size != (body.width, body.height):
        raise field_error("image", f"is {image.width}x{image.height} but the box is {body.width}x{body.height}")
    params = body.model_dump(exclude={"image", "save_images"})
    return OutpaintRequest(**params, box=image.convert("RGBA"))


def canvas_job(job: Job, position: int, with_images: bool = True) -> CanvasJob:
    result = generation_result(job)
    candidates = None
    if with_images and job.done and result is not None:
        candidates = [Candidate(image=encode_png(im, info), info=info, seed=seed) for im, info, seed in saved_images(job)]
    return CanvasJob(**job_fields(job, position), kind=result.extra.get("box_kind") if result else None,
                     candidates=candidates)


def build_canvas_router(ctx: ApiContext) -> APIRouter:
    router = APIRouter(prefix="/easel/v1/canvas", tags=["Outpaint canvas"], route_class=EaselRoute)
    CallerDep = Annotated[Caller, Depends(caller_dependency(ctx))]
    queue = ctx.easel.queue

    def own_job(job_id: str, caller: Caller) -> Job:
        job = ctx.visible_job(job_id, caller)
        if job.description != JOB_KIND:
            raise ApiError(404, f"no canvas job {job_id!r} of yours")
        return job

    @router.post("/generate", response_model=CanvasJob, status_code=202)
    async def generate(body: CanvasGenerateBody, caller: CallerDep) -> JSONResponse:
        """Queue one box; poll GET /easel/v1/canvas/jobs/{id} for progress and candidates."""
        def admit() -> Job:
            try:
                request = to_request(body)
            except ValidationError as e:
                raise InvalidFields(e.errors(), prefix=("body",)) from None
            return ctx.admission.submit(JOB_KIND, request, caller, save=body.save_images).job
        job = await run_in_threadpool(admit)
        answer = canvas_job(job, queue.position(job), with_images=False)
        return JSONResponse(answer.model_dump(mode="json"), status_code=202,
                            headers={"Location": f"/easel/v1/canvas/jobs/{job.id}"})

    @router.get("/jobs/{job_id}", response_model=CanvasJob)
    def status(job_id: str, caller: CallerDep, images: bool = True) -> CanvasJob:
        """State and progress; the candidates once finished (also after an interrupt, those made)."""
        job = own_job(job_id, caller)
        return canvas_job(job, queue.position(job), with_images=images)

    @router.post("/jobs/{job_id}/interrupt", response_model=CanvasJob)
    def interrupt(job_id: str, caller: CallerDep) -> CanvasJob:
        """Stop the job: dropped if queued, stopped at its next step if running."""
        job = own_job(job_id, caller)
        queue.interrupt(job.id, by=caller.owner, admin=caller.admin)
        return canvas_job(job, queue.position(job), with_images=False)

    return router

