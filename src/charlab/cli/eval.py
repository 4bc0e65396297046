"""``charlab eval``: behavioural evaluations of one model under test, each writing a tidy results table.

Every eval command takes the model the same way (``--model`` + ``--adapter`` for the hf backend,
or ``--backend`` for any backend spec file) and labels its rows with ``--condition``, ``--seed``
and ``--challenge`` so results from many runs stack into one table.
"""

from __future__ import annotations

from pathlib import Path

import typer

app = typer.Typer(help="Evaluate a model: emergent misalignment, jailbreaks, role adoption, trait expression, "
                  "capabilities.", no_args_is_help=True)

MODEL = typer.Option(None, "--model", "-m", help="base model reference for the hf backend")
ADAPTERS = typer.Option([], "--adapter", "-a", help="adapter on top of --model; repeat to stack, bottom first")
BACKEND = typer.Option(None, "--backend", help="backend spec file (YAML/JSON) instead of --model, e.g. a vLLM "
                       "server through the openai backend")
CONDITION = typer.Option("model", "--condition", help="condition label for the results rows")
SEED = typer.Option(0, "--seed", help="the condition's training seed (a label) and the sampling seed")
CHALLENGE = typer.Option("", "--challenge", help="challenge label for the results rows (empty: none)")


def model_backend(model: str | None, adapters: list[str], backend: Path | None):
    """The ``BackendSpec`` of the model under test from the shared options; a clear error if neither is given."""
    from charlab.config import load_model
    from charlab.errors import ConfigError
    from charlab.models.factory import BackendSpec
    from charlab.models.refs import ModelRef

    if (model is None) == (backend is None):
        raise ConfigError("give the model under test as --model REF [--adapter A ...] or as --backend SPEC.yaml")
    if backend is not None:
        if adapters:
            raise ConfigError("--adapter goes with --model; put adapters in the backend spec's model instead")
        return load_model(BackendSpec, backend)
    return BackendSpec(model=ModelRef.parse(model, adapters))


def target(condition: str, seed: int, challenge: str):
    from charlab.evals.results import EvalTarget

    return EvalTarget(condition=condition, seed=seed, challenge=challenge)


def _register() -> None:
    """Each evaluation's commands live in their own module; they import the options above, hence last."""
    from charlab.cli import eval_capability, eval_em, eval_jailbreak, eval_roles

    for module in (eval_em, eval_jailbreak, eval_roles, eval_capability):
        module.register(app)


_register()
