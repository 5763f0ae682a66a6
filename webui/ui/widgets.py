"""Small pieces shared by every tab: the progress bar, status messages, session ids."""
from __future__ import annotations

import html

import gradio as gr

from webui.jobs.queue import Job, JobState


def session_id(request: gr.Request | None) -> str:
    """The browser session that owns a job (the authenticated user once auth is on)."""
    if request is None:
        return "anonymous"
    return getattr(request, "username", None) or request.session_hash or "anonymous"


def progress_html(job: Job, position: int = 0) -> str:
    if job.state is JobState.QUEUED:
        text = f"Waiting in queue (position {position})" if position else "Waiting in queue"
        pct = 0
    else:
        text = job.progress_text()
        pct = round(job.progress * 100)
    return (
        f'<div class="easel-progress" data-state="{job.state.value}">'
        f'<div class="easel-progress-bar" style="width:{pct}%"></div>'
        f'<span class="easel-progress-text">{html.escape(text)}</span></div>'
    )


def error_html(message: str) -> str:
    return f'<div class="easel-error" role="alert">{html.escape(message)}</div>'


def notice_html(message: str) -> str:
    return f'<div class="easel-notice">{html.escape(message)}</div>'
