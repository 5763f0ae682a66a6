"""A1111's training routes: `POST /sdapi/v1/create/embedding` and `POST /sdapi/v1/train/embedding`.

Both queue a job like any other (kind "create_embedding" / "train") through admission and answer when it has
finished, with A1111's `{"info": …}`; while training runs, `/sdapi/v1/progress` and Easel's `/easel/v1/jobs`
show it, and its owner (or an admin) can interrupt it (the embedding is saved as it is).
"""
# No `from __future__ import annotations`: FastAPI must see the route-local `CallerDep` type.
from typing import Annotated

from fastapi import APIRouter, Depends
from starlette.concurrency import run_in_threadpool

from webui.jobs.queue import JobState
from webui.training.textual_inversion import CreateEmbeddingRequest, TrainEmbeddingRequest

from .context import ApiContext, Caller, caller_dependency
from .errors import EaselRoute
from .results import failure_error, wait_for


def training_router(ctx: ApiContext) -> APIRouter:
    router = APIRouter(prefix="/sdapi/v1", tags=["A1111 API"], route_class=EaselRoute)
    CallerDep = Annotated[Caller, Depends(caller_dependency(ctx))]

    async def finished(kind: str, body, caller: Caller):
        job = await run_in_threadpool(lambda: ctx.admission.submit(kind, body, caller).job)
        await wait_for(job, ctx.easel.queue)
        if job.state is JobState.FAILED:
            raise failure_error(job)
        return job

    @router.post("/create/embedding")
    async def create(body: CreateEmbeddingRequest, caller: CallerDep) -> dict:  # type: ignore[valid-type]
        """A new embedding in models/embeddings, started from the init text's token embeddings (`.pt`, or
        `.safetensors` with Easel's `file_format`; SDXL's are `.safetensors` with `clip_l` and `clip_g`)."""
        job = await finished("create_embedding", body, caller)
        return {"info": f"Embedding created: {job.result.name}"}

    @router.post("/train/embedding")
    async def train(body: TrainEmbeddingRequest, caller: CallerDep) -> dict:  # type: ignore[valid-type]
        """Train an embedding on a folder of pictures (A1111's fields), or on pictures sent as base64 in `images`
        with optional `captions` (Easel's), and wait for it."""
        job = await finished("train", body, caller)
        result = job.result
        state = "interrupted" if result.interrupted else "finished"
        return {"info": f"Training {state} at step {result.steps_done}. Embedding saved to {result.embedding.name}; "
                        f"last loss {result.last_loss if result.last_loss is not None else 'n/a'}",
                "step": result.steps_done, "loss": result.last_loss}

    return router
