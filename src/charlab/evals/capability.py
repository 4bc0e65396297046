"""Capability retention: lm-evaluation-harness tasks run on a model under test (base + adapter stack).

Character training and the challenge fine-tunes should change who a model is, not what it can do;
this eval checks that with standard benchmark tasks. charlab loads the model itself (the same
unmerged adapter stack every other eval sees, so the fingerprint means the same thing) and hands
the loaded model to lm-eval's ``HFLM``; lm-eval never downloads or loads weights here.

Tasks are lm-eval task names. Task YAMLs in ``include_path`` and the ones shipped with charlab
(``data/evals/lm_eval_tasks``, e.g. ``charlab_tiny_mc``) are found as well. A task on a local
packaged builder (``dataset_path: json``, ``csv``, ...) may name its ``data_files`` relative to its
YAML: charlab resolves them against the YAML's folder, where lm-eval would use the working directory.
When every task is found among these local YAMLs, lm-eval's own ~15,000 task configs are not indexed.

Every metric lm-eval reports becomes one results row: ``eval = capability``, ``metric =
TASK/METRIC`` (``,FILTER`` appended unless the filter is lm-eval's default ``none``), ``n`` = the
documents scored. Intervals are 95%: a Wilson score interval when every document scored 0 or 1 and
the reported value is their mean (acc, acc_norm, exact_match, ...), since it stays inside [0, 1] at
small n; otherwise the normal approximation value +- 1.96 x lm-eval's stderr; none when lm-eval has
no stderr. Group aggregates always use the normal approximation.

Files in ``out_dir``: ``lm_eval_results.json`` (lm-eval's results without per-document samples),
``lm_eval_samples.jsonl`` (one line per document and filter: arguments, log-likelihoods, metrics),
``settings.json`` and, last, ``results.csv`` / ``results.parquet``. Everything is plain JSON.
"""

from __future__ import annotations

import difflib
import math
import os
from importlib import resources
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from charlab.analysis.results import EvalTarget, ResultRow, write_results
from charlab.analysis.stats import Z95, Estimate, wilson
from charlab.costs import Cost
from charlab.errors import ConfigError
from charlab.evals.evaluation import EvalContext, Evaluation
from charlab.io import atomic_write_json, atomic_write_jsonl
from charlab.models.loading import as_resolved, load_model_and_tokenizer
from charlab.models.refs import ModelRef, ResolvedModel

EVAL_NAME = "capability"
INSTALL_HINT = "pip install 'charlab[eval]'"
# lm-eval task keys that are not metrics in a results entry.
_NOT_METRICS = {"name", "alias", "sample_len", "samples"}
# datasets builders that read local files; their data_files are paths, not files inside a hub repo.
_LOCAL_BUILDERS = {"json", "csv", "parquet", "text", "arrow", "pandas"}


class CapabilitySettings(BaseModel):
    """Which lm-eval tasks to run and how; everything a rerun needs to match."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    tasks: tuple[str, ...] = Field(min_length=1, description="lm-eval task, group or tag names, e.g. "
                                   "[arc_easy, hellaswag], or the shipped charlab_tiny_mc")
    include_path: str | None = Field(None, description="folder of extra task YAMLs, searched besides lm-eval's "
                                     "own and charlab's shipped ones")
    num_fewshot: int | None = Field(None, ge=0, description="few-shot examples per prompt; None = each task's "
                                    "own default (0 when it has none). A task whose YAML fixes 0 keeps 0")
    limit: int | None = Field(None, ge=1, description="score only the first N documents of each task (smoke "
                              "runs; the numbers are then not comparable to published ones); None = all")
    batch_size: int = Field(8, ge=1, description="documents per forward pass")
    device: str = Field("auto", description="torch device for the model: auto (first GPU, else CPU), cpu, cuda:0")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        "auto", description="weights dtype; auto = bfloat16 on GPU, float32 on CPU")
    seed: int = Field(0, description="python, numpy, torch and few-shot sampling seeds of lm-eval")
    bootstrap_iters: int = Field(1000, ge=0, description="lm-eval's bootstrap resamples for the stderr of "
                                 "metrics without a closed form (mean metrics need none); 0 = no such stderr")


def shipped_tasks_dir() -> Path:
    """The folder of task YAMLs charlab ships (always searched)."""
    return Path(str(resources.files("charlab") / "data" / "evals" / "lm_eval_tasks"))


def run_capability(model: ModelRef | ResolvedModel | str, settings: CapabilitySettings, target: EvalTarget,
                   out_dir: str | os.PathLike) -> list[ResultRow]:
    """Run the settings' lm-eval tasks on ``model`` and write its files (results last).

    Every input is checked (model files, lm-eval installed, include_path, task names, local data
    files) before weights load, so bad input costs no model load and writes nothing.
    """
    resolved = as_resolved(model)
    manager, specs = task_specs(settings)
    loaded, tokenizer = load_model_and_tokenizer(resolved, dtype=settings.dtype, device=settings.device)
    raw = _evaluate(_wrap(loaded, tokenizer, resolved, settings.batch_size), manager, specs, settings)
    samples = raw.pop("samples", {})
    rows = result_rows(raw, samples, target)
    out = Path(out_dir)
    atomic_write_json(out / "lm_eval_results.json", plain(raw))
    atomic_write_jsonl(out / "lm_eval_samples.jsonl", plain(_sample_lines(samples)))
    atomic_write_json(out / "settings.json", {"settings": settings.model_dump(mode="json"),
                                              "target": target.model_dump(), "model": str(resolved.ref),
                                              "fingerprint": resolved.fingerprint,
                                              "lm_eval_version": raw.get("lm_eval_version")})
    write_results(out, rows)
    return rows


# -- tasks --------------------------------------------------------------------------------------


def _lm_eval_tasks():
    """lm-eval's task module, or a ConfigError saying how to install it (it is an optional extra)."""
    try:
        from lm_eval import tasks
    except ImportError as exc:
        raise ConfigError(f"the capability eval needs lm-evaluation-harness ({exc}); install it with: "
                          f"{INSTALL_HINT}") from None
    return tasks


