"""webui.prompts: A1111's attention and prompt-schedule syntax.

The A1111 tables are the examples from A1111's own documentation and must match exactly
(float rounding included). The other cases were worked out by hand from the semantics.
"""
from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from webui.prompts import (
    ScheduledPrompt,
    get_learned_conditioning_prompt_schedules,
    parse_prompt_attention,
    prompt_schedule_at,
)

ROUND = 1.1
SQUARE = 1 / 1.1


def schedule(prompt: str, steps: int = 10, hires: int | None = None, old: bool = False) -> list[list]:
    return get_learned_conditioning_prompt_schedules([prompt], steps, hires, use_old_scheduling=old)[0]


def alternating(steps: int, *texts: str) -> list[list]:
    return [[step, texts[(step - 1) % len(texts)]] for step in range(1, steps + 1)]


# --- parse_prompt_attention ------------------------------------------------------------

A1111_ATTENTION = [
    ("normal text", [["normal text", 1.0]]),
    ("an (important) word", [["an ", 1.0], ["important", 1.1], [" word", 1.0]]),
    ("(unbalanced", [["unbalanced", 1.1]]),
    ("\\(literal\\]", [["(literal]", 1.0]]),
    ("(unnecessary)(parens)", [["unnecessaryparens", 1.1]]),
    (
        "a (((house:1.3)) [on] a (hill:0.5), sun, (((sky))).",
        [
            ["a ", 1.0],
            ["house", 1.5730000000000004],
            [" ", 1.1],
            ["on", 1.0],
            [" a ", 1.1],
            ["hill", 0.55],
            [", sun, ", 1.1],
            ["sky", 1.4641000000000006],
            [".", 1.1],
        ],
    ),
]

OWN_ATTENTION = [
    # brackets and explicit weights
    ("", [["", 1.0]]),
    ("()", [["", 1.0]]),
    ("[]", [["", 1.0]]),
    ("((a))", [["a", ROUND * ROUND]]),
    ("((((a))))", [["a", 1.4641000000000006]]),
    ("[a]", [["a", SQUARE]]),
    ("[[a]]", [["a", SQUARE * SQUARE]]),
    ("([a])", [["a", SQUARE * ROUND]]),
    ("(a:1.5) b", [["a", 1.5], [" b", 1.0]]),
    ("(a:-1)", [["a", -1.0]]),
    ("(a:+.5)", [["a", 0.5]]),
    ("(a:2.)", [["a", 2.0]]),
    ("(a: 1.5 )", [["a", 1.5]]),
    ("(a:0)", [["a", 0.0]]),
    ("((a:2))", [["a", 2.0 * ROUND]]),
    ("((a):2)", [["a", ROUND * 2.0]]),
    ("[(a:2)]", [["a", 2.0 * SQUARE]]),
    ("(a (b:2) c)", [["a ", ROUND], ["b", 2.0 * ROUND], [" c", ROUND]]),
    ("(a)(b:1.1)", [["ab", 1.1]]),
    # a ":" that is not a weight is text
    ("a:b", [["a:b", 1.0]]),
    ("(a:b)", [["a:b", ROUND]]),
    ("(a:1e3)", [["a:1e3", ROUND]]),
    ("(a:1.2.3)", [["a:1.2.3", ROUND]]),  # A1111 raises here; text is the useful reading
    ("(a:.)", [["a:.", ROUND]]),
    # unbalanced
    ("a)b", [["a)b", 1.0]]),
    ("a]b", [["a]b", 1.0]]),
    (":1.5) a", [[":1.5) a", 1.0]]),
    ("(a]", [["a]", ROUND]]),
    ("[a)", [["a)", SQUARE]]),
    ("[a", [["a", SQUARE]]),
    ("((a)", [["a", ROUND * ROUND]]),
    ("(a [b", [["a ", ROUND], ["b", ROUND * SQUARE]]),
    ("[a (b", [["a ", SQUARE], ["b", ROUND * SQUARE]]),
    # escapes
    ("\\\\", [["\\", 1.0]]),
    ("\\(a\\)", [["(a)", 1.0]]),
    ("(a\\)", [["a)", ROUND]]),
    ("\\[[a]\\]", [["[", 1.0], ["a", SQUARE], ["]", 1.0]]),
    ("\\\\(a)", [["\\", 1.0], ["a", ROUND]]),
    # a backslash escaping nothing is dropped (A1111 does the same) ...
    ("a\\b", [["ab", 1.0]]),
    ("a\\:b", [["a:b", 1.0]]),
    ("(a\\:2)", [["a", 2.0]]),  # ... even where that turns ":2)" into a weight
    # ... leaving an empty piece that keeps its neighbours apart, as in A1111
    ("(a)\\", [["a", ROUND], ["", 1.0]]),
    # BREAK
    ("a BREAK b", [["a", 1.0], ["BREAK", -1.0], ["b", 1.0]]),
    ("BREAK", [["", 1.0], ["BREAK", -1.0], ["", 1.0]]),
    ("a BREAK BREAK b", [["a", 1.0], ["BREAK", -1.0], ["", 1.0], ["BREAK", -1.0], ["b", 1.0]]),
    ("a,BREAK,b", [["a,", 1.0], ["BREAK", -1.0], [",b", 1.0]]),
    ("a\nBREAK\nb", [["a", 1.0], ["BREAK", -1.0], ["b", 1.0]]),
    ("(a) BREAK [b]", [["a", ROUND], ["", 1.0], ["BREAK", -1.0], ["", 1.0], ["b", SQUARE]]),
    ("BREAKfast", [["BREAKfast", 1.0]]),
    ("a BREAKS b", [["a BREAKS b", 1.0]]),
    ("UNBREAK", [["UNBREAK", 1.0]]),
    ("a break b", [["a break b", 1.0]]),
    # inside brackets BREAK is scaled like any piece (A1111 then treats it as text)
    ("(a BREAK b)", [["a", ROUND], ["BREAK", -ROUND], ["b", ROUND]]),
    # unicode
    ("(猫:1.2) café", [["猫", 1.2], [" café", 1.0]]),
    ("[日本語] ü", [["日本語", SQUARE], [" ü", 1.0]]),
]


