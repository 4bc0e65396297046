"""The budget audit: what each condition really trained on, read back from its step manifests.

A budget is a promise; the audit checks it after the fact. For every condition and seed of an
experiment run it reads the manifests of the training steps (each verified against its files),
adds up examples, optimizer steps, prompt and completion tokens and FLOPs per stage and in
total, and compares each total with the reference condition's trained tokens. A condition outside
the tolerance is flagged. ``base`` trains nothing and ``adapter`` stacks were trained elsewhere, so
both are listed as not budget-matched rather than silently compared. Challenge trainings are
listed too: the same data and settings on top of every condition should cost the same.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path

from charlab.conditions.registry import kind_named
from charlab.errors import ConfigError
from charlab.store.artifacts import Run
from charlab.store.layout import EXPERIMENT_FILE, challenge_records, condition_records

COUNTED = ("examples", "optimizer_steps", "prompt_tokens", "completion_tokens", "tokens", "flops")


@dataclass
class StageCompute:
    """One training step's accounting, from its manifest."""

    stage: str
    examples: int
    optimizer_steps: int
    prompt_tokens: int
    completion_tokens: int
    tokens: int
    flops: float
    wall_seconds: float


@dataclass
class AuditRow:
    """One condition and seed: per-stage compute, total, and how it compares with the reference."""

    condition: str
    kind: str
    seed: int
    budget_matched: bool
    stages: list[StageCompute] = field(default_factory=list)
    deviation: float | None = None  # total tokens / reference tokens - 1
    flagged: bool = False
    problems: list[str] = field(default_factory=list)  # steps that do not verify

    def total(self, name: str) -> float:
        return sum(getattr(stage, name) for stage in self.stages)


@dataclass
class ChallengeRow:
    challenge: str
    condition: str
    seed: int
    compute: StageCompute | None
    problems: list[str] = field(default_factory=list)


@dataclass
class Audit:
    run: str
    reference: str | None
    reference_tokens: float | None
    tolerance: float
    target: dict  # the budget's amount: {"tokens": n} or {"steps": n, "global_batch": b}
    rows: list[AuditRow]
    challenges: list[ChallengeRow]

    @property
    def flagged(self) -> list[AuditRow]:
        return [row for row in self.rows if row.flagged or row.problems]

    def to_dict(self) -> dict:
        return asdict(self)


def _stage_compute(run: Run, relative: str, stage: str) -> tuple[StageCompute | None, list[str]]:
    _, kind, key = Path(relative).parts
    step = run.load(kind, key)
    problems = step.problems()
    if problems:
        return None, [f"{step.dir}: {p}" for p in problems]
    compute = step.manifest["extra"]["compute"]
    return StageCompute(stage, *(compute[name] for name in COUNTED), compute["wall_seconds"]), []


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: cannot be read ({exc}); rerun the experiment to rewrite it") from None


def audit_run(run_dir: str | Path, *, tolerance: float | None = None, reference: str | None = None) -> Audit:
    """Audit an experiment run folder (``charlab conditions train --out RUN``).

    ``tolerance`` and ``reference`` default to the experiment's budget settings.
    """
    run_dir = Path(run_dir)
    if not (run_dir / EXPERIMENT_FILE).is_file():
        raise ConfigError(f"{run_dir}: no {EXPERIMENT_FILE}; give the --out folder of 'charlab conditions train'")
    experiment = _read_json(run_dir / EXPERIMENT_FILE)
    budget = experiment["budget"]
    tolerance = budget["tolerance"] if tolerance is None else tolerance
    reference = reference or experiment.get("reference")
    rows = []
    for path in condition_records(run_dir):
        record = _read_json(path)
        row = AuditRow(record["name"], record["kind"], record["seed"], record["budget_matched"])
        run = Run(path.parent)
        for stage, relative in record["trained"].items():
            compute, problems = _stage_compute(run, relative, stage)
            row.problems += problems
            if compute:
                row.stages.append(compute)
        rows.append(row)
    if not rows:
        raise ConfigError(f"{run_dir}: no trained conditions yet; run 'charlab conditions train' first")
    known = {row.condition for row in rows}
    if reference is not None and reference not in known:
        raise ConfigError(f"reference '{reference}' has no trained seeds in {run_dir}; trained: "
                          f"{', '.join(sorted(known))}")
    reference_tokens = None
    if reference is not None:
        reference_tokens = statistics.fmean(row.total("tokens") for row in rows if row.condition == reference)
        for row in rows:
            if row.budget_matched and reference_tokens:
                row.deviation = row.total("tokens") / reference_tokens - 1
                row.flagged = abs(row.deviation) > tolerance
    target = {"tokens": budget["tokens"]} if budget.get("tokens") else {"steps": budget["steps"]}
    return Audit(str(run_dir), reference, reference_tokens, tolerance, target, rows, _challenge_rows(run_dir))


