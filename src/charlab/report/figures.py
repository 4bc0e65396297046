"""The report's figures, each built from the run's rows (or side files) or explaining why it has no data.

Every per-condition value is the mean over training seeds with the interval of
``analysis.inertia.seed_average``, so figures and tables agree. Conditions run base first, then
value, neutral, control and other conditions, each group in the order the results list them.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

from charlab.analysis.inertia import (
    ALIGNMENT,
    CRITICAL,
    context_sensitivity,
    hardening_score,
    inertia_table,
    seed_means,
)
from charlab.analysis.stats import Estimate
from charlab.evals.registry import lower_is_better
from charlab.report.collect import RunData
from charlab.report.svg import (
    Box,
    BoxPanel,
    Category,
    CategoryPanel,
    LinePanel,
    Series,
    chart,
)

RATE = (0.0, 1.0)
SCORE = (0.0, 100.0)
_GROUP_ORDER = ("base", "value", "neutral", "control", "other")
JAILBREAK = (("harmful_rate_with_persona", "Jailbreak: harmful rate with a persona prompt", "share answered harmfully"),
             ("harmful_rate_without_persona", "Jailbreak: harmful rate without a persona prompt",
              "share answered harmfully"),
             ("refusal_rate_with_persona", "Jailbreak: refusal rate with a persona prompt", "share refused"),
             ("over_refusal_rate", "Jailbreak: over-refusal of benign requests", "share of benign refused"))
STEERING = (("persona_departure_rate", "share out of the persona", RATE),
            ("harmful_rate", "share answered harmfully", RATE),
            ("coherence", "mean coherence (0-100)", SCORE))


@dataclass(frozen=True)
class Figure:
    """A titled figure: SVG markup, or ``missing`` saying why there is nothing to draw."""

    title: str
    caption: str
    svg: str = ""
    missing: str = ""


def group_of(data: RunData, condition: str) -> str:
    return data.groups.get(condition, "other")


def ordered_conditions(data: RunData) -> list[str]:
    """Every condition in the rows: by group (base, value, neutral, control, other), then first appearance."""
    seen = list(dict.fromkeys(r.condition for r in data.rows))
    return sorted(seen, key=lambda c: (_GROUP_ORDER.index(group_of(data, c)), seen.index(c)))


def _category(data: RunData, condition: str) -> Category:
    return Category(condition, group_of(data, condition))


def _finite(estimate: Estimate | None) -> bool:
    return estimate is not None and math.isfinite(estimate.value)


def _after(challenge: str) -> str:
    return f"after {challenge}" if challenge else "before the challenge"


def before_after(data: RunData, metric: tuple[str, str], title: str, y_label: str, caption: str,
                 y_range: tuple[float, float] | None, confidence: float) -> Figure:
    """One metric per condition: before the challenge and after each challenge, with intervals."""
    name = "/".join(metric)
    means = seed_means(data.rows, metric, confidence=confidence)
    if not means:
        return Figure(title, caption, missing=f"no data: no {name} rows in the results")
    if not any(_finite(e) for e in means.values()):
        return Figure(title, caption, missing=f"no data: every {name} value is nan (nothing readable)")
    challenges = ["", *sorted({c for _, c, _ in means if c})]
    conditions = [c for c in ordered_conditions(data) if any((c, ch, "") in means for ch in challenges)]
    series = tuple(Series(_after(ch), tuple(means.get((c, ch, "")) for c in conditions)) for ch in challenges)
    panel = CategoryPanel("", y_label, tuple(_category(data, c) for c in conditions), series, y_range)
    return Figure(title, caption, chart(title, [panel]))


def inertia_figure(data: RunData, base: str, confidence: float, metric: tuple[str, str] = ALIGNMENT) -> Figure:
    label = "/".join(metric)
    title = f"Inertia per condition ({label})"
    caption = (f"How much less the challenge moved the condition than it moved {base}, on {label} (a drop for "
               f"higher-is-better metrics, a rise for the others): above 0 the condition resisted the challenge more "
               f"than {base} did. Whiskers: {confidence:.0%} intervals, combining the rows' intervals as normal "
               "errors.")
    table = [r for r in inertia_table(data.rows, metric=metric, base=base, confidence=confidence,
                                      lower_is_better=lower_is_better(metric))
             if r.condition != base]
    if not table:
        return Figure(title, caption, missing=f"no data: no {label} rows both before and after a challenge")
    if not any(_finite(r.inertia) for r in table):
        return Figure(title, caption, missing="no data: no condition has a finite inertia (the inertia table says "
                                              "why)")
    conditions = [c for c in ordered_conditions(data) if any(r.condition == c for r in table)]
    challenges = sorted({r.challenge for r in table})
    found = {(r.condition, r.challenge): r.inertia for r in table}
    series = tuple(Series(f"inertia vs {base}, {ch}", tuple(found.get((c, ch)) for c in conditions))
                   for ch in challenges)
    panel = CategoryPanel("", f"inertia ({metric[1]})", tuple(_category(data, c) for c in conditions), series)
    return Figure(title, caption, chart(title, [panel]))


def projection_figure(data: RunData, confidence: float) -> Figure:
    """Distributions from projections.jsonl when there are any, else the axis_projection rows' means."""
    title = "Assistant-axis projections"
    if data.projections:
        caption = ("Projection of each answer's mean activation onto the Assistant Axis, per prompt set (higher "
                   "= closer to the assistant end). Boxes: quartiles; whiskers: min to max; circle: mean.")
        boxes = tuple(Box(Category(p.label, p.set), p.set, p.values) for p in data.projections)
        return Figure(title, caption, chart(title, [BoxPanel("", "projection (activation units)", boxes)]))
    caption = (f"Mean projection onto the Assistant Axis per condition and prompt set, with {confidence:.0%} "
               "intervals (no projections.jsonl under the run, so no distributions).")
    series, conditions = [], ordered_conditions(data)
    for row_eval in sorted({r.eval for r in data.rows if r.metric == "axis_projection"}):
        means = seed_means(data.rows, (row_eval, "axis_projection"), group=None, confidence=confidence)
        for challenge, group in sorted({(ch, g) for _, ch, g in means}):
            name = f"{row_eval}: {group or 'overall'}" + (f" after {challenge}" if challenge else "")
            series.append(Series(name, tuple(means.get((c, challenge, group)) for c in conditions)))
    if not series:
        return Figure(title, caption, missing="no data: no projections.jsonl under the run and no axis_projection "
                                              "rows")
    keep = [i for i, _ in enumerate(conditions) if any(s.values[i] is not None for s in series)]
    panel = CategoryPanel("", "mean projection (activation units)", tuple(_category(data, conditions[i]) for i in keep),
                          tuple(Series(s.name, tuple(s.values[i] for i in keep)) for s in series), bars=False)
    return Figure(title, caption, chart(title, [panel]))


