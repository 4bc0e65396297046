"""``charlab train``: the character-training recipe, whole or one stage at a time."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

app = typer.Typer(help="Character training: prompts, distill, pairs, dpo, introspect, sft, or all of them.",
                  no_args_is_help=True)
console = Console()

MODEL = typer.Option("builtin:smollm2-135m", "--model", "-m", help="base model reference")
ADAPTERS = typer.Option([], "--adapter", "-a", help="adapter to stack under the new one; repeat to stack more")
CONSTITUTION = typer.Option(..., "--constitution", "-c", help="shipped name or path (YAML, OCT .txt or .jsonl)")
CONFIG = typer.Option("upstream", "--config", help="recipe profile (upstream, demo) or a YAML file")
OUT = typer.Option(..., "--out", "-o", help="run folder; rerunning the same command resumes it")
SEED = typer.Option(0, "--seed", help="seed for sampling, LoRA init and data order")
CACHE = typer.Option(None, "--cache", help="row cache file (default: $CHARLAB_HOME/cache.sqlite)")


def _run_until(stage: str, model: str, adapters: list[str], constitution: str, config: str, out: Path,
               seed: int, cache: Path | None) -> None:
    from charlab.models.refs import ModelRef
    from charlab.pipeline.character import load_character_config, train_character

    result = train_character(ModelRef.parse(model, adapters), constitution, load_character_config(config), out,
                             cache_path=cache, seed=seed, until=stage)
    table = Table("stage", "state", "outputs", "counts", title=f"run {out}")
    for name, step in result.steps.items():
        manifest = step.manifest or {}
        counts = ", ".join(f"{k}={v}" for k, v in manifest.get("counts", {}).items())
        table.add_row(name, step.state, str(step.dir), counts)
    console.print(table)
    if stage == "sft":
        console.print(f"character model: {result.model}\n(written to {out / 'character.json'})")


@app.command("character")
def character(model: str = MODEL, adapter: list[str] = ADAPTERS, constitution: str = CONSTITUTION,
              config: str = CONFIG, out: Path = OUT, seed: int = SEED, cache: Path | None = CACHE) -> None:
    """The whole recipe: prompts -> distill -> pairs -> DPO -> introspection -> SFT.

    Example: charlab train character --model builtin:smollm2-135m --constitution integrity --config demo \\
        --out runs/integrity
    """
    _run_until("sft", model, adapter, constitution, config, out, seed, cache)


def _stage_command(stage: str, summary: str):
    def command(model: str = MODEL, adapter: list[str] = ADAPTERS, constitution: str = CONSTITUTION,
                config: str = CONFIG, out: Path = OUT, seed: int = SEED, cache: Path | None = CACHE) -> None:
        _run_until(stage, model, adapter, constitution, config, out, seed, cache)

    command.__doc__ = (f"{summary} Earlier stages run first if their outputs are missing.\n\n"
                       f"Example: charlab train {stage} --constitution integrity --config demo --out runs/integrity")
    return command


app.command("prompts")(_stage_command("prompts",
                                      "The prompt pool: the constitution's questions, expanded if configured."))
app.command("distill")(_stage_command("distill",
                                      "Teacher (with constitution) and student (without) answer every prompt."))
app.command("pairs")(_stage_command("pairs", "Preference pairs: chosen = teacher, rejected = student, filtered."))
app.command("introspect")(_stage_command("introspect", "Self-reflection and self-interaction data from the DPO model."))


@app.command("dpo")
def dpo(model: str = MODEL, adapter: list[str] = ADAPTERS,
        data: Path = typer.Option(..., "--data", help="preference pairs JSONL (prompt / chosen / rejected)"),
        config: str = typer.Option("upstream", "--config", help="training profile (upstream, demo) or YAML file"),
        out: Path = typer.Option(..., "--out", "-o", help="adapter folder to write"), seed: int = SEED) -> None:
    """Train a DPO LoRA on a pairs file, on top of the model's frozen adapters; resumes if killed.

    Example: charlab train dpo --data runs/integrity/steps/pairs/<key>/pairs.jsonl --config demo --out adapters/dpo
    """
    from charlab.models.refs import ModelRef
    from charlab.training.dpo import train_dpo

    result = train_dpo(ModelRef.parse(model, adapter), data, out, config, seed=seed)
    console.print_json(data=result.compute.to_dict())


@app.command("sft")
def sft(model: str = MODEL, adapter: list[str] = ADAPTERS,
        data: Path = typer.Option(..., "--data", help="SFT JSONL ({'messages': [...]}); loss on assistant turns"),
        config: str = typer.Option("upstream", "--config", help="training profile (upstream, demo) or YAML file"),
        out: Path = typer.Option(..., "--out", "-o", help="adapter folder to write"), seed: int = SEED) -> None:
    """Train an SFT LoRA on a conversations file, on top of the model's frozen adapters; resumes if killed.

    Example: charlab train sft --adapter adapters/dpo --data sft.jsonl --config demo --out adapters/sft
    """
    from charlab.models.refs import ModelRef
    from charlab.training.sft import train_sft

    result = train_sft(ModelRef.parse(model, adapter), data, out, config, seed=seed)
    console.print_json(data=result.compute.to_dict())


@app.command("compose")
def compose(adapter: list[str] = typer.Argument(..., help="adapter folders, bottom of the stack first"),
            out: Path = typer.Option(..., "--out", "-o", help="folder for the single composed adapter")) -> None:
    """Compose a LoRA stack into one adapter exactly (ranks concatenated: W + B1A1 + B2A2).

    Example: charlab train compose adapters/dpo adapters/sft --out adapters/character
    """
    from charlab.training.compose import compose_adapters

    console.print(f"composed adapter: {compose_adapters(adapter, out)}")
