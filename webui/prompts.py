"""AUTOMATIC1111's prompt syntax: attention weights and prompt schedules.

Two independent passes, applied in A1111's order:

1. `get_learned_conditioning_prompt_schedules` resolves prompt editing (`[from:to:when]`)
   and alternation (`[a|b]`) into one plain prompt per span of sampling steps. Emphasis
   brackets pass through verbatim so that the second pass still sees them.
2. `parse_prompt_attention` turns one of those prompts into `[text, weight]` pieces.

Both return plain lists in A1111's shapes, and both reproduce A1111's results exactly,
float rounding included, because the same prompt must give the same conditioning (and so
the same image) in Easel as in A1111. Where A1111 would crash (`(a:1.2.3)`, `[a:1e999]`)
these functions degrade instead of raising: prompts are user input.
"""
from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from typing import NamedTuple, Union

# --------------------------------------------------------------------------------------
# Attention: (text), [text], (text:1.3), BREAK
# --------------------------------------------------------------------------------------

ROUND_BRACKET_MULTIPLIER = 1.1
# A1111 multiplies by 1/1.1 rather than dividing by 1.1; the two round differently, and
# weights are compared exactly when runs are merged, so the multiplier form is kept.
SQUARE_BRACKET_MULTIPLIER = 1 / 1.1
BREAK_WEIGHT = -1.0

_ESCAPABLE = frozenset("()[]\\")
_ATTENTION_TEXT = re.compile(r"[^\\()\[\]:]+")
# `[.\d]` (not a strict float) because A1111 recognises exactly this set of suffixes; the
# few it accepts that are not floats ("1.2.3", ".") are treated as text instead of raising.
_WEIGHT_CLOSE = re.compile(r":\s*([+-]?[.\d]+)\s*\)")
_BREAK = re.compile(r"\s*\bBREAK\b\s*")


def parse_prompt_attention(text: str) -> list[list]:
    """Split `text` into `[text, weight]` pairs, A1111-style.

    `(x)` scales x by 1.1, `[x]` by 1/1.1, `(x:w)` by w; nesting multiplies. `\\(`, `\\)`,
    `\\[`, `\\]`, `\\\\` are literal characters; any other backslash is dropped, as A1111
    drops it (so `\\:` is a literal colon). An unclosed `(` or `[` applies to the rest of
    the prompt; a closer with nothing open is plain text. A standalone `BREAK` becomes
    `["BREAK", -1.0]` (scaled like any piece if it sits inside brackets, exactly as in
    A1111, which then no longer treats it as a break). Adjacent pieces of equal weight are
    merged; an empty prompt gives `[["", 1.0]]`.

    >>> parse_prompt_attention('an (important) word')
    [['an ', 1.0], ['important', 1.1], [' word', 1.0]]
    """
    pieces: list[list] = []
    # Indices into `pieces` where each still-open bracket started. A bracket's multiplier
    # is applied to every piece from there to the end when it closes, so the float
    # products accumulate in the same order as A1111's and round identically.
    open_round: list[int] = []
    open_square: list[int] = []

    def scale_from(start: int, factor: float) -> None:
        for piece in pieces[start:]:
            piece[1] *= factor

    def add_text(chunk: str) -> None:
        for index, part in enumerate(_BREAK.split(chunk)):
            if index:
                pieces.append(["BREAK", BREAK_WEIGHT])
            pieces.append([part, 1.0])

    position, length = 0, len(text)
    while position < length:
        char = text[position]
        if char == "\\":
            escaped = text[position + 1 : position + 2]
            if escaped and escaped in _ESCAPABLE:
                pieces.append([escaped, 1.0])
                position += 2
            else:
                # A1111 emits an empty piece here; it can stop two equal-weight
                # neighbours from merging, so it is kept for identical output.
                pieces.append(["", 1.0])
                position += 1
        elif char == "(":
            open_round.append(len(pieces))
            position += 1
        elif char == "[":
            open_square.append(len(pieces))
            position += 1
        elif char == ")":
            if open_round:
                scale_from(open_round.pop(), ROUND_BRACKET_MULTIPLIER)
            else:
                add_text(char)
            position += 1
        elif char == "]":
            if open_square:
                scale_from(open_square.pop(), SQUARE_BRACKET_MULTIPLIER)
            else:
                add_text(char)
            position += 1
        elif char == ":":
            match = _WEIGHT_CLOSE.match(text, position)
            weight = _float_or_none(match.group(1)) if match else None
            if match and weight is not None and open_round:
                scale_from(open_round.pop(), weight)
                position = match.end()
            else:
                # Without an open `(`, A1111 keeps ":1.2)" as text; emitting ":" alone
                # and rescanning yields the same text at the same weight.
                add_text(char)
                position += 1
        else:
            match = _ATTENTION_TEXT.match(text, position)
            assert match is not None  # every other character starts a text run
            add_text(match.group(0))
            position = match.end()

    # Outermost first, round before square: A1111's order, which fixes the rounding.
    for start in open_round:
        scale_from(start, ROUND_BRACKET_MULTIPLIER)
    for start in open_square:
        scale_from(start, SQUARE_BRACKET_MULTIPLIER)

    merged: list[list] = []
    for piece in pieces:
        if merged and merged[-1][1] == piece[1]:
            merged[-1][0] += piece[0]
        else:
            merged.append(piece)
    return merged or [["", 1.0]]


