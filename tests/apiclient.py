"""An HTTP client on Easel's app (API only, no page), for the API tests."""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import replace

from fastapi.testclient import TestClient

from app import build_app
from webui.settings import Limits


@contextmanager
def api_client(easel, limits: Limits | None = None, **changes):
    """The app over `easel` with the API on; tiny-a is the checkpoint of requests naming none."""
    easel.manager.preferred = "tiny-a.safetensors"
    settings = replace(easel.settings, api=True, nowebui=True, **changes)
    if limits is not None:
        settings = replace(settings, limits=limits)
    easel.settings = settings
    with TestClient(build_app(easel, settings)) as client:
        yield client
