"""Rubrics: what a judge is asked, as versioned files with a name and a content hash.

A judgement is only comparable to another one made with the same prompt, so every judge record
names its rubric as ``name@hash``; the hash covers everything that can change a judgement (kind,
prompt, system prompt, scale, labels) and nothing that cannot (the name, the description).

Two file formats are read:

- the project's own rubric YAML (``data/rubrics/*.yaml``): one rubric per file, validated by
  pydantic, so a bad field is reported with its file, line and dotted name;
- the emergent-misalignment evaluation YAML as researchers already have it: a list of questions
  (or one mapping) with a ``judge_prompts`` map of name -> template. Anchors and aliases work
  (``safe_load``). Each template becomes a numeric 0-100 rubric; the one-word answers the
  template asks for instead of a number ("Say REFUSAL if ...") become its special labels.

A rubric reference is a shipped name (``alignment``), a path to a rubric file, or
``path#key`` (``path#question_id/key``) for one judge prompt of an upstream file.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from charlab.configfile import read_structured, validate
from charlab.errors import ConfigError
from charlab.io import stable_hash

# Slots a prompt always has; rubrics may declare more (e.g. ``role``) in ``extra_slots``.
REQUIRED_SLOTS = ("question", "answer")
_SLOT_NAME = re.compile(r"[a-z][a-z0-9_]*")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*")
# Upstream templates ask for a one-word answer in place of a number with "Say WORD if ...".
_UPSTREAM_SPECIAL = re.compile(r"\bSay ([A-Z][A-Z_]{2,})\b")


class Scale(BaseModel):
    """The integer range a numeric judge answers in."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    min: int = Field(0, ge=0, description="lowest score the prompt allows (non-negative: scores are parsed "
                                          "as unsigned integers)")
    max: int = Field(100, ge=1, description="highest score the prompt allows")

    @model_validator(mode="after")
    def _ordered(self):
        if self.min >= self.max:
            raise ValueError(f"min ({self.min}) must be below max ({self.max})")
        return self


