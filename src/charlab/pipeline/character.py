"""The whole character-training recipe as one resumable run.

Read top to bottom, it is the published recipe:

1. prompts     - the constitution's questions, optionally expanded by a generator model;
2. distill     - teacher (constitution in the system prompt) and student (no prompt) answer them;
3. pairs       - chosen = teacher, rejected = student, filtered, names replaced;
4. dpo         - a LoRA trained with DPO (+ NLL on chosen) on the base model;
5. introspect  - the DPO model reflects on itself and talks with itself;
6. sft         - a second LoRA, stacked on the frozen DPO adapter, trained on that;
7. the character model = base + dpo + sft, applied as a stack (exact, no merge).

Every stage is a step of a ``Run``: its key hashes the settings it reads and the digests of the
steps it consumes, its manifest is written last, and a rerun skips whatever verifies. Generations
go through the row cache, so a killed stage resumes without paying twice, and training resumes
from its last checkpoint.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from charlab.configfile import load_model
from charlab.constitution.formats import load_constitution, save_constitution
from charlab.constitution.schema import Constitution
from charlab.datasets.cards import write_card
from charlab.errors import CharlabError, ConfigError
from charlab.io import atomic_write_json, atomic_write_jsonl, read_jsonl, sha256_file
from charlab.models.factory import BackendPool, BackendSpec, make_backend
from charlab.models.refs import ModelRef
from charlab.pipeline.distill import DistillSettings, PromptItem, distill, prompt_pool
from charlab.pipeline.introspect import IntrospectionSettings, generate_introspection, write_sft_dataset
from charlab.pipeline.pairs import PairSettings, build_pairs, write_pairs
from charlab.pipeline.prompts import ExpansionSettings, expand_constitution, load_generic_prompts
from charlab.store.artifacts import Run, Step
from charlab.store.cache import RowCache
from charlab.training.budget import Budget
from charlab.training.budgeted import spent_by, train_budgeted
from charlab.training.settings import TrainingConfig, as_training_config

PIPELINE_VERSION = "character-v1"


class CharacterConfig(BaseModel):
    """Everything the recipe needs besides the base model and the constitution."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    teacher: BackendSpec | None = Field(None, description="who answers in character; default: the base model itself")
    generator: BackendSpec | None = Field(None, description="who writes expanded prompts; default: the teacher")
    student: BackendSpec | None = Field(None, description="who answers as the student; default: the model under "
                                                          "training on hf. A vLLM server of the same base "
                                                          "(openai kind) is the fast GPU alternative")
    expansion: ExpansionSettings | None = Field(None, description="expand prompts per trait; null: use the "
                                                                   "constitution's questions as they are")
    generic_prompts: Path | None = Field(None, description="JSONL of generic prompts mixed into the pool (e.g. LIMA)")
    generic_column: str = Field("prompt", description="column of generic_prompts holding the prompt")
    generic_limit: int | None = Field(None, ge=1, description="keep at most this many generic prompts")
    student_name: str | None = Field(None, description="the student's name: replaces the teacher's in chosen "
                                                       "replies and fills {name} in introspection prompts")
    max_prompts: int | None = Field(None, ge=1, description="distil a seeded random subset of the pool of at most "
                                                             "this many prompts (null: all of them)")
    student_batch_size: int = Field(16, ge=1, description="hf batch size when the student generates")
    distill: DistillSettings = DistillSettings()
    pairs: PairSettings = PairSettings()
    introspection: IntrospectionSettings = IntrospectionSettings()
    training: TrainingConfig | str = Field("upstream", description="a training profile name, path, or inline config")


def character_profiles() -> list[str]:
    return sorted(p.name.removesuffix(".yaml") for p in (resources.files("charlab") / "data" / "character").iterdir()
                  if p.name.endswith(".yaml"))


def load_character_config(name_or_path: str | Path) -> CharacterConfig:
    """A shipped profile (``upstream``, ``demo``) or a YAML file, with located errors."""
    path = Path(name_or_path)
    if not path.suffix and not path.exists():
        if str(name_or_path) not in character_profiles():
            raise ConfigError(f"no recipe profile '{name_or_path}'; profiles: {', '.join(character_profiles())} "
                              "(or give the path of a YAML file)")
        path = Path(str(resources.files("charlab") / "data" / "character" / f"{name_or_path}.yaml"))
    return load_model(CharacterConfig, path)


@dataclass
class CharacterResult:
    """What a (possibly partial) run produced, and where each stage's outputs are."""

    model: ModelRef  # base + the adapters trained so far
    steps: dict[str, Step]


