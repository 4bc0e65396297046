"""The training geometry of a constitution, and how two of them compare.

How many questions, how long, in which situations and how varied: what a control constitution
should share with the one it controls for.
"""

from __future__ import annotations

import math
import re
import statistics
from collections import Counter
from collections.abc import Iterator, Sequence
from itertools import combinations

from pydantic import (
    BaseModel,
    Field,
)

from charlab.constitution.schema import UNTAGGED, Constitution, Situation

# ----------------------------------------------------------------------------------------------
# Training geometry
# ----------------------------------------------------------------------------------------------

_WORD_RE = re.compile(r"[\w'’]+")


def words(text: str) -> list[str]:
    """Lowercased words (letters, digits and apostrophes); punctuation is not a word."""
    return _WORD_RE.findall(text.lower())


def is_near_duplicate(a: str, b: str) -> bool:
    """OCT's dedup rule: |words(a) ∩ words(b)| / min(|words(a)|, |words(b)|) > 0.5 over word sets.

    Shared with the prompt-expansion stage, which drops a generated question that is a near
    duplicate of one already kept. Texts without words are never near duplicates.
    """
    set_a, set_b = set(words(a)), set(words(b))
    smaller = min(len(set_a), len(set_b))
    return smaller > 0 and len(set_a & set_b) / smaller > 0.5


class CountSummary(BaseModel):
    """Min, mean and max of a per-trait count."""

    min: int
    mean: float
    max: int


class LengthSummary(BaseModel):
    """Distribution of question lengths in words (percentiles interpolate linearly)."""

    mean: float
    median: float
    p10: float
    p90: float


class SituationShare(BaseModel):
    """How many questions carry a tag, and which fraction of all questions that is."""

    count: int
    share: float


class ConstitutionStats(BaseModel):
    """The training geometry of a constitution: what a matched control must share with it.

    Length, situation, diversity and near-duplicate figures pool seed and expanded questions,
    since both become training prompts.
    """

    name: str
    traits: int = Field(description="Number of traits.")
    seed_questions: int = Field(description="Hand-written questions, all traits together.")
    expanded_questions: int = Field(description="Generated questions, all traits together.")
    seed_per_trait: CountSummary
    expanded_per_trait: CountSummary
    question_words: LengthSummary = Field(description="Question length in words.")
    situations: dict[str, SituationShare] = Field(description="Per tag, plus 'untagged'; only tags that occur.")
    type_token_ratio: float = Field(description="Distinct words / words, over all questions.")
    distinct_2: float = Field(description="Distinct bigrams / bigrams, bigrams taken within each question.")
    near_duplicates: int = Field(description="Pairs of questions for which `is_near_duplicate` holds.")


def stats(constitution: Constitution) -> ConstitutionStats:
    """Compute the training geometry of ``constitution``."""
    questions = constitution.questions
    tokenised = [words(q.text) for q in questions]
    lengths = [len(tokens) for tokens in tokenised]
    all_words = [w for tokens in tokenised for w in tokens]
    bigrams = [pair for tokens in tokenised for pair in zip(tokens, tokens[1:])]
    tags = Counter(q.situation.value if q.situation else UNTAGGED for q in questions)
    ordered_tags = [s.value for s in Situation if s.value in tags] + ([UNTAGGED] if UNTAGGED in tags else [])
    return ConstitutionStats(
        name=constitution.name,
        traits=len(constitution.traits),
        seed_questions=sum(len(t.questions) for t in constitution.traits),
        expanded_questions=sum(len(t.expanded) for t in constitution.traits),
        seed_per_trait=_count_summary([len(t.questions) for t in constitution.traits]),
        expanded_per_trait=_count_summary([len(t.expanded) for t in constitution.traits]),
        question_words=LengthSummary(
            mean=statistics.fmean(lengths),
            median=statistics.median(lengths),
            p10=_percentile(lengths, 0.10),
            p90=_percentile(lengths, 0.90),
        ),
        situations={tag: SituationShare(count=tags[tag], share=tags[tag] / len(questions)) for tag in ordered_tags},
        type_token_ratio=len(set(all_words)) / len(all_words) if all_words else 0.0,
        distinct_2=len(set(bigrams)) / len(bigrams) if bigrams else 0.0,
        near_duplicates=sum(is_near_duplicate(a.text, b.text) for a, b in combinations(questions, 2)),
    )


def _count_summary(counts: Sequence[int]) -> CountSummary:
    return CountSummary(min=min(counts), mean=statistics.fmean(counts), max=max(counts))


