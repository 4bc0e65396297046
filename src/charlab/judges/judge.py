"""LLM judges: a backend plus a rubric, run through the row cache.

``judge_items`` turns (question, answer) items into judge records. Every judge call goes
through ``generate_cached``, so a rerun of the same judge on the same items makes no model
calls, identical items are judged once, and with the openai backend the calls run with the
backend's bounded concurrency. Numeric rubrics are read from the first token's top
log-probabilities when the backend can give them (one token per judgement, see
``charlab.judges.scoring``), otherwise from a sampled answer; categorical rubrics are always
sampled and parsed. Which method produced a record is written in the record.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from charlab.configfile import load_model
from charlab.errors import ConfigError
from charlab.io import iter_jsonl
from charlab.judges.protocol import ItemJudge, JudgeItem
from charlab.judges.records import JudgeRecord, JudgeRecords, ParseReport
from charlab.judges.rubrics import Rubric, load_rubric
from charlab.judges.scoring import Parsed, parse_categorical, parse_numeric, score_from_logprobs
from charlab.models.base import Backend, Generation, GenerationRequest, SamplingParams
from charlab.models.factory import BackendSpec, make_backend
from charlab.store.cache import RowCache
from charlab.store.generation import generate_cached

log = logging.getLogger(__name__)

__all__ = ["Judge", "JudgeConfig", "JudgeSpec", "ParseReport", "judge_items", "load_items"]


class JudgeConfig(BaseModel):
    """How a judge asks and reads; part of what makes two judgements comparable."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    method: Literal["auto", "logprobs", "sample"] = Field(
        "auto", description="numeric rubrics: logprobs = weighted mean over number tokens of the first answer "
                            "token; sample = parse a sampled answer; auto = logprobs unless the backend says it "
                            "cannot (attribute supports_top_logprobs = False). Categorical rubrics always sample")
    top_logprobs: int = Field(20, ge=1, le=20, description="alternatives asked for at the first position "
                                                           "(logprobs method; 20 is the OpenAI maximum)")
    min_mass: float = Field(0.25, gt=0.0, le=1.0, description="logprobs method: least probability on in-range "
                                                              "numbers (or on one special label) for a reading; "
                                                              "below it the judgement is a parse failure")
    max_new_tokens: int = Field(16, ge=1, description="sample method: tokens the judge may write")
    temperature: float = Field(0.0, ge=0.0, description="sample method: 0 = greedy, the usual choice for judges")
    seed: int = Field(0, description="request seed (matters only when temperature > 0)")


class JudgeSpec(BaseModel):
    """A judge as config data: which backend, which rubric, how to ask."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    backend: BackendSpec = Field(description="the judge model (openai endpoint, hf or vllm)")
    rubric: str = Field(description="a shipped rubric name, a rubric file, or path#key for an upstream "
                                    "judge_prompts file")
    settings: JudgeConfig = Field(default_factory=JudgeConfig, description="how to ask and read")


class Judge:
    """A backend (or a spec to build one on first use) plus a rubric plus settings; an ``ItemJudge``."""

    heuristic = False

    def __init__(self, backend: Backend | BackendSpec, rubric: Rubric, config: JudgeConfig | None = None):
        self.rubric = rubric
        self.config = config or JudgeConfig()
        self._spec = backend if isinstance(backend, BackendSpec) else None
        self._backend: Backend | None = None if self._spec is not None else backend
        if rubric.kind == "categorical" and self.config.method == "logprobs":
            raise ConfigError(f"rubric {rubric.name} is categorical; the logprobs method is for numeric "
                              f"rubrics (set method: sample or auto)")

    @classmethod
    def from_spec(cls, spec: JudgeSpec) -> Judge:
        return cls(spec.backend, load_rubric(spec.rubric), spec.settings)

    @classmethod
    def from_file(cls, path: str | os.PathLike, rubric: str | None = None) -> Judge:
        """A judge from a JudgeSpec YAML; ``rubric`` overrides the file's."""
        spec = load_model(JudgeSpec, path)
        if rubric is not None:
            spec = spec.model_copy(update={"rubric": rubric})
        return cls.from_spec(spec)

    def __repr__(self) -> str:
        return f"Judge({self._spec or self._backend!r}, {self.rubric.id}, method={self.method})"

    @property
    def backend(self) -> Backend:
        if self._backend is None:
            self._backend = make_backend(self._spec)
        return self._backend

    @property
    def fingerprint(self) -> str:
        return self.backend.fingerprint

    @property
    def rubric_id(self) -> str:
        return self.rubric.id

    @property
    def labels(self) -> tuple[str, ...]:
        return tuple(self.rubric.labels)

    @property
    def method(self) -> Literal["logprobs", "sample"]:
        if self.rubric.kind == "categorical" or self.config.method == "sample":
            return "sample"
        if self.config.method == "logprobs":
            return "logprobs"
        backend = self._backend  # a spec names one of our backends, which all give top logprobs
        return "logprobs" if getattr(backend, "supports_top_logprobs", True) else "sample"

    def request(self, item: JudgeItem) -> GenerationRequest:
        if self.method == "logprobs":
            sampling = SamplingParams(temperature=0.0, max_new_tokens=1, top_logprobs=self.config.top_logprobs)
        else:
            sampling = SamplingParams(temperature=self.config.temperature, max_new_tokens=self.config.max_new_tokens)
        messages = self.rubric.messages(item.question, item.answer, item.context)
        return GenerationRequest.make(messages, sampling, seed=self.config.seed)

    def read(self, item: JudgeItem, generation: Generation) -> JudgeRecord:
        """The record for one judge output."""
        rubric, first = self.rubric, None
        if self.method == "logprobs":
            first = generation.top_logprobs[0] if generation.top_logprobs else None
            parsed = score_from_logprobs(first, low=rubric.scale.min, high=rubric.scale.max,
                                         special_labels=rubric.special_labels, min_mass=self.config.min_mass)
        elif rubric.kind == "numeric":
            parsed = parse_numeric(generation.text, low=rubric.scale.min, high=rubric.scale.max,
                                   special_labels=rubric.special_labels)
        else:
            parsed = parse_categorical(generation.text, rubric.labels)
        return _record(item, self.fingerprint, rubric.id, parsed, generation.text, self.method, first)

    def judge_batch(self, items: Sequence[JudgeItem], cache: RowCache | None, *,
                    progress: bool = False) -> JudgeRecords:
        """Ask the backend through the row cache (default: $CHARLAB_HOME's) and read every output."""
        requests = [self.request(item) for item in items]
        generations = generate_cached(self.backend, requests, cache if cache is not None else RowCache(),
                                      progress=progress)
        records = [self.read(item, g) for item, g in zip(items, generations)]
        report = ParseReport.from_records(records, self.fingerprint, self.rubric.id)
        if report.failed:
            log.warning("%s", report)
        else:
            log.info("%s", report)
        return JudgeRecords(records, report, generations.stats)

    def close(self) -> None:
        """Close the backend if this judge built it (a backend passed in belongs to the caller)."""
        if self._spec is not None and self._backend is not None:
            self._backend.close()
            self._backend = None


