"""Everything a report reads from a run folder, gathered and checked before anything is written.

The results table is required: ``RUN/results.csv`` when the run has one (its combined table),
otherwise every ``results.csv`` below RUN, identical rows kept once. A run with no results at
all, or a table that cannot be read, is a ``ConfigError``. Everything else is optional and read
leniently: ``experiment.json``, the ``condition.json`` and ``challenge.json`` records,
``budget_audit.json``, and wherever they lie below RUN, ``projections.jsonl`` (axis projections of
answers), ``sweep.json`` (steering curves) and ``persona_space.json`` (axis PCA). An optional file
that cannot be read becomes a note in the report instead of stopping it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from charlab.analysis.groups import GROUPS, Group
from charlab.analysis.results import ResultRow, read_results
from charlab.conditions.registry import record_group
from charlab.errors import ConfigError
from charlab.io import iter_jsonl, sha256_file
from charlab.store.layout import (
    AUDIT_JSON,
    EXPERIMENT_FILE,
    RESULTS_FILE,
    challenge_records,
    condition_records,
)

if TYPE_CHECKING:
    from charlab.report.audit import Audit



@dataclass(frozen=True)
class ProjectionSet:
    """Axis projections of one prompt set's answers, from one ``projections.jsonl``."""

    label: str  # whose answers: the condition (and challenge) of the rows beside the file, else its folder
    set: str
    values: tuple[float, ...]


@dataclass(frozen=True)
class SweepFile:
    """Steering curves from one ``sweep.json``: each metric's rate at each coefficient (None: unreadable)."""

    label: str
    coefficients: tuple[float, ...]
    curves: dict[str, tuple[float | None, ...]]


@dataclass(frozen=True)
class PersonaSpace:
    """One ``persona_space.json``: per layer, each principal component's share of role-vector variance."""

    label: str
    layers: tuple[int, ...]
    explained: tuple[tuple[float, ...], ...]
    axis_pc1_cosine: tuple[float, ...]
    roles: int


@dataclass(frozen=True)
class RunData:
    """A run folder as the report sees it."""

    run_dir: Path
    rows: tuple[ResultRow, ...]
    sources: tuple[Path, ...]
    groups: dict[str, str]
    conditions: tuple[dict, ...]  # every condition.json, in path order
    challenges: tuple[dict, ...]  # every challenge.json, in path order
    experiment: dict | None
    experiment_sha256: str | None
    audit: Audit | None
    projections: tuple[ProjectionSet, ...]
    sweeps: tuple[SweepFile, ...]
    spaces: tuple[PersonaSpace, ...]
    notes: tuple[str, ...]


def _inside(path: Path, folder: Path | None) -> bool:
    return folder is not None and path.resolve().is_relative_to(folder.resolve())


def _read_table(path: Path) -> list[ResultRow]:
    try:
        return read_results(path)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"{path}: not a readable charlab results table ({exc}); rewrite it with the evaluation "
                          "that made it, or move it out of the run") from None


def _row_key(row: ResultRow) -> tuple[str, ...]:
    """Identity of a row; repr keeps nan equal to nan, which == would not."""
    return tuple(repr(v) for v in row.model_dump().values())


def collect_rows(run_dir: Path, skip: Path | None = None) -> tuple[list[ResultRow], list[Path]]:
    """The run's result rows and the tables they came from (``skip``: a folder to leave out, the report's own)."""
    combined = run_dir / RESULTS_FILE
    paths = [combined] if combined.is_file() else sorted(p for p in run_dir.rglob(RESULTS_FILE) if not _inside(p, skip))
    if not paths:
        raise ConfigError(f"{run_dir}: no {RESULTS_FILE} in it or below it; run the evaluations into this run folder "
                          "first (e.g. charlab demo --out RUN, or charlab eval ... --out RUN/evals/NAME)")
    rows, seen = [], set()
    for path in paths:
        for row in _read_table(path):
            key = _row_key(row)
            if key not in seen:
                seen.add(key)
                rows.append(row)
    if not rows:
        raise ConfigError(f"{run_dir}: the results tables hold no rows ({', '.join(map(str, paths[:3]))}); "
                          "rerun the evaluations")
    return rows, paths


