"""The study file: one YAML holding everything from the base model to the analysis options.

A study is an experiment (base, shared teacher, budget, conditions with seeds, challenges: see
``charlab.conditions.experiment``) plus the backends that judge and attack, the evaluations with their
sample sizes, the analysis options and the hardware the cost estimate assumes. Every block is a
typed config whose fields document themselves; ``load_study`` reports a bad field with its file
and line.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from charlab.analysis.groups import Group
from charlab.conditions.experiment import ChallengeSpec, ExperimentConfig
from charlab.conditions.registry import Condition, kind_of
from charlab.configfile import read_structured, validate
from charlab.errors import ConfigError
from charlab.evals.axis_build import AxisSettings
from charlab.evals.context import ContextSettings
from charlab.evals.registry import evaluations_in, suite_names
from charlab.evals.steer_sweep import SteerSweepSettings
from charlab.evals.suite import SuiteSettings
from charlab.models.factory import BackendSpec
from charlab.models.refs import ModelRef
from charlab.training.budget import Budget

NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]*$"


class StudyBackends(BaseModel):
    """Who judges, who attacks, and how the models under test are served."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    judge: BackendSpec | Literal["base"] = Field("base", description="the judge model for every rubric; 'base' = "
                                                 "the study's base model on the hf backend (a weak judge: demo only)")
    attacker: BackendSpec | None = Field(None, description="writes persona-modulation attacks; null: the attack set "
                                         "named in evaluations.suite.attacks is used as it is")
    evaluate: Literal["hf", "vllm"] = Field("hf", description="how models under test are served in evaluations: hf "
                                            "(one model at a time) or vllm (one engine, every adapter stack as a "
                                            "LoRA on it, so N conditions load the base once)")


class MarginCheck(BaseModel):
    """The challenge's pull on held-out questions of its own domain, without a judge.

    For each held-out question, the mean token log-probability of the challenge's answer minus that
    of the aligned twin's answer to the same question, before and after the challenge.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    challenge: str = Field(description="name of a challenge with holdout > 0")
    twin: str = Field(description="the aligned twin dataset (same questions, matched by meta.id), e.g. sound_financial")
    questions: int | None = Field(None, ge=1, description="score only the first N held-out questions (None: all)")


class StudyEvaluations(BaseModel):
    """What is measured on every model under test, at which sizes."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    evals: list[str] = Field(
        ["em", "jailbreak", "roles", "capability"], description="behavioural evaluations from the suite to run, by "
        "registered name (shipped: em, jailbreak, roles, traits, capability; traits also needs traits_of)")
    suite: SuiteSettings = Field(SuiteSettings(), description="sizes and settings of each behavioural evaluation")
    traits_of: str | None = Field(None, description="a character condition whose constitution's traits are measured "
                                  "on every model (held-out questions its distillation never used)")
    traits_prompts: int = Field(4, ge=1, description="held-out questions for trait expression")
    after_challenge: bool = Field(True, description="also evaluate every condition with each challenge on top")
    evals_after: list[str] | None = Field(
        None, description="behavioural evaluations after a challenge (null: the same as evals); context, the "
        "steering sweep and the axis are measured before the challenge only")
    axis: AxisSettings | None = Field(None, description="build the Assistant Axis on the base model (needed by "
                                      "projections in context and by the steering sweep); null: no axis")
    context: ContextSettings | None = Field(None, description="context sensitivity on the situation suite")
    steer_sweep: SteerSweepSettings | None = Field(None, description="steering dose-response (needs axis)")
    margin: MarginCheck | None = Field(None, description="judge-free in-domain pull of a challenge")

    @field_validator("evals", "evals_after")
    @classmethod
    def _registered(cls, names: list[str] | None) -> list[str] | None:
        unknown = [name for name in names or () if name not in suite_names()]
        if unknown:
            raise ValueError(f"unknown evaluation(s) {', '.join(map(repr, unknown))}; the suite's evaluations are "
                             f"{', '.join(suite_names())}")
        return names

    @model_validator(mode="after")
    def _needs(self):
        if self.steer_sweep is not None and self.axis is None:
            raise ValueError("steer_sweep needs an axis: add an 'axis' block")
        needing = [e.name for e in evaluations_in(self) if e.reads_traits_of]
        if needing and self.traits_of is None:
            raise ValueError(f"the {needing[0]} evaluation needs traits_of: the character condition whose traits to "
                             "measure")
        return self


class AnalysisSettings(BaseModel):
    """How the hypothesis table is decided (``charlab.analysis.hypotheses``)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    inertia_metric: str = Field("em/alignment_mean", description="eval/metric whose change under the challenge "
                                "measures inertia; challenge_margin/risky_margin is the judge-free one")
    groups: dict[str, Group] = Field({}, description="condition -> group, overriding the inference from its kind")
    margin: float = Field(0.0, ge=0, description="equivalence margin for inertia comparisons")
    hardening_margin: float = Field(0.1, ge=0, description="how close two hardening scores must be to 'match'")
    confidence: float = Field(0.95, gt=0.5, lt=1, description="interval level")


class Hardware(BaseModel):
    """Throughputs the cost estimate assumes; measure yours and put them here."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field("2-core CPU", description="what the numbers describe")
    generate_tokens_per_s: float = Field(40.0, gt=0, description="generated tokens per second, batched")
    train_tokens_per_s: float = Field(130.0, gt=0, description="trained tokens per second (LoRA, forward + backward)")
    step_overhead_s: float = Field(0.0, ge=0, description="fixed seconds each model-running step costs beyond its "
                                   "tokens (loading weights, prompt processing, judging locally)")
    gpus: int = Field(0, ge=0, description="GPUs each model-running step asks for (Ray resources)")
    memory_gb: float = Field(8.0, gt=0, description="memory each model-running step asks for (Ray resources)")