@pytest.mark.parametrize(("text", "expected"), A1111_ATTENTION + OWN_ATTENTION)
def test_parse_prompt_attention(text: str, expected: list[list]) -> None:
    assert parse_prompt_attention(text) == expected


def test_attention_weights_are_repeated_products() -> None:
    # Exact float equality: A1111 multiplies step by step, it never uses 1.1 ** n.
    assert parse_prompt_attention("((((a))))")[0][1] == 1.1 * 1.1 * 1.1 * 1.1
    assert parse_prompt_attention("((((a))))")[0][1] != 1.1**4
    assert parse_prompt_attention("[on]")[0][1] == 1 / 1.1


def test_attention_result_is_fresh_lists() -> None:
    first = parse_prompt_attention("(a)")
    first[0][1] = 99.0
    assert parse_prompt_attention("(a)") == [["a", 1.1]]


# --- get_learned_conditioning_prompt_schedules ------------------------------------------

A1111_SCHEDULES = [
    ("test", [[10, "test"]]),
    ("a [b:3]", [[3, "a "], [10, "a b"]]),
    ("a [b: 3]", [[3, "a "], [10, "a b"]]),
    ("a [[[b]]:2]", [[2, "a "], [10, "a [[b]]"]]),
    ("[(a:2):3]", [[3, ""], [10, "(a:2)"]]),
    ("a [b : c : 1] d", [[1, "a b  d"], [10, "a  c  d"]]),
    ("a[b:[c:d:2]:1]e", [[1, "abe"], [2, "ace"], [10, "ade"]]),
    ("a [unbalanced", [[10, "a [unbalanced"]]),
    ("a [b:.5] c", [[5, "a  c"], [10, "a b c"]]),
    ("a [{b|d{:.5] c", [[5, "a  c"], [10, "a {b|d{ c"]]),
    ("((a][:b:c [d:3]", [[3, "((a][:b:c "], [10, "((a][:b:c d"]]),
    ("[a|(b:1.1)]", alternating(10, "a", "(b:1.1)")),
    ("[fe|]male", alternating(10, "female", "male")),
    ("[fe|||]male", alternating(10, "female", "male", "male", "male")),
]


