"""The gallery index: every output image in one SQLite database, searchable by text, filters, look and content.

One table row per image file (path, owner, output kind, time, size, the parsed infotext with the fields people
filter on pulled out into indexed columns, two perceptual hashes, a star), an FTS5 index over the prompt,
negative prompt and parameters line kept in step by triggers, the LoRA names in a side table, and embedding
vectors in another. The index is fed by the image store's save hooks (`after_save`) and by `scan`, which
walks folders for files written by anything else (A1111, ComfyUI, a copy from another disk).

Concurrency: one connection in WAL mode behind a lock, shared by every thread (the store's hook runs in job
workers, searches in request handlers). Writes are short transactions; a scan reads and hashes files outside
the lock and writes them in batches. `synchronous=NORMAL` is enough: the index can always be rebuilt by a scan.
The numpy caches (hashes, vectors) live in this process; another process writing the same database is
noticed through `PRAGMA data_version` and the caches are reloaded.

Deliberately not here: who may see what (the caller passes `owner`, None for an admin) and the embedding
models (the caller stores their vectors with `put_vector`).
"""
from __future__ import annotations

import errno
import json
import logging
import os
import re
import shutil
import sqlite3
import threading
import unicodedata
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Sequence

import numpy as np
from PIL import Image

from webui.images.infotext import parse_infotext
from webui.images.store import PendingSave, SavedImage

from .hashing import HASH_BITS, as_unsigned, hamming, perceptual_hashes
from .matrix import RowMatrix, top_k
from webui.images.metadata import ImageMetadata, read_image_metadata
from .query import Term, compile_query, fts_phrase, parse_query, time_id

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp"})
TRASH_FOLDER = "trash"
MAX_PAGE_SIZE = 500
SORTS = ("newest", "oldest", "relevance")
BM25_WEIGHTS = "1.0, 0.3, 0.5"  # prompt, negative prompt, parameters line
_PROMPT_KEYS = ("Prompt", "Negative prompt")  # own columns; the stored parameters JSON leaves them out
# not in the full-text index: values unique to each image or file would add a word per image to FTS5's
# vocabulary and match nothing anyone types (seed:, model: and lora: filter on them instead)
_UNSEARCHED = {"Prompt", "Negative prompt", "Size-1", "Size-2", "Seed", "Model hash", "VAE hash", "Lora hashes",
               "TI hashes", "Hashes"}
_LORA_TAG = re.compile(r"<(?:lora|lyco):([^:>]+)", re.IGNORECASE)
_DATE_FOLDER = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_PROMPT_WORD = re.compile(r"[^\W_]*[^\W\d_][^\W_]*")  # FTS5 unicode61 tokens (letters, digits) with a letter
_STOP_WORDS = frozenset("and the with for from into onto that this very of in on at by to an".split())
_SCAN_BATCH = 64

