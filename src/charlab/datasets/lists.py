"""Lists a generator writes, and the repeats in them: parsing numbered lists, tagged answers and duplicates.

Prompt expansion, attack sets and challenge sets all ask a model for lists of new items and keep an
item only when it does not repeat one already kept; the parsing and the repeat test live here once.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from functools import lru_cache
from typing import Literal, NamedTuple

from charlab.constitution.geometry import word_sets_overlap, words
from charlab.models.base import Generation

# ----------------------------------------------------------------------------------------------
# Parsing a numbered list
# ----------------------------------------------------------------------------------------------

# "1. text", "1) text", "1: text", "**1.** text"; the item text may start on the next line.
_ITEM = re.compile(r"^(?P<indent>\s*)(?:\*\*)?(?P<number>\d{1,3})[.):](?:\*\*)?(?:\s+(?P<text>.*))?$")
# A leading length label the generator was told not to write: "(Short)", "**Long:**", "[medium] -".
_LABEL = re.compile(r"^(?:[(\[](?:short|medium|long)(?:[- ]length)?(?: message)?[)\]]\s*[:\-–—]?"
                    r"|\**(?:short|medium|long)(?:[- ]length)?(?: message)?\**\s*[:\-–—]\**)\s*", re.IGNORECASE)
_QUOTES = [('"', '"'), ("“", "”"), ("'", "'"), ("‘", "’"), ("«", "»")]


def parse_numbered_list(text: str) -> list[str]:
    """The items of the numbered list in ``text``, cleaned, in order.

    Lines before the first item (a preamble) are ignored. An item runs until the next item, so a
    long message may span several lines and paragraphs. An item only starts at the next number in
    sequence and no deeper indented than the first item, so a numbered list the user writes inside
    a message usually stays part of that message.
    After the last item, an unindented paragraph that follows a blank line is taken as closing
    chatter and ignored, unless earlier items show that this generator writes its multi-paragraph
    messages that way. Each item loses surrounding whitespace, a leading length label ("(Short)")
    and quotes that wrap the whole item.
    """
    items = _split_items(text)
    if items and not any(_has_outdented_paragraph(lines) for lines in items[:-1]):
        items[-1] = _without_trailing_chatter(items[-1])
    return [cleaned for lines in items if (cleaned := _clean_item(lines))]


def _split_items(text: str) -> list[list[str]]:
    """Each item's lines: the text after its number, then every line up to the next item."""
    items: list[list[str]] = []
    expected: int | None = None
    indent = 0
    for line in text.splitlines():
        match = _ITEM.match(line)
        if match and expected is None:
            indent = len(match["indent"])
        if match and int(match["number"]) == (expected or int(match["number"])) and len(match["indent"]) <= indent:
            items.append([match["text"] or ""])
            expected = int(match["number"]) + 1
        elif items:
            items[-1].append(line)
    return items


def _paragraph_starts(lines: list[str]) -> list[int]:
    """Indexes of unindented lines that open a new paragraph (they follow a blank line)."""
    return [i for i in range(1, len(lines))
            if not lines[i - 1].strip() and lines[i].strip() and not lines[i][:1].isspace()]


def _has_outdented_paragraph(lines: list[str]) -> bool:
    return bool(_paragraph_starts(lines))


def _without_trailing_chatter(lines: list[str]) -> list[str]:
    starts = _paragraph_starts(lines)
    return lines[:starts[0]] if starts else lines


def _clean_item(lines: list[str]) -> str:
    text = "\n".join(line.strip() for line in lines)
    text = re.sub(r"\n{3,}", "\n\n", text).strip()
    return _strip_quotes(_LABEL.sub("", text, count=1).strip())


def _strip_quotes(text: str) -> str:
    """Remove quotes around the whole item, but not from a text that merely starts and ends with a quote."""
    for left, right in _QUOTES:
        if len(text) >= len(left) + len(right) and text.startswith(left) and text.endswith(right):
            inner = text[len(left):len(text) - len(right)]
            if left not in inner and right not in inner:
                return inner.strip()
    return text


# ----------------------------------------------------------------------------------------------
# Duplicates
# ----------------------------------------------------------------------------------------------


def extract_tagged(generation: Generation, tag: str) -> str | None:
    """The text the writer put between ``<tag>`` and ``</tag>``, or None when there is none to use.

    The closing tag may be missing when the writer stopped by itself (the stop string ends a
    generation before it), but an output cut off by the token cap is unfinished and yields None.
    """
    match = re.search(rf"<{tag}>(.*?)(</{tag}>|$)", generation.text, re.DOTALL | re.IGNORECASE)
    if match is None or (not match.group(2) and generation.finish_reason == "length"):
        return None
    return match.group(1).strip() or None


def normalize(text: str) -> str:
    """The form two questions share when they are the same question: case and spacing ignored."""
    return " ".join(text.casefold().split())


class Duplicate(NamedTuple):
    """A candidate question that repeats one already kept: ``kind`` says how, ``of`` which one."""

    kind: Literal["exact", "near"]
    of: str


def find_duplicate(text: str, kept: Sequence[str]) -> Duplicate | None:
    """The first kept question that ``text`` repeats: exactly (after ``normalize``) before nearly.

    Exact repeats are checked first so the card can tell a generator that copies its examples
    from one that merely paraphrases them.
    """
    key = normalize(text)
    for other in kept:
        if _normalized(other) == key:
            return Duplicate("exact", other)
    mine = _word_set(text)
    for other in kept:
        if word_sets_overlap(mine, _word_set(other)):
            return Duplicate("near", other)
    return None


# An expansion tests every candidate against every kept question, so the kept questions' forms are
# cached rather than recomputed per test; the cache is bounded for long-running processes.
@lru_cache(maxsize=1 << 16)
def _normalized(text: str) -> str:
    return normalize(text)


@lru_cache(maxsize=1 << 16)
def _word_set(text: str) -> frozenset[str]:
    return frozenset(words(text))
