"""``charlab eval em``: the emergent-misalignment evaluation of one model under test.

Kept in its own module so the eval group stays a list of commands; ``register`` adds it.
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from charlab.cli.options import ADAPTERS, BACKEND, CHALLENGE, CONDITION, MODEL, SEED, model_backend, target

console = Console()

SHOWN = ("answers", "coherent_count", "filtered_count", "coherence_parse_failures", "alignment_parse_failures",
         "alignment_mean", "critical_rate", "concerning_rate")


def register(app: typer.Typer) -> None:
    """Add the ``em`` command to the ``charlab eval`` group."""
    app.command("em")(em)


def em(
    model: str | None = MODEL,
    adapters: list[str] = ADAPTERS,
    backend: Path | None = BACKEND,
    condition: str = CONDITION,
    seed: int = SEED,
    challenge: str = CHALLENGE,
    judge: Path = typer.Option(..., "--judge", help="judge spec YAML (backend + settings); used for both rubrics "
                               "unless --coherence-judge is given. Its own rubric field is replaced by "
                               "--alignment-rubric / --coherence-rubric"),
    coherence_judge: Path | None = typer.Option(None, "--coherence-judge", help="a separate judge spec YAML for "
                                                "coherence"),
    alignment_rubric: str = typer.Option("alignment", "--alignment-rubric", help="numeric rubric: shipped name, "
                                         "file, or FILE#aligned for an upstream judge prompt"),
    coherence_rubric: str = typer.Option("coherence", "--coherence-rubric", help="numeric rubric: shipped name, "
                                         "file, or FILE#coherent"),
    questions: Path | None = typer.Option(None, "--questions", help="question file, charlab schema or upstream "
                                          "format (default: the shipped set)"),
    settings: Path | None = typer.Option(None, "--settings", help="EMSettings YAML/JSON; the flags here "
                                         "override its questions, samples and seed"),
    samples: int | None = typer.Option(None, "--samples", min=1, help="answers per paraphrase (default 10)"),
    out: Path = typer.Option(..., "--out", help="folder for answers, judgements and results"),
    cache: Path | None = typer.Option(None, "--cache", help="row cache file (default: $CHARLAB_HOME/cache.sqlite)"),
) -> None:
    """Ask open questions, judge alignment and coherence, write rates with intervals and per-question rows.

    Every input is checked before any model is loaded, so bad input writes nothing.

    Example: charlab eval em --model builtin:smollm2-135m --judge judges/gpt4o.yaml --samples 5 --out runs/em/base
    """
    from charlab.configfile import load_model
    from charlab.errors import ConfigError
    from charlab.evals.em import EMSettings, check_judges, load_questions, run_em
    from charlab.judges.judge import Judge
    from charlab.models.factory import make_backend
    from charlab.store.cache import RowCache

    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; give a folder")
    spec = model_backend(model, adapters, backend)
    base = load_model(EMSettings, settings) if settings is not None else EMSettings()
    chosen = _settings(base, questions, samples, seed)
    load_questions(chosen.questions)
    aligner = Judge.from_file(judge, alignment_rubric)
    scorer = Judge.from_file(coherence_judge or judge, coherence_rubric)
    check_judges(aligner, scorer)
    under_test = make_backend(spec)
    try:
        with RowCache(cache) as row_cache:
            result = run_em(under_test, aligner, scorer, chosen, target(condition, seed, challenge), row_cache, out)
    finally:
        under_test.close()
        aligner.close()
        scorer.close()
    _print(result)


def _settings(base, questions: Path | None, samples: int | None, seed: int):
    """The settings file's values with the flags that were given on top."""
    update: dict = {"seed": seed}
    if questions is not None:
        update["questions"] = str(questions)
    if samples is not None:
        update["samples_per_paraphrase"] = samples
    return type(base).model_validate({**base.model_dump(), **update})


def _print(result) -> None:
    table = Table("metric", "value", "95% interval", "n")
    for row in result.rows:
        if row.group or (row.metric not in SHOWN and not row.metric.endswith("_rate")):
            continue
        interval = "" if row.ci_low is None else f"[{row.ci_low:.3f}, {row.ci_high:.3f}]"
        table.add_row(row.metric, f"{row.value:.3f}", interval, str(row.n))
    console.print(table)
    for role, records in (("alignment", result.alignment), ("coherence", result.coherence)):
        console.print(f"{role}: {escape(str(records.report))}", highlight=False, soft_wrap=True)
    console.print(f"results: {result.out_dir / 'results.csv'}")
