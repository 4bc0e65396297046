"""Introspection data: the DPO-trained model reflects on itself and talks with a copy of itself.

The last stage before SFT. The backend passed in is the model *with* its DPO adapter; what it
writes here, about itself and to itself, becomes the SFT data that deepens the character.

Self-reflection. Each prompt in ``data/introspection/reflection_prompts.yaml`` is sampled
``reflection_samples`` times (``sample_index`` 0..n-1) with no system prompt by default, since the
trained model must carry its character without one. Each answer is one SFT example::

    {"messages": [user, assistant], "meta": {"kind": "reflection", "prompt_id", "sample_index"}}

Self-interaction. Two copies A and B of the model talk for ``turns`` generated turns. A scripted
greeting (``data/introspection/greetings.yaml``) opens the conversation as A's first user turn,
so A speaks first and the copies alternate: A, B, A, ... Each copy sees its own turns as
``assistant`` and the other's as ``user``::

    A's view: [system] user:greeting  assistant:A1  user:B2  assistant:A3 ...
    B's view: [system]                user:A1       assistant:B2  user:A3 ...

B's view starts at A's first turn: the greeting is scripted text, not something B wrote, so it
must carry no loss, and chat templates such as Gemma's and Mistral's reject a conversation that
opens with an assistant turn. Apart from the greeting, B's view is A's with the roles swapped.
Every turn a copy spoke is an assistant turn of its own example (each view is cut after its
copy's last turn, since a trailing turn of the other copy would carry no loss)::

    {"messages": [...], "meta": {"kind": "interaction", "variant", "conversation", "perspective"}}

The variants differ in their greetings *and* in a written-out guidance system prompt (``free``:
no agenda; ``leading``: explore your character). Texts may use ``{name}``, filled with the
assistant name; any placeholder left unfilled is an error before anything is generated.

Generation goes turn by turn: each turn is one ``generate_cached`` call over every live
conversation, from the speaking copy's point of view, so a killed run resumes from cached turns.

Filtering. A turn that came back empty or stopped at ``max_new_tokens`` ends its
conversation there: the turns before it are kept, and no later turn is generated, since the other
copy would be answering a broken message. A truncated turn ends mid-sentence, and the SFT trainer
puts loss on the end-of-turn token after it, teaching the model to stop mid-thought; so it is
dropped unless ``keep_truncated`` is set. Reflection answers follow the same rules one by one.
The dataset card (``charlab.datasets.cards``) counts what was generated, kept and dropped, by reason.
"""

from __future__ import annotations

import logging
import os
import random
import re
from collections import Counter
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Annotated, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator, model_validator

from charlab.configfile import read_structured, validate
from charlab.datasets.cards import DatasetCard, write_card
from charlab.errors import ConfigError
from charlab.io import atomic_write_jsonl, stable_hash
from charlab.models.base import Backend, Generation, GenerationRequest, SamplingParams, check_messages
from charlab.store.cache import RowCache
from charlab.store.generation import GenerationStats, generate_cached

log = logging.getLogger(__name__)

Variant = Literal["free", "leading"]
Perspective = Literal["A", "B"]
Example = dict  # {"messages": [...], "meta": {...}}, the SFT contract

DROP_REASONS = ("empty", "truncated")
_PLACEHOLDER = re.compile(r"\{\w*\}")
_Text = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1)]
M = TypeVar("M", bound=BaseModel)


# ----------------------------------------------------------------------------------------------
# Settings and texts
# ----------------------------------------------------------------------------------------------


def _upstream_sampling() -> SamplingParams:
    return SamplingParams(temperature=0.7, top_p=0.95, repetition_penalty=1.1, max_new_tokens=1024)


