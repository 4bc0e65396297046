"""Context-sensitivity metrics: the out-of-fold probe, type separation, mode NMI, consistency, and the bundle."""

from __future__ import annotations

import math

import pytest
import torch

from charlab.analysis.context_metrics import (
    context_scores,
    expected_mode_rate,
    fit_probe,
    mode_agreement,
    nmi_estimate,
    normalized_mutual_information,
    probe_accuracy,
    projection_spread,
    variance_ratio,
)
from charlab.analysis.stats import Z95
from charlab.evals.situations import SituationSuite, grouped_folds, situation_prompts


def clustered_rows(types: int, prompts: int, per_prompt: int) -> tuple[list[str], list[str]]:
    """Labels and prompt clusters: ``prompts`` clusters per type, ``per_prompt`` rows per cluster."""
    labels = [f"t{k}" for k in range(types) for _ in range(prompts * per_prompt)]
    clusters = [f"t{k}p{p}" for k in range(types) for p in range(prompts) for _ in range(per_prompt)]
    return labels, clusters


def folds_by_cluster(clusters: list[str], k: int) -> list[tuple[list[int], list[int]]]:
    """Cluster-safe folds: the i-th distinct cluster goes to fold i mod k."""
    order = list(dict.fromkeys(clusters))
    fold_of = {cluster: i % k for i, cluster in enumerate(order)}
    return [([i for i, c in enumerate(clusters) if fold_of[c] != f],
             [i for i, c in enumerate(clusters) if fold_of[c] == f])
            for f in range(k)]


# -- probe --------------------------------------------------------------------------------------------


def test_probe_decodes_well_separated_types():
    labels, clusters = clustered_rows(types=3, prompts=6, per_prompt=2)
    g = torch.Generator().manual_seed(0)
    centres = torch.eye(3, 8) * 6
    features = torch.stack([centres[int(label[1])] for label in labels]) + torch.randn(len(labels), 8, generator=g)
    result = probe_accuracy(features, labels, folds_by_cluster(clusters, 3), clusters, resamples=200)
    assert result.accuracy.value > 0.95 and result.accuracy.n == 36
    assert result.chance == pytest.approx(1 / 3)
    assert result.labels == ("t0", "t1", "t2")
    assert sum(map(sum, result.confusion)) == 36 and all(sum(row) == 12 for row in result.confusion)
    assert set(result.per_label) == {"t0", "t1", "t2"} and all(e.n == 12 for e in result.per_label.values())
    assert result.fold_sizes == ((24, 12),) * 3
    assert len(result.predictions) == 36


def test_probe_on_noise_is_near_chance():
    labels, clusters = clustered_rows(types=3, prompts=20, per_prompt=2)
    features = torch.randn(len(labels), 6, generator=torch.Generator().manual_seed(1))
    result = probe_accuracy(features, labels, folds_by_cluster(clusters, 5), clusters, resamples=200)
    assert abs(result.accuracy.value - result.chance) < 0.15
    assert result.accuracy.low < result.chance < result.accuracy.high


def test_probe_refuses_folds_that_leak_or_skip():
    labels, clusters = clustered_rows(types=2, prompts=2, per_prompt=2)
    features = torch.randn(8, 3, generator=torch.Generator().manual_seed(0))
    leaky = [([0, 2, 3, 4, 5, 6, 7], [1]), ([1], [0, 2, 3, 4, 5, 6, 7])]  # rows 0 and 1 share cluster t0p0
    with pytest.raises(ValueError, match="cluster 't0p0' is on both sides of split 0"):
        probe_accuracy(features, labels, leaky, clusters)
    skipping = [([2, 3, 4, 5, 6, 7], [0, 1]), ([0, 1, 6, 7], [2, 3, 4, 5])]  # t1p1 never tested
    with pytest.raises(ValueError, match=r"row 6 \(cluster 't1p1'\) is in 0 test folds"):
        probe_accuracy(features, labels, skipping, clusters)
    twice = [([4, 5, 6, 7], [0, 1, 2, 3]), ([2, 3, 4, 5, 6, 7], [0, 1]), ([0, 1, 2, 3], [4, 5, 6, 7])]
    with pytest.raises(ValueError, match="cluster 't0p0'"):
        probe_accuracy(features, labels, twice, clusters)


