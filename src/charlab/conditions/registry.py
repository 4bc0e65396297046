"""Every condition kind, by the name a config file selects it with.

The shipped kinds are listed once, at the bottom; adding one is a module beside this one and an
entry in that list. The experiment and study files read their conditions through ``Condition``,
which asks the registry at validation time, so a kind registered later (a test's, a project's
own) is accepted like a shipped one. Everything else (train, plan, audit, report) asks a
condition's kind through ``kind_of`` or a record's through ``kind_named``, never by comparing names.
"""

from __future__ import annotations

import typing
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, PlainValidator, SerializeAsAny, TypeAdapter, ValidationError

from charlab.analysis.groups import Group
from charlab.conditions import base, character, diverse_sft, hhh
from charlab.conditions.kind import ConditionKind, ConditionSpec
from charlab.errors import ConfigError

_KINDS: dict[str, ConditionKind[Any]] = {}


def register(kind: ConditionKind[Any]) -> ConditionKind[Any]:
    """Make ``kind`` selectable by its name in experiment and study files."""
    if kind.name in _KINDS:
        raise ValueError(f"condition kind '{kind.name}' is already registered")
    _KINDS[kind.name] = kind
    return kind


def unregister(name: str) -> None:
    """Take a kind out again (a test's own kind, after the test)."""
    kind_named(name)
    del _KINDS[name]


def registered() -> tuple[ConditionKind[Any], ...]:
    """Every kind, in registration order (the order a bad ``kind`` lists them in)."""
    return tuple(_KINDS.values())


def kind_named(name: object) -> ConditionKind[Any]:
    """The kind of that name; a ``ConfigError`` listing the kinds when there is none."""
    kind = _KINDS.get(name) if isinstance(name, str) else None
    if kind is None:
        raise ConfigError(f"{name!r} is not a condition kind; kinds: {', '.join(_KINDS)}")
    return kind


def kind_of(condition: ConditionSpec) -> ConditionKind[Any]:
    """The kind whose config ``condition`` is."""
    for kind in _KINDS.values():
        if type(condition) is kind.config:
            return kind
    raise ConfigError(f"{type(condition).__name__} is not the config of a registered condition kind; kinds: "
                      f"{', '.join(_KINDS)}")


def record_group(record: Mapping[str, Any], source: str | Path) -> Group:
    """The group a ``condition.json`` record's kind puts it in (read from ``source``, for the error)."""
    try:
        kind = kind_named(record.get("kind"))
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}; register that kind, or override the condition's group (--group "
                          "NAME=GROUP, or the study's analysis.groups)") from None
    if not callable(kind.group):
        return kind.group
    try:
        return kind.group_of(kind.config.model_validate(record.get("spec")))
    except ValidationError as exc:
        raise ConfigError(f"{source}: its spec is not a valid '{kind.name}' condition ({exc.error_count()} "
                          f"problems, first: {exc.errors()[0]['msg']}); rerun the experiment to rewrite it") from None


@lru_cache(maxsize=8)
def _union(configs: tuple[type[ConditionSpec], ...]) -> TypeAdapter[ConditionSpec]:
    choices: Any = typing.Union.__getitem__(configs)
    return TypeAdapter(Annotated[choices, Field(discriminator="kind")])


def _by_kind(value: object) -> ConditionSpec:
    """Validate one condition as the registered kind its ``kind`` names."""
    return _union(tuple(k.config for k in _KINDS.values())).validate_python(value)


# One condition mapping, read as the kind it names; dumped with its own kind's fields.
Condition = Annotated[SerializeAsAny[ConditionSpec], PlainValidator(_by_kind)]


SHIPPED = (base.BASE, character.CHARACTER, character.PROMPT_MATCHED_NEUTRAL, character.SHUFFLED_TRAITS,
           character.QUESTION_DIVERSITY, base.ADAPTER, diverse_sft.DIVERSE_SFT, hhh.HHH)
for _kind in SHIPPED:
    register(_kind)
