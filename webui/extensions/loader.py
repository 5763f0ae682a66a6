"""Finding, importing and registering the extensions in `extensions/` at start.

Each sub-folder with an `__init__.py` is one extension, named after the folder. It is imported as
its own package and its `register(ctx)` is called; what it registers is committed to Easel's
registries only if both succeed. An extension that fails to import or register is disabled with one
log line naming it and the reason, and everything else runs. `--disable-extensions` loads none;
`--disable-extension NAME` and `disabled_extensions` in `DATA_DIR/config.json` (A1111's key) switch
single ones off.
"""
from __future__ import annotations

import importlib.util
import json
import logging
import sys
import traceback
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from webui.generation.extension_points import FeatureRegistry
from webui.options import OptionRegistry
from webui.settings import Settings

from .interface import ApiServices, ExtensionContext, UiServices

log = logging.getLogger(__name__)

PACKAGE = "easel_extensions"  # extensions are imported as easel_extensions.<name>


@dataclass
class ExtensionInfo:
    name: str
    path: Path
    state: str  # "enabled" | "disabled" | "failed"
    reason: str = ""  # why it is disabled or failed
    features: list[str] = field(default_factory=list)

    @property
    def enabled(self) -> bool:
        return self.state == "enabled"


@dataclass
class Extensions:
    """The extensions found, and the UI tabs and API routers the enabled ones added."""

    items: list[ExtensionInfo] = field(default_factory=list)
    tabs: list[tuple[str, str, Callable[[UiServices], None]]] = field(default_factory=list)  # (extension, title, build)
    routers: list[tuple[str, Callable[[ApiServices], object]]] = field(default_factory=list)

    def find(self, name: str) -> ExtensionInfo | None:
        return next((e for e in self.items if e.name == name), None)


def read_disabled(config: Path) -> set[str]:
    """`disabled_extensions` from config.json (A1111's key); a damaged file disables nothing (logged)."""
    if not config.is_file():
        return set()
    try:
        data = json.loads(config.read_text(encoding="utf-8"))
        names = data.get("disabled_extensions", []) if isinstance(data, dict) else []
        return {str(n) for n in names} if isinstance(names, list) else set()
    except (OSError, ValueError) as e:
        log.error("could not read %s: %s", config, e)
        return set()


def write_disabled(config: Path, names: set[str]) -> None:
    """Store the switched-off extensions in config.json (other keys kept); takes effect at the next start."""
    data = {}
    if config.is_file():
        try:
            data = json.loads(config.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            data = {}
    data["disabled_extensions"] = sorted(names)
    config.parent.mkdir(parents=True, exist_ok=True)
    tmp = config.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=2), encoding="utf-8")
    tmp.replace(config)


def discover(folders: list[Path]) -> list[Path]:
    """Extension folders (a package each), by name; a name found twice is taken from the first folder."""
    found: dict[str, Path] = {}
    for folder in folders:
        if not folder.is_dir():
            continue
        for sub in sorted(folder.iterdir()):
            if sub.is_dir() and (sub / "__init__.py").is_file() and not sub.name.startswith((".", "_")):
                found.setdefault(sub.name, sub)
    return list(found.values())


def load_extensions(settings: Settings, features: FeatureRegistry, options: OptionRegistry) -> Extensions:
    extensions = Extensions()
    disabled = set(settings.disabled_extensions) | read_disabled(settings.config_file)
    for folder in discover(settings.extension_dirs):
        name = folder.name
        if settings.disable_extensions:
            extensions.items.append(ExtensionInfo(name, folder, "disabled", "--disable-extensions"))
            continue
        if name in disabled:
            extensions.items.append(ExtensionInfo(name, folder, "disabled", "switched off"))
            continue
        extensions.items.append(load_one(name, folder, features, options, extensions))
    return extensions


def load_one(name: str, folder: Path, features: FeatureRegistry, options: OptionRegistry,
             extensions: Extensions) -> ExtensionInfo:
    ctx = ExtensionContext(name, folder, logging.getLogger(f"easel.extensions.{name}"))
    try:
        module = _import(name, folder)
        register = getattr(module, "register", None)
        if not callable(register):
            raise TypeError("its __init__.py defines no register(ctx) function")
        register(ctx)
        _commit(ctx, features, options)
    except Exception as e:  # any failure of third-party code disables that extension only
        where = traceback.extract_tb(e.__traceback__)[-1] if e.__traceback__ else None
        at = f" ({Path(where.filename).name}:{where.lineno})" if where else ""
        reason = f"{type(e).__name__}: {e}{at}"
        log.error("extension %s is disabled: %s", name, reason)
        return ExtensionInfo(name, folder, "failed", reason)
    extensions.tabs.extend((name, title, build) for title, build in ctx.tabs)
    extensions.routers.extend((name, build) for build in ctx.routers)
    log.info("extension %s loaded (%d feature(s), %d script(s))", name, len(ctx.features), len(ctx.scripts))
    return ExtensionInfo(name, folder, "enabled", features=[f.name for f in ctx.features + ctx.scripts])


def _import(name: str, folder: Path):
    module_name = f"{PACKAGE}.{name.replace('-', '_')}"
    spec = importlib.util.spec_from_file_location(module_name, folder / "__init__.py",
                                                  submodule_search_locations=[str(folder)])
    if spec is None or spec.loader is None:
        raise ImportError(f"cannot import {folder}")
    module = importlib.util.module_from_spec(spec)
    if PACKAGE not in sys.modules:  # the parent, so the module can be imported by name (pickle does, for
        parent = types.ModuleType(PACKAGE, "Easel's loaded extensions")  # a request sent to a Ray worker)
        parent.__path__ = []
        sys.modules[PACKAGE] = parent
    sys.modules[module_name] = module  # so the package's own relative imports work
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(module_name, None)
        raise
    return module


def _commit(ctx: ExtensionContext, features: FeatureRegistry, options: OptionRegistry) -> None:
    """Add what `register` collected; on any conflict, take back what was added and fail."""
    keys = [key for key, *_ in ctx.options]
    if len(set(keys)) != len(keys):
        raise ValueError(f"an option is added twice: {keys}")
    for key in keys:
        options.check_new(key)
    try:
        for feature in ctx.features:
            features.add(feature, source=ctx.name)
        for script in ctx.scripts:
            features.add_script(script, source=ctx.name)
    except Exception:
        features.remove_source(ctx.name)
        raise
    for key, annotation, default, description in ctx.options:
        options.add(key, annotation, default, description)
