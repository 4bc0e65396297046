"""``charlab judge``: rubrics, judging a file of answers, and agreement between judges."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

app = typer.Typer(help="LLM judges: rubrics, scoring answers, agreement between judges or with humans.",
                  no_args_is_help=True)
console = Console()

RUBRIC_HELP = ("a shipped rubric (see `charlab judge rubrics`), a rubric YAML file, or FILE#NAME for one "
               "judge prompt of an upstream judge_prompts file")


@app.command("rubrics")
def rubrics() -> None:
    """List the rubrics that ship with charlab.

    Example: charlab judge rubrics
    """
    from charlab.judges.rubrics import load_rubric, shipped_rubrics

    table = Table("rubric", "kind", "answers", "description")
    for name in shipped_rubrics():
        r = load_rubric(name)
        answers = (", ".join(r.labels) if r.kind == "categorical"
                   else f"{r.scale.min}-{r.scale.max}" + "".join(f", {s}" for s in r.special_labels))
        table.add_row(r.id, r.kind, escape(answers), escape(r.description))
    console.print(table)


@app.command("show")
def show(rubric: str = typer.Argument(..., help=RUBRIC_HELP)) -> None:
    """Check a rubric and print its id, answers and prompt; a bad file exits 2 naming file, line and field.

    Example: charlab judge show questions.yaml#aligned
    """
    from charlab.judges.rubrics import load_rubric

    r = load_rubric(rubric)
    console.print(f"[bold]{escape(r.id)}[/] ({r.kind})")
    if r.kind == "categorical":
        console.print(f"labels: {escape(', '.join(r.labels))}")
    else:
        specials = f"; special labels: {', '.join(r.special_labels)}" if r.special_labels else ""
        console.print(f"scale: {r.scale.min}-{r.scale.max}{escape(specials)}")
    if r.extra_slots:
        console.print(f"extra slots: {', '.join(r.extra_slots)}")
    if r.system:
        console.print(f"system: {escape(r.system)}")
    console.print(escape(r.prompt), highlight=False)


@app.command("score")
def score(
    items: Path = typer.Argument(..., help="JSONL of {item_id, question, answer[, context]} or generation records"),
    out: Path = typer.Option(..., "--out", help="where to write the judge records (JSONL)"),
    judge: Path | None = typer.Option(None, "--judge", help="judge spec YAML: backend, rubric, settings"),
    rubric: str | None = typer.Option(None, "--rubric", help="overrides the spec's rubric; " + RUBRIC_HELP),
    heuristic: bool = typer.Option(False, "--keyword-refusal", help="use the keyword refusal heuristic instead "
                                   "of a model judge (no model calls; records say 'heuristic:')"),
    cache: Path | None = typer.Option(None, "--cache", help="row cache file (default: $CHARLAB_HOME/cache.sqlite)"),
) -> None:
    """Judge every item; write one record per item and print how many could not be parsed, by reason.

    Also writes OUT with the suffix .report.json. Reruns read judge calls from the row cache.

    Example: charlab judge score answers.jsonl --judge judges/gpt4o.yaml --rubric alignment --out aligned.jsonl
    """
    from charlab.errors import ConfigError
    from charlab.io import atomic_write_json
    from charlab.judges.heuristic import KeywordRefusalJudge
    from charlab.judges.judge import Judge, judge_items, load_items
    from charlab.judges.records import write_judge_records
    from charlab.store.cache import RowCache

    if heuristic == (judge is not None):
        raise ConfigError("give exactly one of --judge SPEC.yaml (a model judge) and --keyword-refusal "
                          "(the heuristic)")
    if heuristic and rubric is not None:
        raise ConfigError("--rubric applies to model judges; the keyword refusal heuristic has no rubric")
    rows = load_items(items)
    chosen = KeywordRefusalJudge() if heuristic else Judge.from_file(judge, rubric)
    try:
        with RowCache(cache) as row_cache:
            records = judge_items(chosen, rows, row_cache, progress=True)
    finally:
        chosen.close()
    write_judge_records(out, records)
    atomic_write_json(out.with_suffix(".report.json"), records.report.to_dict())
    console.print(escape(str(records.report)), highlight=False, soft_wrap=True)
    console.print(f"records: {out}")


@app.command("agree")
def agree(
    a: Path = typer.Argument(..., help="judge records or human labels (JSONL with item_id and label or score)"),
    b: Path = typer.Argument(..., help="the other side, joined on item_id"),
    threshold: list[float] = typer.Option([], "--threshold", help="bin numeric scores at this cut (repeatable), "
                                          "e.g. --threshold 30 compares <30 vs >=30"),
    json_out: Path | None = typer.Option(None, "--json", help="also write the result as JSON here"),
) -> None:
    """Accuracy, Cohen's kappa and the confusion matrix between two judges, or a judge and human labels.

    Labels compare ignoring case; unusable rows (parse errors) and one-sided items are counted.

    Example: charlab judge agree gpt4o.jsonl human.jsonl --threshold 30
    """
    from charlab.io import atomic_write_json
    from charlab.judges.agreement import compare_files

    result = compare_files(a, b, threshold)
    kappa = "undefined (one shared category)" if result.kappa is None else f"{result.kappa:.3f}"
    summary = Table("metric", "value")
    summary.add_row("items compared", str(result.n))
    summary.add_row("accuracy", f"{result.accuracy:.3f}")
    summary.add_row("Cohen's kappa", kappa)
    summary.add_row(f"only in {escape(result.a)}", str(result.only_a))
    summary.add_row(f"only in {escape(result.b)}", str(result.only_b))
    summary.add_row(f"unusable in {escape(result.a)}", str(result.unusable_a))
    summary.add_row(f"unusable in {escape(result.b)}", str(result.unusable_b))
    console.print(summary)
    matrix = Table(escape(f"{result.a} \\ {result.b}"), *[escape(c) for c in result.categories],
                   title="confusion matrix")
    for category, row in zip(result.categories, result.matrix):
        matrix.add_row(escape(category), *[str(v) for v in row])
    console.print(matrix)
    if json_out is not None:
        atomic_write_json(json_out, result.to_dict())
        console.print(f"wrote {json_out}")
