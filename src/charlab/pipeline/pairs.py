"""Preference pairs for DPO: the teacher's in-character answer is chosen, the student's own is rejected.

The teacher answered each prompt with the constitution in its system prompt, the student without
it, and sample ``k`` of the teacher is paired with sample ``k`` of the student. The pair's prompt
is the user turn(s) only: the student is trained without the teacher's system prompt, so the
character has to move into the weights.

Filters run in this order, and the card counts what each one left:

1. matched    - the student answered the same prompt with the same sample index;
2. non-empty  - both responses have text;
3. complete   - neither response was cut off: ``finish_reason == "length"``, a code block left
                open, or a text that does not end like a finished reply (``PairSettings.endings``,
                a closing code fence, or an emoji); a reply that stops mid-sentence teaches the
                student to stop mid-sentence;
4. fits       - prompt + response, rendered with the STUDENT's chat template and tokenizer (the
                tokens DPO will see), is at most ``max_length`` tokens for both sides; a trainer
                would otherwise truncate the tail that carries most of the character.

Between 3 and 4 the teacher's names in the chosen reply become the student's, and after 4 any
surviving ``{NAME}``-style placeholder (an unformatted template) stops the stage with an error:
a placeholder in training data teaches the model to say "{NAME}".
"""

from __future__ import annotations

import json
import logging
import os
import re
import unicodedata
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from charlab.constitution.schema import Constitution
from charlab.datasets.cards import DatasetCard, Rejection, write_card
from charlab.errors import CharlabError
from charlab.io import atomic_write_jsonl
from charlab.models import chat

__all__ = ["DEFAULT_ENDINGS", "DEFAULT_PLACEHOLDER", "PairSettings", "build_pairs", "ends_cleanly",
           "find_placeholders", "replace_names", "write_pairs"]

log = logging.getLogger(__name__)

DEFAULT_ENDINGS = (".", "!", "?", "…", ")", "]", "\"", "'", "`", "*", "”", "’", "»", "。", "！", "？")
"""Last characters of a finished reply: sentence ends, closing brackets and quotes, the backtick of
inline code or a code fence, the asterisk of closing **bold**, and CJK full stops."""

DEFAULT_PLACEHOLDER = r"(?<![\w$\\])\{\{?\s*[A-Z][A-Z0-9_]*[A-Z0-9]\s*\}\}?"
"""``{NAME}``, ``{{MODEL_NAME}}``: an upper-case template field nobody filled in. Lower-case fields
(``{name}`` in an f-string), ``${HOME}`` in a shell answer and LaTeX like ``\\text{ATP}`` do not match."""

_FENCE_LINE = re.compile(r"^\s*(```|~~~)")  # opens (maybe with a language) or closes a code block


