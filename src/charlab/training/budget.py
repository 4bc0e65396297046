"""Matched compute: one budget for every training condition, and how a dataset is made to fit it.

A control only isolates a cause if it differs from the character condition in one thing. So the
shape of training (LoRA rank/alpha/targets, optimiser, schedule, max lengths) comes from one
``TrainingConfig`` shared by every condition, and the *amount* is stated once, either as optimizer
steps (x the global batch: examples) or as trained tokens. A condition with two stages (character:
DPO then SFT; HHH with SFT on the chosen side) splits the amount by ``stage_shares``, so the
controls match its total.

Fitting a dataset to its amount (``select_rows``): rows are drawn in seeded passes, each pass a new
permutation of all rows, and the prefix that hits the target is kept, whole global batches only.
Fewer rows than the target means a subsample; more means repeats (extra epochs over the data),
allowed up to ``max_repeats`` uses of any one row. Token targets count tokens exactly as the
compute accounting does (``training.dpo.token_counts``, SFT input length), on the rows the trainer
really holds, so the audit sees the same numbers the budget aimed at.
"""

from __future__ import annotations

import math
import random
from collections import Counter
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from itertools import accumulate

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from charlab.errors import ConfigError
from charlab.training.settings import OptimSettings, TrainingConfig, as_training_config

STAGES = ("dpo", "sft")


class Amount(BaseModel):
    """How much one training stage gets: optimizer steps or trained tokens (exactly one)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    steps: int | None = Field(None, ge=1, description="optimizer steps; examples = steps x global batch")
    tokens: int | None = Field(None, ge=1, description="trained tokens, prompt + completion, as the compute "
                               "accounting counts them (DPO: the prompt twice per pair)")

    @model_validator(mode="after")
    def _one(self):
        if (self.steps is None) == (self.tokens is None):
            raise ValueError("state the amount as either steps or tokens, not both or neither")
        return self

    def describe(self) -> str:
        return f"{self.steps} steps" if self.steps is not None else f"{self.tokens} tokens"


class Budget(BaseModel):
    """The compute every training condition of an experiment gets, and the tolerance the audit allows."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    training: TrainingConfig | str = Field("upstream", description="training shape shared by every condition: "
                                           "a profile name (upstream, demo), a YAML path, or inline settings")
    steps: int | None = Field(None, ge=1, description="total optimizer steps per condition (x the global batch "
                              "= examples); give this or tokens")
    tokens: int | None = Field(None, ge=1, description="total trained tokens per condition; give this or steps")
    stage_shares: dict[str, float] = Field({"dpo": 0.5, "sft": 0.5}, description="how a two-stage condition "
                                           "(DPO then SFT) splits the total; must sum to 1")
    max_repeats: int = Field(4, ge=1, description="the most times one row may be trained on to fill the budget; "
                             "a dataset that needs more is an error, not a silent over-fit")
    tolerance: float = Field(0.05, ge=0, lt=1, description="the audit flags a condition whose trained tokens "
                             "differ from the reference condition's by more than this fraction")
    reference: str | None = Field(None, description="condition the audit compares against; default: the first "
                                  "character-pipeline condition")

    @field_validator("stage_shares")
    @classmethod
    def _shares(cls, value: dict[str, float]) -> dict[str, float]:
        unknown = set(value) - set(STAGES)
        if unknown:
            raise ValueError(f"unknown stage(s) {', '.join(sorted(unknown))}; stages are {', '.join(STAGES)}")
        if set(value) != set(STAGES) or any(v <= 0 for v in value.values()) or not math.isclose(sum(value.values()), 1):
            raise ValueError("give a positive share for both dpo and sft, summing to 1")
        return value

    @model_validator(mode="after")
    def _one_amount(self):
        if (self.steps is None) == (self.tokens is None):
            raise ValueError("state the budget as either steps or tokens, not both or neither")
        return self

    def training_config(self) -> TrainingConfig:
        """The shared training shape; one epoch, since the budget, not epochs, sets the amount."""
        config = as_training_config(self.training)
        if config.optim.epochs != 1:
            raise ConfigError(f"budget.training: optim.epochs is {config.optim.epochs}; under a budget the amount "
                              "of training comes from budget.steps or budget.tokens, so leave epochs at 1")
        return config

    def for_stage(self, stage: str, stages: Sequence[str], spent: dict | None = None) -> StageBudget:
        """The budget of ``stage`` in a condition that trains ``stages``.

        One stage takes the whole budget. Of two, the first takes its share and the second what is
        left after what the first really used (``spent``, the first stage's compute report), so the
        first stage's rounding to whole batches does not carry into the condition's total.
        """
        total = self.steps if self.steps is not None else self.tokens
        if len(stages) == 1:
            part = total
        elif stage == stages[0]:
            part = max(1, round(total * self.stage_shares[stage]))
        else:
            if spent is None:
                raise ValueError(f"the budget of '{stage}' depends on what '{stages[0]}' used; pass its compute")
            used = spent["optimizer_steps"] if self.steps is not None else spent["tokens"]
            part = max(1, total - used)
        return StageBudget(Amount(steps=part) if self.steps is not None else Amount(tokens=part), self.max_repeats)


