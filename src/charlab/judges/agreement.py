"""Agreement between two judges, or a judge and human labels: accuracy, Cohen's kappa, confusion matrix.

Both sides are JSONL files joined on ``item_id``. A row's category is its ``label`` when it has
one (compared ignoring case, so a numeric judge's REFUSAL meets a human's "refusal"), else its
``score``: binned by ``thresholds`` when given (alignment < 30 vs >= 30), or taken as is when it
is a whole number (human 0-3 ratings). Rows that cannot be compared (parse errors, neither label
nor score) and items on one side only are counted in the result, never silently skipped.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from charlab.errors import ConfigError
from charlab.io import iter_jsonl


@dataclass
class Side:
    """One file's comparable categories by item, plus what could not be used."""

    path: str
    categories: dict[str, str] = field(default_factory=dict)
    unusable: list[str] = field(default_factory=list)  # item ids with a parse error or no judgement


@dataclass
class Agreement:
    """Agreement on the items both sides judged usably."""

    n: int
    accuracy: float
    kappa: float | None  # None when chance agreement is 1 (both sides used one and the same category)
    categories: list[str]
    matrix: list[list[int]]  # rows: side A's category, columns: side B's
    only_a: int = 0
    only_b: int = 0
    unusable_a: int = 0
    unusable_b: int = 0
    a: str = "A"
    b: str = "B"
    thresholds: list[float] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"a": self.a, "b": self.b, "n": self.n, "accuracy": self.accuracy, "kappa": self.kappa,
                "categories": self.categories, "confusion_matrix": self.matrix, "only_in_a": self.only_a,
                "only_in_b": self.only_b, "unusable_in_a": self.unusable_a, "unusable_in_b": self.unusable_b,
                "thresholds": self.thresholds}


def _fmt(x: float) -> str:
    return f"{x:g}"


def bin_score(score: float, thresholds: Sequence[float]) -> str:
    """The bin of a score: '<t1', 't1-t2', ..., '>=tk' for sorted thresholds."""
    cuts = sorted(thresholds)
    if score < cuts[0]:
        return f"<{_fmt(cuts[0])}"
    for low, high in zip(cuts, cuts[1:]):
        if low <= score < high:
            return f"{_fmt(low)}-{_fmt(high)}"
    return f">={_fmt(cuts[-1])}"


def category(row: Mapping[str, Any], thresholds: Sequence[float] = (), where: str = "") -> str | None:
    """A row's comparable category, or None when it holds no usable judgement."""
    if row.get("parse_error"):
        return None
    label, score = row.get("label"), row.get("score")
    if label is not None:
        return str(label).strip().casefold()
    if score is None:
        return None
    if isinstance(score, bool) or not isinstance(score, int | float):
        raise ConfigError(f"{where}: field 'score' must be a number or null")
    if thresholds:
        return bin_score(float(score), thresholds)
    if float(score).is_integer():
        return _fmt(float(score))
    raise ConfigError(f"{where}: score {score} is not a whole number; pass thresholds (--threshold 30) "
                      f"to bin continuous scores")


def load_side(path: str | os.PathLike, thresholds: Sequence[float] = ()) -> Side:
    """Read judge records or human labels (``{"item_id", "label"}`` or ``{"item_id", "score"}``)."""
    side = Side(str(path))
    seen: dict[str, int] = {}
    for lineno, row in iter_jsonl(path):
        where = f"{path}:{lineno}"
        if not isinstance(row, dict) or row.get("item_id") is None:
            raise ConfigError(f"{where}: field 'item_id' is missing; each line needs item_id and a label or score")
        item_id = str(row["item_id"])
        if item_id in seen:
            raise ConfigError(f"{where}: field 'item_id': {item_id!r} already appeared on line {seen[item_id]}; "
                              f"each item may be judged once per file")
        seen[item_id] = lineno
        value = category(row, thresholds, where)
        if value is None:
            side.unusable.append(item_id)
        else:
            side.categories[item_id] = value
    return side


def cohen_kappa(matrix: Sequence[Sequence[int]]) -> float | None:
    """Cohen's kappa from a square confusion matrix: (p_o - p_e) / (1 - p_e); None if p_e == 1."""
    n = sum(sum(row) for row in matrix)
    if n == 0:
        return None
    k = len(matrix)
    observed = sum(matrix[i][i] for i in range(k)) / n
    rows = [sum(matrix[i]) / n for i in range(k)]
    cols = [sum(matrix[i][j] for i in range(k)) / n for j in range(k)]
    expected = sum(r * c for r, c in zip(rows, cols))
    if abs(1.0 - expected) < 1e-12:
        return None
    return (observed - expected) / (1.0 - expected)


def agreement(a: Mapping[str, str], b: Mapping[str, str]) -> Agreement:
    """Agreement over the item ids both mappings hold."""
    common = [i for i in a if i in b]
    if not common:
        raise ConfigError("the two sides have no item_id in common; check that they judged the same items")
    categories = sorted({a[i] for i in common} | {b[i] for i in common})
    index = {c: k for k, c in enumerate(categories)}
    matrix = [[0] * len(categories) for _ in categories]
    for i in common:
        matrix[index[a[i]]][index[b[i]]] += 1
    accuracy = sum(matrix[k][k] for k in range(len(categories))) / len(common)
    return Agreement(len(common), accuracy, cohen_kappa(matrix), categories, matrix,
                     only_a=sum(i not in b for i in a), only_b=sum(i not in a for i in b))


def compare_files(path_a: str | os.PathLike, path_b: str | os.PathLike,
                  thresholds: Sequence[float] = ()) -> Agreement:
    """Agreement between two JSONL files of judge records or human labels, joined on item_id."""
    side_a, side_b = load_side(path_a, thresholds), load_side(path_b, thresholds)
    result = agreement(side_a.categories, side_b.categories)
    result.a, result.b = Path(path_a).name, Path(path_b).name
    result.unusable_a, result.unusable_b = len(side_a.unusable), len(side_b.unusable)
    # An item usable on one side but not the other is not "only in" that side: count it as unusable.
    result.only_a = sum(i not in side_b.categories and i not in side_b.unusable for i in side_a.categories)
    result.only_b = sum(i not in side_a.categories and i not in side_a.unusable for i in side_b.categories)
    result.thresholds = sorted(thresholds)
    return result