def test_probe_standardizes_with_training_rows_only():
    # Fold A holds labels a/b at -1/+1; fold B the same labels shifted to 9/11. Standardized with
    # its training fold's statistics, each held-out fold lands wholly on one side, so every row of
    # B reads as b and every row of A as a. Standardizing with the test fold's own statistics
    # would decode both folds perfectly.
    x = torch.tensor([[-1.0], [1.0], [-1.0], [1.0], [9.0], [11.0], [9.0], [11.0]])
    labels = ["a", "b", "a", "b", "a", "b", "a", "b"]
    clusters = ["A1", "A2", "A3", "A4", "B1", "B2", "B3", "B4"]
    folds = [([4, 5, 6, 7], [0, 1, 2, 3]), ([0, 1, 2, 3], [4, 5, 6, 7])]
    result = probe_accuracy(x, labels, folds, clusters, resamples=50)
    assert result.predictions == ("a",) * 4 + ("b",) * 4
    assert result.accuracy.value == 0.5
    probe = fit_probe(x[:4], labels[:4])
    assert probe.mean.tolist() == [0.0] and probe.scale.tolist() == [1.0]
    assert fit_probe(x[4:], labels[4:]).mean.tolist() == [10.0]


def test_probe_cannot_predict_a_label_missing_from_training():
    x = torch.tensor([[0.0], [0.1], [5.0], [5.1], [10.0], [10.1]])
    labels = ["a", "a", "b", "b", "c", "c"]
    clusters = ["p1", "p1", "p2", "p2", "p3", "p3"]
    folds = [([0, 1, 2, 3], [4, 5]), ([2, 3, 4, 5], [0, 1]), ([0, 1, 4, 5], [2, 3])]
    result = probe_accuracy(x, labels, folds, clusters, resamples=50)
    assert result.predictions[4] in {"a", "b"} and result.predictions[0] in {"b", "c"}
    assert result.per_label["c"].value == 0.0


def test_probe_matches_sklearn_logistic_regression():
    linear_model = pytest.importorskip("sklearn.linear_model")
    g = torch.Generator().manual_seed(3)
    x = torch.randn(60, 4, generator=g) + torch.arange(60).remainder(3).unsqueeze(1).float()
    labels = [f"c{i % 3}" for i in range(60)]
    probe = fit_probe(x, labels, l2=0.05, steps=500)
    z = ((x.double() - probe.mean) / probe.scale).numpy()
    # ours: mean cross-entropy + l2 |W|^2; sklearn: C * summed cross-entropy + |W|^2 / 2, so C = 1 / (2 N l2)
    reference = linear_model.LogisticRegression(C=1 / (2 * 60 * 0.05), tol=1e-10, max_iter=5000).fit(z, labels)
    ours = torch.softmax(torch.from_numpy(z) @ probe.weight + probe.bias, dim=1).numpy()
    assert ours == pytest.approx(reference.predict_proba(z), abs=1e-4)


def test_probe_is_deterministic_for_a_seed():
    labels, clusters = clustered_rows(types=2, prompts=6, per_prompt=2)
    features = torch.randn(len(labels), 4, generator=torch.Generator().manual_seed(2))
    folds = folds_by_cluster(clusters, 3)
    first = probe_accuracy(features, labels, folds, clusters, resamples=200, seed=5)
    again = probe_accuracy(features, labels, folds, clusters, resamples=200, seed=5)
    assert first == again


# -- variance ratio -----------------------------------------------------------------------------------


def test_variance_ratio_by_hand():
    # a: 0, 2 (mean 1); b: 4, 6 (mean 5); grand mean 3.
    # between = 2*(1-3)^2 + 2*(5-3)^2 = 16 over K-1 = 1; within = 1+1+1+1 = 4 over N-K = 2; ratio 8.
    # One prompt per type leaves nothing to leave out, so there is no interval.
    x = torch.tensor([[0.0], [2.0], [4.0], [6.0]])
    estimate = variance_ratio(x, ["a", "a", "b", "b"], ["pa", "pa", "pb", "pb"])
    assert estimate.value == pytest.approx(8.0) and estimate.n == 4
    assert math.isnan(estimate.low) and math.isnan(estimate.high)


