"""Intervals: Wilson for rates, cluster bootstrap for means; and the tidy results table."""

from __future__ import annotations

import math

import pytest

from charlab.analysis.stats import cluster_bootstrap_mean, wilson
from charlab.evals.results import EvalTarget, ResultRow, read_results, write_results


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
