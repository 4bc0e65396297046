"""The tidy results table every evaluation writes: one row per metric, with its interval.

Columns follow docs/ARCHITECTURE.md's contract (study, condition, seed, challenge, eval, metric, value,
ci_low, ci_high, n, judge) plus ``group``: empty for the overall value, otherwise the slice it
describes (a question id, a harm category), so per-question breakdowns live in the same table.
Written as CSV (for people and spreadsheets) and Parquet (for analysis), both atomically.
"""

from __future__ import annotations

import csv
import io
import math
import os
from collections.abc import Sequence
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from charlab.analysis.stats import Estimate
from charlab.io import atomic_write_bytes, atomic_write_text

COLUMNS = ("study", "condition", "seed", "challenge", "eval", "metric", "group", "value", "ci_low", "ci_high", "n",
           "judge")


class EvalTarget(BaseModel):
    """Who was evaluated: the labels a result row carries (the model itself is the caller's business)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    study: str = Field("", description="study name; empty outside a study")
    condition: str = Field("model", description="condition label, e.g. integrity or base")
    seed: int = Field(0, description="the condition's training seed")
    challenge: str = Field("", description="challenge on top of the condition; empty before any challenge")


class ResultRow(BaseModel):
    """One metric of one evaluation of one target."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    study: str
    condition: str
    seed: int
    challenge: str
    eval: str
    metric: str
    group: str = ""
    value: float
    ci_low: float | None = None
    ci_high: float | None = None
    n: int
    judge: str = ""

    @classmethod
    def of(cls, target: EvalTarget, eval_name: str, metric: str, estimate: Estimate, *, group: str = "",
           judge: str = "") -> ResultRow:
        """A row from an estimate; a nan interval (nothing to resample) is stored as empty."""
        low, high = (None if math.isnan(x) else x for x in (estimate.low, estimate.high))
        return cls(**target.model_dump(), eval=eval_name, metric=metric, group=group, value=estimate.value,
                   ci_low=low, ci_high=high, n=estimate.n, judge=judge)


def write_results(folder: str | os.PathLike, rows: Sequence[ResultRow], name: str = "results") -> tuple[Path, Path]:
    """``<folder>/<name>.csv`` and ``.parquet`` with the ``COLUMNS``, in that order."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder = Path(folder)
    records = [row.model_dump() for row in rows]
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(records)
    csv_path = atomic_write_text(folder / f"{name}.csv", text.getvalue())
    table = pa.Table.from_pylist(records, schema=pa.schema([
        ("study", pa.string()), ("condition", pa.string()), ("seed", pa.int64()), ("challenge", pa.string()),
        ("eval", pa.string()), ("metric", pa.string()), ("group", pa.string()), ("value", pa.float64()),
        ("ci_low", pa.float64()), ("ci_high", pa.float64()), ("n", pa.int64()), ("judge", pa.string())]))
    buffer = pa.BufferOutputStream()
    pq.write_table(table, buffer)
    parquet_path = atomic_write_bytes(folder / f"{name}.parquet", buffer.getvalue().to_pybytes())
    return csv_path, parquet_path


def read_results(path: str | os.PathLike) -> list[ResultRow]:
    """Rows from a results CSV written by ``write_results``."""
    with open(path, newline="", encoding="utf-8") as handle:
        rows = []
        for record in csv.DictReader(handle):
            for key in ("ci_low", "ci_high"):
                record[key] = float(record[key]) if record[key] else None
            rows.append(ResultRow.model_validate({**record, "seed": int(record["seed"]), "n": int(record["n"]),
                                                  "value": float(record["value"])}))
        return rows
