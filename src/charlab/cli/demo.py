"""``charlab demo``: the CPU demo on the embedded default model."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

console = Console()


def demo(
    out: Path = typer.Option(Path("runs/demo"), help="run folder to write into (reused on rerun)"),
    constitution: str = typer.Option("integrity", help="shipped constitution name or path"),
    n_prompts: int = typer.Option(6, min=1, help="how many of the constitution's traits to sample a prompt from"),
    max_new_tokens: int = typer.Option(96, min=1, help="cap on each response's length"),
    seed: int = typer.Option(0, help="sampling seed"),
) -> None:
    """Run the demo: teacher (constitution in the system prompt) vs student responses.

    Example: charlab demo --out runs/demo --n-prompts 4
    """
    from charlab.demo import DemoSettings, run_demo

    settings = DemoSettings(constitution=constitution, n_prompts=n_prompts, max_new_tokens=max_new_tokens, seed=seed)
    summary = run_demo(out, settings)
    console.print(f"report: {summary}\n        {summary.with_suffix('.html')}")