def _json(path: Path, notes: list[str]) -> dict | None:
    """A JSON object from an optional file, or None with a note."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        notes.append(f"{path}: cannot be read ({exc}); left out of the report")
        return None
    if not isinstance(data, dict):
        notes.append(f"{path}: not a JSON object; left out of the report")
        return None
    return data


def _files(run_dir: Path, name: str, skip: Path | None) -> Iterator[Path]:
    yield from (p for p in sorted(run_dir.rglob(name)) if not _inside(p, skip))


def _label(folder: Path, run_dir: Path) -> str:
    """Whose file this is: the single condition (and challenge) of a results table beside it, else its folder."""
    try:
        targets = {(r.condition, r.challenge) for r in read_results(folder / RESULTS_FILE)}
    except (OSError, ValueError, KeyError, TypeError):
        targets = set()
    if len(targets) == 1:
        condition, challenge = targets.pop()
        return f"{condition} after {challenge}" if challenge else condition
    return folder.relative_to(run_dir).as_posix() if folder != run_dir else run_dir.name


def _projections(path: Path, run_dir: Path, notes: list[str]) -> list[ProjectionSet]:
    """Per prompt set, the projected answers; per-turn drift files (no ``set``) are not distributions."""
    by_set: dict[str, list[float]] = {}
    try:
        for _, record in iter_jsonl(path, finite=False):  # charlab's own projections
            if isinstance(record, dict) and "set" in record and isinstance(record.get("value"), int | float):
                by_set.setdefault(str(record["set"]), []).append(float(record["value"]))
    except ConfigError as exc:
        notes.append(f"{exc}; its projections are left out")
        return []
    label = _label(path.parent, run_dir)
    return [ProjectionSet(label, name, tuple(values)) for name, values in by_set.items()]


def _number(value: object) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _sweep(path: Path, run_dir: Path, notes: list[str]) -> SweepFile | None:
    data = _json(path, notes)
    if data is None:
        return None
    try:
        coefficients = tuple(float(c) for c in data["settings"]["coefficients"])
        curves = {str(k): tuple(_number(v) for v in values) for k, values in data["curves"].items()}
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        notes.append(f"{path}: not a steering sweep record (missing {exc}); left out")
        return None
    return SweepFile(_label(path.parent, run_dir), coefficients, curves)


def _space(path: Path, run_dir: Path, notes: list[str]) -> PersonaSpace | None:
    data = _json(path, notes)
    if data is None:
        return None
    try:
        layers = tuple(int(x) for x in data["layers"])
        explained = tuple(tuple(float(v) for v in row) for row in data["explained"])
        cosine = tuple(float(v) for v in data.get("axis_pc1_cosine", ()))
        roles = len(data.get("roles", ()))
    except (KeyError, TypeError, ValueError) as exc:
        notes.append(f"{path}: not a persona-space record ({exc}); left out")
        return None
    if len(explained) != len(layers):
        notes.append(f"{path}: {len(layers)} layers but {len(explained)} rows of explained variance; left out")
        return None
    return PersonaSpace(_label(path.parent, run_dir), layers, explained, cosine, roles)


def _audit(path: Path, notes: list[str]) -> Audit | None:
    """``budget_audit.json`` back into the audit's own types, so its Markdown is the audit's own."""
    data = _json(path, notes) if path.is_file() else None
    if data is None:
        return None
    from charlab.report.audit import Audit, AuditRow, ChallengeRow, StageCompute

    try:
        rows = [AuditRow(r["condition"], r["kind"], r["seed"], r["budget_matched"],
                         [StageCompute(**s) for s in r["stages"]], r["deviation"], r["flagged"], r["problems"])
                for r in data["rows"]]
        challenges = [ChallengeRow(c["challenge"], c["condition"], c["seed"],
                                   StageCompute(**c["compute"]) if c["compute"] else None, c["problems"])
                      for c in data["challenges"]]
        return Audit(data["run"], data["reference"], data["reference_tokens"], data["tolerance"], data["target"],
                     rows, challenges)
    except (KeyError, TypeError) as exc:
        notes.append(f"{path}: not a budget audit record ({exc}); rerun 'charlab budget audit RUN' to rewrite it")
        return None


def _record(path: Path) -> object:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: cannot be read ({exc}); rerun the experiment to rewrite it") from None


def _records(paths: list[Path]) -> list[dict]:
    return [record for path in paths if isinstance(record := _record(path), dict)]


def condition_groups(run_dir: str | Path, overrides: Mapping[str, str] | None = None) -> dict[str, Group]:
    """Each trained condition's group, as its kind says (``charlab.conditions.registry``).

    Read from the run's ``condition.json`` records; the first seed's record speaks for the
    condition. ``overrides`` (name -> group) win, and may name conditions that have no record or
    whose kind is not registered here.
    """
    overrides = overrides or {}
    groups: dict[str, Group] = {}
    for path in condition_records(Path(run_dir)):
        record = _record(path)
        if not isinstance(record, dict):
            raise ConfigError(f"{path}: expected a JSON object; rerun the experiment to rewrite it")
        name = str(record.get("name") or path.parent.parent.name)
        if name not in groups:  # an overridden one keeps its place; its override is checked and set below
            groups[name] = overrides[name] if name in overrides else record_group(record, path)  # type: ignore
    for name, group in overrides.items():
        if group not in GROUPS:
            raise ConfigError(f"group override {name}={group}: the group must be one of {', '.join(GROUPS)}")
        groups[name] = group  # type: ignore[assignment]
    return groups


def collect(run_dir: str | Path, overrides: dict[str, str] | None = None, skip: Path | None = None) -> RunData:
    """Read and check everything; raises ``ConfigError`` for what must be fixed before a report can be written."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ConfigError(f"{run_dir}: no such folder; give a run folder (the --out of charlab demo or "
                          "charlab conditions train)")
    rows, sources = collect_rows(run_dir, skip)
    groups = condition_groups(run_dir, overrides)
    notes: list[str] = []
    experiment_path = run_dir / EXPERIMENT_FILE
    experiment = _json(experiment_path, notes) if experiment_path.is_file() else None
    projections = [p for path in _files(run_dir, "projections.jsonl", skip) for p in _projections(path, run_dir, notes)]
    sweeps = [s for path in _files(run_dir, "sweep.json", skip) if (s := _sweep(path, run_dir, notes))]
    spaces = [s for path in _files(run_dir, "persona_space.json", skip) if (s := _space(path, run_dir, notes))]
    return RunData(run_dir, tuple(rows), tuple(sources), groups,
                   tuple(_records(condition_records(run_dir))), tuple(_records(challenge_records(run_dir))),
                   experiment, sha256_file(experiment_path) if experiment is not None else None,
                   _audit(run_dir / AUDIT_JSON, notes), tuple(projections), tuple(sweeps), tuple(spaces),
                   tuple(notes))
