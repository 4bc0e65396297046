"""Intervals for the quantities evaluations report: rates and means over clustered samples.

Evaluation samples are not independent: several paraphrases and samples of one question share
that question's difficulty. Intervals for means therefore come from a cluster bootstrap that
resamples whole clusters (questions, prompts) with replacement; rates get Wilson score intervals,
which stay inside [0, 1] and behave at small n and at rates near 0 or 1, where the normal
approximation does not. Everything is seeded, so a rerun reports the same interval.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import numpy as np

Z95 = 1.959963984540054


@dataclass(frozen=True)
class Estimate:
    """A point estimate with a two-sided interval and the sample size behind it."""

    value: float
    low: float
    high: float
    n: int


def wilson(successes: int, n: int, z: float = Z95) -> Estimate:
    """Wilson score interval for ``successes`` out of ``n`` (value nan when n is 0)."""
    if n == 0:
        return Estimate(math.nan, math.nan, math.nan, 0)
    if not 0 <= successes <= n:
        raise ValueError(f"successes must be between 0 and n={n}, not {successes}")
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return Estimate(p, max(0.0, centre - half), min(1.0, centre + half), n)


def cluster_bootstrap_mean(values: Sequence[float], clusters: Sequence[Hashable], *, resamples: int = 2000,
                           confidence: float = 0.95, seed: int = 0) -> Estimate:
    """Mean of ``values`` with a percentile interval from resampling whole clusters.

    Each resample draws as many clusters as there are, with replacement, and takes the mean of
    all values in the drawn clusters, so a cluster with more samples weighs more, as in the
    point estimate. One cluster gives a zero-width interval: there is nothing to resample.
    """
    if len(values) != len(clusters):
        raise ValueError(f"{len(values)} values but {len(clusters)} cluster labels")
    if not values:
        return Estimate(math.nan, math.nan, math.nan, 0)
    groups: dict[Hashable, list[float]] = {}
    for value, cluster in zip(values, clusters):
        groups.setdefault(cluster, []).append(float(value))
    sums = np.array([sum(g) for g in groups.values()])
    counts = np.array([len(g) for g in groups.values()])
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(sums), size=(resamples, len(sums)))
    means = sums[draws].sum(axis=1) / counts[draws].sum(axis=1)
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return Estimate(float(sums.sum() / counts.sum()), float(low), float(high), len(values))
