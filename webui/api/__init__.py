"""The HTTP API: A1111's `/sdapi/v1` dialect and Easel's own `/easel/v1` jobs, on the shared services.

`build_api_router(ctx)` returns one FastAPI router; `app.py` mounts it beside the web UI (or alone
with `--nowebui`). Routes are thin: they turn a request body (a model derived from the job request
types) into a job request and hand it to admission (webui/admission.py), and the finished job into
A1111's response shape (txt2img and img2img in `sdapi.py`; Easel's queued jobs, zoom videos
included, in `jobs.py`; the Extras routes in `extras.py`; sd-webui-controlnet's in `controlnet.py`; the
gallery's in `gallery.py`; the outpaint canvas's endpoint in `canvas.py`).
"""
from __future__ import annotations

from fastapi import APIRouter

from .canvas import build_canvas_router
from .context import ApiContext, caller_dependency
from .controlnet import controlnet_router
from .gallery import gallery_router
from .training import training_router
from .extras import extras_router
from .jobs import easel_router
from .sdapi import sdapi_router

__all__ = ["ApiContext", "build_api_router", "build_canvas_router", "caller_dependency"]


def build_api_router(ctx: ApiContext) -> APIRouter:
    router = APIRouter()
    router.include_router(sdapi_router(ctx))
    router.include_router(extras_router(ctx))
    router.include_router(easel_router(ctx))
    router.include_router(controlnet_router(ctx))
    router.include_router(gallery_router(ctx))
    router.include_router(training_router(ctx))
    return router