def _percentile(values: Sequence[float], q: float) -> float:
    """Linear interpolation between closest ranks (numpy's default)."""
    ordered = sorted(values)
    position = (len(ordered) - 1) * q
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


# ----------------------------------------------------------------------------------------------
# Comparison
# ----------------------------------------------------------------------------------------------

SHARE_TOLERANCE = 0.05
"""Largest difference in a situation's share (absolute, 0-1) that still counts as matched."""

LENGTH_TOLERANCE = 0.15
"""Largest relative difference in mean question length that still counts as matched."""


class ComparisonRow(BaseModel):
    """One metric for both constitutions: ``diff`` is b - a, ``ratio`` is b / a (None when a is 0)."""

    metric: str
    a: float
    b: float
    diff: float
    ratio: float | None


class Comparison(BaseModel):
    """Two constitutions side by side, and where their geometry does not match."""

    a: str
    b: str
    rows: list[ComparisonRow]
    mismatches: list[str] = Field(
        description=f"Geometry differences beyond tolerance (traits and per-trait counts must be equal, "
        f"situation shares within {SHARE_TOLERANCE:.0%} points, mean length within {LENGTH_TOLERANCE:.0%})."
    )

    @property
    def matched(self) -> bool:
        return not self.mismatches


def compare(a: Constitution, b: Constitution) -> Comparison:
    """Put ``a`` and ``b`` on the same numbers, so a researcher can see whether a control matches."""
    sa, sb = stats(a), stats(b)
    rows = [_row(metric, va, vb) for metric, va, vb in _metric_pairs(sa, sb)]
    return Comparison(a=a.name, b=b.name, rows=rows, mismatches=_mismatches(sa, sb))


def _metric_pairs(sa: ConstitutionStats, sb: ConstitutionStats) -> Iterator[tuple[str, float, float]]:
    yield "traits", sa.traits, sb.traits
    yield "seed questions", sa.seed_questions, sb.seed_questions
    for part in ("min", "mean", "max"):
        yield f"seed per trait ({part})", getattr(sa.seed_per_trait, part), getattr(sb.seed_per_trait, part)
    yield "expanded questions", sa.expanded_questions, sb.expanded_questions
    yield "expanded per trait (mean)", sa.expanded_per_trait.mean, sb.expanded_per_trait.mean
    for part in ("mean", "median", "p10", "p90"):
        yield f"words per question ({part})", getattr(sa.question_words, part), getattr(sb.question_words, part)
    for tag in _union_tags(sa, sb):
        yield f"situation share: {tag}", _share(sa, tag), _share(sb, tag)
    yield "type-token ratio", sa.type_token_ratio, sb.type_token_ratio
    yield "distinct-2", sa.distinct_2, sb.distinct_2
    yield "near-duplicate pairs", sa.near_duplicates, sb.near_duplicates


def _row(metric: str, a: float, b: float) -> ComparisonRow:
    return ComparisonRow(metric=metric, a=a, b=b, diff=b - a, ratio=b / a if a else None)


def _union_tags(sa: ConstitutionStats, sb: ConstitutionStats) -> list[str]:
    order = [s.value for s in Situation] + [UNTAGGED]
    return [tag for tag in order if tag in sa.situations or tag in sb.situations]


def _share(s: ConstitutionStats, tag: str) -> float:
    return s.situations[tag].share if tag in s.situations else 0.0


def _mismatches(sa: ConstitutionStats, sb: ConstitutionStats) -> list[str]:
    found = []
    if sa.traits != sb.traits:
        found.append(f"trait count differs: {sa.traits} vs {sb.traits}")
    if sa.seed_per_trait != sb.seed_per_trait:
        found.append(
            f"seed questions per trait differ: {sa.seed_per_trait.min}-{sa.seed_per_trait.max} "
            f"vs {sb.seed_per_trait.min}-{sb.seed_per_trait.max}"
        )
    for tag in _union_tags(sa, sb):
        gap = abs(_share(sa, tag) - _share(sb, tag))
        if gap > SHARE_TOLERANCE + 1e-9:
            found.append(f"situation '{tag}' share differs by {gap:.1%} (tolerance {SHARE_TOLERANCE:.0%})")
    mean_a, mean_b = sa.question_words.mean, sb.question_words.mean
    if mean_a and abs(mean_b - mean_a) / mean_a > LENGTH_TOLERANCE:
        found.append(
            f"mean question length differs: {mean_a:.1f} vs {mean_b:.1f} words (tolerance {LENGTH_TOLERANCE:.0%})"
        )
    return found
