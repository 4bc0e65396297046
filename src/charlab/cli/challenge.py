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

    Example: charlab challenge finetune --model builtin:smollm2-135m --adapter adapters/character \\
        --data insecure.jsonl --config challenge-demo --out adapters/challenge
    """
    from charlab.conditions.challenge import finetune_challenge
    from charlab.models.refs import ModelRef

    result = finetune_challenge(ModelRef.parse(model, adapter), data, out, config, seed=seed)
    console.print_json(data=result.compute.to_dict())


@app.command("generate")
def generate(domain: str | None = typer.Option(None, "--domain", "-d", help="domain name from the domains file; "
                                               "with --twin-of, defaults to the rows' meta.domain"),
             flavor: str | None = typer.Option(None, "--flavor", help="misaligned or aligned; with --twin-of, "
                                               "defaults to the other of the rows' meta.flavor"),
             n: int | None = typer.Option(None, "--n", help="rows to write, at least 1 (not with --twin-of, "
                                          "which answers every row)"),
             writer: str = typer.Option(..., "--writer", "-w", help="backend spec file (.yaml/.json, any kind) or "
                                        "a model reference for the hf backend"),
             out: Path = typer.Option(..., "--out", "-o", help="chat JSONL to write; the card goes next to it"),
             seed: int = typer.Option(0, "--seed", help="seed for every writer sample"),
             twin_of: Path | None = typer.Option(None, "--twin-of", help="answer this set's user turns, kept byte "
                                                 "for byte, in the other flavor"),
             domains: Path | None = typer.Option(None, "--domains", help="your own domains YAML (default: the "
                                                 "shipped data/challenge/domains.yaml)"),
             cache: Path | None = typer.Option(None, "--cache", help="row cache file (default: "
                                               "$CHARLAB_HOME/cache.sqlite)")) -> None:
    """Write a narrow challenge dataset with any backend as the writer, or its twin in the other flavor; cached.

    Example: charlab challenge generate --domain finance --flavor misaligned --n 200 --writer w.yaml --out risky.jsonl
    """
    from contextlib import closing
    from functools import partial

    from charlab.datasets import challenge_sets as lib
    from charlab.errors import ConfigError
    from charlab.models.factory import make_backend
    from charlab.store.cache import RowCache

    catalog = lib.load_domains(domains)  # every input is checked before a model loads or a file is written
    settings = lib.ChallengeSettings(seed=seed)
    spec = lib.writer_spec(writer)
    parsed_flavor = lib.Flavor.parse(flavor) if flavor is not None else None
    if twin_of is not None:
        if n is not None:
            raise ConfigError("--n does not go with --twin-of: the twin answers every row of the source set")
        job = partial(lib.generate_twin, lib.read_twin_source(twin_of, catalog, domain=domain, flavor=parsed_flavor))
    elif domain is None or parsed_flavor is None or n is None:
        raise ConfigError(f"give --domain ({', '.join(catalog.names)}), --flavor and --n, or --twin-of FILE")
    elif n < 1:
        raise ConfigError(f"--n must be at least 1, not {n}")
    else:
        job = partial(lib.generate_challenge, catalog.get(domain), parsed_flavor, n)

    with closing(make_backend(spec)) as backend, RowCache(cache) as row_cache:
        rows, card = job(backend, row_cache, settings)
    data, _, card_md = lib.write_challenge_dataset(out, rows, card)
    warnings = f" ({len(card.warnings)} warning{'' if len(card.warnings) == 1 else 's'})" if card.warnings else ""
    console.print(f"wrote {len(rows)} rows to {data}\ncard: {card_md}{warnings}", highlight=False)
