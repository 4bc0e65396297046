"""Which hypothesis the data supports: fixed decision rules over per-condition estimates.

The study compares trained conditions in three groups: ``value`` (value-laden constitutions),
``neutral`` (a constitution of non-normative traits, same pipeline) and ``control``
(non-constitutional training of matched compute). "Characters" are value and neutral together.
Each condition brings up to three estimates: inertia (how much less the misalignment challenge
hurt it than base; positive resists), context sensitivity and persona hardening.

The rules are written down before the data is seen and applied mechanically:

- **H1** (any extra fine-tuning creates inertia) is supported when the controls' mean inertia is
  above 0 and controls - characters is not below ``-margin``; contradicted when the controls'
  inertia is at or below 0, or controls - characters lies below ``-margin``.
- **H2** (constitutional pipelines create it) is supported when characters - controls lies above
  ``margin``; contradicted when it lies at or below 0.
- **H3** (one trait trained across many situations creates context sensitivity beyond hardening)
  is supported when value - neutral context sensitivity lies above 0 and value - neutral hardening
  lies inside ``[-hardening_margin, hardening_margin]``; contradicted when the context-sensitivity
  difference lies at or below 0.

"Lies above/below" means the whole interval does. Anything else is inconclusive, and so is any
rule whose evidence is missing (a group with no conditions, or no estimate of the metric).

Group means and their differences are approximations: a group's value is the plain mean of its
conditions' values, and its interval combines the conditions' standard errors as if each
estimate were normal and independent, reading each standard error off its interval as
``se = (high - low) / (2 z)`` at the given confidence. Bootstrap intervals that are skewed are
thereby made symmetric; a group estimate's ``n`` is its conditions' samples together.
Conditions count equally whatever their sample sizes, and the spread between conditions of one
group is not part of the interval: it speaks to these conditions, not to all conditions one
could have trained.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist
from typing import Literal

from charlab.analysis.groups import HypothesisGroup
from charlab.analysis.stats import Estimate, required_n_per_group

Metric = Literal["inertia", "context_sensitivity", "hardening"]
Verdict = Literal["supported", "contradicted", "inconclusive"]

_CHARACTERS: tuple[HypothesisGroup, ...] = ("value", "neutral")
_CONTROLS: tuple[HypothesisGroup, ...] = ("control",)


ROUNDING = 1e-9  # relative slack below which a difference sits on its threshold

@dataclass(frozen=True)
class ConditionEvidence:
    """One trained condition's estimates; None where the study did not measure it."""

    name: str
    group: HypothesisGroup
    inertia: Estimate | None
    context_sensitivity: Estimate | None
    hardening: Estimate | None


@dataclass(frozen=True)
class HypothesisResult:
    """The verdict on one hypothesis, with the rule that gave it and the estimates it read.

    ``needed_n`` (only when inconclusive) is the sample size per condition at which every interval
    still straddling its threshold would clear it, if point estimates held and every condition's
    sample grew by the same factor; it is given for the condition with the fewest samples. None
    when more data would not decide it (a point estimate on its threshold) or evidence is missing.
    """

    hypothesis: str
    claim: str
    rule: str
    verdict: Verdict
    evidence: dict[str, Estimate]
    needed_n: int | None
    note: str


@dataclass(frozen=True)
class _Pooled:
    """A group mean or a difference of group means, with the fewest samples behind any one condition."""

    estimate: Estimate
    se: float
    fewest: int


def _usable(estimate: Estimate | None) -> bool:
    return estimate is not None and all(math.isfinite(v) for v in (estimate.value, estimate.low, estimate.high))


def _group_mean(conditions: Sequence[ConditionEvidence], groups: tuple[HypothesisGroup, ...], metric: Metric,
                z: float) -> _Pooled | None:
    """Mean over the conditions in ``groups`` that have a finite ``metric``; None when none have."""
    estimates = [e for c in conditions if c.group in groups and _usable(e := getattr(c, metric))]
    if not estimates:
        return None
    k = len(estimates)
    value = sum(e.value for e in estimates) / k
    se = math.sqrt(sum(((e.high - e.low) / (2 * z)) ** 2 for e in estimates)) / k
    return _Pooled(Estimate(value, value - z * se, value + z * se, sum(e.n for e in estimates)), se,
                   min(e.n for e in estimates))


