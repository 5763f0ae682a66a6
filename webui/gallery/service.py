"""The gallery as the app uses it: the index fed by the image store, scans of the outputs folder (and folders an
admin adds with `--gallery-folder`), thumbnails made once, who may see and change what, and the background
embedder that makes content search possible.

Visibility: with logins on, a user sees and changes their own images (the owner the store recorded), an admin
every image; with logins off (one person's machine) everyone sees everything, as in A1111. The page and the
API both ask here, and serve files by id only after this check, never by a path the client names.

The embedder runs in one background thread at the lowest CPU priority, a small batch at a time, and waits
while the queue runs a job: indexing never delays a generation (`bench/gallery.py` measures it).
"""
from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Protocol

from PIL import Image

from webui.errors import FieldError
from webui.images.store import PendingSave, SavedImage

from .embedder import Embedder, embed_missing
from .index import GalleryIndex, GalleryRow, ScanCounts, SearchPage
from webui.images.metadata import read_image_metadata

log = logging.getLogger(__name__)

THUMB_SIDE = 256
EMBED_BATCH = 16
# bits of the two 64-bit perceptual hashes that may differ for "the same picture": a resized or re-encoded
# copy differs by a handful, a different picture by about half of them
NEAR_DUPLICATE_BITS = 24


class Viewer(Protocol):
    """Who is asking (webui.admission.Caller has these): `user` is the signed-in user, None without logins."""

    owner: str
    user: str | None
    admin: bool


@dataclass
class Similar:
    """Reverse search: the same picture or near-duplicates, pictures alike in content, pictures made with a
    similar prompt (each list best first; `content` is empty without an embedding model)."""

    duplicates: list[GalleryRow]
    content: list[GalleryRow]
    prompt: list[GalleryRow]


