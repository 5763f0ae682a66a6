"""Easel's own `/easel/v1` routes: submit a job, poll it, interrupt it, without holding a connection.

The request body is the same as `/sdapi/v1/txt2img`'s (plus `kind`), answers use the same images
and `info`. A caller sees and stops only their own jobs; an admin sees and stops anyone's. Someone
else's job answers 404, so job ids reveal nothing.
"""
# No `from __future__ import annotations`: FastAPI must see the route-local `CallerDep` type.
from typing import Annotated

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from .context import ApiContext, Caller, caller_dependency
from .errors import EaselRoute
from .results import job_status
from .schemas import EaselTxt2ImgJob, JobList, JobStatus, JobSubmitted


def easel_router(ctx: ApiContext) -> APIRouter:
    router = APIRouter(prefix="/easel/v1", tags=["Easel API"], route_class=EaselRoute)
    CallerDep = Annotated[Caller, Depends(caller_dependency(ctx))]
    queue = ctx.easel.queue

    @router.post("/jobs", response_model=JobSubmitted, status_code=202)
    async def submit(body: EaselTxt2ImgJob, caller: CallerDep) -> JSONResponse:
        """Queue a job and return its id at once; poll GET /easel/v1/jobs/{id}."""
        submission = await run_in_threadpool(ctx.submit, body, caller, ctx.easel.submit_txt2img)
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
