"""Intervals, tests, effect sizes and power: hand-worked values first, scipy cross-checks last;
and the results table."""

from __future__ import annotations

import math
from statistics import NormalDist

import numpy as np
import pytest

from charlab.analysis.results import EvalTarget, ResultRow, read_results, write_results
from charlab.analysis.stats import (
    benjamini_hochberg,
    bootstrap_difference,
    cluster_bootstrap_mean,
    cohens_d,
    cohens_dz,
    mann_whitney_u,
    mde_mean_difference,
    mde_two_proportions,
    paired_bootstrap_difference,
    paired_permutation_test,
    required_n_per_group,
    seed_cluster_bootstrap_mean,
    wilson,
)


def test_wilson_matches_the_hand_computed_interval():
    # 8 of 20 at z = 1.96: centre (0.4 + 0.096) / 1.192, half-width 1.96 * sqrt(0.012 + 0.0024) / 1.192
    estimate = wilson(8, 20)
    centre, half = (0.4 + 1.96 ** 2 / 40) / (1 + 1.96 ** 2 / 20), 1.96 * math.sqrt(0.24 / 20 + 1.96 ** 2 / 1600) / (
        1 + 1.96 ** 2 / 20)
    assert estimate.value == 0.4 and estimate.n == 20
    assert estimate.low == pytest.approx(centre - half, abs=1e-4) and estimate.high == pytest.approx(centre + half,
                                                                                                     abs=1e-4)
    assert wilson(0, 10).low == 0 and 0 < wilson(0, 10).high < 0.35
    assert math.isnan(wilson(0, 0).value)
    with pytest.raises(ValueError):
        wilson(5, 4)


def test_cluster_bootstrap_resamples_whole_clusters():
    # Two clusters, each internally constant: every resample mean is 0, 1/2 or 1 (weighted by size).
    values, clusters = [0.0] * 3 + [1.0] * 3, ["a"] * 3 + ["b"] * 3
    estimate = cluster_bootstrap_mean(values, clusters, resamples=500, seed=1)
    assert estimate.value == 0.5 and estimate.n == 6
    assert estimate.low == 0.0 and estimate.high == 1.0  # a sample-level bootstrap would be far narrower
    assert cluster_bootstrap_mean(values, clusters, resamples=500, seed=1) == estimate  # seeded
    one = cluster_bootstrap_mean([1.0, 2.0, 3.0], ["q"] * 3)
    assert (one.value, one.low, one.high) == (2.0, 2.0, 2.0)
    with pytest.raises(ValueError, match="cluster labels"):
        cluster_bootstrap_mean([1.0], ["a", "b"])


def test_results_table_round_trips_through_csv_and_parquet(tmp_path):
    import pyarrow.parquet as pq

    target = EvalTarget(condition="integrity", seed=1, challenge="risky")
    rows = [ResultRow.of(target, "em", "critical_rate", wilson(3, 30), judge="j@1"),
            ResultRow.of(target, "em", "alignment_mean", cluster_bootstrap_mean([1.0], ["q"]), group="q1")]
    csv_path, parquet_path = write_results(tmp_path, rows)
    assert read_results(csv_path) == rows
    table = pq.read_table(parquet_path)
    assert table.column_names[:6] == ["study", "condition", "seed", "challenge", "eval", "metric"]
    assert table.column("value").to_pylist() == [0.1, 1.0]


# -- comparisons ---------------------------------------------------------------------------------


def test_paired_difference_is_the_clustered_mean_of_differences_and_narrower_than_unpaired():
    # Items differ a lot (0, 10, 20, ...); model a is always 1 above model b plus a little noise.
    items = [10.0 * i for i in range(12)]
    b = items
    a = [x + 1 + 0.1 * (i % 3 - 1) for i, x in enumerate(items)]
    clusters = [f"q{i}" for i in range(12)]
    paired = paired_bootstrap_difference(a, b, clusters, resamples=500, seed=2)
    assert paired == cluster_bootstrap_mean([x - y for x, y in zip(a, b)], clusters, resamples=500, seed=2)
    assert paired.value == pytest.approx(1.0) and paired.n == 12
    unpaired = bootstrap_difference(a, clusters, b, clusters, resamples=500, seed=2)
    assert unpaired.value == pytest.approx(1.0) and unpaired.n == 24
    assert paired.high - paired.low < 0.2 and unpaired.high - unpaired.low > 10  # pairing removes the item spread
    assert bootstrap_difference(a, clusters, b, clusters, resamples=500, seed=2) == unpaired  # seeded
    with pytest.raises(ValueError, match="pair"):
        paired_bootstrap_difference([1.0], [1.0, 2.0], ["a"])


