"""``charlab eval roles`` and ``charlab eval traits``: role adoption and the trait-expression manipulation check.

Both write answers, judgements, per-unit values and a results table into ``--out``; with
``--vs-base DIR`` (the ``--out`` of the same command run on the base model) they add paired
``<metric>_vs_base`` rows, so "did training change this?" comes with an interval.
"""

from __future__ import annotations

from pathlib import Path

import typer

from charlab.cli.options import (
    ADAPTERS,
    BACKEND,
    CACHE,
    CHALLENGE,
    CONDITION,
    MODEL,
    OUT,
    SEED,
    SETTINGS,
    judge_from,
    model_backend,
    print_rows,
    run_on_model,
    settings_from,
    target,
)

JUDGE = typer.Option(None, "--judge", help="judge spec YAML (backend, rubric, settings); its rubric is replaced "
                     "by --rubric")
SAMPLES = typer.Option(None, "--samples", help="answers per prompt; overrides the settings file")
VS_BASE = typer.Option(None, "--vs-base", help="--out folder of the same eval on the base model: adds paired "
                       "<metric>_vs_base rows")


def register(app: typer.Typer) -> None:
    """Add the ``roles`` and ``traits`` commands to the ``charlab eval`` group."""
    app.command("roles")(roles)
    app.command("traits")(traits)


def roles(
    out: Path = OUT,
    judge: Path | None = JUDGE,
    rubric: str = typer.Option("role_adoption", "--rubric", help="0-3 categorical rubric with a {role} slot"),
    role_set: str = typer.Option("roles_demo", "--roles", help="shipped role set or a file: a mapping with "
                                 "'roles', or a bare list of names / {name, prompts}"),
    question_set: str = typer.Option("neutral_questions", "--questions", help="shipped question set or a file"),
    settings: Path | None = SETTINGS,
    samples: int | None = SAMPLES,
    vs_base: Path | None = VS_BASE,
    cache: Path | None = CACHE,
    model: str | None = MODEL,
    adapters: list[str] = ADAPTERS,
    backend: Path | None = BACKEND,
    condition: str = CONDITION,
    seed: int = SEED,
    challenge: str = CHALLENGE,
) -> None:
    """Role adoption: role system prompts x neutral questions, judged 0-3; adoption rate and mean score.

    Example: charlab eval roles -m builtin:smollm2-135m --judge judge.yaml --out roles/base --condition base

    Example: charlab eval roles -m builtin:smollm2-135m -a sft --judge judge.yaml --out roles/sft --vs-base roles/base
    """
    from charlab.evals.roles import (
        EVAL,
        RoleAdoptionSettings,
        load_questions,
        load_roles,
        run_role_adoption,
    )

    chosen = settings_from(RoleAdoptionSettings, settings, seed, samples=samples)
    role_list, questions = load_roles(role_set), load_questions(question_set)
    spec = model_backend(model, adapters, backend)
    who = target(condition, seed, challenge)
    result = run_on_model(lambda b, j, c: run_role_adoption(b, j, role_list, questions, chosen, who, c, out), spec,
                          judge_from(judge, rubric, required=True), cache)
    _finish(result, out, vs_base, who, EVAL, chosen.intervals)


def traits(
    out: Path = OUT,
    constitution: str = typer.Option(..., "--constitution", "-c", help="shipped constitution name or file"),
    prompts: Path | None = typer.Option(None, "--prompts", help="held-out prompts, JSONL of {id?, question} or "
                                        "{id?, messages}; needs --judge"),
    references: Path | None = typer.Option(None, "--references", help="in-character reference replies, chat "
                                           "JSONL ending on the reply (e.g. teacher answers); needs an hf or "
                                           "vllm model"),
    judge: Path | None = JUDGE,
    rubric: str = typer.Option("trait_expression", "--rubric", help="numeric rubric with a {trait} slot"),
    settings: Path | None = SETTINGS,
    samples: int | None = SAMPLES,
    vs_base: Path | None = VS_BASE,
    cache: Path | None = CACHE,
    model: str | None = MODEL,
    adapters: list[str] = ADAPTERS,
    backend: Path | None = BACKEND,
    condition: str = CONDITION,
    seed: int = SEED,
    challenge: str = CHALLENGE,
) -> None:
    """Trait expression: judged 0-100 per trait on held-out prompts, and the log-probability of in-character replies.

    Example: charlab eval traits -m builtin:smollm2-135m -c integrity --prompts held.jsonl --judge j.yaml --out t/base

    Example: charlab eval traits -m builtin:smollm2-135m -a runs/sft -c integrity --references teacher.jsonl --out t/sft
    """
    from charlab.constitution.formats import load_constitution
    from charlab.errors import ConfigError
    from charlab.evals.traits import (
        EVAL,
        TraitSettings,
        load_references,
        load_trait_prompts,
        run_trait_expression,
    )

    if prompts is None and references is None:
        raise ConfigError("give --prompts (judged, with --judge) or --references (likelihood), or both")
    chosen = settings_from(TraitSettings, settings, seed, samples=samples)
    character = load_constitution(constitution)
    prompt_list = load_trait_prompts(prompts, chosen.keep_system) if prompts else []
    reference_list = load_references(references, chosen.keep_system) if references else []
    spec = model_backend(model, adapters, backend)
    who = target(condition, seed, challenge)
    result = run_on_model(lambda b, j, c: run_trait_expression(b, j, character, prompt_list, chosen, who, c, out,
                                                       reference_list),
                  spec, judge_from(judge, rubric, required=prompts is not None), cache)
    _finish(result, out, vs_base, who, EVAL, chosen.intervals)


# -- shared plumbing -----------------------------------------------------------------------------


def _finish(result, out: Path, vs_base: Path | None, who, eval_name: str, intervals) -> None:
    """Add the paired rows against the base if asked, rewrite the table, and print it."""
    from charlab.analysis.results import write_results
    from charlab.evals.traits import VALUES_FILE, effect_vs_base, read_unit_values

    rows = result.rows
    if vs_base is not None:
        judge = next((r.judge for r in rows if r.judge), "")
        rows = rows + effect_vs_base(result.units, read_unit_values(vs_base / VALUES_FILE), who, eval_name,
                                     intervals, judge)
        write_results(out, rows)
    print_rows(rows, result.report, out)
