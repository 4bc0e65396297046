"""``charlab challenge``: the narrow fine-tune stacked on a condition model to measure its inertia."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console

app = typer.Typer(help="The narrow fine-tuning challenge on top of a condition model.", no_args_is_help=True)
console = Console()


@app.callback()
def challenge() -> None:
    """Keeps ``finetune`` a sub-command: a group with one command would otherwise become that command."""


@app.command("finetune")
def finetune(model: str = typer.Option(..., "--model", "-m", help="base model reference of the condition"),
             adapter: list[str] = typer.Option([], "--adapter", "-a", help="condition adapter, kept frozen; "
                                               "repeat to stack more, bottom first"),
             data: Path = typer.Option(..., "--data", help="chat JSONL ({'messages': [...]}); loss on assistant "
                                       "turns"),
             config: str = typer.Option("challenge", "--config", help="training profile (challenge, "
                                        "challenge-demo) or YAML file"),
             out: Path = typer.Option(..., "--out", "-o", help="folder for the challenge adapter"),
             seed: int = typer.Option(0, "--seed", help="seed for LoRA init and data order")) -> None:
    """Train the challenge LoRA on a chat dataset, stacked on the condition's frozen adapters; resumes if killed.

    Example: charlab challenge finetune --model builtin:smollm2-135m --adapter adapters/character --data insecure.jsonl --config challenge-demo --out adapters/challenge
    """
    from charlab.challenge import finetune_challenge
    from charlab.models.refs import ModelRef

    result = finetune_challenge(ModelRef.parse(model, adapter), data, out, config, seed=seed)
    console.print_json(data=result.compute.to_dict())
