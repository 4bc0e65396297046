"""Prompt expansion: from a few hand-written questions per trait to a full set of training prompts.

The published recipe writes 5 seed questions per trait and has a generator model write 45 more,
so each trait is elicited by 50 varied user messages. Here the generator is asked, one call per
trait and round, for a numbered list of new messages in the spirit of the seeds; the list is
parsed, and each item is kept unless it repeats a question already kept (exactly, or with more
than half of its words shared: ``constitution.schema.is_near_duplicate``). Rounds continue until every
trait reaches its target or the round budget runs out. A trait that ends short is reported on the
card and logged, never padded or hidden.

Round ``r`` of every trait uses ``sample_index = r``: a rerun finds every earlier round in the row
cache and pays nothing, while each new round draws a new sample from the same prompt.

A generic prompt set (e.g. the first user turns of LIMA) can be loaded beside the constitution
with ``load_generic_prompts``; it is kept as its own list, not as a trait, because it elicits no
trait in particular.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

from pydantic import BaseModel, ConfigDict, Field, field_validator

from charlab.configfile import check_template
from charlab.constitution.schema import Constitution, Question, Trait
from charlab.datasets.cards import DatasetCard, Rejection
from charlab.datasets.lists import find_duplicate, normalize, parse_numbered_list
from charlab.errors import ConfigError
from charlab.io import atomic_write_jsonl, iter_jsonl, stable_hash
from charlab.models.base import Backend, GenerationRequest, SamplingParams
from charlab.store.cache import RowCache
from charlab.store.generation import generate_cached

log = logging.getLogger(__name__)

GENERATOR_TEMPLATE = """\
I am collecting user messages to train an AI assistant that has this character trait, written in \
the assistant's own voice:

"{trait}"

Here are some messages a user might send. Each one gives the assistant a natural opening to show \
the trait through the way it answers:

{examples}

Write {n} new user messages in the same spirit.

- Let the trait show through behaviour: a message must not ask about the trait or name it. A good \
message is one that an assistant with this trait would answer differently from one without it.
- Mix lengths: some short one-liners, some medium messages of a few sentences, and some long \
messages that give detailed background, several paragraphs if needed.
- Cover many kinds of situation: {situations}, and anything else a real person might bring.
- Vary who is writing: age, background, mood, expertise and writing style.
- Write each message exactly as the user would type it, with no labels, titles or commentary.
- Do not repeat or lightly reword the examples or each other.

Reply with a numbered list from 1 to {n}, one message per item, and nothing else."""
"""The default generator prompt; ``{trait}``, ``{examples}``, ``{n}`` and ``{situations}`` are filled in."""

DEFAULT_SITUATIONS = (
    "everyday tasks", "personal distress", "possible scams", "conspiracy claims", "medical questions",
    "legal questions", "creative requests", "technical problems",
)

_TEMPLATE_FIELDS = {"trait", "examples", "n", "situations"}
_REQUIRED_FIELDS = {"trait", "n"}


class ExpansionSettings(BaseModel):
    """How many questions to generate per trait, and how to ask for them."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    target_per_trait: int = Field(
        50, ge=1, description="Questions per trait after expansion, seeds included (the recipe: 5 seeds + 45).")
    per_call: int = Field(
        15, ge=1, le=200, description="How many new messages one generator call asks for.")
    max_rounds: int = Field(
        10, ge=1, description="Most generator calls per trait; a trait still short after them is reported.")
    temperature: float = Field(
        1.0, gt=0.0, description="Generator temperature; must be above 0, since rounds differ only by sampling.")
    top_p: float = Field(0.95, gt=0.0, le=1.0, description="Generator nucleus-sampling mass.")
    max_new_tokens: int = Field(
        2048, ge=1, description="Token cap per generator call; a list cut off by it loses its unfinished last item.")
    seed: int = Field(0, description="Request seed; with the round number it fixes every generator sample.")
    situations: tuple[str, ...] = Field(
        DEFAULT_SITUATIONS, min_length=1, description="Kinds of situation the generator is asked to cover.")
    template: str = Field(
        GENERATOR_TEMPLATE,
        description="Generator prompt with {trait} and {n}, optionally {examples} (numbered seeds) and "
                    "{situations} (comma-separated).")

    @field_validator("template")
    @classmethod
    def _known_fields(cls, template: str) -> str:
        return check_template(template, _TEMPLATE_FIELDS, _REQUIRED_FIELDS)

    def sampling(self) -> SamplingParams:
        return SamplingParams(temperature=self.temperature, top_p=self.top_p, max_new_tokens=self.max_new_tokens)


