"""Inertia: how much less a misalignment challenge hurt a condition than it hurt base.

For one condition, seed and challenge the **drop** is how much worse the challenge made a metric:
``before - after`` for a metric where higher is better (EM alignment), ``after - before`` for one
where lower is better (the critical or harmful rate), so a positive drop always means harm. Which
way a metric points is declared beside the evaluation that writes it (``charlab.evals.registry``);
callers pass it in as ``lower_is_better``.
Drops are averaged over the training seeds that have both rows, and the condition's **inertia**
is base's drop minus its own: positive means it resisted the challenge more than base did.

Intervals are approximations built from the result rows alone. Each row's interval is read as
a normal one, ``se = (high - low) / (2 z)``, so skewed bootstrap or Wilson intervals become
symmetric. Before and after are combined as if independent; they were measured on the same
questions, and a positive correlation between the two would make the true interval narrower, so
this one errs wide. A per-question paired bootstrap over the raw judgements would be tighter:
that is future work, since the tidy table keeps no per-answer values. Over ``k`` seeds the mean
gets ``sqrt(sum se^2) / k``, or the between-seed standard error ``sd / sqrt(k)`` when that is
larger (two or more seeds), so a spread between seeds wider than the measurement noise is
not hidden. A metric with natural bounds (a rate, a 0-100 score) has that interval clipped to
them, since the normal approximation can reach past them where the true interval cannot. A
missing row, a nan value or a missing interval gives a nan estimate and a reason, never an
exception.

``evidence`` turns the table into what ``analysis.hypotheses.decide`` reads: inertia on EM
alignment, context sensitivity (probe accuracy over its chance level) and the hardening score.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from statistics import NormalDist

from charlab.analysis.groups import HYPOTHESIS_GROUPS
from charlab.analysis.hypotheses import ConditionEvidence
from charlab.analysis.results import ResultRow
from charlab.analysis.stats import Estimate

ALIGNMENT = ("em", "alignment_mean")
CRITICAL = ("em", "critical_rate")


def parse_metric(text: str) -> tuple[str, str]:
    """``eval/metric`` (the metric may itself hold a slash, as capability task metrics do)."""
    eval_name, _, metric = text.partition("/")
    if not eval_name or not metric:
        raise ValueError(f"{text!r}: give the metric as eval/metric, e.g. em/alignment_mean")
    return eval_name, metric
NAN = Estimate(math.nan, math.nan, math.nan, 0)


@dataclass(frozen=True)
class InertiaRow:
    """One condition under one challenge: the metric before and after, the drop, and the inertia.

    ``before`` and ``after`` are means over ``seeds``, the seeds with both rows; ``reason`` says
    why an estimate is nan ("" when every number is there).
    """

    condition: str
    challenge: str
    metric: str
    seeds: tuple[int, ...]
    before: Estimate
    after: Estimate
    drop: Estimate
    inertia: Estimate
    reason: str


def z_for(confidence: float) -> float:
    """The normal quantile whose two-sided interval holds ``confidence``."""
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must lie strictly between 0 and 1, not {confidence}")
    return NormalDist().inv_cdf(0.5 + confidence / 2)


def row_estimate(row: ResultRow) -> Estimate:
    """A row as an estimate; an empty interval becomes nan."""
    low = math.nan if row.ci_low is None else row.ci_low
    high = math.nan if row.ci_high is None else row.ci_high
    return Estimate(row.value, low, high, row.n)


def _finite(estimate: Estimate) -> bool:
    return all(math.isfinite(x) for x in (estimate.value, estimate.low, estimate.high))


def _se(estimate: Estimate, z: float) -> float:
    return (estimate.high - estimate.low) / (2 * z) if _finite(estimate) else math.nan


def _around(value: float, se: float, z: float, n: int) -> Estimate:
    if not math.isfinite(se):
        return Estimate(value, math.nan, math.nan, n)
    return Estimate(value, value - z * se, value + z * se, n)


def natural_bounds(metric: tuple[str, str]) -> tuple[float, float] | None:
    """The range a metric's values cannot leave: [0, 1] for rates and accuracies, [0, 100] for judge scores."""
    name = metric[1]
    if (name.endswith(("_rate", "/acc", "/acc_norm")) or name.startswith("judge_unparseable_")
            or name in ("probe_accuracy", "probe_chance", "mode_nmi", "paraphrase_mode_agreement",
                        "persona_mode_agreement")):
        return (0.0, 1.0)
    if name in ("alignment_mean", "coherence"):
        return (0.0, 100.0)
    return None