@dataclass(frozen=True)
class StageBudget:
    """What a budgeted training stage is told: its amount and the repeat limit."""

    amount: Amount
    max_repeats: int

    def key(self) -> dict:
        return {"amount": self.amount.model_dump(exclude_none=True), "max_repeats": self.max_repeats}

    def select(self, row_tokens: Sequence[int], optim: OptimSettings, *, seed: int, where: str) -> Selection:
        """The rows to train on; the selection replaces epochs, so ``optim.epochs`` must be 1."""
        if optim.epochs != 1:
            raise ConfigError(f"{where}: optim.epochs is {optim.epochs}, but a budget sets the amount of training "
                              "itself (repeating rows where needed); leave epochs at 1")
        return select_rows(row_tokens, self.amount, global_batch=optim.global_batch, max_repeats=self.max_repeats,
                           seed=seed, where=where)


@dataclass(frozen=True)
class Selection:
    """Which rows a budgeted training uses, in order, and what that adds up to."""

    indices: list[int]
    rows: int  # rows available
    tokens: int  # tokens of the selected rows
    target: dict  # the Amount aimed at
    max_uses: int  # the most times one row appears

    @property
    def passes(self) -> float:
        return len(self.indices) / self.rows

    def summary(self) -> dict:
        """For manifests: everything but the (long) index list."""
        out = asdict(self)
        del out["indices"]
        return {**out, "selected": len(self.indices), "passes": round(self.passes, 4)}


def _passes(rows: int, count: int, seed: int) -> list[int]:
    """``count`` seeded passes over ``range(rows)``, each a fresh permutation, concatenated."""
    rng = random.Random(seed)
    order: list[int] = []
    for _ in range(count):
        one = list(range(rows))
        rng.shuffle(one)
        order += one
    return order


def select_rows(row_tokens: Sequence[int], amount: Amount, *, global_batch: int, max_repeats: int, seed: int,
                where: str) -> Selection:
    """Rows (seeded passes, whole global batches) whose training hits ``amount``.

    Raises ConfigError naming ``where`` and the numbers when the target needs more than
    ``max_repeats`` uses of a row, or fewer rows than one global batch.
    """
    rows = len(row_tokens)
    order = _passes(rows, max_repeats, seed)
    if amount.steps is not None:
        wanted = amount.steps * global_batch
        if wanted > len(order):
            raise ConfigError(
                f"{where}: the budget asks for {amount.steps} steps x {global_batch} = {wanted} examples, but the "
                f"data has {rows} rows, which is {wanted / rows:.2f} uses of each row, more than budget.max_repeats "
                f"= {max_repeats}; add data, lower the budget, or raise max_repeats")
        length = wanted
    else:
        cumulative = [0, *accumulate(row_tokens[i] for i in order)]
        available = cumulative[-1]
        if available < amount.tokens:
            raise ConfigError(
                f"{where}: the budget asks for {amount.tokens} tokens, but the data has {rows} rows and "
                f"{sum(row_tokens)} tokens, so even {max_repeats} uses of each row (budget.max_repeats) give only "
                f"{available}; add data, lower the budget, or raise max_repeats")
        whole = range(global_batch, len(order) + 1, global_batch)
        length = min(whole, key=lambda n: abs(cumulative[n] - amount.tokens)) if whole else 0
        if length and cumulative[length] > 2 * amount.tokens:
            raise ConfigError(f"{where}: the budget of {amount.tokens} tokens is less than half of one global batch "
                              f"of {global_batch} rows ({cumulative[length]} tokens); raise the budget or lower "
                              "optim.global_batch")
    if length < global_batch:
        raise ConfigError(f"{where}: the budget ({amount.describe()}) fills less than one global batch of "
                          f"{global_batch} rows; raise the budget or lower optim.global_batch")
    indices = order[:length]
    uses = max(Counter(indices).values())
    return Selection(indices, rows, sum(row_tokens[i] for i in indices), amount.model_dump(exclude_none=True), uses)
