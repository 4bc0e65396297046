"""``charlab demo``: the CPU demo on the embedded default model."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

console = Console()


def demo(
    out: Path = typer.Option(Path("runs/demo"), help="run folder to write into (reused on rerun)"),
    constitution: list[str] = typer.Option(["integrity", "neutral"], help="constitutions to train; repeat"),
    profile: str = typer.Option("demo", help="recipe profile (demo, upstream) or a YAML file"),
    seed: int = typer.Option(0, help="seed for sampling, LoRA init and data order"),
) -> None:
    """Character-train the default model on the shipped constitutions and compare base vs trained.

    Example: charlab demo --out runs/demo --constitution integrity
    """
    from charlab.demo import DemoSettings, run_demo

    summary = run_demo(out, DemoSettings(constitutions=tuple(constitution), profile=profile, seed=seed))
    console.print(f"report: {summary}\n        {summary.with_suffix('.html')}")
