"""A1111's infotext: the generation recipe stored in each PNG's `parameters` text chunk.

Layout (A1111's):

    a red circle, (masterpiece:1.2)
    Negative prompt: blurry
    Steps: 20, Sampler: Euler a, Schedule type: Automatic, CFG scale: 7, Seed: 1234, Size: 512x512, ...

Values containing `,`, `:` or a newline are JSON-quoted. `parse_infotext` reads it back into a
dict (A1111's keys, plus `Size-1`/`Size-2` for width/height) and is lenient with what other tools
write.
"""
from __future__ import annotations

import json
import re
from typing import Any

_PARAM = re.compile(r'\s*([\w][\w \-/]*):\s*("(?:\\.|[^\\"])*"|[^,]*)(?:,|$)')
_SIZE = re.compile(r"^(\d+)x(\d+)$")
_NEGATIVE_LINE = re.compile(r"^Negative prompt:", re.MULTILINE)


def quote(value: Any) -> str:
    """A1111's quoting: plain unless the text holds a comma, colon or newline."""
    text = _format(value)
    if "," not in text and ":" not in text and "\n" not in text and not text.startswith('"'):
        return text
    return json.dumps(text, ensure_ascii=False)


def _format(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}" if value == int(value) or abs(value) >= 1e-4 else repr(value)
    return str(value)


def create_infotext(prompt: str, negative_prompt: str, params: dict[str, Any]) -> str:
    """The infotext for one image: the fields in the order given (webui.generation.fields decides it
    from the requests' declarations); None values are left out."""
    fields = ", ".join(f"{k}: {quote(v)}" for k, v in params.items() if v is not None)
    lines = [prompt]
    if negative_prompt or _NEGATIVE_LINE.search(prompt):  # the reader splits at the last such line
        lines.append(f"Negative prompt: {negative_prompt}")
    lines.append(fields)
    return "\n".join(lines)


def parse_infotext(text: str) -> dict[str, Any]:
    """Infotext → {"Prompt", "Negative prompt", field: value, …}; numbers stay strings except Size-1/2."""
    lines = text.strip().split("\n")
    result: dict[str, Any] = {}
    last = lines[-1] if lines else ""
    params = _PARAM.findall(last)
    if len(params) >= 3:
        lines = lines[:-1]
    else:
        params = []
    # the negative prompt starts at the last "Negative prompt:" line, so a prompt holding such a line
    # (the writer then always writes the negative line) comes back whole
    starts = [i for i, line in enumerate(lines) if line.startswith("Negative prompt:")]
    split = starts[-1] if starts else len(lines)
    negative_lines = lines[split:]
    if negative_lines:
        negative_lines[0] = negative_lines[0][len("Negative prompt:"):].removeprefix(" ")
    result["Prompt"] = "\n".join(lines[:split]).strip()
    result["Negative prompt"] = "\n".join(negative_lines).strip()
    for key, value in params:
        value = value.strip()
        if value.startswith('"') and value.endswith('"') and len(value) >= 2:
            try:
                value = json.loads(value)
            except ValueError:
                value = value[1:-1]
        result[key.strip()] = value
        if key.strip() == "Size" and (m := _SIZE.match(str(value))):
            result["Size-1"], result["Size-2"] = int(m.group(1)), int(m.group(2))
    return result

