"""Loading plain-data config files into typed models, with errors that point at the line.

YAML is parsed with ``safe_load`` semantics (anchors and aliases work, no arbitrary objects),
plus three refusals safe_load lacks: a key written twice in one mapping (YAML says it is an error,
PyYAML silently keeps the last), an alias inside its own anchor (a loop that later code would walk
forever), and aliases that expand far beyond the file's own size (a "billion laughs" bomb, which
PyYAML builds cheaply as shared objects but validation and line indexing would then walk in full).
Text comes from ``io.read_user_text``, so encodings are handled the same as every other file.

When pydantic rejects a field, the error names the file, the line of that field and the field's
dotted path, so a researcher can jump straight to it.
"""

from __future__ import annotations

import string
from collections.abc import Hashable, Iterable
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from charlab.errors import ConfigError
from charlab.io import MAX_DEPTH, parse_json, read_user_text

M = TypeVar("M", bound=BaseModel)
K = TypeVar("K", bound=Hashable)

MAX_ALIAS_NODES = 100_000
"""How many nodes aliases may add beyond those written out; generous for real reuse, tiny next to a bomb."""
_MERGE_TAG = "tag:yaml.org,2002:merge"


class _Refused(Exception):
    """A structural refusal found while composing or checking; carries the line it points at."""

    def __init__(self, line: int, message: str):
        super().__init__(message)
        self.line = line


class _StrictLoader(yaml.SafeLoader):
    """SafeLoader whose composer stops at MAX_DEPTH instead of recursing into a RecursionError."""

    def __init__(self, stream: str):
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                line = self.peek_event().start_mark.line + 1
                raise _Refused(line, f"lists/mappings are nested more than {MAX_DEPTH} deep; no charlab file "
                                     "needs that, so this is likely a broken or hostile file")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [part for pair in node.value for part in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def _refuse_duplicate_keys(node: yaml.MappingNode) -> None:
    """A scalar key twice in one mapping is refused; keys brought in by a ``<<`` merge may be overridden."""
    seen: dict[tuple[str, str], int] = {}
    for key_node, _ in node.value:
        if not isinstance(key_node, yaml.ScalarNode) or key_node.tag == _MERGE_TAG:
            continue
        key, line = (key_node.tag, key_node.value), key_node.start_mark.line + 1
        if key in seen:
            raise _Refused(line, f"key '{key_node.value}' appears twice in this mapping (first on line "
                                 f"{seen[key]}); remove or rename one")
        seen[key] = line


def _check_graph(root: yaml.Node) -> None:
    """Walk the composed node graph once (iteratively, each shared node once): refuse duplicate
    keys, aliases that loop back into their own anchor, and aliases that expand past MAX_ALIAS_NODES."""
    size: dict[int, int] = {}  # node id -> expanded node count, once the node is finished (big ints are cheap)
    open_ids: set[int] = set()  # nodes whose subtree is being walked: the current ancestors
    largest: tuple[int, int] = (0, 0)  # (expanded size, line) of the biggest node reached again by an alias
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, finished = stack.pop()
        key = id(node)
        if finished:
            open_ids.discard(key)
            size[key] = 1 + sum(size[id(child)] for child in _children(node))
            continue
        if key in size:
            largest = max(largest, (size[key], node.start_mark.line + 1))
            continue
        if key in open_ids:
            raise _Refused(node.start_mark.line + 1, "an alias refers to the anchor it sits inside, which makes "
                                                     "an endless loop; replace the alias with the data it means")
        if isinstance(node, yaml.MappingNode):
            _refuse_duplicate_keys(node)
        open_ids.add(key)
        stack.append((node, True))
        stack.extend((child, False) for child in _children(node))
    if size[id(root)] - len(size) > MAX_ALIAS_NODES:
        raise _Refused(largest[1], f"aliases expand this file by more than {MAX_ALIAS_NODES} nodes (the "
                                   "anchor on this line is the largest one reused); write the data out or "
                                   "reuse fewer nested anchors")


def _yaml_error(source: str | Path, exc: yaml.YAMLError) -> ConfigError:
    mark = getattr(exc, "problem_mark", None)
    where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark else str(source)
    problem = getattr(exc, "problem", None) or str(exc)
    return ConfigError(f"{where}: not valid YAML ({problem}); fix the syntax there")


def compose_yaml(text: str, source: str | Path) -> yaml.Node | None:
    """The checked node graph of one YAML document (None when empty); see the module docstring."""
    loader = _StrictLoader(text)
    try:
        node = loader.get_single_node()
        if node is not None:
            _check_graph(node)
        return node
    except _Refused as exc:
        raise ConfigError(f"{source}:{exc.line}: {exc}") from None
    except yaml.YAMLError as exc:
        raise _yaml_error(source, exc) from None
    finally:
        loader.dispose()


def parse_yaml(text: str, source: str | Path) -> tuple[Any, dict[tuple, int]]:
    """``safe_load`` of checked YAML, plus the path -> line index of its nodes."""
    node = compose_yaml(text, source)
    if node is None:
        return None, {}
    loader = _StrictLoader("")
    try:
        return loader.construct_document(node), line_index(node)
    except yaml.YAMLError as exc:
        raise _yaml_error(source, exc) from None
    finally:
        loader.dispose()


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
        node = compose_yaml(text, "<json>")
    except ConfigError:
        return {}
    return line_index(node) if node is not None else {}


def read_structured(path: str | Path) -> tuple[Any, dict[tuple, int]]:
    """Parse a YAML or JSON file; return the data and a path -> line index (best effort for JSON)."""
    text = read_user_text(path)
    if Path(path).suffix == ".json":
        return parse_json(text, path), json_line_index(text)
    return parse_yaml(text, path)


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
