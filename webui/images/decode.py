"""Opening pictures people send (API base64, page uploads, the canvas) without decoding too much.

A picture's size is read from its header first and checked against `MAX_INPUT_PIXELS`; only then is
it decoded, so a 215 KB PNG that declares 8192×8192 (or a 12000×12000 upload) is refused before it
costs a gigabyte. Pillow's decompression-bomb warning counts as a refusal too.
"""
from __future__ import annotations

import base64
import binascii
import io
import re
import warnings
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from webui.errors import FieldError

MAX_INPUT_PIXELS = 64 * 1024 * 1024  # 8192×8192
MAX_IMAGE_BASE64 = 64 * 1024 * 1024  # characters; about 48 MB of image file
_DATA_URL = re.compile(r"^data:image/[\w.+-]+;base64,", re.IGNORECASE)
_URL = re.compile(r"^[a-z][a-z0-9+.-]*://", re.IGNORECASE)
# modes the engine reads as they are; anything else (a LAB TIFF, …) becomes RGB when decoded
READABLE_MODES = {"1", "L", "P", "RGB", "RGBA", "LA", "PA", "I", "I;16", "F", "CMYK", "YCbCr"}


def open_image(source: bytes | str | Path, field: str, max_pixels: int = MAX_INPUT_PIXELS) -> Image.Image:
    """The picture, decoded, after its header passed the size check; FieldError naming `field` when it is
    not a picture Easel can read, or too large."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
            if image.width * image.height > max_pixels or min(image.size) < 1:
                raise FieldError(field, f"image is too large ({image.width}x{image.height}; Easel takes up to "
                                        f"{max_pixels // 1_000_000} megapixels)")
            image.load()
    except FieldError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise FieldError(field, f"image is too large (Easel takes up to {max_pixels // 1_000_000} megapixels)") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as e:
        raise FieldError(field, f"is not an image Easel can read ({type(e).__name__})") from None
    return image if image.mode in READABLE_MODES else image.convert("RGB")


def decode_base64(value: str, field: str) -> bytes:
    """The bytes of a base64 string or data URL; FieldError naming `field` otherwise. A URL is never
    fetched: fetching whatever a client names would let anyone on the LAN make Easel reach into the
    network for them."""
    text = value.strip()
    if _URL.match(text):
        raise FieldError(field, "image URLs are not fetched (Easel never downloads for a client); "
                                "send the image itself as base64")
    if len(text) > MAX_IMAGE_BASE64:
        raise FieldError(field, f"image is too large (over {MAX_IMAGE_BASE64 // (1024 * 1024)} MiB of base64)")
    text = _DATA_URL.sub("", text, count=1)
    try:
        return base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        raise FieldError(field, "is not valid base64") from None


def decode_image(value: str, field: str) -> Image.Image:
    """A decoded image from base64, its size checked from the header before decoding (FieldError naming
    `field` when it is not one Easel can read)."""
    data = decode_base64(value, field)
    if not data:
        raise FieldError(field, "is empty")
    return open_image(data, field)