class IntrospectionSettings(BaseModel):
    """How much introspection data to generate, and how."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    reflection_samples: int = Field(
        1000, ge=0, description="Answers sampled per reflection prompt (sample_index 0..n-1); 0 skips reflection.")
    reflection_system: str | None = Field(
        None, description="System prompt for the reflection prompts (may use {name}). None, the default, asks "
                          "them bare: the trained model has to hold its character without a prompt.")
    conversations: int = Field(
        1000, ge=0, description="Self-interaction conversations per variant; 0 skips self-interaction.")
    turns: int = Field(
        10, ge=2, description="Generated turns per conversation, alternating A, B, A, ... (the scripted "
                              "greeting is not counted). At least 2, so both copies speak.")
    include_variants: tuple[Variant, ...] = Field(
        ("free", "leading"), min_length=1, description="Self-interaction variants to generate.")
    guidance: bool = Field(
        True, description="Give both copies a system prompt: the name line (when an assistant name is given) and "
                          "the variant's guidance. False sends none; the variants then differ only by "
                          "greeting, as upstream's did (its guidance placeholder was never filled).")
    keep_truncated: bool = Field(
        False, description="Keep turns and answers that stopped at max_new_tokens. Off by default: they end "
                           "mid-sentence, and the end-of-turn token after them carries loss in SFT.")
    sampling: SamplingParams = Field(
        default_factory=_upstream_sampling,
        description="Sampling for every generation: upstream's temperature 0.7, top_p 0.95 and repetition "
                    "penalty 1.1; 1024 new tokens, so few turns are cut as truncated.")
    seed: int = Field(0, description="Seed of every request and of the greeting draw.")
    reflection_prompts_file: Path | None = Field(
        None, description="YAML of reflection prompts; None uses charlab's data/introspection/reflection_prompts.yaml.")
    greetings_file: Path | None = Field(
        None, description="YAML of interaction variants (guidance + greetings); None uses charlab's "
                          "data/introspection/greetings.yaml.")

    @field_validator("include_variants")
    @classmethod
    def _distinct(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if len(set(value)) != len(value):
            raise ValueError("a variant is listed twice")
        return value


class ReflectionPrompt(BaseModel):
    """One question that asks the model about itself."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]*$", description="Slug recorded in each example's meta.")
    text: _Text


class _ReflectionFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    prompts: list[ReflectionPrompt] = Field(min_length=1)

    @field_validator("prompts")
    @classmethod
    def _unique_ids(cls, prompts: list[ReflectionPrompt]) -> list[ReflectionPrompt]:
        ids = Counter(p.id for p in prompts)
        twice = sorted(i for i, n in ids.items() if n > 1)
        if twice:
            raise ValueError(f"prompt ids must be unique; repeated: {', '.join(twice)}")
        return prompts


class VariantTexts(BaseModel):
    """What makes one self-interaction variant: its guidance and its openers."""

    model_config = ConfigDict(extra="forbid")

    guidance: _Text = Field(description="System prompt both copies get.")
    greetings: list[_Text] = Field(min_length=1, description="Openers; one per conversation, drawn by seed.")


class _GreetingsFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    name_line: _Text = Field(description="Put in front of the guidance when an assistant name is given.")
    variants: dict[Variant, VariantTexts]

    @model_validator(mode="after")
    def _variants_differ(self) -> _GreetingsFile:
        texts = list(self.variants.values())
        if len({t.guidance for t in texts}) < len(texts):
            raise ValueError("variants must differ in their guidance text, not only in greetings")
        greetings = [g for t in texts for g in t.greetings]
        if len(set(greetings)) < len(greetings):
            raise ValueError("a greeting appears twice; variants must not share greetings")
        return self


def _load(model: type[M], path: Path | None, shipped: str) -> tuple[M, str]:
    """Validate a texts file (the shipped one when ``path`` is None); return it and its name for errors."""
    if path is None:
        with resources.as_file(resources.files("charlab") / "data" / "introspection" / shipped) as real:
            data, lines = read_structured(real)
            return validate(model, data, shipped, lines), shipped
    data, lines = read_structured(path)
    return validate(model, data, path, lines), str(path)


