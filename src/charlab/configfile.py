"""Loading plain-data config files into typed models, with errors that point at the line.

YAML is parsed with ``safe_load`` semantics (anchors and aliases work, no arbitrary objects).
When pydantic rejects a field, the error names the file, the line of that field and the field's
dotted path, so a researcher can jump straight to it.
"""

from __future__ import annotations

import json
import string
from collections.abc import Hashable, Iterable
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from charlab.errors import ConfigError

M = TypeVar("M", bound=BaseModel)
K = TypeVar("K", bound=Hashable)


def line_index(node: yaml.Node, prefix: tuple = ()) -> dict[tuple, int]:
    """Map every path (tuple of keys / indices) in a composed YAML tree to its 1-based line."""
    index = {prefix: node.start_mark.line + 1}
    if isinstance(node, yaml.MappingNode):
        for key_node, value_node in node.value:
            key = key_node.value
            index[prefix + (key,)] = key_node.start_mark.line + 1
            for path, line in line_index(value_node, prefix + (key,)).items():
                index.setdefault(path, line)
    elif isinstance(node, yaml.SequenceNode):
        for i, item in enumerate(node.value):
            index.update(line_index(item, prefix + (i,)))
    return index


def json_line_index(text: str) -> dict[tuple, int]:
    """Best-effort path -> line index for a JSON document: JSON is almost always valid YAML, whose
    composer keeps lines. Empty when it is not."""
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return {}
    return line_index(node) if node is not None else {}


def read_structured(path: str | Path) -> tuple[Any, dict[tuple, int]]:
    """Parse a YAML or JSON file; return the data and a path -> line index (best effort for JSON)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: file not found; check the path")
    text = path.read_text(encoding="utf-8")
    if path.suffix == ".json":
        try:
            return json.loads(text), json_line_index(text)
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg})") from None
    try:
        data = yaml.safe_load(text)
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"{where}: not valid YAML ({problem}); fix the syntax there") from None
    return data, (line_index(node) if node is not None else {})


def format_validation_error(source: str | Path, exc: ValidationError, lines: dict[tuple, int]) -> str:
    parts = []
    for err in exc.errors():
        loc = tuple(err["loc"])
        line = None
        for cut in range(len(loc), -1, -1):
            if loc[:cut] in lines:
                line = lines[loc[:cut]]
                break
        field = ".".join(str(p) for p in loc) or "(top level)"
        where = f"{source}:{line}" if line else str(source)
        parts.append(f"{where}: field '{field}': {err['msg']}")
    return "\n".join(parts)


def validate(model: type[M], data: Any, source: str | Path, lines: dict[tuple, int] | None = None) -> M:
    """Validate ``data`` as ``model``; a failure becomes a ConfigError naming file, line and field."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(source, exc, lines or {})) from None


def load_model(model: type[M], path: str | Path) -> M:
    """Read a YAML/JSON file into ``model`` with located errors."""
    data, lines = read_structured(path)
    return validate(model, data, path, lines)


# -- checks that config validators share ------------------------------------------------------------


def first_duplicate(keys: Iterable[K]) -> K | None:
    """The first key seen twice, or None: for lists whose ids must be unique."""
    seen: set[K] = set()
    for key in keys:
        if key in seen:
            return key
        seen.add(key)
    return None


def check_template(template: str, allowed: set[str], required: set[str], *, name: str = "template") -> str:
    """Refuse a ``str.format`` template with unknown or missing fields before it costs a model call."""
    try:
        fields = {field for _, field, _, _ in string.Formatter().parse(template) if field is not None}
    except ValueError as exc:
        raise ValueError(f"{name} is not a valid format string ({exc}); write literal braces as {{{{ }}}}") from None
    if unknown := fields - allowed:
        raise ValueError(f"{name} uses unknown fields {sorted(unknown)}; allowed: {sorted(allowed)}")
    if missing := required - fields:
        raise ValueError(f"{name} must contain {sorted(missing)}")
    return template