class Gallery:
    def __init__(self, index: GalleryIndex, outputs: Path, thumbs: Path, *, folders: Iterable[Path] = (),
                 owner_of: Callable[[Path], str | None] | None = None,
                 embedder: Callable[[], Embedder | None] | None = None, busy: Callable[[], bool] = lambda: False):
        self.index = index
        self.outputs = outputs
        self.folders = [outputs, *folders]
        self.thumbs = thumbs
        thumbs.mkdir(parents=True, exist_ok=True)
        self.trash = outputs / "trash"
        self.owner_of = owner_of
        self._embedder_source = embedder
        self._embedder: Embedder | None = None
        self._unreadable: set[int] = set()  # ids the embedder could not read (not tried again)
        self.embedder_problem = "the embedding model is not loaded yet"
        self.busy = busy
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()  # one scan at a time

    # -- the store's hooks ------------------------------------------------------------------------------------
    def before_save(self, pending: PendingSave) -> None:
        return None

    def after_save(self, saved: SavedImage) -> None:
        self.index.after_save(saved)
        self._wake.set()

    # -- background work --------------------------------------------------------------------------------------
    def start(self) -> None:
        """Scan the folders, then embed what has no vector yet, in one low-priority thread."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._background, name="gallery", daemon=True)
            self._thread.start()

    def close(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self.index.close()

    def _background(self) -> None:
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)  # this thread only (Linux)
        except (AttributeError, OSError):
            pass
        try:
            self.rescan()
        except Exception:
            log.exception("gallery: the first scan failed; the index keeps what it had")
        if not self.load_embedder():
            return
        while not self._stop.is_set():
            if self.busy():
                self._stop.wait(0.5)
                continue
            if not self.embed_some():
                self._wake.wait(30)
                self._wake.clear()

    def load_embedder(self) -> bool:
        """Load the embedding model (a CLIP in models/CLIP, else Easel's demo one); False when there is none."""
        if self._embedder is None and self._embedder_source is not None:
            try:
                self._embedder = self._embedder_source()
            except Exception as e:  # a broken model folder: content search is off, the rest works
                log.error("gallery: no embedding model: %s: %s", type(e).__name__, e)
                self.embedder_problem = f"the embedding model could not be loaded ({e})"
        if self._embedder is not None:
            self.embedder_problem = ""
        elif not self.embedder_problem.startswith("the embedding model could not"):
            self.embedder_problem = "no embedding model (put a CLIP folder into models/CLIP)"
        return self._embedder is not None

    def embed_some(self, limit: int = EMBED_BATCH) -> int:
        """Embed up to `limit` images that have no vector yet; how many were stored."""
        if self._embedder is None:
            return 0
        return embed_missing(self.index, self._embedder, limit, self._unreadable)

    @property
    def content_search(self) -> bool:
        return self._embedder is not None

    def rescan(self) -> ScanCounts:
        with self._lock:
            counts = self.index.scan([f for f in self.folders if f.is_dir()], owner_of=self.owner_of)
        self._wake.set()
        log.info("gallery: %s", counts)
        return counts

    # -- who sees what ----------------------------------------------------------------------------------------
    def owner_filter(self, viewer: Viewer) -> str | None:
        """The owner whose images `viewer` sees (None: all)."""
        return viewer.owner if viewer.user is not None and not viewer.admin else None

    def may_see(self, row: GalleryRow, viewer: Viewer) -> bool:
        wanted = self.owner_filter(viewer)
        return wanted is None or row.owner == wanted

    def get(self, row_id: int, viewer: Viewer) -> GalleryRow:
        """The image, if `viewer` may see it (FieldError naming `id` otherwise: no hint that it exists)."""
        row = self.index.get(row_id)
        if row is None or not self.may_see(row, viewer) or not row.path.is_file():
            raise FieldError("id", f"no image {row_id}")
        return row

    def search(self, query: str, viewer: Viewer, page: int = 1, page_size: int = 50,
               sort: str = "newest") -> SearchPage:
        return self.index.search(query, owner=self.owner_filter(viewer), page=page, page_size=page_size, sort=sort)

    def similar(self, viewer: Viewer, image: Image.Image | None = None, text: str | None = None,
                row_id: int | None = None, limit: int = 20) -> Similar:
        """Reverse search from a picture, a text or an indexed image."""
        owner = self.owner_filter(viewer)
        if row_id is not None:
            row = self.get(row_id, viewer)
            with Image.open(row.path) as opened:
                image = opened.convert("RGB")
            text = row.prompt
        duplicates, content, prompt = [], [], []
        embedder = self._embedder
        if image is not None:
            duplicates = self.index.similar_by_hash(image, owner=owner, limit=limit, max_distance=NEAR_DUPLICATE_BITS)
            if text is None:
                text = read_image_metadata(image).parameters.get("Prompt") or None
            if embedder is not None:
                content = self.index.nearest(embedder.embed_images([image.convert("RGB")])[0], embedder.name,
                                             owner=owner, limit=limit)
        elif text and embedder is not None:
            content = self.index.nearest(embedder.embed_text([text])[0], embedder.name, owner=owner, limit=limit)
        if text:
            prompt = self.index.similar_by_prompt(text, owner=owner, limit=limit)
        if row_id is not None:
            duplicates, content, prompt = ([r for r in rows if r.id != row_id]
                                           for rows in (duplicates, content, prompt))
        return Similar(duplicates, content, prompt)

    def star(self, row_id: int, viewer: Viewer, starred: bool = True) -> GalleryRow:
        row = self.get(row_id, viewer)
        self.index.star(row.id, starred)
        return self.index.get(row.id)

    def delete(self, row_id: int, viewer: Viewer) -> Path:
        """Move the image into outputs/trash (never overwriting) and drop it from the index."""
        row = self.get(row_id, viewer)
        moved = self.index.delete(row.id, self.trash, root=self.outputs if row.path.is_relative_to(self.outputs)
                                  else row.path.parent)
        if moved is None:
            raise FieldError("id", f"image {row_id} could not be moved to the trash")
        (self.thumbs / f"{row.id}.webp").unlink(missing_ok=True)
        return moved

    # -- files --------------------------------------------------------------------------------------------------
    def thumbnail_owner(self, path: Path) -> str | None:
        """Whose image a thumbnail file shows (for the guard over Gradio's file routes); None if unknown."""
        try:
            row = self.index.get(int(path.stem))
        except ValueError:
            return None
        return row.owner if row is not None else None

    def thumbnail(self, row: GalleryRow) -> Path:
        """A small WEBP of the image, made the first time it is asked for."""
        path = self.thumbs / f"{row.id}.webp"
        if not path.is_file():
            self.thumbs.mkdir(parents=True, exist_ok=True)
            with Image.open(row.path) as image:
                image = image.convert("RGB")
                image.thumbnail((THUMB_SIDE, THUMB_SIDE))
                tmp = path.with_suffix(f".tmp-{threading.get_ident()}")
                image.save(tmp, format="WEBP", quality=82)
            os.replace(tmp, path)  # never a half-written thumbnail under its name
        return path


def row_json(row: GalleryRow) -> dict[str, Any]:
    """What the API and the page say about an image."""
    return {"id": row.id, "url": f"/easel/v1/images/{row.id}/file", "thumbnail": f"/easel/v1/images/{row.id}/thumb",
            "name": row.path.name, "kind": row.kind, "created": row.created, "width": row.width, "height": row.height,
            "prompt": row.prompt, "negative_prompt": row.negative_prompt, "model": row.model, "sampler": row.sampler,
            "seed": row.seed, "loras": list(row.loras), "parameters": row.parameters, "starred": row.starred,
            "owner": row.owner, "score": row.score}