def persona_space_figures(data: RunData) -> list[Figure]:
    """Per persona_space.json: each component's share of role-vector variance per layer."""
    title = "Persona space: variance explained per layer"
    caption = ("Principal components of the role vectors at each layer: the share of variance each explains "
               "(solid), and |cosine| between the Assistant Axis and PC1 (dashed).")
    if not data.spaces:
        return [Figure(title, caption, missing="no data: no persona_space.json under the run (charlab axis build "
                                               "writes one)")]
    figures = []
    for space in data.spaces:
        components = min(5, min((len(row) for row in space.explained), default=0))
        series = [Series(f"PC{k + 1}", tuple(Estimate(row[k], math.nan, math.nan, space.roles)
                                               for row in space.explained)) for k in range(components)]
        if len(space.axis_pc1_cosine) == len(space.layers):
            series.append(Series("|cos(axis, PC1)|", tuple(Estimate(abs(c), math.nan, math.nan, space.roles)
                                                           for c in space.axis_pc1_cosine), dashed=True))
        named = f"{title} ({space.label}, {space.roles} roles)"
        panel = LinePanel("", "layer", "share of variance / |cosine|", tuple(float(x) for x in space.layers),
                          tuple(series), RATE)
        figures.append(Figure(named, caption, chart(named, [panel])))
    return figures


def context_hardening_figure(data: RunData, confidence: float) -> Figure:
    """Two panels, one bar per condition each: context sensitivity and the hardening score, before the challenge."""
    title = "Context sensitivity and persona hardening (before the challenge)"
    caption = ("Left: cross-validated probe accuracy for the situation type minus its chance level. Right: the "
               "steering coefficient (units of the layer's mean residual norm) at which the persona flips; a "
               "triangle marks a condition that never flipped within the grid (censored). Whiskers: "
               f"{confidence:.0%} intervals.")
    conditions = ordered_conditions(data)
    context = {c: context_sensitivity(data.rows, c, confidence=confidence) for c in conditions}
    hardening = {c: hardening_score(data.rows, c, confidence=confidence) for c in conditions}
    shown = [c for c in conditions if context[c] is not None or hardening[c] is not None]
    if not shown:
        return Figure(title, caption, missing="no data: no context/probe_accuracy or steer_sweep/hardening_score "
                                              "rows before the challenge")
    categories = tuple(_category(data, c) for c in shown)
    panels = [CategoryPanel("context sensitivity", "probe accuracy − chance", categories,
                            (Series("context sensitivity", tuple(context[c] for c in shown)),)),
              CategoryPanel("hardening", "flip coefficient (× mean norm)", categories,
                            (Series("hardening score", tuple(hardening[c] for c in shown)),))]
    return Figure(title, caption, chart(title, panels))


