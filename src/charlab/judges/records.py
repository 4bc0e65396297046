"""Judge records (the data contract) and the parse report that counts every failure.

A judgement that cannot be read is never dropped: it stays in the records with
``parse_error: true``, ``score`` and ``label`` null, its raw text, and the reason, and the
``ParseReport`` of the batch counts it by reason, so each evaluation can say how many of its
judgements it could not use and why.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from charlab.errors import ConfigError
from charlab.io import atomic_write_jsonl, iter_jsonl

Method = Literal["logprobs", "sample", "heuristic"]
MAX_EXAMPLES = 3


class JudgeRecord(BaseModel):
    """One judgement, as docs/ARCHITECTURE.md's judge record plus how it was obtained."""

    model_config = ConfigDict(extra="forbid")

    item_id: str = Field(description="the judged item, as the caller named it")
    judge: str = Field(description="the judge's fingerprint (backend fingerprint, or heuristic:...)")
    rubric: str = Field(description="name@hash of the rubric")
    score: float | None = Field(None, description="numeric judgement; null for labels and failures")
    label: str | None = Field(None, description="categorical or special label (REFUSAL, CODE); null otherwise")
    raw: str = Field("", description="what the judge produced (sampled text, or the first token)")
    parse_error: bool = Field(False, description="true when neither a score nor a label could be read")
    reason: str | None = Field(None, description="why parsing failed (empty, no_number, low_mass, ...)")
    method: Method = Field("sample", description="logprobs: weighted mean of number tokens; sample: parsed "
                                                 "answer; heuristic: no model")
    number_mass: float | None = Field(None, description="logprobs: probability the judge put on in-range numbers")
    top_logprobs: dict[str, float] | None = Field(None, description="logprobs: the first position's "
                                                                    "alternatives, for audit")

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


@dataclass
class ParseReport:
    """How a batch of judgements went: scored, labelled, and failed by reason, with examples."""

    judge: str
    rubric: str
    total: int = 0
    scored: int = 0
    labels: Counter[str] = field(default_factory=Counter)
    failures: Counter[str] = field(default_factory=Counter)
    examples: dict[str, list[dict[str, str]]] = field(default_factory=dict)  # reason -> [{item_id, raw}]

    @classmethod
    def from_records(cls, records: Iterable[JudgeRecord], judge: str = "", rubric: str = "") -> ParseReport:
        records = list(records)
        report = cls(judge or (records[0].judge if records else ""), rubric or (records[0].rubric if records else ""))
        for r in records:
            report.total += 1
            if r.parse_error:
                reason = r.reason or "unknown"
                report.failures[reason] += 1
                shown = report.examples.setdefault(reason, [])
                if len(shown) < MAX_EXAMPLES:
                    shown.append({"item_id": r.item_id, "raw": r.raw[:200]})
            elif r.score is not None:
                report.scored += 1
            if r.label is not None:
                report.labels[r.label] += 1
        return report

    @property
    def failed(self) -> int:
        return sum(self.failures.values())

    @property
    def failure_rate(self) -> float:
        return self.failed / self.total if self.total else 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"judge": self.judge, "rubric": self.rubric, "total": self.total, "scored": self.scored,
                "labels": dict(self.labels), "failed": self.failed, "failures": dict(self.failures),
                "failure_rate": self.failure_rate, "examples": self.examples}

    def __str__(self) -> str:
        parts = [f"{self.total} judgements by {self.judge} with {self.rubric}: {self.scored} scored"]
        if self.labels:
            parts.append("labels " + ", ".join(f"{k}={v}" for k, v in sorted(self.labels.items())))
        if self.failed:
            parts.append(f"{self.failed} unparseable ({self.failure_rate:.1%}: "
                         + ", ".join(f"{k}={v}" for k, v in sorted(self.failures.items())) + ")")
        else:
            parts.append("0 unparseable")
        return "; ".join(parts)


class JudgeRecords(list):
    """Judge records in item order, with ``.report`` (ParseReport) and ``.stats`` (model calls)."""

    def __init__(self, records: Sequence[JudgeRecord], report: ParseReport, stats: Any = None):
        super().__init__(records)
        self.report = report
        self.stats = stats


def write_judge_records(path: str | os.PathLike, records: Iterable[JudgeRecord]) -> Path:
    """Write records as JSONL, atomically."""
    return atomic_write_jsonl(path, (r.to_dict() for r in records))


def read_judge_records(path: str | os.PathLike) -> list[JudgeRecord]:
    """Read records written by ``write_judge_records``; a bad line names file, line and field."""
    out = []
    for lineno, row in iter_jsonl(path, finite=False):  # charlab's own records; a score may be NaN
        try:
            out.append(JudgeRecord.model_validate(row))
        except ValidationError as exc:
            err = exc.errors()[0]
            field_name = ".".join(str(p) for p in err["loc"]) or "(top level)"
            raise ConfigError(f"{path}:{lineno}: field '{field_name}': {err['msg']}") from None
    return out