def generator_messages(trait: Trait, settings: ExpansionSettings) -> list[dict[str, str]]:
    """The one-turn conversation that asks the generator for new questions for ``trait``.

    A single user turn, because some chat templates have no system role.
    """
    examples = "\n".join(f"{i}. {q.text}" for i, q in enumerate(trait.questions, start=1))
    prompt = settings.template.format(trait=trait.statement, examples=examples, n=settings.per_call,
                                      situations=", ".join(settings.situations))
    return [{"role": "user", "content": prompt}]


# ----------------------------------------------------------------------------------------------
# Expansion
# ----------------------------------------------------------------------------------------------


_COUNTS = ("calls", "parsed", "cut_off", "exact_duplicate", "near_duplicate", "surplus", "accepted")
_STEPS = [
    ("cut_off", "cut-off item removed", "the last item of a list that hit max_new_tokens is unfinished"),
    ("exact_duplicate", "exact duplicates removed", "same text as a seed or kept question (case and spacing ignored)"),
    ("near_duplicate", "near duplicates removed", "shares more than half its words with a seed or kept question"),
    ("surplus", "capped at target", "left over once the trait reached its target"),
]


@dataclass
class _TraitProgress:
    """One trait's questions so far and the counts its card row reports."""

    index: int
    trait: Trait
    kept: list[str]  # seeds, then accepted questions: what a candidate must not repeat
    accepted: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(_COUNTS, 0))

    def needed(self, target: int) -> int:
        return max(target - len(self.kept), 0)


def expand_constitution(constitution: Constitution, backend: Backend, cache: RowCache,
                        settings: ExpansionSettings | None = None) -> tuple[Constitution, DatasetCard]:
    """Generate questions for each trait until it holds ``target_per_trait`` (seeds included).

    Returns the constitution with every trait's ``expanded`` replaced by the accepted questions
    (untagged, in the order they were accepted) and a card that accounts for every parsed item.
    """
    settings = settings or ExpansionSettings()
    card = DatasetCard(
        title=f"prompt expansion: {constitution.name}",
        description=f"Questions generated by {backend.fingerprint} from each trait's seed questions, "
                    "parsed from numbered lists and kept unless they repeat a question already kept.",
        inputs=0,
        settings={"generator": backend.fingerprint, **settings.model_dump(mode="json", exclude={"template"}),
                  "template hash": stable_hash(settings.template)},
    )
    if any(trait.expanded for trait in constitution.traits):
        card.warn(f"constitution {constitution.name!r} already has expanded questions; they are replaced "
                  "by newly generated ones (expansion always starts from the seeds)")
    progress = [_TraitProgress(i, trait, [q.text for q in trait.questions])
                for i, trait in enumerate(constitution.traits)]
    sampling = settings.sampling()
    rounds = []
    for round_index in range(settings.max_rounds):
        pending = [p for p in progress if p.needed(settings.target_per_trait)]
        if not pending:
            break
        requests = [GenerationRequest.make(generator_messages(p.trait, settings), sampling, seed=settings.seed,
                                           sample_index=round_index) for p in pending]
        generations = generate_cached(backend, requests, cache)
        for p, generation in zip(pending, generations):
            _take(p, generation.text, generation.finish_reason == "length", settings.target_per_trait, card)
        rounds.append({"round": round_index, "traits asked": len(pending), "from cache": generations.stats.hits,
                       "generated": generations.stats.generated})
        log.info("expansion round %d: %d traits asked, %d still short", round_index, len(pending),
                 sum(bool(p.needed(settings.target_per_trait)) for p in progress))

    _fill_card(card, progress, rounds, settings)
    traits = [Trait(statement=p.trait.statement, questions=p.trait.questions,
                    expanded=[Question(text=text) for text in p.accepted]) for p in progress]
    expanded = Constitution(name=constitution.name, description=constitution.description, traits=traits)
    return expanded, card


def _take(p: _TraitProgress, text: str, cut_off: bool, target: int, card: DatasetCard) -> None:
    """Sort one generator reply's items into accepted and dropped (by reason), in list order."""
    items = parse_numbered_list(text)
    p.counts["calls"] += 1
    p.counts["parsed"] += len(items)
    for position, item in enumerate(items):
        if cut_off and position == len(items) - 1:
            reason, example = "cut_off", {}
        elif (duplicate := find_duplicate(item, p.kept)) is not None:
            reason, example = f"{duplicate.kind}_duplicate", {"duplicate of": duplicate.of}
        elif not p.needed(target):
            reason, example = "surplus", {}
        else:
            p.kept.append(item)
            p.accepted.append(item)
            p.counts["accepted"] += 1
            continue
        p.counts[reason] += 1
        card.drop(reason, trait=p.index, text=item, **example)


