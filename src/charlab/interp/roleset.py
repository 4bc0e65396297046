"""The role set behind the assistant axis: roles, default-assistant prompts and extraction questions.

The assistant axis is the direction in activation space that separates a model answering as its
default assistant from the same model playing someone else. Finding it needs three inputs: many
roles, each asked for by several system prompts (so the direction is about the role, not one
wording); default-assistant prompts, from no system prompt at all to "You are {model_name}."; and
shared questions that let a persona show through. The project ships its own set in
``data/axis/``; ``import_upstream`` reads the upstream format, and ``export_yaml`` writes any set
back as the project's YAML.

The YAML files use the role-adoption eval's schema, so ``charlab.evals.roles.load_roles`` reads
``roles.yaml`` and ``load_questions`` reads ``extraction_questions.yaml`` unchanged (the axis kind
becomes the eval role's free ``kind`` label).
"""

from __future__ import annotations

import re
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal, NamedTuple, TypeVar, get_args

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StrictStr, ValidationError, field_validator

from charlab.configfile import first_duplicate, format_validation_error, json_line_index, load_model
from charlab.errors import ConfigError
from charlab.io import atomic_write_text, iter_jsonl, parse_json, read_user_text

MODEL_NAME = "{model_name}"
Kind = Literal["profession", "fictional", "mythic", "non_human", "ai_persona"]
ROLE_KINDS: tuple[str, ...] = get_args(Kind)
SHIPPED_FILES = {"roles": "roles.yaml", "defaults": "default_prompts.yaml", "questions": "extraction_questions.yaml"}
UPSTREAM_DEFAULT_ROLE = "default"
_ROLE_HINT = 'an upstream role file looks like {"instruction": [{"pos": "You are ..."}, ...]}'
_QUESTION_HINT = 'each line of an upstream question file looks like {"question": "...", "id": 0}'

M = TypeVar("M", bound=BaseModel)


def _slug(name: str) -> str:
    """The name as the role-adoption eval compares it (case and punctuation ignored)."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")


def _not_blank(prompt: str) -> str:
    """An empty role prompt would be the default assistant, which belongs in the default prompts."""
    if not prompt.strip():
        raise ValueError("a role prompt is empty; empty prompts belong in the default prompts")
    return prompt


RolePrompt = Annotated[StrictStr, AfterValidator(_not_blank)]


class AxisRole(BaseModel):
    """One role and the system prompts that ask for it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: StrictStr = Field(min_length=1, description="what the role is, e.g. 'beekeeper'; unique in its set")
    kind: Kind | None = Field(None, description="profession, fictional, mythic, non_human or ai_persona; "
                                                "None for imported roles, whose upstream files carry no kind")
    prompts: list[RolePrompt] = Field(min_length=1, description="system prompts asking for the role, "
                                                                "each worded differently")


class AxisRoleSet(BaseModel):
    """A named list of roles whose names stay distinct even ignoring case and punctuation."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: StrictStr = Field("", description="what the set is called")
    description: StrictStr = Field("", description="for people")
    roles: list[AxisRole] = Field(min_length=1, description="the roles, in order")

    @field_validator("roles")
    @classmethod
    def _distinct(cls, roles: list[AxisRole]) -> list[AxisRole]:
        """The role-adoption eval groups results by slug, so two names with one slug would merge."""
        dup = first_duplicate([_slug(r.name) for r in roles])
        if dup is not None:
            raise ValueError(f"two roles are both named like {dup!r}; rename one")
        return roles


class DefaultPrompts(BaseModel):
    """System prompts under which the model is its ordinary assistant self ('' = no system prompt)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: StrictStr = Field("", description="what the set is called")
    description: StrictStr = Field("", description="for people")
    prompts: list[StrictStr] = Field(min_length=1, description=f"prompts; '' means none, {MODEL_NAME} is "
                                                               "filled with the model's name")

    @field_validator("prompts")
    @classmethod
    def _distinct(cls, prompts: list[str]) -> list[str]:
        dup = first_duplicate(prompts)
        if dup is not None:
            raise ValueError(f"the prompt {dup!r} is listed twice")
        return prompts