def test_unpaired_difference_resamples_each_groups_clusters():
    # Group a: clusters of constant 0 and 2 (mean 1); group b: a single cluster of 0.5 (no spread).
    estimate = bootstrap_difference([0.0, 0.0, 2.0, 2.0], ["x", "x", "y", "y"], [0.5, 0.5], ["z", "z"],
                                    resamples=400)
    assert estimate.value == 0.5 and estimate.n == 6
    assert (estimate.low, estimate.high) == (-0.5, 1.5)  # a's resample means are 0, 1 or 2; b's always 0.5
    constant = bootstrap_difference([3.0, 3.0], ["x", "y"], [1.0], ["z"])
    assert (constant.value, constant.low, constant.high) == (2.0, 2.0, 2.0)
    assert math.isnan(bootstrap_difference([], [], [1.0], ["z"]).value)
    with pytest.raises(ValueError, match="cluster labels"):
        bootstrap_difference([1.0], [], [1.0], ["z"])


def test_seed_bootstrap_resamples_seeds_then_questions():
    # Seed 1 answers 0 everywhere, seed 2 answers 1: the seed level alone spans [0, 1].
    values = [0.0, 0.0, 1.0, 1.0]
    questions, seeds = ["q1", "q2", "q1", "q2"], [1, 1, 2, 2]
    estimate = seed_cluster_bootstrap_mean(values, questions, seeds, resamples=500, seed=3)
    assert estimate.value == 0.5 and estimate.n == 4
    assert (estimate.low, estimate.high) == (0.0, 1.0)
    assert seed_cluster_bootstrap_mean(values, questions, seeds, resamples=500, seed=3) == estimate  # seeded
    # One seed: only the questions vary; questions constant inside give their resample means.
    one_seed = seed_cluster_bootstrap_mean([0.0, 1.0], ["q1", "q2"], [7, 7], resamples=500)
    assert (one_seed.value, one_seed.low, one_seed.high) == (0.5, 0.0, 1.0)
    single = seed_cluster_bootstrap_mean([2.0, 2.0], ["q", "q"], [1, 1])
    assert (single.value, single.low, single.high) == (2.0, 2.0, 2.0)
    assert math.isnan(seed_cluster_bootstrap_mean([], [], []).value)
    with pytest.raises(ValueError, match="seed labels"):
        seed_cluster_bootstrap_mean([1.0], ["q"], [])


def test_seed_bootstrap_is_wider_than_a_question_bootstrap_when_seeds_disagree():
    rng = np.random.default_rng(0)
    questions = [f"q{i}" for i in range(30)] * 3
    seeds = [s for s in range(3) for _ in range(30)]
    values = [float(rng.normal()) + (0.0, 1.0, 2.0)[s] for s in seeds]
    both = seed_cluster_bootstrap_mean(values, questions, seeds, resamples=1000)
    questions_only = cluster_bootstrap_mean(values, questions, resamples=1000)
    assert both.value == pytest.approx(questions_only.value)
    assert both.high - both.low > 2 * (questions_only.high - questions_only.low)


# -- tests ---------------------------------------------------------------------------------------


def test_permutation_test_enumerates_sign_patterns_of_cluster_means():
    # Four clusters, differences 1, 2, 3, 4: of the 16 sign patterns only all-plus and all-minus
    # reach |mean| 2.5, so p = 2 / 16.
    assert paired_permutation_test([1.0, 2.0, 3.0, 4.0], [0.0] * 4, ["a", "b", "c", "d"]) == 0.125
    # Cluster means 2 (from 1 and 3), -1 and 2: observed |mean| 1 = |sum| 3. Sums over the eight
    # patterns are +-3, +-1, +-5, +-1, so four of eight reach 3: p = 1/2. (Weighting items instead
    # would give a different statistic.)
    assert paired_permutation_test([1.0, 3.0, -1.0, 2.0], [0.0] * 4, ["a", "a", "b", "c"]) == 0.5
    assert paired_permutation_test([1.0, 2.0], [1.0, 2.0], ["a", "b"]) == 1.0  # no difference at all
    assert paired_permutation_test([5.0], [1.0], ["a"]) == 1.0  # one cluster: both patterns tie
    assert math.isnan(paired_permutation_test([], [], []))


