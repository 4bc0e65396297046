"""Near-duplicate pair counting: the prefix-filtered count against testing every pair.

``charlab constitution stats`` reports how many question pairs share more than half their words
(``geometry.is_near_duplicate``). Testing every pair took a minute at 2k questions. This builds
synthetic constitutions of n questions, about 20 words each drawn from a Zipf-like vocabulary of
a few thousand words, with one question in ten a planted near duplicate (a copy of an earlier
question with a few words swapped, dropped or added), and times ``count_near_duplicates``
against the pairwise count, which runs only up to ``--pairwise-max`` questions.

    python benchmarks/bench_near_duplicates.py [--sizes 1000 2000 10000 50000] [--pairwise-max 2000] [--seed 0]
"""

from __future__ import annotations

import argparse
import random
import time
from itertools import combinations

from charlab.constitution.geometry import count_near_duplicates, is_near_duplicate

VOCABULARY = 4000
ZIPF_EXPONENT = 1.0
PLANTED_SHARE = 0.1


def synthetic_questions(n: int, seed: int) -> list[str]:
    """``n`` questions of 12-28 Zipf-drawn words; a tenth are edited copies of earlier ones."""
    rng = random.Random(seed)
    vocabulary = [f"word{i}" for i in range(VOCABULARY)]
    weights = [1 / (rank + 1) ** ZIPF_EXPONENT for rank in range(VOCABULARY)]
    questions: list[str] = []
    for _ in range(n):
        if questions and rng.random() < PLANTED_SHARE:
            questions.append(_edited(rng.choice(questions), rng, vocabulary, weights))
        else:
            questions.append(" ".join(rng.choices(vocabulary, weights, k=rng.randint(12, 28))) + "?")
    return questions


def _edited(question: str, rng: random.Random, vocabulary: list[str], weights: list[float]) -> str:
    """A paraphrase-like copy: up to a third of the words replaced, then one dropped or added."""
    tokens = question.rstrip("?").split()
    for _ in range(rng.randint(0, len(tokens) // 3)):
        tokens[rng.randrange(len(tokens))] = rng.choices(vocabulary, weights)[0]
    if rng.random() < 0.5 and len(tokens) > 1:
        tokens.pop(rng.randrange(len(tokens)))
    else:
        tokens.insert(rng.randrange(len(tokens) + 1), rng.choices(vocabulary, weights)[0])
    return " ".join(tokens) + "?"


def pairwise_count(questions: list[str]) -> int:
    """The old definition-by-enumeration: ``is_near_duplicate`` on every pair."""
    return sum(is_near_duplicate(a, b) for a, b in combinations(questions, 2))


def timed(function, questions: list[str]) -> tuple[int, float]:
    start = time.perf_counter()
    count = function(questions)
    return count, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[1000, 2000, 10000, 50000])
    parser.add_argument("--pairwise-max", type=int, default=2000, help="largest n to run the pairwise count on")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    print("| n | prefix filter (s) | pairwise (s) | prefix-filter pairs | pairwise pairs | identical | speed-up |")
    print("|---|---|---|---|---|---|---|")
    for n in args.sizes:
        questions = synthetic_questions(n, args.seed)
        fast, fast_s = timed(count_near_duplicates, questions)
        if n <= args.pairwise_max:
            slow, slow_s = timed(pairwise_count, questions)
            cells = [f"{slow_s:.2f}", str(fast), str(slow), "yes" if fast == slow else "NO", f"{slow_s / fast_s:.0f}x"]
        else:
            cells = ["skipped", str(fast), "skipped", "-", "-"]
        print(f"| {n} | {fast_s:.2f} | " + " | ".join(cells) + " |", flush=True)


if __name__ == "__main__":
    main()