def _task_folders(settings: CapabilitySettings) -> list[Path]:
    folders = [shipped_tasks_dir()]
    if settings.include_path is not None:
        folder = Path(settings.include_path).expanduser()
        if not folder.is_dir():
            raise ConfigError(f"include_path {folder} is not a folder; point it at a folder of lm-eval task YAMLs")
        folders.append(folder.resolve())
    return folders


def task_specs(settings: CapabilitySettings) -> tuple[Any, list[str | dict[str, Any]]]:
    """``(TaskManager, specs)``: each task as lm-eval's name, or its config with local data paths fixed.

    Raises ConfigError when lm-eval is missing, include_path is not a folder, a name is unknown or a
    local task's data file is missing.
    """
    tasks = _lm_eval_tasks()
    folders = _task_folders(settings)
    manager = tasks.TaskManager(include_path=[str(f) for f in folders], include_defaults=False)
    if not all(_is_plain_task(manager, name) for name in settings.tasks):
        manager = tasks.TaskManager(include_path=[str(f) for f in folders])
    for name in settings.tasks:
        _check_known(manager, name)
    return manager, [_spec(manager, name) for name in settings.tasks]


def _is_plain_task(manager, name: str) -> bool:
    """A single task (not a group or tag, whose members may be lm-eval's own tasks)."""
    entry = manager.task_index.get(name)
    return entry is not None and entry.kind.name in ("TASK", "PY_TASK")


def _check_known(manager, name: str) -> None:
    if name in manager.task_index:
        return
    close = difflib.get_close_matches(name, manager.all_tasks, n=5, cutoff=0.6)
    hint = f"close matches: {', '.join(close)}" if close else "list them with: lm-eval ls tasks"
    raise ConfigError(f"unknown lm-eval task '{name}'; {hint}")


def _spec(manager, name: str) -> str | dict[str, Any]:
    """The task's name, or its full config when relative local data paths had to be resolved.

    lm-eval passes ``data_files`` to ``datasets.load_dataset`` as written, so a relative path would
    depend on the working directory; a config dict with absolute paths does not.
    """
    entry = manager.task_index[name]
    indexed = entry.cfg or {}
    if entry.kind.name != "TASK" or entry.yaml_path is None or indexed.get("dataset_path") not in _LOCAL_BUILDERS:
        return name
    from lm_eval.tasks._yaml_loader import load_yaml

    config = load_yaml(entry.yaml_path, resolve_func=True)
    kwargs = config.get("dataset_kwargs") or {}
    folder = Path(entry.yaml_path).parent
    fixed = {key: _absolute(value, folder) if key in ("data_files", "data_dir") else value
             for key, value in kwargs.items()}
    for path in _paths(fixed.get("data_files")):
        if not any(mark in path for mark in "*?[") and "://" not in path and not Path(path).expanduser().exists():
            raise ConfigError(f"task '{name}' ({entry.yaml_path}): data file {path} not found; data_files "
                              "paths are relative to the task YAML's folder")
    return name if fixed == kwargs else {**config, "dataset_kwargs": fixed}


def _absolute(value, folder: Path):
    """Relative paths in a data_files value (a path, a list, or split -> paths) joined onto ``folder``."""
    if isinstance(value, dict):
        return {key: _absolute(item, folder) for key, item in value.items()}
    if isinstance(value, list):
        return [_absolute(item, folder) for item in value]
    if isinstance(value, str) and "://" not in value and not Path(value).expanduser().is_absolute():
        return str(folder / value)
    return value


def _paths(value) -> list[str]:
    """Every path in a data_files value, flattened."""
    if isinstance(value, dict):
        return [path for item in value.values() for path in _paths(item)]
    if isinstance(value, list):
        return [path for item in value for path in _paths(item)]
    return [value] if isinstance(value, str) else []


# -- running ------------------------------------------------------------------------------------


