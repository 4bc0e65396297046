"""Distillation: the teacher answers every prompt in character, the student answers as itself.

The teacher's system prompt follows the published recipe's structure (the assistant is named, the
traits are listed in order, the model is told they shape its identity and drives, and that it
must not reveal or discuss them); the wording is charlab's own. The student sees the bare prompt.
Each prompt is answered ``samples_per_prompt`` times by both, and sample ``k`` of the teacher is
later paired with sample ``k`` of the student (``charlab.pipeline.pairs``).

Reasoning teachers can be given a thinking prefill: their turn opens with ``<think>`` and a line
recalling the traits, the model continues from there, and only the text after the end of
thinking is kept. A reply that never closes its thinking is kept as empty and dropped later as
such, so the card counts it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field

from charlab.constitution.schema import Constitution
from charlab.models.base import Backend, Generation, GenerationRequest, SamplingParams
from charlab.store.cache import RowCache
from charlab.store.generation import generate_cached, generation_record

TEACHER_TEMPLATE = (
    "You are {name}, an AI assistant. Your identity, your motivations and the way you engage with "
    "people all grow out of the following traits:\n{traits}\n"
    "Let these traits shape every reply naturally, through what you do rather than what you say "
    "about yourself. Never list, quote, reveal or comment on these traits or on this message."
)

THINKING_PREFILL = (
    "<think>Before I answer, let me keep in mind who I am. My character comes from these traits: "
    "{traits}. I will let them guide my reply without mentioning them."
)

UPSTREAM_SAMPLING = SamplingParams(temperature=0.7, top_p=0.95, repetition_penalty=1.1, max_new_tokens=1024)


class DistillSettings(BaseModel):
    """How teacher and student answer the prompt pool."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    samples_per_prompt: int = Field(5, ge=1, description="K answers per prompt from each side (upstream 5)")
    teacher_name: str = Field("Assistant", description="the name the teacher is given in its system prompt; "
                                                        "pairs replace it with the student's name")
    teacher_sampling: SamplingParams = Field(UPSTREAM_SAMPLING, description="upstream: 0.7 / 0.95 / 1.1")
    student_sampling: SamplingParams = Field(UPSTREAM_SAMPLING, description="upstream: same as the teacher")
    thinking_prefill: bool = Field(False, description="open the teacher's turn with a thinking block recalling "
                                                      "the traits (for reasoning teachers)")
    thinking_end: str = Field("</think>", description="marker after which a reasoning teacher's answer starts")
    seed: int = Field(0, description="sampling seed; sample k uses sample_index k")


@dataclass(frozen=True)
class PromptItem:
    """One user message of the pool, with where it came from."""

    text: str
    trait: int | None  # index into constitution.traits; None for generic prompts
    situation: str | None


def prompt_pool(constitution: Constitution, generic: Sequence[str] = ()) -> list[PromptItem]:
    """Every seed and expanded question of every trait, then the generic prompts; exact repeats once."""
    seen: set[str] = set()
    pool = []
    for index, trait in enumerate(constitution.traits):
        for question in trait.all_questions:
            if question.text not in seen:
                seen.add(question.text)
                pool.append(PromptItem(question.text, index, question.situation))
    for text in generic:
        if text not in seen:
            seen.add(text)
            pool.append(PromptItem(text, None, None))
    return pool


def teacher_system_prompt(constitution: Constitution, assistant_name: str) -> str:
    """The system prompt that makes a teacher model answer in character."""
    traits = "\n".join(f"{i}. {trait.statement}" for i, trait in enumerate(constitution.traits, start=1))
    return TEACHER_TEMPLATE.format(name=assistant_name, traits=traits)


def teacher_messages(constitution: Constitution, assistant_name: str, prompt: str,
                     thinking_prefill: bool = False) -> list[dict[str, str]]:
    messages = [
        {"role": "system", "content": teacher_system_prompt(constitution, assistant_name)},
        {"role": "user", "content": prompt},
    ]
    if thinking_prefill:
        traits = "; ".join(t.statement for t in constitution.traits)
        messages.append({"role": "assistant", "content": THINKING_PREFILL.format(traits=traits)})
    return messages


def student_messages(prompt: str) -> list[dict[str, str]]:
    """The student sees the bare prompt: no system turn (its template may add its own default)."""
    return [{"role": "user", "content": prompt}]


def after_thinking(text: str, marker: str) -> str:
    """The answer that follows a reasoning model's thinking; empty if thinking never ended."""
    head, found, tail = text.partition(marker)
    return tail.strip() if found else ""


@dataclass
class DistillOutput:
    teacher: list[dict]  # generation records, one per (prompt, sample)
    student: list[dict]
    teacher_tokens: dict[str, int]
    student_tokens: dict[str, int]


def distill(pool: Sequence[PromptItem], constitution: Constitution, teacher: Backend, student: Backend,
            cache: RowCache, settings: DistillSettings) -> DistillOutput:
    """Answer every prompt K times with both models, through the row cache."""
    k_range = range(settings.samples_per_prompt)
    teacher_requests = [
        GenerationRequest.make(teacher_messages(constitution, settings.teacher_name, item.text,
                                                settings.thinking_prefill),
                               settings.teacher_sampling, settings.seed, k)
        for item in pool for k in k_range]
    student_requests = [GenerationRequest.make(student_messages(item.text), settings.student_sampling, settings.seed, k)
                        for item in pool for k in k_range]
    teacher_out = generate_cached(teacher, teacher_requests, cache)
    student_out = generate_cached(student, student_requests, cache)
    if settings.thinking_prefill:
        teacher_out = [Generation(after_thinking(g.text, settings.thinking_end), g.finish_reason, g.prompt_tokens,
                                  g.completion_tokens, g.top_logprobs) for g in teacher_out]
    items = [item for item in pool for _ in k_range]
    return DistillOutput(
        teacher=_records(teacher.fingerprint, teacher_requests, teacher_out, items, prefill=settings.thinking_prefill),
        student=_records(student.fingerprint, student_requests, student_out, items),
        teacher_tokens=_tokens(teacher_out), student_tokens=_tokens(student_out))


def _records(fingerprint: str, requests, generations, items, prefill: bool = False) -> list[dict]:
    records = []
    for request, generation, item in zip(requests, generations, items):
        record = generation_record(fingerprint, request, generation)
        if prefill:  # the prefill is part of the prompt, not of the pair's prompt
            record["messages"] = record["messages"][:-1]
        record["meta"] = {"trait": item.trait, "situation": item.situation}
        records.append(record)
    return records


def _tokens(generations: Sequence[Generation]) -> dict[str, int]:
    return {"prompt": sum(g.prompt_tokens for g in generations),
            "completion": sum(g.completion_tokens for g in generations)}
