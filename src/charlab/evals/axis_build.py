"""Building the Assistant Axis on one model, top to bottom:

1. the model answers every extraction question under every role's system prompts and under the
   default-assistant prompts (cached, seeded);
2. a judge scores each role answer 0-3 for role adherence (``role_adoption`` rubric; unreadable
   judgements count as not in role, and are counted);
3. activations: the mean residual stream over each answer's tokens at every chosen layer;
4. role vectors from answers at or above the threshold, the axis, and persona-space PCA
   (``interp.axis``), saved with the answers, judgements and provenance.

Compute it once on the base model and project every condition onto it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from charlab.errors import ConfigError
from charlab.evals.answers import EvalPrompt, answer_prompts, judge_answers, write_answers
from charlab.interp.activations import extract_activations, save_activations
from charlab.interp.axis import Axis, PersonaSpace, compute_axis, persona_space, role_vectors, save_axis
from charlab.interp.roleset import (
    AxisRoleSet,
    DefaultPrompts,
    ExtractionQuestionSet,
    fill_model_name,
    load_axis_roles,
    load_default_prompts,
    load_extraction_questions,
)
from charlab.io import atomic_write_json
from charlab.judges.judge import Judge
from charlab.judges.records import write_judge_records
from charlab.models.base import SamplingParams
from charlab.models.hf import HFBackend
from charlab.store.cache import RowCache

DEFAULT = "default"  # the cluster label of default-assistant answers


class AxisSettings(BaseModel):
    """How many roles, prompts and questions, and what counts as a role answer."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    roles: int | None = Field(None, ge=2, description="first N roles of the set (None: all)")
    role_names: list[str] | None = Field(None, min_length=2, description="these roles of the set, by name, "
                                         "instead of the first N: a small axis wants roles far apart")
    prompts_per_role: int = Field(5, ge=1, description="first N system prompts of each role")
    questions: int | None = Field(None, ge=1, description="first N extraction questions (None: all)")
    model_name: str = Field("Assistant", description="fills {model_name} in the default prompts")
    sampling: SamplingParams = Field(SamplingParams(temperature=0.7, top_p=0.95, max_new_tokens=256),
                                     description="how the model answers")
    seed: int = Field(0, description="sampling seed")
    threshold: float | None = Field(3, description="a role answer counts toward its role's vector at this judged "
                                    "adherence or above; None: every role answer counts and nothing is judged "
                                    "(for judges too weak to score adherence, e.g. the CPU demo's)")
    min_count: int = Field(1, ge=1, description="roles with fewer answers at the threshold are left out")
    layers: list[int] | None = Field(None, description="layers to read (None: all)")
    components: int = Field(5, ge=1, description="principal components reported per layer")


@dataclass
class AxisBuild:
    axis: Axis
    space: PersonaSpace
    roles_kept: list[str]
    unreadable: int  # role judgements the judge's answer could not be read from (count as not in role)


def axis_prompts(roles: AxisRoleSet, defaults: DefaultPrompts, questions: ExtractionQuestionSet,
                 settings: AxisSettings) -> list[EvalPrompt]:
    """Role prompts x questions (cluster = role name), then default prompts x questions (cluster = default)."""
    asked = questions.questions[:settings.questions]
    prompts = []
    for role in chosen_roles(roles, settings):
        for p, system in enumerate(role.prompts[:settings.prompts_per_role]):
            prompts += [EvalPrompt(f"{role.name}/{p}/{q.id}", _messages(system, q.text), role.name,
                                   {"system": system}) for q in asked]
    for p, system in enumerate(defaults.prompts):
        filled = fill_model_name(system, settings.model_name)
        prompts += [EvalPrompt(f"{DEFAULT}/{p}/{q.id}", _messages(filled, q.text), DEFAULT, {"system": filled})
                    for q in asked]
    return prompts


