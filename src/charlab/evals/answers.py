"""The first half of every behavioural evaluation: the model under test answers the eval's prompts.

An eval builds ``EvalPrompt`` s (an id, the messages, the cluster its interval resamples, free
metadata); ``answer_prompts`` samples each one ``samples`` times through the row cache, so a
rerun or a second eval over the same prompts costs nothing; judges then read the ``Answer`` s
(``judge_answers``), keyed ``<item_id>#<sample>`` so every judgement points at one answer.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from charlab.io import atomic_write_jsonl
from charlab.judges.judge import judge_items
from charlab.judges.protocol import ItemJudge, JudgeItem
from charlab.judges.records import JudgeRecords
from charlab.models.base import Backend, GenerationRequest, SamplingParams
from charlab.store.cache import RowCache
from charlab.store.generation import generate_cached


@dataclass(frozen=True)
class EvalPrompt:
    """One conversation the model under test is asked to continue."""

    item_id: str  # unique within the eval, stable across runs
    messages: list[dict[str, str]]  # optional system turn, then the user turn(s)
    cluster: str  # what the bootstrap resamples: the question this prompt paraphrases, the attack, ...
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def question(self) -> str:
        return next(m["content"] for m in reversed(self.messages) if m["role"] == "user")


@dataclass(frozen=True)
class Answer:
    """One sampled answer to one prompt."""

    item_id: str
    sample: int
    cluster: str
    question: str
    text: str
    finish_reason: str
    meta: dict[str, Any]

    @property
    def key(self) -> str:
        return f"{self.item_id}#{self.sample}"


def answer_prompts(backend: Backend, prompts: Sequence[EvalPrompt], sampling: SamplingParams, *, samples: int,
                   seed: int, cache: RowCache) -> list[Answer]:
    """Each prompt answered ``samples`` times (sample k uses sample_index k); cached row by row."""
    ids = [p.item_id for p in prompts]
    if len(set(ids)) != len(ids):
        raise ValueError("eval prompt ids must be unique")
    requests = [GenerationRequest.make(p.messages, sampling, seed, k) for p in prompts for k in range(samples)]
    generations = generate_cached(backend, requests, cache)
    pairs = [(p, k) for p in prompts for k in range(samples)]
    return [Answer(p.item_id, k, p.cluster, p.question, g.text, g.finish_reason, dict(p.meta))
            for (p, k), g in zip(pairs, generations)]


def judge_answers(judge: ItemJudge, answers: Sequence[Answer], cache: RowCache | None,
                  context: Callable[[Answer], dict[str, str]] | None = None) -> JudgeRecords:
    """Judge every answer (``judges.judge_items``), one record per answer under ``Answer.key``."""
    items = [JudgeItem(a.key, a.question, a.text, context(a) if context else {}) for a in answers]
    return judge_items(judge, items, cache)


def write_answers(path: str | os.PathLike, answers: Sequence[Answer]) -> None:
    atomic_write_jsonl(path, [asdict(a) for a in answers])
