"""The run folder of an experiment or a study: every path in it and every node id, built here only.

::

    RUN/study.json                                the study as run (+ its hash)
    RUN/experiment.json                           the experiment part, read by the budget audit
    RUN/conditions/<condition>/seed-<s>/          one condition trained for one seed (condition.json)
    RUN/challenges/<challenge>/<condition>/seed-<s>/  the challenge on top of it (challenge.json)
    RUN/axis/                                     the Assistant Axis built on the base model
    RUN/evals/<condition>/seed-<s>/<stage>/       every evaluation of one model under test + results.csv
        suite/<folder>/, <folder>/                  one evaluation's files (suite ones under suite/)
    RUN/margins/<condition>/seed-<s>/             the judge-free challenge margin
    RUN/served/                                   adapter stacks composed for serving
    RUN/study/                                    one step per node, and the nodes' state files
    RUN/budget_audit.md, .json                    the budget audit
    RUN/results.csv, .parquet                     every row of the study; RUN/report/ the report

A node id names the same thing in the plan, in the study's steps and in ``charlab study status``:
``train/<c>/seed-<s>``, ``challenge/<ch>/<c>/seed-<s>``, ``axis``, ``evaluate/<c>/seed-<s>/<stage>``,
``margin/<c>/seed-<s>``, ``audit``, ``report``. ``<stage>`` is ``before`` or a challenge's name.
"""

from __future__ import annotations

from pathlib import Path

BEFORE = "before"  # the stage of a model under test before any challenge
STUDY_FILE = "study.json"
EXPERIMENT_FILE = "experiment.json"
CONDITION_FILE = "condition.json"
CHALLENGE_FILE = "challenge.json"
CONSTITUTION_FILE = "constitution.yaml"  # a character condition's constitution, beside its condition.json
RESULTS_FILE = "results.csv"
AUDIT_MARKDOWN = "budget_audit.md"
AUDIT_JSON = "budget_audit.json"


def condition_dir(out: Path, condition: str, seed: int) -> Path:
    return Path(out) / "conditions" / condition / f"seed-{seed}"


def challenge_dir(out: Path, challenge: str, condition: str, seed: int) -> Path:
    return Path(out) / "challenges" / challenge / condition / f"seed-{seed}"


def condition_records(out: Path) -> list[Path]:
    """Every ``condition.json`` of the run, in a stable order."""
    return sorted((Path(out) / "conditions").glob(f"*/seed-*/{CONDITION_FILE}"))


def challenge_records(out: Path) -> list[Path]:
    """Every ``challenge.json`` of the run, in a stable order."""
    return sorted((Path(out) / "challenges").glob(f"*/*/seed-*/{CHALLENGE_FILE}"))


def axis_dir(out: Path) -> Path:
    return Path(out) / "axis"


def eval_dir(out: Path, condition: str, seed: int, stage: str) -> Path:
    return Path(out) / "evals" / condition / f"seed-{seed}" / stage


def evaluation_dir(out: Path, condition: str, seed: int, stage: str, folder: str, *, suite: bool) -> Path:
    """One evaluation's own folder for one model under test; the suite's evaluations sit together under suite/."""
    model = eval_dir(out, condition, seed, stage)
    return model / "suite" / folder if suite else model / folder


def margin_dir(out: Path, condition: str, seed: int) -> Path:
    return Path(out) / "margins" / condition / f"seed-{seed}"


def node_results(out: Path) -> list[Path]:
    """Every ``results.csv`` the evaluation and margin nodes wrote, in a stable order."""
    out = Path(out)
    return sorted([*(out / "evals").glob(f"*/*/*/{RESULTS_FILE}"), *(out / "margins").glob(f"*/*/{RESULTS_FILE}")])


def served_dir(out: Path) -> Path:
    return Path(out) / "served"


def study_dir(out: Path) -> Path:
    return Path(out) / "study"


def node_state_file(out: Path, node_id: str) -> Path:
    return study_dir(out) / "state" / f"{node_label(node_id)}.json"


def report_dir(out: Path) -> Path:
    return Path(out) / "report"


def node_label(node_id: str) -> str:
    """A node id as one path component (step labels, state files)."""
    return node_id.replace("/", "--")


def train_node(condition: str, seed: int) -> str:
    return f"train/{condition}/seed-{seed}"


def challenge_node(challenge: str, condition: str, seed: int) -> str:
    return f"challenge/{challenge}/{condition}/seed-{seed}"


def evaluate_node(condition: str, seed: int, stage: str) -> str:
    return f"evaluate/{condition}/seed-{seed}/{stage}"


def margin_node(condition: str, seed: int) -> str:
    return f"margin/{condition}/seed-{seed}"


def producer_node(condition: str, seed: int, stage: str) -> str:
    """The node whose model is evaluated at ``stage``: the training before, the challenge after."""
    return train_node(condition, seed) if stage == BEFORE else challenge_node(stage, condition, seed)
