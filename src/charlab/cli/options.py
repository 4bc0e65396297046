"""The model-under-test options and helpers every evaluation command shares (``charlab eval``, ``charlab axis``).

They live apart from the command groups so that each command module imports them from here and
no group module has to import the commands that import it back.
"""

from __future__ import annotations

from pathlib import Path

import typer

MODEL = typer.Option(None, "--model", "-m", help="base model reference for the hf backend")
ADAPTERS = typer.Option([], "--adapter", "-a", help="adapter on top of --model; repeat to stack, bottom first")
BACKEND = typer.Option(None, "--backend", help="backend spec file (YAML/JSON) instead of --model, e.g. a vLLM "
                       "server through the openai backend")
CONDITION = typer.Option("model", "--condition", help="condition label for the results rows")
SEED = typer.Option(0, "--seed", help="the condition's training seed (a label) and the sampling seed")
CHALLENGE = typer.Option("", "--challenge", help="challenge label for the results rows (empty: none)")
CACHE = typer.Option(None, "--cache", help="row cache file (default: $CHARLAB_HOME/cache.sqlite)")
SETTINGS = typer.Option(None, "--settings", help="settings YAML (samples, sampling, intervals, ...)")
OUT = typer.Option(..., "--out", help="output folder for answers, judgements, values.jsonl and results.csv")


def model_backend(model: str | None, adapters: list[str], backend: Path | None):
    """The ``BackendSpec`` of the model under test from the shared options; a clear error if neither is given."""
    from charlab.configfile import load_model
    from charlab.errors import ConfigError
    from charlab.models.factory import BackendSpec
    from charlab.models.refs import ModelRef

    if (model is None) == (backend is None):
        raise ConfigError("give the model under test as --model REF [--adapter A ...] or as --backend SPEC.yaml")
    if backend is not None:
        if adapters:
            raise ConfigError("--adapter goes with --model; put adapters in the backend spec's model instead")
        return load_model(BackendSpec, backend)
    return BackendSpec(model=ModelRef.parse(model, adapters))


def target(condition: str, seed: int, challenge: str):
    from charlab.analysis.results import EvalTarget

    return EvalTarget(condition=condition, seed=seed, challenge=challenge)


def settings_from(model, path: Path | None, seed: int, **overrides):
    """Settings from the file (or the defaults), with --seed (the sampling seed) and any flag given applied."""
    from charlab.configfile import load_model

    chosen = load_model(model, path) if path is not None else model()
    update = {"seed": seed, **{k: v for k, v in overrides.items() if v is not None}}
    return model.model_validate({**chosen.model_dump(), **update})


def judge_from(path: Path | None, rubric: str, required: bool):
    """The judge from --judge with its rubric replaced by ``rubric`` (None when not given and not required)."""
    from charlab.errors import ConfigError
    from charlab.judges.judge import Judge

    if path is None and required:
        raise ConfigError("this evaluation needs a judge: --judge SPEC.yaml (backend, rubric, settings)")
    return Judge.from_file(path, rubric) if path is not None else None


def run_on_model(evaluate, spec, judge, cache: Path | None):
    """Build the model under test, call ``evaluate(backend, judge, cache)``, and close what was opened."""
    from contextlib import ExitStack, closing

    from charlab.models.factory import make_backend
    from charlab.store.cache import RowCache

    with ExitStack() as stack:
        if judge is not None:
            stack.enter_context(closing(judge))
        backend = stack.enter_context(closing(make_backend(spec)))
        return evaluate(backend, judge, stack.enter_context(RowCache(cache)))


def print_rows(rows, report, out: Path) -> None:
    """The results as a table, the judge's parse report if any, and where the table was written."""
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console()
    table = Table("metric", "group", "value", "interval", "n")
    for row in rows:
        interval = "" if row.ci_low is None else f"[{row.ci_low:.3f}, {row.ci_high:.3f}]"
        table.add_row(row.metric, escape(row.group[:60]), f"{row.value:.3f}", interval, str(row.n))
    console.print(table)
    if report is not None:
        console.print(escape(str(report)), highlight=False, soft_wrap=True)
    console.print(f"results: {out / 'results.csv'}")