def _difference(a: _Pooled | None, b: _Pooled | None, z: float) -> _Pooled | None:
    if a is None or b is None:
        return None
    value, se = a.estimate.value - b.estimate.value, math.hypot(a.se, b.se)
    return _Pooled(Estimate(value, value - z * se, value + z * se, a.estimate.n + b.estimate.n), se,
                   min(a.fewest, b.fewest))


@dataclass(frozen=True)
class _Open:
    """A comparison whose interval still straddles its threshold."""

    name: str
    needed: int | None  # sample size at which it would clear, None if it never would
    toward_support: bool  # which side its point estimate lies on


def _open(name: str, pooled: _Pooled, distance: float, toward_support: bool) -> _Open:
    """``distance`` from the point estimate to the threshold the interval must clear."""
    half = (pooled.estimate.high - pooled.estimate.low) / 2
    needed = required_n_per_group(distance, half, pooled.fewest) if pooled.fewest >= 1 else None
    return _Open(name, needed, toward_support)


def _decided_at(parts: list[_Open]) -> int | None:
    """When the open comparisons would settle the verdict, if point estimates held.

    One comparison clearing toward contradiction settles it alone, so the soonest of those
    counts; otherwise every one must clear toward support, so the latest counts.
    """
    against = [p.needed for p in parts if not p.toward_support and p.needed is not None]
    if against:
        return min(against)
    needs = [p.needed for p in parts]
    return None if None in needs else max(n for n in needs if n is not None)


def _still_open(parts: list[_Open]) -> str:
    return "interval straddles its threshold: " + ", ".join(p.name for p in parts)


def _missing(named: dict[str, _Pooled | None]) -> str:
    return "missing: " + ", ".join(name for name, pooled in named.items() if pooled is None)


def _evidence(named: dict[str, _Pooled | None]) -> dict[str, Estimate]:
    return {name: pooled.estimate for name, pooled in named.items() if pooled is not None}


def _h1(conditions: Sequence[ConditionEvidence], margin: float, z: float) -> HypothesisResult:
    controls = _group_mean(conditions, _CONTROLS, "inertia", z)
    characters = _group_mean(conditions, _CHARACTERS, "inertia", z)
    gap = _difference(controls, characters, z)
    named = {"controls inertia": controls, "characters inertia": characters, "controls − characters inertia": gap}
    claim = "Any extra fine-tuning creates inertia."
    bound = f"−{margin:g}" if margin else "0"
    rule = (f"supported if controls inertia > 0 and controls − characters >= {bound}; contradicted if controls "
            f"inertia <= 0 or controls − characters < {bound} (whole intervals)")

    def result(verdict: Verdict, needed: int | None, note: str) -> HypothesisResult:
        return HypothesisResult("H1", claim, rule, verdict, _evidence(named), needed, note)

    if controls is None or gap is None:
        return result("inconclusive", None, _missing(named))
    c, g = controls.estimate, gap.estimate
    if c.low > 0 and g.low >= -margin:
        return result("supported", None, "")
    if c.high <= 0 or g.high < -margin:
        return result("contradicted", None, "")
    parts = [] if c.low > 0 else [_open("controls inertia", controls, c.value, c.value > 0)]
    if g.low < -margin:
        parts.append(_open("controls − characters inertia", gap, g.value + margin, g.value > -margin))
    return result("inconclusive", _decided_at(parts), _still_open(parts))


def _h2(conditions: Sequence[ConditionEvidence], margin: float, z: float) -> HypothesisResult:
    characters = _group_mean(conditions, _CHARACTERS, "inertia", z)
    controls = _group_mean(conditions, _CONTROLS, "inertia", z)
    gap = _difference(characters, controls, z)
    named = {"characters inertia": characters, "controls inertia": controls, "characters − controls inertia": gap}
    claim = "Constitutional pipelines specifically create inertia."
    rule = f"supported if characters − controls inertia > {margin:g}; contradicted if it is <= 0 (whole interval)"

    def result(verdict: Verdict, needed: int | None, note: str) -> HypothesisResult:
        return HypothesisResult("H2", claim, rule, verdict, _evidence(named), needed, note)

    if gap is None:
        return result("inconclusive", None, _missing(named))
    g = gap.estimate
    if g.low > margin:
        return result("supported", None, "")
    if g.high <= 0:
        return result("contradicted", None, "")
    name = "characters − controls inertia"
    if 0 < g.value <= margin:  # a shrinking interval would settle between 0 and the margin: neither verdict
        return result("inconclusive", None, f"{name} lies between 0 and the margin at its point estimate, so more "
                                            "samples would not decide it")
    part = _open(name, gap, g.value - margin if g.value > margin else g.value, g.value > margin)
    return result("inconclusive", _decided_at([part]), _still_open([part]))


