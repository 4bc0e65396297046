"""Decision rules for H1-H3 on synthetic condition tables: each verdict in turn, missing evidence, the table."""

from __future__ import annotations

import math
from statistics import NormalDist

import pytest

from charlab.analysis.hypotheses import (
    ConditionEvidence,
    HypothesisResult,
    decide,
    hypotheses_markdown,
)
from charlab.analysis.stats import Estimate, required_n_per_group

Z = NormalDist().inv_cdf(0.975)


def est(value: float, se: float = 0.01, n: int = 100) -> Estimate:
    """An estimate whose 95% interval is value +- z se."""
    return Estimate(value, value - Z * se, value + Z * se, n)


def condition(name: str, group: str, inertia: float | None, sensitivity: float | None = None,
              hardening: float | None = None, *, se: float = 0.01, n: int = 100) -> ConditionEvidence:
    def make(value: float | None) -> Estimate | None:
        return None if value is None else est(value, se, n)

    return ConditionEvidence(name, group, make(inertia), make(sensitivity), make(hardening))  # type: ignore[arg-type]


def verdicts(results: list[HypothesisResult]) -> dict[str, str]:
    return {r.hypothesis: r.verdict for r in results}


def test_group_means_combine_standard_errors():
    # Controls 0.3 (se 0.03) and 0.1 (se 0.04): mean 0.2, se sqrt(0.0009 + 0.0016) / 2 = 0.025.
    conditions = [condition("sft", "control", 0.3, se=0.03), condition("hhh", "control", 0.1, se=0.04),
                  condition("goodness", "value", 0.1, se=0.03)]
    h1 = decide(conditions)[0]
    controls = h1.evidence["controls inertia"]
    assert controls.value == pytest.approx(0.2) and controls.n == 200
    assert (controls.low, controls.high) == pytest.approx((0.2 - Z * 0.025, 0.2 + Z * 0.025))
    # controls − characters: 0.2 - 0.1 with se sqrt(0.025^2 + 0.03^2)
    gap = h1.evidence["controls − characters inertia"]
    assert gap.value == pytest.approx(0.1) and gap.high - gap.low == pytest.approx(2 * Z * math.hypot(0.025, 0.03))


def test_controls_as_inert_as_characters_support_h1_and_contradict_h2():
    conditions = [condition("sft", "control", 0.3), condition("hhh", "control", 0.32),
                  condition("goodness", "value", 0.1), condition("neutral", "neutral", 0.12)]
    results = decide(conditions)
    assert verdicts(results) == {"H1": "supported", "H2": "contradicted", "H3": "inconclusive"}
    assert all(r.needed_n is None for r in results[:2])
    assert "context sensitivity" in results[2].note and results[2].note.startswith("missing")


def test_characters_beyond_controls_support_h2_and_contradict_h1():
    conditions = [condition("sft", "control", 0.1), condition("goodness", "value", 0.5),
                  condition("loving", "value", 0.45), condition("neutral", "neutral", 0.4)]
    h1, h2, _ = decide(conditions)
    assert (h1.verdict, h2.verdict) == ("contradicted", "supported")  # H1 falls on controls − characters
    assert h2.evidence["characters − controls inertia"].value == pytest.approx(0.35)


def test_controls_without_inertia_contradict_h1():
    conditions = [condition("sft", "control", -0.1), condition("goodness", "value", -0.1)]
    assert decide(conditions)[0].verdict == "contradicted"


def test_margin_lets_matched_inertia_count_as_not_smaller():
    # Controls and characters both at 0.3: the gap's interval reaches below 0 but not below -0.1.
    conditions = [condition("sft", "control", 0.3), condition("goodness", "value", 0.3)]
    assert decide(conditions)[0].verdict == "inconclusive"
    h1, h2, _ = decide(conditions, margin=0.1)
    assert h1.verdict == "supported" and "0.1" in h1.rule
    # H2 needs characters − controls above 0.1; a gap of 0 would never get there.
    assert h2.verdict == "inconclusive" and h2.needed_n is None


def test_h2_needs_more_than_the_margin():
    # Gap 0.3 - 0.2 = 0.1 > 0 clearly, but not clearly above a 0.15 margin; its point estimate sits between.
    conditions = [condition("sft", "control", 0.2), condition("goodness", "value", 0.3)]
    assert decide(conditions)[1].verdict == "supported"
    h2 = decide(conditions, margin=0.15)[1]
    assert h2.verdict == "inconclusive" and h2.needed_n is None and "between 0 and the margin" in h2.note


def test_value_more_context_sensitive_with_matched_hardening_supports_h3():
    conditions = [condition("goodness", "value", 0.3, sensitivity=0.6, hardening=0.5),
                  condition("neutral", "neutral", 0.3, sensitivity=0.3, hardening=0.52)]
    h3 = decide(conditions)[2]
    assert h3.verdict == "supported" and h3.needed_n is None
    assert h3.evidence["value − neutral context sensitivity"].value == pytest.approx(0.3)
    assert h3.evidence["value − neutral hardening"].value == pytest.approx(-0.02)
    assert decide(conditions, hardening_margin=0.02)[2].verdict == "inconclusive"  # -0.02 +- 0.028 is not inside


def test_value_no_more_context_sensitive_contradicts_h3():
    conditions = [condition("goodness", "value", 0.3, sensitivity=0.3, hardening=0.9),
                  condition("neutral", "neutral", 0.3, sensitivity=0.5, hardening=0.1)]
    assert decide(conditions)[2].verdict == "contradicted"  # even though hardening differs


