"""Dataset cards: how many items each filter kept, what it dropped and why.

A training set that silently shrank from 500 pairs to 40 is the kind of failure that wastes a
study, so every stage that filters data (prompt expansion, preference pairs, introspection, SFT)
fills one ``DatasetCard`` as it goes and writes it next to the data: JSON for code, Markdown for
people. A card is a funnel (``inputs`` then one ``Step`` per filter, in the order they ran), the
drops grouped by reason with a few examples each, stage-specific tables (per trait, per round)
and warnings.

Typical use::

    card = DatasetCard(title="preference pairs", inputs=len(items))
    items = card.filter("non-empty", "both responses have text", items, check_empty)
    ...
    write_card(card, "pairs.jsonl")   # -> pairs.card.json and pairs.card.md
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

from pydantic import BaseModel, Field

from charlab.io import atomic_write_json, atomic_write_text

__all__ = ["DatasetCard", "DropReason", "Rejection", "Step", "card_paths", "write_card"]

log = logging.getLogger(__name__)

T = TypeVar("T")

EXAMPLE_CHARS = 200
"""Longest string kept in a card example; cards summarise, the data files hold the full text."""


class Rejection(NamedTuple):
    """Why a filter dropped one item: a short reason key and a small example for the card."""

    reason: str
    example: dict[str, Any]


class Step(BaseModel):
    """One filter, as it ran: how many items it removed and how many were left."""

    name: str
    description: str = ""
    dropped: int
    remaining: int


class DropReason(BaseModel):
    """Every drop with the same reason: how many, and the first few as examples."""

    count: int = 0
    examples: list[dict[str, Any]] = Field(default_factory=list)


class DatasetCard(BaseModel):
    """What a stage did to its data, filled step by step as the stage runs."""

    title: str = Field(description="What the dataset is, e.g. 'preference pairs: integrity'.")
    description: str = Field("", description="One or two sentences on how the data was made.")
    inputs: int = Field(description="Items before the first filter.")
    steps: list[Step] = Field(default_factory=list, description="Filters in the order they ran.")
    drops: dict[str, DropReason] = Field(default_factory=dict, description="Drops grouped by reason.")
    tables: dict[str, list[dict[str, Any]]] = Field(
        default_factory=dict, description="Stage-specific tables, e.g. one row per trait.")
    warnings: list[str] = Field(default_factory=list, description="Things a researcher must not miss.")
    settings: dict[str, Any] = Field(default_factory=dict, description="The settings the stage ran with.")
    max_examples: int = Field(3, ge=0, description="Examples kept per drop reason.")

    @property
    def outputs(self) -> int:
        """Items left after the last filter."""
        return self.steps[-1].remaining if self.steps else self.inputs

    def drop(self, reason: str, **example: Any) -> None:
        """Count one dropped item under ``reason``, keeping it as an example while there is room."""
        entry = self.drops.setdefault(reason, DropReason())
        entry.count += 1
        if len(entry.examples) < self.max_examples:
            entry.examples.append({key: _clip(value) for key, value in example.items()})

    def step(self, name: str, remaining: int, description: str = "") -> None:
        """Record a filter that left ``remaining`` items (dropped = what the previous step left minus that)."""
        before = self.outputs
        if not 0 <= remaining <= before:
            raise ValueError(f"step {name!r}: {remaining} remaining after {before} is not a filter")
        self.steps.append(Step(name=name, description=description, dropped=before - remaining, remaining=remaining))

    def filter(self, name: str, description: str, items: Iterable[T],
               check: Callable[[T], Rejection | None]) -> list[T]:
        """Keep the items ``check`` accepts (returns None), record the others, and add the step."""
        kept = []
        for item in items:
            rejection = check(item)
            if rejection is None:
                kept.append(item)
            else:
                self.drop(rejection.reason, **rejection.example)
        self.step(name, len(kept), description)
        return kept

    def warn(self, message: str) -> None:
        """Record a warning on the card and log it, so it is seen now and found later."""
        self.warnings.append(message)
        log.warning(message)

    def to_markdown(self) -> str:
        """The card for people: funnel, drops with examples, tables, warnings, settings."""
        out = [f"# {self.title}", ""]
        if self.description:
            out += [self.description, ""]
        out += [f"{self.inputs} in, {self.outputs} out.", ""]
        if self.warnings:
            out += ["## Warnings", "", *(f"- {w}" for w in self.warnings), ""]
        if self.steps:
            rows = [{"step": "input", "dropped": "", "remaining": self.inputs, "what it checks": ""}]
            rows += [{"step": s.name, "dropped": s.dropped, "remaining": s.remaining, "what it checks": s.description}
                     for s in self.steps]
            out += ["## Filters, in order", "", *_markdown_table(rows), ""]
        if self.drops:
            out += ["## Drops by reason", ""]
            for reason, entry in self.drops.items():
                out.append(f"### {reason} ({entry.count})")
                out += ["", *(f"- {_one_line(example)}" for example in entry.examples), ""]
        for name, rows in self.tables.items():
            if rows:
                out += [f"## {name}", "", *_markdown_table(rows), ""]
        if self.settings:
            out += ["## Settings", "", *(f"- `{k}`: {_cell(v)}" for k, v in self.settings.items()), ""]
        return "\n".join(out)


def card_paths(data_path: str | os.PathLike) -> tuple[Path, Path]:
    """Where the card of a data file lives: ``pairs.jsonl`` -> ``pairs.card.json``, ``pairs.card.md``."""
    path = Path(data_path)
    return path.with_name(f"{path.stem}.card.json"), path.with_name(f"{path.stem}.card.md")


def write_card(card: DatasetCard, data_path: str | os.PathLike) -> tuple[Path, Path]:
    """Write ``card`` next to its data file as JSON and Markdown, each atomically."""
    json_path, md_path = card_paths(data_path)
    atomic_write_json(json_path, card.model_dump(mode="json"))
    atomic_write_text(md_path, card.to_markdown())
    return json_path, md_path


def _clip(value: Any) -> Any:
    if isinstance(value, str) and len(value) > EXAMPLE_CHARS:
        return value[:EXAMPLE_CHARS - 1] + "…"
    return value


def _cell(value: Any) -> str:
    return " ".join(str(value).split()).replace("|", "\\|")


def _one_line(example: dict[str, Any]) -> str:
    return "; ".join(f"{key}: {_cell(value)}" for key, value in example.items())


def _markdown_table(rows: list[dict[str, Any]]) -> list[str]:
    columns = list(dict.fromkeys(key for row in rows for key in row))
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(row.get(c, "")) for c in columns) + " |" for row in rows]
    return lines