class PairSettings(BaseModel):
    """What makes a usable preference pair, and how the teacher's identity becomes the student's."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_length: int = Field(
        1024, ge=1, description="Most tokens of prompt + response (either side) under the student's chat template.")
    teacher_names: tuple[str, ...] = Field(
        (), description="Names the teacher calls itself; replaced by student_name in chosen replies (whole words).")
    student_name: str | None = Field(None, description="The student's name; required when teacher_names is set.")
    endings: tuple[str, ...] = Field(
        DEFAULT_ENDINGS, min_length=1, description="Last characters (after trailing whitespace) of a finished reply.")
    emoji_ends_reply: bool = Field(True, description="Whether a reply may end in an emoji (chatty models often do).")
    placeholder_pattern: str | None = Field(
        DEFAULT_PLACEHOLDER, description="Regex for unformatted template fields that must not reach training data; "
                                         "null turns the check off.")
    max_examples: int = Field(3, ge=0, description="Examples kept on the card per drop reason.")
    keep_truncated: bool = Field(False, description="Keep pairs whose replies were cut off (token limit or unfinished "
                                 "last sentence). Off by default: a cut-off reply teaches the student to stop "
                                 "mid-thought. For tiny runs where full replies cost too much (the CPU demo).")

    @field_validator("teacher_names")
    @classmethod
    def _names_nonempty(cls, names: tuple[str, ...]) -> tuple[str, ...]:
        if any(not name.strip() for name in names):
            raise ValueError("teacher_names holds an empty name; remove it")
        return names

    @field_validator("placeholder_pattern")
    @classmethod
    def _compiles(cls, pattern: str | None) -> str | None:
        if pattern is not None:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"placeholder_pattern is not a valid regex ({exc})") from None
        return pattern

    @model_validator(mode="after")
    def _student_named(self) -> PairSettings:
        if self.teacher_names and not self.student_name:
            raise ValueError("teacher_names is set but student_name is not; name the student, or clear teacher_names")
        return self


# ----------------------------------------------------------------------------------------------
# Text checks
# ----------------------------------------------------------------------------------------------


def ends_cleanly(text: str, settings: PairSettings | None = None) -> bool:
    """Whether ``text`` ends like a finished reply rather than one cut off mid-sentence."""
    settings = settings or PairSettings()
    stripped = text.rstrip()
    fences = [line for line in stripped.splitlines() if _FENCE_LINE.match(line)]
    if not stripped or len(fences) % 2:  # a code block that was opened and never closed
        return False
    if _FENCE_LINE.match(stripped.rsplit("\n", 1)[-1]) or stripped.endswith(settings.endings):
        return True
    return settings.emoji_ends_reply and _is_emoji(stripped)


def _is_emoji(text: str) -> bool:
    """Whether ``text`` ends in a pictograph, skipping variation selectors, joiners and skin tones."""
    last = text.rstrip("\ufe0e\ufe0f\u200d\U0001f3fb\U0001f3fc\U0001f3fd\U0001f3fe\U0001f3ff")[-1:]
    return bool(last) and unicodedata.category(last) == "So"


def replace_names(text: str, names: Sequence[str], replacement: str) -> tuple[str, int]:
    """Replace each whole-word occurrence of any of ``names`` (any case) with ``replacement``.

    The form written in ``names`` becomes ``replacement`` as given; an all-lower-case occurrence
    becomes lower case and an all-upper-case one (of a name not written that way) upper case.
    Returns the new text and how many replacements were made.
    """
    if not names:
        return text, 0
    alternatives = "|".join(re.escape(name) for name in sorted(names, key=len, reverse=True))
    pattern = re.compile(rf"(?<!\w)(?:{alternatives})(?!\w)", re.IGNORECASE)

    def recase(match: re.Match) -> str:
        found = match[0]
        if found in names:
            return replacement
        if found.islower():
            return replacement.lower()
        if found.isupper():
            return replacement.upper()
        return replacement

    return pattern.subn(recase, text)


def find_placeholders(text: str, pattern: str = DEFAULT_PLACEHOLDER) -> list[str]:
    """Unformatted template fields in ``text``, e.g. ``['{NAME}']``."""
    return [match[0] for match in re.finditer(pattern, text)]


# ----------------------------------------------------------------------------------------------
# Records
# ----------------------------------------------------------------------------------------------


class _Record(BaseModel):
    """The fields of a generation record this stage reads (others are ignored)."""

    model_config = ConfigDict(extra="ignore")

    id: str
    messages: list[dict[str, str]]
    response: str
    finish_reason: str
    sample_index: int = 0

    @property
    def prompt(self) -> list[dict[str, str]]:
        """The conversation without system turns: what the student is trained on."""
        return [{"role": m["role"], "content": m["content"]} for m in self.messages if m.get("role") != "system"]

    @property
    def question(self) -> str:
        """The last user turn: the question this record answers."""
        return self.prompt[-1]["content"]

    @model_validator(mode="after")
    def _ends_with_user_turn(self) -> _Record:
        if not self.prompt or self.prompt[-1].get("role") != "user":
            raise ValueError("messages must end with a user turn (after any system turns)")
        return self


def _records(rows: Iterable[Mapping[str, Any]], side: str) -> list[_Record]:
    records = []
    for i, row in enumerate(rows):
        try:
            records.append(_Record.model_validate(row))
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc'])) or 'record'}: {e['msg']}" for e in exc.errors())
            raise CharlabError(
                f"{side} record {i}: {problems}; pass generation records as written by "
                "charlab.store.generation.write_generation_records") from None
    return records


def _prompt_key(record: _Record) -> str:
    return json.dumps([record.prompt, record.sample_index], ensure_ascii=False)


@dataclass
class _Candidate:
    """A teacher record and its student partner on the way to becoming a pair."""

    teacher: _Record
    student: _Record | None
    chosen: str = ""
    length: int = 0  # tokens of the longer side under the student's template

    @property
    def example(self) -> dict[str, Any]:
        return {"teacher id": self.teacher.id, "prompt": self.teacher.question}


# ----------------------------------------------------------------------------------------------
# Building pairs
# ----------------------------------------------------------------------------------------------

_HINTS = {
    "unmatched": "teacher and student must answer the same prompts with the same sample indices",
    "empty": "a model returned no text; check its chat template and stop tokens",
    "truncated": "replies were cut off; raise max_new_tokens for generation",
    "too_long": "raise max_length or shorten the replies",
}


def build_pairs(teacher_records: Iterable[Mapping[str, Any]], student_records: Iterable[Mapping[str, Any]],
                tokenizer, settings: PairSettings | None = None, *,
                constitution: Constitution | None = None) -> tuple[list[dict[str, Any]], DatasetCard]:
    """Pair teacher sample k with student sample k for each prompt, filter, and account for every drop.

    ``tokenizer`` is the student's (its chat template decides the lengths). ``constitution``, when
    given, fills each pair's ``meta`` with the trait index and situation of its prompt (None for
    prompts it does not hold, such as generic ones). Raises CharlabError if a placeholder survives
    or no pair does.
    """
    settings = settings or PairSettings()
    teachers, students = _records(teacher_records, "teacher"), _records(student_records, "student")
    card = DatasetCard(
        title="preference pairs",
        description="chosen = the teacher's reply (with the constitution), rejected = the student's reply to the "
                    "same prompt and sample index (without it); the prompt is the user turn(s) only.",
        inputs=len(teachers), max_examples=settings.max_examples,
        settings={"tokenizer": str(tokenizer.name_or_path), **settings.model_dump(mode="json")},
    )
    candidates = _match(teachers, students, card)
    candidates = card.filter("non-empty", "both replies have text", candidates, _empty)
    if not settings.keep_truncated:
        candidates = card.filter("complete", "neither reply was cut off (token limit or unfinished last sentence)",
                                 candidates, lambda c: _truncated(c, settings))
    _rename(candidates, settings, card)
    _measure(candidates, tokenizer)
    reached_length_check = candidates
    candidates = card.filter("fits", f"prompt + reply is at most {settings.max_length} tokens under the student's "
                             "chat template, for both replies", candidates,
                             lambda c: _too_long(c, settings.max_length))
    if not candidates:
        raise CharlabError(_nothing_left(card, settings, reached_length_check))
    where = _question_index(constitution)
    pairs = [_pair(c, where.get(c.teacher.question.strip(), (None, None))) for c in candidates]
    _check_placeholders(pairs, settings)
    log.info("preference pairs: %d of %d teacher records kept", len(pairs), card.inputs)
    return pairs, card


def _match(teachers: list[_Record], students: list[_Record], card: DatasetCard) -> list[_Candidate]:
    """Partner each teacher record with the student record for the same prompt and sample index."""
    by_key: dict[str, list[_Record]] = {}
    for student in students:
        by_key.setdefault(_prompt_key(student), []).append(student)
    candidates = []
    for t in teachers:
        partners = by_key.get(_prompt_key(t))
        candidates.append(_Candidate(t, partners.pop(0) if partners else None))
    candidates = card.filter("matched", "a student reply to the same prompt and sample index exists", candidates,
                             lambda c: None if c.student else Rejection("unmatched", c.example))
    if unused := sum(len(rest) for rest in by_key.values()):
        card.warn(f"{unused} student records have no teacher record for the same prompt and sample index; "
                  "they are not used")
    return candidates


def _sides(c: _Candidate) -> dict[str, _Record]:
    return {"teacher": c.teacher, "student": c.student}


def _empty(c: _Candidate) -> Rejection | None:
    empty = [side for side, record in _sides(c).items() if not record.response.strip()]
    return Rejection("empty", {**c.example, "side": " and ".join(empty)}) if empty else None


def _truncated(c: _Candidate, settings: PairSettings) -> Rejection | None:
    for side, record in _sides(c).items():
        if record.finish_reason == "length":
            return Rejection("truncated", {**c.example, "side": side, "why": "hit the token limit"})
        if not ends_cleanly(record.response, settings):
            ending = record.response.rstrip()[-40:]
            return Rejection("truncated", {**c.example, "side": side, "why": f"ends with {ending!r}"})
    return None


def _rename(candidates: list[_Candidate], settings: PairSettings, card: DatasetCard) -> None:
    """Put the student's name where the teacher named itself, in chosen replies only.

    Prompts and the student's replies are left verbatim: a user may ask about the teacher's
    namesake, and the rejected side is the student's own voice.
    """
    counts: Counter[str] = Counter()
    for c in candidates:
        c.chosen, n = replace_names(c.teacher.response, settings.teacher_names, settings.student_name or "")
        counts["replies"] += bool(n)
        counts["names"] += n
    if settings.teacher_names:
        card.tables["name replacement"] = [{
            "teacher names": ", ".join(settings.teacher_names), "student name": settings.student_name,
            "chosen replies changed": counts["replies"], "names replaced": counts["names"]}]


def _measure(candidates: list[_Candidate], tokenizer) -> None:
    """Token count of prompt + reply under the student's template, for the longer of the two sides."""
    facts = chat.template_facts(tokenizer)
    texts = []
    for c in candidates:
        for reply in (c.chosen, c.student.response):
            conversation = [*c.teacher.prompt, {"role": "assistant", "content": reply}]
            messages = chat.prepare_messages(conversation, facts)
            texts.append(chat.render(tokenizer, messages, add_generation_prompt=False))
    lengths = [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]] if texts else []
    for i, c in enumerate(candidates):
        c.length = max(lengths[2 * i], lengths[2 * i + 1])