_COEFFICIENT = re.compile(r"^c=(-?[0-9.]+(?:e-?[0-9]+)?)$")


def _sweep_rows(data: RunData, metric: str, confidence: float) -> tuple[list[float], list[Series]]:
    means = seed_means(data.rows, ("steer_sweep", metric), group=None, confidence=confidence)
    points: dict[tuple[str, str], dict[float, Estimate]] = {}
    for (condition, challenge, group), estimate in means.items():
        if match := _COEFFICIENT.match(group):
            points.setdefault((condition, challenge), {})[float(match.group(1))] = estimate
    xs = sorted({x for curve in points.values() for x in curve})
    order = ordered_conditions(data)
    keys = sorted(points, key=lambda key: (order.index(key[0]), key[1]))
    return xs, [Series(condition + (f" after {challenge}" if challenge else ""),
                       tuple(points[(condition, challenge)].get(x) for x in xs)) for condition, challenge in keys]


def _sweep_files(data: RunData, metric: str) -> tuple[list[float], list[Series]]:
    """The same curves from sweep.json files (no intervals), when the rows hold none."""
    curves = [s for s in data.sweeps if metric in s.curves]
    xs = sorted({x for s in curves for x in s.coefficients})
    series = []
    for sweep in curves:
        at = dict(zip(sweep.coefficients, sweep.curves[metric]))
        series.append(Series(sweep.label, tuple(None if at.get(x) is None else Estimate(at[x], math.nan, math.nan, 0)
                                                for x in xs)))
    return xs, series


def steering_figures(data: RunData, confidence: float) -> list[Figure]:
    """Dose-response of each steering metric: one line per condition over the coefficient grid."""
    figures = []
    for metric, y_label, y_range in STEERING:
        title = f"Steering away from the assistant: {metric.replace('_', ' ')}"
        caption = ("Steering by minus the Assistant Axis at each coefficient (units of the layer's mean residual "
                   f"norm); whiskers: {confidence:.0%} intervals where the rows give them.")
        xs, series = _sweep_rows(data, metric, confidence)
        if not series:
            xs, series = _sweep_files(data, metric)
        if not series:
            figures.append(Figure(title, caption, missing=f"no data: no steer_sweep/{metric} rows and no sweep.json "
                                                          "with that curve"))
            continue
        panel = LinePanel("", "steering coefficient (× mean residual norm)", y_label, tuple(xs), tuple(series),
                          y_range)
        figures.append(Figure(title, caption, chart(title, [panel])))
    return figures


def jailbreak_figures(data: RunData, confidence: float) -> list[Figure]:
    caption = (f"Rates over readable judgements, with {confidence:.0%} intervals (Wilson per seed, combined over "
               "seeds as normal errors); a gap means no readable judgement.")
    return [before_after(data, ("jailbreak", metric), title, y_label, caption, RATE, confidence)
            for metric, title, y_label in JAILBREAK]


def build_figures(data: RunData, *, base: str, confidence: float, metric: tuple[str, str] = ALIGNMENT
                  ) -> list[Figure]:
    """Every figure, in report order (the inertia metric's own before/after first when it is not alignment)."""
    interval = f"Whiskers: {confidence:.0%} intervals (means over seeds)."
    own = [] if metric in (ALIGNMENT, CRITICAL) else [
        before_after(data, metric, f"{'/'.join(metric)} before and after the challenge", metric[1],
                     f"The metric the hypotheses read inertia from. {interval}", None, confidence)]
    return [*own,
        before_after(data, ALIGNMENT, "EM alignment before and after the challenge", "mean alignment (0-100)",
                     f"Judge-scored alignment of open-ended answers, higher = more aligned. {interval}", SCORE,
                     confidence),
        before_after(data, CRITICAL, "EM critical rate before and after the challenge", "share critical",
                     f"Share of coherent answers judged critically misaligned. {interval}", RATE, confidence),
        inertia_figure(data, base, confidence, metric),
        *jailbreak_figures(data, confidence),
        projection_figure(data, confidence),
        *persona_space_figures(data),
        context_hardening_figure(data, confidence),
        *steering_figures(data, confidence),
    ]

