"""A constitution through the character recipe, and the kinds that derive their constitution from a source.

* ``character``: a constitution through the whole recipe (DPO, introspection, SFT).
* ``prompt-matched-neutral``, ``shuffled-traits``, ``question-diversity``: a constitution derived
  from ``source`` (``charlab.constitution.derive``), then the same recipe, so only the traits (or
  the breadth of the questions) differ from the source's character condition.

The condition's folder keeps the constitution it trained on (``constitution.yaml``).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Literal

from pydantic import Field

from charlab.analysis.groups import Group
from charlab.conditions.kind import ConditionKind, ConditionSpec, Trained, TrainingJob
from charlab.constitution.derive import Breadth, neutralize, question_diversity, shuffle_traits
from charlab.constitution.formats import load_constitution, save_constitution
from charlab.constitution.schema import Constitution
from charlab.costs import Cost
from charlab.errors import ConfigError
from charlab.models.factory import BackendSpec
from charlab.pipeline.character import CharacterConfig, load_character_config, train_character
from charlab.store.layout import CONSTITUTION_FILE
from charlab.training.budget import Budget
from charlab.training.budgeted import trained_tokens_bound

ASSUMED_TRAITS = 10  # a constitution file not on disk yet
ASSUMED_QUESTIONS_PER_TRAIT = 5  # no expansion: the hand-written questions only


class RecipeSpec(ConditionSpec):
    """A condition whose data the character recipe makes (its prompt pool, its teacher)."""

    recipe: str = Field("upstream", description="character-recipe profile (upstream, demo) or YAML path; its "
                        "training block is replaced by the budget's")


class CharacterCondition(RecipeSpec):
    """A constitution through the full recipe."""

    kind: Literal["character"]
    constitution: str = Field(description="shipped name (integrity, neutral) or path of a constitution file")


class PromptMatchedNeutral(RecipeSpec):
    """``source``'s prompts and situation mix, its traits replaced by non-normative ones."""

    kind: Literal["prompt-matched-neutral"]
    source: str = Field(description="constitution whose prompts are kept")
    derive_seed: int = Field(0, description="which neutral statement each trait gets")


class ShuffledTraits(RecipeSpec):
    """``source``'s traits re-paired at random with other traits' prompts."""

    kind: Literal["shuffled-traits"]
    source: str = Field(description="constitution whose traits and prompts are shuffled")
    derive_seed: int = Field(0, description="seed of the permutation")


class QuestionDiversity(RecipeSpec):
    """One trait of ``source`` with questions from a narrow or a broad pool of situations."""

    kind: Literal["question-diversity"]
    source: str = Field(description="constitution the trait and the questions come from")
    trait: int = Field(ge=1, description="the trait kept, counting from 1")
    breadth: Breadth = Field(description="narrow: one situation tag; broad: every tag, round-robin")
    questions: int = Field(ge=1, description="how many questions the trait gets")
    derive_seed: int = Field(0, description="seed of the draw")


RecipeCondition = CharacterCondition | PromptMatchedNeutral | ShuffledTraits | QuestionDiversity


def condition_constitution(condition: RecipeCondition) -> Constitution:
    """The constitution a character-recipe condition trains on, derived from its source if needed."""
    if isinstance(condition, CharacterCondition):
        return load_constitution(condition.constitution)
    source = load_constitution(condition.source)
    if isinstance(condition, PromptMatchedNeutral):
        return neutralize(source, seed=condition.derive_seed)
    if isinstance(condition, ShuffledTraits):
        return shuffle_traits(source, seed=condition.derive_seed)
    return question_diversity(source, trait=condition.trait, breadth=condition.breadth, n=condition.questions,
                              seed=condition.derive_seed)


def recipe_for(condition: RecipeSpec, teacher: BackendSpec | None) -> CharacterConfig:
    """The condition's recipe, its teacher replaced by the experiment's shared one when there is one."""
    recipe = load_character_config(condition.recipe)
    return recipe.model_copy(update={"teacher": teacher}) if teacher else recipe


def train_recipe(condition: RecipeCondition, job: TrainingJob) -> Trained:
    constitution = condition_constitution(condition)
    save_constitution(constitution, job.out / CONSTITUTION_FILE)
    result = train_character(job.base, constitution, recipe_for(condition, job.teacher), job.out,
                             cache_path=job.cache_path, seed=job.seed, budget=job.budget)
    return Trained(result.model, {"dpo": result.steps["dpo"], "sft": result.steps["sft"]})


def character_group(condition: CharacterCondition) -> Group:
    """Neutral when the constitution's name says so ("neutral" in its file or shipped name), value otherwise."""
    return "neutral" if "neutral" in Path(condition.constitution).name.lower() else "value"


# -- cost before it runs -------------------------------------------------------------------------------


def recipe_tokens(recipe_name: str, traits: int, *, teacher_only: bool) -> tuple[int, int]:
    """(teacher tokens, the model's own tokens): distillation and introspection, each at its token cap."""
    from charlab.pipeline.introspect import reflection_prompt_count

    recipe = load_character_config(recipe_name)
    distill = recipe.distill
    prompts = recipe.max_prompts or traits * (recipe.expansion.target_per_trait if recipe.expansion
                                              else ASSUMED_QUESTIONS_PER_TRAIT)
    teacher = prompts * distill.samples_per_prompt * distill.teacher_sampling.max_new_tokens
    if teacher_only:
        return teacher, 0
    own = prompts * distill.samples_per_prompt * distill.student_sampling.max_new_tokens
    intro = recipe.introspection
    turns = (reflection_prompt_count() * intro.reflection_samples
             + intro.conversations * len(intro.include_variants) * intro.turns)
    return teacher, own + turns * intro.sampling.max_new_tokens


def recipe_cost(recipe_name: str, traits: int, budget: Budget, teacher: BackendSpec | None, *,
                teacher_only: bool) -> Cost:
    """The budget's trained tokens and the recipe's generations: an API teacher's are money, not device time."""
    trained = trained_tokens_bound(budget)
    by_teacher, own = recipe_tokens(recipe_name, traits, teacher_only=teacher_only)
    remote = teacher is not None and teacher.kind == "openai"
    local, api = (own, by_teacher) if remote else (own + by_teacher, 0)
    return Cost(generated_tokens=local, trained_tokens=trained, api_tokens=api)


def constitution_traits(read: Callable[[], Constitution]) -> int:
    """Traits of a constitution; an assumed count when it cannot be read yet (the plan lists it as missing)."""
    try:
        return len(read().traits)
    except ConfigError:
        return ASSUMED_TRAITS


def character_cost(condition: RecipeCondition, budget: Budget, teacher: BackendSpec | None) -> Cost:
    traits = constitution_traits(lambda: condition_constitution(condition))
    return recipe_cost(condition.recipe, traits, budget, teacher, teacher_only=False)


CHARACTER = ConditionKind(CharacterCondition, group=character_group, train=train_recipe, cost=character_cost,
                          inputs=condition_constitution, character=True)
PROMPT_MATCHED_NEUTRAL = ConditionKind(PromptMatchedNeutral, group="neutral", train=train_recipe, cost=character_cost,
                                       inputs=condition_constitution, character=True)
SHUFFLED_TRAITS = ConditionKind(ShuffledTraits, group="other", train=train_recipe, cost=character_cost,
                                inputs=condition_constitution, character=True)
QUESTION_DIVERSITY = ConditionKind(QuestionDiversity, group="other", train=train_recipe, cost=character_cost,
                                   inputs=condition_constitution, character=True)
