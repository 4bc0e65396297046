"""The conditions of an inertia experiment: each one a way to put an adapter stack on the same base.

A condition is plain data (a ``kind`` plus its fields, one YAML mapping) and ``train_condition``
turns it, for one seed and under one ``Budget``, into a model under test:

* ``base``: the untouched model (no training).
* ``character``: a constitution through the whole recipe (DPO, introspection, SFT).
* ``prompt-matched-neutral``, ``shuffled-traits``, ``question-diversity``: a constitution derived
  from ``source`` (``charlab.derive``), then the same recipe, so only the traits (or the breadth of
  the questions) differ from the source's character condition.
* ``adapter``: a stack trained elsewhere (e.g. released persona adapters), not budget-matched.
* ``diverse-sft``: LoRA SFT on non-constitutional data: the recipe's own prompt pool answered with
  no constitution (``prompts_from``), or an instruction set (``instructions``).
* ``hhh``: helpful-harmless-honest preference data with DPO, optionally followed by SFT on the
  chosen side.

Each (condition, seed) is one ``Run`` folder whose steps are reused on rerun; ``condition.json``
in it names the model and the training steps, which is what the budget audit reads. A seed changes
data sampling (prompt subset, generations, the budget's row selection), LoRA init and data order.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from charlab.constitution import Constitution, load_constitution, save_constitution
from charlab.data_loaders import hh_chosen_as_sft, load_instruction_set, load_preference_pairs
from charlab.derive import Breadth, neutralize, question_diversity, shuffle_traits
from charlab.errors import ConfigError
from charlab.io import atomic_write_json, atomic_write_jsonl, sha256_file
from charlab.models.factory import BackendPool, BackendSpec
from charlab.models.refs import ModelRef
from charlab.pipeline.character import (
    PIPELINE_VERSION,
    CharacterConfig,
    distill_pool,
    load_character_config,
    spent_by,
    stage_prompts,
    stage_train,
    teacher_for,
    train_character,
)
from charlab.pipeline.plain import plain_answers, write_plain_answers
from charlab.store.artifacts import Run, Step
from charlab.store.cache import RowCache
from charlab.training.budget import Budget

CONDITION_FILE = "condition.json"
NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"


class _Condition(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(pattern=NAME_PATTERN, description="unique label; names the condition's folder")
    seeds: list[int] = Field([0], min_length=1, description="one trained model per seed")


class _Recipe(_Condition):
    recipe: str = Field("upstream", description="character-recipe profile (upstream, demo) or YAML path; its "
                        "training block is replaced by the budget's")


class BaseCondition(_Condition):
    """The untouched base model."""

    kind: Literal["base"]


class CharacterCondition(_Recipe):
    """A constitution through the full recipe."""

    kind: Literal["character"]
    constitution: str = Field(description="shipped name (integrity, neutral) or path of a constitution file")


class PromptMatchedNeutral(_Recipe):
    """``source``'s prompts and situation mix, its traits replaced by non-normative ones."""

    kind: Literal["prompt-matched-neutral"]
    source: str = Field(description="constitution whose prompts are kept")
    derive_seed: int = Field(0, description="which neutral statement each trait gets")


class ShuffledTraits(_Recipe):
    """``source``'s traits re-paired at random with other traits' prompts."""

    kind: Literal["shuffled-traits"]
    source: str = Field(description="constitution whose traits and prompts are shuffled")
    derive_seed: int = Field(0, description="seed of the permutation")


class QuestionDiversity(_Recipe):
    """One trait of ``source`` with questions from a narrow or a broad pool of situations."""

    kind: Literal["question-diversity"]
    source: str = Field(description="constitution the trait and the questions come from")
    trait: int = Field(ge=1, description="the trait kept, counting from 1")
    breadth: Breadth = Field(description="narrow: one situation tag; broad: every tag, round-robin")
    questions: int = Field(ge=1, description="how many questions the trait gets")
    derive_seed: int = Field(0, description="seed of the draw")


class AdapterCondition(_Condition):
    """An adapter stack trained elsewhere, put beside the others as it is (not budget-matched)."""

    kind: Literal["adapter"]
    adapters: list[str] = Field(min_length=1, description="local folders or owner/repo[/subfolder]@rev, bottom first")


