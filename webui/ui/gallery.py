"""The Gallery tab: search every image (text and filters), browse a page of thumbnails, open one with its
parameters, send it to a tab, star or delete it, and find images like it (by a picture dropped here, by the
selected image, or from the "Find similar" button under every other gallery of the page).

A thin skin over webui/gallery/service.py, which decides who sees what; the thumbnails it shows are made once
and served by Gradio under the same owner check as the outputs (app.py guards their folder).
"""
from __future__ import annotations

from typing import Any

import gradio as gr
from PIL import Image

from webui.auth import Gate
from webui.errors import FieldError
from webui.gallery.index import GalleryRow
from webui.gallery.service import Gallery
from webui.images.store import read_infotext

from .result_view import ResultView
from .widgets import error_html, notice_html, ui_caller

PAGE_SIZE = 48
HELP = ('Words and "phrases" search the prompt and parameters; -word excludes; filters: model: sampler: seed: '
        "size:WxH lora: kind:txt2img after:YYYY-MM-DD before: starred:yes; empty = everything")


class GalleryTab:
    def __init__(self, gallery: Gallery, gate: Gate | None):
        self.gallery = gallery
        self.gate = gate
        self.results = ResultView("gallery", label="Images", columns=6)

    def build(self) -> None:
        with gr.Row():
            self.query = gr.Textbox(label="Search", placeholder="a red circle model:demo -square", scale=6,
                                    elem_id="gallery_query", info=HELP)
            self.sort = gr.Dropdown(["newest", "relevance", "oldest"], value="newest", label="Sort", scale=1,
                                    elem_id="gallery_sort")
            self.search_button = gr.Button("Search", variant="primary", scale=1, elem_id="gallery_search")
        with gr.Row():
            with gr.Column(scale=3):
                self.results.build()
                with gr.Row():
                    self.previous = gr.Button("◀ Previous", size="sm", elem_id="gallery_previous")
                    self.page = gr.Number(value=1, precision=0, minimum=1, label="Page", elem_id="gallery_page")
                    self.next = gr.Button("Next ▶", size="sm", elem_id="gallery_next")
            with gr.Column(scale=1):
                self.selected_image = gr.Image(label="Selected", type="filepath", interactive=False,
                                               elem_id="gallery_selected", height=300)
                with gr.Row():
                    self.star = gr.Button("Star / unstar", size="sm", elem_id="gallery_star")
                    self.delete = gr.Button("Delete (to the trash)", size="sm", variant="stop",
                                            elem_id="gallery_delete")
                self.drop = gr.Image(label="Find similar: drop or paste a picture", type="pil",
                                     sources=["upload", "clipboard"], elem_id="gallery_drop", height=200)
        self.ids = gr.State([])  # the shown images' ids, in order
        r = self.results
        listing = [r.gallery, r.info, r.progress, r.images, r.selected, self.ids, self.page, self.selected_image]
        self.listing = listing
        search_inputs = [self.query, self.sort, self.page]

        def previous(query: str, sort: str, page: float, request: gr.Request) -> list:
            return self.search(query, sort, max(1, int(page or 1) - 1), request)

        def following(query: str, sort: str, page: float, request: gr.Request) -> list:
            return self.search(query, sort, int(page or 1) + 1, request)
        self.search_button.click(self.first, inputs=[self.query, self.sort], outputs=listing, api_name=False)
        self.query.submit(self.first, inputs=[self.query, self.sort], outputs=listing, api_name=False)
        self.previous.click(previous, inputs=search_inputs, outputs=listing, api_name=False)
        self.next.click(following, inputs=search_inputs, outputs=listing, api_name=False)
        r.gallery.select(self.open, inputs=self.ids, outputs=[r.info, self.selected_image], api_name=False)
        self.results.find_similar.click(self.similar_to_selected, inputs=[self.ids, r.selected], outputs=listing,
                                        api_name=False)
        self.drop.upload(self.similar_to_picture, inputs=self.drop, outputs=listing, api_name=False)
        self.star.click(self.toggle_star, inputs=[self.ids, r.selected], outputs=r.progress, api_name=False)
        self.delete.click(self.delete_selected, inputs=[self.ids, r.selected, self.query, self.sort, self.page],
                          outputs=listing, api_name=False)

    # -- what the events do ----------------------------------------------------------------------------------
    def show(self, rows: list[GalleryRow], note: str, page: int | None = None) -> list:
        items, shown = [], []
        for row in rows:
            try:
                items.append((str(self.gallery.thumbnail(row)), _caption(row)))
            except (OSError, ValueError):
                continue  # a file gone since it was indexed: the next rescan forgets it
            shown.append(row)
        return [items, "", notice_html(note), [str(row.path) for row in shown], 0, [row.id for row in shown],
                page if page is not None else gr.skip(), None]

    def first(self, query: str, sort: str, request: gr.Request) -> list:
        return self.search(query, sort, 1, request)

    def opened(self, query: str, sort: str, ids: list[int], request: gr.Request) -> list:
        """Opening the tab shows the first page, unless it already shows something (a "Find similar" from
        another tab also opens it)."""
        return [gr.skip()] * len(self.listing) if ids else self.first(query, sort, request)

    def search(self, query: str, sort: str, page: int, request: gr.Request) -> list:
        caller = ui_caller(request, self.gate)
        found = self.gallery.search(query or "", caller, page=page, page_size=PAGE_SIZE, sort=sort or "newest")
        if found.total and page > found.pages:
            found = self.gallery.search(query or "", caller, page=found.pages, page_size=PAGE_SIZE, sort=sort)
        note = f"{found.total} image(s), page {found.page} of {max(1, found.pages)}"
        if found.notes:
            note += " — " + "; ".join(found.notes)
        if not self.gallery.content_search:
            note += f" · content search is off: {self.gallery.embedder_problem}; text search works"
        return self.show(list(found.rows), note, found.page)

    def open(self, ids: list[int], evt: gr.SelectData, request: gr.Request) -> tuple[str, Any]:
        index = int(evt.index or 0)
        if index >= len(ids):
            return "", None
        try:
            row = self.gallery.get(ids[index], ui_caller(request, self.gate))
            with Image.open(row.path) as image:
                return read_infotext(image) or "", str(row.path)
        except (FieldError, OSError):
            return "", None

    def similar(self, request: gr.Request, **source: Any) -> list:
        caller = ui_caller(request, self.gate)
        try:
            found = self.gallery.similar(caller, **source)
        except FieldError as e:
            return [gr.skip()] * 2 + [error_html(e.message)] + [gr.skip()] * 5
        rows, seen, kinds = [], set(), []
        for kind, group in (("same picture", found.duplicates), ("alike", found.content),
                            ("similar prompt", found.prompt)):
            fresh = [r for r in group if r.id not in seen]
            seen.update(r.id for r in fresh)
            rows += fresh
            if fresh:
                kinds.append(f"{len(fresh)} {kind}")
        note = "Similar images: " + (", ".join(kinds) if kinds else "none")
        if not self.gallery.content_search:
            note += f" (content search is off: {self.gallery.embedder_problem})"
        return self.show(rows, note)

    def similar_to_selected(self, ids: list[int], selected: int, request: gr.Request) -> list:
        if not ids:
            return [gr.skip()] * 2 + [error_html("Search first, then pick an image.")] + [gr.skip()] * 5
        return self.similar(request, row_id=ids[min(selected or 0, len(ids) - 1)])

    def similar_to_item(self, item: Any, request: gr.Request) -> list:
        """"Find similar" under another tab's gallery: its selected result (a saved file or a picture)."""
        if item is None:
            return [gr.skip()] * 2 + [error_html("No image to look for.")] + [gr.skip()] * 5
        if isinstance(item, Image.Image):
            return self.similar(request, image=item)
        with Image.open(item) as opened:
            opened.load()
            return self.similar(request, image=opened)

    def similar_to_picture(self, picture: Image.Image | None, request: gr.Request) -> list:
        if picture is None:
            return [gr.skip()] * 8
        return self.similar(request, image=picture)

    def toggle_star(self, ids: list[int], selected: int, request: gr.Request) -> str:
        if not ids:
            return error_html("Pick an image first.")
        caller = ui_caller(request, self.gate)
        try:
            row = self.gallery.get(ids[min(selected or 0, len(ids) - 1)], caller)
            row = self.gallery.star(row.id, caller, not row.starred)
        except FieldError as e:
            return error_html(e.message)
        return notice_html(f"{'Starred' if row.starred else 'Unstarred'} {row.path.name}")

    def delete_selected(self, ids: list[int], selected: int, query: str, sort: str, page: int,
                        request: gr.Request) -> list:
        if not ids:
            return [gr.skip()] * 2 + [error_html("Pick an image first.")] + [gr.skip()] * 5
        try:
            moved = self.gallery.delete(ids[min(selected or 0, len(ids) - 1)], ui_caller(request, self.gate))
        except FieldError as e:
            return [gr.skip()] * 2 + [error_html(e.message)] + [gr.skip()] * 5
        listing = self.search(query, sort, int(page or 1), request)
        listing[2] = notice_html(f"Moved {moved.name} to the trash")
        return listing


def _caption(row: GalleryRow) -> str:
    text = row.prompt if len(row.prompt) <= 80 else row.prompt[:77] + "…"
    return text or row.path.name