def _fill(text: str, name: str | None, where: str) -> str:
    """``text`` with ``{name}`` filled; a placeholder that cannot be filled raises, so none reaches a message."""
    if name is not None:
        text = text.replace("{name}", name)
    left = _PLACEHOLDER.findall(text)
    if left:
        hint = ("pass an assistant name or remove it" if left[0] == "{name}"
                else "only {name} can be filled; write the text out")
        raise ConfigError(f"{where}: unfilled placeholder {left[0]} in {text!r}; {hint}")
    return text


@dataclass(frozen=True)
class _Texts:
    """Every scripted text of a run, placeholders filled and checked."""

    reflection_system: str | None
    prompts: list[tuple[str, str]]  # (id, text)
    systems: dict[str, str | None]  # variant -> system prompt
    greetings: dict[str, list[str]]  # variant -> greetings

    def digest(self) -> str:
        return stable_hash(asdict(self))


def _prepare_texts(settings: IntrospectionSettings, name: str | None) -> _Texts:
    """Load, fill and check every scripted text up front, so a bad one fails before any generation."""
    reflection, reflection_src = _load(_ReflectionFile, settings.reflection_prompts_file, "reflection_prompts.yaml")
    variants, variants_src = _load(_GreetingsFile, settings.greetings_file, "greetings.yaml")
    missing = [v for v in settings.include_variants if v not in variants.variants]
    if missing:
        raise ConfigError(f"{variants_src}: no texts for variant(s) {', '.join(missing)}; add them under "
                          "'variants' or leave them out of include_variants")
    systems, greetings = {}, {}
    for v in settings.include_variants:
        texts = variants.variants[v]
        parts = [_fill(texts.guidance, name, f"{variants_src}: variants.{v}.guidance")]
        if name is not None:
            parts.insert(0, _fill(variants.name_line, name, f"{variants_src}: name_line"))
        systems[v] = "\n\n".join(parts) if settings.guidance else None
        greetings[v] = [_fill(g, name, f"{variants_src}: variants.{v}.greetings[{i}]")
                        for i, g in enumerate(texts.greetings)]
    system = settings.reflection_system
    return _Texts(
        reflection_system=_fill(system, name, "settings.reflection_system") if system else None,
        prompts=[(p.id, _fill(p.text, name, f"{reflection_src}: prompt {p.id}")) for p in reflection.prompts],
        systems=systems,
        greetings=greetings,
    )


# ----------------------------------------------------------------------------------------------
# Generation
# ----------------------------------------------------------------------------------------------


def _defect(generation: Generation, keep_truncated: bool) -> str | None:
    """Why a generated turn cannot be trained on (one of DROP_REASONS), or None."""
    if not generation.text.strip():
        return "empty"
    if generation.finish_reason == "length" and not keep_truncated:
        return "truncated"
    return None


def _add(total: GenerationStats, part: GenerationStats) -> None:
    for key, value in asdict(part).items():
        setattr(total, key, getattr(total, key) + value)


def _system(text: str | None) -> list[dict[str, str]]:
    return [{"role": "system", "content": text}] if text else []


def _reflections(backend: Backend, cache: RowCache, settings: IntrospectionSettings, texts: _Texts,
                 stats: GenerationStats, card: DatasetCard) -> list[Example]:
    """One SFT example per usable answer; sample-major order, so any prefix covers every prompt."""
    asked = [(pid, index, _system(texts.reflection_system) + [{"role": "user", "content": text}])
             for index in range(settings.reflection_samples) for pid, text in texts.prompts]
    requests = [GenerationRequest.make(messages, settings.sampling, settings.seed, index)
                for _, index, messages in asked]
    outputs = generate_cached(backend, requests, cache)
    _add(stats, outputs.stats)
    examples, kept = [], Counter()
    for (pid, index, messages), generation in zip(asked, outputs):
        reason = _defect(generation, settings.keep_truncated)
        if reason:
            card.drop(reason, prompt_id=pid, sample_index=index, text=generation.text)
            continue
        kept[pid] += 1
        examples.append({
            "messages": messages + [{"role": "assistant", "content": generation.text.strip()}],
            "meta": {"kind": "reflection", "prompt_id": pid, "sample_index": index},
        })
    card.step("usable reflections", card.outputs - (len(asked) - len(examples)),
              "reflection answers that are not empty and "
              + ("may be truncated" if settings.keep_truncated else "did not stop at max_new_tokens"))
    card.tables["reflection prompts"] = [{"prompt_id": pid, "generated": settings.reflection_samples, "kept": kept[pid]}
                                         for pid, _ in texts.prompts]
    return examples