class ExtractionQuestion(BaseModel):
    """A question asked under every role and default prompt; activations are read from the answers."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: StrictStr = Field(min_length=1, description="stable id; answers are paired across roles on it")
    text: StrictStr = Field(min_length=1, description="the user message")


class ExtractionQuestionSet(BaseModel):
    """A named list of questions with unique ids."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: StrictStr = Field("", description="what the set is called")
    description: StrictStr = Field("", description="for people")
    questions: list[ExtractionQuestion] = Field(min_length=1, description="the questions, in order")

    @field_validator("questions")
    @classmethod
    def _distinct(cls, questions: list[ExtractionQuestion]) -> list[ExtractionQuestion]:
        dup = first_duplicate([q.id for q in questions])
        if dup is not None:
            raise ValueError(f"question id {dup!r} is used twice; ids must be unique")
        return questions


def fill_model_name(prompt: str, model_name: str) -> str:
    """Put the model's name where the prompt says {model_name}; other braces are left alone."""
    if MODEL_NAME in prompt and not model_name.strip():
        raise ConfigError(f"the prompt {prompt!r} needs a model name, and the one given is empty")
    return prompt.replace(MODEL_NAME, model_name)


# -- the shipped set and user files ------------------------------------------------------------------


def _load(model: type[M], what: str, path: str | Path | None) -> M:
    """A user file when ``path`` is given, else the shipped one; errors name file, line and field."""
    if path is not None:
        return load_model(model, path)
    with resources.as_file(resources.files("charlab") / "data" / "axis" / SHIPPED_FILES[what]) as shipped:
        return load_model(model, shipped)


def load_axis_roles(path: str | Path | None = None) -> AxisRoleSet:
    """The roles in a YAML/JSON file, or the shipped ones."""
    return _load(AxisRoleSet, "roles", path)


def load_default_prompts(path: str | Path | None = None) -> DefaultPrompts:
    """The default-assistant prompts in a YAML/JSON file, or the shipped ones."""
    return _load(DefaultPrompts, "defaults", path)


def load_extraction_questions(path: str | Path | None = None) -> ExtractionQuestionSet:
    """The extraction questions in a YAML/JSON file, or the shipped ones."""
    return _load(ExtractionQuestionSet, "questions", path)


# -- the upstream format -------------------------------------------------------------------------------


class _UpstreamInstruction(BaseModel):
    model_config = ConfigDict(extra="forbid")

    pos: StrictStr


class _UpstreamRole(BaseModel):
    """An upstream role file. Its own ``questions`` and judge ``eval_prompt`` are accepted but not kept:
    the axis asks every role the shared extraction questions, and adoption is judged by the project's
    ``role_adoption`` rubric."""

    model_config = ConfigDict(extra="forbid")

    instruction: list[_UpstreamInstruction] = Field(min_length=1)
    questions: list[StrictStr] = []
    eval_prompt: StrictStr = ""


class _UpstreamQuestion(BaseModel):
    model_config = ConfigDict(extra="forbid")

    question: StrictStr = Field(min_length=1)
    id: int | StrictStr


class UpstreamImport(NamedTuple):
    """What an upstream folder or file list held; a part it did not have is None."""

    roles: AxisRoleSet | None
    default_prompts: DefaultPrompts | None
    questions: ExtractionQuestionSet | None


