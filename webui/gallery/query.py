"""The gallery's search box: text → a parsed query → SQL over the image table and its FTS5 index.

Syntax (case-insensitive field names; any term may be negated with a leading `-`):

    red car                  both words, in the prompt or the parameters line (model, sampler, … by name)
    "red car"                the phrase
    astro*                   a word prefix
    -blurry                  without the word
    neg:blurry               in the negative prompt (`negative:` too)
    model:dream              model name contains "dream", or the model hash starts with it
    sampler:"dpm++ 2m"       sampler name starts with it
    seed:1234   size:512x768   lora:add_detail (a LoRA name starts with it)
    kind:txt2img             the output folder: txt2img-images (not its grids); kind:grids any *-grids; kind:zoom
    after:2024-05-01         on or after that day (local time); before:2024-06-01: before that day
    starred:yes              (yes/no/true/false/1/0)

User text never reaches FTS5 as syntax: every word or phrase becomes a double-quoted FTS5 string (inner
quotes doubled), so `NEAR(`, `AND`, `*`, parentheses and stray quotes are just text. A filter with a value
that cannot mean anything (`seed:abc`) is left out and explained in `notes`; an unknown `field:` is text.
"""
from __future__ import annotations

import datetime as _dt
import re
import time
from dataclasses import dataclass, field
from typing import Any

TEXT_COLUMNS = "{prompt params_text}"  # where free words are looked for; the negative prompt only via neg:
NEGATIVE_COLUMN = "negative"
FIELDS = {"model", "sampler", "seed", "size", "lora", "kind", "after", "before", "starred", "neg", "negative"}
_FIELD = re.compile(r"([A-Za-z]+):(?=\S)")
_WORD = re.compile(r"\w")
_SIZE = re.compile(r"^(\d{1,5})[xX×](\d{1,5})$")
_YES = {"yes", "true", "1", "y", "on"}
_NO = {"no", "false", "0", "n", "off"}
_SQLITE_INT = 1 << 63
MAX_ID = (1 << 53) - 1
MAX_TERMS = 64  # more is no search a person types; it only makes one query slow for everyone


@dataclass(frozen=True)
class Term:
    """One piece of the search box: a free word/phrase (`field` None) or a `field:value` filter."""

    value: str
    field: str | None = None
    negated: bool = False
    quoted: bool = False


@dataclass(frozen=True)
class ParsedQuery:
    terms: tuple[Term, ...] = ()


@dataclass
class SqlPlan:
    """SQL fragments over `images AS i` (and `images_fts` when `match` is set)."""

    match: str | None = None  # the FTS5 MATCH expression the rows must satisfy
    where: list[str] = field(default_factory=list)
    params: list[Any] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def parse_query(text: str) -> ParsedQuery:
    """Split the search box into terms. Never fails: an unbalanced quote runs to the end of the text."""
    terms: list[Term] = []
    i, n = 0, len(text)
    while i < n:
        if text[i].isspace():
            i += 1
            continue
        negated = text[i] == "-" and i + 1 < n and not text[i + 1].isspace()
        if negated:
            i += 1
        name = None
        m = _FIELD.match(text, i)
        if m and m.group(1).lower() in FIELDS:
            name = m.group(1).lower()
            name = "neg" if name == "negative" else name
            i = m.end()
        if text[i] == '"':
            end = text.find('"', i + 1)
            end = n if end < 0 else end
            value, quoted, i = text[i + 1:end], True, end + 1
        else:
            end = i
            while end < n and not text[end].isspace():
                end += 1
            value, quoted, i = text[i:end], False, end
        if value.strip():
            terms.append(Term(value.strip(), name, negated, quoted))
    return ParsedQuery(tuple(terms))


def fts_phrase(term: Term) -> str | None:
    """A term as a safe FTS5 string; None when it holds no word character (the tokenizer would drop it all)."""
    value = term.value
    prefix = not term.quoted and value.endswith("*")
    value = value.rstrip("*") if prefix else value
    if not _WORD.search(value):
        return None
    return '"' + value.replace('"', '""') + '"' + (" *" if prefix else "")


def like_escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def time_id(seconds: float) -> int:
    """An image's id: microseconds since 1970 of its time, clamped to the integers JavaScript keeps exact."""
    return min(max(int(seconds * 1_000_000), 1), MAX_ID)


