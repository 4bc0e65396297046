"""Constitutions: the first-person traits a teacher is prompted with, and the questions that elicit them.

A constitution is the independent variable of a character-training experiment, so it has to be
easy to inspect and to match against a control. This module holds the typed schema and the
situation tags; ``constitution.formats`` reads and writes it (charlab's YAML, OCT's files) and
``constitution.geometry`` measures it.

Native YAML::

    name: integrity
    description: Value-laden traits about honesty and care.
    traits:
      - statement: I tell the truth as best I know it.
        questions:
          - My sourdough is dense, so it must be the flour, right?        # a plain string ...
          - {text: "Is this email from my bank real?", situation: scam}   # ... or text + situation
        expanded: []   # optional: questions generated later by the prompt-expansion stage
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictStr,
    ValidationInfo,
    field_validator,
    model_validator,
)


class Situation(StrEnum):
    """What kind of situation a question puts the model in.

    Value constitutions elicit their traits across very different situations; a control has to
    span the same ones, or a behavioural difference could come from the situations rather than
    from the traits. The vocabulary is fixed so that two constitutions can be compared tag by tag.
    """

    EVERYDAY_TASK = "everyday_task"  # practical help: cooking, planning, writing a message, errands
    PERSONAL_DISTRESS = "personal_distress"  # the user is sad, anxious, lonely, grieving or overwhelmed
    SCAM = "scam"  # the user may be the target of a scam, fraud or manipulation
    CONSPIRACY_CLAIM = "conspiracy_claim"  # the user asserts or asks about a conspiracy theory
    MISINFORMATION = "misinformation"  # the question rests on a common myth or a false premise
    MEDICAL = "medical"  # symptoms, medication, injuries, health decisions
    LEGAL = "legal"  # rights, contracts, disputes, dealing with authorities
    FINANCIAL = "financial"  # money decisions: debt, savings, investments, purchases
    DANGEROUS_REQUEST = "dangerous_request"  # something risky to the user or to others (kept mild)
    CREATIVE = "creative"  # fiction, poetry, names, brainstorming, feedback on creative work
    TECHNICAL = "technical"  # code, computers, maths, engineering


UNTAGGED = "untagged"
"""The situation key under which stats count questions that carry no tag."""


# ----------------------------------------------------------------------------------------------
# Schema
# ----------------------------------------------------------------------------------------------

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def _nonempty(value: str, what: str) -> str:
    value = value.strip()
    if not value:
        raise ValueError(f"{what} is empty; write it out or remove the entry")
    return value


class Question(BaseModel):
    """One user message that should elicit a trait. In YAML, a plain string is a question without a tag."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    text: StrictStr = Field(description="The user message, exactly as the student will see it.")
    situation: Situation | None = Field(
        default=None, description="What kind of situation the message creates; see `Situation`."
    )

    @model_validator(mode="before")
    @classmethod
    def _from_string(cls, data: Any) -> Any:
        if isinstance(data, str):
            return {"text": data}
        if not isinstance(data, dict | Question):
            raise ValueError(
                f"a question must be a string or a mapping {{text: ..., situation: ...}}, "
                f"not {type(data).__name__} ({data!r:.40}); quote it if it is meant as text"
            )
        return data

    @field_validator("situation", mode="before")
    @classmethod
    def _known_situation(cls, value: Any) -> Any:
        if value is not None and value not in [s.value for s in Situation]:
            allowed = ", ".join(s.value for s in Situation)
            raise ValueError(f"unknown situation {value!r}; use one of: {allowed}")
        return value

    @field_validator("text")
    @classmethod
    def _text_nonempty(cls, value: str) -> str:
        return _nonempty(value, "question text")


class Trait(BaseModel):
    """A first-person statement of character, with the questions used to elicit it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    statement: StrictStr = Field(description="The trait in the first person, e.g. 'I read what the user writes.'")
    questions: list[Question] = Field(description="Hand-written seed questions (normally 5).")
    expanded: list[Question] = Field(
        default_factory=list, description="Questions generated from the seeds by the prompt-expansion stage."
    )

    @field_validator("statement")
    @classmethod
    def _statement_nonempty(cls, value: str) -> str:
        return _nonempty(value, "statement")

    @field_validator("questions")
    @classmethod
    def _has_questions(cls, value: list[Question]) -> list[Question]:
        if not value:
            raise ValueError("this trait has no questions; add seed questions (normally 5) under 'questions'")
        return value

    @property
    def all_questions(self) -> list[Question]:
        """Seed then expanded questions: everything that becomes a training prompt for this trait."""
        return [*self.questions, *self.expanded]


class Constitution(BaseModel):
    """A named set of traits: what the teacher is told to be, and the prompts that test it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: StrictStr = Field(description="Short identifier used in run names and folders (letters, digits, - _ .).")
    description: StrictStr = Field(default="", description="One or two sentences on what the constitution is for.")
    traits: list[Trait] = Field(description="The traits, in order. Statements must be distinct.")

    @field_validator("name")
    @classmethod
    def _name_is_slug(cls, value: str) -> str:
        if not _NAME_RE.match(value):
            raise ValueError(
                f"name {value!r} must start with a letter or digit and use only letters, digits, '-', '_' "
                "and '.', because it names output folders; rename it"
            )
        return value

    @field_validator("traits")
    @classmethod
    def _distinct_traits(cls, traits: list[Trait], info: ValidationInfo) -> list[Trait]:
        if not traits:
            raise ValueError("there are no traits; add at least one under 'traits'")
        lines = (info.context or {}).get("lines", {})
        seen: dict[str, int] = {}
        for i, trait in enumerate(traits):
            key = " ".join(trait.statement.lower().split())
            if key in seen:
                j = seen[key]
                raise ValueError(
                    f"traits.{j}{_at_line(lines, j)} and traits.{i}{_at_line(lines, i)} have the same statement "
                    "(ignoring case and whitespace); merge their questions into one trait or reword one"
                )
            seen[key] = i
        return traits

    @property
    def questions(self) -> list[Question]:
        """Every question, seed and expanded, in trait order."""
        return [q for trait in self.traits for q in trait.all_questions]


def _at_line(lines: dict[tuple, int], index: int) -> str:
    line = lines.get(("traits", index))
    return f" (line {line})" if line else ""


