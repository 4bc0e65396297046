"""``hhh``: helpful-harmless-honest preferences with DPO, optionally followed by SFT on the chosen side.

A control for the character: preference training under the same budget, on data with no constitution.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Literal

from pydantic import Field

from charlab.conditions.kind import ConditionKind, ConditionSpec, Trained, TrainingJob, budget_cost
from charlab.datasets.loaders import hh_chosen_as_sft, load_preference_pairs
from charlab.io import atomic_write_jsonl, sha256_file
from charlab.pipeline.character import PIPELINE_VERSION
from charlab.training.budgeted import spent_by, train_budgeted


class HHHCondition(ConditionSpec):
    """Helpful-harmless-honest preferences with DPO (and optionally SFT on the chosen replies)."""

    kind: Literal["hhh"]
    data: str = Field("demo", description="'demo' (the project's small set), or a JSONL file in HH-RLHF form "
                      "(chosen/rejected transcripts) or charlab pairs form (prompt/chosen/rejected)")
    sft_on_chosen: bool = Field(False, description="after DPO, SFT on the chosen side; the budget is split "
                                "between the two stages as for a character")
    limit: int | None = Field(None, ge=1, description="read at most this many records")


def demo_hhh_path() -> Path:
    """The project's small HHH preference set (``charlab/data/hhh/``)."""
    return Path(str(resources.files("charlab") / "data" / "hhh" / "demo_preferences.jsonl"))


def train_hhh(condition: HHHCondition, job: TrainingJob) -> Trained:
    run, budget, seed = job.run, job.budget, job.seed
    path = demo_hhh_path() if condition.data == "demo" else Path(condition.data)
    stages = ("dpo", "sft") if condition.sft_on_chosen else ("dpo",)
    data = run.step("hhh-data", {"data": sha256_file(path) if path.is_file() else str(path),
                                 "limit": condition.limit}, version=PIPELINE_VERSION, label="hhh-data")
    if not data.done:
        pairs = load_preference_pairs(path, limit=condition.limit)
        with data.running():
            atomic_write_jsonl(data.path("pairs.jsonl"), pairs)
            atomic_write_jsonl(data.path("sft.jsonl"), hh_chosen_as_sft(pairs))
            data.finish(counts={"pairs": len(pairs)})
    training = budget.training_config()
    trained = {"dpo": train_budgeted(run, "dpo", job.base, data, "pairs.jsonl", training, seed,
                                     budget.for_stage("dpo", stages))}
    model = job.base.with_adapter(trained["dpo"].path("adapter"))
    if condition.sft_on_chosen:
        trained["sft"] = train_budgeted(run, "sft", model, data, "sft.jsonl", training, seed,
                                        budget.for_stage("sft", stages, spent_by(trained["dpo"])))
        model = model.with_adapter(trained["sft"].path("adapter"))
    return Trained(model, trained)


HHH = ConditionKind(HHHCondition, group="control", train=train_hhh, cost=budget_cost)
