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
from dataclasses import dataclass, field
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

# Prompt text: anything but brackets, ":" and "|", or any escaped character except a
# newline. A bare trailing backslash therefore makes a prompt invalid.
_PLAIN = re.compile(r"(?:[^\\\[\]():|]|\\.)+")
# The ":when]" tail of a scheduled group, `when` being a signed int, decimal or exponent
# float. ASCII digits only: that is what A1111's grammar accepts.
_WHEN_TAIL = re.compile(
    r"\s*([+-]?(?:[0-9]+(?:\.[0-9]*)?(?:[eE][+-]?[0-9]+)?|\.[0-9]+(?:[eE][+-]?[0-9]+)?))\s*\]"
)


@dataclass
class _OpenGroup:
    """A bracket group whose closer has not been reached yet."""

    opener: str  # "(" or "["
    start: int
    # Contents between separators; `separators[k]` sits between segments k and k + 1.
    segments: list[list[_Node]] = field(default_factory=lambda: [[]])
    separators: list[str] = field(default_factory=list)

    def separate(self, separator: str) -> None:
        self.separators.append(separator)
        self.segments.append([])


class _ScheduleParser:
    """Parser for A1111's prompt-editing language (the language of A1111's lark grammar).

    Inside brackets the language is strict: every nested bracket must close, a `(` group
    holds at most one `:`, and a `[` group is `[a]`, `[a|b|...]`, `[to:when]` or
    `[from:to:when]`. At the top level a bracket that does not start a valid group is
    literal text, which is what lets `((a][:b:c [d:3]` still schedule `[d:3]`. A `|`
    outside any group, or a backslash escaping nothing (at the end, or before a newline),
    makes the whole prompt invalid; A1111 then uses the prompt unchanged for every step.

    Where A1111's grammar is ambiguous (a group next to stray brackets, as in `[a:3]((`)
    A1111's choice changes with PYTHONHASHSEED; this parser always takes the group.

    One extension over A1111: if a `[...]` group is only valid as `[from:to:when]` with
    the `|` characters directly inside it taken as text, it is read that way, so
    `[{b|d{:.5]` switches to `{b|d{` half-way. A1111's documentation expects this result
    although its grammar rejects the prompt.

    The scan is iterative, with an explicit stack of open groups, so deeply nested or
    unclosed brackets cannot exhaust Python's recursion limit. When a group turns out
    invalid, every group still open around it is invalid too (their contents stop at
    the bad group), so the outermost one's opener becomes text and the scan resumes just
    after it. Group results are remembered by start position, which keeps the rescan
    linear: a group's validity does not depend on what surrounds it.
    """

    def __init__(self, text: str) -> None:
        self._text = text
        self._groups: dict[int, tuple[_Sequence, int] | None] = {}  # None: invalid

    def parse(self) -> _Sequence | None:
        """The whole prompt as a node sequence, or None if it is not valid syntax."""
        text, groups = self._text, self._groups
        top: list[_Node] = []
        stack: list[_OpenGroup] = []
        position = 0

        while True:
            target = stack[-1].segments[-1] if stack else top
            plain = _PLAIN.match(text, position)
            if plain:
                target.append(plain.group(0))
                position = plain.end()
                continue
            if position == len(text):
                if not stack:
                    return tuple(top)
                position = self._abandon(stack, top)
                continue

            char = text[position]
            if char == "\\":
                return None  # escapes nothing; no reading of the prompt can absorb it
            if char in "([":
                if position not in groups:
                    stack.append(_OpenGroup(char, position))
                    position += 1
                    continue
                known = groups[position]
                if known is not None:
                    target.extend(known[0])
                    position = known[1]
                    continue
                if stack:
                    position = self._abandon(stack, top)
                else:
                    top.append(char)
                    position += 1
                continue
            if not stack:
                if char == "|":
                    return None
                top.append(char)  # a stray "]", ")" or ":"
                position += 1
                continue

            group = stack[-1]
            nodes: _Sequence | None = None
            end = position + 1
            if char == "|" and group.opener == "[":
                group.separate(char)
                position += 1
                continue
            if char == ":":
                when = _WHEN_TAIL.match(text, position + 1) if group.opener == "[" else None
                if when:
                    nodes, end = self._scheduled(group, when.group(1)), when.end()
                elif ":" not in group.separators:
                    group.separate(char)
                    position += 1
                    continue
            elif char == ")" and group.opener == "(":
                nodes = self._round(group)
            elif char == "]" and group.opener == "[":
                nodes = self._square(group)

            if nodes is None:  # a closer or separator this group cannot take
                position = self._abandon(stack, top)
                continue
            stack.pop()
            groups[group.start] = (nodes, end)
            (stack[-1].segments[-1] if stack else top).extend(nodes)
            position = end

    def _abandon(self, stack: list[_OpenGroup], top: list[_Node]) -> int:
        """Mark every open group invalid; the outermost opener becomes top-level text."""
        for group in stack:
            self._groups[group.start] = None
        outermost = stack[0].start
        stack.clear()
        top.append(self._text[outermost])
        return outermost + 1

    @staticmethod
    def _round(group: _OpenGroup) -> _Sequence:
        """`(a)` or `(a:b)`: emphasis, kept verbatim."""
        nodes: list[_Node] = ["(", *group.segments[0]]
        if group.separators:
            nodes += [":", *group.segments[1]]
        nodes.append(")")
        return tuple(nodes)

    @staticmethod
    def _square(group: _OpenGroup) -> _Sequence | None:
        """`[a]` (emphasis, kept verbatim) or `[a|b|...]` (alternation)."""
        if not group.separators:
            return ("[", *group.segments[0], "]")
        if ":" in group.separators:
            return None
        return (_Alternate(tuple(tuple(option) for option in group.segments)),)

    @staticmethod
    def _scheduled(group: _OpenGroup, when: str) -> _Sequence:
        """`[to:when]` or `[from:to:when]`; any `|` inside is text (see the class doc)."""
        operands: list[list[_Node]] = [list(group.segments[0])]
        for separator, segment in zip(group.separators, group.segments[1:]):
            if separator == "|":
                operands[-1] += ["|", *segment]
            else:
                operands.append(list(segment))
        if len(operands) == 1:
            return (_Scheduled(None, tuple(operands[0]), when),)
        return (_Scheduled(tuple(operands[0]), tuple(operands[1]), when),)