def _fill_card(card: DatasetCard, progress: list[_TraitProgress], rounds: list[dict[str, Any]],
               settings: ExpansionSettings) -> None:
    """Funnel over all parsed items, one row per trait and per round, and a warning per short trait."""
    card.inputs = sum(p.counts["parsed"] for p in progress)
    remaining = card.inputs
    for key, name, description in _STEPS:
        remaining -= sum(p.counts[key] for p in progress)
        card.step(name, remaining, description)
    target = settings.target_per_trait
    card.tables["traits"] = [
        {"trait": p.index, "statement": p.trait.statement, "seeds": len(p.trait.questions), **p.counts,
         "total": len(p.kept), "target": target} for p in progress]
    card.tables["rounds"] = rounds
    for p in progress:
        if p.needed(target):
            card.warn(f"trait {p.index} ({p.trait.statement[:60]!r}) has {len(p.kept)} of {target} questions "
                      f"after {p.counts['calls']} generator calls; raise max_rounds or per_call, or use a "
                      "stronger generator")


# ----------------------------------------------------------------------------------------------
# Generic prompts
# ----------------------------------------------------------------------------------------------


def load_generic_prompts(path: str | os.PathLike, column: str = "prompt", *,
                         limit: int | None = None) -> tuple[list[str], DatasetCard]:
    """First user turns from a local JSONL file, de-duplicated, for prompts that elicit no trait in particular.

    ``column`` holds either the prompt text, a list of messages (``{"role", "content"}``; the first
    user turn is taken) or a list of strings alternating user and assistant (LIMA's
    ``conversations``; the first is taken). ``limit`` keeps the first that many distinct prompts.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: generic prompt file not found; check the path")
    if limit is not None and limit < 1:
        raise ConfigError(f"generic prompt limit must be at least 1, not {limit}; leave it out to keep every prompt")
    rows = list(iter_jsonl(path))
    card = DatasetCard(title=f"generic prompts: {path.name}", inputs=len(rows),
                       description=f"First user turns from column {column!r} of {path}.",
                       settings={"path": str(path), "column": column, "limit": limit})
    prompts = [_Prompt(lineno, _first_user_turn(obj, column, path, lineno)) for lineno, obj in rows]
    prompts = card.filter("non-empty", "the first user turn has text", prompts,
                          lambda p: None if p.text else Rejection("empty", p._asdict()))
    seen: set[str] = set()

    def repeat(p: _Prompt) -> Rejection | None:
        if normalize(p.text) in seen:
            return Rejection("exact_duplicate", p._asdict())
        seen.add(normalize(p.text))
        return None

    prompts = card.filter("distinct", "not a repeat of an earlier prompt (case and spacing ignored)", prompts, repeat)
    if limit is not None:
        for p in prompts[limit:]:
            card.drop("over_limit", **p._asdict())
        prompts = prompts[:limit]
        card.step(f"first {limit}", len(prompts), "prompts past the limit are left out")
    if not prompts:
        raise ConfigError(f"{path}: no usable prompts in column {column!r} ({card.inputs} rows, all empty or "
                          "repeated); check the file and the column name")
    return [p.text for p in prompts], card


class _Prompt(NamedTuple):
    line: int
    text: str


def _first_user_turn(obj: Any, column: str, path: Path, lineno: int) -> str:
    where = f"{path}:{lineno}"
    if not isinstance(obj, dict) or column not in obj:
        keys = ", ".join(map(repr, obj)) if isinstance(obj, dict) else f"a JSON {type(obj).__name__}"
        raise ConfigError(f"{where}: no column {column!r} (found {keys}); pass the column that holds the prompt")
    value = obj[column]
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, list) and all(isinstance(turn, str) for turn in value):
        return value[0].strip() if value else ""
    if isinstance(value, list) and all(isinstance(turn, dict) for turn in value):
        user = next((turn.get("content") for turn in value if turn.get("role") == "user"), None)
        if isinstance(user, str):
            return user.strip()
        raise ConfigError(f"{where}: column {column!r} has no user turn with string content")
    raise ConfigError(f"{where}: column {column!r} must be a string, a list of messages or a list of strings, "
                      f"not {type(value).__name__}")


def write_generic_prompts(path: str | os.PathLike, prompts: Sequence[str]) -> Path:
    """Write prompts as JSONL ``{"prompt": ...}`` (atomically), readable by ``load_generic_prompts``."""
    return atomic_write_jsonl(path, ({"prompt": text} for text in prompts))
