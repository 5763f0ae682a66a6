"""What an extension is given: `ExtensionContext`, and the small service interfaces its UI tab and API
routes receive. Extensions use these and the names re-exported by `webui.extensions`; nothing else of
Easel's is a promise.

An extension is a folder `extensions/<name>/` holding a Python package whose `__init__.py` defines

    def register(ctx: ExtensionContext) -> None: ...

`register` runs once at start. Everything it adds is collected first and committed only when it
returns, so an extension that fails half-way adds nothing.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from webui.generation.extension_points import Feature, Script

if TYPE_CHECKING:
    from fastapi import APIRouter


@dataclass(frozen=True)
class UiServices:
    """What an extension's tab may use (passed to its build function, inside the tab's `gr.Tab`).

    submit(kind, request, gr_request) -> Job   queue a job as the page's caller ("txt2img", "img2img")
                                               through admission; FieldError when refused
    caller(gr_request) -> Caller               who is using the page
    """

    submit: Callable[[str, Any, Any], Any]
    caller: Callable[[Any], Any]


@dataclass(frozen=True)
class ApiServices:
    """What an extension's API routes may use (passed to its router builder).

    caller             a FastAPI dependency giving the Caller (owner, user, admin) of a request
    submit(kind, request, caller) -> Job   queue a job through admission; FieldError → 422 on Easel routes
    route_class        the APIRoute class that turns FieldError/validation errors into Easel's 422 JSON
    """

    caller: Callable[..., Any]
    submit: Callable[[str, Any, Any], Any]
    route_class: type


@dataclass
class ExtensionContext:
    """Handed to an extension's `register(ctx)`."""

    name: str
    folder: Path
    log: logging.Logger
    features: list[Feature] = field(default_factory=list, repr=False)
    scripts: list[Script] = field(default_factory=list, repr=False)
    options: list[tuple[str, Any, Any, str]] = field(default_factory=list, repr=False)
    tabs: list[tuple[str, Callable[[UiServices], None]]] = field(default_factory=list, repr=False)
    routers: list[Callable[[ApiServices], "APIRouter"]] = field(default_factory=list, repr=False)

    def add_feature(self, feature: Feature) -> None:
        """A part of generation on the extension points (webui.extensions.Feature)."""
        if not isinstance(feature, Feature):
            raise TypeError(f"{feature!r} is not a webui.extensions.Feature")
        self.features.append(feature)

    def add_script(self, script: Script) -> None:
        """A whole-job script, chosen with `script_name` (webui.extensions.Script)."""
        if not isinstance(script, Script):
            raise TypeError(f"{script!r} is not a webui.extensions.Script")
        self.scripts.append(script)

    def add_option(self, key: str, annotation: Any, default: Any, description: str = "") -> None:
        """A per-caller option (shown by GET /sdapi/v1/options, set by POST, overridable per request with
        `override_settings`); hooks read the caller's value as `run.options[key]`."""
        self.options.append((key, annotation, default, description))

    def add_tab(self, title: str, build: Callable[[UiServices], None]) -> None:
        """A tab of the page: `build(services)` creates its Gradio components (it runs inside the tab)."""
        self.tabs.append((title, build))

    def add_api(self, build: Callable[[ApiServices], "APIRouter"]) -> None:
        """HTTP routes: `build(services)` returns a FastAPI APIRouter, mounted beside Easel's (behind the
        same logins). Prefix them with /easel/v1/ext/<name>/ by convention."""
        self.routers.append(build)