def _when_resolver(
    base_steps: int, hires_steps: int | None, use_old_scheduling: bool
) -> tuple[int, Callable[[str], int]]:
    """The step count a schedule spans, and the map from a `when` token to a step.

    A number written with a "." is a fraction of the steps, one without a step number.
    For a hires pass both count through the base pass into the hires one: `[a:b:25]`
    after 20 base steps switches at hires step 5, `[a:b:1.5]` half-way through hires.
    Old scheduling ignores the hires pass and instead reads any value below 1 as a
    fraction and anything else as a step number.
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


def _collect_steps(nodes: _Sequence, resolve: Callable[[str], int], steps: int) -> set[int]:
    """Every step at which some part of the prompt changes, unreached branches included."""
    found = {steps}
    pending = [nodes]  # iterative, like the parser: nesting depth is user-controlled
    while pending:
        for node in pending.pop():
            if isinstance(node, _Scheduled):
                when = resolve(node.when)
                if when >= 1:
                    found.add(when)
                pending.append(node.after)
                if node.before is not None:
                    pending.append(node.before)
            elif isinstance(node, _Alternate):
                found.update(range(1, steps + 1))
                pending.extend(node.options)
    return found


def _render(nodes: _Sequence, step: int, resolve: Callable[[str], int]) -> str:
    """The prompt text in force at `step`."""
    parts: list[str] = []
    pending = [iter(nodes)]
    while pending:
        for node in pending[-1]:
            if isinstance(node, str):
                parts.append(node)
                continue
            if isinstance(node, _Scheduled):
                chosen = (node.before or ()) if step <= resolve(node.when) else node.after
            else:
                chosen = node.options[(step - 1) % len(node.options)]
            pending.append(iter(chosen))
            break
        else:
            pending.pop()
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
        boundaries = sorted(_collect_steps(nodes, resolve, steps))
        return [[step, _render(nodes, step, resolve)] for step in boundaries]

    by_prompt: dict[str, list[list]] = {}
    for prompt in prompts:
        if prompt not in by_prompt:
            by_prompt[prompt] = schedule(prompt)
    return [by_prompt[prompt] for prompt in prompts]


def prompt_schedule_at(schedule: Sequence[Sequence], step: int) -> str:
    """The text of `schedule` (one prompt's entries) that applies at `step`.

    That is the first entry whose end step is >= `step`; past the last entry the last
    text stays in force. For A1111's exact timing note that A1111 looks entries up with
    its denoiser's 0-based evaluation counter (so `[a:b:3]` gives `a` to evaluations
    0..3), and that past the last entry it falls back to the first one.
    """
    if not schedule:
        raise ValueError("empty prompt schedule")
    for end_at_step, text in schedule:
        if step <= end_at_step:
            return text
    return schedule[-1][1]