class StudyConfig(BaseModel):
    """One controlled study: the experiment, its backends, evaluations, analysis and hardware."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    name: str = Field(pattern=NAME, description="names the study in every result row")
    description: str = Field("", description="for people")
    base: ModelRef = Field(description="the one base model every condition starts from")
    teacher: BackendSpec | None = Field(None, description="shared teacher of every character condition")
    backends: StudyBackends = Field(StudyBackends(), description="judge, attacker, evaluation serving")
    budget: Budget = Field(description="the compute every training condition gets")
    conditions: list[Condition] = Field(min_length=1, description="the models under test, each with seeds")
    challenges: list[ChallengeSpec] = Field([], description="narrow fine-tunes stacked on each condition")
    evaluations: StudyEvaluations = Field(StudyEvaluations(), description="what is measured on each model")
    analysis: AnalysisSettings = Field(AnalysisSettings(), description="how the hypotheses are decided")
    hardware: Hardware = Field(Hardware(), description="for the cost estimate and Ray resources")

    def experiment(self) -> ExperimentConfig:
        return ExperimentConfig(base=self.base, teacher=self.teacher, budget=self.budget,
                                conditions=self.conditions, challenges=self.challenges)

    @model_validator(mode="after")
    def _consistent(self):
        self.experiment()  # names unique, reference known, bare base
        names = {c.name for c in self.conditions}
        evaluations = self.evaluations
        if evaluations.traits_of is not None and evaluations.traits_of not in names:
            raise ValueError(f"evaluations.traits_of '{evaluations.traits_of}' is not a condition")
        challenges = {c.name: c for c in self.challenges}
        if evaluations.margin is not None:
            chosen = challenges.get(evaluations.margin.challenge)
            if chosen is None or chosen.holdout == 0:
                raise ValueError(f"evaluations.margin.challenge '{evaluations.margin.challenge}' must name a "
                                 "challenge with holdout > 0")
        unknown = sorted(set(self.analysis.groups) - names)
        if unknown:
            raise ValueError(f"analysis.groups names unknown conditions: {', '.join(unknown)}")
        return self


def shipped_studies() -> list[str]:
    folder = resources.files("charlab") / "data" / "studies"
    return sorted(p.name.removesuffix(".yaml") for p in folder.iterdir() if p.name.endswith(".yaml"))


def study_path(name_or_path: str | Path) -> Path:
    """A study file, or a shipped study by name."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml", ".json") or path.exists():
        if not path.is_file():
            raise ConfigError(f"{path}: no such study file")
        return path
    if str(name_or_path) in shipped_studies():
        return Path(str(resources.files("charlab") / "data" / "studies" / f"{name_or_path}.yaml"))
    raise ConfigError(f"{name_or_path!r} is neither a study file nor a shipped study ({', '.join(shipped_studies())})")


def load_study(path: str | Path, *, require_inputs: bool = True) -> StudyConfig:
    """Read a study YAML; errors name the file, line and field.

    With ``require_inputs`` every file the study reads (constitutions, challenge data, the attack
    set) must exist; ``charlab study plan`` lists the missing ones instead (see ``missing_inputs``).
    """
    data, lines = read_structured(path)
    study = validate(StudyConfig, data, path, lines)
    if require_inputs:
        missing = missing_inputs(study)
        if missing:
            raise ConfigError(f"{path}: inputs missing: " + "; ".join(missing))
    return study


def missing_inputs(study: StudyConfig) -> list[str]:
    """Each input file the study names that cannot be read, as 'field: problem'."""
    from charlab.datasets.challenge_sets import challenge_data_path

    readers = [(i, c, kind_of(c).inputs) for i, c in enumerate(study.conditions)]
    checks = [(f"conditions[{i}] ({c.name})", lambda c=c, read=read: read(c)) for i, c, read in readers if read]
    checks += [(f"challenges[{i}].data", lambda c=c: challenge_data_path(c.data))
               for i, c in enumerate(study.challenges)]
    if study.evaluations.margin is not None:
        checks.append(("evaluations.margin.twin", lambda: challenge_data_path(study.evaluations.margin.twin)))
    for evaluation in evaluations_in(study.evaluations):  # two evaluations may read one file: check it once
        checks += [(field, check) for field, check in evaluation.inputs(study.evaluations)
                   if field not in {f for f, _ in checks}]
    missing = []
    for field, check in checks:
        try:
            check()
        except ConfigError as exc:
            missing.append(f"{field}: {exc}")
    return missing