def day_start(value: str) -> float | None:
    """Local midnight of a YYYY-MM-DD day as a Unix time; None when it is not such a day."""
    try:
        day = _dt.date.fromisoformat(value)
    except ValueError:
        return None
    return time.mktime(day.timetuple())


def compile_query(parsed: ParsedQuery, owner: str | None) -> SqlPlan:
    """The plan for one search; `owner` None means every owner's images (an admin, or logins off)."""
    plan = SqlPlan()
    if owner is not None:
        plan.where.append("i.owner = ?")
        plan.params.append(owner)
    wanted: list[str] = []
    unwanted: list[str] = []
    if len(parsed.terms) > MAX_TERMS:
        plan.notes.append(f"only the first {MAX_TERMS} words and filters were used")
    for term in parsed.terms[:MAX_TERMS]:
        if term.field in (None, "neg"):
            phrase = fts_phrase(term)
            if phrase is None:
                continue
            column = NEGATIVE_COLUMN if term.field == "neg" else TEXT_COLUMNS
            (unwanted if term.negated else wanted).append(f"{column} : {phrase}")
            continue
        condition = _filter(term, plan.notes)
        if condition is None:
            continue
        sql, params = condition
        plan.where.append(f"NOT IFNULL(({sql}), 0)" if term.negated else sql)
        plan.params.extend(params)
    if wanted:
        plan.match = " AND ".join(f"({w})" for w in wanted)
        if unwanted:  # FTS5's NOT is binary: cheap inside the match when there is something to subtract from
            plan.match = f"({plan.match}) NOT ({' OR '.join(f'({u})' for u in unwanted)})"
    elif unwanted:
        plan.where.append("i.id NOT IN (SELECT rowid FROM images_fts WHERE images_fts MATCH ?)")
        plan.params.append(" OR ".join(f"({u})" for u in unwanted))
    return plan


def _filter(term: Term, notes: list[str]) -> tuple[str, list[Any]] | None:
    value, name = term.value, term.field
    if name == "model":  # a substring cannot use an index; scanning the narrow model index beats the table
        return ("i.id IN (SELECT id FROM images WHERE model LIKE ? ESCAPE '\\' "
                "UNION ALL SELECT id FROM images WHERE model_hash LIKE ? ESCAPE '\\')",
                [f"%{like_escape(value)}%", f"{like_escape(value)}%"])
    if name == "sampler":
        return "i.sampler LIKE ? ESCAPE '\\'", [f"{like_escape(value)}%"]
    if name == "lora":
        return ("i.id IN (SELECT image_id FROM image_loras WHERE name LIKE ? ESCAPE '\\')",
                [f"{like_escape(value)}%"])
    if name == "kind":
        return "i.kind = ? OR i.kind = ? OR i.kind LIKE ? ESCAPE '\\'", [value, f"{value}-images",
                                                                         f"%-{like_escape(value)}"]
    if name == "seed":
        if re.fullmatch(r"-?\d{1,19}", value) and -_SQLITE_INT <= int(value) < _SQLITE_INT:
            return "i.seed = ?", [int(value)]
        notes.append(f"ignored seed:{value}: a seed is a whole number")
        return None
    if name == "size":
        if m := _SIZE.match(value):
            return "i.width = ? AND i.height = ?", [int(m.group(1)), int(m.group(2))]  # no index: few sizes
        notes.append(f"ignored size:{value}: write a size as WIDTHxHEIGHT, e.g. 512x768")
        return None
    if name in ("after", "before"):
        start = day_start(value)
        if start is None:
            notes.append(f"ignored {name}:{value}: write a day as YYYY-MM-DD")
            return None
        return ("i.id >= ?" if name == "after" else "i.id < ?"), [time_id(start)]  # ids are times
    if name == "starred":
        lowered = value.lower()
        if lowered in _YES | _NO:
            return ("i.starred = 1" if lowered in _YES else "i.starred = 0"), []  # a literal: the partial index
        notes.append(f"ignored starred:{value}: use starred:yes or starred:no")
        return None
    raise AssertionError(f"unhandled field {name}")  # FIELDS and this function list the same names