@dataclass
class _Conversation:
    """A scripted greeting, then turns spoken alternately by copy A (even turns) and copy B (odd turns)."""

    variant: str
    index: int
    system: str | None
    greeting: str
    turns: list[str] = field(default_factory=list)
    ended_by: str | None = None  # the DROP_REASON that stopped it early

    def view(self, perspective: Perspective) -> list[dict[str, str]]:
        """The conversation as one copy sees it: its own turns as assistant, the other's as user."""
        messages = _system(self.system)
        if perspective == "A":
            messages.append({"role": "user", "content": self.greeting})
        for turn, text in enumerate(self.turns):
            speaker = "A" if turn % 2 == 0 else "B"
            messages.append({"role": "assistant" if speaker == perspective else "user", "content": text})
        return messages

    def example(self, perspective: Perspective) -> Example | None:
        """The copy's view up to its last turn, or None if it never spoke a kept turn."""
        messages = self.view(perspective)
        while messages and messages[-1]["role"] != "assistant":
            messages.pop()
        if not messages:
            return None
        meta = {"kind": "interaction", "variant": self.variant, "conversation": self.index, "perspective": perspective}
        return {"messages": messages, "meta": meta}


def _interactions(backend: Backend, cache: RowCache, settings: IntrospectionSettings, texts: _Texts,
                  stats: GenerationStats, card: DatasetCard) -> list[Example]:
    """Run every conversation turn by turn, one cached batch per turn, then cut both views of each."""
    conversations = []
    for variant in settings.include_variants:
        draw = random.Random(f"{settings.seed}/{variant}")
        conversations += [_Conversation(variant, i, texts.systems[variant], draw.choice(texts.greetings[variant]))
                          for i in range(settings.conversations)]
    conversations.sort(key=lambda c: c.index)  # conversation-major, so any prefix covers every variant

    asked = Counter()  # variant -> turns requested
    for turn in range(settings.turns):
        live = [c for c in conversations if c.ended_by is None]
        if not live:
            break
        speaker = "A" if turn % 2 == 0 else "B"
        # sample_index = conversation number: two conversations that drew the same greeting still differ.
        requests = [GenerationRequest.make(c.view(speaker), settings.sampling, settings.seed, c.index) for c in live]
        outputs = generate_cached(backend, requests, cache)
        _add(stats, outputs.stats)
        for conversation, generation in zip(live, outputs):
            asked[conversation.variant] += 1
            conversation.ended_by = _defect(generation, settings.keep_truncated)
            if not conversation.ended_by:
                conversation.turns.append(generation.text.strip())

    examples = []
    for conversation in conversations:
        for perspective in ("A", "B"):
            example = conversation.example(perspective)
            if example is None:
                card.drop("never_spoke", variant=conversation.variant, conversation=conversation.index,
                          perspective=perspective, cut_by=conversation.ended_by)
            else:
                examples.append(example)
    card.step("speaking views", card.outputs - (2 * len(conversations) - len(examples)),
              "each copy's view of a conversation, kept if that copy spoke at least one kept turn")
    card.tables["self-interaction"] = [_variant_row(v, conversations, asked[v], examples)
                                       for v in settings.include_variants]
    return examples


