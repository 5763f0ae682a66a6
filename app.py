"""Easel entry point: parse flags, build the services once, serve the web UI and the HTTP API.

    python app.py [--port 7860] [--listen] [--share] [--ckpt-dir DIR] [--data-dir DIR] ...
    python app.py --api [--gradio-auth user:pass] ...     UI at /, API at /sdapi/v1 and /easel/v1, docs at /docs
    python app.py --nowebui [--api-auth user:pass] ...    API only, port 7861

(`./launch.sh` installs everything into .venv first and then runs this.)

Everything is one FastAPI app on one port: the API routes, then the Gradio UI mounted at `/`, and,
when any login is configured, one access guard around all of it.
"""
from __future__ import annotations

import logging
import secrets
import sys
import threading
import time
from typing import TYPE_CHECKING

import webui  # (switches the Hugging Face libraries offline before they are imported)
from webui.settings import Settings, settings_from_args

if TYPE_CHECKING:  # the heavy imports wait until the flags are parsed (`--help` stays instant)
    from fastapi import FastAPI

    from webui.admission import Admission
    from webui.auth import Gate
    from webui.extensions.loader import Extensions
    from webui.services import Easel

log = logging.getLogger("easel")


def build_app(easel: Easel, settings: Settings, extensions: Extensions | None = None) -> FastAPI:
    """The whole ASGI app for these settings (also what the tests serve)."""
    from fastapi import FastAPI

    from webui.admission import Admission
    from webui.api import ApiContext, build_api_router, build_canvas_router
    from webui.api.body_limit import BodyLimit
    from webui.auth import AccessGuard, Accounts, Gate, OutputFiles

    gate = Gate(Accounts.from_settings(settings))
    admission = Admission(easel)
    ctx = ApiContext(easel, admission, gate, extensions)
    app = FastAPI(
        title="Easel", version=webui.__version__, redoc_url=None,
        description="A1111-compatible API (/sdapi/v1) and Easel's job API (/easel/v1).",
        docs_url="/docs" if settings.api else None, openapi_url="/openapi.json" if settings.api else None,
    )
    if settings.api:
        app.include_router(build_api_router(ctx))
    app.include_router(build_canvas_router(ctx))  # the outpaint canvas's endpoint (UI and API)
    mount_extension_routes(app, ctx, extensions)
    if not settings.nowebui:
        mount_ui(app, easel, settings, gate, admission, extensions)
    if gate.enabled:
        owners = easel.owners.owner_of if easel.owners is not None else (lambda path: None)
        files = OutputFiles(settings.outputs_dir, owners)
        if easel.gallery is not None:
            files.guard(easel.gallery.thumbs, easel.gallery.thumbnail_owner)
        app.add_middleware(AccessGuard, gate=gate, files=files)
    app.add_middleware(BodyLimit, max_bytes=settings.limits.max_body_bytes)  # outermost: every route
    return app


def mount_extension_routes(app: FastAPI, ctx, extensions: Extensions | None) -> None:
    """Each enabled extension's routers, built with the narrow ApiServices; one that fails to build is
    left out with a log line."""
    from webui.api import caller_dependency
    from webui.api.errors import EaselRoute
    from webui.extensions import ApiServices

    if extensions is None:
        return
    services = ApiServices(caller=caller_dependency(ctx), route_class=EaselRoute,
                           submit=lambda kind, request, caller: ctx.admission.submit(kind, request, caller).job)
    for name, build in extensions.routers:
        try:
            app.include_router(build(services))
        except Exception as e:
            log.error("extension %s: its API routes were left out: %s: %s", name, type(e).__name__, e)


def mount_ui(app: FastAPI, easel: Easel, settings: Settings, gate: Gate, admission: Admission,
             extensions: Extensions | None = None) -> None:
    """The Gradio UI at `/`; with logins, Gradio learns each event's user from the same gate."""
    import gradio as gr

    from webui.ui.layout import build_ui, launch_kwargs

    blocks = build_ui(easel, admission, gate, extensions)
    blocks.queue(default_concurrency_limit=None)
    gr.mount_gradio_app(
        app, blocks, path="/",
        auth_dependency=gate.ui_user if gate.enabled else None,
        allowed_paths=[str(settings.outputs_dir), *([str(easel.gallery.thumbs)] if easel.gallery else [])],
        show_error=False,
        max_file_size=settings.limits.max_body_bytes,  # uploads: the same limit as any body
        **launch_kwargs(),
    )


def warn_if_open(settings: Settings) -> None:
    if settings.ui_credentials or settings.api_credentials:
        return
    if settings.listen:
        log.warning("*** --listen: Easel is reachable from other machines WITHOUT a password. ***")
    if settings.share:
        log.warning("*** --share: anyone with the public link can use Easel WITHOUT a password "
                    "(set --gradio-auth user:password). ***")


def serve(app: FastAPI, settings: Settings) -> None:
    """Run the server; with --share also open Gradio's public tunnel to it once it listens."""
    import uvicorn

    server = uvicorn.Server(uvicorn.Config(app, host=settings.host, port=settings.port, log_level="warning"))
    what = "API" if settings.nowebui else "web UI"
    if not settings.share:
        log.info("serving the %s on http://%s:%d", what, settings.host, settings.port)
        server.run()
        return
    thread = threading.Thread(target=server.run, name="easel-http", daemon=True)
    thread.start()
    while not server.started and thread.is_alive():
        time.sleep(0.1)
    log.info("serving the %s on http://%s:%d", what, settings.host, settings.port)
    try:
        log.info("public link: %s", open_share_link(settings))
    except Exception as e:  # no network, blocked binary, …: the local server keeps running
        log.error("could not open a share link: %s", e)
    try:
        while thread.is_alive():
            thread.join(0.5)
    except KeyboardInterrupt:
        server.should_exit = True
        thread.join(10)


def open_share_link(settings: Settings) -> str:
    from gradio import networking

    return networking.setup_tunnel("127.0.0.1", settings.port, secrets.token_urlsafe(32), None, None)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    settings = settings_from_args(argv)

    from webui.extensions.loader import load_extensions
    from webui.services import Easel

    easel = Easel.create(settings)
    extensions = load_extensions(settings, easel.features, easel.options)
    log.info("device %s, dtype %s, %d checkpoint(s) under %s", settings.device, settings.dtype,
             len(easel.manager.list()), ", ".join(str(d) for d in settings.checkpoint_dirs))
    pool = None
    if settings.workers == "ray":  # generation on Ray workers; this process keeps the jobs that cannot travel
        from webui.workers.ray_pool import RayPool

        pool = RayPool(settings, easel.queue).start()
        log.info("Ray workers: %d wanted; they start in the background and take jobs as they come up",
                 pool.wanted())
    elif not settings.skip_load_model_at_start and easel.manager.default_checkpoint() is not None:
        try:
            model = easel.load_model(None)
            log.info("loaded %s", model.info.title)
        except Exception as e:  # a bad default checkpoint must not stop the UI from starting
            log.error("could not load the default checkpoint: %s", e)
    warn_if_open(settings)
    if easel.gallery is not None:
        easel.gallery.start()  # scan outputs/, then embed in the background
    try:
        serve(build_app(easel, settings, extensions), settings)
    finally:
        easel.queue.shutdown()
        if pool is not None:
            pool.close()
        easel.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
