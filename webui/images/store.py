"""Writing generated images to `outputs/`, A1111-style: `<kind>/YYYY-MM-DD/NNNNN-SEED.png`.

Each PNG carries its infotext in the `parameters` text chunk. A file is written to a temporary name
in the same folder and then hard-linked to its final name, which fails instead of overwriting when
the name is taken (another process, another Easel): the counter moves on and tries again, and no
half-written file is ever visible under a final name.
"""
from __future__ import annotations

import datetime as _dt
import errno
import io
import os
import re
import tempfile
import threading
from pathlib import Path

from PIL import Image, PngImagePlugin

_NUMBERED = re.compile(r"^(\d{5,})-")


def png_bytes(image: Image.Image, infotext: str | None) -> bytes:
    """The image encoded as PNG with its infotext (if any) in the `parameters` chunk."""
    info = PngImagePlugin.PngInfo()
    if infotext:
        info.add_text("parameters", infotext)
    buf = io.BytesIO()
    image.save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()


def read_infotext(image: Image.Image) -> str | None:
    """The `parameters` text of a PNG (or the EXIF user comment A1111 writes into JPEG/WEBP)."""
    text = image.info.get("parameters")
    if isinstance(text, bytes):
        text = text.decode("utf-8", "replace")
    return text


class ImageStore:
    """Saves images under one outputs folder; thread-safe."""

    def __init__(self, outputs_dir: Path, today=_dt.date.today):
        self.outputs_dir = Path(outputs_dir)
        self._today = today
        self._lock = threading.Lock()

    def folder(self, kind: str) -> Path:
        if not re.fullmatch(r"[A-Za-z0-9_-]+", kind):
            raise ValueError(f"bad output kind {kind!r}")
        return self.outputs_dir / kind / self._today().isoformat()

    @staticmethod
    def _next_number(folder: Path) -> int:
        numbers = [int(m.group(1)) for p in folder.iterdir() if (m := _NUMBERED.match(p.name))]
        return max(numbers, default=-1) + 1

    def save(self, image: Image.Image, infotext: str | None, kind: str, seed: int | None = None) -> Path:
        data = png_bytes(image, infotext)
        folder = self.folder(kind)
        folder.mkdir(parents=True, exist_ok=True)
        suffix = f"-{seed}" if seed is not None else ""
        with self._lock:
            fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".png", dir=folder)
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
                number = self._next_number(folder)
                while True:
                    final = folder / f"{number:05d}{suffix}.png"
                    try:
                        os.link(tmp, final)
                        break
                    except FileExistsError:
                        number += 1
                    except OSError as e:  # file systems without hard links
                        if e.errno not in (errno.EPERM, errno.ENOTSUP, errno.EXDEV, errno.EMLINK):
                            raise
                        if final.exists():
                            number += 1
                            continue
                        os.replace(tmp, final)
                        return final
            finally:
                if os.path.exists(tmp):
                    os.unlink(tmp)
        return final
