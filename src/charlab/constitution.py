"""Constitutions: the first-person traits a teacher is prompted with, and the questions that elicit them.

A constitution is the independent variable of a character-training experiment, so it has to be
easy to inspect and to match against a control. This module holds the typed schema, loading from
charlab's YAML or OpenCharacterTraining's (OCT) files, export back to both, and the "training
geometry" statistics (how many questions, how long, in which situations, how varied) that a
control constitution should share with the one it controls for.

Native YAML::

    name: integrity
    description: Value-laden traits about honesty and care.
    traits:
      - statement: I tell the truth as best I know it.
        questions:
          - My sourdough is dense, so it must be the flour, right?        # a plain string ...
          - {text: "Is this email from my bank real?", situation: scam}   # ... or text + situation
        expanded: []   # optional: questions generated later by the prompt-expansion stage

OCT hand-written (a JSON array, despite its ``.txt`` extension)::

    [{"trait": "I ...", "questions": ["...", "..."]}, ...]

OCT expanded (JSONL, one trait per line)::

    {"trait": "I ...", "questions": ["..."], "additional_questions": ["..."]}
"""

from __future__ import annotations

import json
import math
import re
import statistics
from collections import Counter
from collections.abc import Iterator, Sequence
from enum import StrEnum
from importlib import resources
from itertools import combinations
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    RootModel,
    StrictStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from charlab.config import format_validation_error, json_line_index, read_structured
from charlab.errors import ConfigError
from charlab.io import atomic_write_text, iter_jsonl

__all__ = [
    "Comparison",
    "ComparisonRow",
    "Constitution",
    "ConstitutionStats",
    "CountSummary",
    "Format",
    "LengthSummary",
    "Question",
    "Situation",
    "SituationShare",
    "Trait",
    "compare",
    "dropped_on_export",
    "dump_constitution",
    "format_for_path",
    "is_near_duplicate",
    "load_constitution",
    "save_constitution",
    "shipped_constitutions",
    "stats",
    "words",
]


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


class Format(StrEnum):
    """File formats a constitution can be read from and written to."""

    YAML = "yaml"  # charlab's native format (keeps situation tags)
    OCT_HANDWRITTEN = "oct-handwritten"  # OCT's JSON array of {trait, questions}
    OCT_EXPANDED = "oct-expanded"  # OCT's JSONL of {trait, questions, additional_questions}


def _format(value: Format | str) -> Format:
    try:
        return Format(value)
    except ValueError:
        choices = ", ".join(f.value for f in Format)
        raise ConfigError(f"unknown constitution format {value!r}; use one of: {choices}") from None


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


class _OctTrait(BaseModel):
    """One element of an OCT file; validated before conversion so errors use OCT's field names."""

    model_config = ConfigDict(extra="forbid")

    trait: StrictStr
    questions: list[StrictStr]
    additional_questions: list[StrictStr] = []


class _OctHandwritten(RootModel[list[_OctTrait]]):
    pass


# ----------------------------------------------------------------------------------------------
# Loading
# ----------------------------------------------------------------------------------------------

_NATIVE_HINT = (
    "a constitution is a mapping with 'name', 'description' and 'traits', each trait having a "
    "'statement' and 'questions' (strings or {text, situation})"
)
_HANDWRITTEN_HINT = 'an OCT hand-written file is a JSON array of {"trait": "...", "questions": ["...", ...]} objects'
_EXPANDED_HINT = (
    'an OCT expanded file is JSONL: one {"trait": "...", "questions": [...], "additional_questions": [...]} '
    "object per line"
)
_OCT_FIELDS = {"trait": "statement", "additional_questions": "expanded"}
_OCT_DESCRIPTION = "Imported from OpenCharacterTraining."


def _shipped_dir():
    return resources.files("charlab") / "data" / "constitutions"


def shipped_constitutions() -> list[str]:
    """Names of the constitutions that ship with charlab, usable wherever a path is accepted."""
    return sorted(p.name.removesuffix(".yaml") for p in _shipped_dir().iterdir() if p.name.endswith(".yaml"))


