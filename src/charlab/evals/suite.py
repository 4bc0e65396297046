"""Every behavioural evaluation over one model under test, at sizes set in one place.

The demo (and a study) evaluates many models the same way: each condition before and after its
challenge. The suite is the registered evaluations a study chooses by name (``charlab.evals.registry``;
shipped: emergent misalignment, persona-modulation jailbreaks, role adoption, trait expression and
capability retention), and ``SuiteSettings`` holds their sizes. ``run_suite`` runs the chosen ones
on one model with one judge backend, writes each one's files under ``out_dir/<its folder>/`` and
returns all result rows. The judge backend is passed in already built, so one judge model serves
every eval and every model under test.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from charlab.analysis.results import EvalTarget, ResultRow
from charlab.constitution.schema import Constitution
from charlab.errors import ConfigError
from charlab.evals.answers import EvalPrompt
from charlab.evals.capability import CapabilitySettings
from charlab.evals.em import EMSettings
from charlab.evals.evaluation import EvalContext
from charlab.evals.jailbreak import JailbreakSettings
from charlab.evals.registry import evaluations, suite_names
from charlab.evals.roles import RoleAdoptionSettings
from charlab.evals.traits import TraitSettings
from charlab.judges.judge import JudgeConfig
from charlab.models.base import Backend, SamplingParams
from charlab.models.hf import HFBackend
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


def run_suite(model: ModelRef, backend: Backend, judge_backend: Backend, target: EvalTarget, cache: RowCache,
              out_dir: str | Path, settings: SuiteSettings, *, constitution: Constitution | None = None,
              trait_prompts: list[EvalPrompt] | None = None,
              evals: Sequence[str] | None = None) -> list[ResultRow]:
    """The chosen suite evaluations (None: all of them) of ``model`` (served by ``backend``) judged by
    ``judge_backend``, in registry order; rows of every eval.

    Trait expression runs when it is chosen and a ``constitution`` and held-out ``trait_prompts`` are given.
    """
    out_dir = Path(out_dir)
    known = suite_names()
    chosen = known if evals is None else tuple(evals)
    unknown = sorted(set(chosen) - set(known))
    if unknown:
        raise ConfigError(f"unknown evaluation(s) {unknown}; choose from {', '.join(known)}")
    rows: list[ResultRow] = []
    for evaluation in evaluations():
        if evaluation.suite and evaluation.name in chosen:
            rows += evaluation.run(EvalContext(
                model=model, backend=backend, hf=backend if isinstance(backend, HFBackend) else None,
                judge_backend=judge_backend, judge_config=settings.judge, target=target, cache=cache,
                out=out_dir / evaluation.folder, settings=settings, constitution=constitution,
                trait_prompts=trait_prompts))
    return rows
