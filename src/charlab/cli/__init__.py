"""The ``charlab`` command: one sub-command group per noun.

Each group lives in its own module and stays thin: parse arguments, call the library, print.
Heavy imports (torch, transformers) happen inside commands so ``--help`` stays instant.
"""

from __future__ import annotations

import sys

import typer
from rich.console import Console

from charlab.errors import CharlabError

app = typer.Typer(
    name="charlab",
    help="Controlled character-training experiments on language models.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
err_console = Console(stderr=True)


def _register() -> None:
    from charlab.cli import (
        axis,
        budget,
        cache,
        challenge,
        conditions,
        constitution,
        data,
        demo,
        judge,
        models,
        study,
        train,
    )
    from charlab.cli import eval as eval_group
    from charlab.cli import report as report_cli

    app.add_typer(models.app, name="models")
    app.add_typer(constitution.app, name="constitution")
    app.add_typer(cache.app, name="cache")
    app.add_typer(train.app, name="train")
    app.add_typer(challenge.app, name="challenge")
    app.add_typer(data.app, name="data")
    app.add_typer(conditions.app, name="conditions")
    app.add_typer(budget.app, name="budget")
    app.add_typer(judge.app, name="judge")
    app.add_typer(eval_group.app, name="eval")
    app.add_typer(axis.app, name="axis")
    app.add_typer(study.app, name="study")
    app.command("report")(report_cli.report)
    app.command("demo")(demo.demo)


_register()


def main() -> None:
    """Entry point: user errors print one clear message and exit 2, without a traceback."""
    try:
        app(standalone_mode=False)
    except CharlabError as exc:
        err_console.print(f"[bold red]error:[/] {exc}", highlight=False, soft_wrap=True)
        sys.exit(exc.exit_code)
    except typer.Abort:
        err_console.print("aborted")
        sys.exit(130)
    except SystemExit:
        raise
    except Exception as exc:  # usage errors (missing or bad arguments) arrive here in non-standalone mode
        if isinstance(exc, _usage_errors()):
            exc.show()
            sys.exit(2)
        raise


def _usage_errors() -> tuple[type[Exception], ...]:
    """Click's usage-error base class, and the copy of it that newer typer releases bundle."""
    import click

    try:
        from typer._click.exceptions import ClickException as bundled
    except ImportError:
        return (click.ClickException,)
    return (click.ClickException, bundled)
