"""What each kind of study step does, using the library's stages.

Every node runs as a step of ``RUN/study`` keyed by the config it reads and its dependencies'
keys, so a finished node is skipped without loading a model, and a changed config redoes only
the nodes it reaches. The library stages underneath keep their own steps, so a node killed
halfway resumes inside the stage (a training resumes from its last checkpoint).

The run folder's layout is ``charlab.store.layout``.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from contextlib import ExitStack, closing
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path
from typing import Any

from charlab.analysis.results import EvalTarget, ResultRow, read_results, write_results
from charlab.conditions.experiment import ChallengeResult, ChallengeSpec, train_seed
from charlab.conditions.train import ConditionResult
from charlab.io import atomic_write_json, stable_hash
from charlab.models.factory import BackendSpec, make_backend
from charlab.models.refs import ModelRef
from charlab.store import layout
from charlab.store.artifacts import Run, Step
from charlab.study.plan import Node, Plan
from charlab.study.spec import StudyConfig

STUDY_VERSION = "study-v1"
NODE_FILE = "node.json"


@dataclass
class StudyRun:
    """Where a study runs and what it shares between nodes."""

    study: StudyConfig
    plan: Plan
    out: Path
    cache_path: Path | None = None

    @cached_property
    def dump(self) -> dict[str, Any]:
        """The study as JSON data, made once: every node's key reads parts of it."""
        return self.study.model_dump(mode="json")

    def step(self, node: Node, keys: dict[str, str]) -> Step:
        return Run(layout.study_dir(self.out)).step(node.kind, node_inputs(self, node, keys), version=STUDY_VERSION,
                                                        label=layout.node_label(node.id))


def node_steps(run: StudyRun) -> dict[str, Step]:
    """Each node's step, in plan order (a node's key includes its dependencies' keys)."""
    steps: dict[str, Step] = {}
    keys: dict[str, str] = {}
    for node in run.plan.nodes:
        steps[node.id] = run.step(node, keys)
        keys[node.id] = steps[node.id].key
    return steps


def node_inputs(run: StudyRun, node: Node, keys: dict[str, str]) -> dict[str, Any]:
    """The parts of the study a node reads, and its dependencies' keys."""
    return {"id": node.id, "inputs": _reads(run, node), "deps": [keys[d] for d in node.deps]}


def _reads(run: StudyRun, node: Node) -> dict[str, Any]:
    """What one kind of node reads from the study: the config its key must change with."""
    study, dump, params = run.study, run.dump, node.params
    if node.kind == "train":
        return {"base": dump["base"], "budget": dump["budget"], "teacher": dump["teacher"],
                "condition": _condition(study, params.get("condition")), "seed": params.get("seed")}
    if node.kind == "challenge":
        return {"challenge": next((c for c in dump["challenges"] if c["name"] == params.get("challenge")), None)}
    if node.kind == "axis":
        return {"base": dump["base"], "axis": dump["evaluations"]["axis"], "judge": dump["backends"]["judge"]}
    if node.kind == "evaluate":
        return {"name": study.name, "evaluations": dump["evaluations"], "backends": dump["backends"], "params": params}
    if node.kind == "margin":
        return {"name": study.name, "margin": dump["evaluations"]["margin"], "params": params}
    if node.kind == "report":
        return {"name": study.name, "analysis": dump["analysis"]}
    return {}  # audit: its dependencies' keys say everything


def _condition(study: StudyConfig, name: str | None) -> dict | None:
    return next((c.model_dump(mode="json") for c in study.conditions if c.name == name), None)


def execute(run: StudyRun, node: Node, step: Step) -> None:
    """Run one node inside its step and write its small record; the step must not be done."""
    with step.running():
        record = RUNNERS[node.kind](run, node) or {}
        atomic_write_json(step.path(NODE_FILE), {"id": node.id, **record})
        step.finish(counts={k: v for k, v in record.items() if isinstance(v, int)})


# -- trainings ---------------------------------------------------------------------------------------


def _train_seed(run: StudyRun, node: Node, challenges: list[ChallengeSpec]
                ) -> tuple[ConditionResult, list[ChallengeResult]]:
    """The node's condition for its seed, trained or resumed (instant when its steps are done), challenges on top."""
    experiment = run.study.experiment()
    return train_seed(experiment, experiment.condition(node.params["condition"]), node.params["seed"], run.out,
                      challenges, cache_path=run.cache_path)


