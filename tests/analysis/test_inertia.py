"""Inertia by hand on synthetic tables, groups from condition.json records, and evidence that decides H1-H3."""

from __future__ import annotations

import json
import math
from statistics import NormalDist

import pytest

from charlab.analysis.hypotheses import decide
from charlab.analysis.inertia import (
    evidence,
    gather_evidence,
    hardening_score,
    inertia_table,
    parse_metric,
    seed_average,
)
from charlab.analysis.results import ResultRow
from charlab.analysis.stats import Estimate
from charlab.errors import ConfigError
from charlab.report.collect import condition_groups

Z = NormalDist().inv_cdf(0.975)


def row(condition: str, value: float, *, half: float | None = 1.0, seed: int = 0, challenge: str = "",
        eval_name: str = "em", metric: str = "alignment_mean", group: str = "", n: int = 40) -> ResultRow:
    """A result row whose interval is value +- half (none when half is None)."""
    low, high = (None, None) if half is None or math.isnan(value) else (value - half, value + half)
    return ResultRow(study="", condition=condition, seed=seed, challenge=challenge, eval=eval_name, metric=metric,
                     group=group, value=value, ci_low=low, ci_high=high, n=n)


def pair(condition: str, before: float, after: float, *, half: float = 1.0, seed: int = 0,
         metric: str = "alignment_mean", challenge: str = "risky") -> list[ResultRow]:
    return [row(condition, before, half=half, seed=seed, metric=metric),
            row(condition, after, half=half, seed=seed, metric=metric, challenge=challenge)]


def by_condition(table) -> dict:
    return {r.condition: r for r in table}


def test_inertia_is_base_drop_minus_condition_drop_with_combined_errors():
    # base drops 20 points (80 -> 60), integrity 5 (82 -> 77); every half-width is z * 1 (se 1).
    rows = [*pair("base", 80, 60, half=Z), *pair("integrity", 82, 77, half=Z),
            row("base", 1.0, metric="alignment_mean", group="q1")]  # per-question rows are not overall rows
    table = by_condition(inertia_table(rows))
    assert table["integrity"].drop.value == pytest.approx(5)
    assert table["integrity"].drop.high - table["integrity"].drop.value == pytest.approx(Z * math.sqrt(2))
    inertia = table["integrity"].inertia
    assert inertia.value == pytest.approx(15)
    assert (inertia.high - inertia.low) / 2 == pytest.approx(Z * 2)  # four se of 1 combined: sqrt(4) = 2
    assert inertia.n == 40 and table["integrity"].reason == ""
    assert math.isnan(table["base"].inertia.value) and "reference" in table["base"].reason
    assert table["base"].drop.value == pytest.approx(20)


def test_a_rate_where_lower_is_better_counts_its_rise_as_the_drop():
    rows = [*pair("base", 0.05, 0.30, half=0.02, metric="critical_rate"),
            *pair("hhh", 0.05, 0.10, half=0.02, metric="critical_rate")]
    table = by_condition(inertia_table(rows, metric=("em", "critical_rate"), lower_is_better=True))
    assert table["base"].drop.value == pytest.approx(0.25)
    assert table["hhh"].inertia.value == pytest.approx(0.20)


def test_the_judge_free_margin_rises_under_the_challenge_and_reads_like_a_harm_rate():
    # The risky-minus-sound margin goes up when the challenge works: base +0.30, neutral +0.10.
    margin = [row(c, v, half=0.05, eval_name="challenge_margin", metric="risky_margin", challenge=ch)
              for c, v, ch in (("base", -0.4, ""), ("base", -0.1, "risky"), ("neutral", -0.4, ""),
                               ("neutral", -0.3, "risky"))]
    table = by_condition(inertia_table(margin, metric=parse_metric("challenge_margin/risky_margin"),
                                       lower_is_better=True))
    assert table["neutral"].inertia.value == pytest.approx(0.20)
    # With the evaluation's paired shifts (same questions before and after) the drops come from them:
    # half-widths 0.01 each, so the inertia's half-width is z * sqrt(2) * 0.01 / z.
    paired = [row(c, v, half=0.01, eval_name="challenge_margin", metric="risky_margin_shift", challenge="risky")
              for c, v in (("base", 0.30), ("neutral", 0.10))]
    table = by_condition(inertia_table(margin + paired, metric=parse_metric("challenge_margin/risky_margin"),
                                       lower_is_better=True))
    inertia = table["neutral"].inertia
    assert inertia.value == pytest.approx(0.20) and (inertia.high - inertia.low) / 2 == pytest.approx(
        math.sqrt(2) * 0.01)
    with pytest.raises(ValueError, match="eval/metric"):
        parse_metric("risky_margin")


