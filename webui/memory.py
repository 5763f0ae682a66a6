"""Giving freed memory back to the system.

glibc keeps memory freed by Python, Pillow and torch in its heaps (one per thread that allocated) for
reuse, so a server that decoded a few 8192×8192 uploads in its request threads keeps their ~200 MB
each in RSS long after the pictures are gone. `release_freed_memory` asks glibc to return what is free
(`malloc_trim`); Easel calls it when a job ends. A no-op where the C library is not glibc.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import functools
import logging

log = logging.getLogger(__name__)


@functools.cache
def _malloc_trim():
    name = ctypes.util.find_library("c")
    try:
        return ctypes.CDLL(name).malloc_trim if name else None
    except (OSError, AttributeError):  # not glibc (musl, macOS, Windows)
        return None


def release_freed_memory() -> bool:
    """Return the C heaps' free memory to the system; False where that cannot be done."""
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True