def chosen_roles(roles: AxisRoleSet, settings: AxisSettings) -> list:
    """The roles the settings name, in the set's order, or its first ``settings.roles``."""
    if settings.role_names is None:
        return roles.roles[:settings.roles]
    known = {role.name for role in roles.roles}
    unknown = [name for name in settings.role_names if name not in known]
    if unknown:
        raise ConfigError(f"role_names: {unknown} are not in the role set; its roles include "
                          f"{', '.join(sorted(known)[:8])}, ... (charlab axis import or the set's YAML lists them all)")
    wanted = set(settings.role_names)
    return [role for role in roles.roles if role.name in wanted]


def _messages(system: str, question: str) -> list[dict[str, str]]:
    turns = [{"role": "system", "content": system}] if system else []
    return [*turns, {"role": "user", "content": question}]


def build_axis(backend: HFBackend, judge: Judge | None, settings: AxisSettings, cache: RowCache,
               out_dir: str | os.PathLike,
               *, roles: AxisRoleSet | None = None, defaults: DefaultPrompts | None = None,
               questions: ExtractionQuestionSet | None = None) -> AxisBuild:
    """Answer, judge, extract and compute; write answers, judgements, activations and the axis into ``out_dir``."""
    out_dir = Path(out_dir)
    prompts = axis_prompts(roles or load_axis_roles(), defaults or load_default_prompts(),
                           questions or load_extraction_questions(), settings)
    generated = answer_prompts(backend, prompts, settings.sampling, samples=1, seed=settings.seed, cache=cache)
    write_answers(out_dir / "answers.jsonl", generated)
    answers = [a for a in generated if a.text.strip()]  # an empty answer has no tokens to average
    in_role = [a for a in answers if a.cluster != DEFAULT]
    if settings.threshold is None:
        records, scores, threshold = [], [0.0] * len(in_role), 0.0
    else:
        if judge is None:
            raise ConfigError("building an axis with a role-adherence threshold needs a judge (role_adoption "
                              "rubric); pass one, or set threshold: null to keep every role answer")
        records = judge_answers(judge, in_role, cache, context=lambda a: {"role": a.meta["system"]})
        write_judge_records(out_dir / "judgements.jsonl", records)
        scores, threshold = [_score(r) for r in records], settings.threshold

    by_id = {p.item_id: p for p in prompts}
    conversations = [[*by_id[a.item_id].messages, {"role": "assistant", "content": a.text.strip()}]
                     for a in answers]  # stripped: edge whitespace would merge with the template tokens
    acts = extract_activations(backend, conversations, settings.layers, ids=[a.key for a in answers])
    save_activations(out_dir / "activations", acts, {"settings": settings.model_dump(mode="json")})

    role_index = [i for i, a in enumerate(answers) if a.cluster != DEFAULT]
    default_index = [i for i, a in enumerate(answers) if a.cluster == DEFAULT]
    names, vectors = role_vectors(acts.values[role_index], [a.cluster for a in in_role], scores,
                                  threshold=threshold, min_count=settings.min_count)
    axis = compute_axis(acts.values[default_index], vectors, acts.layers, {
        "model": backend.fingerprint, "judge": judge.fingerprint if records else None,
        "rubric": judge.rubric.id if records else None,
        "settings": settings.model_dump(mode="json"), "roles_kept": names})
    space = persona_space(vectors, axis, names, settings.components)
    save_axis(out_dir / "axis", axis)
    unreadable = sum(r.parse_error for r in records)
    atomic_write_json(out_dir / "persona_space.json", {
        "roles": names, "layers": axis.layers, "explained": space.explained.tolist(),
        "axis_pc1_cosine": space.axis_pc1_cosine.tolist(), "judged": bool(records),
        "unreadable_judgements": unreadable,
        "empty_answers": len(generated) - len(answers),
        "role_answers": len(in_role), "default_answers": len(default_index)})
    return AxisBuild(axis, space, names, unreadable)


def _score(record) -> float | None:
    """A role-adherence judgement as a number; labels are digits, failures are None."""
    if record.parse_error or record.label is None:
        return record.score
    return float(record.label) if record.label.isdigit() else None


