"""Errors a request can cause, naming the field at fault (the API turns them into a 422, the page into a
message). Plain `ValueError("field: message")` is read the same way, for older code paths."""
from __future__ import annotations


class FieldError(ValueError):
    """Bad input in one field: `str(e)` is "field: message"."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class GenerationError(RuntimeError):
    """Generation ran but produced something unusable (NaNs); the message says why and what to do."""