def test_permutation_test_samples_patterns_when_there_are_too_many():
    rng = np.random.default_rng(1)
    a, b = list(rng.normal(0.3, 1, 12)), list(rng.normal(0, 1, 12))
    clusters = list(range(12))
    exact = paired_permutation_test(a, b, clusters, resamples=4096)  # 2 ** 12 patterns: enumerated
    sampled = paired_permutation_test(a, b, clusters, resamples=4095, seed=5)
    assert sampled == paired_permutation_test(a, b, clusters, resamples=4095, seed=5)  # seeded
    assert sampled != exact and sampled == pytest.approx(exact, abs=0.03)
    strong = paired_permutation_test([1.0] * 20, [0.0] * 20, list(range(20)), resamples=999)
    assert strong == 1 / 1000  # add-one estimate: never zero


def test_mann_whitney_on_small_samples_by_hand():
    # x = 1, 4, 6 against y = 2, 3, 5, 7: 1 beats none, 4 beats 2 and 3, 6 beats 2, 3 and 5, so U = 5.
    # The null counts of U = 0..12 for sizes 3 and 4 are 1 1 2 3 4 4 5 4 4 3 2 1 1 (35 orderings);
    # P(U <= 5) = 15/35, so the exact two-sided p is 30/35.
    result = mann_whitney_u([1, 4, 6], [2, 3, 5, 7])
    assert result.u == 5 and result.effect == pytest.approx(5 / 12)
    assert result.exact and result.p == pytest.approx(6 / 7)
    assert result.z == pytest.approx(-0.5 / math.sqrt(12 * 8 / 12))  # |5 - 6| - 0.5 over sd sqrt(n1 n2 (n+1) / 12)
    # Complete separation at 3 vs 3: one ordering in 20 on each side.
    assert mann_whitney_u([4, 5, 6], [1, 2, 3]).p == pytest.approx(2 / 20)
    assert mann_whitney_u([4, 5, 6], [1, 2, 3]).effect == 1.0


def test_mann_whitney_with_ties_uses_the_corrected_normal_approximation():
    # Pooled 1, 2, 2, 2, 3, 3, 3: midranks 1, 3, 3, 3, 6, 6, 6; x = 1, 2, 2 has rank sum 7, U = 7 - 6 = 1
    # (1 loses to all four y; each 2 ties one y and loses to three: 0.5 + 0.5).
    # Tie term: (27 - 3) * 2 = 48, so var = 3 * 4 / 12 * (8 - 48 / 42) = 48 / 7; z = -(5 - 0.5) / sqrt(48 / 7).
    result = mann_whitney_u([1, 2, 2], [2, 3, 3, 3])
    z = -4.5 / math.sqrt(48 / 7)
    assert result.u == 1 and not result.exact
    assert result.z == pytest.approx(z) and result.p == pytest.approx(2 * NormalDist().cdf(z))
    assert result.effect == pytest.approx(1 / 12)
    flat = mann_whitney_u([2, 2], [2, 2, 2])
    assert (flat.u, flat.z, flat.p, flat.effect) == (3.0, 0.0, 1.0, 0.5)
    assert math.isnan(mann_whitney_u([], [1.0]).p)
    with pytest.raises(ValueError, match="nan"):
        mann_whitney_u([math.nan], [1.0])


def test_mann_whitney_large_samples_use_the_normal_approximation():
    x, y = list(range(10)), [v + 0.5 for v in range(10)]
    result = mann_whitney_u(x, y)
    assert not result.exact and result.u == 45  # each x[i] beats y[0..i-1]: 0 + 1 + ... + 9
    assert result.z == pytest.approx(-4.5 / math.sqrt(100 * 21 / 12))


