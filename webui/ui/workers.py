"""The Settings tab's Workers section: where jobs run (the in-process worker and, with `--workers ray`, each
Ray worker), what each holds and runs, and its record; the same rows as GET /easel/v1/workers."""
from __future__ import annotations

import html

import gradio as gr

from webui.jobs.queue import JobQueue

from .widgets import notice_html

COLUMNS = ("id", "device", "models", "current_job", "jobs_done", "errors")


def workers_html(queue: JobQueue) -> str:
    rows = queue.workers()
    if not rows:
        return notice_html("No worker is running: jobs wait until one joins.")
    def cell(value) -> str:
        text = ", ".join(value) if isinstance(value, list) else "–" if value is None else str(value)
        return f"<td>{html.escape(text)}</td>"
    body = "".join("<tr>" + "".join(cell(row[c]) for c in COLUMNS) + "</tr>" for row in rows)
    head = "".join(f"<th>{c.replace('_', ' ')}</th>" for c in COLUMNS)
    return f'<table class="easel-workers"><tr>{head}</tr>{body}</table>'


class WorkersSection:
    def __init__(self, queue: JobQueue):
        self.queue = queue

    def build(self) -> gr.HTML:
        with gr.Accordion("Workers", open=True, elem_id="settings_workers"):
            table = gr.HTML(workers_html(self.queue), elem_id="workers_table")
            refresh = gr.Button("Refresh", elem_id="workers_refresh", size="sm")
        refresh.click(lambda: workers_html(self.queue), inputs=None, outputs=table, api_name=False)
        self.table = table
        return table
