"""The one writer of output files: `outputs/<kind>/YYYY-MM-DD/NNNNN-SEED.png` (A1111's layout), videos too.

Each PNG carries its infotext in the `parameters` text chunk. A file is written to a temporary name
in the same folder and then hard-linked to its final name, which fails instead of overwriting when
the name is taken (another process, another Easel): the counter moves on and tries again, and no
half-written file is ever visible under a final name.

Every image goes through `SaveHooks`: `before_save` may change the image or its infotext, and
`after_save` is told the saved path, owner and parameters once the file is on disk (the gallery
indexes images from there). Generation jobs, zoom keyframes and canvas boxes all save here.
"""
from __future__ import annotations

import datetime as _dt
import errno
import io
import logging
import os
import re
import secrets
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Protocol

from PIL import Image, PngImagePlugin

from .infotext import parse_infotext
from .metadata import read_image_metadata
from .video import write_video

log = logging.getLogger(__name__)
_NUMBERED = re.compile(r"^(\d{5,})-")
_NAME = re.compile(r"[A-Za-z0-9_-]+")


def png_bytes(image: Image.Image, infotext: str | None) -> bytes:
    """The image encoded as PNG with its infotext (if any) in the `parameters` chunk."""
    info = PngImagePlugin.PngInfo()
    if infotext:
        if "\x00" in infotext:  # the PNG spec forbids NUL in text; requests refuse it, so this is a bug
            raise ValueError("the infotext holds a NUL character, which a PNG text chunk cannot carry")
        info.add_text("parameters", infotext)
    buf = io.BytesIO()
    image.save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()


def read_infotext(image: Image.Image) -> str | None:
    """The infotext of a picture: a PNG's `parameters` text, the EXIF user comment A1111 writes into
    JPEG/WEBP, or what a ComfyUI graph says (webui/images/metadata.py)."""
    return read_image_metadata(image).infotext


@dataclass
class PendingSave:
    """An image about to be written; `before_save` hooks may replace `image` or `infotext`."""

    image: Image.Image
    infotext: str | None
    kind: str  # the outputs sub-folder: txt2img-images, img2img-images, zoom, …
    owner: str | None
    seed: int | None


@dataclass(frozen=True)
class SavedImage:
    """The event after an image is on disk."""

    path: Path
    owner: str | None
    kind: str
    infotext: str | None
    parameters: dict[str, Any] = field(default_factory=dict)  # the infotext, parsed


class SaveHooks(Protocol):
    def before_save(self, pending: PendingSave) -> None: ...

    def after_save(self, saved: SavedImage) -> None: ...


class ImageStore:
    """Saves images and videos under one outputs folder; thread-safe."""

    def __init__(self, outputs_dir: Path, today: Callable[[], _dt.date] = _dt.date.today,
                 hooks: list[SaveHooks] | SaveHooks | None = None, private_names: bool = False):
        self.outputs_dir = Path(outputs_dir)
        self._today = today
        self._lock = threading.Lock()
        self.hooks: list[SaveHooks] = list(hooks) if isinstance(hooks, (list, tuple)) else [hooks] if hooks else []
        # with logins on, names get an unguessable part too (NNNNN-SEED-xxxxxxxx.png), beside the owner check
        self.private_names = private_names

    def remove_leftovers(self) -> int:
        """Delete the temporary files a killed process left behind (`.tmp-*`); run at start."""
        removed = 0
        if self.outputs_dir.is_dir():
            for path in self.outputs_dir.rglob(".tmp-*"):
                try:
                    path.unlink()
                    removed += 1
                except OSError:
                    log.warning("could not remove the leftover %s", path)
        return removed

    def folder(self, kind: str) -> Path:
        if not _NAME.fullmatch(kind):
            raise ValueError(f"bad output kind {kind!r}")
        return self.outputs_dir / kind / self._today().isoformat()

    @staticmethod
    def _next_number(folder: Path) -> int:
        numbers = [int(m.group(1)) for p in folder.iterdir() if (m := _NUMBERED.match(p.name))]
        return max(numbers, default=-1) + 1

    def save(self, image: Image.Image, infotext: str | None, kind: str, seed: int | None = None, *,
             owner: str | None = None, folder: Path | None = None, name: str | None = None) -> Path:
        """Write one PNG and announce it. By default as the next `NNNNN-SEED.png` of the kind's dated
        folder; `folder` + `name` write a fixed name inside a folder from `reserve` (zoom keyframes)."""
        pending = PendingSave(image, infotext, kind, owner, seed)
        for hooks in self.hooks:
            hooks.before_save(pending)
        data = png_bytes(pending.image, pending.infotext)
        if name is not None:
            if folder is None or not _NAME.fullmatch(name) or not folder.resolve().is_relative_to(self.outputs_dir.resolve()):
                raise ValueError(f"bad output name {name!r}")
            path = self._write_new(folder, data, lambda _: f"{name}.png", single=True)
        else:
            suffix = (f"-{seed}" if seed is not None else "") + self._secret()
            path = self._write_new(self.folder(kind), data, lambda n: f"{n:05d}{suffix}.png")
        self._announce(SavedImage(path, owner, kind, pending.infotext,
                                  parse_infotext(pending.infotext) if pending.infotext else {}))
        return path

    def _announce(self, saved: SavedImage) -> None:
        for hooks in self.hooks:
            try:
                hooks.after_save(saved)
            except Exception:  # a listener's bug never loses the saved file or fails the job
                log.exception("an after-save hook failed for %s", saved.path)

    def _secret(self) -> str:
        return f"-{secrets.token_hex(4)}" if self.private_names else ""

    def reserve(self, kind: str, seed: int) -> Path:
        """A fresh `NNNNN-SEED` folder in the kind's dated folder (mkdir fails rather than reuse a name
        another job just took); a video beside it is `NNNNN-SEED.mp4`."""
        parent = self.folder(kind)
        parent.mkdir(parents=True, exist_ok=True)
        with self._lock:
            number = self._next_number(parent)
            while True:
                target = parent / f"{number:05d}-{seed}{self._secret()}"
                try:
                    target.mkdir()
                    return target
                except FileExistsError:
                    number += 1

    def save_video(self, frames: Iterable[Image.Image], path: Path, fps: int, size: tuple[int, int],
                   owner: str | None = None) -> int:
        """An mp4 at `path` (inside the outputs folder), written to a temporary name and renamed; the
        after-save event announces it too (a video: `path.suffix` says so, no infotext)."""
        if not path.resolve().parent.is_relative_to(self.outputs_dir.resolve()):
            raise ValueError(f"{path} is outside the outputs folder")
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=path.suffix, dir=path.parent)
        os.close(fd)
        try:
            count = write_video(frames, Path(tmp), fps, size)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
        self._announce(SavedImage(path, owner, path.parent.parent.name, None, {}))
        return count

    def _write_new(self, folder: Path, data: bytes, name_for: Callable[[int], str], single: bool = False) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        with self._lock:
            fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".png", dir=folder)
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
                number = 0 if single else self._next_number(folder)
                while True:
                    final = folder / name_for(number)
                    try:
                        os.link(tmp, final)
                        return final
                    except FileExistsError:
                        if single:
                            raise
                        number += 1
                    except OSError as e:  # file systems without hard links
                        if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EXDEV, errno.EMLINK):
                            raise
                        if final.exists():
                            if single:
                                raise FileExistsError(final) from None
                            number += 1
                            continue
                        os.replace(tmp, final)
                        return final
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
