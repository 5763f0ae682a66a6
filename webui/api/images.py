"""Images in and out of the API: base64 PNGs (with their infotext).

Images arrive as base64 (optionally as a `data:` URL). A URL is never fetched: fetching whatever a
client names would let anyone on the LAN make Easel reach into the network for them.
"""
from __future__ import annotations

import base64
import binascii
import io
import re
import warnings

from PIL import Image, UnidentifiedImageError

from webui.images.store import png_bytes

from .errors import field_error

MAX_IMAGE_BASE64 = 64 * 1024 * 1024  # characters; about 48 MB of image file
MAX_IMAGE_PIXELS = 64 * 1024 * 1024
_DATA_URL = re.compile(r"^data:image/[\w.+-]+;base64,", re.IGNORECASE)
_URL = re.compile(r"^[a-z][a-z0-9+.-]*://", re.IGNORECASE)

def encode_png(image: Image.Image, infotext: str | None) -> str:
    """Base64 PNG with the infotext in its `parameters` chunk, as A1111's API returns images."""
    return base64.b64encode(png_bytes(image, infotext)).decode("ascii")


def decode_base64(value: str, field: str) -> bytes:
    """The bytes of a base64 string or data URL; 422 naming `field` otherwise."""
    text = value.strip()
    if _URL.match(text):
        raise field_error(field, "image URLs are not fetched (Easel never downloads for a client); "
                                 "send the image itself as base64")
    if len(text) > MAX_IMAGE_BASE64:
        raise field_error(field, f"image is too large (over {MAX_IMAGE_BASE64 // (1024 * 1024)} MiB of base64)")
    text = _DATA_URL.sub("", text, count=1)
    try:
        return base64.b64decode("".join(text.split()), validate=True)
    except (binascii.Error, ValueError):
        raise field_error(field, "is not valid base64") from None


def decode_image(value: str, field: str) -> Image.Image:
    """An opened (not yet decoded) image from base64; 422 naming `field` when it is not one."""
    data = decode_base64(value, field)
    if not data:
        raise field_error(field, "is empty")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
            if image.width * image.height > MAX_IMAGE_PIXELS:
                raise field_error(field, f"image is too large ({image.width}x{image.height})")
            return image
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError,
            Image.DecompressionBombWarning) as e:
        raise field_error(field, f"is not an image Easel can read ({type(e).__name__})") from None
