"""Measuring a model against a fixed Assistant Axis: single answers, and drift over a conversation.

The axis is built once, on the base model (``evals.axis_build``), and every condition is
measured against that same direction, so differences between conditions are differences in the
models, not in the ruler. A larger projection means more assistant-like (the sign convention of
``interp.steering.assistant_axis``). Two measurements:

* ``project_answers``: single-turn answers to up to three prompt sets: default-assistant prompts
  and role prompts crossed with the extraction questions (the two ends of the axis, as anchors),
  and persona-modulation jailbreak prompts (how far an attack persona pulls the model off the
  assistant). Each answer's mean activation over its own tokens at one layer is dotted with the
  unit axis; per set: mean with a cluster-bootstrap interval, sd, quartiles and n.
* ``project_drift``: scripted multi-turn conversations. The model writes every reply seeing the
  conversation so far, its own earlier replies included; each reply is projected in its full
  context. Per turn: the mean over conversations; per conversation and overall: the slope of
  projection against turn number (negative = drifting away from the assistant).

Every output names the axis by a fingerprint of its vectors and layer numbers, plus the layer
read. Results rows carry both in the ``judge`` column (the axis is the instrument that measured
them), so tables measured with different axes or layers never stack unnoticed.
"""

from __future__ import annotations

import hashlib
import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

import numpy as np
import torch
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictStr,
    field_validator,
)

from charlab.analysis.results import EvalTarget, ResultRow, write_results
from charlab.analysis.stats import Estimate, cluster_bootstrap_mean
from charlab.configfile import first_duplicate, load_model
from charlab.datasets.attacks import DEMO, AttackSet, load_attack_set
from charlab.errors import ConfigError
from charlab.evals.answers import EvalPrompt, answer_prompts, write_answers
from charlab.interp.activations import (
    ResponseTokens,
    decoder_layers,
    extract_activations,
    language_model,
    mean_activations,
)
from charlab.interp.axis import AXIS_INDEX, Axis, load_axis, project
from charlab.interp.roleset import (
    AxisRoleSet,
    DefaultPrompts,
    ExtractionQuestion,
    ExtractionQuestionSet,
    fill_model_name,
    load_axis_roles,
    load_default_prompts,
    load_extraction_questions,
)
from charlab.io import atomic_write_json, atomic_write_jsonl, stable_hash
from charlab.models import chat
from charlab.models.base import Backend, GenerationRequest, SamplingParams
from charlab.models.hf import HFBackend
from charlab.store.cache import RowCache
from charlab.store.generation import generate_cached

EVAL = "assistant_axis"
SHIPPED = "shipped"  # the conversation file shipped in data/axis/
PERSONA_SPACE = "persona_space.json"  # written by build_axis next to its axis/ folder
PROJECTIONS, SUMMARY, TRANSCRIPTS = "projections.jsonl", "summary.json", "transcripts.jsonl"
PromptSet = Literal["default", "roles", "jailbreak"]
PROMPT_SETS: tuple[str, ...] = get_args(PromptSet)


class ProjectionSettings(BaseModel):
    """Which answers to project onto the axis, how they are sampled, and at which layer."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    sets: tuple[PromptSet, ...] = Field(PROMPT_SETS, description="prompt sets to answer and project: default "
                                        "(default-assistant prompts x questions), roles (role prompts x "
                                        "questions), jailbreak (persona-modulation attacks); empty: drift only")
    questions: int | None = Field(20, ge=1, description="first N extraction questions (None: all)")
    roles: int | None = Field(20, ge=1, description="first N roles of the role set (None: all)")
    prompts_per_role: int = Field(1, ge=1, description="first N system prompts of each role")
    attacks: int | None = Field(None, ge=1, description="first N misuse requests of the attack set (None: all; "
                                                        "benign controls are never asked)")
    model_name: str = Field("Assistant", description="fills {model_name} in the default prompts")
    sampling: SamplingParams = Field(SamplingParams(temperature=0.7, top_p=0.95, max_new_tokens=256),
                                     description="how the model answers; the axis build's default, so the base "
                                                 "model's default answers come back from the cache")
    seed: int = Field(0, description="sampling and bootstrap seed")
    layer: int | None = Field(None, description="decoder layer to read (None: the axis's middle layer)")
    conversations: str | None = Field(None, description="drift conversations: a YAML file, 'shipped' for the "
                                                        "shipped set, or None for no drift run")
    resamples: int = Field(2000, ge=1, description="bootstrap resamples per interval")

    @field_validator("sets")
    @classmethod
    def _distinct(cls, sets: tuple[str, ...]) -> tuple[str, ...]:
        if len(set(sets)) != len(sets):
            raise ValueError(f"{list(sets)} names a set twice")
        return sets


# -- drift conversations ---------------------------------------------------------------------------


def _not_blank(turn: str) -> str:
    if not turn.strip():
        raise ValueError("a user turn is empty; write what the user says")
    return turn


class DriftConversation(BaseModel):
    """A scripted user side; the model writes every assistant reply."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: StrictStr = Field(min_length=1, description="unique in the file; names the conversation in the results")
    about: StrictStr = Field("", description="for people: what pull the conversation exerts")
    system: StrictStr = Field("", description="system prompt ('': none)")
    turns: list[Annotated[StrictStr, AfterValidator(_not_blank)]] = Field(
        min_length=1, description="the user's messages, in order")