_SCHEMA = """
CREATE TABLE IF NOT EXISTS images (
    id INTEGER PRIMARY KEY,  -- microseconds since 1970 of `created` (see time_id): id order is time order
    path TEXT NOT NULL UNIQUE,
    owner TEXT,
    kind TEXT NOT NULL DEFAULT '' COLLATE NOCASE,
    created REAL NOT NULL,
    mtime_ns INTEGER NOT NULL DEFAULT 0,
    file_size INTEGER NOT NULL DEFAULT 0,
    width INTEGER NOT NULL DEFAULT 0,
    height INTEGER NOT NULL DEFAULT 0,
    prompt TEXT NOT NULL DEFAULT '',
    negative TEXT NOT NULL DEFAULT '',
    params_text TEXT NOT NULL DEFAULT '',
    parameters TEXT NOT NULL DEFAULT '{}',
    source TEXT NOT NULL DEFAULT 'none',
    model TEXT COLLATE NOCASE,
    model_hash TEXT COLLATE NOCASE,
    sampler TEXT COLLATE NOCASE,
    seed INTEGER,
    loras TEXT NOT NULL DEFAULT '',
    phash INTEGER,
    dhash INTEGER,
    starred INTEGER NOT NULL DEFAULT 0
);
-- an index on a column holds the rowid too, so (owner) serves "one owner's, newest first"; sampler, kind and
-- size have too few distinct values to be worth an index (and would mislead the planner without statistics)
CREATE INDEX IF NOT EXISTS images_owner ON images(owner);
CREATE INDEX IF NOT EXISTS images_seed ON images(seed);
CREATE INDEX IF NOT EXISTS images_model ON images(model);
CREATE INDEX IF NOT EXISTS images_model_hash ON images(model_hash);
CREATE INDEX IF NOT EXISTS images_starred ON images(starred) WHERE starred = 1;
CREATE TABLE IF NOT EXISTS image_loras (
    name TEXT NOT NULL COLLATE NOCASE,
    image_id INTEGER NOT NULL,
    PRIMARY KEY (name, image_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS image_loras_image ON image_loras(image_id);
CREATE TABLE IF NOT EXISTS vectors (
    id INTEGER PRIMARY KEY,
    model TEXT NOT NULL,
    image_id INTEGER NOT NULL,
    dim INTEGER NOT NULL,
    vector BLOB NOT NULL,  -- float32, little-endian; a rowid table because WITHOUT ROWID suits small rows only
    UNIQUE (model, image_id)
);
CREATE INDEX IF NOT EXISTS vectors_image ON vectors(image_id);
CREATE VIRTUAL TABLE IF NOT EXISTS images_fts USING fts5(
    prompt, negative, params_text, content='images', content_rowid='id', tokenize='unicode61 remove_diacritics 2');
CREATE VIRTUAL TABLE IF NOT EXISTS images_vocab USING fts5vocab(images_fts, 'col');
CREATE TRIGGER IF NOT EXISTS images_fts_insert AFTER INSERT ON images BEGIN
    INSERT INTO images_fts(rowid, prompt, negative, params_text)
        VALUES (new.id, new.prompt, new.negative, new.params_text);
END;
CREATE TRIGGER IF NOT EXISTS images_fts_delete AFTER DELETE ON images BEGIN
    INSERT INTO images_fts(images_fts, rowid, prompt, negative, params_text)
        VALUES ('delete', old.id, old.prompt, old.negative, old.params_text);
    DELETE FROM image_loras WHERE image_id = old.id;
    DELETE FROM vectors WHERE image_id = old.id;
END;
CREATE TRIGGER IF NOT EXISTS images_fts_update AFTER UPDATE OF prompt, negative, params_text ON images BEGIN
    INSERT INTO images_fts(images_fts, rowid, prompt, negative, params_text)
        VALUES ('delete', old.id, old.prompt, old.negative, old.params_text);
    INSERT INTO images_fts(rowid, prompt, negative, params_text)
        VALUES (new.id, new.prompt, new.negative, new.params_text);
END;
PRAGMA user_version = 1;
"""
_COLUMNS = ("i.id, i.path, i.owner, i.kind, i.created, i.width, i.height, i.prompt, i.negative, i.model, i.sampler, "
            "i.seed, i.loras, i.parameters, i.starred")


@dataclass(frozen=True)
class ImageRecord:
    """Everything the index stores about one file, read once (in a worker thread during a scan)."""

    path: Path
    owner: str | None
    kind: str
    created: float  # Unix time: the file's modification time, i.e. when it was saved
    width: int
    height: int
    parameters: dict[str, Any] = field(default_factory=dict)  # parse_infotext's keys
    source: str = "none"  # where the parameters came from (see metadata.ImageMetadata)
    phash: int | None = None
    dhash: int | None = None
    mtime_ns: int = 0
    file_size: int = 0


@dataclass(frozen=True)
class GalleryRow:
    """One indexed image. `score` is set by searches, higher is better: -bm25 for text, 1 - bits/128 for
    hashes, cosine similarity for vectors."""

    id: int
    path: Path
    owner: str | None
    kind: str
    created: float
    width: int
    height: int
    prompt: str
    negative_prompt: str
    model: str | None
    sampler: str | None
    seed: int | None
    loras: tuple[str, ...]
    parameters: dict[str, Any]
    starred: bool
    score: float | None = None