def test_variance_ratio_is_the_anova_f_per_dimension_summed():
    feature_selection = pytest.importorskip("sklearn.feature_selection")
    labels, clusters = clustered_rows(types=3, prompts=4, per_prompt=2)
    x = torch.randn(len(labels), 1, generator=torch.Generator().manual_seed(4))
    f, _ = feature_selection.f_classif(x.numpy(), labels)
    assert variance_ratio(x, labels, clusters).value == pytest.approx(float(f[0]))


def test_variance_ratio_jackknife_interval_by_hand_and_around_the_estimate():
    # Two types of two one-row prompts in 1-D: a = {0, 2}, b = {4, 6}, ratio 8 (above). Leave-one-out:
    # without 0: a = {2}, b = {4, 6}, grand mean 4: between 1*(2-4)^2 + 2*(5-4)^2 = 6 (K-1 = 1),
    # within (4-5)^2 + (6-5)^2 = 2 (N-K = 1): ratio 3. Without 2: a = {0}, grand mean 10/3:
    # between (10/3)^2 + 2*(5/3)^2 = 50/3, within 2: ratio 25/3. Mirror images: 4 -> 25/3, 6 -> 3.
    # Jackknife SE = sqrt(3/4 * 4 * (8/3)^2) = 8/sqrt(3); half-width 1.96 x that; the low end stops at 0.
    x = torch.tensor([[0.0], [2.0], [4.0], [6.0]])
    estimate = variance_ratio(x, ["a", "a", "b", "b"], ["p0", "p1", "p2", "p3"])
    half = Z95 * 8 / math.sqrt(3)
    assert (estimate.value, estimate.low, estimate.high) == pytest.approx((8.0, 0.0, 8.0 + half))

    labels, clusters = clustered_rows(types=2, prompts=5, per_prompt=2)
    g = torch.Generator().manual_seed(5)
    x = torch.randn(len(labels), 3, generator=g) + torch.tensor([[0.0 if label == "t0" else 2.0] for label in labels])
    estimate = variance_ratio(x, labels, clusters)
    assert math.isfinite(estimate.low) and estimate.low < estimate.value < estimate.high
    assert estimate.high - estimate.value == pytest.approx(estimate.value - estimate.low) or estimate.low == 0
    assert math.isnan(variance_ratio(x, ["t0"] * len(labels), clusters).value)
    with pytest.raises(ValueError, match="cluster 't0p0' holds both"):
        variance_ratio(x, ["t1"] + labels[1:], clusters)


# -- NMI and expected modes -----------------------------------------------------------------------------


def test_nmi_hand_values():
    assert normalized_mutual_information(list("aabb"), list("xxyy")) == pytest.approx(1.0)
    assert normalized_mutual_information(list("aabb"), list("xyxy")) == pytest.approx(0.0, abs=1e-12)
    # a = aabb, b = xxxy: joint (a,x)=1/2, (b,x)=1/4, (b,y)=1/4
    mi = 0.5 * math.log(4 / 3) + 0.25 * math.log(2 / 3) + 0.25 * math.log(2)
    h_a, h_b = math.log(2), -(0.75 * math.log(0.75) + 0.25 * math.log(0.25))
    assert normalized_mutual_information(list("aabb"), list("xxxy")) == pytest.approx(mi / ((h_a + h_b) / 2))
    assert normalized_mutual_information(list("aabb"), list("xxxx")) == 0.0
    assert normalized_mutual_information(list("aaaa"), list("xxxx")) == 0.0
    assert math.isnan(normalized_mutual_information([], []))


def test_nmi_matches_sklearn():
    metrics = pytest.importorskip("sklearn.metrics")
    g = torch.Generator().manual_seed(6)
    a = [str(v) for v in torch.randint(0, 4, (50,), generator=g).tolist()]
    b = [str(v) for v in torch.randint(0, 3, (50,), generator=g).tolist()]
    expected = metrics.normalized_mutual_info_score(a, b, average_method="arithmetic")
    assert normalized_mutual_information(a, b) == pytest.approx(expected)