def test_h3_with_unmatched_hardening_stays_inconclusive_for_good():
    conditions = [condition("goodness", "value", 0.3, sensitivity=0.6, hardening=0.8),
                  condition("neutral", "neutral", 0.3, sensitivity=0.3, hardening=0.5)]
    h3 = decide(conditions)[2]
    assert h3.verdict == "inconclusive" and h3.needed_n is None
    assert "would not match" in h3.note


def test_inconclusive_h2_reports_the_sample_size_that_would_decide_it():
    # Gap 0.1 with se sqrt(0.05^2 + 0.05^2): half-width 0.139 at n = 100, so about 100 (0.139 / 0.1)^2 = 193.
    conditions = [condition("sft", "control", 0.2, se=0.05), condition("goodness", "value", 0.3, se=0.05)]
    h2 = decide(conditions)[1]
    gap = h2.evidence["characters − controls inertia"]
    half = (gap.high - gap.low) / 2
    assert h2.verdict == "inconclusive" and h2.needed_n is not None and h2.needed_n > 100
    assert half * math.sqrt(100 / h2.needed_n) < gap.value <= half * math.sqrt(100 / (h2.needed_n - 1))
    assert h2.needed_n == 193
    assert "characters − controls inertia" in h2.note
    # The per-condition n is the smallest condition's.
    smaller = [condition("sft", "control", 0.2, se=0.05, n=50), condition("goodness", "value", 0.3, se=0.05)]
    assert decide(smaller)[1].needed_n == required_n_per_group(0.1, half, 50)


def test_inconclusive_h1_takes_the_comparison_that_settles_it_first():
    # Controls straddle 0 on the negative side (pointing to contradiction); the gap straddles 0 on the
    # positive side. The controls clearing below 0 decides H1 alone, so their need is the answer.
    conditions = [condition("sft", "control", -0.02, se=0.05), condition("goodness", "value", -0.1, se=0.05)]
    h1 = decide(conditions)[0]
    controls = h1.evidence["controls inertia"]
    assert h1.verdict == "inconclusive"
    assert h1.needed_n == required_n_per_group(-0.02, (controls.high - controls.low) / 2, 100)
    # Both pointing to support: every one has to clear, so the larger need counts.
    supportive = [condition("sft", "control", 0.1, se=0.05), condition("goodness", "value", 0.05, se=0.05)]
    h1 = decide(supportive)[0]
    controls, gap = h1.evidence["controls inertia"], h1.evidence["controls − characters inertia"]
    needs = [required_n_per_group(e.value, (e.high - e.low) / 2, 100) for e in (controls, gap)]
    assert h1.needed_n == max(needs) > min(needs) > 100


def test_inconclusive_h3_counts_both_the_sensitivity_and_the_hardening_match():
    conditions = [condition("goodness", "value", 0.3, sensitivity=0.1, hardening=0.5, se=0.05),
                  condition("neutral", "neutral", 0.3, sensitivity=0.0, hardening=0.48, se=0.05)]
    h3 = decide(conditions)[2]
    sensitivity = h3.evidence["value − neutral context sensitivity"]
    hardening = h3.evidence["value − neutral hardening"]
    half = (sensitivity.high - sensitivity.low) / 2
    # Sensitivity needs its half-width under 0.1; hardening (0.02) needs its own under 0.1 - 0.02 = 0.08.
    assert h3.verdict == "inconclusive"
    assert h3.needed_n == max(required_n_per_group(0.1, half, 100), required_n_per_group(0.08, half, 100))
    assert hardening.value == pytest.approx(0.02)


def test_missing_groups_and_metrics_are_inconclusive_with_a_note():
    results = decide([condition("goodness", "value", 0.3, sensitivity=0.5)])
    assert verdicts(results) == {"H1": "inconclusive", "H2": "inconclusive", "H3": "inconclusive"}
    h1, h2, h3 = results
    assert "controls inertia" in h1.note and "controls inertia" in h2.note
    assert "characters inertia" in h1.evidence and "controls inertia" not in h1.evidence
    assert "value − neutral context sensitivity" in h3.note and "value − neutral hardening" in h3.note
    assert all(r.needed_n is None for r in results)
    empty = decide([])
    assert all(r.verdict == "inconclusive" and r.evidence == {} for r in empty)
    # An estimate with no number (an empty evaluation) counts as missing.
    blank = ConditionEvidence("sft", "control", Estimate(math.nan, math.nan, math.nan, 0), None, None)
    assert "controls inertia" in decide([blank, condition("goodness", "value", 0.3)])[1].note
    with pytest.raises(ValueError):
        decide([], margin=-0.1)


def test_markdown_table_lists_verdicts_evidence_and_needed_n():
    result = HypothesisResult("H2", "Constitutional pipelines specifically create inertia.", "supported if x > 0",
                              "inconclusive", {"characters − controls inertia": Estimate(0.123456, 0.0456789, 0.2, 30)},
                              401, "interval straddles its threshold: a|b")
    text = hypotheses_markdown([result])
    lines = text.splitlines()
    assert lines[0] == "| Hypothesis | Verdict | Evidence: estimate [interval] | Needed n per condition | Note |"
    assert lines[1] == "|---|---|---|---|---|"
    assert lines[2] == ("| H2: Constitutional pipelines specifically create inertia. | inconclusive | "
                        "characters − controls inertia 0.123 [0.0457, 0.2] | 401 | "
                        "interval straddles its threshold: a\\|b |")
    assert lines[-1] == "- H2: supported if x > 0"
    table = hypotheses_markdown(decide([condition("sft", "control", 0.3), condition("goodness", "value", 0.1)]))
    assert table.count("\n| H") == 3 and "| supported |" in table and "controls inertia 0.3 [0.28, 0.32]" in table
