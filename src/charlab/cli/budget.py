"""``charlab budget``: check that every condition really got the compute the budget promised."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

app = typer.Typer(help="Matched compute: audit what each condition trained on.", no_args_is_help=True)
console = Console()


@app.callback()
def budget() -> None:
    """Keeps ``audit`` a sub-command: a group with one command would otherwise become that command."""


@app.command("audit")
def audit(run: Path = typer.Argument(..., help="the --out folder of 'charlab conditions train'"),
          tolerance: float | None = typer.Option(None, "--tolerance", help="allowed fraction off the reference's "
                                                 "trained tokens (default: the budget's, 0.05)"),
          reference: str | None = typer.Option(None, "--reference", help="condition to compare against (default: "
                                               "the budget's, or the first character condition)"),
          strict: bool = typer.Option(False, "--strict", help="exit 1 when a condition is flagged or incomplete")
          ) -> None:
    """Per condition and seed: examples, steps, prompt/completion tokens, FLOPs, per stage and in total.

    Writes budget_audit.md and budget_audit.json into RUN and prints the table.

    Example: charlab budget audit runs/controls --tolerance 0.05
    """
    from charlab.io import atomic_write_json, atomic_write_text
    from charlab.report.audit import audit_markdown, audit_run

    result = audit_run(run, tolerance=tolerance, reference=reference)
    text = audit_markdown(result)
    atomic_write_text(run / "budget_audit.md", text)
    atomic_write_json(run / "budget_audit.json", result.to_dict())
    console.print(text, markup=False, highlight=False, soft_wrap=True)  # Markdown tables: wide, never truncated
    if result.flagged:
        console.print(f"[bold red]{len(result.flagged)} condition-seed(s) flagged[/]: "
                      + ", ".join(f"{r.condition}/seed-{r.seed}" for r in result.flagged))
        if strict:
            raise typer.Exit(1)