class Rubric(BaseModel):
    """One judging instruction: a prompt template and what answers it allows."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(description="short identifier, used in records as name@hash (letters, digits, _ . -)")
    kind: Literal["numeric", "categorical"] = Field(
        description="numeric: the judge answers a number on `scale` (or a special label); categorical: the "
                    "judge answers one of `labels`")
    description: str = Field("", description="what the rubric measures, for people; not part of the hash")
    prompt: str = Field(description="the user message sent to the judge, with {question} and {answer} slots "
                                    "(and any declared in extra_slots); other braces are left alone")
    system: str | None = Field(None, description="optional system prompt for the judge")
    scale: Scale = Field(default_factory=Scale, description="numeric rubrics: the allowed integer range")
    labels: list[str] = Field(default_factory=list, description="categorical rubrics: the fixed label set "
                                                                "(at least two, distinct ignoring case)")
    special_labels: list[str] = Field(
        default_factory=list, description="numeric rubrics: one-word answers kept as labels, not numbers "
                                          "(e.g. REFUSAL, CODE)")
    extra_slots: list[str] = Field(default_factory=list, description="slots beyond {question} and {answer} "
                                                                     "that each item must fill (e.g. role)")

    @field_validator("name")
    @classmethod
    def _check_name(cls, value: str) -> str:
        if not _NAME.fullmatch(value):
            raise ValueError("name may hold only letters, digits, '_', '.' and '-' (e.g. alignment)")
        return value

    @field_validator("labels", "special_labels")
    @classmethod
    def _check_labels(cls, value: list[str]) -> list[str]:
        clean = [str(v).strip() for v in value]
        if any(not v for v in clean):
            raise ValueError("labels must not be empty strings")
        if len({v.casefold() for v in clean}) != len(clean):
            raise ValueError("labels must be distinct (ignoring case)")
        return clean

    @field_validator("extra_slots")
    @classmethod
    def _check_slots(cls, value: list[str]) -> list[str]:
        for slot in value:
            if not _SLOT_NAME.fullmatch(slot) or slot in REQUIRED_SLOTS:
                raise ValueError(f"extra slot {slot!r} must be a lower-case identifier other than question/answer")
        return value

    @model_validator(mode="after")
    def _consistent(self):
        for slot in (*REQUIRED_SLOTS, *self.extra_slots):
            if "{" + slot + "}" not in self.prompt:
                raise ValueError(f"prompt has no {{{slot}}} slot; the judge would never see the {slot}")
        if self.kind == "categorical":
            if len(self.labels) < 2:
                raise ValueError("a categorical rubric needs at least two labels")
            if self.special_labels:
                raise ValueError("special_labels are for numeric rubrics; add them to labels instead")
        else:
            if self.labels:
                raise ValueError("labels are for categorical rubrics; a numeric rubric uses scale and "
                                 "special_labels")
            for label in self.special_labels:
                if re.fullmatch(r"[\d.\s]+", label):
                    raise ValueError(f"special label {label!r} looks like a number; use a word")
        return self

    @property
    def content_hash(self) -> str:
        """Hash of everything that can change a judgement (not the name or description)."""
        return stable_hash({
            "kind": self.kind, "prompt": self.prompt, "system": self.system,
            "scale": self.scale.model_dump() if self.kind == "numeric" else None,
            "labels": self.labels, "special_labels": self.special_labels, "extra_slots": self.extra_slots,
        }, length=12)

    @property
    def id(self) -> str:
        """``name@hash``, the rubric field of judge records."""
        return f"{self.name}@{self.content_hash}"

    @property
    def slots(self) -> tuple[str, ...]:
        return (*REQUIRED_SLOTS, *self.extra_slots)

    def render(self, question: str, answer: str, context: dict[str, str] | None = None) -> str:
        """The filled prompt. One pass, so an answer that contains '{question}' stays as written."""
        values = {"question": question, "answer": answer, **(context or {})}
        missing = [s for s in self.extra_slots if s not in values]
        if missing:
            raise ConfigError(f"rubric {self.name} needs {', '.join(missing)} for each item (extra_slots); "
                              f"add it to the item's context")
        pattern = re.compile(r"\{(" + "|".join(map(re.escape, self.slots)) + r")\}")
        return pattern.sub(lambda m: str(values[m.group(1)]), self.prompt)

    def messages(self, question: str, answer: str, context: dict[str, str] | None = None) -> list[dict[str, str]]:
        """The conversation sent to the judge: optional system prompt, then the filled prompt."""
        turns = [{"role": "system", "content": self.system}] if self.system else []
        return turns + [{"role": "user", "content": self.render(question, answer, context)}]


# -- shipped rubrics -----------------------------------------------------------------------------


def _shipped_dir():
    return resources.files("charlab") / "data" / "rubrics"


def shipped_rubrics() -> list[str]:
    """Names of the rubrics written by the project, usable wherever a rubric path is accepted."""
    return sorted(p.name.removesuffix(".yaml") for p in _shipped_dir().iterdir() if p.name.endswith(".yaml"))


# -- loading -------------------------------------------------------------------------------------


def load_rubric(ref: str | Path) -> Rubric:
    """A rubric from a shipped name, a rubric file, or ``path#key`` for one upstream judge prompt."""
    text = str(ref)
    key = None
    if "#" in text and not Path(text).is_file():
        text, key = text.rsplit("#", 1)
    path = Path(text)
    if not path.is_file():
        shipped = shipped_rubrics()
        if text in shipped and key is None:
            with resources.as_file(_shipped_dir() / f"{text}.yaml") as shipped_path:
                return _load_project(shipped_path)
        if path.suffix == "" and len(path.parts) == 1:
            raise ConfigError(f"unknown rubric {text!r}; shipped ones are: {', '.join(shipped)}; "
                              f"or pass the path to a rubric file (path.yaml or path.yaml#judge_prompt)")
        raise ConfigError(f"{path}: file not found; check the path")
    data, lines = read_structured(path)
    if _is_upstream(data):
        return load_upstream_rubrics(path, data).pick(key)
    if key is not None:
        raise ConfigError(f"{path}: '#{key}' selects a judge prompt, but this is a single-rubric file "
                          f"(no judge_prompts); drop '#{key}'")
    return validate(Rubric, data, path, lines)


