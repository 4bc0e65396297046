"""``charlab report``: a run's hypothesis verdicts, inertia tables and figures as report.html and report.md."""

from __future__ import annotations

from pathlib import Path

import typer

RUN_ARGUMENT = typer.Argument(..., help="run folder: the --out of charlab demo or charlab conditions train, "
                              "or any folder holding results.csv tables")
GROUP_OPTION = typer.Option([], "--group", help="NAME=GROUP (value, neutral, control, base, other), overriding "
                            "the group condition.json implies; repeatable")
OUT_OPTION = typer.Option(None, "--out", help="folder for report.html, report.md and the combined results table "
                          "(default: RUN/report)")


def parse_groups(values: list[str]) -> dict[str, str]:
    """``--group NAME=GROUP`` values as a mapping; a malformed one names itself and the accepted groups."""
    from charlab.analysis.groups import GROUPS
    from charlab.errors import ConfigError

    groups = {}
    for value in values:
        name, _, group = value.partition("=")
        if not name.strip() or group.strip() not in GROUPS:
            raise ConfigError(f"--group {value!r}: give NAME=GROUP with GROUP one of {', '.join(GROUPS)}, "
                              "e.g. --group my-sft=control")
        groups[name.strip()] = group.strip()
    return groups


METRIC_OPTION = typer.Option(None, "--inertia-metric", help="eval/metric the hypotheses read inertia from "
                             "(default: the study's analysis.inertia_metric, else em/alignment_mean)")


def report(run: Path = RUN_ARGUMENT, groups: list[str] = GROUP_OPTION, out: Path | None = OUT_OPTION,
           inertia_metric: str | None = METRIC_OPTION) -> None:
    """Hypothesis verdicts first, then figures (alignment, critical rate, inertia, jailbreak, axis projections,
    persona space, context sensitivity and hardening, steering curves), the budget audit, judge parse failures
    and provenance: one self-contained HTML file and a Markdown summary.

    Example: charlab report runs/demo --group my-sft=control
    """
    from charlab.report import ReportSettings, build_report
    from charlab.study.run import analysis_settings

    settings = analysis_settings(run).model_copy(update={"out": out})
    overrides = {"groups": {**settings.groups, **parse_groups(groups)}}
    if inertia_metric is not None:
        overrides["inertia_metric"] = inertia_metric
    paths = build_report(run, ReportSettings.model_validate({**settings.model_dump(), **overrides}))
    typer.echo(f"report: {paths.html}")
    typer.echo(f"summary: {paths.markdown}")