def _challenge_rows(run_dir: Path) -> list[ChallengeRow]:
    rows = []
    for path in challenge_records(run_dir):
        record = _read_json(path)
        compute, problems = _stage_compute(Run(path.parent), record["step"], "challenge")
        rows.append(ChallengeRow(record["challenge"], record["condition"], record["seed"], compute, problems))
    return rows



def audit_markdown(audit: Audit) -> str:
    """The audit for people: one row per condition, seed and stage, then the totals' verdict."""
    target = ", ".join(f"{k} {v:,}" for k, v in audit.target.items())
    lines = [f"# Budget audit: {audit.run}", "",
             f"Budget: {target}. Reference: {audit.reference or '(none)'}"
             + (f" ({audit.reference_tokens:,.0f} trained tokens)" if audit.reference_tokens else "")
             + f". Tolerance: ±{audit.tolerance:.0%} of the reference's trained tokens.", "",
             "| condition | kind | seed | stage | examples | steps | prompt tokens | completion tokens | tokens "
             "| FLOPs | vs reference | verdict |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in audit.rows:
        for stage in row.stages if len(row.stages) > 1 else []:
            lines.append(f"| {row.condition} | {row.kind} | {row.seed} | {stage.stage} | {stage.examples} | "
                         f"{stage.optimizer_steps} | {stage.prompt_tokens:,} | {stage.completion_tokens:,} | "
                         f"{stage.tokens:,} | {stage.flops:.3g} | | |")
        stage_name = "total" if len(row.stages) > 1 else (row.stages[0].stage if row.stages else "-")
        deviation = f"{row.deviation:+.1%}" if row.deviation is not None else ""
        lines.append(f"| {row.condition} | {row.kind} | {row.seed} | {stage_name} | {row.total('examples'):.0f} | "
                     f"{row.total('optimizer_steps'):.0f} | {row.total('prompt_tokens'):,.0f} | "
                     f"{row.total('completion_tokens'):,.0f} | {row.total('tokens'):,.0f} | "
                     f"{row.total('flops'):.3g} | {deviation} | {verdict(row)} |")
    if audit.challenges:
        lines += ["", "## Challenges", "", "| challenge | condition | seed | examples | steps | tokens | FLOPs |",
                  "|---|---|---|---|---|---|---|"]
        for c in audit.challenges:
            if c.compute is None:
                lines.append(f"| {c.challenge} | {c.condition} | {c.seed} | incomplete | | | |")
            else:
                lines.append(f"| {c.challenge} | {c.condition} | {c.seed} | {c.compute.examples} | "
                             f"{c.compute.optimizer_steps} | {c.compute.tokens:,} | {c.compute.flops:.3g} |")
    problems = [p for row in audit.rows for p in row.problems] + [p for c in audit.challenges for p in c.problems]
    if problems:
        lines += ["", "## Steps that do not verify", "", *(f"- {p}" for p in problems)]
    return "\n".join(lines) + "\n"


def verdict(row: AuditRow) -> str:
    if row.problems:
        return "INCOMPLETE"
    if not row.budget_matched:
        return "not budget-matched" if kind_named(row.kind).training == "elsewhere" else "untrained"
    if row.deviation is None:
        return "no reference"
    return "OUTSIDE TOLERANCE" if row.flagged else "ok"
