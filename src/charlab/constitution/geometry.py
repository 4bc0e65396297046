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

import numpy as np
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
    return word_sets_overlap(frozenset(words(a)), frozenset(words(b)))


def word_sets_overlap(a: frozenset[str], b: frozenset[str]) -> bool:
    """``is_near_duplicate`` on word sets already made (callers that test one text against many)."""
    smaller = min(len(a), len(b))
    return smaller > 0 and len(a & b) / smaller > 0.5


def count_near_duplicates(texts: Sequence[str]) -> int:
    """How many pairs of ``texts`` satisfy ``is_near_duplicate``: the same count as testing every pair.

    Testing every pair is quadratic (tens of seconds at 2k questions), so this only tests the pairs
    that the prefix filter proves include every near duplicate (see ``_near_duplicate_pairs``).
    Texts with the same word set are counted once per set and weighted, since any two of them
    are near duplicates of each other and of whatever the set is a near duplicate of.
    """
    groups = Counter(frozenset(words(text)) for text in texts)
    groups.pop(frozenset(), None)
    sets = list(groups)
    weights = [groups[s] for s in sets]
    within = sum(k * (k - 1) // 2 for k in weights)
    return within + sum(weights[i] * weights[j] for i, j in _near_duplicate_pairs(sets))


PREFIX_HITS = 2
"""How many shared prefix words a pair needs to be checked (at most its threshold): higher checks
fewer pairs but files a word more per set in the index."""


def _near_duplicate_pairs(sets: Sequence[frozenset[str]]) -> Iterator[tuple[int, int]]:
    """Index pairs of distinct, non-empty word sets with |a ∩ b| > min(|a|, |b|) / 2.

    Why no pair is missed (prefix filtering): order all words by rarity and each set's words by
    that order. Let y be the smaller set of a pair, t = |y| // 2 + 1 the words it must share and
    I the shared words, |I| >= t. At most |y| - t words of y are not shared, so y's first
    |y| - t + k words (its prefix, with k = PREFIX_HITS) hold at least k shared words, or all of
    I when t < k. In the larger set x the j-th rarest shared word has at most |x| - t words
    before it that are not shared, so its position in x is at most |x| - t + j - 1. Sets are
    visited from small to large; x looks each of its words up in an index of the prefixes of the
    sets visited before it, among the sets whose t allows that word's position, and a set found
    min(k, t) times is checked exactly (2|I| > |y|, ``is_near_duplicate``'s rule in integers).
    Rare words come first, so common words are rarely in a prefix and the lists stay short.
    """
    rows, visit = _by_size(_rarity_ranked(sets))
    sizes = np.array([len(row) for row in rows], dtype=np.int64)
    starts = np.concatenate(([0], np.cumsum(sizes)[:-1])).astype(np.int64)
    flat = np.fromiter((token for row in rows for token in row), dtype=np.int64, count=int(sizes.sum()))
    needed = np.minimum(PREFIX_HITS, sizes // 2 + 1)
    postings = _prefix_postings(rows)
    member = np.zeros(int(flat.max(initial=-1)) + 1, dtype=bool)  # marks the words of the set being visited
    smaller = np.searchsorted(sizes, np.arange(2 * int(sizes.max(initial=0)) + 2 * PREFIX_HITS))
    for x, row in enumerate(rows):
        candidates = _candidates(x, row, postings, smaller, needed)
        if candidates.size:
            member[row] = True
            shared = _overlaps(member, candidates, sizes, starts, flat)
            member[row] = False
            for y in candidates[2 * shared > sizes[candidates]].tolist():
                yield (visit[y], visit[x]) if visit[y] < visit[x] else (visit[x], visit[y])


def _rarity_ranked(sets: Sequence[frozenset[str]]) -> list[list[int]]:
    """Each set as the sorted ranks of its words, rank 0 the word in fewest sets (ties by spelling)."""
    frequency = Counter(word for s in sets for word in s)
    rank = {word: r for r, word in enumerate(sorted(frequency, key=lambda word: (frequency[word], word)))}
    return [sorted(rank[word] for word in s) for s in sets]


def _by_size(rows: list[list[int]]) -> tuple[list[list[int]], list[int]]:
    """The rows from shortest to longest, and where each came from."""
    visit = sorted(range(len(rows)), key=lambda i: len(rows[i]))
    return [rows[i] for i in visit], visit


def _prefix_postings(rows: Sequence[list[int]]) -> dict[int, np.ndarray]:
    """For each word, the rows (ascending) whose prefix holds it: the first |row| - t + PREFIX_HITS words."""
    lists: dict[int, list[int]] = {}
    for y, row in enumerate(rows):
        for token in row[: len(row) - (len(row) // 2 + 1) + PREFIX_HITS]:
            lists.setdefault(token, []).append(y)
    return {token: np.array(ys, dtype=np.int64) for token, ys in lists.items()}


def _candidates(x: int, row: list[int], postings: dict[int, np.ndarray], smaller: np.ndarray,
                needed: np.ndarray) -> np.ndarray:
    """Rows before ``x`` whose prefix holds enough words of ``row`` at allowed positions.

    Rows are sorted by size, so ``smaller[k]`` (the rows shorter than k) cuts each posting list
    to the sets whose threshold t allows position p: t <= |x| - p + PREFIX_HITS - 1, that is
    |y| < 2 (|x| - p + PREFIX_HITS - 1).
    """
    found = []
    for p, token in enumerate(row):
        hits = postings.get(token)
        if hits is not None:
            limit = min(x, int(smaller[2 * (len(row) - p + PREFIX_HITS - 1)]))
            found.append(hits[: np.searchsorted(hits, limit)])
    if not found:
        return np.empty(0, dtype=np.int64)
    ys, counts = np.unique(np.concatenate(found), return_counts=True)
    return ys[counts >= needed[ys]]


def _overlaps(member: np.ndarray, candidates: np.ndarray, sizes: np.ndarray, starts: np.ndarray,
              flat: np.ndarray) -> np.ndarray:
    """How many ``member`` words each candidate row has, all rows stored end to end in ``flat``."""
    lengths = sizes[candidates]
    ends = np.cumsum(lengths)
    offsets = np.arange(int(ends[-1])) - np.repeat(ends - lengths - starts[candidates], lengths)
    return np.add.reduceat(member[flat[offsets]].astype(np.int64), ends - lengths)


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
        near_duplicates=count_near_duplicates([q.text for q in questions]),
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
