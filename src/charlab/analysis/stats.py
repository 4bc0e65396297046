"""Intervals, tests and power for the quantities evaluations report: rates and means over clustered samples.

Evaluation samples are not independent: several paraphrases and samples of one question share
that question's difficulty. Intervals for means therefore come from a cluster bootstrap that
resamples whole clusters (questions, prompts) with replacement; rates get Wilson score intervals,
which stay inside [0, 1] and behave at small n and at rates near 0 or 1, where the normal
approximation does not. Everything is seeded, so a rerun reports the same interval.

Comparisons follow the same rule: paired differences (two models on the same prompts) resample
the prompts both share, unpaired ones resample each group's clusters on their own, and the
sign-flip test flips whole clusters. Rank tests, false-discovery control, effect sizes and the
power calculations (minimum detectable effects, the sample size that would settle an interval)
are written with numpy and the standard library's ``NormalDist``, so nothing here needs scipy.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Sequence
from dataclasses import dataclass
from functools import cache
from statistics import NormalDist

import numpy as np

Z95 = 1.959963984540054
_NORMAL = NormalDist()


@dataclass(frozen=True)
class Estimate:
    """A point estimate with a two-sided interval and the sample size behind it."""

    value: float
    low: float
    high: float
    n: int


_MISSING = Estimate(math.nan, math.nan, math.nan, 0)


def wilson(successes: int, n: int, z: float = Z95) -> Estimate:
    """Wilson score interval for ``successes`` out of ``n`` (value nan when n is 0)."""
    if n == 0:
        return _MISSING
    if not 0 <= successes <= n:
        raise ValueError(f"successes must be between 0 and n={n}, not {successes}")
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return Estimate(p, max(0.0, centre - half), min(1.0, centre + half), n)


# -- bootstrap -----------------------------------------------------------------------------------


def _check_labels(values: Sequence[float], labels: Sequence[Hashable], what: str = "cluster labels") -> None:
    """Values and labels pair up one to one; a length mismatch means a caller mixed up its lists."""
    if len(values) != len(labels):
        raise ValueError(f"{len(values)} values but {len(labels)} {what}")


def _cluster_totals(values: Sequence[float], clusters: Sequence[Hashable]) -> tuple[np.ndarray, np.ndarray]:
    """Sum and count of the values in each cluster, clusters in first-seen order."""
    groups: dict[Hashable, list[float]] = {}
    for value, cluster in zip(values, clusters):
        groups.setdefault(cluster, []).append(float(value))
    return np.array([sum(g) for g in groups.values()]), np.array([len(g) for g in groups.values()])


def _resampled_means(sums: np.ndarray, counts: np.ndarray, rng: np.random.Generator, resamples: int) -> np.ndarray:
    """Means of ``resamples`` cluster resamples, each drawing as many clusters as there are."""
    draws = rng.integers(0, len(sums), size=(resamples, len(sums)))
    return sums[draws].sum(axis=1) / counts[draws].sum(axis=1)


def _percentile(value: float, draws: np.ndarray, confidence: float, n: int) -> Estimate:
    """The point estimate with the central ``confidence`` share of its bootstrap draws."""
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(draws, [tail, 100 - tail])
    return Estimate(float(value), float(low), float(high), n)


def cluster_bootstrap_mean(values: Sequence[float], clusters: Sequence[Hashable], *, resamples: int = 2000,
                           confidence: float = 0.95, seed: int = 0) -> Estimate:
    """Mean of ``values`` with a percentile interval from resampling whole clusters.

    Each resample draws as many clusters as there are, with replacement, and takes the mean of
    all values in the drawn clusters, so a cluster with more samples weighs more, as in the
    point estimate. One cluster gives a zero-width interval: there is nothing to resample.
    """
    _check_labels(values, clusters)
    if not values:
        return _MISSING
    sums, counts = _cluster_totals(values, clusters)
    means = _resampled_means(sums, counts, np.random.default_rng(seed), resamples)
    return _percentile(sums.sum() / counts.sum(), means, confidence, len(values))


def paired_bootstrap_difference(a: Sequence[float], b: Sequence[float], clusters: Sequence[Hashable], *,
                                resamples: int = 2000, confidence: float = 0.95, seed: int = 0) -> Estimate:
    """Mean of ``a[i] - b[i]`` over items both were measured on, resampling whole clusters.

    Pairing first removes the item-to-item spread the two share (a hard prompt is hard for both
    models), so the interval is narrower than two separate intervals would suggest, and honest.
    """
    _check_labels(a, b, "values to pair with")
    differences = [float(x) - float(y) for x, y in zip(a, b)]
    return cluster_bootstrap_mean(differences, clusters, resamples=resamples, confidence=confidence, seed=seed)


def bootstrap_difference(a: Sequence[float], a_clusters: Sequence[Hashable], b: Sequence[float],
                         b_clusters: Sequence[Hashable], *, resamples: int = 2000, confidence: float = 0.95,
                         seed: int = 0) -> Estimate:
    """``mean(a) - mean(b)`` for two unpaired groups, each group's clusters resampled on its own.

    Use it when the groups share no items (different prompt sets, different models' own
    samples); ``n`` is the number of values in both groups together. Nan if either is empty.
    """
    _check_labels(a, a_clusters)
    _check_labels(b, b_clusters)
    if not a or not b:
        return Estimate(math.nan, math.nan, math.nan, len(a) + len(b))
    a_sums, a_counts = _cluster_totals(a, a_clusters)
    b_sums, b_counts = _cluster_totals(b, b_clusters)
    rng = np.random.default_rng(seed)
    draws = _resampled_means(a_sums, a_counts, rng, resamples) - _resampled_means(b_sums, b_counts, rng, resamples)
    value = a_sums.sum() / a_counts.sum() - b_sums.sum() / b_counts.sum()
    return _percentile(value, draws, confidence, len(a) + len(b))


def seed_cluster_bootstrap_mean(values: Sequence[float], questions: Sequence[Hashable], seeds: Sequence[Hashable], *,
                                resamples: int = 2000, confidence: float = 0.95, seed: int = 0) -> Estimate:
    """Mean over training seeds and questions, with a two-level cluster bootstrap.

    Training seeds vary too: a result that holds for one seed may not hold for the next. Each
    resample draws as many training seeds as there are, with replacement, and within every drawn
    seed draws that seed's questions with replacement (questions are taken as nested in seeds,
    so seed ``1``'s question ``q`` and seed ``2``'s are separate clusters); the mean of all values
    drawn is one bootstrap mean, weighted by sample count like the point estimate. Resampling at
    both levels counts the question spread twice over, so the interval errs wide, never narrow.
    ``seed`` seeds the bootstrap; ``seeds`` labels the training seeds.
    """
    _check_labels(values, questions, "question labels")
    _check_labels(values, seeds, "seed labels")
    if not values:
        return _MISSING
    by_seed: dict[Hashable, tuple[list[float], list[Hashable]]] = {}
    for value, question, training_seed in zip(values, questions, seeds):
        seed_values, seed_questions = by_seed.setdefault(training_seed, ([], []))
        seed_values.append(value)
        seed_questions.append(question)
    rng = np.random.default_rng(seed)
    picks = rng.integers(0, len(by_seed), size=(resamples, len(by_seed)))
    sums, counts = np.zeros(picks.shape), np.zeros(picks.shape)
    for index, (seed_values, seed_questions) in enumerate(by_seed.values()):
        question_sums, question_counts = _cluster_totals(seed_values, seed_questions)
        slots = picks == index
        draws = rng.integers(0, len(question_sums), size=(int(slots.sum()), len(question_sums)))
        sums[slots] = question_sums[draws].sum(axis=1)
        counts[slots] = question_counts[draws].sum(axis=1)
    means = sums.sum(axis=1) / counts.sum(axis=1)
    return _percentile(sum(float(v) for v in values) / len(values), means, confidence, len(values))


# -- tests ---------------------------------------------------------------------------------------


def paired_permutation_test(a: Sequence[float], b: Sequence[float], clusters: Sequence[Hashable], *,
                            resamples: int = 10000, seed: int = 0) -> float:
    """Two-sided p-value that ``a`` and ``b`` differ, by flipping the sign of whole clusters.

    The statistic is the mean of the per-cluster mean differences (each cluster counts once).
    Under the null of no difference each cluster's difference is as likely negative as positive,
    so every sign pattern is equally likely. With ``2 ** clusters <= resamples`` all patterns are
    enumerated and the p-value is exact; otherwise ``resamples`` random patterns give the
    add-one estimate ``(1 + hits) / (1 + resamples)``, which never reports an impossible 0.
    Nan for empty input.
    """
    _check_labels(a, b, "values to pair with")
    _check_labels(a, clusters)
    if not a:
        return math.nan
    sums, counts = _cluster_totals([float(x) - float(y) for x, y in zip(a, b)], clusters)
    means = sums / counts
    k = len(means)
    observed = abs(means.mean())
    tolerance = 1e-12 * float(np.abs(means).mean())  # patterns equal to the observed one in exact arithmetic count
    if k < 63 and 2 ** k <= resamples:
        signs = 1 - 2 * ((np.arange(2 ** k)[:, None] >> np.arange(k)) & 1)
        return float(np.mean(np.abs(signs @ means) / k >= observed - tolerance))
    rng = np.random.default_rng(seed)
    hits = 0
    for start in range(0, resamples, 1024):  # blocks keep memory flat when there are many clusters
        signs = 1 - 2 * rng.integers(0, 2, size=(min(1024, resamples - start), k))
        hits += int(np.sum(np.abs(signs @ means) / k >= observed - tolerance))
    return (1 + hits) / (1 + resamples)


@dataclass(frozen=True)
class MannWhitney:
    """Mann-Whitney U of ``x`` against ``y``: ``effect`` is P(x > y) + P(x = y) / 2, which is U / (n1 n2).

    ``exact`` says the p-value comes from the exact null distribution of U (both samples at most
    8, no ties); otherwise from the normal approximation, whose ``z`` is reported either way.
    """

    u: float
    z: float
    p: float
    effect: float
    exact: bool


_EXACT_MAX = 8


def _midranks(values: np.ndarray) -> np.ndarray:
    """Ranks 1..n, tied values sharing the mean of the ranks they span."""
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    return (np.cumsum(counts) - (counts - 1) / 2)[inverse]


@cache
def _u_counts(n1: int, n2: int) -> tuple[int, ...]:
    """How many of the C(n1 + n2, n1) equally likely orderings give U = 0, 1, ..., n1 * n2.

    The largest value overall is either one of x's (it beats all n2 of y's, adding n2 to U) or
    one of y's (adding nothing); removing it leaves the same problem one size smaller.
    """
    if n1 == 0 or n2 == 0:
        return (1,)
    counts = [0] * (n1 * n2 + 1)
    for u, ways in enumerate(_u_counts(n1 - 1, n2)):
        counts[u + n2] += ways
    for u, ways in enumerate(_u_counts(n1, n2 - 1)):
        counts[u] += ways
    return tuple(counts)


def mann_whitney_u(x: Sequence[float], y: Sequence[float]) -> MannWhitney:
    """Rank test that ``x`` and ``y`` come from the same distribution, with its effect size.

    Judge scores are ordinal and bunched at a few values, so a rank test suits them better than
    a t-test. The p-value is two-sided. It is exact when both samples have at most 8 values and
    there are no ties (the null distribution of U is enumerated); otherwise it is the normal
    approximation with the tie-corrected variance and a 0.5 continuity correction. When every
    value is equal, U sits at its null mean: z is 0 and p is 1. All nan when either is empty.
    """
    n1, n2 = len(x), len(y)
    if n1 == 0 or n2 == 0:
        return MannWhitney(math.nan, math.nan, math.nan, math.nan, False)
    pooled = np.concatenate([np.asarray(x, dtype=float), np.asarray(y, dtype=float)])
    if np.isnan(pooled).any():
        raise ValueError("cannot rank nan")
    u = float(_midranks(pooled)[:n1].sum() - n1 * (n1 + 1) / 2)
    n, centre = n1 + n2, n1 * n2 / 2
    ties = np.unique(pooled, return_counts=True)[1]
    variance = n1 * n2 / 12 * ((n + 1) - float((ties ** 3 - ties).sum()) / (n * (n - 1)))
    z = math.copysign(max(abs(u - centre) - 0.5, 0.0), u - centre) / math.sqrt(variance) if variance > 0 else 0.0
    exact = n1 <= _EXACT_MAX and n2 <= _EXACT_MAX and int(ties.max()) == 1
    if exact:
        counts, k = _u_counts(n1, n2), round(u)
        p = 2 * min(sum(counts[:k + 1]), sum(counts[k:])) / math.comb(n, n1)
    else:
        p = 2 * _NORMAL.cdf(-abs(z))
    return MannWhitney(u, z, min(1.0, p), u / (n1 * n2), exact)


def benjamini_hochberg(p_values: Sequence[float], alpha: float = 0.05) -> list[tuple[float, bool]]:
    """Benjamini-Hochberg adjusted p-values and reject flags, in the order given.

    A study reports many comparisons; controlling the false discovery rate at ``alpha`` keeps the
    expected share of false findings among the reported ones at most ``alpha``. The adjusted value
    of the i-th smallest p is ``min over j >= i of p_(j) m / j``, capped at 1, so adjusted values
    keep the order of the raw ones; a test is rejected when its adjusted value is at most ``alpha``.
    """
    p = np.asarray(p_values, dtype=float)
    if p.size == 0:
        return []
    if not np.all((p >= 0) & (p <= 1)):
        raise ValueError("p-values must lie in [0, 1]")
    order = np.argsort(p, kind="stable")
    scaled = p[order] * len(p) / np.arange(1, len(p) + 1)
    adjusted = np.empty(len(p))
    adjusted[order] = np.minimum(1.0, np.minimum.accumulate(scaled[::-1])[::-1])
    return [(float(q), bool(q <= alpha)) for q in adjusted]


# -- effect sizes and power ----------------------------------------------------------------------


def cohens_d(x: Sequence[float], y: Sequence[float]) -> float:
    """``(mean(x) - mean(y)) / pooled SD`` (ddof 1): a difference on a scale shared across metrics.

    Nan when undefined: an empty group, fewer than three values in all, or no spread at all.
    """
    n1, n2 = len(x), len(y)
    if n1 == 0 or n2 == 0 or n1 + n2 < 3:
        return math.nan
    a, b = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    squares = float(((a - a.mean()) ** 2).sum() + ((b - b.mean()) ** 2).sum())
    pooled = math.sqrt(squares / (n1 + n2 - 2))
    return float(a.mean() - b.mean()) / pooled if pooled > 0 else math.nan


def cohens_dz(differences: Sequence[float]) -> float:
    """Mean paired difference over its SD (ddof 1); nan with fewer than two values or no spread."""
    if len(differences) < 2:
        return math.nan
    d = np.asarray(differences, dtype=float)
    sd = float(d.std(ddof=1))
    return float(d.mean()) / sd if sd > 0 else math.nan


def _power_z(alpha: float, power: float) -> float:
    """``z_(1 - alpha/2) + z_power``: how many standard errors a detectable difference must span."""
    if not 0 < alpha < 1 or not 0 < power < 1:
        raise ValueError(f"alpha and power must lie strictly between 0 and 1, not {alpha} and {power}")
    return _NORMAL.inv_cdf(1 - alpha / 2) + _NORMAL.inv_cdf(power)


def mde_two_proportions(n1: int, n2: int, p0: float, *, alpha: float = 0.05, power: float = 0.8) -> float:
    """Smallest rate difference ``|p1 - p0|`` a two-sided test of two proportions detects.

    Group 1 (``n1``) has rate ``p0``, group 2 (``n2``) rate ``p1``; the normal approximation asks
    ``|p1 - p0| = k * sqrt(p0 (1 - p0) / n1 + p1 (1 - p1) / n2)`` with ``k = z_(1-alpha/2) + z_power``.
    With ``p1 = p0 + d`` that is a quadratic in ``d``, solved exactly. ``p1`` moves toward 1/2,
    where its variance is larger, so a difference of this size either way is detected (the side
    away from 1/2 needs less). Nan when no rate in [0, 1] is far enough away.
    """
    if n1 < 1 or n2 < 1:
        raise ValueError(f"group sizes must be at least 1, not {n1} and {n2}")
    if not 0 <= p0 <= 1:
        raise ValueError(f"p0 must lie in [0, 1], not {p0}")
    k2 = _power_z(alpha, power) ** 2
    p = min(p0, 1 - p0)  # the problem is symmetric under p -> 1 - p
    a = 1 + k2 / n2
    b = k2 * (1 - 2 * p) / n2
    c = k2 * p * (1 - p) * (1 / n1 + 1 / n2)
    d = (b + math.sqrt(b * b + 4 * a * c)) / (2 * a)
    return d if d <= 1 - p else math.nan


def mde_mean_difference(sd: float, n1: int, n2: int, *, alpha: float = 0.05, power: float = 0.8,
                        design_effect: float = 1.0) -> float:
    """Smallest mean difference a two-sided test detects, for outcome SD ``sd``.

    ``design_effect`` (variance inflation from clustering, 1 + (m - 1) ICC for clusters of m)
    shrinks the effective sample sizes: ``k * sd * sqrt(design_effect (1/n1 + 1/n2))``.
    """
    if n1 < 1 or n2 < 1:
        raise ValueError(f"group sizes must be at least 1, not {n1} and {n2}")
    if sd < 0 or design_effect <= 0:
        raise ValueError(f"sd must be >= 0 and design_effect > 0, not {sd} and {design_effect}")
    return _power_z(alpha, power) * sd * math.sqrt(design_effect * (1 / n1 + 1 / n2))


def required_n_per_group(observed_difference: float, half_width: float, n: int) -> int | None:
    """Per-group sample size at which an interval like this one would exclude zero.

    The interval has half-width ``half_width`` at size ``n`` and shrinks as ``1 / sqrt(n)``;
    assuming the point estimate stays put, it clears zero once ``half_width * sqrt(n / m)`` drops
    below ``|observed_difference|``. The answer is at least ``n + 1`` (it is asked when size
    ``n`` did not settle the question). None when the point estimate is exactly zero (or not a
    number): no sample size would then settle it. To test against a threshold t other than
    zero, pass ``observed_difference - t``.
    """
    if n < 1:
        raise ValueError(f"n must be at least 1, not {n}")
    if not math.isfinite(observed_difference) or not math.isfinite(half_width) or observed_difference == 0:
        return None
    if half_width < 0:
        raise ValueError(f"half_width must be >= 0, not {half_width}")
    return max(n + 1, math.floor(n * (half_width / observed_difference) ** 2) + 1)