def _check(model: type[M], data: Any, source: str | Path, lines: dict[tuple, int], hint: str = "") -> M:
    """Validate; a failure becomes a ConfigError naming file, line and field, plus the expected shape."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(source, exc, lines) + (f"\n({hint})" if hint else "")) from None


def _read_upstream_role(path: Path) -> tuple[list[str], dict[tuple, int]]:
    """The ``pos`` prompts of one upstream role file, and their lines keyed as ``AxisRole.prompts``."""
    text = read_user_text(path)
    data = parse_json(text, path, hint=_ROLE_HINT)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}:1: the top level is not a JSON object; {_ROLE_HINT}")
    lines = json_line_index(text)
    role = _check(_UpstreamRole, data, path, lines, _ROLE_HINT)
    prompt_lines = {("prompts", *key[1:2]): line for key, line in lines.items() if key[:1] == ("instruction",)}
    return [item.pos for item in role.instruction], prompt_lines


def _read_upstream_questions(path: Path) -> list[ExtractionQuestion]:
    """Questions from one ``extraction_questions.jsonl``; upstream's integer ids become text."""
    questions = []
    for lineno, row in iter_jsonl(path):
        if not isinstance(row, dict):
            raise ConfigError(f"{path}:{lineno}: this line is not a JSON object; {_QUESTION_HINT}")
        item = _check(_UpstreamQuestion, row, path, {(): lineno}, _QUESTION_HINT)
        questions.append(ExtractionQuestion(id=str(item.id), text=item.question))
    return questions


def _upstream_files(sources: tuple[str | Path, ...]) -> list[Path]:
    """Folders expand to their ``*.json`` and ``*.jsonl`` files; anything else must be one of those."""
    files = []
    for source in map(Path, sources):
        if source.is_dir():
            found = sorted(p for p in source.iterdir() if p.suffix in {".json", ".jsonl"})
            if not found:
                raise ConfigError(f"{source}: no upstream role (.json) or question (.jsonl) files in this folder")
            files += found
        elif not source.is_file():
            raise ConfigError(f"{source}: file not found; check the path")
        elif source.suffix not in {".json", ".jsonl"}:
            raise ConfigError(f"{source}: expected a role file (.json) or extraction questions (.jsonl)")
        else:
            files.append(source)
    return files


def import_upstream(*sources: str | Path) -> UpstreamImport:
    """Read upstream role JSON files and ``extraction_questions.jsonl`` from folders or single files.

    A role file's name is the role's name (``space_explorer.json`` -> 'space explorer'); the file
    named ``default.json`` holds the default-assistant prompts. Several question files are joined.
    """
    if not sources:
        raise ConfigError("import_upstream needs at least one folder or file")
    roles, defaults, questions = [], [], []
    for path in _upstream_files(sources):
        if path.suffix == ".jsonl":
            questions += _read_upstream_questions(path)
        elif path.stem == UPSTREAM_DEFAULT_ROLE:
            defaults += _read_upstream_role(path)[0]
        else:
            prompts, lines = _read_upstream_role(path)
            role = {"name": path.stem.replace("_", " "), "prompts": prompts}
            roles.append(_check(AxisRole, role, path, lines, _ROLE_HINT))
    where = ", ".join(map(str, sources))
    header = {"name": "upstream", "description": f"Imported from the upstream assistant-axis files in {where}."}
    return UpstreamImport(  # duplicates across files (two roles with one name, a question id twice) fail here
        _check(AxisRoleSet, {**header, "roles": roles}, where, {}) if roles else None,
        _check(DefaultPrompts, {**header, "prompts": defaults}, where, {}) if defaults else None,
        _check(ExtractionQuestionSet, {**header, "questions": questions}, where, {}) if questions else None,
    )


def export_yaml(imported: UpstreamImport, folder: str | Path) -> list[Path]:
    """Write each part that is present as the project's YAML (the shipped file names) into ``folder``."""
    parts = {"roles": imported.roles, "defaults": imported.default_prompts, "questions": imported.questions}
    written = []
    for what, part in parts.items():
        if part is not None:
            text = yaml.safe_dump(part.model_dump(exclude_none=True), sort_keys=False, allow_unicode=True, width=120)
            written.append(atomic_write_text(Path(folder) / SHIPPED_FILES[what], text))
    return written
