"""Small pieces shared by every tab: the progress bar, status messages, session ids."""
from __future__ import annotations

import base64
import html
from typing import Any

import gradio as gr

from webui.admission import Caller
from webui.auth import Gate
from webui.images.store import png_bytes
from webui.jobs.queue import Job, JobState


def session_id(request: gr.Request | None) -> str:
    """The browser session that owns a job (the authenticated user once auth is on). The page sends its
    session hash itself, so it is namespaced: it can never name an API caller's owner (`addr:…`)."""
    if request is None:
        return "anonymous"
    user = getattr(request, "username", None)
    if user:
        return user
    return f"session:{request.session_hash}" if request.session_hash else "anonymous"


def ui_caller(request: gr.Request | None, gate: Gate | None) -> Caller:
    """The page's caller: the signed-in user (the same owner their API jobs get), else the browser session."""
    user = getattr(request, "username", None) if request is not None else None
    logins = gate is not None and gate.enabled
    admin = bool(logins and gate.accounts.is_admin(user))
    return Caller(owner=session_id(request), user=user, admin=admin, manager=admin or not logins)


def progress_html(job: Job, position: int = 0) -> str:
    text = job.progress_text(position)
    pct = 0 if job.state is JobState.QUEUED else round(job.progress * 100)
    bar = (
        f'<div class="easel-progress" data-state="{job.state.value}">'
        f'<div class="easel-progress-bar" style="width:{pct}%"></div>'
        f'<span class="easel-progress-text">{html.escape(text)}</span></div>'
    )
    return bar + live_preview_html(job)


def live_preview_html(job: Job) -> str:
    """The cheap latent preview of a running job (see webui.images.preview), or nothing."""
    if job.state is not JobState.RUNNING:
        return ""
    image = job.preview_image()
    if image is None:
        return ""
    data = base64.b64encode(png_bytes(image, None)).decode("ascii")
    return f'<img class="easel-live-preview" alt="live preview" src="data:image/png;base64,{data}">'



def error_html(message: str) -> str:
    return f'<div class="easel-error" role="alert">{html.escape(message)}</div>'


def notice_html(message: str) -> str:
    return f'<div class="easel-notice">{html.escape(message)}</div>'


def table_rows(rows: Any, columns: int) -> list[tuple[int, list]]:
    """(row number from 1, its first `columns` cells, padded with None) of a Dataframe's value, whether
    Gradio hands over a list of lists or a pandas DataFrame."""
    if rows is None:
        return []
    if hasattr(rows, "values") and hasattr(rows, "columns"):
        rows = rows.values.tolist()
    return [(n, (list(row) + [None] * columns)[:columns]) for n, row in enumerate(rows, start=1)]