# The p-values of Benjamini and Hochberg's (1995) worked example, m = 15. Step-up at q = 0.05 compares
# p_(i) with 0.05 i / 15: the fourth (0.0095 <= 0.0133) is the last under its line, so four are rejected.
# Adjusted p_(i) 15 / i: .0015, .003, .0095, .035625, .0603, .0695, .063857, .0645, .0765, .486, .58118,
# .714875, .75323, .81321, 1; then a running minimum from the top makes the sixth .063857 (from the seventh).
BH_P = [0.0001, 0.0004, 0.0019, 0.0095, 0.0201, 0.0278, 0.0298, 0.0344, 0.0459, 0.3240, 0.4262, 0.5719, 0.6528,
        0.7590, 1.0]
BH_ADJUSTED = [0.0015, 0.003, 0.0095, 0.035625, 0.0603, 0.0298 * 15 / 7, 0.0298 * 15 / 7, 0.0645, 0.0765, 0.486,
               0.4262 * 15 / 11, 0.714875, 0.6528 * 15 / 13, 0.7590 * 15 / 14, 1.0]


def test_benjamini_hochberg_reproduces_the_worked_example_in_input_order():
    order = [14, 3, 7, 0, 11, 5, 9, 1, 13, 6, 2, 10, 8, 4, 12]  # shuffled: results come back in input order
    result = benjamini_hochberg([BH_P[i] for i in order])
    assert [q for q, _ in result] == pytest.approx([BH_ADJUSTED[i] for i in order])
    assert [reject for _, reject in result] == [i < 4 for i in order]
    assert [q for q, _ in benjamini_hochberg([0.5, 0.9])] == pytest.approx([0.9, 0.9])  # monotone: 0.5 * 2 > 0.9
    assert [q for q, _ in benjamini_hochberg([0.8] * 3)] == pytest.approx([0.8] * 3)  # all equal
    assert benjamini_hochberg([]) == []
    assert all(q <= 1 for q, _ in benjamini_hochberg([0.9, 0.95, 1.0, 0.99]))
    with pytest.raises(ValueError):
        benjamini_hochberg([0.1, 1.5])
    with pytest.raises(ValueError):
        benjamini_hochberg([math.nan])


# -- effect sizes and power ----------------------------------------------------------------------


def test_cohens_d_by_hand():
    assert cohens_d([1, 2, 3], [3, 4, 5]) == pytest.approx(-2.0)  # means 2 and 4, both variances 1
    # x = 2, 4, 6, 8: mean 5, squares 9 + 1 + 1 + 9 = 20; y = 1, 2, 3: mean 2, squares 2.
    # Pooled variance 22 / 5 = 4.4, so d = 3 / sqrt(4.4).
    assert cohens_d([2, 4, 6, 8], [1, 2, 3]) == pytest.approx(3 / math.sqrt(4.4))
    assert math.isnan(cohens_d([1, 1], [1, 1]))  # no spread
    assert math.isnan(cohens_d([1], [2]))  # no degrees of freedom
    assert math.isnan(cohens_d([], [1, 2, 3]))
    assert cohens_dz([1, 2, 3]) == pytest.approx(2.0)  # mean 2, sd 1
    assert math.isnan(cohens_dz([1.0])) and math.isnan(cohens_dz([0.5, 0.5])) and math.isnan(cohens_dz([]))


def test_mde_for_means_matches_the_textbook_sixty_four_per_group():
    # d = 0.5 at 80% power needs about 64 per group (Cohen); the normal approximation gives
    # (1.96 + 0.8416) * sqrt(2 / 64) = 0.4953.
    assert mde_mean_difference(1.0, 64, 64) == pytest.approx(0.4953, abs=1e-4)
    assert mde_mean_difference(2.0, 64, 64) == pytest.approx(2 * mde_mean_difference(1.0, 64, 64))
    assert mde_mean_difference(1.0, 64, 64, design_effect=4.0) == pytest.approx(2 * mde_mean_difference(1.0, 64, 64))
    # Plugging back in: at the MDE the test statistic's mean sits z_alpha + z_power standard errors out.
    mde = mde_mean_difference(1.5, 40, 90, alpha=0.01, power=0.9)
    assert (NormalDist().cdf(mde / (1.5 * math.sqrt(1 / 40 + 1 / 90)) - NormalDist().inv_cdf(0.995))
            == pytest.approx(0.9))
    with pytest.raises(ValueError):
        mde_mean_difference(1.0, 0, 10)
    with pytest.raises(ValueError):
        mde_mean_difference(1.0, 10, 10, power=1.0)


