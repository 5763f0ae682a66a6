"""Walking the model folders safely: the one way Easel lists what is in `models/…`.

Symbolic links are followed only while they stay inside the folders being listed (a link to
`/etc/passwd` named `x.safetensors` is not a model), and each real folder is entered once, so a link
loop (`ln -s . a`) cannot make a listing run forever. Hidden files and folders are skipped.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Iterator

log = logging.getLogger(__name__)


def _inside(path: Path, roots: list[Path]) -> bool:
    return any(path == root or path.is_relative_to(root) for root in roots)


def walk(root: Path, allowed: list[Path] | None = None) -> Iterator[tuple[Path, list[str], list[str]]]:
    """Like os.walk(root) top-down (`dirnames` may be pruned), following links only into `allowed`
    (default: `root`) and never entering a real folder twice."""
    if not root.is_dir():
        return
    bounds = [p.resolve() for p in (allowed or [root])]
    seen: set[Path] = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        here = Path(dirpath)
        real = here.resolve()
        if real in seen or not _inside(real, bounds):
            if real not in seen:
                log.warning("models: not following %s, which leads outside the model folders", here)
            dirnames.clear()
            continue
        seen.add(real)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        files = [f for f in sorted(filenames) if not f.startswith(".") and _inside((here / f).resolve(), bounds)]
        yield here, dirnames, files


def files_in(root: Path, suffixes: tuple[str, ...], allowed: list[Path] | None = None) -> list[Path]:
    """Every file under `root` with one of the suffixes (safely, see `walk`), sorted."""
    return sorted(here / f for here, _, files in walk(root, allowed) for f in files
                  if Path(f).suffix.lower() in suffixes and (here / f).is_file())