def _too_long(c: _Candidate, max_length: int) -> Rejection | None:
    if c.length > max_length:
        return Rejection("too_long", {**c.example, "tokens": c.length})
    return None


def _nothing_left(card: DatasetCard, settings: PairSettings, measured: list[_Candidate]) -> str:
    """Why every pair was dropped, reason by reason, with what to do."""
    if not card.inputs:
        return "no teacher records were given; run the distillation step first"
    reasons = "; ".join(f"{reason}: {entry.count} ({_HINTS[reason]})" for reason, entry in card.drops.items())
    message = f"all {card.inputs} teacher records were dropped, none is left for training. By reason: {reasons}"
    if measured:  # every pair that reached the length check failed it
        shortest = min(c.length for c in measured)
        message += (f". max_length={settings.max_length} is shorter than every pair that reached the length "
                    f"check: the shortest is {shortest} tokens under the student's chat template")
    return message


def _pair(c: _Candidate, trait_and_situation: tuple[int | None, str | None]) -> dict[str, Any]:
    trait, situation = trait_and_situation
    meta = {"trait": trait, "situation": situation, "sample_index": c.teacher.sample_index,
            "teacher_id": c.teacher.id, "student_id": c.student.id, "tokens": c.length}
    return {"prompt": c.teacher.prompt, "chosen": [{"role": "assistant", "content": c.chosen}],
            "rejected": [{"role": "assistant", "content": c.student.response}], "meta": meta}


