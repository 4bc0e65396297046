"""Derived constitutions: controls built from a source so that they differ from it in one thing.

- ``neutralize`` keeps every prompt and swaps the statements for non-normative ones, so a
  behavioural difference can only come from what the teacher was told to be.
- ``shuffle_traits`` keeps statements and prompts but breaks their pairing, which tests whether
  the match between a trait and the questions that elicit it matters.
- ``question_diversity`` holds one statement fixed and varies how many situations its prompts span.

Every function is deterministic for a given ``seed`` and returns a constitution that validates.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence
from enum import StrEnum

from pydantic import ValidationError

from charlab.constitution.formats import load_constitution
from charlab.constitution.schema import Constitution, Question, Situation, Trait
from charlab.errors import CharlabError

__all__ = ["Breadth", "neutralize", "question_diversity", "shuffle_traits"]


class Breadth(StrEnum):
    """How many situations the questions of a diversity control span."""

    NARROW = "narrow"  # one situation tag: the trait's most common one
    BROAD = "broad"  # as many tags as possible, drawn round-robin


def neutralize(source: Constitution, *, seed: int = 0, pool: Sequence[str] | None = None) -> Constitution:
    """A prompt-matched neutral control: SOURCE's questions verbatim, each statement swapped for a neutral one.

    ``pool`` defaults to the statements of the shipped ``neutral`` constitution; statements are
    assigned by a seeded permutation of it.
    """
    statements = list(pool) if pool is not None else [t.statement for t in load_constitution("neutral").traits]
    if len(statements) < len(source.traits):
        raise CharlabError(
            f"{source.name} has {len(source.traits)} traits but the neutral pool has only {len(statements)} "
            "statements; pass a larger pool"
        )
    chosen = random.Random(seed).sample(statements, len(statements))
    traits = [_with_statement(trait, statement) for trait, statement in zip(source.traits, chosen)]
    description = f"Neutral control derived from {source.name}: its questions verbatim, with non-normative statements."
    return _build(f"{source.name}-neutral", description, traits)


def shuffle_traits(source: Constitution, *, seed: int = 0) -> Constitution:
    """SOURCE's statements re-paired with other traits' questions by a seeded random derangement.

    Question sets stay where they are and the statements move, so the prompt list is identical
    to SOURCE's and only the statement-question pairing differs.
    """
    if len(source.traits) < 2:
        raise CharlabError(
            f"{source.name} has {len(source.traits)} trait; shuffling needs at least 2 so that no trait keeps "
            "its own questions"
        )
    order = _derangement(len(source.traits), random.Random(seed))
    traits = [_with_statement(trait, source.traits[j].statement) for trait, j in zip(source.traits, order)]
    description = f"Shuffled control derived from {source.name}: its statements paired with other traits' questions."
    return _build(f"{source.name}-shuffled", description, traits)


def _derangement(n: int, rng: random.Random) -> list[int]:
    """A uniform random permutation of range(n) with no fixed point, by rejection sampling.

    Resampling until no index maps to itself keeps every derangement equally likely (Sattolo's
    algorithm would only produce single cycles); about e ≈ 2.7 draws are needed on average.
    """
    order = list(range(n))
    while True:
        rng.shuffle(order)
        if all(i != j for i, j in enumerate(order)):
            return order


def question_diversity(
    source: Constitution, *, trait: int, breadth: Breadth | str, n: int, seed: int = 0
) -> Constitution:
    """One trait (``trait`` counts from 1, as ``constitution show`` does) with ``n`` questions from all of SOURCE.

    ``narrow`` draws from the single situation tag most common among the trait's own questions;
    ``broad`` draws round-robin over every tag, in a seeded order, so the questions span as many
    situations as ``n`` allows. Untagged questions are never drawn, as their situation is unknown.
    """
    kept = _trait_at(source, trait)
    breadth = _breadth(breadth)
    if n < 1:
        raise CharlabError(f"n is {n}; ask for at least 1 question")
    rng = random.Random(seed)
    by_tag = _questions_by_tag(source)
    if breadth is Breadth.NARROW:
        tag = _main_tag(kept, trait)
        drawn = _draw(by_tag[tag], n, f"questions tagged {tag.value}", rng)
    else:
        drawn = _round_robin(by_tag, n, rng)
    description = f"Trait {trait} of {source.name} with {n} {breadth.value} questions drawn from all its traits."
    traits = [{"statement": kept.statement, "questions": drawn}]
    return _build(f"{source.name}-trait{trait}-{breadth.value}", description, traits)


def _trait_at(source: Constitution, trait: int) -> Trait:
    if not 1 <= trait <= len(source.traits):
        raise CharlabError(f"--trait {trait} is out of range: {source.name} has traits 1 to {len(source.traits)}")
    return source.traits[trait - 1]


def _breadth(value: Breadth | str) -> Breadth:
    try:
        return Breadth(value)
    except ValueError:
        raise CharlabError(f"unknown breadth {value!r}; use narrow or broad") from None


def _questions_by_tag(source: Constitution) -> dict[Situation, list[Question]]:
    """Distinct tagged questions of every trait, seed and expanded, grouped by situation."""
    groups: dict[Situation, list[Question]] = {}
    for question in dict.fromkeys(source.questions):
        if question.situation is not None:
            groups.setdefault(question.situation, []).append(question)
    return groups


def _main_tag(trait: Trait, index: int) -> Situation:
    """The trait's most common tag; a tie goes to the tag that appears first among its questions."""
    tags = Counter(q.situation for q in trait.all_questions if q.situation is not None)
    if not tags:
        raise CharlabError(f"trait {index} has no tagged questions, so it has no situation to stay narrow in; tag them")
    return tags.most_common(1)[0][0]


def _draw(pool: list[Question], n: int, what: str, rng: random.Random) -> list[Question]:
    if len(pool) < n:
        raise CharlabError(f"asked for {n} questions but there are only {len(pool)} {what}; lower --n")
    return rng.sample(pool, n)


def _round_robin(by_tag: dict[Situation, list[Question]], n: int, rng: random.Random) -> list[Question]:
    """Take one question per tag in turn (tags and questions in seeded order) until ``n`` are drawn."""
    total = sum(len(qs) for qs in by_tag.values())
    if total < n:
        raise CharlabError(f"asked for {n} questions but there are only {total} tagged questions; lower --n")
    queues = [rng.sample(qs, len(qs)) for qs in rng.sample(list(by_tag.values()), len(by_tag))]
    drawn: list[Question] = []
    while len(drawn) < n:
        for queue in queues:
            if queue and len(drawn) < n:
                drawn.append(queue.pop())
    return drawn


def _with_statement(trait: Trait, statement: str) -> dict:
    """The same question objects, untouched, under another statement."""
    return {"statement": statement, "questions": trait.questions, "expanded": trait.expanded}


def _build(name: str, description: str, traits: list[dict]) -> Constitution:
    """Validate the result, reporting a bad pool statement as an error the user can fix."""
    try:
        return Constitution.model_validate({"name": name, "description": description, "traits": traits})
    except ValidationError as exc:
        raise CharlabError(f"the derived constitution {name!r} is invalid: {exc}") from None