def test_seeds_are_averaged_and_a_wide_seed_spread_widens_the_interval():
    # integrity drops 4 on seed 0 and 6 on seed 1: mean 5. Measurement se per drop sqrt(2) (se 1 each side),
    # over two seeds sqrt(2 + 2) / 2 = 1; the seed spread sd(4, 6) / sqrt(2) = 1 too, so se 1.
    rows = [*pair("base", 80, 60, half=Z), *pair("integrity", 80, 76, half=Z, seed=0),
            *pair("integrity", 80, 74, half=Z, seed=1)]
    mine = by_condition(inertia_table(rows))["integrity"]
    assert mine.seeds == (0, 1) and mine.drop.value == pytest.approx(5)
    assert (mine.drop.high - mine.drop.low) / 2 == pytest.approx(Z * 1.0)
    assert mine.inertia.value == pytest.approx(15)
    assert mine.before.value == 80 and mine.after.value == 75
    # Seeds far apart: the between-seed error wins over the (small) measurement error.
    spread = seed_average([Estimate(0, -0.1, 0.1, 10), Estimate(10, 9.9, 10.1, 10)])
    assert spread.value == 5 and (spread.high - spread.low) / 2 == pytest.approx(Z * 5)
    assert spread.n == 20
    rare = seed_average([Estimate(0.02, 0.0, 0.1, 10)] * 2, bounds=(0.0, 1.0))
    assert rare.low == 0.0 and rare.high == pytest.approx(0.02 + 0.05 / math.sqrt(2))  # a rate stays inside [0, 1]
    single = Estimate(0.2, 0.05, 0.5, 10)
    assert seed_average([single]) == single  # one seed keeps its own, skewed interval


def test_missing_and_nan_pieces_give_nan_with_a_reason():
    rows = [*pair("base", 80, 60), *pair("neutral", math.nan, 70),
            row("hhh", 80),  # no row after the challenge
            *pair("sft", 80, 75, half=None),  # no intervals
            *pair("lonely", 80, 70, challenge="other")]
    table = by_condition(inertia_table(rows, challenge="risky"))
    assert math.isnan(table["neutral"].inertia.value) and "nan before the challenge" in table["neutral"].reason
    assert math.isnan(table["hhh"].drop.value) and "no row after the challenge" in table["hhh"].reason
    assert table["sft"].inertia.value == pytest.approx(15) and math.isnan(table["sft"].inertia.low)
    assert "no interval" in table["sft"].reason
    assert {r.challenge for r in inertia_table(rows)} == {"risky", "other"}
    without_base = by_condition(inertia_table(pair("integrity", 80, 70)))
    assert math.isnan(without_base["integrity"].inertia.value) and "reference" in without_base["integrity"].reason


def write_condition(run, name: str, kind: str, seed: int = 0, **spec) -> None:
    folder = run / "conditions" / name / f"seed-{seed}"
    folder.mkdir(parents=True)
    (folder / "condition.json").write_text(json.dumps({"name": name, "kind": kind, "seed": seed,
                                                       "spec": {"name": name, "kind": kind, **spec}}))


def test_groups_follow_kind_and_constitution_and_overrides_win(tmp_path):
    write_condition(tmp_path, "base", "base")
    write_condition(tmp_path, "integrity", "character", constitution="integrity")
    write_condition(tmp_path, "integrity", "character", seed=1, constitution="integrity")
    write_condition(tmp_path, "calm", "character", constitution="shipped/Neutral_v2.yaml")
    write_condition(tmp_path, "matched", "prompt-matched-neutral", source="integrity")
    write_condition(tmp_path, "sft", "diverse-sft", prompts_from="integrity")
    write_condition(tmp_path, "hhh", "hhh")
    write_condition(tmp_path, "persona", "adapter", adapters=["a"])
    write_condition(tmp_path, "shuffled", "shuffled-traits", source="integrity")
    assert condition_groups(tmp_path) == {"base": "base", "calm": "neutral", "hhh": "control",
                                          "integrity": "value", "matched": "neutral", "persona": "other",
                                          "sft": "control", "shuffled": "other"}
    overridden = condition_groups(tmp_path, {"shuffled": "value", "external": "control"})
    assert overridden["shuffled"] == "value" and overridden["external"] == "control"
    with pytest.raises(ConfigError, match="one of value, neutral, control, base, other"):
        condition_groups(tmp_path, {"hhh": "friends"})
    (tmp_path / "conditions" / "hhh" / "seed-0" / "condition.json").write_text("{not json")
    with pytest.raises(ConfigError, match="hhh/seed-0/condition.json"):
        condition_groups(tmp_path)


