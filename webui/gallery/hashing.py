"""Perceptual hashes for finding near-duplicates: a resized, re-encoded or slightly edited copy of a picture.

Two 64-bit hashes per image, from the `imagehash` package: the DCT hash (pHash: the signs of the lowest 8×8
frequencies of a 32×32 grey thumbnail) survives resizing, JPEG and mild colour changes; the difference hash
(dHash: brighter-than-neighbour bits of a 9×8 thumbnail) breaks ties between pictures of similar layout.
The distance between two images is the sum of both Hamming distances (0-128 bits).

SQLite stores signed 64-bit integers, so a hash is kept as its two's-complement value; numpy reads them back
as uint64 for XOR + popcount.
"""
from __future__ import annotations

import imagehash
import numpy as np
from PIL import Image

HASH_BITS = 128  # pHash + dHash
_HASH_SIZE = 8


def perceptual_hashes(image: Image.Image) -> tuple[int, int]:
    """(pHash, dHash) as signed 64-bit integers. A transparent image is laid on white first: the colour
    under fully transparent pixels is arbitrary and would otherwise decide the hash."""
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        rgba = image.convert("RGBA")
        flat = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        flat.alpha_composite(rgba)
        image = flat
    gray = image.convert("L")
    if min(gray.size) > 256:  # both hashes look at ≤ 32×32; a cheap reduce first saves most of the resize work
        gray = gray.reduce(max(1, min(gray.size) // 128))
    return _signed(imagehash.phash(gray, hash_size=_HASH_SIZE)), _signed(imagehash.dhash(gray, hash_size=_HASH_SIZE))


def _signed(value: imagehash.ImageHash) -> int:
    unsigned = int.from_bytes(np.packbits(value.hash.flatten()).tobytes(), "big")
    return unsigned - (1 << 64) if unsigned >= 1 << 63 else unsigned


def as_unsigned(values: np.ndarray) -> np.ndarray:
    """Signed 64-bit hashes (as SQLite returns them) viewed as uint64 without copying the bits."""
    return np.ascontiguousarray(values, dtype=np.int64).view(np.uint64)


def hamming(hashes: np.ndarray, query: np.ndarray) -> np.ndarray:
    """Bits that differ between each row of `hashes` (n × k, uint64) and `query` (k,), summed over the k hashes."""
    return np.bitwise_count(np.bitwise_xor(hashes, query)).sum(axis=1, dtype=np.int32)