def test_nmi_estimate_skips_unreadable_and_resamples_clusters():
    situations = ["s1", "s1", "s2", "s2", "s3", "s3"]
    modes = ["m1", None, "m2", "m2", "m3", "m3"]
    clusters = ["p1", "p1", "p2", "p2", "p3", "p3"]
    estimate = nmi_estimate(situations, modes, clusters, resamples=200, seed=0)
    assert estimate.value == pytest.approx(1.0) and estimate.n == 5
    assert estimate.low <= estimate.high <= 1.0
    assert nmi_estimate(situations, modes, clusters, resamples=200, seed=0) == estimate


def test_expected_mode_rate_counts_unreadable():
    result = expected_mode_rate(["assist", None, "refuse", "unclear", "assist"],
                                ["assist", "assist", "assist", "refuse", "assist"], unreadable={"unclear"})
    assert result.unreadable == 2
    assert result.rate.value == pytest.approx(2 / 3) and result.rate.n == 3
    assert 0 < result.rate.low < 2 / 3 < result.rate.high < 1


# -- consistency --------------------------------------------------------------------------------------


def test_mode_agreement_by_hand():
    # g1: x, x, y -> 1 equal pair of 3; g2: z, z -> 1 of 1; g3 has one readable label and is skipped.
    modes = ["x", "x", "y", "z", "z", "w", None]
    groups = ["g1", "g1", "g1", "g2", "g2", "g3", "g3"]
    estimate = mode_agreement(modes, groups, resamples=200)
    assert estimate.value == pytest.approx(2 / 3) and estimate.n == 2
    assert estimate.low == pytest.approx(1 / 3) and estimate.high == pytest.approx(1.0)


def test_mode_agreement_resamples_whole_clusters_and_refuses_split_groups():
    modes = ["x", "y", "x", "x", "x", "x"]
    groups = ["a", "a", "b", "b", "c", "c"]
    together = mode_agreement(modes, groups, clusters=["p", "p", "p", "p", "p", "p"], resamples=100)
    assert (together.value, together.low, together.high) == pytest.approx((2 / 3,) * 3)  # one cluster: no spread
    with pytest.raises(ValueError, match="group 'a'"):
        mode_agreement(modes, groups, clusters=["p", "q", "p", "p", "p", "p"])


def test_icc_by_hand():
    # g1: 1, 3; g2: 5, 7. MSB = 2*(2-4)^2 + 2*(6-4)^2 = 16 (1 df); MSW = 4 / 2 = 2; n0 = 2.
    # ICC = (16 - 2) / (16 + (2 - 1) * 2) = 7/9.
    spread = projection_spread([1.0, 3.0, 5.0, 7.0], ["g1", "g1", "g2", "g2"], resamples=100)
    assert spread.icc.value == pytest.approx(7 / 9) and spread.icc.n == 2
    assert spread.shift is None


def test_icc_with_unequal_groups_matches_the_anova_formula():
    values = [1.0, 2.0, 4.0, 6.0, 7.0]
    groups = ["a", "a", "a", "b", "b"]
    # means 7/3 and 6.5, grand 4; SSB = 3*(7/3-4)^2 + 2*(6.5-4)^2 over 1 df; SSW = (16/9+1/9+25/9) + 0.5 over 3
    msb, msw = 3 * (7 / 3 - 4) ** 2 + 2 * 2.5 ** 2, (42 / 9 + 0.5) / 3
    n0 = 5 - (9 + 4) / 5
    assert projection_spread(values, groups, resamples=10).icc.value == pytest.approx(
        (msb - msw) / (msb + (n0 - 1) * msw))


def test_projection_shift_from_the_reference_row():
    values = [1.0, 3.0, 5.0, 4.0, 2.0]
    groups = ["g1", "g1", "g2", "g2", "g3"]
    reference = [True, False, True, False, True]  # g3 has nothing but its reference and is skipped
    spread = projection_spread(values, groups, reference, resamples=200)
    assert spread.shift.value == pytest.approx(0.5) and spread.shift.n == 2  # (3-1 + 4-5) / 2
    assert spread.shift.low == pytest.approx(-1.0) and spread.shift.high == pytest.approx(2.0)
    with pytest.raises(ValueError, match="group 'g1' has more than one reference"):
        projection_spread(values, groups, [True, True, True, False, True])


# -- the bundle ---------------------------------------------------------------------------------------