@dataclass(frozen=True)
class SearchPage:
    rows: list[GalleryRow]
    total: int  # matching rows over all pages
    page: int
    page_size: int
    notes: tuple[str, ...] = ()  # filters that were ignored, and why

    @property
    def pages(self) -> int:
        return max(1, -(-self.total // self.page_size))


@dataclass
class ScanCounts:
    added: int = 0
    updated: int = 0
    removed: int = 0
    skipped: int = 0  # unreadable files, logged
    unchanged: int = 0


def read_record(path: Path, owner: str | None = None, kind: str | None = None,
                infotext: str | None = None) -> ImageRecord:
    """Read one image file: size, metadata (or the given infotext) and hashes. Raises on an unreadable file."""
    path = Path(path).resolve()
    stat = path.stat()
    with Image.open(path) as image:
        width, height = image.size
        if infotext is None:
            metadata = read_image_metadata(image)
        elif infotext:
            metadata = ImageMetadata(infotext, parse_infotext(infotext), "parameters")
        else:
            metadata = ImageMetadata(None)
        if image.format == "JPEG":
            image.draft("RGB", (128, 128))  # decode at up to 1/8 scale: the hashes look at 32×32
        phash, dhash = perceptual_hashes(image)
    return ImageRecord(path, owner, kind if kind is not None else kind_of(path), stat.st_mtime, width, height,
                       metadata.parameters, metadata.source, phash, dhash, stat.st_mtime_ns, stat.st_size)


def kind_of(path: Path, root: Path | None = None) -> str:
    """The output kind of a file: the first folder under `root`; without a root, the folder above a
    `YYYY-MM-DD` folder (the store's layout) or else the file's own folder."""
    if root is not None:
        parts = path.relative_to(root).parts
        return parts[0] if len(parts) > 1 else root.name
    if _DATE_FOLDER.match(path.parent.name):
        return path.parent.parent.name
    return path.parent.name


def lora_names(parameters: dict[str, Any]) -> list[str]:
    """LoRA names from `Lora hashes` (A1111), `Loras` (ComfyUI, synthesised) and `<lora:name:w>` prompt tags."""
    names: list[str] = []
    for key in ("Lora hashes", "Loras"):
        for part in str(parameters.get(key) or "").split(","):
            name = part.rsplit(":", 1)[0].strip() if key == "Lora hashes" else part.strip()
            if name:
                names.append(name)
    names.extend(m.strip() for m in _LORA_TAG.findall(str(parameters.get("Prompt") or "")))
    unique: dict[str, str] = {}
    for name in names:
        unique.setdefault(name.lower(), name)
    return list(unique.values())


def _int_or_none(value: Any) -> int | None:
    try:
        number = int(str(value).strip())
    except (TypeError, ValueError):
        return None
    return number if -(1 << 63) <= number < (1 << 63) else None


def _walk_images(root: Path) -> Iterator[tuple[Path, os.stat_result]]:
    """Image files under `root`, skipping hidden entries (the store's `.tmp-*` files too) and trash folders."""
    stack = [root]
    while stack:
        folder = stack.pop()
        try:
            entries = list(os.scandir(folder))
        except OSError as e:
            log.warning("gallery scan: cannot list %s: %s", folder, e)
            continue
        for entry in entries:
            if entry.name.startswith("."):
                continue
            try:
                if entry.is_dir(follow_symlinks=False):
                    if entry.name.lower() != TRASH_FOLDER:
                        stack.append(Path(entry.path))
                elif entry.is_file() and os.path.splitext(entry.name)[1].lower() in IMAGE_SUFFIXES:
                    yield Path(entry.path), entry.stat()
            except OSError as e:
                log.warning("gallery scan: cannot read %s: %s", entry.path, e)


class GalleryIndex:
    """The index; see the module docstring. Also the image store's save hook (`before_save`/`after_save`)."""

    def __init__(self, database: Path):
        database = Path(database)
        if str(database) != ":memory:":
            database.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._db = sqlite3.connect(str(database), check_same_thread=False, isolation_level=None, timeout=30)
        # a new database only: 16 KiB pages hold seven 2 KiB embeddings (512 float32) where 4 KiB pages hold one
        self._db.execute("PRAGMA page_size = 16384")
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)
        self._data_version = self._db.execute("PRAGMA data_version").fetchone()[0]
        self._hashes: RowMatrix | None = None  # (pHash, dHash) per image as uint64, loaded on first use
        self._vectors: dict[str, RowMatrix] = {}  # per embedding model: unit vectors, loaded on first use

    def close(self) -> None:
        with self._lock:
            self._db.execute("PRAGMA optimize")  # SQLite's advice: keep the planner's statistics fresh
            self._db.close()

    # -- writing ---------------------------------------------------------------------------------------------
    def add(self, path: Path, owner: str | None = None, kind: str | None = None, infotext: str | None = None) -> int:
        """Index (or re-index) one file and return its id. `infotext` None reads the file's own metadata.
        Raises the file's error when it cannot be read as an image."""
        return self.put_many([read_record(Path(path), owner, kind, infotext)])[0]

    def put_many(self, records: Sequence[ImageRecord]) -> list[int]:
        """Insert or update rows in one transaction (an existing path keeps its id, star, time and, when the
        record has none, its owner); returns their ids. The files are not read: the records say it all."""
        ids: list[int] = []
        with self._lock, self._transaction():
            self._check_version()
            for record in records:
                ids.append(self._upsert(record))
        return ids

    def _upsert(self, record: ImageRecord) -> int:
        p = record.parameters
        loras = lora_names(p)
        values = {
            "path": str(record.path), "kind": record.kind, "mtime_ns": record.mtime_ns,
            "file_size": record.file_size, "width": record.width, "height": record.height,
            "prompt": str(p.get("Prompt") or ""), "negative": str(p.get("Negative prompt") or ""),
            "params_text": ", ".join([f"{k}: {v}" for k, v in p.items() if k not in _UNSEARCHED]
                                     + ([f"Loras: {', '.join(loras)}"] if loras else [])),
            "parameters": json.dumps({k: v for k, v in p.items() if k not in _PROMPT_KEYS}, ensure_ascii=False),
            "source": record.source,
            "model": p.get("Model") or None, "model_hash": p.get("Model hash") or None,
            "sampler": p.get("Sampler") or None, "seed": _int_or_none(p.get("Seed")),
            "loras": "\n".join(loras), "phash": record.phash, "dhash": record.dhash,
        }
        old = self._db.execute("SELECT id, owner, phash, dhash FROM images WHERE path = ?",
                               (values["path"],)).fetchone()
        if old is None:
            row_id = self._free_id(time_id(record.created))
            values.update(id=row_id, owner=record.owner, created=record.created)
            names = ", ".join(values)
            self._db.execute(f"INSERT INTO images ({names}) VALUES ({', '.join('?' * len(values))})",
                             list(values.values()))
            owner = record.owner
        else:
            row_id, owner = old[0], record.owner if record.owner is not None else old[1]
            values["owner"] = owner
            self._db.execute(f"UPDATE images SET {', '.join(f'{k} = ?' for k in values)} WHERE id = ?",
                             [*values.values(), row_id])
            self._db.execute("DELETE FROM image_loras WHERE image_id = ?", (row_id,))
            if (old[2], old[3]) != (record.phash, record.dhash):  # new pixels: old embeddings describe another picture
                self._db.execute("DELETE FROM vectors WHERE image_id = ?", (row_id,))
                for matrix in self._vectors.values():
                    matrix.remove(row_id)
            for matrix in self._vectors.values():
                matrix.set_owner(row_id, owner)
        self._db.executemany("INSERT OR IGNORE INTO image_loras (name, image_id) VALUES (?, ?)",
                             [(name, row_id) for name in loras])
        if self._hashes is not None:
            if record.phash is None or record.dhash is None:
                self._hashes.remove(row_id)
            else:
                self._hashes.put(row_id, as_unsigned(np.array([record.phash, record.dhash])), owner)
        return row_id

    def _free_id(self, wanted: int) -> int:
        """`wanted`, or the first id after the ids taken within the next second (files copied together share a
        modification time: one range query, not one probe per taken id)."""
        while self._db.execute("SELECT 1 FROM images WHERE id = ?", (wanted,)).fetchone():
            wanted = self._db.execute("SELECT max(id) FROM images WHERE id BETWEEN ? AND ?",
                                      (wanted, wanted + 999_999)).fetchone()[0] + 1
        return wanted

    def remove(self, path: Path) -> bool:
        """Forget a file (the file itself is left alone); False when it was not indexed."""
        with self._lock, self._transaction():
            self._check_version()
            row = self._db.execute("SELECT id FROM images WHERE path = ?", (str(Path(path).resolve()),)).fetchone()
            if row is None:
                return False
            self._delete_ids([row[0]])
        return True

    def _delete_ids(self, ids: Iterable[int]) -> None:
        for row_id in ids:
            self._db.execute("DELETE FROM images WHERE id = ?", (row_id,))  # the trigger drops its FTS, LoRAs, vectors
            if self._hashes is not None:
                self._hashes.remove(row_id)
            for matrix in self._vectors.values():
                matrix.remove(row_id)

    def star(self, row_id: int, starred: bool = True) -> bool:
        """Star or unstar; False when there is no such image."""
        with self._lock:
            return self._db.execute("UPDATE images SET starred = ? WHERE id = ?", (int(starred), row_id)).rowcount > 0

    def delete(self, row_id: int, trash_folder: Path, root: Path | None = None) -> Path | None:
        """Move the image's file into `trash_folder` under its path relative to `root` (default: the trash
        folder's parent, i.e. the outputs folder when the trash is `outputs/trash`), never overwriting a file
        already there (`name-1.png`, …), and forget it. Returns where the file went (None if it was already
        gone). Whether the caller may delete it is the caller's check: see `get(row_id).owner`."""
        row = self.get(row_id)
        if row is None:
            raise KeyError(row_id)
        trash_folder = Path(trash_folder)
        base = Path(root if root is not None else trash_folder.parent).resolve()
        try:
            relative = row.path.relative_to(base)
        except ValueError:
            relative = Path(row.path.parent.name) / row.path.name
        target = None
        if row.path.exists():
            target = _move_without_overwrite(row.path, Path(trash_folder).resolve() / relative)
        with self._lock, self._transaction():
            self._delete_ids([row_id])
        return target

    # -- the image store's hooks ---------------------------------------------------------------------------
    def before_save(self, pending: PendingSave) -> None:
        return None

    def after_save(self, saved: SavedImage) -> None:
        """Index each image the store writes (a video is not an image here)."""
        if saved.path.suffix.lower() in IMAGE_SUFFIXES:
            self.add(saved.path, saved.owner, saved.kind, saved.infotext or "")

    # -- scanning -----------------------------------------------------------------------------------------
    def scan(self, folders: Iterable[Path], owner_of: Callable[[Path], str | None] | None = None,
             workers: int = 2) -> ScanCounts:
        """Bring the index in line with what is on disk under `folders`: new and changed image files
        (by modification time and size) are read and indexed, rows of files that are gone are removed,
        unreadable files are logged and counted as skipped. `owner_of` names the owner of a new file (e.g.
        the store's owner index); files are read by `workers` threads (Pillow decodes outside the GIL)."""
        counts = ScanCounts()
        with ThreadPoolExecutor(max(1, workers)) as pool:
            for folder in folders:
                root = Path(folder).resolve()
                if root.is_dir():
                    self._scan_folder(root, owner_of, pool, counts)
                else:
                    log.warning("gallery scan: %s is not a folder", root)
        return counts

    def _scan_folder(self, root: Path, owner_of: Callable[[Path], str | None] | None, pool: ThreadPoolExecutor,
                     counts: ScanCounts) -> None:
        known = self._known_under(root)
        seen: set[str] = set()
        todo: list[Path] = []
        for path, stat in _walk_images(root):
            key = str(path)
            seen.add(key)
            row = known.get(key)
            if row is not None and row[1] == stat.st_mtime_ns and row[2] == stat.st_size:
                counts.unchanged += 1
            else:
                todo.append(path)
        gone = [row[0] for key, row in known.items() if key not in seen]
        if gone:
            with self._lock, self._transaction():
                self._delete_ids(gone)
            counts.removed += len(gone)

        def read(path: Path) -> ImageRecord | None:
            try:
                return read_record(path, owner_of(path) if owner_of else None, kind_of(path, root))
            except Exception as e:  # Pillow raises many kinds of errors on broken files; one file never stops a scan
                log.warning("gallery scan: skipped %s: %s: %s", path, type(e).__name__, e)
                return None

        for start in range(0, len(todo), _SCAN_BATCH):
            records = list(pool.map(read, todo[start:start + _SCAN_BATCH]))
            good = [r for r in records if r is not None]
            counts.skipped += len(records) - len(good)
            for record in good:
                if str(record.path) in known:
                    counts.updated += 1
                else:
                    counts.added += 1
            if good:
                self.put_many(good)

    def _known_under(self, root: Path) -> dict[str, tuple[int, int, int]]:
        """{path: (id, mtime_ns, size)} for rows under `root`: a range on the unique path index
        (`root/` ≤ path < `root0`, '0' being the character after '/')."""
        low = str(root).rstrip(os.sep) + os.sep
        high = low[:-1] + chr(ord(os.sep) + 1)
        with self._lock:
            rows = self._db.execute("SELECT path, id, mtime_ns, file_size FROM images WHERE path >= ? AND path < ?",
                                    (low, high)).fetchall()
        return {r[0]: (r[1], r[2], r[3]) for r in rows}

    # -- reading ------------------------------------------------------------------------------------------
    def get(self, row_id: int) -> GalleryRow | None:
        return self._rows_by_id([row_id]).get(row_id)

    def get_by_path(self, path: Path) -> GalleryRow | None:
        with self._lock:
            row = self._db.execute(f"SELECT {_COLUMNS}, NULL FROM images AS i WHERE i.path = ?",
                                   (str(Path(path).resolve()),)).fetchone()
        return _row(row) if row else None

    def count(self, owner: str | None = None) -> int:
        with self._lock:
            if owner is None:
                return self._db.execute("SELECT count(*) FROM images").fetchone()[0]
            return self._db.execute("SELECT count(*) FROM images WHERE owner = ?", (owner,)).fetchone()[0]

    def _rows_by_id(self, ids: Sequence[int]) -> dict[int, GalleryRow]:
        if not ids:
            return {}
        with self._lock:
            rows = self._db.execute(f"SELECT {_COLUMNS}, NULL FROM images AS i WHERE i.id IN "
                                    f"({', '.join('?' * len(ids))})", list(ids)).fetchall()
        return {r[0]: _row(r) for r in rows}

    def _ranked(self, ids: Sequence[int], scores: Sequence[float]) -> list[GalleryRow]:
        rows = self._rows_by_id(ids)
        return [replace(rows[i], score=float(s)) for i, s in zip(ids, scores) if i in rows]

    def search(self, query: str, owner: str | None = None, page: int = 1, page_size: int = 50,
               sort: str = "newest") -> SearchPage:
        """One page of the images matching the search box text (syntax: webui.gallery.query). `owner` None
        searches everyone's images. `sort`: newest, oldest, or relevance (bm25; newest when there is no
        text to rank by). Bad user text gives an empty page with a note, never an exception."""
        if sort not in SORTS:
            raise ValueError(f"sort must be one of {', '.join(SORTS)}")
        page, page_size = max(1, int(page)), min(max(1, int(page_size)), MAX_PAGE_SIZE)
        plan = compile_query(parse_query(query or ""), owner)
        where = " AND ".join(f"({w})" for w in plan.where)
        # ids are times, so newest/oldest is id order, which FTS5 and the table's B-tree both deliver without
        # sorting: a page is found after reading about page × size matches, however many match in all
        if plan.match is not None:
            # without other conditions the FTS table alone answers (a join costs twice as much for bm25)
            source = "images_fts JOIN images AS i ON i.id = images_fts.rowid" if where else "images_fts"
            condition = "images_fts MATCH ?" + (f" AND {where}" if where else "")
            params: list[Any] = [plan.match, *plan.params]
            row_id, score = "images_fts.rowid", f"-bm25(images_fts, {BM25_WEIGHTS})"
            count_sql = ("SELECT count(*) FROM images AS i WHERE i.id IN (SELECT rowid FROM images_fts WHERE "
                         f"images_fts MATCH ?) AND {where}" if where
                         else "SELECT count(*) FROM images_fts WHERE images_fts MATCH ?")
            order = {"newest": "images_fts.rowid DESC", "oldest": "images_fts.rowid ASC",
                     "relevance": "score DESC, images_fts.rowid DESC"}[sort]
        else:
            source, condition, params = "images AS i", where or "1", list(plan.params)
            row_id, score = "i.id", "NULL"
            count_sql = f"SELECT count(*) FROM {source} WHERE {condition}"
            order = "i.id ASC" if sort == "oldest" else "i.id DESC"
        select = (f"SELECT {row_id}, {score} AS score FROM {source} WHERE {condition} "
                  f"ORDER BY {order} LIMIT ? OFFSET ?")
        try:
            with self._lock:
                total = self._db.execute(count_sql, params).fetchone()[0]
                found = self._db.execute(select, [*params, page_size, (page - 1) * page_size]).fetchall()
        except sqlite3.Error as e:  # quoting should make this unreachable for user text; never show a crash
            log.warning("gallery search %r failed: %s", query, e)
            return SearchPage([], 0, page, page_size, (*plan.notes, "the search could not be run"))
        rows = self._rows_by_id([r[0] for r in found])  # whole rows for one page only, not for the sort
        page_rows = [replace(rows[i], score=s) for i, s in found if i in rows]
        return SearchPage(page_rows, total, page, page_size, tuple(plan.notes))

    # -- reverse search -------------------------------------------------------------------------------------
    def similar_by_hash(self, image: Image.Image, owner: str | None = None, limit: int = 20,
                        max_distance: int = HASH_BITS) -> list[GalleryRow]:
        """Near-duplicates of a picture (resized, re-encoded, lightly edited), closest first: the summed
        pHash + dHash Hamming distance to every image, computed by numpy over a cached n×2 uint64 array
        (XOR, popcount, argpartition): about 2 ms at 100 000 images, hashing the query included (the first
        call loads the hashes from SQLite: ~0.5 s). `score` = 1 - distance/128."""
        query = as_unsigned(np.array(perceptual_hashes(image)))
        with self._lock:
            matrix = self._hash_matrix()
            ids, data = matrix.rows()
            distance = hamming(data, query)
            mask = matrix.owner_mask(owner)
            if mask is not None:
                distance[~mask] = HASH_BITS + 1
            best = top_k(distance, limit, largest=False)
            best = best[distance[best] <= max_distance]
            picked, scores = ids[best].tolist(), (1.0 - distance[best] / HASH_BITS).tolist()
        return self._ranked(picked, scores)

    def _hash_matrix(self) -> RowMatrix:
        self._check_version()
        if self._hashes is None:
            rows = self._db.execute("SELECT id, phash, dhash, owner FROM images WHERE phash IS NOT NULL "
                                    "AND dhash IS NOT NULL").fetchall()
            matrix = RowMatrix(2, np.uint64, capacity=max(1024, len(rows)))
            if rows:
                ids = np.array([r[0] for r in rows], np.int64)
                hashes = as_unsigned(np.array([(r[1], r[2]) for r in rows], np.int64))
                matrix.put_many(ids, hashes, [r[3] for r in rows])
            self._hashes = matrix
        return self._hashes

    def similar_by_prompt(self, source: int | str, owner: str | None = None, limit: int = 20) -> list[GalleryRow]:
        """Images whose prompts share the most distinctive words with an image's prompt (`source` an id; the
        image itself is left out) or with a text: the up to 12 words of the prompt that the fewest prompts
        hold (FTS5's vocabulary table), OR-ed and ranked by bm25. In a large gallery a word in over 2% of all
        prompts is used only when there is nothing rarer: it says little, and bm25 would score most rows."""
        exclude = None
        if isinstance(source, int):
            row = self.get(source)
            if row is None:
                raise KeyError(source)
            text, exclude = row.prompt, source
        else:
            text = source
        folded = dict.fromkeys(_fold(w) for w in _PROMPT_WORD.findall(text))
        words = [w for w in folded if len(w) > 1 and w not in _STOP_WORDS]
        if not words:
            return []
        with self._lock:
            frequency = dict(self._db.execute(
                f"SELECT term, doc FROM images_vocab WHERE col = 'prompt' AND term IN ({', '.join('?' * len(words))})",
                words).fetchall())
            everything = self._db.execute("SELECT count(*) FROM images").fetchone()[0]
        ranked = sorted((w for w in words if frequency.get(w)), key=lambda w: frequency[w])
        distinctive = [w for w in ranked if frequency[w] <= max(everything / 50, 100)][:12] or ranked[:3]
        if not distinctive:
            return []
        phrases = [p for p in (fts_phrase(Term(w, quoted=True)) for w in distinctive) if p]
        match = "prompt : (" + " OR ".join(phrases) + ")"
        where, params = ["images_fts MATCH ?"], [match]
        if owner is not None:
            where.append("i.owner = ?")
            params.append(owner)
        if exclude is not None:
            where.append("i.id != ?")
            params.append(exclude)
        sql = (f"SELECT i.id, -bm25(images_fts, {BM25_WEIGHTS}) AS score FROM images_fts "
               f"JOIN images AS i ON i.id = images_fts.rowid WHERE {' AND '.join(where)} "
               f"ORDER BY score DESC LIMIT ?")
        try:
            with self._lock:
                found = self._db.execute(sql, [*params, max(1, limit)]).fetchall()
        except sqlite3.Error as e:
            log.warning("gallery prompt search failed: %s", e)
            return []
        return self._ranked([r[0] for r in found], [r[1] for r in found])

    # -- vectors (content search storage) ---------------------------------------------------------------------
    def put_vector(self, row_id: int, model: str, vector: np.ndarray) -> None:
        """Store an image's embedding from `model` (replacing an earlier one). Raises KeyError for an unknown
        image, ValueError for a vector that is not finite, is zero, or differs in length from the model's."""
        self.put_vectors(model, [(row_id, vector)])

    def put_vectors(self, model: str, items: Iterable[tuple[int, np.ndarray]]) -> None:
        """Many embeddings of one model in one transaction (all or none)."""
        with self._lock, self._transaction():
            self._check_version()
            known = self._db.execute("SELECT dim FROM vectors WHERE model = ? LIMIT 1", (model,)).fetchone()
            dim = known[0] if known else None
            matrix = self._vectors.get(model)
            for row_id, vector in items:
                vector = np.asarray(vector, np.float32).reshape(-1)
                norm = float(np.linalg.norm(vector))
                if not np.isfinite(norm) or norm == 0:
                    raise ValueError("an embedding must be finite and not all zero")
                if dim is not None and len(vector) != dim:
                    raise ValueError(f"{model} embeddings have {dim} values, this one {len(vector)}")
                dim = len(vector)
                owner = self._db.execute("SELECT owner FROM images WHERE id = ?", (row_id,)).fetchone()
                if owner is None:
                    raise KeyError(row_id)
                self._db.execute("INSERT OR REPLACE INTO vectors (model, image_id, dim, vector) VALUES (?, ?, ?, ?)",
                                 (model, row_id, dim, vector.astype("<f4").tobytes()))
                if matrix is not None:
                    matrix.put(row_id, vector / norm, owner[0])

    def nearest(self, vector: np.ndarray, model: str, owner: str | None = None, limit: int = 20) -> list[GalleryRow]:
        """The images whose `model` embeddings are most similar (cosine) to `vector`, best first.

        Exact search: the unit vectors sit in one cached float32 matrix and a query is one matrix-vector
        product plus argpartition. At 100 000 × 512 that is 200 MiB of memory and ~5 ms on two CPU cores
        (bench/gallery.py; loading the matrix from SQLite once takes ~1 s), exact, with nothing to tune or
        rebuild; an approximate index (HNSW) only pays off well past a million images. sqlite-vec would keep
        the vectors and the search in SQLite, but Python's sqlite3 here is built without
        `enable_load_extension`, so no loadable extension can be used."""
        query = np.asarray(vector, np.float32).reshape(-1)
        norm = float(np.linalg.norm(query))
        if not np.isfinite(norm) or norm == 0:
            raise ValueError("the query vector must be finite and not all zero")
        with self._lock:
            matrix = self._vector_matrix(model)
            if matrix is None or len(matrix) == 0:
                return []
            if matrix.width != len(query):
                raise ValueError(f"{model} embeddings have {matrix.width} values, the query {len(query)}")
            ids, data = matrix.rows()
            scores = data @ (query / norm)
            mask = matrix.owner_mask(owner)
            if mask is not None:
                scores[~mask] = -np.inf
            best = top_k(scores, limit, largest=True)
            best = best[np.isfinite(scores[best])]
            picked, values = ids[best].tolist(), scores[best].tolist()
        return self._ranked(picked, values)

    def _vector_matrix(self, model: str) -> RowMatrix | None:
        self._check_version()
        if model not in self._vectors:
            rows = self._db.execute("SELECT v.image_id, v.dim, v.vector, i.owner FROM vectors AS v "
                                    "JOIN images AS i ON i.id = v.image_id WHERE v.model = ?", (model,)).fetchall()
            if not rows:
                return None
            dim = rows[0][1]
            rows = [r for r in rows if r[1] == dim]
            data = np.frombuffer(b"".join(r[2] for r in rows), "<f4").reshape(len(rows), dim).astype(np.float32)
            data /= np.linalg.norm(data, axis=1, keepdims=True)
            matrix = RowMatrix(dim, np.float32, capacity=len(rows) + 1024)
            matrix.put_many(np.array([r[0] for r in rows], np.int64), data, [r[3] for r in rows])
            self._vectors[model] = matrix
        return self._vectors[model]

    def missing_vectors(self, model: str, limit: int = 100) -> list[int]:
        """Ids of images (newest first) that have no `model` embedding yet: the embedder's work list."""
        with self._lock:
            rows = self._db.execute("SELECT id FROM images AS i WHERE NOT EXISTS (SELECT 1 FROM vectors AS v "
                                    "WHERE v.model = ? AND v.image_id = i.id) ORDER BY id DESC LIMIT ?",
                                    (model, max(1, limit))).fetchall()
        return [r[0] for r in rows]

    # -- plumbing -----------------------------------------------------------------------------------------------
    def _transaction(self) -> _Transaction:
        return _Transaction(self._db)

    def _check_version(self) -> None:
        """Drop the numpy caches when another process changed the database (our own writes keep them
        current and do not move `data_version`). Called under the lock."""
        version = self._db.execute("PRAGMA data_version").fetchone()[0]
        if version != self._data_version:
            self._data_version = version
            self._hashes = None
            self._vectors.clear()


class _Transaction:
    """BEGIN IMMEDIATE … COMMIT, or ROLLBACK on an error (the connection is in autocommit mode)."""

    def __init__(self, db: sqlite3.Connection):
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, kind: type[BaseException] | None, *_: Any) -> None:
        self._db.execute("COMMIT" if kind is None else "ROLLBACK")