def load_constitution(
    name_or_path: str | Path, fmt: Format | str | None = None, name: str | None = None
) -> Constitution:
    """Load a shipped constitution by name, or a file in any supported format (detected unless ``fmt``).

    ``name`` replaces the constitution's name; OCT files have none, so theirs defaults to the file stem.
    """
    path = Path(name_or_path)
    if not path.is_file():
        shipped = shipped_constitutions()
        if str(name_or_path) in shipped:
            with resources.as_file(_shipped_dir() / f"{name_or_path}.yaml") as shipped_path:
                return _load_native(shipped_path, name)
        if path.suffix == "" and len(path.parts) == 1:
            raise ConfigError(
                f"unknown constitution {str(name_or_path)!r}; shipped ones are: {', '.join(shipped)}; "
                "or pass the path to a constitution file"
            )
        raise ConfigError(f"{path}: file not found; check the path")
    fmt = _format(fmt) if fmt is not None else _detect_format(path)
    if fmt is Format.YAML:
        return _load_native(path, name)
    if fmt is Format.OCT_HANDWRITTEN:
        return _load_oct_handwritten(path, name)
    return _load_oct_expanded(path, name)


def _detect_format(path: Path) -> Format:
    """YAML by extension, JSONL by extension; otherwise '[' means an OCT array, '{' OCT JSONL."""
    suffix = path.suffix.lower()
    if suffix in {".yaml", ".yml"}:
        return Format.YAML
    if suffix == ".jsonl":
        return Format.OCT_EXPANDED
    head = path.read_text(encoding="utf-8").lstrip()[:1]
    if head == "[":
        return Format.OCT_HANDWRITTEN
    if head == "{":
        return Format.OCT_EXPANDED
    return Format.YAML


M = TypeVar("M", bound=BaseModel)


def _check(model: type[M], data: Any, source: Path, lines: dict[tuple, int], hint: str) -> M:
    """Validate with located errors plus a reminder of the expected shape; ``lines`` also feeds validators."""
    try:
        return model.model_validate(data, context={"lines": lines})
    except ValidationError as exc:
        raise ConfigError(f"{format_validation_error(source, exc, lines)}\n({hint})") from None


def _load_native(path: Path, name: str | None) -> Constitution:
    data, lines = read_structured(path)
    if not isinstance(data, dict):
        kind = "empty" if data is None else f"a {type(data).__name__}"
        raise ConfigError(
            f"{path}:1: the file is {kind}; {_NATIVE_HINT}. If it is an OCT file, load it with the "
            "oct-handwritten or oct-expanded format"
        )
    if name is not None:
        data = {**data, "name": name}
    return _check(Constitution, data, path, lines, _NATIVE_HINT)


def _load_oct_handwritten(path: Path, name: str | None) -> Constitution:
    text = path.read_text(encoding="utf-8")
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ConfigError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg}); {_HANDWRITTEN_HINT}") from None
    if not isinstance(data, list):
        raise ConfigError(
            f"{path}:1: the top level is a JSON {_json_type(data)}, not an array; {_HANDWRITTEN_HINT}"
            + (" (if it has one object per line, load it as oct-expanded)" if isinstance(data, dict) else "")
        )
    lines = json_line_index(text)
    rows = _check(_OctHandwritten, data, path, lines, _HANDWRITTEN_HINT).root
    return _from_oct(rows, path, _oct_to_native_lines(lines), _HANDWRITTEN_HINT, name)


def _load_oct_expanded(path: Path, name: str | None) -> Constitution:
    try:
        objects = list(iter_jsonl(path))
    except ConfigError as exc:
        raise ConfigError(f"{exc}\n({_EXPANDED_HINT}; a JSON array is the oct-handwritten format)") from None
    rows, lines = [], {}
    for i, (lineno, obj) in enumerate(objects):
        if not isinstance(obj, dict):
            raise ConfigError(f"{path}:{lineno}: this line is a JSON {_json_type(obj)}; {_EXPANDED_HINT}")
        rows.append(_check(_OctTrait, obj, path, {(): lineno}, _EXPANDED_HINT))
        lines[(i,)] = lineno
    return _from_oct(rows, path, _oct_to_native_lines(lines), _EXPANDED_HINT, name)


def _from_oct(rows: list[_OctTrait], path: Path, lines: dict[tuple, int], hint: str, name: str | None) -> Constitution:
    data = {
        "name": name if name is not None else _name_from_stem(path),
        "description": _OCT_DESCRIPTION,
        "traits": [
            {"statement": row.trait, "questions": row.questions, "expanded": row.additional_questions}
            for row in rows
        ],
    }
    return _check(Constitution, data, path, lines, hint)