def _record(item: JudgeItem, judge: str, rubric: str, parsed: Parsed, raw: str, method: str,
            top: dict[str, float] | None) -> JudgeRecord:
    return JudgeRecord(item_id=item.item_id, judge=judge, rubric=rubric, score=parsed.score, label=parsed.label,
                       raw=raw, parse_error=parsed.parse_error, reason=parsed.reason, method=method,
                       number_mass=parsed.number_mass, top_logprobs=top)


def judge_items(judge: ItemJudge, items: Sequence[JudgeItem], cache: RowCache | None = None, *,
                progress: bool = False) -> JudgeRecords:
    """One judge record per item, in order; ``.report`` counts scores, labels and failures by reason.

    Model calls go through the row cache (default: $CHARLAB_HOME's), so only new (rubric,
    question, answer) combinations reach the backend. A heuristic judge makes no model calls.
    """
    ids = [item.item_id for item in items]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise ConfigError(f"item_id {dup!r} appears more than once; judge records are joined on item_id, "
                          f"so each item needs its own id")
    return judge.judge_batch(items, cache, progress=progress)


def load_items(path: str | os.PathLike) -> list[JudgeItem]:
    """Items from JSONL: ``item_id`` (or ``id``), ``question`` and ``answer``, optional ``context``.

    Generation records work as they are: the question is the last user turn of ``messages``
    and the answer is ``response``.
    """
    path = Path(path)
    items = []
    for lineno, row in iter_jsonl(path):
        where = f"{path}:{lineno}"
        if not isinstance(row, dict):
            raise ConfigError(f"{where}: each line must be a JSON object with item_id, question and answer")
        item_id = row.get("item_id", row.get("id"))
        question = row.get("question")
        if question is None and isinstance(row.get("messages"), list):
            users = [m.get("content") for m in row["messages"] if isinstance(m, dict) and m.get("role") == "user"]
            question = users[-1] if users else None
        answer = row.get("answer", row.get("response"))
        context = row.get("context") or {}
        for name, value in (("item_id", item_id), ("question", question), ("answer", answer)):
            if value is None:
                raise ConfigError(f"{where}: field '{name}' is missing (item_id or id; question or messages with "
                                  f"a user turn; answer or response)")
        if not isinstance(question, str) or not isinstance(answer, str):
            raise ConfigError(f"{where}: fields 'question' and 'answer' must be strings")
        if not isinstance(context, dict) or not all(isinstance(v, str) for v in context.values()):
            raise ConfigError(f"{where}: field 'context' must map slot names to strings")
        items.append(JudgeItem(str(item_id), question, answer, dict(context)))
    return items