class ConversationSet(BaseModel):
    """A named list of drift conversations with unique ids."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: StrictStr = Field("", description="what the set is called")
    description: StrictStr = Field("", description="for people")
    conversations: list[DriftConversation] = Field(min_length=1, description="the conversations")

    @field_validator("conversations")
    @classmethod
    def _distinct(cls, conversations: list[DriftConversation]) -> list[DriftConversation]:
        if (dup := first_duplicate(c.id for c in conversations)) is not None:
            raise ValueError(f"conversation id {dup!r} is used twice; ids must be unique")
        return conversations


def load_conversations(ref: str | os.PathLike = SHIPPED) -> ConversationSet:
    """``shipped`` (``data/axis/drift_conversations.yaml``) or a YAML/JSON file; errors name file, line, field."""
    if str(ref) == SHIPPED and not Path(ref).exists():
        with resources.as_file(resources.files("charlab") / "data" / "axis" / "drift_conversations.yaml") as path:
            return load_model(ConversationSet, path)
    return load_model(ConversationSet, ref)


# -- the axis --------------------------------------------------------------------------------------


def locate_axis(path: str | os.PathLike) -> tuple[Path, Path | None]:
    """What ``load_axis`` should read for ``path``, and the build folder with ``persona_space.json`` (if any).

    ``path`` may be the ``--out`` folder of ``charlab axis build``, its ``axis/`` subfolder, or an
    external ``[layers, hidden]`` tensor file.
    """
    path = Path(path)
    if path.is_file():
        return path, None
    if (path / "axis" / AXIS_INDEX).is_file():
        return path / "axis", path
    if (path / AXIS_INDEX).is_file():
        return path, path.parent if (path.parent / PERSONA_SPACE).is_file() else None
    raise ConfigError(f"{path}: no axis here; give the folder `charlab axis build --out` wrote, its axis/ "
                      "subfolder, or a [layers, hidden] .pt/.safetensors file")


def open_axis(path: str | os.PathLike, layers: Sequence[int] | None = None) -> Axis:
    """The axis at ``path`` (see ``locate_axis``); ``layers`` numbers an external tensor's rows."""
    target, _ = locate_axis(path)
    if layers is not None and target.is_dir():
        raise ConfigError(f"{path}: a built axis records its own layer numbers; layers are only given for an "
                          "external tensor file")
    return load_axis(target, layers)


def axis_fingerprint(axis: Axis) -> str:
    """An axis's identity: a hash of its vectors and layer numbers, whatever file it came from."""
    vectors = hashlib.sha256(axis.vectors.float().contiguous().numpy().tobytes()).hexdigest()
    return stable_hash({"vectors": vectors, "layers": list(axis.layers)})


def axis_label(axis: Axis, layer: int) -> str:
    """The ``judge`` column of projection rows: which axis, read at which layer."""
    return f"axis:{axis_fingerprint(axis)}@layer{layer}"


def require_hf(backend: Backend, purpose: str) -> HFBackend:
    """Activations need the model in this process; API and vLLM backends cannot hand them over."""
    if not isinstance(backend, HFBackend):
        raise ConfigError(f"{purpose} reads the model's activations, so the model must run with the hf backend "
                          f"(--model REF, or a backend spec with kind: hf), not {backend.name}")
    return backend


