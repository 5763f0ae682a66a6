"""Errors a request can cause: FieldError names the field at fault (the API turns it into a 422, the page into a
message); GenerationError is generation that ran but produced something unusable."""
from __future__ import annotations

from webui.errors import FieldError

__all__ = ["FieldError", "GenerationError"]


class GenerationError(RuntimeError):
    """Generation ran but produced something unusable (NaNs); the message says why and what to do."""
