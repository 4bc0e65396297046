"""The fast near-duplicate pair count must equal testing every pair with `is_near_duplicate`."""

from __future__ import annotations

import random
from itertools import combinations

import pytest

from charlab.constitution import geometry
from charlab.constitution.schema import Constitution
from charlab.datasets.lists import Duplicate, find_duplicate, normalize


def pairwise(texts: list[str]) -> int:
    """The definition, spelled out: every pair tested once."""
    return sum(geometry.is_near_duplicate(a, b) for a, b in combinations(texts, 2))


def random_texts(rng: random.Random, n: int, vocabulary: int, longest: int) -> list[str]:
    """Texts over a small vocabulary, so that many pairs share half their words or nearly.

    Some texts are copies, edited copies or punctuation only; words repeat within a text and
    change case, so word sets, not word lists, must decide.
    """
    words = [f"w{i}" for i in range(vocabulary)] + ["don't", "naïve"]
    texts: list[str] = []
    for _ in range(n):
        roll = rng.random()
        if texts and roll < 0.15:
            texts.append(rng.choice(texts))
        elif texts and roll < 0.3:
            tokens = rng.choice(texts).split() or ["w0"]
            tokens[rng.randrange(len(tokens))] = rng.choice(words)
            texts.append(" ".join(tokens + rng.sample(words, rng.randint(0, 2))))
        elif roll < 0.35:
            texts.append(rng.choice(["", "?!", " ... ", "--"]))
        else:
            picked = rng.choices(words, k=rng.randint(1, longest))
            texts.append(" ".join(w.upper() if rng.random() < 0.1 else w for w in picked) + rng.choice(["?", "", "!"]))
    return texts


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize(("vocabulary", "longest"), [(3, 4), (8, 6), (20, 12), (60, 25)])
def test_count_equals_pairwise_on_random_texts(seed, vocabulary, longest):
    texts = random_texts(random.Random(seed * 1000 + vocabulary), 120, vocabulary, longest)
    assert geometry.count_near_duplicates(texts) == pairwise(texts)


@pytest.mark.parametrize(
    "texts",
    [
        [],
        ["only one"],
        ["", "", "?"],  # no words: never a near duplicate, not even of each other
        ["same", "same", "same", "Same!"],  # one-word and identical: every pair
        ["a", "a b", "a b c", "b c d", "d"],  # one-word sets against longer ones
        ["a a a a b", "a b", "b b b c"],  # repeated words count once
        ["a b", "a c", "a b c d", "c d e f"],  # exactly half is not more than half
        ["x y z", "x y z", "x y", "q"] * 5,  # copies of sets that are near duplicates of each other
    ],
)
def test_count_equals_pairwise_on_edge_cases(texts):
    assert geometry.count_near_duplicates(texts) == pairwise(texts)


def test_count_handles_long_texts_among_short_ones():
    rng = random.Random(7)
    long = " ".join(f"w{i}" for i in range(200))
    texts = [long, long.replace("w5 ", "")] + [" ".join(rng.sample([f"w{i}" for i in range(300)], k)) for k in
                                             (1, 2, 3, 50, 99, 100, 101, 150)]
    assert geometry.count_near_duplicates(texts) == pairwise(texts)


def test_stats_counts_like_pairwise_on_a_random_constitution():
    rng = random.Random(3)
    texts = [t or "?" for t in random_texts(rng, 90, 10, 8)]  # a question needs some text
    traits = [{"statement": f"I am trait {i}.", "questions": texts[i * 30:(i + 1) * 30]} for i in range(3)]
    constitution = Constitution.model_validate({"name": "random", "traits": traits})
    assert geometry.stats(constitution).near_duplicates == pairwise(texts)


@pytest.mark.parametrize("seed", range(6))
def test_find_duplicate_matches_the_plain_scan(seed):
    """Prompt expansion's repeat test caches the kept questions' forms; the answers must not change."""
    rng = random.Random(seed)
    texts = random_texts(rng, 150, 12, 8) + ["W1  w2", "w1 W2?"]
    kept: list[str] = []
    for text in texts:
        exact = next((other for other in kept if normalize(other) == normalize(text)), None)
        near = next((other for other in kept if geometry.is_near_duplicate(text, other)), None)
        expected = Duplicate("exact", exact) if exact is not None else Duplicate("near", near) if near else None
        assert find_duplicate(text, kept) == expected
        if expected is None or rng.random() < 0.3:
            kept.append(text)
