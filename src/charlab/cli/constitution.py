"""``charlab constitution``: inspect, check, compare and convert constitutions."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from charlab.constitution import derive, formats, geometry, schema
from charlab.errors import ConfigError

app = typer.Typer(
    help="Inspect, validate, compare and convert constitutions (traits + the questions that elicit them).",
    no_args_is_help=True,
)
console = Console()
err_console = Console(stderr=True)

SOURCE_HELP = "A shipped name (see `charlab constitution list`) or a path to a .yaml or OCT file."
FORMAT_HELP = "Input format; detected from the file when omitted."
SEED_HELP = "Random seed; the same seed gives the same constitution."
OUT_HELP = "Where to write the derived constitution as charlab YAML (.yaml)."


@app.command("list")
def list_() -> None:
    """List the constitutions that ship with charlab.

    Example: charlab constitution list
    """
    table = Table("name", "traits", "seed questions", "description")
    for name in formats.shipped_constitutions():
        c = formats.load_constitution(name)
        table.add_row(name, str(len(c.traits)), str(sum(len(t.questions) for t in c.traits)), escape(c.description))
    console.print(table)


@app.command()
def validate(
    source: str = typer.Argument(..., help=SOURCE_HELP),
    fmt: formats.Format | None = typer.Option(None, "--format", help=FORMAT_HELP),
) -> None:
    """Check a constitution; on a problem, print where it is and exit with status 2.

    Example: charlab constitution validate my_constitution.yaml
    """
    c = formats.load_constitution(source, fmt)
    seed = sum(len(t.questions) for t in c.traits)
    expanded = sum(len(t.expanded) for t in c.traits)
    summary = f"{len(c.traits)} traits, {seed} seed and {expanded} expanded questions"
    console.print(f"[green]ok[/] {escape(c.name)}: {summary}")


@app.command()
def show(
    source: str = typer.Argument(..., help=SOURCE_HELP),
    fmt: formats.Format | None = typer.Option(None, "--format", help=FORMAT_HELP),
    expanded: bool = typer.Option(False, "--expanded", help="Also list the expanded questions."),
) -> None:
    """Print the traits and their questions, with situation tags.

    Example: charlab constitution show integrity --expanded
    """
    c = formats.load_constitution(source, fmt)
    console.print(f"[bold]{escape(c.name)}[/]  {escape(c.description)}\n")
    for i, trait in enumerate(c.traits, start=1):
        console.print(f"[bold cyan]{i}. {escape(trait.statement)}[/]")
        grid = Table.grid(padding=(0, 1))
        grid.add_column(justify="right", width=4)
        grid.add_column(ratio=1)
        grid.add_column(style="dim", no_wrap=True)
        for q in trait.questions:
            grid.add_row("-", escape(q.text), q.situation or "")
        for q in trait.expanded if expanded else []:
            grid.add_row("+", escape(q.text), q.situation or "")
        console.print(grid)
        if trait.expanded and not expanded:
            console.print(f"     [dim]… and {len(trait.expanded)} expanded questions (--expanded lists them)[/]")
        console.print()


@app.command()
def stats(
    source: str = typer.Argument(..., help=SOURCE_HELP),
    fmt: formats.Format | None = typer.Option(None, "--format", help=FORMAT_HELP),
    as_json: bool = typer.Option(False, "--json", help="Print the numbers as JSON."),
) -> None:
    """Show the training geometry: counts, question lengths, situation mix, diversity, near duplicates.

    Example: charlab constitution stats neutral --json
    """
    s = geometry.stats(formats.load_constitution(source, fmt))
    if as_json:
        typer.echo(s.model_dump_json(indent=2))
        return
    table = Table("metric", "value", title=f"training geometry of {escape(s.name)}")
    table.add_row("traits", str(s.traits))
    table.add_row("seed questions (per trait min/mean/max)", f"{s.seed_questions} ({_summary(s.seed_per_trait)})")
    table.add_row(
        "expanded questions (per trait min/mean/max)", f"{s.expanded_questions} ({_summary(s.expanded_per_trait)})"
    )
    w = s.question_words
    lengths = f"{w.mean:.1f}, {w.median:g}, {w.p10:.1f}, {w.p90:.1f}"
    table.add_row("words per question (mean, median, p10, p90)", lengths)
    table.add_row("type-token ratio", f"{s.type_token_ratio:.3f}")
    table.add_row("distinct-2", f"{s.distinct_2:.3f}")
    table.add_row("near-duplicate pairs", str(s.near_duplicates))
    for tag, share in s.situations.items():
        table.add_row(f"situation: {tag}", f"{share.count} ({share.share:.0%})")
    console.print(table)


def _summary(c: geometry.CountSummary) -> str:
    return f"{c.min}/{c.mean:.1f}/{c.max}"


@app.command()
def compare(
    a: str = typer.Argument(..., help="The first constitution (name or path)."),
    b: str = typer.Argument(..., help="The second constitution, e.g. the control (name or path)."),
    as_json: bool = typer.Option(False, "--json", help="Print the comparison as JSON."),
) -> None:
    """Put two constitutions side by side on the same numbers, to check that a control matches.

    Example: charlab constitution compare neutral integrity
    """
    result = geometry.compare(formats.load_constitution(a), formats.load_constitution(b))
    if as_json:
        typer.echo(result.model_dump_json(indent=2))
        return
    table = Table("metric", escape(result.a), escape(result.b), "diff (b-a)", "ratio (b/a)")
    for row in result.rows:
        ratio = f"{row.ratio:.2f}" if row.ratio is not None else "–"
        table.add_row(row.metric, _num(row.a), _num(row.b), _num(row.diff), ratio)
    console.print(table)
    if result.matched:
        console.print("[green]geometry matches[/] (within the tolerances of charlab.constitution.schema.compare)")
    for mismatch in result.mismatches:
        console.print(f"[yellow]mismatch:[/] {escape(mismatch)}")


def _num(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:.3f}"


@app.command("import")
def import_(
    src: Path = typer.Argument(..., help="An OCT hand-written (.txt JSON array) or expanded (.jsonl) file."),
    fmt: formats.Format | None = typer.Option(None, "--format", help=FORMAT_HELP),
    name: str | None = typer.Option(None, "--name", help="Name of the constitution; defaults to the file stem."),
    out: Path = typer.Option(..., "--out", help="Where to write the charlab YAML (.yaml)."),
) -> None:
    """Convert an OpenCharacterTraining file into a charlab YAML constitution.

    Example: charlab constitution import loving.jsonl --format oct-expanded --name loving --out loving.yaml
    """
    if out.suffix.lower() not in {".yaml", ".yml"}:
        raise ConfigError(f"--out {out}: import writes charlab YAML, so give it a .yaml name (export writes OCT files)")
    c = formats.load_constitution(src, fmt, name=name)
    formats.save_constitution(c, out, formats.Format.YAML)
    console.print(f"wrote {escape(str(out))}: {escape(c.name)} with {len(c.traits)} traits")


@app.command()
def export(
    source: str = typer.Argument(..., help=SOURCE_HELP),
    fmt: formats.Format | None = typer.Option(
        None, "--format", help="Output format; by default from the --out extension (.yaml, .jsonl, .txt/.json)."
    ),
    out: Path = typer.Option(..., "--out", help="Where to write."),
) -> None:
    """Write a constitution as charlab YAML or as an OpenCharacterTraining file.

    Example: charlab constitution export integrity --format oct-handwritten --out integrity.txt
    """
    c = formats.load_constitution(source)
    target = fmt or formats.format_for_path(out)
    formats.save_constitution(c, out, target)
    for lost in formats.dropped_on_export(c, target):
        err_console.print(f"[yellow]note:[/] {target.value} drops {lost}")
    console.print(f"wrote {escape(str(out))} ({target.value})")


@app.command()
def neutralize(
    source: str = typer.Argument(..., help=SOURCE_HELP),
    out: Path = typer.Option(..., "--out", help=OUT_HELP),
    seed: int = typer.Option(0, "--seed", help=SEED_HELP),
) -> None:
    """Write a prompt-matched neutral control: SOURCE's questions verbatim under non-normative statements.

    Example: charlab constitution neutralize integrity --out integrity-neutral.yaml --seed 1
    """
    c = formats.load_constitution(source)
    result = derive.neutralize(c, seed=seed)
    _write(result, out, f"{len(result.traits)} neutral statements over {len(result.questions)} unchanged questions")
    verdict = geometry.compare(c, result)
    if verdict.matched:
        console.print(f"[green]geometry matches[/] {escape(c.name)}")
    for mismatch in verdict.mismatches:
        console.print(f"[yellow]mismatch:[/] {escape(mismatch)}")


@app.command()
def shuffle(
    source: str = typer.Argument(..., help=SOURCE_HELP),
    out: Path = typer.Option(..., "--out", help=OUT_HELP),
    seed: int = typer.Option(0, "--seed", help=SEED_HELP),
) -> None:
    """Write a control that pairs each of SOURCE's statements with another trait's questions.

    Example: charlab constitution shuffle integrity --out integrity-shuffled.yaml --seed 1
    """
    result = derive.shuffle_traits(formats.load_constitution(source), seed=seed)
    _write(result, out, f"{len(result.traits)} statements, none with its own questions")


@app.command()
def diversity(
    source: str = typer.Argument(..., help=SOURCE_HELP),
    trait: int = typer.Option(..., "--trait", help="Which trait to keep, counting from 1 as `show` does."),
    breadth: derive.Breadth = typer.Option(..., "--breadth", help="narrow: one situation; broad: as many as possible."),
    n: int = typer.Option(..., "--n", help="How many questions to draw from all of SOURCE's questions."),
    out: Path = typer.Option(..., "--out", help=OUT_HELP),
    seed: int = typer.Option(0, "--seed", help=SEED_HELP),
) -> None:
    """Write one trait of SOURCE with N questions drawn from one situation (narrow) or across many (broad).

    Example: charlab constitution diversity integrity --trait 3 --breadth broad --n 20 --out trait3-broad.yaml
    """
    result = derive.question_diversity(formats.load_constitution(source), trait=trait, breadth=breadth, n=n, seed=seed)
    tags = {q.situation for q in result.questions}
    _write(result, out, f"trait {trait} with {n} questions over {len(tags)} situations")


def _write(c: schema.Constitution, out: Path, summary: str) -> None:
    """Derived constitutions carry situation tags, which only charlab YAML keeps."""
    if out.suffix.lower() not in {".yaml", ".yml"}:
        raise ConfigError(f"--out {out}: derived constitutions keep situation tags, so give it a .yaml name")
    formats.save_constitution(c, out, formats.Format.YAML)
    console.print(f"wrote {escape(str(out))}: {escape(c.name)}, {summary}")
