"""The one error type for bad input, naming the field at fault; every layer raises it, the API turns it
into a 422 and the page into a message."""
from __future__ import annotations


class TooManyJobs(Exception):
    """An owner already has as many jobs waiting as the server allows (`--max-queued-jobs`)."""


class FieldError(ValueError):
    """Bad input in one field: `str(e)` is "field: message"."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message