def _json_type(value: Any) -> str:
    names = {dict: "object", list: "array", str: "string", int: "number", float: "number", bool: "boolean"}
    return names.get(type(value), "null")


def _name_from_stem(path: Path) -> str:
    """OCT files carry no name; the file stem is the natural one (made folder-safe)."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", path.stem).strip("-.") or "imported"


def _oct_to_native_lines(lines: dict[tuple, int]) -> dict[tuple, int]:
    """Re-key an OCT line index ((3, 'trait') ...) onto native paths (('traits', 3, 'statement') ...)."""
    native = {("traits",): lines[()]} if () in lines else {}
    for key, line in lines.items():
        if key and isinstance(key[0], int):
            native[("traits", key[0], *(_OCT_FIELDS.get(part, part) for part in key[1:]))] = line
    return native


# ----------------------------------------------------------------------------------------------
# Export
# ----------------------------------------------------------------------------------------------


def dump_constitution(constitution: Constitution, fmt: Format | str) -> str:
    """Serialise to text in ``fmt``; OCT formats drop situation tags (see ``dropped_on_export``)."""
    fmt = _format(fmt)
    if fmt is Format.YAML:
        return yaml.safe_dump(_native_dict(constitution), sort_keys=False, allow_unicode=True, width=100)
    if fmt is Format.OCT_HANDWRITTEN:
        rows = [{"trait": t.statement, "questions": [q.text for q in t.questions]} for t in constitution.traits]
        return json.dumps(rows, indent=4, ensure_ascii=False) + "\n"
    return "".join(
        json.dumps(
            {
                "trait": t.statement,
                "questions": [q.text for q in t.questions],
                "additional_questions": [q.text for q in t.expanded],
            },
            ensure_ascii=False,
        )
        + "\n"
        for t in constitution.traits
    )


def save_constitution(constitution: Constitution, path: str | Path, fmt: Format | str | None = None) -> Path:
    """Write atomically; ``fmt`` defaults from the extension (.yaml/.yml, .jsonl, .txt/.json)."""
    path = Path(path)
    fmt = _format(fmt) if fmt is not None else format_for_path(path)
    return atomic_write_text(path, dump_constitution(constitution, fmt))


def dropped_on_export(constitution: Constitution, fmt: Format | str) -> list[str]:
    """What a lossy export would lose, so the CLI can say so instead of losing it silently."""
    fmt = _format(fmt)
    lost = []
    if fmt is not Format.YAML and any(q.situation for q in constitution.questions):
        lost.append("situation tags (OCT files have no place for them)")
    if fmt is not Format.YAML and constitution.description not in ("", _OCT_DESCRIPTION):
        lost.append("the description (OCT files hold traits only)")
    if fmt is Format.OCT_HANDWRITTEN and any(t.expanded for t in constitution.traits):
        lost.append("expanded questions (use the oct-expanded format to keep them)")
    return lost


def format_for_path(path: Path) -> Format:
    """The export format an output file's extension implies."""
    suffix = path.suffix.lower()
    by_suffix = {".yaml": Format.YAML, ".yml": Format.YAML, ".jsonl": Format.OCT_EXPANDED}
    by_suffix |= {".txt": Format.OCT_HANDWRITTEN, ".json": Format.OCT_HANDWRITTEN}
    if suffix not in by_suffix:
        choices = ", ".join(f.value for f in Format)
        raise ConfigError(f"{path}: cannot tell the format from the extension {suffix!r}; pass a format ({choices})")
    return by_suffix[suffix]


def _native_dict(constitution: Constitution) -> dict[str, Any]:
    def question(q: Question) -> str | dict[str, str]:
        return q.text if q.situation is None else {"text": q.text, "situation": q.situation.value}

    traits = []
    for trait in constitution.traits:
        entry: dict[str, Any] = {"statement": trait.statement, "questions": [question(q) for q in trait.questions]}
        if trait.expanded:
            entry["expanded"] = [question(q) for q in trait.expanded]
        traits.append(entry)
    return {"name": constitution.name, "description": constitution.description, "traits": traits}


