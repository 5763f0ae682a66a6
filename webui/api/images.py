"""Images in and out of the API: base64 PNGs (with their infotext).

Images arrive as base64 (optionally as a `data:` URL). A URL is never fetched: fetching whatever a
client names would let anyone on the LAN make Easel reach into the network for them.
"""
from __future__ import annotations

import base64

from PIL import Image

from webui.images.decode import decode_base64, decode_image
from webui.images.store import png_bytes

__all__ = ["decode_base64", "decode_image", "encode_png"]


def encode_png(image: Image.Image, infotext: str | None) -> str:
    """Base64 PNG with the infotext in its `parameters` chunk, as A1111's API returns images."""
    return base64.b64encode(png_bytes(image, infotext)).decode("ascii")