def _float_or_none(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


# --------------------------------------------------------------------------------------
# Schedules: [from:to:when], [to:when], [from::when], [a|b|c]
# --------------------------------------------------------------------------------------


class ScheduledPrompt(NamedTuple):
    """One entry of a prompt schedule: `text` applies to steps up to `end_at_step`."""

    end_at_step: int
    text: str


class _Scheduled(NamedTuple):
    """`[before:after:when]`; `before` is None for the `[after:when]` form."""

    before: _Sequence | None
    after: _Sequence
    when: str  # the NUMBER token as written: whether it has a "." changes its meaning


class _Alternate(NamedTuple):
    options: tuple[_Sequence, ...]


# Emphasis brackets and stray brackets are kept as text, so a parsed prompt is just text
# interleaved with the two constructs that depend on the step.
_Node = Union[str, _Scheduled, _Alternate]
_Sequence = tuple[_Node, ...]

# The prompt-text terminal: anything but brackets, ":" and "|", or any escaped character
# except a newline. A bare trailing backslash therefore makes a prompt unparseable.
_PLAIN = re.compile(r"(?:[^\\\[\]():|]|\\.)+")
_PLAIN_WITH_BAR = re.compile(r"(?:[^\\\[\]():]|\\.)+")
# The ":when]" tail of a scheduled group, `when` being a signed int, decimal or exponent
# float. ASCII digits only: that is what A1111's grammar accepts.
_WHEN_TAIL = re.compile(
    r"\s*([+-]?(?:[0-9]+(?:\.[0-9]*)?(?:[eE][+-]?[0-9]+)?|\.[0-9]+(?:[eE][+-]?[0-9]+)?))\s*\]"
)


class _ScheduleParser:
    """Recursive-descent parser for A1111's prompt-editing language.

    Inside brackets the grammar is strict: every nested bracket must close, and `:`/`|`
    may only appear as separators. At the top level a bracket that cannot be parsed as a
    group is kept as literal text, which is what lets `((a][:b:c [d:3]` still schedule
    `[d:3]`. A bare `|` outside any group, or a backslash escaping nothing, makes the
    whole prompt unparseable (A1111 then uses the prompt unchanged for every step).

    One extension over A1111's grammar: if a `[...]` group only parses as
    `[from:to:when]` when the `|` characters directly inside it are text, it is read that
    way, so `[{b|d{:.5]` switches to `{b|d{` at half-way. A1111's own documentation
    expects this result though its grammar rejects the prompt.
    """

    def __init__(self, text: str) -> None:
        self._text = text
        # Group parses keyed by start position. A group's parse does not depend on its
        # context, so this keeps the top-level retry after a failed group linear.
        self._groups: dict[int, tuple[_Sequence, int] | None] = {}

    def parse(self) -> _Sequence | None:
        """The whole prompt as a node sequence, or None if it is not valid syntax."""
        text, nodes, position = self._text, [], 0
        while True:
            part, position = self._prompt(position, bar_is_text=False)
            nodes.extend(part)
            if position == len(text):
                return tuple(nodes)
            if text[position] not in "[]():":
                return None
            nodes.append(text[position])
            position += 1

    def _char(self, position: int) -> str:
        return self._text[position : position + 1]

    def _prompt(self, position: int, *, bar_is_text: bool) -> tuple[list[_Node], int]:
        """Parse prompt content from `position`; stops at the first character it cannot use."""
        plain = _PLAIN_WITH_BAR if bar_is_text else _PLAIN
        nodes: list[_Node] = []
        while position < len(self._text):
            match = plain.match(self._text, position)
            if match:
                nodes.append(match.group(0))
                position = match.end()
                continue
            if self._char(position) not in "([":
                break
            group = self._group(position)
            if group is None:
                break
            nodes.extend(group[0])
            position = group[1]
        return nodes, position

    def _group(self, position: int) -> tuple[_Sequence, int] | None:
        if position not in self._groups:
            if self._char(position) == "(":
                parsed = self._round_group(position)
            else:
                parsed = self._square_group(position, bar_is_text=False)
                if parsed is None:
                    parsed = self._square_group(position, bar_is_text=True)
            self._groups[position] = parsed
        return self._groups[position]

    def _round_group(self, position: int) -> tuple[_Sequence, int] | None:
        """`(prompt)` or `(prompt:prompt)`: emphasis, kept verbatim."""
        inner, position = self._prompt(position + 1, bar_is_text=False)
        nodes: list[_Node] = ["(", *inner]
        if self._char(position) == ":":
            weight, position = self._prompt(position + 1, bar_is_text=False)
            nodes += [":", *weight]
        if self._char(position) != ")":
            return None
        nodes.append(")")
        return tuple(nodes), position + 1

    def _square_group(self, position: int, *, bar_is_text: bool) -> tuple[_Sequence, int] | None:
        """`[prompt]` (emphasis), `[a|b|...]` (alternation) or a scheduled group.

        With `bar_is_text`, only the scheduled form is accepted (see the class docstring).
        """
        first, position = self._prompt(position + 1, bar_is_text=bar_is_text)
        separator = self._char(position)
        if separator == ":":
            return self._scheduled_tail(tuple(first), position, bar_is_text=bar_is_text)
        if bar_is_text:
            return None
        if separator == "]":
            return ("[", *first, "]"), position + 1
        if separator != "|":
            return None
        options = [tuple(first)]
        while self._char(position) == "|":
            option, position = self._prompt(position + 1, bar_is_text=False)
            options.append(tuple(option))
        if self._char(position) != "]":
            return None
        return (_Alternate(tuple(options)),), position + 1

    def _scheduled_tail(
        self, first: _Sequence, colon: int, *, bar_is_text: bool
    ) -> tuple[_Sequence, int] | None:
        """Finish `[first:when]` or `[first:second:when]`, `colon` being the first ":"."""
        tail = _WHEN_TAIL.match(self._text, colon + 1)
        if tail:
            return (_Scheduled(None, first, tail.group(1)),), tail.end()
        second, position = self._prompt(colon + 1, bar_is_text=bar_is_text)
        if self._char(position) != ":":
            return None
        tail = _WHEN_TAIL.match(self._text, position + 1)
        if not tail:
            return None
        return (_Scheduled(first, tuple(second), tail.group(1)),), tail.end()


def _when_resolver(
    base_steps: int, hires_steps: int | None, use_old_scheduling: bool
) -> tuple[int, Callable[[str], int]]:
    """The step count a schedule spans, and the map from a `when` token to a step.

    For a hires pass (new scheduling) steps are counted through both passes: an integer
    names a step of the whole run and a fraction above 1 a point in the hires pass, so
    `[a:b:1.5]` switches half-way through hires. Old scheduling (and no hires pass) reads
    a value below 1 as a fraction of the steps and anything else as a step number.
    """
    if hires_steps is None or use_old_scheduling:
        steps, int_offset, fraction_offset = base_steps, 0, 0.0
    else:
        steps, int_offset, fraction_offset = hires_steps, base_steps, 1.0

    def resolve(when: str) -> int:
        value = float(when)
        if use_old_scheduling:
            value = value * steps if value < 1 else value
        elif "." in when:
            value = (value - fraction_offset) * steps
        else:
            value = value - int_offset
        # A1111 computes min(steps, int(value)); that raises for inf (and nan, from
        # inf * 0 steps), so those are clamped by hand to the same ordering.
        if math.isnan(value) or value >= steps:
            return steps
        if math.isinf(value):
            return min(steps, 0) - 1
        return int(value)

    return steps, resolve


def _collect_steps(nodes: _Sequence, resolve: Callable[[str], int], steps: int, found: set[int]) -> None:
    """Add every step at which some part of the prompt changes (unreached branches too)."""
    for node in nodes:
        if isinstance(node, _Scheduled):
            when = resolve(node.when)
            if when >= 1:
                found.add(when)
            if node.before is not None:
                _collect_steps(node.before, resolve, steps, found)
            _collect_steps(node.after, resolve, steps, found)
        elif isinstance(node, _Alternate):
            found.update(range(1, steps + 1))
            for option in node.options:
                _collect_steps(option, resolve, steps, found)


def _render(nodes: _Sequence, step: int, resolve: Callable[[str], int]) -> str:
    parts: list[str] = []
    for node in nodes:
        if isinstance(node, str):
            parts.append(node)
        elif isinstance(node, _Scheduled):
            if step <= resolve(node.when):
                if node.before is not None:
                    parts.append(_render(node.before, step, resolve))
            else:
                parts.append(_render(node.after, step, resolve))
        else:
            parts.append(_render(node.options[(step - 1) % len(node.options)], step, resolve))
    return "".join(parts)


def get_learned_conditioning_prompt_schedules(
    prompts: list[str],
    base_steps: int,
    hires_steps: int | None = None,
    use_old_scheduling: bool = False,
) -> list[list[list]]:
    """Each prompt's schedule: `[end_at_step, text]` pairs, A1111-style.

    `text` is the prompt for steps up to and including `end_at_step` (1-based); the last
    entry always ends at the step count (`hires_steps` for a hires pass). A prompt that is
    not valid syntax (or has nothing step-dependent) gives `[[steps, prompt]]`. Identical
    prompts share one schedule object.

    >>> get_learned_conditioning_prompt_schedules(["a [b:c:3]"], 10)
    [[[3, 'a b'], [10, 'a c']]]
    """
    steps, resolve = _when_resolver(base_steps, hires_steps, use_old_scheduling)

    def schedule(prompt: str) -> list[list]:
        nodes = _ScheduleParser(prompt).parse()
        if nodes is None:
            return [[steps, prompt]]
        boundaries = {steps}
        _collect_steps(nodes, resolve, steps, boundaries)
        return [[step, _render(nodes, step, resolve)] for step in sorted(boundaries)]

    by_prompt: dict[str, list[list]] = {}
    for prompt in prompts:
        if prompt not in by_prompt:
            by_prompt[prompt] = schedule(prompt)
    return [by_prompt[prompt] for prompt in prompts]


def prompt_schedule_at(schedule: Sequence[Sequence], step: int) -> str:
    """The text of `schedule` (one prompt's entries) that applies at `step`.

    That is the first entry whose end step is >= `step`; past the last entry the last
    text stays in force. Note that A1111's samplers pass their 0-based model-call counter
    here (so `[a:b:3]` gives `a` to calls 0..3); callers wanting its exact timing should
    do the same.
    """
    if not schedule:
        raise ValueError("empty prompt schedule")
    for end_at_step, text in schedule:
        if step <= end_at_step:
            return text
    return schedule[-1][1]