def _question_index(constitution: Constitution | None) -> dict[str, tuple[int, str | None]]:
    """Question text -> (trait index, situation); a text asked under two traits keeps the first."""
    index: dict[str, tuple[int, str | None]] = {}
    for i, trait in enumerate(constitution.traits if constitution else []):
        for question in trait.all_questions:
            index.setdefault(question.text, (i, question.situation.value if question.situation else None))
    return index


def _check_placeholders(pairs: list[dict[str, Any]], settings: PairSettings) -> None:
    """Fail if an unformatted template field would reach training data."""
    if settings.placeholder_pattern is None:
        return
    found = []
    for pair in pairs:
        for part in ("prompt", "chosen", "rejected"):
            for message in pair[part]:
                for placeholder in find_placeholders(message["content"], settings.placeholder_pattern):
                    found.append(f"{placeholder} in the {part} of teacher record {pair['meta']['teacher_id']}")
    if found:
        shown = "; ".join(found[:5]) + (f"; and {len(found) - 5} more" if len(found) > 5 else "")
        raise CharlabError(
            f"{len(found)} unformatted template placeholders would reach the training data: {shown}. Fill the "
            "template that produced them (e.g. the teacher's system prompt or the questions) and regenerate; if "
            "the braces are meant literally, set placeholder_pattern to a narrower regex or to null")


def write_pairs(path: str | os.PathLike, pairs: Sequence[dict[str, Any]], card: DatasetCard | None = None) -> Path:
    """Write pairs as JSONL (atomically), and the card next to them as ``<stem>.card.json`` / ``.card.md``.

    The file loads with ``datasets.load_dataset("json", data_files=path)`` in TRL's conversational
    preference format.
    """
    path = atomic_write_jsonl(path, pairs)
    if card is not None:
        write_card(card, path)
    return path
