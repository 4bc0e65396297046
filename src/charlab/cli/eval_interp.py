"""``charlab eval context`` and ``charlab eval steer-sweep``: the two evaluations that look inside the model.

Both need activations, so the model under test runs on the hf backend (``--model`` and
``--adapter``); ``context`` also runs through ``--backend`` (an API), with the behavioural
metrics only. Both take the judge's backend from a judge spec (``--judge``) and pick their own
rubrics; an axis comes from ``charlab axis build`` or any ``[layers, hidden]`` tensor file.
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
    model_backend,
    print_rows,
    run_on_model,
    settings_from,
    target,
)

AXIS = typer.Option(None, "--axis", help="axis folder (charlab axis build --out) or a [layers, hidden] "
                    ".safetensors/.pt tensor")
AXIS_LAYERS = typer.Option(None, "--axis-layers", help="comma-separated layer numbers of an external tensor's "
                           "rows (default 0..L-1)")


def register(app: typer.Typer) -> None:
    app.command("context")(context)
    app.command("steer-sweep")(steer_sweep)


def _axis(path: Path | None, layers: str | None):
    from charlab.errors import ConfigError
    from charlab.interp.axis import load_axis

    if path is None:
        return None
    try:
        numbers = [int(x) for x in layers.split(",")] if layers else None
    except ValueError:
        raise ConfigError(f"--axis-layers {layers!r}: give comma-separated layer numbers, e.g. 0,1,2") from None
    return load_axis(path, numbers)


def _judge_spec(path: Path | None):
    from charlab.configfile import load_model
    from charlab.judges.judge import JudgeSpec

    return load_model(JudgeSpec, path) if path is not None else None


def context(
    out: Path = OUT,
    judge: Path | None = typer.Option(None, "--judge", help="judge spec YAML; its backend labels each answer's "
                                      "mode with the response_mode rubric (without it: activation metrics only)"),
    axis: Path | None = AXIS,
    axis_layers: str | None = AXIS_LAYERS,
    suite: Path | None = typer.Option(None, "--suite", help="situation suite YAML (default: the shipped one)"),
    settings: Path | None = SETTINGS,
    cache: Path | None = CACHE,
    model: str | None = MODEL,
    adapters: list[str] = ADAPTERS,
    backend: Path | None = BACKEND,
    condition: str = CONDITION,
    seed: int = SEED,
    challenge: str = CHALLENGE,
) -> None:
    """Context sensitivity: probe accuracy and variance ratio (activations), mode NMI and expected-mode rate
    (judge), and their invariance across paraphrases and persona prompts, side by side in context.md.

    Example: charlab eval context -m builtin:smollm2-135m --judge judge.yaml --axis axis/base --out ctx/base
    """
    from charlab.evals.context import ContextSettings, run_context
    from charlab.evals.situations import load_situations
    from charlab.judges.judge import Judge
    from charlab.judges.rubrics import load_rubric

    chosen = settings_from(ContextSettings, settings, seed)
    situations, fixed_axis = load_situations(suite), _axis(axis, axis_layers)
    spec = _judge_spec(judge)
    mode_judge = Judge(spec.backend, load_rubric("response_mode"), spec.settings) if spec else None
    who = target(condition, seed, challenge)
    result = run_on_model(lambda b, j, c: run_context(b, j, situations, chosen, who, c, out, axis=fixed_axis),
                  model_backend(model, adapters, backend), mode_judge, cache)
    print_rows(result.rows, result.report, out)
    typer.echo(f"summary: {out / 'context.md'}")


def steer_sweep(
    out: Path = OUT,
    axis: Path = typer.Option(..., "--axis", help="axis folder or [layers, hidden] tensor; computed once on the "
                              "base model and shared by every condition"),
    axis_layers: str | None = AXIS_LAYERS,
    judge: Path = typer.Option(..., "--judge", help="judge spec YAML; its backend reads persona identity, "
                               "harmfulness and coherence (its rubric field is not used)"),
    coefficients: str | None = typer.Option(None, "--coefficients", help="comma-separated grid, e.g. 0,0.5,1,2 "
                                            "(units of the layer's mean residual norm); overrides the settings"),
    attacks: str = typer.Option("demo", "--attacks", help="attack set whose requests (without personas) measure "
                                "the harmful rate: 'demo' or a frozen set file"),
    question_set: str = typer.Option("neutral_questions", "--questions", help="shipped question set or a file"),
    settings: Path | None = SETTINGS,
    cache: Path | None = CACHE,
    model: str = typer.Option(..., "--model", "-m", help="base model reference (hf backend: steering needs hooks)"),
    adapters: list[str] = ADAPTERS,
    condition: str = CONDITION,
    seed: int = SEED,
    challenge: str = CHALLENGE,
) -> None:
    """Steer away from the assistant over a coefficient grid: persona departure, harmful rate and coherence at
    each step, and the flip coefficient with an interval (the hardening score).

    Example: charlab eval steer-sweep -m builtin:smollm2-135m -a sft --axis axis/base --judge judge.yaml --out sweep/sft
    """
    from charlab.datasets.attacks import load_attack_set
    from charlab.errors import ConfigError
    from charlab.evals.roles import load_questions
    from charlab.evals.steer_sweep import SteerSweepSettings, run_steer_sweep
    from charlab.models.factory import make_backend

    try:
        grid = [float(x) for x in coefficients.split(",")] if coefficients else None
    except ValueError:
        raise ConfigError(f"--coefficients {coefficients!r}: give comma-separated numbers, e.g. 0,0.5,1,2") from None
    spec = _judge_spec(judge)
    chosen = settings_from(SteerSweepSettings, settings, seed, coefficients=grid, judge=spec.settings)
    fixed_axis, questions, attack_set = _axis(axis, axis_layers), load_questions(question_set), load_attack_set(attacks)
    who = target(condition, seed, challenge)

    def evaluate(backend, _, row_cache):
        judge_backend = make_backend(spec.backend)
        try:
            return run_steer_sweep(backend, fixed_axis, judge_backend, questions, attack_set, chosen, who, row_cache,
                                   out)
        finally:
            judge_backend.close()

    result = run_on_model(evaluate, model_backend(model, adapters, None), None, cache)
    print_rows(result.rows, result.report, out)
    typer.echo(f"hardening score: {result.hardening.value:.3f} [{result.hardening.low:.3f}, "
               f"{result.hardening.high:.3f}]; curves: {out / 'sweep.json'}")
