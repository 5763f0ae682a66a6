"""The HTTP API: A1111's `/sdapi/v1` dialect and Easel's own `/easel/v1` jobs, on the shared services.

`build_api_router(easel, gate)` returns one FastAPI router; `app.py` mounts it beside the web UI
(or alone with `--nowebui`). Routes are thin: they turn a request body (a model derived from the
job request types) into a queued job through `ApiContext`, and the finished job into A1111's
response shape (txt2img and img2img in `sdapi.py`; Easel's queued jobs, zoom videos included, in
`jobs.py`; the outpaint canvas's endpoint in `canvas.py`).
"""
from __future__ import annotations

from fastapi import APIRouter

from webui.auth import Gate
from webui.services import Easel

from .context import ApiContext, ApiLimits
from .jobs import easel_router
from .sdapi import sdapi_router

__all__ = ["ApiLimits", "build_api_router"]


def build_api_router(easel: Easel, gate: Gate | None = None, limits: ApiLimits | None = None) -> APIRouter:
    ctx = ApiContext(easel, gate, limits)
    router = APIRouter(max_body_size=ctx.limits.max_body_bytes)
    router.include_router(sdapi_router(ctx))
    router.include_router(easel_router(ctx))
    return router
