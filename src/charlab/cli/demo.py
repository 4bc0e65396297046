"""``charlab demo``: the CPU demo on the embedded default model."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

console = Console()


def demo(
    out: Path = typer.Option(Path("runs/demo"), help="run folder to write into (reused on rerun)"),
    config: Path | None = typer.Option(None, "--config", help="experiment YAML (default: the packaged demo, "
                                       "charlab/data/experiments/demo.yaml)"),
) -> None:
    """Train base, integrity, neutral, diverse SFT and HHH under one budget, audit it, apply the challenge.

    Example: charlab demo --out runs/demo
    """
    from charlab.demo import run_demo

    summary = run_demo(out, config)
    console.print(f"report: {summary}\n        {summary.with_suffix('.html')}\nbudget audit: {out / 'budget_audit.md'}")
