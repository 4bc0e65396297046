"""``charlab eval``: behavioural evaluations of one model under test, each writing a tidy results table.

Every eval command takes the model the same way (``--model`` + ``--adapter`` for the hf backend,
or ``--backend`` for any backend spec file) and labels its rows with ``--condition``, ``--seed``
and ``--challenge`` so results from many runs stack into one table.
"""

from __future__ import annotations

import typer

from charlab.cli import eval_capability, eval_em, eval_interp, eval_jailbreak, eval_roles

app = typer.Typer(help="Evaluate a model: emergent misalignment, jailbreaks, role adoption, trait expression, "
                  "capabilities, context sensitivity, steering dose-response.", no_args_is_help=True)


def _register() -> None:
    """Each evaluation's commands live in their own module, which adds them to the group."""
    for module in (eval_em, eval_jailbreak, eval_roles, eval_capability, eval_interp):
        module.register(app)


_register()
