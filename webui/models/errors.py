"""Errors the model layer raises; each message names the file and the reason."""


class ModelError(Exception):
    """A checkpoint, VAE or other model file could not be used."""

    field = "checkpoint"  # the request field an API error names


class LoraNotFound(ModelError):
    """A prompt's `<lora:name>` tag names no file in models/Lora."""

    field = "prompt"


class CheckpointNotFound(ModelError):
    """A request named a checkpoint that is not in the catalog."""


class UnsafeCheckpoint(ModelError):
    """A pickled checkpoint needs more than plain tensors to load; Easel refuses to unpickle it."""