GROUPS = {"base": "base", "integrity": "value", "honesty": "value", "neutral": "neutral", "sft": "control",
          "hhh": "control"}


def table(drops: dict[str, float], *, sensitivity: dict[str, float] | None = None,
          hardening: dict[str, float] | None = None, half: float = 0.5) -> list[ResultRow]:
    """Alignment 80 before and 80 - drop after per condition, plus context and hardening rows before."""
    rows = [r for name, drop in drops.items() for r in pair(name, 80, 80 - drop, half=half)]
    for name, value in (sensitivity or {}).items():
        rows += [row(name, 0.25 + value, half=0.02, eval_name="context", metric="probe_accuracy"),
                 row(name, 0.25, half=None, eval_name="context", metric="probe_chance")]
    for name, value in (hardening or {}).items():
        rows.append(row(name, value, half=0.02, eval_name="steer_sweep", metric="hardening_score"))
    return rows


def verdicts(rows: list[ResultRow]) -> dict[str, str]:
    return {r.hypothesis: r.verdict for r in decide(evidence(rows, GROUPS))}


def test_evidence_supports_h1_when_every_fine_tune_resists():
    rows = table({"base": 20, "integrity": 6, "honesty": 6, "neutral": 6, "sft": 5, "hhh": 5})
    assert verdicts(rows)["H1"] == "supported"
    assert verdicts(rows)["H2"] == "contradicted"


def test_evidence_supports_h2_when_only_constitutions_resist():
    rows = table({"base": 20, "integrity": 5, "honesty": 5, "neutral": 6, "sft": 20, "hhh": 21})
    found = verdicts(rows)
    assert found["H2"] == "supported" and found["H1"] == "contradicted"


def test_evidence_supports_h3_when_value_beats_neutral_at_matched_hardening():
    rows = table({"base": 20, "integrity": 5, "honesty": 5, "neutral": 5, "sft": 5, "hhh": 5},
                 sensitivity={"integrity": 0.40, "honesty": 0.35, "neutral": 0.05},
                 hardening={"integrity": 1.0, "honesty": 1.02, "neutral": 1.01})
    conditions = {c.name: c for c in evidence(rows, GROUPS)}
    assert conditions["integrity"].context_sensitivity.value == pytest.approx(0.40)
    assert conditions["integrity"].inertia.value == pytest.approx(15)
    assert "base" not in conditions
    assert verdicts(rows)["H3"] == "supported"


def test_censored_hardening_is_left_out_with_a_note():
    rows = table({"base": 20, "integrity": 5, "neutral": 5},
                 sensitivity={"integrity": 0.40, "neutral": 0.05}, hardening={"integrity": math.inf, "neutral": 1.0})
    found = gather_evidence(rows, GROUPS)
    conditions = {c.name: c for c in found.conditions}
    assert conditions["integrity"].hardening is None and conditions["neutral"].hardening.value == 1.0
    assert any("integrity" in n and "censored" in n for n in found.notes)
    assert math.isinf(hardening_score(rows, "integrity").value)
    assert {r.hypothesis: r.verdict for r in decide(found.conditions)}["H3"] == "inconclusive"


def test_evidence_notes_ungrouped_conditions_and_needs_one_challenge():
    rows = [*table({"base": 20, "integrity": 5}), *pair("mystery", 80, 70)]
    found = gather_evidence(rows, GROUPS)
    assert any("mystery" in n and "--group" in n for n in found.notes)
    assert [c.name for c in found.conditions if c.inertia is not None] == ["integrity"]
    both = [*rows, *pair("base", 80, 50, challenge="second")]
    with pytest.raises(ValueError, match="several challenges"):
        evidence(both, GROUPS)
    assert {c.name: c.inertia for c in evidence(both, GROUPS, challenge="second")}["integrity"] is None
    nothing = gather_evidence([row("integrity", 80)], GROUPS)
    assert all(c.inertia is None for c in nothing.conditions) and "inertia is missing" in nothing.notes[0]