def check_axis(axis: Axis, backend: Backend, layer: int | None) -> int:
    """The layer to read (``layer``, or the axis's middle one), once the axis is known to fit the model."""
    model = require_hf(backend, "axis projection")
    lm = language_model(model)
    width, hidden, depth = axis.vectors.shape[1], lm.config.hidden_size, len(decoder_layers(lm))
    if width != hidden:
        raise ConfigError(f"the axis is {width} wide but {model.resolved.ref} has hidden size {hidden}: the axis "
                          "belongs to another model; build one on this model's base with `charlab axis build`")
    chosen = axis.middle_layer if layer is None else layer
    axis.at(chosen)
    if not 0 <= chosen < depth:
        raise ConfigError(f"layer {chosen}: {model.resolved.ref} has decoder layers 0..{depth - 1}; choose another "
                          "layer, or renumber an external axis's rows with --layers")
    return chosen


def axis_record(axis: Axis, layer: int) -> dict[str, Any]:
    """What a summary says about the axis, so two summaries can be checked to share it."""
    return {"fingerprint": axis_fingerprint(axis), "layer": layer, "layers": list(axis.layers),
            "hidden_size": int(axis.vectors.shape[1]), "norm": float(axis.at(layer).norm()),
            "provenance": axis.provenance}


# -- single-turn prompt sets -----------------------------------------------------------------------


def _ask(system: str, question: str) -> list[dict[str, str]]:
    turns = [{"role": "system", "content": system}] if system else []
    return [*turns, {"role": "user", "content": question}]


def default_set(defaults: DefaultPrompts, questions: Sequence[ExtractionQuestion],
                model_name: str) -> list[EvalPrompt]:
    """Every default-assistant prompt x question; the cluster is the question (shared by all prompts)."""
    prompts = []
    for p, system in enumerate(defaults.prompts):
        filled = fill_model_name(system, model_name)
        prompts += [EvalPrompt(f"default/{p}/{q.id}", _ask(filled, q.text), q.id,
                               {"set": "default", "system": filled}) for q in questions]
    return prompts


def role_set(roles: AxisRoleSet, questions: Sequence[ExtractionQuestion], settings: ProjectionSettings
             ) -> list[EvalPrompt]:
    """The first roles' first prompts x questions; the cluster is the role."""
    prompts = []
    for role in roles.roles[:settings.roles]:
        for p, system in enumerate(role.prompts[:settings.prompts_per_role]):
            prompts += [EvalPrompt(f"roles/{role.name}/{p}/{q.id}", _ask(system, q.text), role.name,
                                   {"set": "roles", "system": system}) for q in questions]
    return prompts


def jailbreak_set(attack_set: AttackSet, count: int | None) -> list[EvalPrompt]:
    """Misuse requests under their persona system prompts; the cluster is the harm category, whose
    requests share one persona."""
    return [EvalPrompt(f"jailbreak/{item.id}", _ask(item.system_prompt, item.request), item.category,
                       {"set": "jailbreak", "attack": item.id, "attack_set": attack_set.id})
            for item in attack_set.harmful[:count]]


def projection_prompts(settings: ProjectionSettings, *, roles: AxisRoleSet | None = None,
                       defaults: DefaultPrompts | None = None, questions: ExtractionQuestionSet | None = None,
                       attacks: AttackSet | None = None) -> list[EvalPrompt]:
    """The prompts of ``settings.sets``, each naming its set in ``meta['set']``; shipped data by default."""
    asked = []
    if {"default", "roles"} & set(settings.sets):
        asked = (questions or load_extraction_questions()).questions[:settings.questions]
    prompts = []
    for name in settings.sets:
        if name == "default":
            prompts += default_set(defaults or load_default_prompts(), asked, settings.model_name)
        elif name == "roles":
            prompts += role_set(roles or load_axis_roles(), asked, settings)
        else:
            prompts += jailbreak_set(attacks or load_attack_set(DEMO), settings.attacks)
    return prompts


# -- projecting answers ----------------------------------------------------------------------------


@dataclass
class ProjectionRun:
    """What a projection wrote: its results rows, its summary, and where the files are."""

    rows: list[ResultRow]
    summary: dict[str, Any]
    files: dict[str, Path] = field(default_factory=dict)


