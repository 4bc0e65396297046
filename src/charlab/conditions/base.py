"""The conditions that train nothing here: the untouched base model, and adapter stacks trained elsewhere."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from charlab.conditions.kind import ConditionKind, ConditionSpec, Trained, TrainingJob, no_cost
from charlab.models.refs import ModelRef


class BaseCondition(ConditionSpec):
    """The untouched base model."""

    kind: Literal["base"]


class AdapterCondition(ConditionSpec):
    """An adapter stack trained elsewhere, put beside the others as it is (not budget-matched)."""

    kind: Literal["adapter"]
    adapters: list[str] = Field(min_length=1, description="local folders or owner/repo[/subfolder]@rev, bottom first")


def train_base(condition: BaseCondition, job: TrainingJob) -> Trained:
    return Trained(job.base, {})


def train_adapter(condition: AdapterCondition, job: TrainingJob) -> Trained:
    model = ModelRef.parse(job.base.base, condition.adapters)
    model.resolve()  # refuses adapters made for another base before anything is recorded
    return Trained(model, {})


BASE = ConditionKind(BaseCondition, group="base", train=train_base, cost=no_cost, training="none")
ADAPTER = ConditionKind(AdapterCondition, group="other", train=train_adapter, cost=no_cost, training="elsewhere")
