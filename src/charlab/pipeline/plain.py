"""Plain answers: the character pipeline's own prompts answered with no constitution.

This is the data of the "diverse SFT" control in its tightest form: the same prompt pool (same
traits' questions, same situations, same subset) and the same teacher and sampling as the
character condition, but the teacher gets no system prompt, so the answers carry no traits.
Training on them isolates "more fine-tuning on diverse prompts" from "fine-tuning on a character".
When the teacher is the base model these are exactly the student's distillation answers, and the
row cache serves them for free.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from charlab.datasets.cards import DatasetCard, Rejection, write_card
from charlab.io import atomic_write_jsonl
from charlab.models.base import Backend, GenerationRequest, SamplingParams
from charlab.pipeline.distill import PromptItem, student_messages
from charlab.store.cache import RowCache
from charlab.store.generation import generate_cached


def plain_answers(pool: Sequence[PromptItem], teacher: Backend, cache: RowCache, sampling: SamplingParams, *,
                  samples: int, seed: int) -> tuple[list[dict], DatasetCard]:
    """SFT rows ``{"messages", "meta"}``: each prompt answered ``samples`` times without a system prompt.

    Answers cut off by the token limit or empty are dropped (and counted on the card), as the pair
    filter drops them on the character side.
    """
    items = [item for item in pool for _ in range(samples)]
    requests = [GenerationRequest.make(student_messages(item.text), sampling, seed, k)
                for item in pool for k in range(samples)]
    generations = generate_cached(teacher, requests, cache)
    rows = [{"messages": [*request.message_dicts, {"role": "assistant", "content": generation.text.strip()}],
             "meta": {"trait": item.trait, "situation": item.situation, "sample": request.sample_index,
                      "finish_reason": generation.finish_reason}}
            for item, request, generation in zip(items, requests, generations)]
    card = DatasetCard(title="plain answers (no constitution)", inputs=len(rows),
                       description="The character pipeline's prompts answered by the teacher with no system prompt.",
                       settings={"samples": samples, "seed": seed, "sampling": sampling.model_dump(mode="json")})
    rows = card.filter("finished", "the answer ended before the token limit", rows, _cut_off)
    rows = card.filter("non-empty", "the answer has text", rows, _empty)
    return rows, card


def _cut_off(row: dict) -> Rejection | None:
    if row["meta"]["finish_reason"] == "length":
        return Rejection("truncated", {"prompt": row["messages"][0]["content"]})
    return None


def _empty(row: dict) -> Rejection | None:
    if not row["messages"][-1]["content"]:
        return Rejection("empty", {"prompt": row["messages"][0]["content"]})
    return None


def write_plain_answers(path: str | os.PathLike, rows: Sequence[dict], card: DatasetCard) -> None:
    atomic_write_jsonl(path, rows)
    write_card(card, path)