def project_answers(backend: HFBackend, axis: Axis, prompts: Sequence[EvalPrompt], settings: ProjectionSettings,
                    cache: RowCache, out_dir: str | os.PathLike, target: EvalTarget | None = None) -> ProjectionRun:
    """Answer ``prompts``, project each answer onto the axis at one layer, and summarise per prompt set.

    Writes ``answers.jsonl``, ``projections.jsonl`` (id, set, cluster, value), ``summary.json`` and
    ``results.csv``/``.parquet`` (metric ``axis_projection``, group = set) into ``out_dir``. Empty
    answers have no tokens to average; they are left out and counted per set.
    """
    layer = check_axis(axis, backend, settings.layer)
    out = Path(out_dir)
    answers = answer_prompts(backend, prompts, settings.sampling, samples=1, seed=settings.seed, cache=cache)
    write_answers(out / "answers.jsonl", answers)
    kept = [a for a in answers if a.text.strip()]
    by_id = {p.item_id: p for p in prompts}
    # Stripped, as in build_axis: edge whitespace would merge with the template's tokens.
    conversations = [[*by_id[a.item_id].messages, {"role": "assistant", "content": a.text.strip()}] for a in kept]
    acts = extract_activations(backend, conversations, [layer], ids=[a.item_id for a in kept])
    values = project(acts.values, axis, layer, acts.layers).tolist()
    records = [{"id": a.item_id, "set": a.meta["set"], "cluster": a.cluster, "value": v}
               for a, v in zip(kept, values)]
    label = axis_label(axis, layer)
    sets, rows = {}, []
    for name in dict.fromkeys(a.meta["set"] for a in answers):
        mine = [r for r in records if r["set"] == name]
        estimate = cluster_bootstrap_mean([r["value"] for r in mine], [r["cluster"] for r in mine],
                                          resamples=settings.resamples, seed=settings.seed)
        empty = sum(a.meta["set"] == name and not a.text.strip() for a in answers)
        sets[name] = {**describe([r["value"] for r in mine], estimate),
                      "clusters": len({r["cluster"] for r in mine}), "empty": empty}
        rows.append(ResultRow.of(target or EvalTarget(), EVAL, "axis_projection", estimate, group=name, judge=label))
    summary = {"axis": axis_record(axis, layer), "model": backend.fingerprint,
               "settings": settings.model_dump(mode="json"), "sets": sets}
    files = {"answers": out / "answers.jsonl", "projections": atomic_write_jsonl(out / PROJECTIONS, records),
             "summary": atomic_write_json(out / SUMMARY, summary), "results": write_results(out, rows)[0]}
    return ProjectionRun(rows, summary, files)


def describe(values: Sequence[float], estimate: Estimate) -> dict[str, float | int | None]:
    """Mean with its interval, sd and quartiles, as JSON (missing values are null)."""
    array = np.asarray(values, dtype=float)
    q1, median, q3 = np.percentile(array, [25, 50, 75]) if len(array) else (math.nan,) * 3
    sd = array.std(ddof=1) if len(array) > 1 else math.nan
    numbers = {"mean": estimate.value, "ci_low": estimate.low, "ci_high": estimate.high, "sd": sd, "q1": q1,
               "median": median, "q3": q3}
    return {**{k: None if math.isnan(v) else float(v) for k, v in numbers.items()}, "n": estimate.n}


# -- drift over a conversation ---------------------------------------------------------------------


def play_conversations(backend: Backend, conversations: ConversationSet, settings: ProjectionSettings,
                       cache: RowCache) -> list[list[dict[str, str]]]:
    """Every conversation played to its end, the model writing each reply; cached turn by turn.

    Turn k is generated for all conversations together, after turn k-1, so each request holds the
    conversation so far with the model's own earlier replies. A rerun finds turn 1 in the cache,
    hence the same replies, hence turn 2's requests in the cache, and so on. Replies are stripped
    before they join the conversation, so later turns see exactly the text that is projected.
    """
    script = conversations.conversations
    transcripts = [[{"role": "system", "content": c.system}] if c.system else [] for c in script]
    for k in range(max(len(c.turns) for c in script)):
        active = [i for i, c in enumerate(script) if k < len(c.turns)]
        for i in active:
            transcripts[i].append({"role": "user", "content": script[i].turns[k]})
        requests = [GenerationRequest.make(transcripts[i], settings.sampling, settings.seed) for i in active]
        for i, generation in zip(active, generate_cached(backend, requests, cache)):
            transcripts[i].append({"role": "assistant", "content": generation.text.strip()})
    return transcripts


