"""Styles: saved prompt fragments in A1111's `styles.csv` format, and the feature that applies them.

A style has a name, a prompt and a negative prompt. Applying it to a prompt puts the prompt where the
style's text says `{prompt}`, or else appends the style's text after a comma (A1111's rule); styles
apply in the order chosen, to the prompt and the negative prompt alike. Files: `DATA_DIR/styles.csv`
and every `styles*.csv` beside it, or the `--styles-file` paths (A1111's flag; globs allowed). A row
that cannot be read is skipped with a log line naming the file and row; the rest load. Saving writes
the file the style came from (new styles go to the first file), atomically.
"""
from __future__ import annotations

import csv
import glob
import io
import logging
import os
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, Field, field_validator

from webui.generation.errors import FieldError
from webui.generation.extension_points import Feature, Run
from webui.generation.fields import Param

log = logging.getLogger(__name__)
FIELDS = ("name", "prompt", "negative_prompt")


@dataclass(frozen=True)
class Style:
    name: str
    prompt: str = ""
    negative_prompt: str = ""
    path: Path | None = None  # the file it lives in


def merge(style_text: str, prompt: str) -> str:
    """A1111's merge: the prompt at `{prompt}`, else the style after a comma (empty parts left out)."""
    if "{prompt}" in style_text:
        return style_text.replace("{prompt}", prompt)
    return ", ".join(part for part in (prompt.strip(), style_text.strip()) if part)


class StyleLibrary:
    """The styles of one Easel; thread-safe, re-read from disk on `refresh`."""

    def __init__(self, patterns: list[str], default_file: Path):
        self.patterns = patterns
        self.default_file = default_file
        self._lock = threading.Lock()
        self._styles: dict[str, Style] = {}
        self.problems: list[str] = []
        self.refresh()

    def files(self) -> list[Path]:
        found: list[Path] = []
        for pattern in self.patterns:
            matches = sorted(Path(p) for p in glob.glob(pattern)) if glob.has_magic(pattern) else [Path(pattern)]
            found.extend(p for p in matches if p.is_file() and p not in found)
        return found

    def refresh(self) -> None:
        styles: dict[str, Style] = {}
        problems = []
        for path in self.files():
            try:
                text = path.read_text(encoding="utf-8-sig")
            except (OSError, UnicodeDecodeError) as e:
                problems.append(f"{path.name}: cannot be read ({e})")
                continue
            for number, row in enumerate(csv.DictReader(io.StringIO(text), skipinitialspace=True), start=2):
                name = (row.get("name") or "").strip()
                if not name or None in row or any(v is None for k, v in row.items() if k in FIELDS):
                    problems.append(f"{path.name}, row {number}: skipped (it needs a name and at most the columns "
                                    f"{', '.join(FIELDS)})")
                    continue
                styles.setdefault(name, Style(name, row.get("prompt") or "", row.get("negative_prompt") or "", path))
        for problem in problems:
            log.warning("styles: %s", problem)
        with self._lock:
            self._styles, self.problems = styles, problems

    def all(self) -> list[Style]:
        with self._lock:
            return list(self._styles.values())

    def get(self, name: str) -> Style | None:
        with self._lock:
            return self._styles.get(name)

    def apply(self, names: list[str], prompt: str, negative_prompt: str) -> tuple[str, str]:
        for name in names:
            style = self.get(name)
            if style is None:
                raise FieldError("styles", f"no style {name!r}")
            prompt = merge(style.prompt, prompt)
            negative_prompt = merge(style.negative_prompt, negative_prompt)
        return prompt, negative_prompt

    # -- editing --------------------------------------------------------------------------------------
    def save(self, style: Style) -> Style:
        """Add or replace a style (in the file it was in; a new one in the first file)."""
        if not style.name.strip():
            raise FieldError("name", "a style needs a name")
        with self._lock:
            old = self._styles.get(style.name)
            path = old.path if old is not None and old.path is not None else (self.files() or [self.default_file])[0]
            style = Style(style.name.strip(), style.prompt, style.negative_prompt, path)
            self._styles[style.name] = style
            self._write(path)
        return style

    def delete(self, name: str) -> None:
        with self._lock:
            old = self._styles.pop(name, None)
            if old is None:
                raise FieldError("name", f"no style {name!r}")
            self._write(old.path)

    def _write(self, path: Path) -> None:
        rows = [s for s in self._styles.values() if s.path == path]
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".csv", dir=path.parent)
        try:
            with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
                writer = csv.writer(f, quoting=csv.QUOTE_MINIMAL)
                writer.writerow(FIELDS)
                writer.writerows((s.name, s.prompt, s.negative_prompt) for s in rows)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)


class StylesSettings(BaseModel):
    styles: Annotated[list[str], Field(description="style names, applied in this order"),
                      Param("Styles", ui=None)] = []

    @field_validator("styles", mode="before")
    @classmethod
    def _names(cls, v: Any) -> Any:
        return [v] if isinstance(v, str) else v


class Styles(Feature):
    name = "styles"
    title = "Styles"
    settings = StylesSettings
    top_level = True

    def __init__(self, library: StyleLibrary):
        self.library = library

    def parse(self, value: Any) -> BaseModel | None:
        settings = super().parse(value)
        unknown = [n for n in settings.styles if self.library.get(n) is None]
        if unknown:
            known = ", ".join(s.name for s in self.library.all()) or "none"
            raise FieldError("styles", f"no style {unknown[0]!r}; available: {known}")
        return settings

    def active(self, run: Run) -> bool:
        settings = run.settings_of(self)
        return settings is not None and bool(settings.styles)

    def prepare(self, run: Run) -> None:
        names = run.settings_of(self).styles
        pairs = [self.library.apply(names, p, n) for p, n in zip(run.prompts, run.negative_prompts)]
        run.prompts = [p for p, _ in pairs]
        run.negative_prompts = [n for _, n in pairs]

    def infotext(self, run: Run) -> dict[str, Any]:
        return {}  # A1111 writes the styled prompt itself, not the styles' names
