"""Every evaluation a study can run, in the order a model under test gets them, and what their metrics mean.

The study file checks evaluation names against this list, the plan adds up their costs, the
study's evaluate step runs the ones chosen for a model, and the report reads each metric's
direction and headline label from it. Adding an evaluation is one module ending in an
``Evaluation`` (see ``charlab.evals.evaluation``) and one entry in ``_BUILTIN`` below.
``register`` adds one from outside the package (and ``unregister`` takes it away again).

The challenge margin is not an evaluation of one model (its step compares a model before and
after the challenge), but its metrics are declared beside it all the same and read here.
"""

from __future__ import annotations

from typing import Any

from charlab.evals import capability, challenge_margin, context, em, jailbreak, roles, steer_sweep, traits
from charlab.evals.evaluation import Evaluation, Metric

_BUILTIN = (em.EVALUATION, jailbreak.EVALUATION, roles.EVALUATION, traits.EVALUATION, capability.EVALUATION,
            context.EVALUATION, steer_sweep.EVALUATION)
# eval column -> metrics, for rows written by study steps that are not evaluations of one model
_STEP_METRICS: dict[str, tuple[Metric, ...]] = {challenge_margin.EVAL: challenge_margin.METRICS}
_registered: list[Evaluation] = list(_BUILTIN)


def register(evaluation: Evaluation) -> None:
    """Add an evaluation after the registered ones; its name must be new."""
    if any(e.name == evaluation.name for e in _registered):
        raise ValueError(f"an evaluation named {evaluation.name!r} is already registered")
    _registered.append(evaluation)


def unregister(name: str) -> None:
    """Take a registered evaluation away (one added with ``register``; the shipped ones stay)."""
    if any(e.name == name for e in _BUILTIN):
        raise ValueError(f"{name!r} is a shipped evaluation; it cannot be unregistered")
    _registered[:] = [e for e in _registered if e.name != name]


def evaluations() -> tuple[Evaluation, ...]:
    """Every registered evaluation, in the order a model under test gets them."""
    return tuple(_registered)


def suite_names() -> tuple[str, ...]:
    """Names a study may list in ``evaluations.evals`` and ``evals_after``."""
    return tuple(e.name for e in _registered if e.suite)


def evaluations_for(block: Any, *, after: bool) -> list[Evaluation]:
    """The evaluations one model under test gets, before any challenge or after one (``block``: the study's
    evaluations block): suite evaluations it names for that stage, and the others whose settings it sets."""
    named = block.evals if not after or block.evals_after is None else block.evals_after
    return [e for e in _registered if (e.after_challenge or not after)
            and (e.name in named if e.suite else e.settings(block) is not None)]


def evaluations_in(block: Any) -> list[Evaluation]:
    """Every evaluation some model of the study gets, before or after a challenge."""
    wanted = {e.name for stage in (False, True) for e in evaluations_for(block, after=stage)}
    return [e for e in _registered if e.name in wanted]


def _metrics() -> dict[tuple[str, str], Metric]:
    declared = [(e.rows, m) for e in _registered for m in e.metrics]
    declared += [(rows, m) for rows, metrics in _STEP_METRICS.items() for m in metrics]
    return {(rows, m.name): m for rows, m in declared}


def lower_is_better(metric: tuple[str, str]) -> bool:
    """Whether a rise of ``(eval, metric)`` is the harm; undeclared metrics are higher-is-better."""
    found = _metrics().get(metric)
    return found is not None and found.lower_is_better


def headline_metrics() -> list[tuple[tuple[str, str], str]]:
    """``((eval, metric), label)`` of every headline metric, in registry order."""
    return [(key, m.headline) for key, m in _metrics().items() if m.headline is not None]