def _train(run: StudyRun, node: Node) -> dict:
    result, _ = _train_seed(run, node, [])
    return {"model": result.model.model_dump(mode="json"), "stages": len(result.trained)}


def _challenge(run: StudyRun, node: Node) -> dict:
    challenge = next(c for c in run.study.challenges if c.name == node.params["challenge"])
    _, (result,) = _train_seed(run, node, [challenge])
    return {"model": result.model.model_dump(mode="json")}


def model_under_test(out: Path, condition: str, seed: int, stage: str) -> ModelRef:
    """The model a finished train or challenge node recorded."""
    record = (layout.condition_dir(out, condition, seed) / layout.CONDITION_FILE if stage == layout.BEFORE
              else layout.challenge_dir(out, stage, condition, seed) / layout.CHALLENGE_FILE)
    return ModelRef.model_validate(json.loads(record.read_text())["model"])


# -- evaluations -------------------------------------------------------------------------------------


def judge_spec(study: StudyConfig) -> BackendSpec:
    judge = study.backends.judge
    return BackendSpec(kind="hf", model=study.base) if judge == "base" else judge


def _axis(run: StudyRun, node: Node) -> dict:
    from charlab.evals.axis_build import build_axis
    from charlab.judges.judge import Judge
    from charlab.judges.rubrics import load_rubric
    from charlab.models.hf import HFBackend
    from charlab.store.cache import RowCache

    settings = run.study.evaluations.axis
    with ExitStack() as stack:
        cache = stack.enter_context(RowCache(run.cache_path))
        base = stack.enter_context(HFBackend(run.study.base))
        judge = None
        if settings.threshold is not None:
            judge = Judge(stack.enter_context(closing(make_backend(judge_spec(run.study)))),
                          load_rubric("role_adoption"), run.study.evaluations.suite.judge)
        built = build_axis(base, judge, settings, cache, layout.axis_dir(run.out))
    return {"roles": len(built.roles_kept), "unreadable": built.unreadable}


def _serve(run: StudyRun, model: ModelRef, stack: ExitStack):
    """The model under test on the backend the study names.

    With vllm, one engine per base serves every model as a LoRA; a stack of several adapters is
    first composed into one exact adapter (``training.compose``), kept under ``RUN/served/``.
    """
    if run.study.backends.evaluate == "vllm":
        from charlab.models.vllm_backend import shared_engine

        if len(model.adapters) > 1:
            model = _composed(run, model)
        return shared_engine(model.model_copy(update={"adapters": []})).view(model)
    from charlab.models.hf import HFBackend

    return stack.enter_context(HFBackend(model))


def _composed(run: StudyRun, model: ModelRef) -> ModelRef:
    from charlab.training.compose import compose_adapters

    resolved = model.resolve()
    step = Run(layout.served_dir(run.out)).step("compose", {"model": resolved.fingerprint}, version=STUDY_VERSION)
    if not step.done:
        with step.running():
            compose_adapters([a.load_from for a in resolved.adapters], step.path("adapter"))
            step.finish()
    return model.model_copy(update={"adapters": []}).with_adapter(step.path("adapter"))


def _evaluate(run: StudyRun, node: Node) -> dict:
    """Every evaluation the study gives this model (``evals.registry``), in registry order, into one results table."""
    from charlab.evals.evaluation import EvalContext
    from charlab.evals.registry import evaluations_for
    from charlab.interp.axis import load_axis
    from charlab.models.hf import HFBackend
    from charlab.store.cache import RowCache

    study, params = run.study, node.params
    evaluations = study.evaluations
    condition, seed, stage = params["condition"], params["seed"], params["stage"]
    chosen = evaluations_for(evaluations, after=stage != layout.BEFORE)
    model = model_under_test(run.out, condition, seed, stage)
    target = EvalTarget(study=study.name, condition=condition, seed=seed,
                        challenge="" if stage == layout.BEFORE else stage)
    out = layout.eval_dir(run.out, condition, seed, stage)
    constitution, trait_prompts = _trait_material(run) if any(e.reads_traits_of for e in chosen) else (None, None)
    axis = load_axis(layout.axis_dir(run.out)) if evaluations.axis is not None else None
    rows: list[ResultRow] = []
    with ExitStack() as stack:
        cache = stack.enter_context(RowCache(run.cache_path))
        backend = _serve(run, model, stack)
        spec = judge_spec(study)
        same = isinstance(backend, HFBackend) and spec == BackendSpec(kind="hf", model=model)
        judge = backend if same else stack.enter_context(closing(make_backend(spec)))  # base judging base: load once
        hf = None
        if any(e.activations for e in chosen):  # activations need hooks: always the hf backend
            hf = backend if isinstance(backend, HFBackend) else stack.enter_context(HFBackend(model))
        shared = EvalContext(model=model, backend=backend, hf=hf, judge_backend=judge,
                             judge_config=evaluations.suite.judge, target=target, cache=cache, out=out, settings=None,
                             axis=axis, constitution=constitution, trait_prompts=trait_prompts)
        for evaluation in chosen:
            folder = layout.evaluation_dir(run.out, condition, seed, stage, evaluation.folder, suite=evaluation.suite)
            rows += evaluation.run(replace(shared, out=folder, settings=evaluation.settings(evaluations)))
    write_results(out, rows)
    return {"rows": len(rows), "results": str((out / layout.RESULTS_FILE).relative_to(run.out))}