def seed_average(estimates: Sequence[Estimate], *, confidence: float = 0.95,
                 bounds: tuple[float, float] | None = None) -> Estimate:
    """Mean over training seeds, its interval by the rule in the module docstring; ``n`` adds up.

    One seed is returned as it is; ``bounds`` clip the interval of a mean over several. Nan when
    there is nothing to average or any value is nan; a finite mean with a nan interval when some
    seed has no interval.
    """
    if not estimates or any(math.isnan(e.value) for e in estimates):
        return Estimate(math.nan, math.nan, math.nan, sum(e.n for e in estimates))
    if len(estimates) == 1:
        return estimates[0]  # nothing to combine: the row's own (possibly skewed) interval stands
    z, k = z_for(confidence), len(estimates)
    value = statistics.fmean(e.value for e in estimates)
    measured = math.sqrt(sum(_se(e, z) ** 2 for e in estimates)) / k
    spread = statistics.stdev(e.value for e in estimates) / math.sqrt(k)
    se = max(measured, spread) if math.isfinite(measured) else math.nan
    mean = _around(value, se, z, sum(e.n for e in estimates))
    if bounds is None or not _finite(mean):
        return mean
    return Estimate(mean.value, max(mean.low, bounds[0]), min(mean.high, bounds[1]), mean.n)


def difference(a: Estimate, b: Estimate, *, confidence: float = 0.95) -> Estimate:
    """``a - b`` with independent normal errors; ``n`` is the smaller side's."""
    z = z_for(confidence)
    return _around(a.value - b.value, math.hypot(_se(a, z), _se(b, z)), z, min(a.n, b.n))


Cell = tuple[str, str, str]  # condition, challenge, group


def seed_rows(rows: Sequence[ResultRow], metric: tuple[str, str], *,
              group: str | None = "") -> dict[Cell, dict[int, Estimate]]:
    """Estimates of one metric per (condition, challenge, group) and seed; ``group=None`` keeps every group.

    Where the table repeats a key with different values (two studies in one table), the first
    row wins.
    """
    cells: dict[Cell, dict[int, Estimate]] = {}
    for row in rows:
        if (row.eval, row.metric) == metric and (group is None or row.group == group):
            cells.setdefault((row.condition, row.challenge, row.group), {}).setdefault(row.seed, row_estimate(row))
    return cells


def seed_means(rows: Sequence[ResultRow], metric: tuple[str, str], *, group: str | None = "",
               confidence: float = 0.95) -> dict[Cell, Estimate]:
    """``seed_rows`` averaged over seeds (``seed_average``, clipped to the metric's ``natural_bounds``)."""
    bounds = natural_bounds(metric)
    return {cell: seed_average(list(by_seed.values()), confidence=confidence, bounds=bounds)
            for cell, by_seed in seed_rows(rows, metric, group=group).items()}


@dataclass(frozen=True)
class _Drop:
    seeds: tuple[int, ...]
    before: Estimate
    after: Estimate
    drop: Estimate
    reason: str


def _nan_seeds(estimates: Mapping[int, Estimate], side: str) -> list[str]:
    """Why a side's estimates cannot be combined: nan values, or values without an interval."""
    nan = [s for s, e in estimates.items() if math.isnan(e.value)]
    bare = [s for s, e in estimates.items() if not math.isnan(e.value) and not _finite(e)]
    reasons = [f"nan {side} on seed(s) {', '.join(map(str, nan))} (nothing readable)"] if nan else []
    return reasons + ([f"no interval {side} on seed(s) {', '.join(map(str, bare))}"] if bare else [])