@pytest.mark.parametrize(("prompt", "expected"), A1111_SCHEDULES)
def test_a1111_schedules(prompt: str, expected: list[list]) -> None:
    assert schedule(prompt) == expected


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [("a [b:.5] c", [[10, "a b c"]]), ("a [b:1.5] c", [[5, "a  c"], [10, "a b c"]])],
)
def test_a1111_hires_schedules(prompt: str, expected: list[list]) -> None:
    assert schedule(prompt, 10, hires=10) == expected


OWN_SCHEDULES = [
    # (prompt, steps, expected)
    ("", 10, [[10, ""]]),
    ("[a:b:3]", 10, [[3, "a"], [10, "b"]]),
    ("[a::3]", 10, [[3, "a"], [10, ""]]),
    ("[::3]", 10, [[3, ""], [10, ""]]),
    ("[a: b :3 ]", 10, [[3, "a"], [10, " b "]]),
    ("[a:b:+3]", 10, [[3, "a"], [10, "b"]]),
    # integers are steps, anything with a "." a fraction of the steps
    ("[a:b:0.25]", 20, [[5, "a"], [20, "b"]]),
    ("[a:b:0.33]", 10, [[3, "a"], [10, "b"]]),  # 3.3 truncates
    ("[a:b:1.0]", 10, [[10, "a"]]),
    ("[a:b:1]", 10, [[1, "a"], [10, "b"]]),
    ("[a:b:5.]", 10, [[10, "a"]]),  # 5.0 of the steps, clamped
    ("[a:b:1e1]", 20, [[10, "a"], [20, "b"]]),  # exponent without "." is a step
    ("[a:b:5e-1]", 10, [[10, "b"]]),  # 0.5 as a step truncates to 0
    # out of range: beyond the steps clamps (the switch never happens), below 1 never holds
    ("[a:b:25]", 20, [[20, "a"]]),
    ("[a:b:1e999]", 10, [[10, "a"]]),
    ("[a:b:0]", 10, [[10, "b"]]),
    ("[a:b:-3]", 10, [[10, "b"]]),
    ("[a:b:-1e999]", 10, [[10, "b"]]),
    # nesting
    ("[[[[a:b:1]:c:2]:d:3]:e:4]", 5, [[1, "a"], [2, "b"], [3, "c"], [4, "d"], [5, "e"]]),
    ("[a:[b:[c:d:3]:2]:1]", 5, [[1, "a"], [2, "b"], [3, "c"], [5, "d"]]),
    ("[a:b:3] [c:d:5]", 10, [[3, "a c"], [5, "b c"], [10, "b d"]]),
    # emphasis is kept verbatim, and schedules inside it still work
    ("(a:1.2) [b:c:2]", 10, [[2, "(a:1.2) b"], [10, "(a:1.2) c"]]),
    ("((a [b:c:2]):1.3)", 10, [[2, "((a b):1.3)"], [10, "((a c):1.3)"]]),
    ("[x [a:b:2] y]", 4, [[2, "[x a y]"], [4, "[x b y]"]]),
    ("(a)", 10, [[10, "(a)"]]),
    ("[a]", 10, [[10, "[a]"]]),
    # alternation
    ("[a|b|c]", 6, alternating(6, "a", "b", "c")),
    ("[|a]", 4, alternating(4, "", "a")),
    ("(x [a|b]:1.2)", 4, alternating(4, "(x a:1.2)", "(x b:1.2)")),
    ("[[a|b]:c:2]", 4, [[1, "a"], [2, "b"], [3, "c"], [4, "c"]]),
    ("[[a:b:2]|c]", 4, [[1, "a"], [2, "c"], [3, "b"], [4, "c"]]),
    ("[a|[b|c]]", 4, [[1, "a"], [2, "c"], [3, "a"], [4, "c"]]),
    ("[a|b] [c|d|e]", 3, [[1, "a c"], [2, "b d"], [3, "a e"]]),
    # escapes pass through verbatim (parse_prompt_attention resolves them later)
    ("[a\\:b:c:3]", 10, [[3, "a\\:b"], [10, "c"]]),
    ("[\\[a\\]:3]", 10, [[3, ""], [10, "\\[a\\]"]]),
    ("\\[a:3\\]", 10, [[10, "\\[a:3\\]"]]),
    ("[a\\|b|c]", 2, [[1, "a\\|b"], [2, "c"]]),
    # unparseable prompts are used unchanged for every step
    ("[a:3] \\", 10, [[10, "[a:3] \\"]]),  # a backslash escaping nothing at the end
    ("a | [b:3]", 10, [[10, "a | [b:3]"]]),  # "|" outside a group (A1111 rejects it too)
    ("(a|b) [c:3]", 10, [[10, "(a|b) [c:3]"]]),
    # stray brackets at the top level are text; groups after them still count
    ("[a [b:3]", 10, [[3, "[a "], [10, "[a b"]]),
    ("(a:b:c) [d:3]", 10, [[3, "(a:b:c) "], [10, "(a:b:c) d"]]),
    ("[a:3]]", 10, [[3, "]"], [10, "a]"]]),
    ("[a:b:3:4]", 10, [[10, "[a:b:3:4]"]]),
    # A1111's result here depends on PYTHONHASHSEED; Easel always takes the schedule
    ("[a:3]((", 10, [[3, "(("], [10, "a(("]]),
    # "|" directly inside a scheduled group is text (the A1111 example "[{b|d{:.5]")
    ("[a|b:3]", 10, [[3, ""], [10, "a|b"]]),
    ("[x|y:z:2]", 4, [[2, "x|y"], [4, "z"]]),
    # unicode
    ("[猫:犬:0.5]", 4, [[2, "猫"], [4, "犬"]]),
    ("ü [é|ß]", 2, [[1, "ü é"], [2, "ü ß"]]),
]