STAGES = ("prompts", "distill", "pairs", "dpo", "introspect", "sft")
TWO_STAGES = ("dpo", "sft")  # the trainings a budget is split between


def train_character(model: ModelRef, constitution: Constitution | str | Path, config: CharacterConfig,
                    out: str | Path, *, cache_path: str | Path | None = None, seed: int = 0,
                    until: str = "sft", budget: Budget | None = None) -> CharacterResult:
    """Run (or resume) the recipe into ``out`` up to stage ``until``; return what was produced.

    With ``until="sft"`` (the default) ``result.model`` is the character model: base + DPO + SFT.
    A ``budget`` replaces the recipe's training settings with its shared shape and fits each
    training stage to its share of the budget's amount (``training.budget``).
    """
    if until not in STAGES:
        raise CharlabError(f"unknown stage '{until}'; stages are {', '.join(STAGES)}")
    if not isinstance(constitution, Constitution):
        constitution = load_constitution(constitution)
    run = Run(out)
    training = budget.training_config() if budget else as_training_config(config.training)
    teacher_spec = teacher_for(model, config)
    steps: dict[str, Step] = {}
    current = model

    def wanted(stage: str) -> bool:
        return STAGES.index(stage) <= STAGES.index(until)

    with RowCache(cache_path) as cache:
        with BackendPool() as backends:  # generation models are released before training needs the memory
            steps["prompts"] = stage_prompts(run, constitution, config, teacher_spec, cache, backends)
            if wanted("distill"):
                steps["distill"] = stage_distill(run, model, steps["prompts"], config, teacher_spec, cache,
                                                 backends, seed)
        if wanted("pairs"):
            steps["pairs"] = stage_pairs(run, model, steps["distill"], config)
        if wanted("dpo"):
            steps["dpo"] = train_budgeted(run, "dpo", model, steps["pairs"], "pairs.jsonl", training, seed,
                                          budget.for_stage("dpo", TWO_STAGES) if budget else None)
            current = model.with_adapter(steps["dpo"].path("adapter"))
        if wanted("introspect"):
            steps["introspect"] = stage_introspect(run, current, config, cache, seed)
        if wanted("sft"):
            sft_budget = budget.for_stage("sft", TWO_STAGES, spent_by(steps["dpo"])) if budget else None
            steps["sft"] = train_budgeted(run, "sft", current, steps["introspect"], "sft.jsonl", training, seed,
                                          sft_budget)
            current = current.with_adapter(steps["sft"].path("adapter"))
            atomic_write_json(run.path / "character.json", {
                "model": current.model_dump(mode="json"), "constitution": constitution.name, "seed": seed,
                "compute": {stage: steps[stage].manifest["extra"]["compute"] for stage in ("dpo", "sft")},
            })
    return CharacterResult(current, steps)


def teacher_for(model: ModelRef, config: CharacterConfig) -> BackendSpec:
    """The configured teacher, or the base model itself (no adapters) on hf."""
    return config.teacher or BackendSpec(model=ModelRef(base=model.base), batch_size=config.student_batch_size)


def stage_prompts(run: Run, constitution: Constitution, config: CharacterConfig, teacher_spec: BackendSpec,
                  cache: RowCache, backends: BackendPool) -> Step:
    """The prompt pool: the constitution (expanded if asked) plus generic prompts."""
    generator = config.generator or teacher_spec
    if config.generic_prompts and not config.generic_prompts.is_file():
        raise ConfigError(f"generic_prompts: {config.generic_prompts} not found; fix the path or remove the field")
    step = run.step("prompts", {
        "constitution": constitution.model_dump(mode="json"),
        "expansion": config.expansion.model_dump(mode="json") if config.expansion else None,
        "generator": generator.model_dump(mode="json") if config.expansion else None,
        "generic": sha256_file(config.generic_prompts) if config.generic_prompts else None,
        "generic_limit": config.generic_limit,
    }, version=PIPELINE_VERSION, label="prompts")
    if step.done:
        return step
    with step.running():
        expanded = constitution
        if config.expansion:
            expanded, card = expand_constitution(constitution, backends.get(generator), cache, config.expansion)
            write_card(card, step.path("constitution.yaml"))
        save_constitution(expanded, step.path("constitution.yaml"))
        generic: list[str] = []
        if config.generic_prompts:
            generic, generic_card = load_generic_prompts(config.generic_prompts, config.generic_column,
                                                         limit=config.generic_limit)
            write_card(generic_card, step.path("generic.jsonl"))
        atomic_write_json(step.path("generic.json"), generic)
        step.finish(counts={"traits": len(expanded.traits), "questions": len(expanded.questions),
                            "generic": len(generic)})
    return step


