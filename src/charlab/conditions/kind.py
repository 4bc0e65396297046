"""What a condition kind is: a typed config and everything the experiment, the plan and the report ask of it.

A condition is one YAML mapping (``kind`` plus its fields). Its kind supplies the config class that
reads that mapping, the group its conditions are compared in, how it trains one seed, what that
costs before it runs, and which input files it reads. The modules beside this one each define one
kind or one family; ``charlab.conditions.registry`` lists them, so nothing else compares kind names.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, Literal, TypeVar, get_args, get_origin

from pydantic import BaseModel, ConfigDict, Field

from charlab.analysis.groups import GROUPS, Group
from charlab.costs import Cost
from charlab.models.factory import BackendSpec
from charlab.models.refs import ModelRef
from charlab.store.artifacts import Run, Step
from charlab.training.budget import Budget
from charlab.training.budgeted import trained_tokens_bound

NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"


class ConditionSpec(BaseModel):
    """Fields every condition has; a kind's config adds ``kind: Literal["its-name"]`` and its own."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(pattern=NAME_PATTERN, description="unique label; names the condition's folder")
    seeds: list[int] = Field([0], min_length=1, description="one trained model per seed")


C = TypeVar("C", bound=ConditionSpec)


@dataclass(frozen=True)
class TrainingJob:
    """One seed of one condition: what every kind's ``train`` gets besides its own config."""

    base: ModelRef  # the bare base model every condition starts from
    budget: Budget  # the compute every budget-matched condition gets
    out: Path  # the condition's run folder for this seed
    seed: int
    teacher: BackendSpec | None = None  # overrides every recipe's teacher, so all conditions share one
    cache_path: Path | None = None  # the row cache of generations

    @property
    def run(self) -> Run:
        return Run(self.out)


@dataclass(frozen=True)
class Trained:
    """What a kind's ``train`` returns: the model under test and the training steps behind it."""

    model: ModelRef
    steps: dict[str, Step]  # stage -> training step, bottom of the stack first; empty when nothing trained here


Training = Literal["budget", "elsewhere", "none"]


@dataclass(frozen=True)
class ConditionKind(Generic[C]):
    """One kind of condition, as the registry holds it.

    ``group`` is a group, or a function of the config for kinds whose group depends on it.
    ``training`` says where the kind's adapters come from: ``budget`` (trained here under the
    experiment's budget, so audited against the reference and run on the study's hardware),
    ``elsewhere`` (a stack trained outside, listed as not budget-matched) or ``none``.
    ``cost`` is the upper-bound work of one seed, given the budget and the shared teacher.
    ``inputs`` reads every input file the config names, raising ``ConfigError`` for one that cannot
    be read (None: the kind reads none that must exist before a study starts). ``character`` kinds
    train a constitution through the recipe; the first such condition is the audit's default reference.
    """

    config: type[C]
    group: Group | Callable[[C], Group]
    train: Callable[[C, TrainingJob], Trained]
    cost: Callable[[C, Budget, BackendSpec | None], Cost]
    training: Training = "budget"
    inputs: Callable[[C], object] | None = None
    character: bool = False

    def __post_init__(self) -> None:
        if not (isinstance(self.config, type) and issubclass(self.config, ConditionSpec)):
            raise ValueError(f"{self.config!r}: a condition config derives ConditionSpec (its name and seeds)")
        field = self.config.model_fields.get("kind")
        names = get_args(field.annotation) if field is not None and get_origin(field.annotation) is Literal else ()
        if len(names) != 1 or not isinstance(names[0], str):
            raise ValueError(f"{self.config.__name__}: a condition config needs a field kind: Literal['its-name']")
        if not callable(self.group) and self.group not in GROUPS:
            raise ValueError(f"condition kind '{names[0]}': group must be one of {', '.join(GROUPS)} or a function "
                             f"of the config, not {self.group!r}")
        if self.training not in get_args(Training):
            raise ValueError(f"condition kind '{names[0]}': training must be one of {', '.join(get_args(Training))}")

    @property
    def name(self) -> str:
        """The ``kind`` value that selects this kind in a config file."""
        return str(get_args(self.config.model_fields["kind"].annotation)[0])

    @property
    def budget_matched(self) -> bool:
        return self.training == "budget"

    def group_of(self, condition: C) -> Group:
        return self.group(condition) if callable(self.group) else self.group


def no_cost(condition: Any, budget: Budget, teacher: BackendSpec | None) -> Cost:
    """The cost of a kind that trains nothing here."""
    return Cost()


def budget_cost(condition: Any, budget: Budget, teacher: BackendSpec | None) -> Cost:
    """The cost of a kind whose data costs nothing to make: the budget's trained tokens."""
    return Cost(trained_tokens=trained_tokens_bound(budget))