def _load_project(path: Path) -> Rubric:
    data, lines = read_structured(path)
    return validate(Rubric, data, path, lines)


def _is_upstream(data: object) -> bool:
    if isinstance(data, dict):
        return "judge_prompts" in data
    return isinstance(data, list) and any(isinstance(e, dict) and "judge_prompts" in e for e in data)


def upstream_rubric(name: str, template: str, source: str) -> Rubric:
    """One upstream judge prompt as a numeric 0-100 rubric with the special labels it asks for."""
    specials = list(dict.fromkeys(_UPSTREAM_SPECIAL.findall(template)))
    try:
        return Rubric(name=name, kind="numeric", prompt=template, special_labels=specials,
                      description=f"judge prompt {name!r} imported from {source}")
    except ValueError as exc:  # pydantic's ValidationError is a ValueError
        first = exc.errors()[0]["msg"] if hasattr(exc, "errors") else str(exc)
        raise ConfigError(f"{source}: judge prompt {name!r}: {first}") from None


@dataclass
class UpstreamPrompts:
    """The judge prompts of one upstream evaluation file.

    ``rubrics`` is keyed ``question_id/key`` for every question and plain ``key`` where all
    questions agree (they usually share one map through a YAML anchor). A key whose text differs
    between questions is in ``conflicts`` instead, so picking it by its plain name is an error
    that lists the questions, never a silent choice.
    """

    path: Path
    rubrics: dict[str, Rubric]
    conflicts: dict[str, list[list[str]]]  # key -> question ids of each distinct text

    @property
    def names(self) -> list[str]:
        return sorted([k for k in self.rubrics if "/" not in k] + list(self.conflicts))

    def pick(self, key: str | None) -> Rubric:
        plain = [k for k in self.rubrics if "/" not in k]
        if key is None:
            if len(plain) == 1 and not self.conflicts:
                return self.rubrics[plain[0]]
            raise ConfigError(f"{self.path} holds several judge prompts ({', '.join(self.names)}); "
                              f"pick one with {self.path}#NAME")
        if key in self.rubrics:
            return self.rubrics[key]
        if key in self.conflicts:
            ids = "; ".join(", ".join(q[:3]) + ("..." if len(q) > 3 else "") for q in self.conflicts[key])
            raise ConfigError(f"{self.path}: judge prompt {key!r} differs between questions ({ids}); pick one "
                              f"with {self.path}#QUESTION_ID/{key}")
        raise ConfigError(f"{self.path}: no judge prompt {key!r}; it has: {', '.join(self.names)}")


def load_upstream_rubrics(path: str | Path, data: object = None) -> UpstreamPrompts:
    """Every judge prompt of an upstream evaluation file (see ``UpstreamPrompts``)."""
    path = Path(path)
    if data is None:
        data, _ = read_structured(path)
    entries = [data] if isinstance(data, dict) else list(data or [])
    by_key: dict[str, dict[str, list[str]]] = {}  # key -> template -> question ids
    rubrics: dict[str, Rubric] = {}
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or "judge_prompts" not in entry:
            continue
        qid = str(entry.get("id", i))
        prompts = entry["judge_prompts"]
        if not isinstance(prompts, dict):
            raise ConfigError(f"{path}: question {qid}: field 'judge_prompts' must map names to prompt texts")
        for key, template in prompts.items():
            if not isinstance(template, str):
                raise ConfigError(f"{path}: question {qid}: field 'judge_prompts.{key}' must be a text")
            rubrics[f"{qid}/{key}"] = upstream_rubric(str(key), template, f"{path} ({qid})")
            by_key.setdefault(str(key), {}).setdefault(template, []).append(qid)
    if not rubrics:
        raise ConfigError(f"{path}: no judge_prompts found; expected a list of questions with a "
                          f"'judge_prompts' map, or one such mapping")
    conflicts = {}
    for key, variants in by_key.items():
        if len(variants) == 1:
            rubrics[key] = upstream_rubric(key, next(iter(variants)), str(path))
        else:
            conflicts[key] = list(variants.values())
    return UpstreamPrompts(path, rubrics, conflicts)