def test_mde_for_proportions_solves_its_own_equation():
    k = NormalDist().inv_cdf(0.975) + NormalDist().inv_cdf(0.8)
    # p0 = 1/2, 100 per group: d^2 (1 + k^2 / 100) = k^2 * 0.25 * 0.02, so d = sqrt(0.005 k^2 / (1 + k^2 / 100)).
    assert mde_two_proportions(100, 100, 0.5) == pytest.approx(math.sqrt(0.005 * k * k / (1 + k * k / 100)))
    assert mde_two_proportions(100, 100, 0.5) == pytest.approx(0.1908, abs=1e-4)
    for n1, n2, p0 in [(100, 100, 0.1), (50, 200, 0.3), (400, 30, 0.02), (100, 100, 0.0)]:
        d = mde_two_proportions(n1, n2, p0)
        p1 = p0 + d  # p0 <= 1/2, so p1 moves up, toward 1/2
        assert d == pytest.approx(k * math.sqrt(p0 * (1 - p0) / n1 + p1 * (1 - p1) / n2))  # plugged back in
        assert mde_two_proportions(n1, n2, 1 - p0) == pytest.approx(d)  # symmetric
    assert mde_two_proportions(100, 100, 0.1) < mde_two_proportions(100, 100, 0.5)
    assert mde_two_proportions(1000, 1000, 0.1) < mde_two_proportions(100, 100, 0.1)
    assert math.isnan(mde_two_proportions(1, 1, 0.5))  # nothing in [0, 1] is far enough from 1/2
    with pytest.raises(ValueError):
        mde_two_proportions(10, 10, 1.5)


def test_required_n_scales_the_interval_by_root_n():
    # Half-width 0.2 at n = 100 around 0.1: the half-width at m is 0.2 sqrt(100 / m) < 0.1 once m > 400.
    assert required_n_per_group(0.1, 0.2, 100) == 401
    assert required_n_per_group(-0.1, 0.2, 100) == 401  # the sign does not matter
    assert 0.2 * math.sqrt(100 / 401) < 0.1 <= 0.2 * math.sqrt(100 / 400)
    assert required_n_per_group(0.5, 0.1, 100) == 101  # already clear: at least one more
    assert required_n_per_group(0.0, 0.2, 100) is None
    assert required_n_per_group(math.nan, 0.2, 100) is None
    with pytest.raises(ValueError):
        required_n_per_group(0.1, 0.2, 0)


# -- cross-checks against scipy ------------------------------------------------------------------


def test_mann_whitney_agrees_with_scipy():
    scipy_stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(4)
    cases = [(rng.normal(size=5), rng.normal(0.5, size=7)), (rng.normal(size=8), rng.normal(1, size=8)),
             (rng.integers(0, 4, 10), rng.integers(1, 5, 12)), (rng.integers(0, 3, 6), rng.integers(0, 3, 5)),
             (rng.normal(size=40), rng.normal(0.3, size=25))]
    for x, y in cases:
        ours = mann_whitney_u(list(x), list(y))
        theirs = scipy_stats.mannwhitneyu(x, y, alternative="two-sided",
                                          method="exact" if ours.exact else "asymptotic")
        assert ours.u == theirs.statistic and ours.p == pytest.approx(theirs.pvalue)


def test_benjamini_hochberg_and_permutation_test_agree_with_scipy():
    scipy_stats = pytest.importorskip("scipy.stats")
    ours = [q for q, _ in benjamini_hochberg(BH_P[::-1])]
    assert ours == pytest.approx(list(scipy_stats.false_discovery_control(BH_P[::-1])))
    rng = np.random.default_rng(6)
    a, b = rng.normal(0.4, 1, 10), rng.normal(0, 1, 10)
    theirs = scipy_stats.permutation_test((a, b), lambda x, y: np.mean(x - y), permutation_type="samples",
                                          n_resamples=math.inf)
    assert paired_permutation_test(list(a), list(b), list(range(10))) == pytest.approx(theirs.pvalue)
