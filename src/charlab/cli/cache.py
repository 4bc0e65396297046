"""``charlab cache``: see what the row cache holds and drop rows you no longer trust."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(help="Inspect and clear the row cache of generations and judge calls.", no_args_is_help=True)
console = Console()

PATH_HELP = "cache file (default: $CHARLAB_HOME/cache.sqlite)"


def _cache_path(path: Path | None) -> Path:
    from charlab.paths import default_cache_path

    return path.expanduser() if path is not None else default_cache_path()


def _size(n: float) -> str:
    if n < 1024:
        return f"{n:.0f} B"
    for unit in ("KiB", "MiB", "GiB"):
        n /= 1024
        if n < 1024 or unit == "GiB":
            return f"{n:.1f} {unit}"


@app.command("stats")
def stats(path: Path | None = typer.Option(None, "--path", help=PATH_HELP)) -> None:
    """Rows, tokens and file size of the cache, per kind and model fingerprint.

    Example: charlab cache stats --path ~/.cache/charlab/cache.sqlite
    """
    from charlab.store.cache import RowCache

    path = _cache_path(path)
    if not path.exists():
        console.print(f"no cache at {path} (it is created by the first cached generation)")
        return
    with RowCache(path) as cache:
        info = cache.stats()
    console.print(f"{info.path}: {info.rows} rows, {_size(info.bytes)}")
    if not info.groups:
        return
    table = Table("kind", "model", "rows", "prompt tokens", "completion tokens")
    for g in info.groups:
        table.add_row(g.kind, g.model, str(g.rows), str(g.prompt_tokens), str(g.completion_tokens))
    console.print(table)


@app.command("clear")
def clear(
    path: Path | None = typer.Option(None, "--path", help=PATH_HELP),
    model: str | None = typer.Option(None, "--model", help="only rows of this model fingerprint (see 'cache stats')"),
    yes: bool = typer.Option(False, "--yes", "-y", help="do not ask for confirmation"),
) -> None:
    """Delete cached rows (all, or one model's); the next run pays to regenerate them.

    Example: charlab cache clear --model 3f2a9c0d1e4b5a6c --yes
    """
    from charlab.store.cache import RowCache

    path = _cache_path(path)
    if not path.exists():
        console.print(f"no cache at {path}; nothing to clear")
        return
    with RowCache(path) as cache:
        info = cache.stats()
        doomed = sum(g.rows for g in info.groups if model is None or g.model == model)
        if not doomed:
            console.print(f"no rows{f' for model {model}' if model else ''} in {path}; nothing to clear")
            return
        what = f"{doomed} rows of model {model}" if model else f"all {doomed} rows"
        if not yes:
            typer.confirm(f"delete {what} from {path}?", abort=True)
        removed = cache.clear(model=model)
    console.print(f"deleted {removed} rows from {path}")