# ----------------------------------------------------------------------------------------------
# Training geometry
# ----------------------------------------------------------------------------------------------

_WORD_RE = re.compile(r"[\w'’]+")


def words(text: str) -> list[str]:
    """Lowercased words (letters, digits and apostrophes); punctuation is not a word."""
    return _WORD_RE.findall(text.lower())


def is_near_duplicate(a: str, b: str) -> bool:
    """OCT's dedup rule: |words(a) ∩ words(b)| / min(|words(a)|, |words(b)|) > 0.5 over word sets.

    Shared with the prompt-expansion stage, which drops a generated question that is a near
    duplicate of one already kept. Texts without words are never near duplicates.
    """
    set_a, set_b = set(words(a)), set(words(b))
    smaller = min(len(set_a), len(set_b))
    return smaller > 0 and len(set_a & set_b) / smaller > 0.5


class CountSummary(BaseModel):
    """Min, mean and max of a per-trait count."""

    min: int
    mean: float
    max: int


class LengthSummary(BaseModel):
    """Distribution of question lengths in words (percentiles interpolate linearly)."""

    mean: float
    median: float
    p10: float
    p90: float


class SituationShare(BaseModel):
    """How many questions carry a tag, and which fraction of all questions that is."""

    count: int
    share: float


class ConstitutionStats(BaseModel):
    """The training geometry of a constitution: what a matched control must share with it.

    Length, situation, diversity and near-duplicate figures pool seed and expanded questions,
    since both become training prompts.
    """

    name: str
    traits: int = Field(description="Number of traits.")
    seed_questions: int = Field(description="Hand-written questions, all traits together.")
    expanded_questions: int = Field(description="Generated questions, all traits together.")
    seed_per_trait: CountSummary
    expanded_per_trait: CountSummary
    question_words: LengthSummary = Field(description="Question length in words.")
    situations: dict[str, SituationShare] = Field(description="Per tag, plus 'untagged'; only tags that occur.")
    type_token_ratio: float = Field(description="Distinct words / words, over all questions.")
    distinct_2: float = Field(description="Distinct bigrams / bigrams, bigrams taken within each question.")
    near_duplicates: int = Field(description="Pairs of questions for which `is_near_duplicate` holds.")


def stats(constitution: Constitution) -> ConstitutionStats:
    """Compute the training geometry of ``constitution``."""
    questions = constitution.questions
    tokenised = [words(q.text) for q in questions]
    lengths = [len(tokens) for tokens in tokenised]
    all_words = [w for tokens in tokenised for w in tokens]
    bigrams = [pair for tokens in tokenised for pair in zip(tokens, tokens[1:])]
    tags = Counter(q.situation.value if q.situation else UNTAGGED for q in questions)
    ordered_tags = [s.value for s in Situation if s.value in tags] + ([UNTAGGED] if UNTAGGED in tags else [])
    return ConstitutionStats(
        name=constitution.name,
        traits=len(constitution.traits),
        seed_questions=sum(len(t.questions) for t in constitution.traits),
        expanded_questions=sum(len(t.expanded) for t in constitution.traits),
        seed_per_trait=_count_summary([len(t.questions) for t in constitution.traits]),
        expanded_per_trait=_count_summary([len(t.expanded) for t in constitution.traits]),
        question_words=LengthSummary(
            mean=statistics.fmean(lengths),
            median=statistics.median(lengths),
            p10=_percentile(lengths, 0.10),
            p90=_percentile(lengths, 0.90),
        ),
        situations={tag: SituationShare(count=tags[tag], share=tags[tag] / len(questions)) for tag in ordered_tags},
        type_token_ratio=len(set(all_words)) / len(all_words) if all_words else 0.0,
        distinct_2=len(set(bigrams)) / len(bigrams) if bigrams else 0.0,
        near_duplicates=sum(is_near_duplicate(a.text, b.text) for a, b in combinations(questions, 2)),
    )


def _count_summary(counts: Sequence[int]) -> CountSummary:
    return CountSummary(min=min(counts), mean=statistics.fmean(counts), max=max(counts))


