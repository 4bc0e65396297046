"""One LoRA training as a resumable step, fitted to a budget: what the recipe and every control train with.

The step's manifest carries the training's compute report (``extra.compute``); the budget audit
reads it back, and a later stage of the same condition subtracts it from the budget's amount.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from charlab.models.refs import ModelRef
from charlab.store.artifacts import Run, Step
from charlab.training.budget import Budget, StageBudget
from charlab.training.settings import TrainingConfig

if TYPE_CHECKING:
    from charlab.training.lora import TrainResult

# The version every budgeted training step is keyed with. It is the value the character recipe
# first keyed its trainings with, so run folders trained before the function moved here stay valid;
# changing it retrains every condition.
TRAINING_VERSION = "character-v1"


def train_budgeted(run: Run, stage: str, model: ModelRef, data: Step, file: str, training: TrainingConfig,
                   seed: int, budget: StageBudget | None = None) -> Step:
    """One LoRA training (``dpo`` or ``sft``) on ``data``'s ``file``, on top of ``model``'s frozen stack.

    The step is ``run``'s step of kind ``stage``, keyed by the model, the data step's digest, the
    training settings, the seed and the stage's budget (None: the data as it is). A killed training
    leaves its checkpoints and the rerun resumes from them.
    """
    from charlab.training.dpo import train_dpo
    from charlab.training.sft import train_sft

    step = run.step(stage, {"model": model.resolve().fingerprint, "data": data.digest,
                            "training": training.model_dump(mode="json"), "seed": seed,
                            "budget": budget.key() if budget else None},
                    version=TRAINING_VERSION, label=stage)
    if step.done:
        return step
    train = train_dpo if stage == "dpo" else train_sft
    with step.running():
        result = train(model, data.path(file), step.path("adapter"), training, seed=seed, resume=True, budget=budget)
        finish_training(step, result, budget=result.selection)
    return step


def finish_training(step: Step, result: TrainResult, **extra: object) -> None:
    """Close a training step with its compute report (``extra.compute``, what the audit reads) and ``extra``."""
    compute = result.compute.to_dict()
    step.finish(counts={"examples": compute["examples"], "optimizer_steps": compute["optimizer_steps"]},
                tokens={"prompt": compute["prompt_tokens"], "completion": compute["completion_tokens"]},
                extra={"compute": compute, "resumed_from_step": result.resumed_from_step, **extra})


def spent_by(step: Step) -> dict[str, Any]:
    """A finished training step's compute report (what a later stage's budget subtracts)."""
    manifest = step.manifest
    if manifest is None:
        raise RuntimeError(f"{step}: not finished, so it has no compute report yet")
    compute: dict[str, Any] = manifest["extra"]["compute"]
    return compute


def trained_tokens_bound(budget: Budget) -> int:
    """The most tokens a budget trains: its token amount, or its steps with every row at the length cap."""
    training = budget.training_config()
    if budget.tokens is not None:
        return budget.tokens
    assert budget.steps is not None  # a budget states its amount as steps or as tokens
    return budget.steps * training.optim.global_batch * max(training.dpo.max_length, training.sft.max_length)