def _trait_material(run: StudyRun):
    """The traits_of condition's constitution and the questions its distillation never used."""
    from charlab.constitution.formats import load_constitution
    from charlab.evals.answers import EvalPrompt
    from charlab.pipeline.character import distilled_prompts

    study = run.study
    name = study.evaluations.traits_of
    seed = next(c for c in study.conditions if c.name == name).seeds[0]
    folder = layout.condition_dir(run.out, name, seed)
    constitution = load_constitution(folder / layout.CONSTITUTION_FILE)
    seen = distilled_prompts(folder)
    held_out = [q for q in constitution.questions if q.text not in seen][:study.evaluations.traits_prompts]
    return constitution, [EvalPrompt(f"held-out-{i}", [{"role": "user", "content": q.text}], f"held-out-{i}")
                          for i, q in enumerate(held_out)]


def _margin(run: StudyRun, node: Node) -> dict:
    from charlab.evals.challenge_margin import held_out_twins, margin_rows, margins
    from charlab.models.hf import HFBackend

    study, params = run.study, node.params
    check = study.evaluations.margin
    challenge = next(c for c in study.challenges if c.name == check.challenge)
    twins = held_out_twins(challenge.data, check.twin, challenge.holdout)[:check.questions]
    values = []
    for stage in ("before", challenge.name):
        with HFBackend(model_under_test(run.out, params["condition"], params["seed"], stage)) as backend:
            values.append(margins(backend, twins))
    before, after = (EvalTarget(study=study.name, condition=params["condition"], seed=params["seed"],
                                challenge=label) for label in ("", challenge.name))
    rows = margin_rows(twins, *values, before, after, seed=params["seed"])
    out = layout.margin_dir(run.out, params["condition"], params["seed"])
    write_results(out, rows)
    return {"rows": len(rows), "questions": len(twins)}


# -- audit and report -------------------------------------------------------------------------------


def _audit(run: StudyRun, node: Node) -> dict:
    from charlab.io import atomic_write_text
    from charlab.report.audit import audit_markdown, audit_run

    audit = audit_run(run.out)
    atomic_write_text(run.out / layout.AUDIT_MARKDOWN, audit_markdown(audit))
    atomic_write_json(run.out / layout.AUDIT_JSON, audit.to_dict())
    return {"rows": len(audit.rows)}


def study_rows(out: Path) -> list[ResultRow]:
    """Every row the study's evaluation and margin nodes wrote, in a stable order."""
    return [row for file in layout.node_results(out) for row in read_results(file)]


def _report(run: StudyRun, node: Node) -> dict:
    from charlab.report import ReportSettings, build_report

    rows = study_rows(run.out)
    write_results(run.out, rows)
    analysis = run.study.analysis
    paths = build_report(run.out, ReportSettings(inertia_metric=analysis.inertia_metric, groups=analysis.groups,
                                                 margin=analysis.margin, hardening_margin=analysis.hardening_margin,
                                                 confidence=analysis.confidence))
    return {"rows": len(rows), "html": str(paths.html.relative_to(run.out)),
            "markdown": str(paths.markdown.relative_to(run.out))}


RUNNERS: dict[str, Callable[[StudyRun, Node], dict | None]] = {
    "train": _train, "challenge": _challenge, "axis": _axis, "evaluate": _evaluate, "margin": _margin,
    "audit": _audit, "report": _report}


def study_hash(study: StudyConfig) -> str:
    return stable_hash(study.model_dump(mode="json"))
