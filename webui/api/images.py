"""Images in and out of the API: base64 PNGs (with their infotext).

Images arrive as base64 (optionally as a `data:` URL). A URL is never fetched: fetching whatever a
client names would let anyone on the LAN make Easel reach into the network for them.
"""
from __future__ import annotations

import base64
import binascii
import re

from PIL import Image

from webui.images.decode import open_image
from webui.images.store import png_bytes

from .errors import field_error

MAX_IMAGE_BASE64 = 64 * 1024 * 1024  # characters; about 48 MB of image file
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
    """A decoded image from base64, its size checked from the header before decoding; 422 naming `field`
    when it is not one Easel can read (webui/images/decode.py)."""
    data = decode_base64(value, field)
    if not data:
        raise field_error(field, "is empty")
    return open_image(data, field)