@pytest.mark.parametrize(("prompt", "steps", "expected"), OWN_SCHEDULES)
def test_schedules(prompt: str, steps: int, expected: list[list]) -> None:
    assert schedule(prompt, steps) == expected


@pytest.mark.parametrize(
    ("prompt", "expected"),
    [
        # integers count from the start of the base pass, fractions above 1 into hires
        ("[a:b:25]", [[5, "a"], [10, "b"]]),
        ("[a:b:15]", [[10, "b"]]),
        ("[a:b:1.5]", [[5, "a"], [10, "b"]]),
        ("[a:b:1.25]", [[2, "a"], [10, "b"]]),
        ("[a:b:.5]", [[10, "b"]]),
        ("[a:b:2.0]", [[10, "a"]]),
        ("[a:b:100]", [[10, "a"]]),
        ("[a|b]", alternating(10, "a", "b")),
        ("plain", [[10, "plain"]]),
    ],
)
def test_hires_schedules(prompt: str, expected: list[list]) -> None:
    assert schedule(prompt, 20, hires=10) == expected


@pytest.mark.parametrize(
    ("prompt", "hires", "expected"),
    [
        # old scheduling ignores the hires pass: below 1 is a fraction, else a step
        ("[a:b:.5]", None, [[10, "a"], [20, "b"]]),
        ("[a:b:.5]", 10, [[10, "a"], [20, "b"]]),
        ("[a:b:1.5]", 10, [[1, "a"], [20, "b"]]),
        ("[a:b:3]", 10, [[3, "a"], [20, "b"]]),
        ("[a:b:0.05]", None, [[1, "a"], [20, "b"]]),
    ],
)
def test_old_scheduling(prompt: str, hires: int | None, expected: list[list]) -> None:
    assert schedule(prompt, 20, hires=hires, old=True) == expected


def test_batch_shares_identical_prompts() -> None:
    prompts = ["x [a:2]", "y", "x [a:2]"]
    result = get_learned_conditioning_prompt_schedules(prompts, 10)
    assert result == [[[2, "x "], [10, "x a"]], [[10, "y"]], [[2, "x "], [10, "x a"]]]
    assert result[0] is result[2]
    assert get_learned_conditioning_prompt_schedules([], 10) == []


def test_degenerate_step_counts_do_not_raise() -> None:
    assert schedule("[a:b:.5e999]", 0) == [[0, "a"]]  # inf * 0 steps
    assert schedule("[a|b]", 0) == [[0, "b"]]  # option (0 - 1) % 2
    assert schedule("[a:b:2]", 1) == [[1, "a"]]


