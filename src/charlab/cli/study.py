"""``charlab study plan | run | status``: the whole controlled experiment from one YAML file."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

app = typer.Typer(help="A whole study: plan it, run it (locally or on Ray, resumable), and see where it stands.",
                  no_args_is_help=True)
console = Console()

STUDY = typer.Argument(..., help="study YAML, or the name of a shipped study (demo, neutral-controls-llama8b)")


@app.command()
def plan(
    study: str = STUDY,
    markdown: Path | None = typer.Option(None, "--markdown", help="also write the plan as Markdown here"),
) -> None:
    """Validate the study, print its steps with counts and an upper-bound cost estimate. Runs nothing.

    Example: charlab study plan studies/neutral-controls-llama8b.yaml
    """
    from charlab.io import atomic_write_text
    from charlab.study.plan import plan_lines, plan_study
    from charlab.study.spec import load_study, study_path

    lines = plan_lines(plan_study(load_study(study_path(study), require_inputs=False)))
    typer.echo("\n".join(lines))
    if markdown is not None:
        atomic_write_text(markdown, "\n".join(lines) + "\n")


@app.command()
def run(
    study: str = STUDY,
    out: Path | None = typer.Option(None, "--out", help="run folder (default: runs/<study name>); reused on rerun"),
    executor: str = typer.Option("local", "--executor", help="local (one process) or ray"),
    address: str | None = typer.Option(None, "--address", help="Ray cluster address (default: start a local one)"),
    cache: Path | None = typer.Option(None, "--cache", help="row cache file (default: $CHARLAB_HOME/cache.sqlite); "
                                      "on Ray, a path every worker shares"),
) -> None:
    """Run every step that is not done yet, then write the report; kill it at any point and rerun to resume.

    Example: charlab study run studies/demo.yaml
    """
    from charlab.study.run import run_study
    from charlab.study.spec import load_study, study_path

    config = load_study(study_path(study))
    folder = out or Path("runs") / config.name

    def progress(node, ran: bool) -> None:
        console.print(f"{'done ' if ran else 'kept '} {node.id}", highlight=False)

    result = run_study(config, folder, executor=executor, address=address, cache_path=cache, on_node=progress)
    console.print(f"report: {result.out / 'report' / 'report.html'}\n        {result.out / 'report' / 'report.md'}",
                  highlight=False)


@app.command()
def status(run_dir: Path = typer.Argument(..., help="a study run folder")) -> None:
    """Every step of a run: done, running, interrupted, failed (with the error) or pending; work done so far.

    Example: charlab study status runs/demo
    """
    from charlab.study.run import study_status
    from charlab.study.state import status_lines

    statuses, spent, planned = study_status(run_dir)
    typer.echo("\n".join(status_lines(statuses, spent, planned)))