def _drop(before: Mapping[int, Estimate], after: Mapping[int, Estimate], lower_is_better: bool,
          bounds: tuple[float, float] | None, confidence: float,
          paired: Mapping[int, Estimate] | None = None) -> _Drop:
    """Mean drop over the seeds that have both rows, with why any piece is missing.

    ``paired`` holds the evaluation's own paired change (after - before over the same questions,
    e.g. ``risky_margin_shift``) per seed; where every seed has one it is used, since pairing
    removes the question-to-question spread that two separate intervals would both carry.
    """
    seeds = tuple(sorted(set(before) & set(after)))
    reasons = [f"seed {s}: no row before the challenge" for s in sorted(set(after) - set(before))]
    reasons += [f"seed {s}: no row after the challenge" for s in sorted(set(before) - set(after))]
    if not seeds:
        reasons.append("no seed has rows both before and after the challenge")
        return _Drop(seeds, NAN, NAN, NAN, "; ".join(reasons))
    paired_before, paired_after = {s: before[s] for s in seeds}, {s: after[s] for s in seeds}
    reasons += _nan_seeds(paired_before, "before the challenge") + _nan_seeds(paired_after, "after the challenge")
    if paired and all(s in paired and _finite(paired[s]) for s in seeds):
        drops = [paired[s] if lower_is_better else Estimate(-paired[s].value, -paired[s].high, -paired[s].low,
                                                              paired[s].n) for s in seeds]
    else:
        drops = [difference(*((after[s], before[s]) if lower_is_better else (before[s], after[s])),
                            confidence=confidence) for s in seeds]
    return _Drop(seeds, seed_average(list(paired_before.values()), confidence=confidence, bounds=bounds),
                 seed_average(list(paired_after.values()), confidence=confidence, bounds=bounds),
                 seed_average(drops, confidence=confidence), "; ".join(reasons))


def inertia_table(rows: Sequence[ResultRow], *, metric: tuple[str, str] = ALIGNMENT, challenge: str | None = None,
                  base: str = "base", confidence: float = 0.95, lower_is_better: bool = False) -> list[InertiaRow]:
    """Drop and inertia of every condition under every challenge (or only ``challenge``).

    Reads the overall rows (group empty); conditions keep the table's order, challenges are
    sorted. Base itself gets its drop and a nan inertia: it is what the others are measured by.
    Where the table has the metric's paired change (``<metric>_shift`` rows after the challenge),
    drops come from it. ``confidence`` is the level of the rows' intervals and of the ones returned;
    ``lower_is_better`` says a rise of the metric is the harm (the default suits EM alignment).
    """
    cells = seed_rows(rows, metric)
    shifts = seed_rows(rows, (metric[0], f"{metric[1]}_shift"))
    conditions = list(dict.fromkeys(condition for condition, _, _ in cells))
    challenges = sorted({c for _, c, _ in cells if c and (challenge is None or c == challenge)})
    bounds = natural_bounds(metric)
    table = []
    for name in challenges:
        drops = {c: _drop(cells.get((c, "", ""), {}), cells.get((c, name, ""), {}), lower_is_better, bounds,
                       confidence, shifts.get((c, name, "")))
                 for c in conditions}
        reference = drops.get(base)
        for condition in conditions:
            mine = drops[condition]
            reasons = [mine.reason] if mine.reason else []
            if condition == base:
                inertia = NAN
                reasons.append("base is the reference the others are measured against")
            elif reference is None:
                inertia = NAN
                reasons.append(f"no rows for the reference condition '{base}'")
            else:
                inertia = difference(reference.drop, mine.drop, confidence=confidence)
                if not _finite(reference.drop):
                    reasons.append(f"{base}'s own drop is nan or has no interval")
            table.append(InertiaRow(condition, name, "/".join(metric), mine.seeds, mine.before, mine.after,
                                    mine.drop, inertia, "; ".join(reasons)))
    return table


# -- evidence for the hypotheses -----------------------------------------------------------------


@dataclass(frozen=True)
class Evidence:
    """What ``decide`` reads, and notes on what was left out and why."""

    conditions: tuple[ConditionEvidence, ...]
    notes: tuple[str, ...]


def context_sensitivity(rows: Sequence[ResultRow], condition: str, *, confidence: float = 0.95) -> Estimate | None:
    """Probe accuracy minus its chance level before the challenge, per seed, averaged over seeds.

    None when the condition has no overall probe-accuracy row; nan when a seed lacks its chance
    level. Chance is a constant of the situation mix (it has no interval), so it shifts the
    accuracy's interval as it is.
    """
    accuracy = seed_rows(rows, ("context", "probe_accuracy")).get((condition, "", ""), {})
    chance = seed_rows(rows, ("context", "probe_chance")).get((condition, "", ""), {})
    if not accuracy:
        return None
    if set(accuracy) - set(chance):
        return Estimate(math.nan, math.nan, math.nan, sum(a.n for a in accuracy.values()))
    above = [Estimate(a.value - chance[s].value, a.low - chance[s].value, a.high - chance[s].value, a.n)
             for s, a in sorted(accuracy.items())]
    return seed_average(above, confidence=confidence, bounds=(-1.0, 1.0))


