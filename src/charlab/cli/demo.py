"""``charlab demo``: the shipped demo study on the embedded default model (what ``make demo`` runs)."""

from __future__ import annotations

from pathlib import Path

import typer


def demo(out: Path = typer.Option(Path("runs/demo"), help="run folder to write into (reused on rerun)")) -> None:
    """The demo study: five conditions under one budget, the challenge, every instrument, and the report.

    The same as `charlab study run demo --out runs/demo`.

    Example: charlab demo --out runs/demo
    """
    from charlab.cli.study import run

    run("demo", out=out, executor="local", address=None, cache=None)
