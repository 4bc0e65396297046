"""``diverse-sft``: LoRA SFT on non-constitutional data under the same budget, a control for the character.

The data is either the recipe's own prompt pool for a constitution (expanded and subsampled as the
recipe says) answered by the teacher with no constitution (``prompts_from``), so only the
constitution differs from the character condition, or a standard instruction set (``instructions``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from charlab.conditions.character import RecipeSpec, constitution_traits, recipe_cost, recipe_for
from charlab.conditions.kind import ConditionKind, Trained, TrainingJob, budget_cost
from charlab.constitution.formats import load_constitution
from charlab.constitution.schema import Constitution
from charlab.costs import Cost
from charlab.datasets.loaders import load_instruction_set
from charlab.errors import ConfigError
from charlab.io import atomic_write_jsonl, sha256_file
from charlab.models.factory import BackendPool, BackendSpec
from charlab.models.refs import ModelRef
from charlab.pipeline.character import PIPELINE_VERSION, CharacterConfig, distill_pool, stage_prompts, teacher_for
from charlab.pipeline.plain import plain_answers, write_plain_answers
from charlab.store.artifacts import Run, Step
from charlab.store.cache import RowCache
from charlab.training.budget import Budget
from charlab.training.budgeted import train_budgeted


class InstructionSource(BaseModel):
    """An instruction set and its column mapping (see ``datasets.loaders.load_instruction_set``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    path: str = Field(description="a .jsonl / .json file, or a Hugging Face dataset name")
    prompt_column: str | None = None
    response_column: str | None = None
    system_column: str | None = None
    messages_column: str | None = None
    split: str = "train"
    limit: int | None = Field(None, ge=1)


class DiverseSFT(RecipeSpec):
    """LoRA SFT on diverse non-constitutional data, under the same budget."""

    kind: Literal["diverse-sft"]
    prompts_from: str | None = Field(None, description="a constitution: its recipe prompt pool (expanded and "
                                     "subsampled as the recipe says) answered by the teacher with no constitution")
    instructions: InstructionSource | None = Field(None, description="or: a standard instruction set")

    @model_validator(mode="after")
    def _one_source(self) -> DiverseSFT:
        if (self.prompts_from is None) == (self.instructions is None):
            raise ValueError("give either prompts_from (a constitution) or instructions (a dataset), not both")
        return self


def train_diverse_sft(condition: DiverseSFT, job: TrainingJob) -> Trained:
    run = job.run
    if condition.prompts_from is not None:
        data = _plain_answers_step(run, job.base, load_constitution(condition.prompts_from),
                                   recipe_for(condition, job.teacher), job.seed, job.cache_path)
    else:
        data = _instruction_step(run, condition.instructions)
    budget = job.budget
    sft = train_budgeted(run, "sft", job.base, data, "sft.jsonl", budget.training_config(), job.seed,
                         budget.for_stage("sft", ("sft",)))
    return Trained(job.base.with_adapter(sft.path("adapter")), {"sft": sft})


def _plain_answers_step(run: Run, base: ModelRef, constitution: Constitution, recipe: CharacterConfig, seed: int,
                        cache_path: str | Path | None) -> Step:
    """The recipe's prompt pool for ``constitution`` (same subset as its distillation) answered without it."""
    teacher_spec = teacher_for(base, recipe)
    settings = recipe.distill
    with RowCache(cache_path) as cache, BackendPool() as backends:
        prompts = stage_prompts(run, constitution, recipe, teacher_spec, cache, backends)
        step = run.step("plain-answers", {"prompts": prompts.digest, "teacher": teacher_spec.model_dump(mode="json"),
                                          "sampling": settings.teacher_sampling.model_dump(mode="json"),
                                          "samples": settings.samples_per_prompt, "max_prompts": recipe.max_prompts,
                                          "seed": seed}, version=PIPELINE_VERSION, label="plain-answers")
        if step.done:
            return step
        _, pool = distill_pool(prompts, recipe, seed)
        with step.running():
            rows, card = plain_answers(pool, backends.get(teacher_spec), cache, settings.teacher_sampling,
                                       samples=settings.samples_per_prompt, seed=seed)
            if not rows:
                raise ConfigError(f"{run.path}: every plain answer was cut off or empty; raise "
                                  "distill.teacher_sampling.max_new_tokens in the recipe")
            write_plain_answers(step.path("sft.jsonl"), rows, card)
            step.finish(counts={"prompts": len(pool), "examples": len(rows)})
    return step


def _instruction_step(run: Run, source: InstructionSource) -> Step:
    path = Path(source.path)
    identity = sha256_file(path) if path.is_file() else source.path
    step = run.step("instructions", {"source": source.model_dump(mode="json"), "identity": identity},
                    version=PIPELINE_VERSION, label="instructions")
    if step.done:
        return step
    rows = load_instruction_set(source.path, prompt_column=source.prompt_column,
                                response_column=source.response_column, system_column=source.system_column,
                                messages_column=source.messages_column, split=source.split, limit=source.limit)
    with step.running():
        atomic_write_jsonl(step.path("sft.jsonl"), rows)
        step.finish(counts={"examples": len(rows)})
    return step


def diverse_sft_cost(condition: DiverseSFT, budget: Budget, teacher: BackendSpec | None) -> Cost:
    """An instruction set costs only its training; the recipe's pool adds the teacher's answers."""
    source = condition.prompts_from
    if not source:
        return budget_cost(condition, budget, teacher)
    traits = constitution_traits(lambda: load_constitution(source))
    return recipe_cost(condition.recipe, traits, budget, teacher, teacher_only=True)


DIVERSE_SFT = ConditionKind(DiverseSFT, group="control", train=train_diverse_sft, cost=diverse_sft_cost)