def _h3(conditions: Sequence[ConditionEvidence], hardening_margin: float, z: float) -> HypothesisResult:
    sensitivity = _difference(_group_mean(conditions, ("value",), "context_sensitivity", z),
                              _group_mean(conditions, ("neutral",), "context_sensitivity", z), z)
    hardening = _difference(_group_mean(conditions, ("value",), "hardening", z),
                            _group_mean(conditions, ("neutral",), "hardening", z), z)
    named = {"value − neutral context sensitivity": sensitivity, "value − neutral hardening": hardening}
    claim = "Training one trait across many situations creates context sensitivity beyond persona hardening."
    rule = (f"supported if value − neutral context sensitivity > 0 and value − neutral hardening within "
            f"±{hardening_margin:g}; contradicted if the context-sensitivity difference is <= 0 (whole intervals)")

    def result(verdict: Verdict, needed: int | None, note: str) -> HypothesisResult:
        return HypothesisResult("H3", claim, rule, verdict, _evidence(named), needed, note)

    if sensitivity is None or hardening is None:
        return result("inconclusive", None, _missing(named))
    s, h = sensitivity.estimate, hardening.estimate
    matched = -hardening_margin <= h.low and h.high <= hardening_margin
    if s.low > 0 and matched:
        return result("supported", None, "")
    if s.high <= 0:
        return result("contradicted", None, "")
    parts = [] if s.low > 0 else [_open("value − neutral context sensitivity", sensitivity, s.value, s.value > 0)]
    note = ""
    if not matched:
        room = hardening_margin - abs(h.value)  # how far the interval may reach either side of its estimate
        if room > ROUNDING * max(1.0, hardening_margin):  # on the margin itself no sample size decides it
            parts.append(_open("value − neutral hardening", hardening, room, True))
        else:
            parts.append(_Open("value − neutral hardening", None, True))
            note = "; hardening differs by the margin or more at its point estimate, so more samples would not match"
    return result("inconclusive", _decided_at(parts), _still_open(parts) + note)


def decide(conditions: Sequence[ConditionEvidence], *, margin: float = 0.0, hardening_margin: float = 0.1,
           confidence: float = 0.95) -> list[HypothesisResult]:
    """Verdicts on H1, H2 and H3, in that order, by the rules in the module docstring.

    ``margin`` is on the inertia scale; ``hardening_margin`` on the hardening metric's scale (the
    default, 0.1, suits rates and shares: ten points either way count as a match). Every
    per-condition interval is read as a ``confidence`` interval, and group intervals are drawn
    at the same level. Missing evidence gives an inconclusive verdict, never an error.
    """
    if margin < 0 or hardening_margin < 0:
        raise ValueError(f"margins must be >= 0, not {margin} and {hardening_margin}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie strictly between 0 and 1, not {confidence}")
    z = NormalDist().inv_cdf(0.5 + confidence / 2)
    return [_h1(conditions, margin, z), _h2(conditions, margin, z), _h3(conditions, hardening_margin, z)]


def _number(x: float) -> str:
    return f"{x:.3g}"


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def hypotheses_markdown(results: Sequence[HypothesisResult]) -> str:
    """A Markdown table of the verdicts (estimates to 3 significant figures), the rules listed below it."""
    lines = ["| Hypothesis | Verdict | Evidence: estimate [interval] | Needed n per condition | Note |",
             "|---|---|---|---|---|"]
    for r in results:
        evidence = "; ".join(f"{name} {_number(e.value)} [{_number(e.low)}, {_number(e.high)}]"
                             for name, e in r.evidence.items()) or "none"
        needed = "" if r.needed_n is None else f"{r.needed_n:,}"
        lines.append(f"| {r.hypothesis}: {_cell(r.claim)} | {r.verdict} | {_cell(evidence)} | {needed} | "
                     f"{_cell(r.note)} |")
    lines += ["", *(f"- {r.hypothesis}: {r.rule}" for r in results)]
    return "\n".join(lines) + "\n"