def hardening_score(rows: Sequence[ResultRow], condition: str, *, confidence: float = 0.95) -> Estimate | None:
    """The steering sweep's hardening score before the challenge, averaged over seeds.

    None when the condition has no such row; an inf value (no interval) when any seed is
    censored, i.e. its persona never flipped within the grid.
    """
    by_seed = seed_rows(rows, ("steer_sweep", "hardening_score")).get((condition, "", ""), {})
    if not by_seed:
        return None
    if any(math.isinf(e.value) for e in by_seed.values()):
        return Estimate(math.inf, math.nan, math.nan, sum(e.n for e in by_seed.values()))
    return seed_average(list(by_seed.values()), confidence=confidence)


def _for_decision(estimate: Estimate | None, condition: str, what: str) -> tuple[Estimate | None, str]:
    """The estimate when decide() can read it, else None and a note saying why it was left out.

    A censored hardening score (inf) is left out rather than capped at the grid's largest
    coefficient: a cap would understate how hard that persona is and bias every difference it
    enters. An interval that reaches inf (some resamples never flipped) has no finite bound
    either, so it is left out too.
    """
    if estimate is None or _finite(estimate):
        return estimate, ""
    if math.isinf(estimate.value):
        return None, (f"{condition}: {what} censored (never flipped within the steering grid on some seed); left "
                      "out of H3 rather than capped at the grid maximum")
    if math.isnan(estimate.value):
        return None, f"{condition}: {what} is nan (a missing piece, or nothing readable); left out"
    return None, f"{condition}: {what} has no finite interval; left out"


def _only_challenge(rows: Sequence[ResultRow]) -> str | None:
    found = sorted({r.challenge for r in rows if (r.eval, r.metric) == ALIGNMENT and r.challenge})
    if len(found) > 1:
        raise ValueError(f"the rows hold several challenges ({', '.join(found)}); pass challenge= to pick one")
    return found[0] if found else None


def gather_evidence(rows: Sequence[ResultRow], groups: Mapping[str, str], *, challenge: str | None = None,
                    base: str = "base", confidence: float = 0.95, metric: tuple[str, str] = ALIGNMENT,
                    lower_is_better: bool = False) -> Evidence:
    """Per value, neutral and control condition: inertia on ``metric`` under ``challenge``,
    context sensitivity and hardening (both before any challenge), with notes on what is missing.

    ``challenge=None`` means the table's only challenge (ValueError when it has several).
    Conditions with results but no group are named in the notes; base and other stay out.
    ``lower_is_better`` is the metric's direction (see ``inertia_table``).
    """
    challenge = challenge if challenge is not None else _only_challenge(rows)
    inertia = {r.condition: r for r in inertia_table(rows, metric=metric, challenge=challenge, base=base,
                                                     confidence=confidence, lower_is_better=lower_is_better)
               } if challenge is not None else {}
    label = "/".join(metric)
    notes = [] if challenge is not None else [f"no challenge rows for {label}: inertia is missing"]
    seen = list(dict.fromkeys(r.condition for r in rows))
    notes += [f"{name}: has results but no group; give --group {name}=GROUP to count it" for name in seen
              if name not in groups]
    conditions = []
    for name, group in groups.items():
        if group not in HYPOTHESIS_GROUPS:
            continue
        row = inertia.get(name)
        estimate = row.inertia if row is not None and _finite(row.inertia) else None
        if challenge is not None and estimate is None:
            notes.append(f"{name}: no inertia ({row.reason or 'nan'})" if row is not None
                         else f"{name}: no {label} rows, so no inertia")
        sensitivity, note_s = _for_decision(context_sensitivity(rows, name, confidence=confidence), name,
                                            "context sensitivity")
        hardening, note_h = _for_decision(hardening_score(rows, name, confidence=confidence), name, "hardening score")
        notes += [n for n in (note_s, note_h) if n]
        conditions.append(ConditionEvidence(name, group, estimate, sensitivity, hardening))  # type: ignore[arg-type]
    return Evidence(tuple(conditions), tuple(notes))


def evidence(rows: Sequence[ResultRow], groups: Mapping[str, str], *, challenge: str | None = None,
             base: str = "base", confidence: float = 0.95, metric: tuple[str, str] = ALIGNMENT,
             lower_is_better: bool = False) -> list[ConditionEvidence]:
    """``gather_evidence`` without its notes: the list ``decide`` takes."""
    return list(gather_evidence(rows, groups, challenge=challenge, base=base, confidence=confidence,
                                metric=metric, lower_is_better=lower_is_better).conditions)
