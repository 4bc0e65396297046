"""``charlab axis``: build the Assistant Axis on a base model, inspect it, import role sets, project onto it.

The axis is built once (``build``) and every condition is then measured against it (``project``),
so the model options work as in ``charlab eval``: ``--model`` + ``--adapter`` or an hf
``--backend`` spec (activations are read in-process, so API backends cannot be used).
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from charlab.cli.options import (
    ADAPTERS,
    BACKEND,
    CACHE,
    CHALLENGE,
    CONDITION,
    MODEL,
    SEED,
    judge_from,
    model_backend,
    run_on_model,
    settings_from,
    target,
)

app = typer.Typer(help="The Assistant Axis: build it on the base model, inspect it, and project models onto it.",
                  no_args_is_help=True)
console = Console()

AXIS_PATH = typer.Argument(..., help="a folder written by `charlab axis build`, its axis/ subfolder, or an "
                           "external .pt/.safetensors tensor of shape (layers, hidden)")
AXIS = typer.Option(..., "--axis", help="the axis: a `charlab axis build` folder, its axis/ subfolder, or an "
                    "external .pt/.safetensors tensor of shape (layers, hidden)")
LAYERS = typer.Option(None, "--layers", help="layer numbers of an external tensor's rows, comma-separated "
                      "(default 0..L-1); not for a built axis")
LAYER = typer.Option(None, "--layer", help="decoder layer to read (default: the axis's middle layer)")
ROLES = typer.Option(None, "--roles", help="role set YAML (default: the shipped 70 roles)")
DEFAULTS = typer.Option(None, "--defaults", help="default-assistant prompts YAML (default: shipped)")
QUESTIONS = typer.Option(None, "--questions", help="extraction questions YAML (default: shipped)")
BUILD_OUT = typer.Option(..., "--out", help="folder for answers, judgements, activations, axis/ and "
                         "persona_space.json")
JUDGE = typer.Option(None, "--judge", help="judge spec YAML (backend, settings) for role adherence; its rubric "
                     "is replaced by --rubric. Needed unless the settings' threshold is null")
RUBRIC = typer.Option("role_adoption", "--rubric", help="0-3 categorical rubric with a {role} slot")
AXIS_SETTINGS = typer.Option(None, "--settings", help="AxisSettings YAML (roles, prompts per role, questions, "
                             "sampling, threshold, layers, ...)")
MARKDOWN = typer.Option(None, "--markdown", help="also write the report as Markdown to this file")
UPSTREAM = typer.Argument(..., help="upstream folders or files: role .json files (default.json holds the "
                          "default prompts) and extraction_questions.jsonl")
IMPORT_OUT = typer.Option(..., "--out", help="folder for roles.yaml, default_prompts.yaml and "
                          "extraction_questions.yaml (whichever parts were found)")
PROJECT_OUT = typer.Option(..., "--out", help="folder for answers, projections, summary.json and results; "
                           "drift goes to OUT/drift")
SETS = typer.Option(None, "--sets", help="comma-separated prompt sets: default, roles, jailbreak (default: the "
                    "settings' sets, all three; '' for none)")
CONVERSATIONS = typer.Option(None, "--conversations", help="drift conversations YAML, or 'shipped' for the "
                             "shipped set")
PROJECTION_SETTINGS = typer.Option(None, "--settings", help="ProjectionSettings YAML (counts, sampling, layer, "
                                   "...); flags override it")
ATTACKS = typer.Option("demo", "--attacks", help="frozen attack set JSON for the jailbreak set, or 'demo' (the "
                       "shipped mild set)")


def _layers(text: str | None) -> list[int] | None:
    from charlab.errors import ConfigError

    if text is None:
        return None
    try:
        return [int(part) for part in text.split(",") if part.strip()]
    except ValueError:
        raise ConfigError(f"--layers {text!r}: give whole layer numbers separated by commas, e.g. 0,1,2") from None


@app.command()
def build(
    out: Path = BUILD_OUT,
    judge: Path | None = JUDGE,
    rubric: str = RUBRIC,
    settings: Path | None = AXIS_SETTINGS,
    roles: Path | None = ROLES,
    defaults: Path | None = DEFAULTS,
    questions: Path | None = QUESTIONS,
    cache: Path | None = CACHE,
    model: str | None = MODEL,
    adapters: list[str] = ADAPTERS,
    backend: Path | None = BACKEND,
) -> None:
    """Build the axis on one model: answer as roles and as the assistant, judge role adherence, extract, compute.

    Example: charlab axis build -m builtin:smollm2-135m --judge judge.yaml --settings axis.yaml --out axes/base
    """
    from charlab.configfile import load_model
    from charlab.evals.axis_build import AxisSettings, build_axis
    from charlab.evals.axis_projection import require_hf
    from charlab.evals.traits import check_slot
    from charlab.interp.roleset import (
        load_axis_roles,
        load_default_prompts,
        load_extraction_questions,
    )

    chosen = load_model(AxisSettings, settings) if settings is not None else AxisSettings()
    role_set, default_set = load_axis_roles(roles), load_default_prompts(defaults)
    question_set = load_extraction_questions(questions)
    spec = model_backend(model, adapters, backend)
    adherence = judge_from(judge, rubric, required=chosen.threshold is not None)
    if adherence is not None:
        check_slot(adherence, "role", "axis build")
    run_on_model(lambda b, j, c: build_axis(require_hf(b, "axis build"), j, chosen, c, out, roles=role_set,
                                    defaults=default_set, questions=question_set), spec, adherence, cache)
    _print_report(out)  # roles kept, unreadable judgements and the per-layer PCA summary
    console.print(f"axis: {out / 'axis'}")


@app.command()
def show(
    path: Path = AXIS_PATH,
    markdown: Path | None = MARKDOWN,
    layers: str | None = LAYERS,
) -> None:
    """Per layer: the axis norm, |cos(axis, PC1)| and variance explained by PC1..k; * marks the default layer.

    An external tensor has no persona space, so only its shape and norms are shown.

    Example: charlab axis show axes/base --markdown axes/base/report.md
    """
    from charlab.io import atomic_write_text

    notes, header, rows = _print_report(path, _layers(layers))
    if markdown is not None:
        lines = [*(f"- {note}" for note in notes), "", "| " + " | ".join(header) + " |",
                 "|" + "---|" * len(header), *("| " + " | ".join(row) + " |" for row in rows)]
        atomic_write_text(markdown, "\n".join(lines) + "\n")
        console.print(f"wrote {markdown}")


def _print_report(path: Path, layers: list[int] | None = None) -> tuple[list[str], list[str], list[list[str]]]:
    notes, header, rows = _report(path, layers)
    for note in notes:
        console.print(escape(note), highlight=False)
    table = Table(*header)
    for row in rows:
        table.add_row(*row)
    console.print(table)
    return notes, header, rows


def _report(path: Path, layers: list[int] | None) -> tuple[list[str], list[str], list[list[str]]]:
    """Notes, column names and one row per layer describing the axis (and its persona space, when built)."""
    from charlab.errors import ConfigError
    from charlab.evals.axis_projection import (
        PERSONA_SPACE,
        axis_fingerprint,
        locate_axis,
        open_axis,
    )
    from charlab.io import read_json_object

    axis = open_axis(path, layers)
    norms = axis.vectors.norm(dim=1).tolist()

    def mark(layer: int) -> str:
        return f"{layer} *" if layer == axis.middle_layer else str(layer)

    notes = [(f"axis {axis_fingerprint(axis)}: {len(axis.layers)} layers x hidden {axis.vectors.shape[1]}; "
              f"default layer {axis.middle_layer} (*)")]
    _, build_dir = locate_axis(path)
    if build_dir is None:
        notes.append("no persona space (external tensor, or an axis folder without its build): norms only")
        return notes, ["layer", "axis norm"], [[mark(layer), f"{norm:.3f}"] for layer, norm in zip(axis.layers, norms)]
    space = read_json_object(build_dir / PERSONA_SPACE)
    if space["layers"] != axis.layers:
        raise ConfigError(f"{build_dir / PERSONA_SPACE}: layers {space['layers']} differ from the axis's "
                          f"{axis.layers}; rebuild the axis")
    judged = (f"unreadable judgements: {space['unreadable_judgements']}" if space.get("judged", True)
              else "not judged: every role answer counted")
    notes += [f"roles kept ({len(space['roles'])}): {', '.join(space['roles'])}",
              (f"answers: {space['role_answers']} role, {space['default_answers']} default, "
               f"{space['empty_answers']} empty; {judged}")]
    components = len(space["explained"][0])
    header = ["layer", "axis norm", "|cos(axis, PC1)|", *(f"PC{k + 1} %" for k in range(components))]
    rows = [[mark(layer), f"{norm:.3f}", f"{cosine:.3f}", *(f"{100 * e:.1f}" for e in explained)]
            for layer, norm, cosine, explained in zip(axis.layers, norms, space["axis_pc1_cosine"],
                                                       space["explained"])]
    return notes, header, rows


@app.command("import")
def import_roles(
    upstream: list[Path] = UPSTREAM,
    out: Path = IMPORT_OUT,
) -> None:
    """Convert the upstream assistant-axis role files into the project's YAML, ready for `axis build`.

    Example: charlab axis import upstream/roles upstream/extraction_questions.jsonl --out roles/upstream
    """
    from charlab.interp.roleset import export_yaml, import_upstream

    imported = import_upstream(*upstream)
    counts = {"roles": imported.roles and len(imported.roles.roles),
              "default prompts": imported.default_prompts and len(imported.default_prompts.prompts),
              "questions": imported.questions and len(imported.questions.questions)}
    console.print(", ".join(f"{count or 0} {what}" for what, count in counts.items()), highlight=False)
    for path in export_yaml(imported, out):
        console.print(f"wrote {path}")


@app.command("project")
def project_command(
    axis: Path = AXIS,
    out: Path = PROJECT_OUT,
    layers: str | None = LAYERS,
    layer: int | None = LAYER,
    sets: str | None = SETS,
    conversations: str | None = CONVERSATIONS,
    settings: Path | None = PROJECTION_SETTINGS,
    roles: Path | None = ROLES,
    defaults: Path | None = DEFAULTS,
    questions: Path | None = QUESTIONS,
    attacks: str = ATTACKS,
    cache: Path | None = CACHE,
    model: str | None = MODEL,
    adapters: list[str] = ADAPTERS,
    backend: Path | None = BACKEND,
    condition: str = CONDITION,
    seed: int = SEED,
    challenge: str = CHALLENGE,
) -> None:
    """Project a model's answers (and, with --conversations, each turn of scripted conversations) onto a fixed axis.

    Example: charlab axis project --axis axes/base -m builtin:smollm2-135m --out proj/base --condition base

    Example: charlab axis project --axis axes/base -m builtin:smollm2-135m -a runs/sft --conversations shipped \\
        --out proj/sft
    """
    from charlab.datasets.attacks import load_attack_set
    from charlab.errors import ConfigError
    from charlab.evals.axis_projection import (
        ProjectionSettings,
        load_conversations,
        open_axis,
        project_answers,
        project_drift,
        projection_prompts,
    )
    from charlab.interp.roleset import (
        load_axis_roles,
        load_default_prompts,
        load_extraction_questions,
    )

    flags = {"layer": layer, "conversations": conversations,
             "sets": None if sets is None else [s.strip() for s in sets.split(",") if s.strip()]}
    chosen = _override(settings_from(ProjectionSettings, settings, seed), flags)
    if not chosen.sets and chosen.conversations is None:
        raise ConfigError("nothing to project: give prompt sets (--sets) or drift conversations (--conversations)")
    fixed = open_axis(axis, _layers(layers))
    prompts = projection_prompts(
        chosen, roles=load_axis_roles(roles) if "roles" in chosen.sets else None,
        defaults=load_default_prompts(defaults) if "default" in chosen.sets else None,
        questions=load_extraction_questions(questions) if {"default", "roles"} & set(chosen.sets) else None,
        attacks=load_attack_set(attacks) if "jailbreak" in chosen.sets else None)
    scripted = load_conversations(chosen.conversations) if chosen.conversations is not None else None
    spec = model_backend(model, adapters, backend)
    who = target(condition, seed, challenge)

    def measure(under_test, _, row_cache):
        runs = [project_answers(under_test, fixed, prompts, chosen, row_cache, out, who)] if prompts else []
        if scripted is not None:
            runs.append(project_drift(under_test, fixed, scripted, chosen, row_cache, out / "drift", who))
        return runs

    runs = run_on_model(measure, spec, None, cache)
    axis_info = runs[0].summary["axis"]
    console.print(f"axis {axis_info['fingerprint']} at layer {axis_info['layer']}", highlight=False)
    table = Table("metric", "group", "value", "interval", "n")
    for row in (row for run in runs for row in run.rows):
        interval = "" if row.ci_low is None else f"[{row.ci_low:.3f}, {row.ci_high:.3f}]"
        table.add_row(row.metric, escape(row.group[:60]), f"{row.value:.3f}", interval, str(row.n))
    console.print(table)
    for run in runs:
        console.print(f"results: {run.files['results']}")


def _override(settings, flags: dict):
    """``settings`` with the flags that were given; a bad value is a ConfigError naming the flag."""
    from pydantic import ValidationError

    from charlab.errors import ConfigError

    given = {key: value for key, value in flags.items() if value is not None}
    try:
        return type(settings).model_validate({**settings.model_dump(), **given})
    except ValidationError as exc:
        err = exc.errors()[0]
        raise ConfigError(f"--{err['loc'][0]}: {err['msg']}") from None
