"""One condition trained (or given) for one seed under one budget, and the record of it.

A condition is plain data (a ``kind`` plus its fields, one YAML mapping; the kinds are in
``charlab.conditions.registry``) and ``train_condition`` turns it, for one seed and under one
``Budget``, into a model under test. Each (condition, seed) is one ``Run`` folder whose steps are
reused on rerun; ``condition.json`` in it names the model and the training steps, which is what the
budget audit reads. A seed changes data sampling (prompt subset, generations, the budget's row
selection), LoRA init and data order.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from charlab.conditions.kind import ConditionSpec, TrainingJob
from charlab.conditions.registry import kind_of
from charlab.io import atomic_write_json
from charlab.models.factory import BackendSpec
from charlab.models.refs import ModelRef
from charlab.store.artifacts import Run, Step
from charlab.store.layout import CONDITION_FILE
from charlab.training.budget import Budget


@dataclass
class ConditionResult:
    """One trained (or given) model under test and the steps that trained it."""

    name: str
    kind: str
    seed: int
    model: ModelRef
    trained: dict[str, Step]  # stage -> training step, bottom of the stack first; empty for base / adapter
    budget_matched: bool
    path: Path


def train_condition(condition: ConditionSpec, base: ModelRef, budget: Budget, out: str | Path, *, seed: int,
                    teacher: BackendSpec | None = None, cache_path: str | Path | None = None) -> ConditionResult:
    """Train (or resume) one condition for one seed into ``out``; write ``out/condition.json``.

    ``teacher`` overrides every recipe's teacher, so all conditions of an experiment share one.
    """
    out = Path(out)
    Run(out)  # the folder exists even for a kind that trains nothing
    kind = kind_of(condition)
    trained = kind.train(condition, TrainingJob(base, budget, out, seed, teacher,
                                                Path(cache_path) if cache_path is not None else None))
    result = ConditionResult(condition.name, kind.name, seed, trained.model, trained.steps,
                             budget_matched=kind.budget_matched, path=out)
    atomic_write_json(out / CONDITION_FILE, {
        "name": condition.name, "kind": kind.name, "seed": seed, "spec": condition.model_dump(mode="json"),
        "model": trained.model.model_dump(mode="json"), "budget_matched": result.budget_matched,
        "trained": {stage: str(step.dir.relative_to(out)) for stage, step in trained.steps.items()},
    })
    return result
