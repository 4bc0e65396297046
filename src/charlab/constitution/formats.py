"""Reading and writing constitutions: charlab's YAML and OpenCharacterTraining's (OCT) files.

OCT hand-written (a JSON array, despite its ``.txt`` extension)::

    [{"trait": "I ...", "questions": ["...", "..."]}, ...]

OCT expanded (JSONL, one trait per line)::

    {"trait": "I ...", "questions": ["..."], "additional_questions": ["..."]}

Errors name the file, the line and the field, in the file's own field names.
"""

from __future__ import annotations

import json
import re
from enum import StrEnum
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    RootModel,
    StrictStr,
    ValidationError,
)

from charlab.configfile import format_validation_error, json_line_index, read_structured
from charlab.constitution.schema import Constitution, Question
from charlab.errors import ConfigError
from charlab.io import NotJSON, atomic_write_text, iter_jsonl, parse_json, read_user_text


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
    head = read_user_text(path).lstrip()[:1]
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
    text = read_user_text(path)
    data = parse_json(text, path, hint=_HANDWRITTEN_HINT)
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
    except NotJSON as exc:  # the shape hint helps with syntax, not with a bad byte or a refused value
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