def stage_distill(run: Run, model: ModelRef, prompts: Step, config: CharacterConfig, teacher_spec: BackendSpec,
                  cache: RowCache, backends: BackendPool, seed: int) -> Step:
    """Teacher and student answer every prompt K times."""
    settings = config.distill.model_copy(update={"seed": seed})
    student_spec = config.student or BackendSpec(model=model, batch_size=config.student_batch_size)
    step = run.step("distill", {"prompts": prompts.digest, "teacher": teacher_spec.model_dump(mode="json"),
                                "student": student_spec.model_dump(mode="json"),
                                "settings": settings.model_dump(mode="json"), "max_prompts": config.max_prompts},
                    version=PIPELINE_VERSION, label="distill")
    if step.done:
        return step
    constitution, pool = distill_pool(prompts, config, seed)
    with step.running():
        out = distill(pool, constitution, backends.get(teacher_spec), backends.get(student_spec), cache, settings)
        atomic_write_jsonl(step.path("teacher.jsonl"), out.teacher)
        atomic_write_jsonl(step.path("student.jsonl"), out.student)
        step.finish(counts={"prompts": len(pool), "teacher": len(out.teacher), "student": len(out.student)},
                    tokens={"teacher_prompt": out.teacher_tokens["prompt"],
                            "teacher_completion": out.teacher_tokens["completion"],
                            "student_prompt": out.student_tokens["prompt"],
                            "student_completion": out.student_tokens["completion"]})
    return step


def distilled_prompts(out: str | Path) -> set[str]:
    """Every prompt the recipe run in ``out`` distilled (as the student was asked it), over all its distill steps.

    An evaluation of the character's traits asks only the constitution's other questions, held out.
    """
    files = [step.path("student.jsonl") for step in Run(out).steps() if step.kind == "distill"]
    return {record["messages"][-1]["content"] for path in files if path.is_file() for record in read_jsonl(path)}


def distill_pool(prompts: Step, config: CharacterConfig, seed: int) -> tuple[Constitution, list[PromptItem]]:
    """The (expanded) constitution of a prompts step and the prompts distilled from it: the whole pool,
    or a seeded subset of ``config.max_prompts``. Controls that answer "the same prompts" use this too."""
    constitution = load_constitution(prompts.path("constitution.yaml"))
    pool = prompt_pool(constitution, json.loads(prompts.path("generic.json").read_text()))
    if config.max_prompts and len(pool) > config.max_prompts:
        pool = [pool[i] for i in sorted(random.Random(seed).sample(range(len(pool)), config.max_prompts))]
    return constitution, pool


def stage_pairs(run: Run, model: ModelRef, distilled: Step, config: CharacterConfig) -> Step:
    """Preference pairs under the student's chat template."""
    from charlab.models.loading import as_resolved, load_tokenizer

    settings = config.pairs
    if config.student_name and not settings.student_name:
        names = settings.teacher_names or (config.distill.teacher_name,)
        settings = settings.model_copy(update={"student_name": config.student_name, "teacher_names": names})
    step = run.step("pairs", {"distill": distilled.digest, "settings": settings.model_dump(mode="json"),
                              "student": str(model.base)}, version=PIPELINE_VERSION, label="pairs")
    if step.done:
        return step
    with step.running():
        tokenizer = load_tokenizer(as_resolved(model))
        pairs, card = build_pairs(read_jsonl(distilled.path("teacher.jsonl")),
                                  read_jsonl(distilled.path("student.jsonl")), tokenizer, settings)
        write_pairs(step.path("pairs.jsonl"), pairs, card)
        step.finish(counts={"pairs": len(pairs), "inputs": card.inputs})
    return step


def stage_introspect(run: Run, dpo_model: ModelRef, config: CharacterConfig, cache: RowCache, seed: int) -> Step:
    """Self-reflection and self-interaction by the DPO-trained model."""
    settings = config.introspection.model_copy(update={"seed": seed})
    resolved = dpo_model.resolve()
    step = run.step("introspect", {"model": resolved.fingerprint, "settings": settings.model_dump(mode="json"),
                                   "name": config.student_name}, version=PIPELINE_VERSION, label="introspect")
    if step.done:
        return step
    with step.running():
        backend = make_backend(BackendSpec(model=dpo_model, batch_size=config.student_batch_size))
        try:
            examples, card = generate_introspection(backend, cache, settings, assistant_name=config.student_name)
        finally:
            backend.close()
        write_sft_dataset(step.path("sft.jsonl"), examples, card)
        step.finish(counts={"examples": len(examples)})
    return step

