"""Pictures the tests (and bench/abuse.py) send: a PNG as base64, and a tiny PNG that declares a huge size."""
from __future__ import annotations

import base64
import io
import struct
import zlib

from PIL import Image


def b64png(image: Image.Image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


def declared_png(width: int, height: int) -> bytes:
    """A few hundred bytes of PNG whose header declares width × height (its data would be gigabytes)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    rows = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")
