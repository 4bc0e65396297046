"""``charlab conditions``: train every condition of an experiment under one budget, challenges on top."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(help="Conditions under matched compute: base, characters, derived controls, diverse SFT, HHH, "
                  "adapters.", no_args_is_help=True)
console = Console()


@app.command("train")
def train(config: Path = typer.Argument(..., help="experiment YAML: base, budget, conditions, challenges"),
          out: Path = typer.Option(..., "--out", "-o", help="run folder; rerunning the same command resumes it"),
          condition: list[str] = typer.Option([], "--condition", "-c", help="train only this condition; repeat "
                                              "for more"),
          cache: Path | None = typer.Option(None, "--cache", help="row cache file (default: "
                                            "$CHARLAB_HOME/cache.sqlite)")) -> None:
    """Train each condition x seed under the budget, then each challenge on top; finished pieces are reused.

    Example: charlab conditions train experiment.yaml --out runs/controls
    """
    from charlab.conditions.experiment import load_experiment, run_experiment

    result = run_experiment(load_experiment(config), out, cache_path=cache, only=condition or None)
    table = Table("condition", "seed", "model", title=f"run {out}")
    for trained in result.conditions:
        table.add_row(trained.name, str(trained.seed), str(trained.model))
    for challenged in result.challenges:
        table.add_row(f"{challenged.condition} + {challenged.challenge}", str(challenged.seed), str(challenged.model))
    console.print(table)
    console.print(f"audit it with: charlab budget audit {out}")


@app.command("check")
def check(config: Path = typer.Argument(..., help="experiment YAML")) -> None:
    """Validate an experiment file and list what it would train, without loading any model.

    Example: charlab conditions check experiment.yaml
    """
    from charlab.conditions.experiment import load_experiment

    experiment = load_experiment(config)
    budget = experiment.budget
    amount = f"{budget.tokens:,} tokens" if budget.tokens else f"{budget.steps} steps"
    console.print(f"base {experiment.base}; budget {amount} per condition; reference "
                  f"{experiment.reference or '(none)'}", soft_wrap=True)
    table = Table("condition", "kind", "seeds", title=str(config))
    for c in experiment.conditions:
        table.add_row(c.name, c.kind, ", ".join(map(str, c.seeds)))
    console.print(table)
    for challenge in experiment.challenges:
        console.print(f"challenge {challenge.name}: {challenge.data} on top of every condition and seed")