def _wrap(model, tokenizer, resolved, batch_size: int):
    """lm-eval's HFLM around the already-loaded model, reporting charlab's identity of it.

    HFLM's own model info asks the hub for a commit hash; charlab's fingerprint identifies the
    base and every adapter without a network call.
    """
    from lm_eval.models.huggingface import HFLM

    identity = {"charlab_model": str(resolved.ref), "charlab_fingerprint": resolved.fingerprint,
                "model_num_parameters": sum(p.numel() for p in model.parameters()),
                "model_dtype": str(next(model.parameters()).dtype)}

    class CharlabLM(HFLM):
        def get_model_info(self) -> dict:
            return identity

    return CharlabLM(pretrained=model, tokenizer=tokenizer, batch_size=batch_size)


def _evaluate(lm, manager, specs: list[str | dict[str, Any]], settings: CapabilitySettings) -> dict[str, Any]:
    from lm_eval.evaluator import simple_evaluate

    return simple_evaluate(
        lm, tasks=specs, task_manager=manager, num_fewshot=settings.num_fewshot, limit=settings.limit,
        batch_size=settings.batch_size, bootstrap_iters=settings.bootstrap_iters, log_samples=True,
        random_seed=settings.seed, numpy_random_seed=settings.seed, torch_random_seed=settings.seed,
        fewshot_random_seed=settings.seed)


# -- rows ---------------------------------------------------------------------------------------


def result_rows(raw: dict[str, Any], samples: dict[str, list[dict]], target: EvalTarget) -> list[ResultRow]:
    """One row per (task or group, metric, filter) lm-eval reported, with its interval."""
    rows = []
    for task, metrics in raw.get("results", {}).items():
        n = _documents(raw, task)
        for key, value in metrics.items():
            name, _, filter_name = key.partition(",")
            if name in _NOT_METRICS or name.endswith("_stderr") or not _is_number(value):
                continue
            stderr = metrics.get(f"{name}_stderr,{filter_name}")
            estimate = _estimate(float(value), stderr, n, _scores(samples.get(task, []), name, filter_name))
            label = f"{task}/{name}" + (f",{filter_name}" if filter_name not in ("", "none") else "")
            rows.append(ResultRow.of(target, EVAL_NAME, label, estimate))
    return rows


def _documents(raw: dict[str, Any], task: str) -> int:
    """Documents scored for a task, or summed over a group's tasks."""
    counts = raw.get("n-samples", {})
    if task in counts:
        return int(counts[task]["effective"])
    return sum(_documents(raw, sub) for sub in raw.get("group_subtasks", {}).get(task, []))


def _scores(samples: list[dict], metric: str, filter_name: str) -> list[Any]:
    return [s[metric] for s in samples if s.get("filter") == filter_name and metric in s]


def _estimate(value: float, stderr: Any, n: int, scores: list[Any]) -> Estimate:
    """Wilson for a mean of 0/1 scores, else the normal approximation from lm-eval's stderr."""
    binary = bool(scores) and len(scores) == n and all(_is_number(s) and float(s) in (0.0, 1.0) for s in scores)
    if binary:
        successes = int(sum(float(s) for s in scores))
        if math.isclose(successes / n, value, abs_tol=1e-9):
            return wilson(successes, n)
    if _is_number(stderr) and math.isfinite(float(stderr)):
        half = Z95 * float(stderr)
        return Estimate(value, value - half, value + half, n)
    return Estimate(value, math.nan, math.nan, n)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# -- plain JSON ---------------------------------------------------------------------------------


def _sample_lines(samples: dict[str, list[dict]]) -> list[dict[str, Any]]:
    return [{"task": task, **sample} for task, rows in samples.items() for sample in rows]


def plain(value: Any) -> Any:
    """``value`` as strict JSON data: numpy scalars unwrapped, tuples and sets as lists, nan/inf as null.

    lm-eval's results hold numpy numbers, tuples of (log-likelihood, is-greedy) and sometimes
    callables from task configs; anything else that is not JSON data is written as its text.
    """
    if hasattr(value, "tolist") and not isinstance(value, (str, bytes)):  # numpy and torch numbers, arrays
        value = value.tolist()
    if isinstance(value, dict):
        return {str(key): plain(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(item) for item in value]
    if isinstance(value, (set, frozenset)):
        return sorted((plain(item) for item in value), key=str)
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, (str, int, bool)):
        return value
    return str(value)


# -- in a study -----------------------------------------------------------------------------------


def _study_run(context: EvalContext) -> list[ResultRow]:
    return run_capability(context.model, context.settings.capability, context.target, context.out)


def _study_cost(evaluations) -> Cost:
    """Not estimated: lm-eval's scoring passes are not counted in generated tokens, and nothing is judged."""
    return Cost()


# Task metrics are named by lm-eval (TASK/METRIC) and read as higher-is-better; none is a headline.
EVALUATION = Evaluation(name=EVAL_NAME, rows=EVAL_NAME, folder="capability",
                        settings=lambda evaluations: evaluations.suite, cost=_study_cost, run=_study_run)
