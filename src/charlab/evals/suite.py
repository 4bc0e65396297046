"""Every behavioural evaluation over one model under test, at sizes set in one place.

The demo (and a study) evaluates many models the same way: each condition before and after its
challenge. ``run_suite`` runs emergent misalignment, persona-modulation jailbreaks, role
adoption, trait expression and capability retention on one model with one judge backend, writes
each eval's files under ``out_dir/<eval>/`` and returns all result rows. The judge backend is
passed in already built, so one judge model serves every eval and every model under test.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from charlab.constitution import Constitution
from charlab.errors import ConfigError
from charlab.evals.answers import EvalPrompt
from charlab.evals.attacks import first_items, load_attack_set
from charlab.evals.capability import CapabilitySettings, run_capability
from charlab.evals.em import EMSettings, run_em
from charlab.evals.jailbreak import JailbreakSettings, run_jailbreak
from charlab.evals.results import EvalTarget, ResultRow
from charlab.evals.roles import RoleAdoptionSettings, load_questions, load_roles, run_role_adoption
from charlab.evals.traits import TraitSettings, run_trait_expression
from charlab.judges.judge import Judge, JudgeConfig
from charlab.judges.rubrics import load_rubric
from charlab.models.base import Backend, SamplingParams
from charlab.models.refs import ModelRef
from charlab.store.cache import RowCache

SMALL_SAMPLING = SamplingParams(temperature=0.7, top_p=0.95, max_new_tokens=64)


class SuiteSettings(BaseModel):
    """Sizes and settings of each eval in the suite; the defaults are CPU-demo sized."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    em: EMSettings = Field(EMSettings(samples_per_paraphrase=1, sampling=SMALL_SAMPLING, max_questions=8,
                                      bootstrap_resamples=500), description="emergent misalignment")
    attacks: str = Field("demo", description="attack set: 'demo' (the mild shipped set) or a frozen set file")
    attack_limit: int | None = Field(None, ge=1, description="use only the first N misuse items and first N "
                                     "benign controls (a smaller set with its own id; smoke runs and demos)")
    jailbreak: JailbreakSettings = Field(JailbreakSettings(max_new_tokens=64, resamples=500),
                                         description="persona-modulation jailbreaks")
    roles: int = Field(4, ge=1, description="first N roles of the shipped demo role set")
    role_questions: int = Field(3, ge=1, description="first N shipped neutral questions per role prompt")
    role_adoption: RoleAdoptionSettings = Field(RoleAdoptionSettings(sampling=SMALL_SAMPLING),
                                                description="role adoption")
    traits: TraitSettings = Field(TraitSettings(sampling=SMALL_SAMPLING), description="trait expression")
    capability: CapabilitySettings = Field(CapabilitySettings(tasks=("charlab_tiny_mc",), batch_size=4),
                                           description="capability retention (lm-eval)")
    judge: JudgeConfig = Field(JudgeConfig(method="sample"), description="how the judge answers; 'sample' "
                               "because small tokenizers split numbers, which the logprob method needs whole")


ALL_EVALS = ("em", "jailbreak", "roles", "traits", "capability")


def run_suite(model: ModelRef, backend: Backend, judge_backend: Backend, target: EvalTarget, cache: RowCache,
              out_dir: str | Path, settings: SuiteSettings, *, constitution: Constitution | None = None,
              trait_prompts: list[EvalPrompt] | None = None,
              evals: Sequence[str] = ALL_EVALS) -> list[ResultRow]:
    """The chosen evals of ``model`` (served by ``backend``) judged by ``judge_backend``; rows of every eval.

    Trait expression runs when it is chosen and a ``constitution`` and held-out ``trait_prompts`` are given.
    """
    out_dir = Path(out_dir)
    unknown = sorted(set(evals) - set(ALL_EVALS))
    if unknown:
        raise ConfigError(f"unknown evaluation(s) {unknown}; choose from {', '.join(ALL_EVALS)}")

    def judge(rubric: str) -> Judge:
        return Judge(judge_backend, load_rubric(rubric), settings.judge)

    rows: list[ResultRow] = []
    if "em" in evals:
        rows += run_em(backend, judge("alignment"), judge("coherence"), settings.em, target, cache,
                       out_dir / "em").rows
    if "jailbreak" in evals:
        attack_set = load_attack_set(settings.attacks)
        if settings.attack_limit is not None:
            attack_set = first_items(attack_set, settings.attack_limit)
        rows += run_jailbreak(backend, judge("harmfulness"), attack_set, settings.jailbreak, target, cache,
                              out_dir / "jailbreak").rows
    if "roles" in evals:
        roles, questions = load_roles(), load_questions()
        roles = roles.model_copy(update={"roles": roles.roles[:settings.roles]})
        questions = questions.model_copy(update={"questions": questions.questions[:settings.role_questions]})
        rows += run_role_adoption(backend, judge("role_adoption"), roles, questions, settings.role_adoption, target,
                                  cache, out_dir / "roles").rows
    if "traits" in evals and constitution is not None and trait_prompts:
        rows += run_trait_expression(backend, judge("trait_expression"), constitution, trait_prompts,
                                     settings.traits, target, cache, out_dir / "traits").rows
    if "capability" in evals:
        rows += run_capability(model, settings.capability, target, out_dir / "capability")
    return rows