def test_long_prompt_with_many_unclosed_brackets_is_fast() -> None:
    prompt = "[(" * 2000 + "a [b:3]"
    assert schedule(prompt) == [[3, "[(" * 2000 + "a "], [10, "[(" * 2000 + "a b"]]


# --- prompt_schedule_at ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("step", "expected"), [(0, "a"), (1, "a"), (3, "a"), (4, "b"), (10, "b"), (11, "b")]
)
def test_prompt_schedule_at(step: int, expected: str) -> None:
    assert prompt_schedule_at([[3, "a"], [10, "b"]], step) == expected


def test_prompt_schedule_at_accepts_named_entries() -> None:
    entries = [ScheduledPrompt(2, "x"), ScheduledPrompt(4, "y")]
    assert [prompt_schedule_at(entries, step) for step in range(1, 5)] == ["x", "x", "y", "y"]
    assert entries[0].end_at_step == 2 and entries[0].text == "x"


def test_prompt_schedule_at_rejects_empty_schedule() -> None:
    with pytest.raises(ValueError):
        prompt_schedule_at([], 1)


# --- properties ------------------------------------------------------------------------

FAST = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SYNTAX = "()[]:|\\ "
prompt_text = st.lists(
    st.one_of(st.sampled_from(list(SYNTAX) + ["BREAK", ".5", "3", "-", "\n"]), st.characters()),
    max_size=40,
).map("".join)
prompt_syntax = st.lists(
    st.sampled_from(list(SYNTAX) + ["a", "b", "BREAK", ".5", "1.5", "3", "-1", "e", "\n"]), max_size=30
).map("".join)
any_prompt = st.one_of(prompt_text, prompt_syntax)


@FAST
@given(any_prompt)
def test_attention_never_raises_and_is_well_formed(text: str) -> None:
    pieces = parse_prompt_attention(text)
    assert pieces
    for piece in pieces:
        assert isinstance(piece, list) and len(piece) == 2
        assert isinstance(piece[0], str) and isinstance(piece[1], float)
    # merged: no two neighbours share a weight
    assert all(a[1] != b[1] for a, b in zip(pieces, pieces[1:]))


ESCAPES = {"\\(": "(", "\\)": ")", "\\[": "[", "\\]": "]", "\\\\": "\\"}
bracket_free = st.characters(blacklist_characters="()[]\\")


@FAST
@given(st.lists(st.one_of(st.text(bracket_free, min_size=1, max_size=5), st.sampled_from(list(ESCAPES)))))
def test_attention_without_brackets_resolves_escapes_only(chunks: list[str]) -> None:
    text = "".join(chunks)
    resolved = "".join(ESCAPES.get(chunk, chunk) for chunk in chunks)
    if "BREAK" in text or "BREAK" in resolved:
        return
    assert parse_prompt_attention(text) == [[resolved, 1.0]]


@FAST
@given(any_prompt, st.integers(1, 40), st.one_of(st.none(), st.integers(1, 40)), st.booleans())
def test_schedule_invariants(prompt: str, steps: int, hires: int | None, old: bool) -> None:
    entries = get_learned_conditioning_prompt_schedules([prompt], steps, hires, old)[0]
    total = steps if hires is None or old else hires
    ends = [end for end, _ in entries]
    assert ends[-1] == total
    assert ends[0] >= 1
    assert all(a < b for a, b in zip(ends, ends[1:]))
    assert all(isinstance(text, str) for _, text in entries)
    if "[" not in prompt:  # nothing can depend on the step
        assert entries == [[total, prompt]]
    for end, text in entries:
        assert prompt_schedule_at(entries, end) == text


plain_word = st.text(st.characters(blacklist_characters="()[]:|\\", blacklist_categories=["Cs"]), max_size=6)


@FAST
@given(plain_word, plain_word, plain_word, st.integers(1, 30), st.integers(1, 30))
def test_edit_between_plain_words(prefix: str, before: str, after: str, when: int, steps: int) -> None:
    entries = schedule(f"{prefix}[{before}:{after}:{when}]", steps)
    if when >= steps:
        assert entries == [[steps, prefix + before]]
    else:
        assert entries == [[when, prefix + before], [steps, prefix + after]]
