"""What every judge offers its callers: items in, judge records out, plus the ids the records carry.

The model judge (``judges.judge.Judge``) and the keyword heuristic (``judges.heuristic``) both
satisfy ``ItemJudge``, so evaluations and commands take any judge and call it the same way; a
new kind of judge needs no dispatch code anywhere else.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

from charlab.judges.records import JudgeRecords
from charlab.store.cache import RowCache

__all__ = ["ItemJudge", "JudgeItem"]


@dataclass(frozen=True)
class JudgeItem:
    """One thing to judge: the question the model was asked and the answer it gave."""

    item_id: str
    question: str
    answer: str
    context: dict[str, str] = field(default_factory=dict)  # fills a rubric's extra_slots (e.g. role)


class ItemJudge(Protocol):
    """A judge as its callers use it; ``judges.judge.judge_items`` checks item ids and then calls ``judge_batch``."""

    @property
    def fingerprint(self) -> str:
        """Who judged, as every record's ``judge`` field says (a model fingerprint, or ``heuristic:...``)."""
        ...

    @property
    def rubric_id(self) -> str:
        """What was asked, as every record's ``rubric`` field says (``name@hash``)."""
        ...

    @property
    def labels(self) -> tuple[str, ...]:
        """The labels the judge answers with; empty when it gives numeric scores."""
        ...

    @property
    def heuristic(self) -> bool:
        """True for a fixed rule chosen explicitly, not a model: evaluations take its labels as they are
        and report only what they support, instead of demanding a rubric that fits."""
        ...

    def judge_batch(self, items: Sequence[JudgeItem], cache: RowCache | None, *,
                    progress: bool = False) -> JudgeRecords:
        """One record per item, in order, with the batch's parse report."""
        ...

    def close(self) -> None:
        """Release what the judge opened (a backend it built); safe to call when there is nothing."""
        ...