def _variant_row(variant: str, conversations: list[_Conversation], asked: int, examples: list[Example]) -> dict:
    """Turn counts of one variant; ``cut_<reason>`` counts conversations that a bad turn ended early."""
    mine = [c for c in conversations if c.variant == variant]
    cut = Counter(c.ended_by for c in mine)
    return {"variant": variant, "conversations": len(mine), "complete": cut[None],
            "turns_generated": asked, "turns_kept": sum(len(c.turns) for c in mine),
            **{f"cut_{reason}": cut[reason] for reason in DROP_REASONS},
            "examples": sum(e["meta"]["variant"] == variant for e in examples if e["meta"]["kind"] == "interaction")}


def _interleave(first: list[Example], second: list[Example]) -> list[Example]:
    """Alternate two lists while both last, then the rest of the longer one.

    Any prefix of the result then samples both kinds (useful when a budget cuts the data), and
    ``datasets``' JSON loader, which infers the schema from the file's first chunk, sees both
    ``meta`` shapes; with only one there, it fails on the first chunk holding the other.
    """
    out = [e for pair in zip(first, second) for e in pair]
    n = min(len(first), len(second))
    return out + first[n:] + second[n:]


def generate_introspection(backend: Backend, cache: RowCache, settings: IntrospectionSettings, *,
                           assistant_name: str | None = None) -> tuple[list[Example], DatasetCard]:
    """Self-reflection and self-interaction SFT examples from ``backend`` (the DPO-trained model), and their card.

    Every scripted text is filled and checked before the first generation, so a bad placeholder
    costs nothing. The card's funnel starts from every reflection answer and every conversation
    view (two per conversation); its tables hold per-prompt and per-variant counts and the
    generation totals (a rerun of a finished job shows ``hits == requests``).
    """
    texts = _prepare_texts(settings, assistant_name)
    n_reflections = settings.reflection_samples * len(texts.prompts)
    n_views = 2 * settings.conversations * len(settings.include_variants)
    card = DatasetCard(
        title="introspection SFT data",
        description="Self-reflection answers and self-interaction conversations (both copies' views) generated "
                    "by the DPO-trained model; loss goes on assistant turns only.",
        inputs=n_reflections + n_views,
        settings={"model": backend.fingerprint, "assistant_name": assistant_name, "texts_digest": texts.digest(),
                  **settings.model_dump(mode="json")},
    )
    stats = GenerationStats()
    reflections = _reflections(backend, cache, settings, texts, stats, card) if n_reflections else []
    interactions = _interactions(backend, cache, settings, texts, stats, card) if n_views else []
    card.tables["generation"] = [asdict(stats)]
    examples = _interleave(reflections, interactions)
    log.info("introspection: %d examples (%d reflection, %d interaction); %s",
             len(examples), len(reflections), len(interactions), stats)
    return examples, card


def write_sft_dataset(path: str | os.PathLike, examples: list[Example], card: DatasetCard | None = None) -> Path:
    """Write SFT examples as JSONL, atomically, each checked against the SFT contract first; and the
    card, if given, next to it (``<stem>.card.json`` and ``.card.md``)."""
    rows = []
    for i, example in enumerate(examples):
        messages = check_messages(example["messages"], where=f"examples[{i}].messages")
        if not any(m["role"] == "assistant" for m in messages):
            raise ValueError(f"examples[{i}]: no assistant turn, so nothing to learn")
        rows.append({"messages": messages, "meta": dict(example.get("meta", {}))})
    path = atomic_write_jsonl(path, rows)
    if card is not None:
        write_card(card, path)
    return path


def reflection_prompt_count(path: Path | None = None) -> int:
    """How many reflection prompts a file (default: the shipped one) holds; for cost estimates."""
    reflection, _ = _load(_ReflectionFile, path, "reflection_prompts.yaml")
    return len(reflection.prompts)