class InstructionSource(BaseModel):
    """An instruction set and its column mapping (see ``data_loaders.load_instruction_set``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    path: str = Field(description="a .jsonl / .json file, or a Hugging Face dataset name")
    prompt_column: str | None = None
    response_column: str | None = None
    system_column: str | None = None
    messages_column: str | None = None
    split: str = "train"
    limit: int | None = Field(None, ge=1)


class DiverseSFT(_Recipe):
    """LoRA SFT on diverse non-constitutional data, under the same budget."""

    kind: Literal["diverse-sft"]
    prompts_from: str | None = Field(None, description="a constitution: its recipe prompt pool (expanded and "
                                     "subsampled as the recipe says) answered by the teacher with no constitution")
    instructions: InstructionSource | None = Field(None, description="or: a standard instruction set")

    @model_validator(mode="after")
    def _one_source(self):
        if (self.prompts_from is None) == (self.instructions is None):
            raise ValueError("give either prompts_from (a constitution) or instructions (a dataset), not both")
        return self


class HHHCondition(_Condition):
    """Helpful-harmless-honest preferences with DPO (and optionally SFT on the chosen replies)."""

    kind: Literal["hhh"]
    data: str = Field("demo", description="'demo' (the project's small set), or a JSONL file in HH-RLHF form "
                      "(chosen/rejected transcripts) or charlab pairs form (prompt/chosen/rejected)")
    sft_on_chosen: bool = Field(False, description="after DPO, SFT on the chosen side; the budget is split "
                                "between the two stages as for a character")
    limit: int | None = Field(None, ge=1, description="read at most this many records")


Condition = Annotated[
    BaseCondition | CharacterCondition | PromptMatchedNeutral | ShuffledTraits | QuestionDiversity | AdapterCondition
    | DiverseSFT | HHHCondition,
    Field(discriminator="kind"),
]
CHARACTER_KINDS = ("character", "prompt-matched-neutral", "shuffled-traits", "question-diversity")


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


def condition_constitution(condition: Condition) -> Constitution:
    """The constitution a character-pipeline condition trains on, derived from its source if needed."""
    if isinstance(condition, CharacterCondition):
        return load_constitution(condition.constitution)
    source = load_constitution(condition.source)
    if isinstance(condition, PromptMatchedNeutral):
        return neutralize(source, seed=condition.derive_seed)
    if isinstance(condition, ShuffledTraits):
        return shuffle_traits(source, seed=condition.derive_seed)
    return question_diversity(source, trait=condition.trait, breadth=condition.breadth, n=condition.questions,
                              seed=condition.derive_seed)


def _recipe(condition: _Recipe, teacher: BackendSpec | None) -> CharacterConfig:
    recipe = load_character_config(condition.recipe)
    return recipe.model_copy(update={"teacher": teacher}) if teacher else recipe


def train_condition(condition: Condition, base: ModelRef, budget: Budget, out: str | Path, *, seed: int,
                    teacher: BackendSpec | None = None, cache_path: str | Path | None = None) -> ConditionResult:
    """Train (or resume) one condition for one seed into ``out``; write ``out/condition.json``.

    ``teacher`` overrides every recipe's teacher, so all conditions of an experiment share one.
    """
    out = Path(out)
    run = Run(out)
    if condition.kind == "base":
        model, trained = base, {}
    elif condition.kind == "adapter":
        model, trained = ModelRef.parse(base.base, condition.adapters), {}
        model.resolve()  # refuses adapters made for another base before anything is recorded
    elif condition.kind in CHARACTER_KINDS:
        constitution = condition_constitution(condition)
        save_constitution(constitution, out / "constitution.yaml")
        result = train_character(base, constitution, _recipe(condition, teacher), out, cache_path=cache_path,
                                 seed=seed, budget=budget)
        model, trained = result.model, {"dpo": result.steps["dpo"], "sft": result.steps["sft"]}
    elif condition.kind == "diverse-sft":
        model, trained = _train_diverse_sft(condition, base, budget, run, seed, teacher, cache_path)
    else:
        model, trained = _train_hhh(condition, base, budget, run, seed)
    result = ConditionResult(condition.name, condition.kind, seed, model, trained,
                             budget_matched=condition.kind not in ("base", "adapter"), path=out)
    atomic_write_json(out / CONDITION_FILE, {
        "name": condition.name, "kind": condition.kind, "seed": seed, "spec": condition.model_dump(mode="json"),
        "model": model.model_dump(mode="json"), "budget_matched": result.budget_matched,
        "trained": {stage: str(step.dir.relative_to(out)) for stage, step in trained.items()},
    })
    return result


def _train_diverse_sft(condition: DiverseSFT, base: ModelRef, budget: Budget, run: Run, seed: int,
                       teacher: BackendSpec | None, cache_path: str | Path | None) -> tuple[ModelRef, dict[str, Step]]:
    if condition.prompts_from is not None:
        data = _plain_answers_step(run, base, load_constitution(condition.prompts_from), _recipe(condition, teacher),
                                   seed, cache_path)
    else:
        data = _instruction_step(run, condition.instructions)
    sft = stage_train(run, "sft", base, data.path("sft.jsonl"), data, budget.training_config(), seed,
                      budget.for_stage("sft", ("sft",)))
    return base.with_adapter(sft.path("adapter")), {"sft": sft}


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


def _train_hhh(condition: HHHCondition, base: ModelRef, budget: Budget, run: Run,
               seed: int) -> tuple[ModelRef, dict[str, Step]]:
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
    trained = {"dpo": stage_train(run, "dpo", base, data.path("pairs.jsonl"), data, training, seed,
                                  budget.for_stage("dpo", stages))}
    model = base.with_adapter(trained["dpo"].path("adapter"))
    if condition.sft_on_chosen:
        trained["sft"] = stage_train(run, "sft", model, data.path("sft.jsonl"), data, training, seed,
                                     budget.for_stage("sft", stages, spent_by(trained["dpo"])))
        model = model.with_adapter(trained["sft"].path("adapter"))
    return model, trained


def demo_hhh_path() -> Path:
    """The project's small HHH preference set (``charlab/data/hhh/``)."""
    from importlib import resources

    return Path(str(resources.files("charlab") / "data" / "hhh" / "demo_preferences.jsonl"))


def read_condition(folder: str | Path) -> dict:
    """``condition.json`` of a trained condition folder."""
    path = Path(folder) / CONDITION_FILE
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: not found; is {folder} a trained condition folder?") from None
