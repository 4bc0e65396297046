"""``charlab eval jailbreak`` and ``charlab eval attacks``: persona-modulation jailbreaks.

``attacks`` builds and freezes an attack set once (with an attacker model, or offline from
templates); ``jailbreak`` runs one model under test against a frozen set, so every condition of a
study faces the same attacks and every result row names the set's hash.
"""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape

from charlab.cli.options import ADAPTERS, BACKEND, CHALLENGE, CONDITION, MODEL, SEED, model_backend, target

console = Console()


def register(app: typer.Typer) -> None:
    """Add ``jailbreak`` and ``attacks`` to the ``charlab eval`` group."""
    app.command("jailbreak")(jailbreak)
    app.command("attacks")(attacks)


def _categories(text: str | None) -> list[str] | None:
    return [c.strip() for c in text.split(",") if c.strip()] if text else None


def jailbreak(
    model: str | None = MODEL,
    adapters: list[str] = ADAPTERS,
    backend: Path | None = BACKEND,
    attack_set: str = typer.Option("demo", "--attacks", help="frozen attack set JSON, or 'demo' (the shipped "
                                   "mild set)"),
    judge: Path | None = typer.Option(None, "--judge", help="judge spec YAML (backend, settings); its rubric "
                                      "is replaced by --rubric"),
    rubric: str = typer.Option("harmfulness", "--rubric", help="categorical rubric with labels harmful, harmless "
                               "and refusal"),
    heuristic: bool = typer.Option(False, "--keyword-refusal", help="judge with the keyword refusal heuristic "
                                   "instead (refusal rates only, no harmful rates)"),
    out: Path = typer.Option(..., "--out", help="folder for answers, judgements, reports and results"),
    samples: int = typer.Option(1, "--samples", help="answers per prompt"),
    temperature: float = typer.Option(0.0, "--temperature", help="sampling temperature of the model under test"),
    max_new_tokens: int = typer.Option(256, "--max-new-tokens", help="cap per answer"),
    cache: Path | None = typer.Option(None, "--cache", help="row cache file (default: $CHARLAB_HOME's)"),
    condition: str = CONDITION,
    seed: int = SEED,
    challenge: str = CHALLENGE,
) -> None:
    """Ask every attack with and without its persona prompt and the benign controls; judge and score them.

    Writes answers.jsonl, judgements.jsonl, judge_report.json, attacks.json, run.json and
    results.csv/.parquet to OUT; every result row names the attack set's hash.

    Example: charlab eval jailbreak --model builtin:smollm2-135m --attacks demo --judge judges/gpt4o.yaml --out runs/jb

    Example: charlab eval jailbreak --backend vllm.yaml --attacks attacks.json --keyword-refusal --out runs/jb-kw
    """
    from charlab.datasets.attacks import load_attack_set
    from charlab.errors import ConfigError
    from charlab.evals.jailbreak import JailbreakSettings, run_jailbreak
    from charlab.judges.heuristic import KeywordRefusalJudge
    from charlab.judges.judge import Judge
    from charlab.models.factory import make_backend
    from charlab.store.cache import RowCache

    if heuristic == (judge is not None):
        raise ConfigError("give exactly one of --judge SPEC.yaml (a model judge) and --keyword-refusal")
    settings = _settings(JailbreakSettings, samples=samples, temperature=temperature,
                         max_new_tokens=max_new_tokens, seed=seed)
    spec = model_backend(model, adapters, backend)
    attacks_loaded = load_attack_set(attack_set)
    chosen = KeywordRefusalJudge() if heuristic else Judge.from_file(judge, rubric)
    under_test = make_backend(spec)
    try:
        with RowCache(cache) as row_cache:
            run = run_jailbreak(under_test, chosen, attacks_loaded, settings, target(condition, seed, challenge),
                                row_cache, out)
    finally:
        under_test.close()
        chosen.close()
    for row in run.rows:
        if not row.group:
            console.print(f"{row.metric:32} {row.value:.3f}  (n={row.n})", highlight=False)
    console.print(f"attacks: {escape(attacks_loaded.id)}\nresults: {run.files['results']}")