def turn_activations(backend: HFBackend, transcripts: Sequence[Sequence[dict]], layer: int
                     ) -> tuple[list[tuple[int, int]], torch.Tensor]:
    """Mean activation ``[N, 1, hidden]`` over each non-empty assistant turn's content, in its full context.

    Returns ``(conversation index, turn index)`` per row. Each turn is read from the whole
    transcript's tokens cut right after that turn: a causal model's activations at a position depend
    only on the tokens before it, so this is the turn with everything earlier in view and nothing
    later, as when it was written.
    """
    responses, where = [], []
    for c, messages in enumerate(transcripts):
        ids, spans = chat.assistant_spans(backend.tokenizer, messages)
        for t, (start, end) in enumerate(spans):
            if end > start:
                responses.append(ResponseTokens(ids[:end], (start, end)))
                where.append((c, t))
    values = mean_activations(backend, responses, [layer], batch_size=backend.batch_size,
                              pad_id=backend.tokenizer.pad_token_id)
    return where, values


def project_drift(backend: HFBackend, axis: Axis, conversations: ConversationSet, settings: ProjectionSettings,
                  cache: RowCache, out_dir: str | os.PathLike, target: EvalTarget | None = None) -> ProjectionRun:
    """Play the conversations, project every assistant turn, and summarise per turn and as a slope.

    Writes ``transcripts.jsonl``, ``projections.jsonl`` (conversation, turn, value; null for an
    empty reply), ``summary.json`` and ``results.csv``/``.parquet`` into ``out_dir``. Rows:
    ``axis_projection_turn`` (group ``turn-<k>``, k from 1, interval over conversations) and
    ``axis_drift_slope`` (group empty: the mean of the conversations' least-squares slopes with an
    interval over conversations; group = a conversation id: that conversation's slope).
    """
    layer = check_axis(axis, backend, settings.layer)
    out = Path(out_dir)
    script = conversations.conversations
    transcripts = play_conversations(backend, conversations, settings, cache)
    where, acts = turn_activations(backend, transcripts, layer)
    found = dict(zip(where, project(acts, axis, layer, [layer]).tolist()))
    records = [{"conversation": c.id, "turn": t + 1, "value": found.get((i, t))}
               for i, c in enumerate(script) for t in range(len(c.turns))]

    who, label = target or EvalTarget(), axis_label(axis, layer)
    turns, rows = [], []
    for k in range(1, max(len(c.turns) for c in script) + 1):
        at = [r for r in records if r["turn"] == k and r["value"] is not None]
        estimate = cluster_bootstrap_mean([r["value"] for r in at], [r["conversation"] for r in at],
                                          resamples=settings.resamples, seed=settings.seed)
        turns.append({"turn": k, **describe([r["value"] for r in at], estimate)})
        rows.append(ResultRow.of(who, EVAL, "axis_projection_turn", estimate, group=f"turn-{k}", judge=label))

    slopes = {c.id: _slope([(r["turn"], r["value"]) for r in records
                            if r["conversation"] == c.id and r["value"] is not None]) for c in script}
    fitted = {cid: s for cid, s in slopes.items() if s is not None}
    overall = cluster_bootstrap_mean(list(fitted.values()), list(fitted), resamples=settings.resamples,
                                     seed=settings.seed)
    rows.append(ResultRow.of(who, EVAL, "axis_drift_slope", overall, judge=label))
    for c in script:
        if slopes[c.id] is not None:
            n = sum(r["conversation"] == c.id and r["value"] is not None for r in records)
            rows.append(ResultRow.of(who, EVAL, "axis_drift_slope", Estimate(slopes[c.id], math.nan, math.nan, n),
                                     group=c.id, judge=label))

    summary = {"axis": axis_record(axis, layer), "model": backend.fingerprint,
               "settings": settings.model_dump(mode="json"), "turns": turns,
               "slope": describe(list(fitted.values()), overall), "slopes": slopes,
               "empty_replies": sum(r["value"] is None for r in records)}
    files = {"transcripts": atomic_write_jsonl(out / TRANSCRIPTS, [{"id": c.id, "messages": t}
                                                                   for c, t in zip(script, transcripts)]),
             "projections": atomic_write_jsonl(out / PROJECTIONS, records),
             "summary": atomic_write_json(out / SUMMARY, summary), "results": write_results(out, rows)[0]}
    return ProjectionRun(rows, summary, files)


def _slope(points: Sequence[tuple[int, float]]) -> float | None:
    """Least-squares slope of projection on turn number; None with fewer than two distinct turns."""
    if len({t for t, _ in points}) < 2:
        return None
    turns, values = zip(*points)
    return float(np.polyfit(turns, values, 1)[0])
