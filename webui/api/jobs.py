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
from pydantic import ValidationError
from starlette.concurrency import run_in_threadpool

from .context import ApiContext, Caller, caller_dependency
from .errors import EaselRoute, InvalidFields, field_error, printable
from .results import job_status
from .schemas import EASEL_JOB_KINDS, JobList, JobStatus, JobSubmitted

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
        submit_job = ctx.easel.submit_img2img if kind == "img2img" else ctx.easel.submit_txt2img
        submission = await run_in_threadpool(ctx.submit, body, caller, submit_job)
        job = submission.job
        answer = JobSubmitted(id=job.id, state=job.state, position=queue.position(job), url=f"/easel/v1/jobs/{job.id}")
        return JSONResponse(answer.model_dump(mode="json"), status_code=202, headers={"Location": answer.url})

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

    return router