SUITE = SituationSuite(types=[
    {"id": kind, "description": kind, "expected_mode": mode,
     "prompts": [{"id": f"{kind}_{p}", "paraphrases": [f"{kind} {p} one", f"{kind} {p} two"]} for p in range(4)]}
    for kind, mode in [("everyday_task", "assist"), ("scam", "caution_or_redirect"), ("medical", "correct_premise")]
])


def synthetic_columns():
    """3 types x 4 prompts x 2 paraphrases x 2 system prompts; the persona (system 1) makes scams get 'assist'."""
    prompts = situation_prompts(SUITE, (None, "You are a pirate."))
    types = [p.meta["type"] for p in prompts]
    systems = [p.meta["system_index"] for p in prompts]
    expected = [p.meta["expected_mode"] for p in prompts]
    modes = ["assist" if t == "scam" and s == 1 else e for t, s, e in zip(types, systems, expected)]
    modes[0] = None  # one unreadable judgement, on a no-persona row
    g = torch.Generator().manual_seed(7)
    centres = {kind: 5 * torch.eye(3, 6)[i] for i, kind in enumerate(dict.fromkeys(types))}
    features = torch.stack([centres[t] for t in types]) + torch.randn(len(prompts), 6, generator=g)
    base = {cluster: float(i) for i, cluster in enumerate(dict.fromkeys(p.cluster for p in prompts))}
    projections = [base[p.cluster] + 0.1 * p.meta["paraphrase_index"] + 0.5 * s for p, s in zip(prompts, systems)]
    columns = {"features": features, "types": types, "clusters": [p.cluster for p in prompts],
               "paraphrases": [p.meta["paraphrase_index"] for p in prompts], "systems": systems, "modes": modes,
               "expected": expected, "projections": projections}
    return columns, grouped_folds(prompts, 4, seed=0)


def test_context_scores_on_a_synthetic_suite():
    columns, folds = synthetic_columns()
    scores = context_scores(**columns, folds=folds, resamples=200)
    assert scores.rows == 24  # system index 0 only
    assert scores.probe.accuracy.n == 24 and scores.probe.accuracy.value > 0.9
    assert sum(train + test for train, test in scores.probe.fold_sizes) == 4 * 24
    assert scores.variance_ratio.value > 10
    assert scores.expected_mode.rate.value == 1.0 and scores.expected_mode.rate.n == 23
    assert scores.expected_mode.unreadable == 1
    assert scores.mode_nmi.value == pytest.approx(1.0) and scores.mode_nmi.n == 23
    # paraphrases always agree; the one unreadable row leaves its (prompt, system 0) group with one label
    assert scores.paraphrase_agreement.value == 1.0 and scores.paraphrase_agreement.n == 23
    # the 8 scam (prompt, paraphrase) groups disagree across personas; 23 groups have two readable modes
    assert scores.persona_agreement.value == pytest.approx(15 / 23) and scores.persona_agreement.n == 23
    assert scores.persona_projection.shift.value == pytest.approx(0.5)
    assert scores.persona_projection.shift.low == pytest.approx(0.5) == scores.persona_projection.shift.high
    assert scores.persona_projection.icc.value > 0.9 and scores.persona_projection.icc.n == 24
    assert scores.paraphrase_projection.shift is None and scores.paraphrase_projection.icc.value > 0.9


def test_context_scores_without_activations_or_projections_and_over_all_systems():
    columns, _ = synthetic_columns()
    columns.update(features=None, projections=None)
    scores = context_scores(**columns, resamples=50)
    assert scores.probe is None and scores.variance_ratio is None
    assert scores.paraphrase_projection is None and scores.persona_projection is None
    everything = context_scores(**columns, all_systems=True, unreadable={"assist"}, resamples=50)
    assert everything.rows == 48
    # 'assist' now reads as unreadable: the 16 everyday rows (one already None) and the 8 persona scam rows
    assert everything.expected_mode.unreadable == 24 and everything.expected_mode.rate.value == 1.0


def test_context_scores_needs_folds_with_features_and_is_seeded():
    columns, folds = synthetic_columns()
    with pytest.raises(ValueError, match="needs folds"):
        context_scores(**columns)
    assert context_scores(**columns, folds=folds, resamples=100, seed=3) == context_scores(
        **columns, folds=folds, resamples=100, seed=3)
