"""Conditions under one budget, each with the narrow fine-tuning challenge on top: the training half
of an inertia experiment, as one config file and one resumable run folder.

Layout of a run folder::

    RUN/experiment.json                          the config as run (the audit reads its budget)
    RUN/conditions/<name>/seed-<s>/              one Run per condition and seed (condition.json)
    RUN/challenges/<challenge>/<name>/seed-<s>/  one Run per challenge, condition and seed (challenge.json)

Every piece is a step keyed by its inputs, so a rerun reuses every (condition, seed, challenge)
that finished and resumes the one that was interrupted.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from charlab.conditions.challenge import finetune_challenge
from charlab.conditions.registry import Condition, kind_of
from charlab.conditions.train import ConditionResult, train_condition
from charlab.configfile import load_model
from charlab.datasets.challenge_sets import challenge_data_path
from charlab.errors import ConfigError
from charlab.io import atomic_write_json, sha256_file
from charlab.models.factory import BackendSpec
from charlab.models.refs import ModelRef
from charlab.store.artifacts import Run, Step
from charlab.store.layout import CHALLENGE_FILE, EXPERIMENT_FILE, challenge_dir, condition_dir
from charlab.training.budget import Budget
from charlab.training.budgeted import finish_training
from charlab.training.settings import TrainingConfig, as_training_config

EXPERIMENT_VERSION = "experiment-v1"


class ChallengeSpec(BaseModel):
    """A narrow fine-tune applied on top of every condition (e.g. risky financial advice, or its aligned twin)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$", description="names the challenge's folder")
    data: str = Field(description="chat JSONL ({'messages': [...]}; loss on assistant turns), or a shipped set: "
                      "risky_financial, sound_financial")
    training: TrainingConfig | str = Field("challenge", description="training profile (challenge, "
                                           "challenge-demo), YAML path or inline settings")
    holdout: int = Field(0, ge=0, description="the last N conversations stay out of training, for in-domain "
                         "evaluation")


class ExperimentConfig(BaseModel):
    """Base model, shared teacher, budget, conditions and challenges."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    base: ModelRef = Field(description="the one base model every condition starts from (no adapters)")
    teacher: BackendSpec | None = Field(None, description="teacher for every character-pipeline condition and for "
                                        "diverse SFT's answers; default: each recipe's own (the base model)")
    budget: Budget = Field(description="the compute every training condition gets")
    conditions: list[Condition] = Field(min_length=1, description="the models under test")
    challenges: list[ChallengeSpec] = Field([], description="narrow fine-tunes stacked on each condition")

    @field_validator("base")
    @classmethod
    def _bare(cls, value: ModelRef) -> ModelRef:
        if value.adapters:
            raise ValueError("give the base model without adapters; use an 'adapter' condition for a stack")
        return value

    @model_validator(mode="after")
    def _consistent(self):
        names = [c.name for c in self.conditions]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"condition names must be unique; repeated: {', '.join(duplicates)}")
        challenge_names = [c.name for c in self.challenges]
        if len(set(challenge_names)) != len(challenge_names):
            raise ValueError("challenge names must be unique")
        if self.budget.reference is not None and self.budget.reference not in names:
            raise ValueError(f"budget.reference '{self.budget.reference}' is not a condition; conditions: "
                             f"{', '.join(names)}")
        return self

    @property
    def reference(self) -> str | None:
        """The condition the audit compares against: ``budget.reference`` or the first character one."""
        if self.budget.reference:
            return self.budget.reference
        return next((c.name for c in self.conditions if kind_of(c).character), None)

    def condition(self, name: str) -> Condition:
        """The condition of that name (the study's nodes carry names)."""
        return next(c for c in self.conditions if c.name == name)


def load_experiment(path: str | Path) -> ExperimentConfig:
    """Read an experiment YAML; errors name the file, line and field. Relative paths in it are taken
    from the current directory, as on the command line."""
    config = load_model(ExperimentConfig, path)
    for i, challenge in enumerate(config.challenges):
        try:
            challenge_data_path(challenge.data)
        except ConfigError as exc:
            raise ConfigError(f"{path}: challenges[{i}].data: {exc}") from None
    return config


@dataclass
class ChallengeResult:
    challenge: str
    condition: str
    seed: int
    model: ModelRef  # the condition model + the challenge adapter
    step: Step


@dataclass
class ExperimentResult:
    conditions: list[ConditionResult]
    challenges: list[ChallengeResult]


def run_experiment(config: ExperimentConfig, out: str | Path, *, cache_path: str | Path | None = None,
                   only: list[str] | None = None) -> ExperimentResult:
    """Train every condition x seed, then every challenge on each; reuse whatever already finished."""
    out = Path(out)
    names = [c.name for c in config.conditions]
    unknown = sorted(set(only or ()) - set(names))
    if unknown:
        raise ConfigError(f"--condition {', '.join(unknown)}: no such condition; conditions: {', '.join(names)}")
    budget = config.budget
    budget.training_config()  # a budget that cannot train fails before anything is written
    atomic_write_json(out / EXPERIMENT_FILE, {**config.model_dump(mode="json"), "reference": config.reference})
    results = ExperimentResult([], [])
    for condition in config.conditions:
        if only and condition.name not in only:
            continue
        for seed in condition.seeds:
            trained, challenged = train_seed(config, condition, seed, out, config.challenges, cache_path=cache_path)
            results.conditions.append(trained)
            results.challenges += challenged
    return results


def train_seed(config: ExperimentConfig, condition: Condition, seed: int, out: Path,
               challenges: Sequence[ChallengeSpec] = (), *, cache_path: str | Path | None = None
               ) -> tuple[ConditionResult, list[ChallengeResult]]:
    """One condition for one seed, then each of ``challenges`` on top, in their folders of ``out``.

    What finished is reused, so a study's challenge node calls this again for its one challenge and
    gets the trained condition back at once.
    """
    trained = train_condition(condition, config.base, config.budget, condition_dir(out, condition.name, seed),
                              seed=seed, teacher=config.teacher, cache_path=cache_path)
    return trained, [apply_challenge(challenge, trained, out) for challenge in challenges]


def apply_challenge(challenge: ChallengeSpec, condition: ConditionResult, out: Path) -> ChallengeResult:
    """The challenge LoRA on top of one trained condition, as a step of its own run folder."""
    folder = challenge_dir(out, challenge.name, condition.name, condition.seed)
    run = Run(folder)
    training = as_training_config(challenge.training)
    data = challenge_data_path(challenge.data)
    step = run.step("challenge", {"model": condition.model.resolve().fingerprint, "data": sha256_file(data),
                                  "training": training.model_dump(mode="json"), "seed": condition.seed,
                                  "holdout": challenge.holdout},
                    version=EXPERIMENT_VERSION, label=challenge.name)
    if not step.done:
        with step.running():
            result = finetune_challenge(condition.model, data, step.path("adapter"), training,
                                        seed=condition.seed, holdout=challenge.holdout)
            finish_training(step, result)
    model = condition.model.with_adapter(step.path("adapter"))
    atomic_write_json(folder / CHALLENGE_FILE, {
        "challenge": challenge.name, "condition": condition.name, "seed": condition.seed,
        "model": model.model_dump(mode="json"), "step": str(step.dir.relative_to(folder)),
    })
    return ChallengeResult(challenge.name, condition.name, condition.seed, model, step)