def _percentile(values: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    ordered = sorted(values)
    position = (len(ordered) - 1) * q
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


# ----------------------------------------------------------------------------------------------
# Comparison
# ----------------------------------------------------------------------------------------------

SHARE_TOLERANCE = 0.05
"""Largest difference in a situation's share (absolute, 0-1) that still counts as matched."""

LENGTH_TOLERANCE = 0.15
"""Largest relative difference in mean question length that still counts as matched."""


class ComparisonRow(BaseModel):
    """One metric for both constitutions: ``diff`` is b - a, ``ratio`` is b / a (None when a is 0)."""

    metric: str
    a: float
    b: float
    diff: float
    ratio: float | None


class Comparison(BaseModel):
    """Two constitutions side by side, and where their geometry does not match."""

    a: str
    b: str
    rows: list[ComparisonRow]
    mismatches: list[str] = Field(
        description=f"Geometry differences beyond tolerance (traits and per-trait counts must be equal, "
        f"situation shares within {SHARE_TOLERANCE:.0%} points, mean length within {LENGTH_TOLERANCE:.0%})."
    )

    @property
    def matched(self) -> bool:
        return not self.mismatches


def compare(a: Constitution, b: Constitution) -> Comparison:
    """Put ``a`` and ``b`` on the same numbers, so a researcher can see whether a control matches."""
    sa, sb = stats(a), stats(b)
    rows = [_row(metric, va, vb) for metric, va, vb in _metric_pairs(sa, sb)]
    return Comparison(a=a.name, b=b.name, rows=rows, mismatches=_mismatches(sa, sb))


def _metric_pairs(sa: ConstitutionStats, sb: ConstitutionStats) -> Iterator[tuple[str, float, float]]:
    yield "traits", sa.traits, sb.traits
    yield "seed questions", sa.seed_questions, sb.seed_questions
    for part in ("min", "mean", "max"):
        yield f"seed per trait ({part})", getattr(sa.seed_per_trait, part), getattr(sb.seed_per_trait, part)
    yield "expanded questions", sa.expanded_questions, sb.expanded_questions
    yield "expanded per trait (mean)", sa.expanded_per_trait.mean, sb.expanded_per_trait.mean
    for part in ("mean", "median", "p10", "p90"):
        yield f"words per question ({part})", getattr(sa.question_words, part), getattr(sb.question_words, part)
    for tag in _union_tags(sa, sb):
        yield f"situation share: {tag}", _share(sa, tag), _share(sb, tag)
    yield "type-token ratio", sa.type_token_ratio, sb.type_token_ratio
    yield "distinct-2", sa.distinct_2, sb.distinct_2
    yield "near-duplicate pairs", sa.near_duplicates, sb.near_duplicates


def _row(metric: str, a: float, b: float) -> ComparisonRow:
    return ComparisonRow(metric=metric, a=a, b=b, diff=b - a, ratio=b / a if a else None)


def _union_tags(sa: ConstitutionStats, sb: ConstitutionStats) -> list[str]:
    order = [s.value for s in Situation] + [UNTAGGED]
    return [tag for tag in order if tag in sa.situations or tag in sb.situations]


def _share(s: ConstitutionStats, tag: str) -> float:
    return s.situations[tag].share if tag in s.situations else 0.0


def _mismatches(sa: ConstitutionStats, sb: ConstitutionStats) -> list[str]:
    found = []
    if sa.traits != sb.traits:
        found.append(f"trait count differs: {sa.traits} vs {sb.traits}")
    if sa.seed_per_trait != sb.seed_per_trait:
        found.append(
            f"seed questions per trait differ: {sa.seed_per_trait.min}-{sa.seed_per_trait.max} "
            f"vs {sb.seed_per_trait.min}-{sb.seed_per_trait.max}"
        )
    for tag in _union_tags(sa, sb):
        gap = abs(_share(sa, tag) - _share(sb, tag))
        if gap > SHARE_TOLERANCE + 1e-9:
            found.append(f"situation '{tag}' share differs by {gap:.1%} (tolerance {SHARE_TOLERANCE:.0%})")
    mean_a, mean_b = sa.question_words.mean, sb.question_words.mean
    if mean_a and abs(mean_b - mean_a) / mean_a > LENGTH_TOLERANCE:
        found.append(
            f"mean question length differs: {mean_a:.1f} vs {mean_b:.1f} words (tolerance {LENGTH_TOLERANCE:.0%})"
        )
    return found