def _settings(model, **values):
    """Typed settings from flags; a bad value is a one-line ConfigError naming the flag."""
    from pydantic import ValidationError

    from charlab.errors import ConfigError

    try:
        return model(**values)
    except ValidationError as exc:
        err = exc.errors()[0]
        flag = "--" + str(err["loc"][0]).replace("_", "-")
        raise ConfigError(f"{flag}: {err['msg']}") from None


def attacks(
    out: Path = typer.Option(..., "--out", help="where to write the frozen attack set (JSON); its card goes "
                             "next to it"),
    attacker: Path | None = typer.Option(None, "--attacker", help="backend spec YAML of the attacker model"),
    templates: bool = typer.Option(False, "--templates", help="build offline from the taxonomy's personas and "
                                   "a system-prompt template (no model)"),
    categories: str | None = typer.Option(None, "--categories", help="comma-separated category ids (default: "
                                          "all with requests)"),
    per_category: int = typer.Option(5, "--per-category", help="misuse requests per category"),
    personas: int = typer.Option(1, "--personas", help="attacker: personas per category"),
    benign: int = typer.Option(1, "--benign", help="benign control requests per category"),
    source: str | None = typer.Option(None, "--from", help="behaviour set: a local .csv/.json/.jsonl file or a "
                                      "Hugging Face dataset name[:config]"),
    fmt: str | None = typer.Option(None, "--format", help="format of --from: harmbench, jailbreakbench, "
                                   "strongreject or advbench"),
    split: str | None = typer.Option(None, "--split", help="dataset split for a hub dataset"),
    taxonomy: Path | None = typer.Option(None, "--taxonomy", help="harm taxonomy YAML (default: the shipped one)"),
    name: str | None = typer.Option(None, "--name", help="attack set name (default: the --out file's stem)"),
    cache: Path | None = typer.Option(None, "--cache", help="row cache file (default: $CHARLAB_HOME's)"),
    seed: int = typer.Option(0, "--seed", help="attacker sampling seed"),
) -> None:
    """Build a persona-modulation attack set and freeze it: its content hash becomes its identity.

    With --attacker, an attacker model writes requests, personas and system prompts (requests come
    from --from instead when given); with --templates nothing is generated. Rerunning reads every
    attacker output from the row cache and writes the same set.

    Example: charlab eval attacks --templates --categories petty-rule-breaking,forged-notes --out mild.json

    Example: charlab eval attacks --attacker attacker.yaml --from harmbench.csv --format harmbench --out hb.json
    """
    from charlab.configfile import load_model
    from charlab.datasets.attacks import (
        AttackerSettings,
        build_attacks,
        load_behaviors,
        load_taxonomy,
        template_attacks,
        write_attack_files,
    )
    from charlab.errors import ConfigError
    from charlab.models.factory import BackendSpec, make_backend
    from charlab.store.cache import RowCache

    if templates == (attacker is not None):
        raise ConfigError("give exactly one of --attacker SPEC.yaml and --templates")
    if (source is None) != (fmt is None):
        raise ConfigError("--from and --format go together, e.g. --from behaviors.csv --format harmbench")
    if out.suffix != ".json":
        raise ConfigError(f"--out {out}: an attack set is a .json file")
    tax = load_taxonomy(taxonomy)
    behaviors, report = load_behaviors(source, fmt, taxonomy=tax, split=split) if source else (None, None)
    label = name or out.stem
    where = f"{source} ({fmt})" if source else "taxonomy examples"
    if templates:
        built, card = template_attacks(tax, per_category=per_category, categories=_categories(categories),
                                       behaviors=behaviors, benign_per_category=benign, name=label, source=where)
    else:
        settings = _settings(AttackerSettings, per_category=per_category, personas_per_category=personas,
                             benign_per_category=benign, seed=seed)
        backend = make_backend(load_model(BackendSpec, attacker))
        try:
            with RowCache(cache) as row_cache:
                built, card = build_attacks(backend, row_cache, tax, settings, categories=_categories(categories),
                                            behaviors=behaviors, name=label, source=where)
        finally:
            backend.close()
    if report is not None:
        card.tables["behaviour set"] = [report.to_dict()]
    write_attack_files(out, built, card)
    harmful, controls = len(built.harmful), len(built.controls)
    console.print(f"{escape(built.id)}: {harmful} attacks, {controls} benign controls, "
                  f"{built.built.get('unparseable', 0)} unparseable attacker outputs\nwrote {out}", highlight=False)
