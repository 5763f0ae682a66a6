"""Options: each caller's own settings (A1111's `/sdapi/v1/options`), and the ones extensions add.

A1111 keeps one `opts` for everyone; in Easel every caller (a signed-in user, a browser session, an
API client) has their own, so one person picking a checkpoint never changes another's. The core
options are the ones Easel uses (`sd_model_checkpoint`, `sd_vae`, `CLIP_stop_at_last_layers`,
`samples_format`); extensions register more (`OptionRegistry.add`) and read the caller's values in
their hooks (`run.options`).
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, create_model
from pydantic.fields import FieldInfo

from webui.generation.requests import GenerationParams


def with_limits(f: FieldInfo) -> Any:
    """A field's type with its constraints (ge, le, …) attached, to reuse in another model."""
    return Annotated[(f.annotation, *f.metadata)] if f.metadata else f.annotation


_CLIP_SKIP = GenerationParams.model_fields["clip_skip"]


class CoreOptions(BaseModel):
    """The options Easel itself uses."""

    model_config = ConfigDict(extra="ignore", validate_assignment=True)

    sd_model_checkpoint: str | None = Field(None, description="checkpoint for requests that name none "
                                                              "(title, name or hash from /sdapi/v1/sd-models)")
    CLIP_stop_at_last_layers: with_limits(_CLIP_SKIP) = Field(  # type: ignore[valid-type]  # clip_skip's limits
        _CLIP_SKIP.default, description="clip skip for requests that do not set clip_skip")
    samples_format: Literal["png"] = Field("png", description="Easel writes PNG only")
    sd_vae: str = Field("Automatic", description='VAE for requests that do not set `vae`: "Automatic" (a VAE '
                                                 'file named after the checkpoint, else its own), "None" (the '
                                                 "checkpoint's own) or a model_name from /sdapi/v1/sd-vae")


class OptionRegistry:
    """The option keys there are: the core ones, and those extensions add (before the app is built)."""

    def __init__(self) -> None:
        self._extra: dict[str, tuple[Any, FieldInfo]] = {}
        self._model: type[BaseModel] = CoreOptions

    def check_new(self, key: str) -> None:
        if not key.isidentifier() or key in CoreOptions.model_fields or key in self._extra:
            raise ValueError(f"option {key!r} is not a new identifier")

    def add(self, key: str, annotation: Any, default: Any, description: str = "") -> None:
        self.check_new(key)
        self._extra[key] = (annotation, Field(default, description=description))
        self._model = create_model("Options", __base__=CoreOptions, **self._extra)

    @property
    def model(self) -> type[BaseModel]:
        return self._model

    @property
    def extension_keys(self) -> list[str]:
        return list(self._extra)


class OptionsStore:
    """Each owner's options; the least recently used are forgotten beyond `capacity`."""

    def __init__(self, registry: OptionRegistry, capacity: int = 1000):
        self.registry = registry
        self._lock = threading.Lock()
        self._items: OrderedDict[str, BaseModel] = OrderedDict()
        self._capacity = capacity

    def get(self, owner: str) -> BaseModel:
        with self._lock:
            options = self._items.get(owner)
            if options is not None:
                self._items.move_to_end(owner)
            model = self.registry.model
            return model.model_validate(options.model_dump()) if options is not None else model()

    def put(self, owner: str, options: BaseModel) -> None:
        with self._lock:
            self._items[owner] = options
            self._items.move_to_end(owner)
            while len(self._items) > self._capacity:
                self._items.popitem(last=False)
