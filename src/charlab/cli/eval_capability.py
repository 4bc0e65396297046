"""``charlab eval capability``: lm-evaluation-harness tasks on one model under test.

Kept in its own module so the eval group stays a list of commands; ``register`` adds it. Only the
hf path exists (``--model`` + ``--adapter``): lm-eval scores log-likelihoods of weights charlab
loads in this process, which a ``--backend`` served elsewhere cannot provide.
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from charlab.cli.options import ADAPTERS, CHALLENGE, CONDITION, SEED, target

console = Console()


def register(app: typer.Typer) -> None:
    """Add the ``capability`` command to the ``charlab eval`` group."""
    app.command("capability")(capability)


def capability(
    model: str = typer.Option(..., "--model", "-m", help="base model reference, loaded in this process (hf only; "
                              "there is no --backend for this eval)"),
    adapters: list[str] = ADAPTERS,
    tasks: list[str] = typer.Option([], "--task", "-t", help="lm-eval task, group or tag name; repeat for more "
                                    "(replaces the settings file's tasks). charlab_tiny_mc ships with charlab"),
    include_path: Path | None = typer.Option(None, "--include-path", help="folder of extra lm-eval task YAMLs"),
    limit: int | None = typer.Option(None, "--limit", min=1, help="score only the first N documents per task "
                                     "(smoke runs)"),
    num_fewshot: int | None = typer.Option(None, "--num-fewshot", min=0, help="few-shot examples per prompt "
                                           "(default: each task's own)"),
    batch_size: int | None = typer.Option(None, "--batch-size", min=1, help="documents per forward pass "
                                          "(default 8)"),
    device: str | None = typer.Option(None, "--device", help="auto (default), cpu, cuda:0, ..."),
    dtype: str | None = typer.Option(None, "--dtype", help="auto (default), float32, bfloat16, float16"),
    settings: Path | None = typer.Option(None, "--settings", help="CapabilitySettings YAML/JSON (tasks, "
                                         "include_path, ...); the flags here override it"),
    out: Path = typer.Option(..., "--out", help="folder for lm-eval's results and samples and results.csv"),
    condition: str = CONDITION,
    seed: int = SEED,
    challenge: str = CHALLENGE,
) -> None:
    """Run lm-eval tasks on base + adapter stack; write one row per task metric with its 95% interval.

    Tasks and the model reference are checked before weights load, so bad input writes nothing.

    Example: charlab eval capability -m builtin:smollm2-135m -a runs/x/sft --task charlab_tiny_mc --out runs/cap/sft
    """
    from charlab.errors import ConfigError
    from charlab.evals.capability import run_capability
    from charlab.models.refs import ModelRef

    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; give a folder")
    flags = {"tasks": tasks or None, "include_path": None if include_path is None else str(include_path),
             "limit": limit, "num_fewshot": num_fewshot, "batch_size": batch_size, "device": device, "dtype": dtype,
             "seed": seed}
    chosen = _settings(settings, {key: value for key, value in flags.items() if value is not None})
    ref = ModelRef.parse(model, adapters)
    rows = run_capability(ref, chosen, target(condition, seed, challenge), out)
    _print(rows, out)


def _settings(path: Path | None, flags: dict):
    """The settings file's values (if any) with the given flags on top, validated with located errors."""
    from charlab.configfile import read_structured, validate
    from charlab.errors import ConfigError
    from charlab.evals.capability import CapabilitySettings

    data, lines = read_structured(path) if path is not None else ({}, {})
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of settings (tasks, include_path, ...)")
    merged = {**data, **flags}
    if not merged.get("tasks"):
        raise ConfigError("no tasks to run; give --task NAME (repeatable) or 'tasks' in the --settings file")
    return validate(CapabilitySettings, merged, path or "command line", lines)


def _print(rows, out: Path) -> None:
    table = Table("metric", "value", "95% interval", "n")
    for row in rows:
        interval = "" if row.ci_low is None else f"[{row.ci_low:.3f}, {row.ci_high:.3f}]"
        table.add_row(row.metric, f"{row.value:.4f}", interval, str(row.n))
    console.print(table)
    console.print(f"results: {out / 'results.csv'}")
