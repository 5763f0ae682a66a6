"""Each generation parameter described once, and everything derived from that description.

A request field is declared with pydantic (type, default, limits, API name = the field name, as
A1111's API spells it) plus one `Param` that says what pydantic cannot: its label in the page, its
infotext key and how it is written there, and how a widget shows it. From that single declaration:

- `infotext_params(obj)` writes the infotext fields of a request (or of a feature's settings);
- `values_from_infotext(parsed, model)` reads them back (PNG Info, "send to", the ↙ paste button);
- `bounds(model, name)` gives the range a slider and a validator share;
- the API schema is pydantic's own, from the same model.

A test round-trips every described field through an infotext and back
(tests/test_fields.py), so adding a field means describing it here, once.
"""
from __future__ import annotations

import types
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Union, get_args, get_origin

from annotated_types import Ge, Gt, Le, Lt
from pydantic import BaseModel
from pydantic.fields import FieldInfo

Written = Callable[[Any], bool]  # receives the whole request (or settings object)


@dataclass(frozen=True)
class Param:
    """Easel's part of a field's description (pydantic's `Field` holds type, default and limits).

    label     what the page calls it (A1111's label)
    infotext  A1111's infotext key; None = not written in the infotext
    part      index into a combined key: "Size: WxH" is width (part 0) and height (part 1)
    choices   the labels an int (an index) or a bool (False, True) is written and shown as
    written   leave the key out of the infotext unless this returns True for the request
    minimum, maximum, step   the range when it is not in pydantic's limits (checked by a validator)
    ui        the widget: "slider", "number", "dropdown", "radio", "checkbox", "text", "textarea",
              or None for a field with no widget of its own (page-wide pickers, images)
    options   a function listing a dropdown's choices (samplers, schedule types)
    elem      the widget's elem_id suffix, when it is not the field name (A1111's element ids)
    """

    label: str
    infotext: str | None = None
    part: int | None = None
    choices: tuple[str, ...] | None = None
    written: Written | None = None
    minimum: float | None = None
    maximum: float | None = None
    step: float | None = None
    ui: str | None = "auto"
    options: Callable[[], list[str]] | None = None
    elem: str | None = None


def param_of(field: FieldInfo) -> Param | None:
    return next((m for m in field.metadata if isinstance(m, Param)), None)


def described(model: type[BaseModel]) -> Iterator[tuple[str, FieldInfo, Param]]:
    """(name, pydantic field, Param) of every described field, in declaration order."""
    for name, field in model.model_fields.items():
        param = param_of(field)
        if param is not None:
            yield name, field, param


def base_type(field: FieldInfo) -> type:
    """`int` for `int | None`, and so on."""
    annotation = field.annotation
    if get_origin(annotation) in (Union, types.UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        annotation = args[0] if args else str
    return annotation if isinstance(annotation, type) else str


def bounds(model: type[BaseModel], name: str) -> tuple[float | None, float | None]:
    """(minimum, maximum) of a field: pydantic's ge/gt/le/lt, else its Param's."""
    field = model.model_fields[name]
    low = high = None
    for m in field.metadata:
        if isinstance(m, (Ge, Gt)):
            low = m.ge if isinstance(m, Ge) else m.gt
        elif isinstance(m, (Le, Lt)):
            high = m.le if isinstance(m, Le) else m.lt
    param = param_of(field)
    if param is not None:
        low = param.minimum if param.minimum is not None else low
        high = param.maximum if param.maximum is not None else high
    return low, high


def check_range(model: type[BaseModel], name: str, value: int | None) -> int | None:
    """The shared check for fields whose range lives in their Param (sizes): a multiple of `step`
    between `minimum` and `maximum`, with a message that names both."""
    if value is None:
        return value
    low, high = bounds(model, name)
    param = param_of(model.model_fields[name])
    if low is not None and high is not None and not low <= value <= high:
        raise ValueError(f"must be between {low:g} and {high:g} (got {value})")
    if param is not None and param.step and value % param.step:
        raise ValueError(f"must be a multiple of {param.step:g} (got {value})")
    return value


# -- writing ---------------------------------------------------------------------------------------
def format_value(value: Any, param: Param) -> Any:
    if param.choices is not None and isinstance(value, (bool, int)):
        return param.choices[int(value)]
    return value


def infotext_params(obj: BaseModel) -> dict[str, Any]:
    """The infotext fields a request (or a feature's settings) writes, in declaration order.

    A field is left out when its value is None or its `written` rule says no; the parts of a
    combined key (Size) are joined with "x"."""
    out: dict[str, Any] = {}
    parts: dict[str, dict[int, Any]] = {}
    for name, _, param in described(type(obj)):
        if param.infotext is None:
            continue
        value = getattr(obj, name)
        if value is None or (param.written is not None and not param.written(obj)):
            continue
        if param.part is not None:
            parts.setdefault(param.infotext, {})[param.part] = value
            out.setdefault(param.infotext, None)
            continue
        out[param.infotext] = format_value(value, param)
    for key, pieces in parts.items():
        out[key] = "x".join(str(pieces[i]) for i in sorted(pieces)) if len(pieces) > 1 else None
    return {k: v for k, v in out.items() if v is not None}


# -- reading ---------------------------------------------------------------------------------------
def parse_value(text: Any, field: FieldInfo, param: Param) -> Any:
    """An infotext value as the field's type; ValueError when it does not convert."""
    kind = base_type(field)
    text = str(text).strip()
    if param.choices is not None:
        if text not in param.choices:
            raise ValueError(f"{text!r} is not one of {param.choices}")
        index = param.choices.index(text)
        return bool(index) if kind is bool else index
    if kind is bool:
        return text.lower() in ("true", "1", "yes", "on")
    if kind is int:
        return int(float(text))
    if kind is float:
        return float(text)
    return text


def values_from_infotext(parsed: dict[str, Any], model: type[BaseModel]) -> dict[str, Any]:
    """Field values of `model` from a parsed infotext (webui.images.infotext.parse_infotext).
    Values that do not convert are skipped rather than failing the whole paste."""
    out: dict[str, Any] = {}
    for name, field, param in described(model):
        if param.infotext is None or param.infotext not in parsed:
            continue
        raw = parsed[param.infotext]
        if param.part is not None:
            pieces = str(raw).split("x")
            if param.part >= len(pieces):
                continue
            raw = pieces[param.part]
        try:
            out[name] = parse_value(raw, field, param)
        except (TypeError, ValueError):
            continue
    return out


def infotext_keys(model: type[BaseModel]) -> set[str]:
    return {p.infotext for _, _, p in described(model) if p.infotext is not None}