def _fold(word: str) -> str:
    """A word as FTS5's `unicode61 remove_diacritics 2` stores it: lower case, accents dropped."""
    decomposed = unicodedata.normalize("NFKD", word.lower())
    return "".join(c for c in decomposed if not unicodedata.combining(c))


def _row(r: tuple[Any, ...]) -> GalleryRow:
    return GalleryRow(id=r[0], path=Path(r[1]), owner=r[2], kind=r[3], created=r[4], width=r[5], height=r[6],
                      prompt=r[7], negative_prompt=r[8], model=r[9], sampler=r[10], seed=r[11],
                      loras=tuple(n for n in r[12].split("\n") if n),
                      parameters={"Prompt": r[7], "Negative prompt": r[8], **json.loads(r[13])},
                      starred=bool(r[14]), score=r[15])


def _move_without_overwrite(source: Path, target: Path) -> Path:
    """Move a file to `target`, or `stem-1.ext`, `stem-2.ext`, … when taken. A hard link (or, across file
    systems, an exclusive create + copy) claims the name atomically, so a file already there is never replaced."""
    target.parent.mkdir(parents=True, exist_ok=True)
    for n in range(100_000):
        candidate = target if n == 0 else target.with_name(f"{target.stem}-{n}{target.suffix}")
        try:
            os.link(source, candidate)
        except FileExistsError:
            continue
        except OSError as e:
            if e.errno not in (errno.EXDEV, errno.EPERM, errno.ENOTSUP, errno.EMLINK):
                raise
            try:
                with open(source, "rb") as src, open(candidate, "xb") as dst:
                    try:
                        shutil.copyfileobj(src, dst)
                    except BaseException:
                        os.unlink(candidate)  # ours (created exclusively): never leave half a copy
                        raise
                shutil.copystat(source, candidate)
            except FileExistsError:
                continue
        os.unlink(source)
        return candidate
    raise FileExistsError(target)
