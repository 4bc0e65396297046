"""Running a study: prepare the run folder, execute the DAG locally or on Ray, and report status.

``run_study`` writes ``RUN/study.json`` and ``RUN/experiment.json`` first, then hands the nodes
that are not done to an executor:

* ``local``: one process, plan order; the first failure stops the run (its state file keeps the
  error) and a rerun continues from there;
* ``ray``: each node is a Ray task declaring the hardware block's GPUs and memory when it runs a
  model, with its dependencies passed as object references so Ray orders them; every task reads
  the study from ``RUN/study.json``, so the run folder (and the row cache) must be on a path all
  workers share.

Either way a node that finished is never redone, and a killed run resumes where it stopped.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from charlab.costs import Cost
from charlab.errors import CharlabError, ConfigError
from charlab.io import atomic_write_json
from charlab.store.artifacts import Step
from charlab.store.layout import EXPERIMENT_FILE, STUDY_FILE
from charlab.study import state
from charlab.study.nodes import StudyRun, execute, node_steps, study_hash
from charlab.study.plan import Node, plan_study
from charlab.study.spec import StudyConfig, load_study


class StudyFailed(CharlabError):
    """A node raised; its error is in its state file and in ``charlab study status``.

    Exit code 2 when the cause is a user-fixable charlab error (a config, an unreachable server),
    1 when it is anything else (a bug, or a crash inside a library).
    """

    def __init__(self, message: str, cause: BaseException | None = None):
        super().__init__(message)
        self.exit_code = 2 if cause is None or isinstance(cause, CharlabError) else 1


def prepare(study: StudyConfig, out: str | Path, cache_path: str | Path | None = None) -> StudyRun:
    """Plan the study and write its record into ``out``; a folder of another study is refused."""
    out = Path(out)
    record = out / STUDY_FILE
    if record.is_file():
        previous = json.loads(record.read_text())
        if previous.get("study", {}).get("name") != study.name:
            raise ConfigError(f"{out} holds study {previous.get('study', {}).get('name')!r}, not {study.name!r}; "
                              "choose another --out")
    run = StudyRun(study, plan_study(study), out, Path(cache_path) if cache_path else None)
    atomic_write_json(record, {"study": study.model_dump(mode="json"), "hash": study_hash(study),
                               "cache": str(run.cache_path) if run.cache_path else None})
    experiment = study.experiment()
    atomic_write_json(out / EXPERIMENT_FILE, {**experiment.model_dump(mode="json"),
                                                "reference": experiment.reference})
    return run


def load_run(out: str | Path) -> StudyRun:
    """The study recorded in a run folder, planned again."""
    out = Path(out)
    record = out / STUDY_FILE
    if not record.is_file():
        raise ConfigError(f"{out}: no {STUDY_FILE}; not a study run folder (charlab study run STUDY --out {out})")
    data = json.loads(record.read_text())
    study = StudyConfig.model_validate(data["study"])
    return StudyRun(study, plan_study(study), out, Path(data["cache"]) if data.get("cache") else None)


def run_node(run: StudyRun, node: Node, step: Step) -> bool:
    """Run one node in its step unless the step is done; True when it ran."""
    if step.done:
        return False
    state.mark_running(run.out, node)
    try:
        execute(run, node, step)
    except BaseException as exc:
        state.mark_failed(run.out, node, exc)
        raise
    state.clear(run.out, node)
    return True


def run_local(run: StudyRun, on_node: Callable[[Node, bool], None] | None = None) -> None:
    steps = node_steps(run)
    for node in run.plan.nodes:
        try:
            ran = run_node(run, node, steps[node.id])
        except Exception as exc:
            raise StudyFailed(f"step {node.id} failed: {exc} (charlab study status {run.out} shows every step)",
                              exc) from exc
        if on_node:
            on_node(node, ran)


def _ray_node(out: str, node_id: str, *upstream) -> str:
    """One node in a Ray worker: the study comes from the run folder, the step logic is the local one."""
    run = load_run(out)
    run_node(run, run.plan.node(node_id), node_steps(run)[node_id])
    return node_id


def run_ray(run: StudyRun, address: str | None, on_node: Callable[[Node, bool], None] | None = None) -> None:
    try:
        import ray
    except ImportError:
        raise ConfigError("the ray executor needs Ray: pip install 'charlab[ray]'") from None
    started = not ray.is_initialized()
    if started:
        ray.init(address=address, include_dashboard=False, log_to_driver=False)
    try:
        steps = node_steps(run)
        task = ray.remote(_ray_node)
        hardware = run.study.hardware
        refs: dict[str, object] = {}
        for node in run.plan.nodes:
            if steps[node.id].done:
                continue
            options = {"num_gpus": hardware.gpus, "memory": int(hardware.memory_gb * 2**30)} if node.uses_model \
                else {"num_cpus": 0}
            refs[node.id] = task.options(**options, max_retries=0).remote(
                str(run.out), node.id, *[refs[d] for d in node.deps if d in refs])
        for node_id, ref in refs.items():
            try:
                ray.get(ref)
            except Exception as exc:
                raise StudyFailed(f"step {node_id} failed on Ray: {exc} (charlab study status {run.out} shows every "
                                  "step)", exc) from None
            if on_node:
                on_node(run.plan.node(node_id), True)
    finally:
        if started:
            ray.shutdown()


def run_study(study: StudyConfig | str | Path, out: str | Path, *, executor: str = "local",
              address: str | None = None, cache_path: str | Path | None = None,
              on_node: Callable[[Node, bool], None] | None = None) -> StudyRun:
    """Validate, plan, and run every node that is not done; returns the run (report under RUN/report/)."""
    config = study if isinstance(study, StudyConfig) else load_study(study)
    if config.base.base.startswith("builtin:"):
        from charlab.models.builtin import fetch_builtin

        fetch_builtin(config.base.base.removeprefix("builtin:"))
    run = prepare(config, out, cache_path)
    if executor == "local":
        run_local(run, on_node)
    elif executor == "ray":
        run_ray(run, address, on_node)
    else:
        raise ConfigError(f"--executor {executor!r}: choose local or ray")
    return run


def analysis_settings(out: str | Path):
    """The report settings a study run recorded (its analysis block), or the defaults for any other run."""
    from charlab.report import ReportSettings

    if not (Path(out) / STUDY_FILE).is_file():
        return ReportSettings()
    analysis = load_run(out).study.analysis
    return ReportSettings(groups=analysis.groups, margin=analysis.margin, hardening_margin=analysis.hardening_margin,
                          confidence=analysis.confidence, inertia_metric=analysis.inertia_metric)


def study_status(out: str | Path) -> tuple[list[state.NodeStatus], Cost, Cost]:
    """Every node's status, the planned work of the finished ones, and the planned total."""
    run = load_run(out)
    steps = node_steps(run)
    statuses, spent = [], Cost()
    for node in run.plan.nodes:
        step = steps[node.id]
        done = step.done
        finished = step.manifest.get("timings", {}).get("finished", "") if done else ""
        statuses.append(state.node_status(run.out, node, done, finished))
        if done:
            spent += node.cost
    return statuses, spent, run.plan.total
