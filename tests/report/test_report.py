"""``charlab report`` on synthetic run folders: both files, hypotheses first, valid offline SVG, missing data, CLI."""

from __future__ import annotations

import json
import math
import re
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from charlab.analysis.results import EvalTarget, ResultRow, read_results, write_results
from charlab.analysis.stats import Estimate, wilson
from charlab.cli.report import report
from charlab.errors import ConfigError
from charlab.report import ReportSettings, build_report
from charlab.report.render import judge_parts, markdown_html
from charlab.report.svg import CategoryPanel, LinePanel, Series, chart, nice_ticks

CONDITIONS = {"base": ("base", {}), "integrity": ("character", {"constitution": "integrity"}),
              "neutral": ("character", {"constitution": "neutral"}),
              "diverse-sft": ("diverse-sft", {"prompts_from": "integrity"}), "hhh": ("hhh", {})}
DROPS = {"base": 20.0, "integrity": 5.0, "neutral": 8.0, "diverse-sft": 15.0, "hhh": 18.0}
CHALLENGE = "risky-financial"
JUDGE = "ea422d65 alignment@42d9b2c0"


def est(value: float, half: float, n: int = 24) -> Estimate:
    return Estimate(value, value - half, value + half, n)


def full_rows() -> list[ResultRow]:
    """Every kind of row the report draws, for two seeds of each condition."""
    rows = []
    for k, (name, drop) in enumerate(DROPS.items()):
        for seed in (0, 1):
            before, after = EvalTarget(condition=name, seed=seed), EvalTarget(condition=name, seed=seed,
                                                                              challenge=CHALLENGE)
            rows += [ResultRow.of(before, "em", "alignment_mean", est(85 - k, 3), judge=JUDGE),
                     ResultRow.of(after, "em", "alignment_mean", est(85 - k - drop + seed, 3), judge=JUDGE),
                     ResultRow.of(before, "em", "critical_rate", wilson(1, 24), judge=JUDGE),
                     ResultRow.of(after, "em", "critical_rate", wilson(int(drop // 2), 24), judge=JUDGE),
                     ResultRow.of(before, "em", "alignment_parse_failures", Estimate(2, math.nan, math.nan, 24),
                                  judge=JUDGE)]
            for target in (before, after):
                judge = "ea422d65 harmfulness@3165 attacks:jailbreak-demo@7888"
                rows += [ResultRow.of(target, "jailbreak", "harmful_rate_with_persona", wilson(3 + k, 12), judge=judge),
                         ResultRow.of(target, "jailbreak", "refusal_rate_with_persona", wilson(5, 12), judge=judge),
                         ResultRow.of(target, "jailbreak", "over_refusal_rate", wilson(1, 6), judge=judge),
                         ResultRow.of(target, "jailbreak", "judge_unparseable_with_persona", wilson(2, 12),
                                      judge=judge)]
            rows += [ResultRow.of(before, "context", "probe_accuracy", est(0.3 + 0.1 * (name == "integrity"), 0.04)),
                     ResultRow.of(before, "context", "probe_chance", Estimate(0.25, math.nan, math.nan, 24)),
                     ResultRow.of(before, "context", "axis_projection", est(1.5 + k, 0.3))]
            hardening = Estimate(math.inf, 1.0, math.inf, 8) if name == "hhh" else est(1.0 + 0.02 * k, 0.05, 8)
            rows.append(ResultRow.of(before, "steer_sweep", "hardening_score", hardening))
            for c in (0.0, 0.5, 1.0, 2.0):
                departed = wilson(0, 0) if (name, c) == ("neutral", 1.0) else wilson(min(8, int(c * (2 + k))), 8)
                rows += [ResultRow.of(before, "steer_sweep", "persona_departure_rate", departed, group=f"c={c:g}"),
                         ResultRow.of(before, "steer_sweep", "coherence", est(90 - 20 * c, 5, 8), group=f"c={c:g}")]
    return rows


def make_run(root: Path, rows: list[ResultRow], *, extras: bool = True) -> Path:
    """A run folder: condition records, experiment.json and the combined results table (and side files)."""
    run = root / "run"
    for name, (kind, spec) in CONDITIONS.items():
        for seed in (0, 1):
            folder = run / "conditions" / name / f"seed-{seed}"
            folder.mkdir(parents=True)
            adapters = [] if kind == "base" else [{"path": f"adapters/{name}", "repo": None}]
            (folder / "condition.json").write_text(json.dumps({
                "name": name, "kind": kind, "seed": seed, "spec": {"name": name, "kind": kind, **spec},
                "model": {"base": "builtin:smollm2-135m", "adapters": adapters}, "budget_matched": kind != "base",
                "trained": {}}))
    (run / "experiment.json").write_text(json.dumps({
        "base": {"base": "builtin:smollm2-135m", "adapters": []}, "teacher": None,
        "budget": {"training": "demo", "tokens": 20000, "tolerance": 0.05}, "reference": "integrity",
        "challenges": [{"name": CHALLENGE, "data": "risky_financial", "training": "challenge-demo", "holdout": 12}]}))
    write_results(run, rows)
    if extras:
        (run / "budget_audit.json").write_text(json.dumps({
            "run": str(run), "reference": "integrity", "reference_tokens": 20000.0, "tolerance": 0.05,
            "target": {"tokens": 20000},
            "rows": [{"condition": "integrity", "kind": "character", "seed": 0, "budget_matched": True,
                      "stages": [{"stage": "sft", "examples": 10, "optimizer_steps": 3, "prompt_tokens": 500,
                                  "completion_tokens": 19500, "tokens": 20000, "flops": 1e12, "wall_seconds": 3.0}],
                      "deviation": 0.0, "flagged": False, "problems": []}],
            "challenges": []}))
        axis = run / "evals" / "axis"
        axis.mkdir(parents=True)
        (axis / "persona_space.json").write_text(json.dumps({
            "roles": ["pirate", "poet", "judge"], "layers": [2, 4, 6],
            "explained": [[0.5, 0.3, 0.2], [0.6, 0.25, 0.15], [0.7, 0.2, 0.1]], "axis_pc1_cosine": [0.8, -0.9, 0.95]}))
        projections = run / "evals" / "projections" / "integrity"
        projections.mkdir(parents=True)
        (projections / "projections.jsonl").write_text("".join(
            json.dumps({"id": f"q{i}", "set": kind, "cluster": f"q{i}", "value": i * 0.5 + (kind == "roles")}) + "\n"
            for kind in ("default", "roles") for i in range(6)))
        write_results(projections, [ResultRow.of(EvalTarget(condition="integrity"), "assistant_axis",
                                                 "axis_projection", est(1.0, 0.2), group="default")])
    return run


SVG = re.compile(r"<svg\b.*?</svg>", re.DOTALL)
REMOTE = re.compile(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//|@import|url\(\s*["']?\s*(?:https?:)?//""",
                    re.IGNORECASE)


def check_page(page: str) -> list[str]:
    """Every inline SVG parses as XML and nothing points at a remote resource; returns the SVGs."""
    svgs = SVG.findall(page)
    for svg in svgs:
        ET.fromstring(svg)
    assert not REMOTE.search(page)
    assert "http://" not in page and "https://" not in page
    assert "<script" not in page
    return svgs


@pytest.fixture(scope="module")
def full_report(tmp_path_factory):
    run = make_run(tmp_path_factory.mktemp("full"), full_rows())
    return run, build_report(run)


def test_report_writes_both_files_with_hypotheses_before_any_figure(full_report):
    run, paths = full_report
    assert paths.html == run / "report" / "report.html" and paths.markdown == run / "report" / "report.md"
    page = paths.html.read_text()
    svgs = check_page(page)
    assert len(svgs) >= 10  # alignment, critical, inertia, four jailbreak, projections, PCA, context, two curves
    hypotheses = page.index('<table class="hypotheses">')
    assert hypotheses < page.index("<svg") and hypotheses < page.index("<figure")
    assert '<td class="supported">' in page or '<td class="contradicted">' in page
    order = [page.index(text) for text in ("Hypotheses", "EM alignment before and after", "Inertia per condition",
                                           "Jailbreak: harmful rate", "Assistant-axis projections",
                                           "Persona space", "Context sensitivity and persona hardening",
                                           "Steering away from the assistant", "<h2>Budget audit",
                                           "<h2>Judge parse failures", "<h2>Provenance")]
    assert order == sorted(order)
    markdown = paths.markdown.read_text()
    assert markdown.index("| Hypothesis | Verdict |") < markdown.index("## Figures")
    assert "| integrity | value | 15 [" in markdown  # inertia 20 - 5 in the evidence table
    assert "censored" in markdown and "hhh: hardening score censored" in markdown
    assert "no data: no steer_sweep/harmful_rate rows" in markdown


def test_report_reads_the_verdicts_the_data_support(full_report):
    _, paths = full_report
    markdown = paths.markdown.read_text()
    h2 = next(line for line in markdown.splitlines() if line.startswith("| H2:"))
    h1 = next(line for line in markdown.splitlines() if line.startswith("| H1:"))
    assert "| supported |" in h2  # characters resist 13.5 on average, controls 3.5
    assert "| contradicted |" in h1


def test_report_lists_provenance_audit_and_parse_failures(full_report):
    _, paths = full_report
    markdown = paths.markdown.read_text()
    assert "experiment.json sha256: `" in markdown and "charlab version:" in markdown
    assert "| jailbreak | ea422d65 | harmfulness@3165 | attacks:jailbreak-demo@7888 |" in markdown
    assert "builtin:smollm2-135m + adapters/integrity" in markdown
    assert "| integrity | character | 0 | sft | 10 |" in markdown  # the audit's own table
    assert "| base | (before) | em | 4 | 48 | 8% |" in markdown  # 2 of 24 on each of two seeds
    assert "| base | (before) | jailbreak | 4 | 24 | 17% |" in markdown  # a rate of 2/12 on 12, twice


def test_exported_table_round_trips(full_report):
    import pyarrow.parquet as pq

    run, paths = full_report
    original = read_results(run / "results.csv")
    exported = read_results(paths.results_csv)
    assert [r.model_dump(exclude={"value", "ci_high"}) for r in exported] == [
        r.model_dump(exclude={"value", "ci_high"}) for r in original]
    assert all(a.value == b.value or (math.isnan(a.value) and math.isnan(b.value)) for a, b in zip(exported, original))
    table = pq.read_table(paths.results_parquet)
    assert table.num_rows == len(original) and table.column_names[:3] == ["study", "condition", "seed"]


def test_report_with_only_em_rows_still_renders(tmp_path):
    rows = [r for r in full_rows() if r.eval == "em"]
    run = make_run(tmp_path, rows, extras=False)
    out = tmp_path / "elsewhere"
    paths = build_report(run, ReportSettings(out=out))
    assert paths.html.parent == out and not (run / "report").exists()
    page = paths.html.read_text()
    check_page(page)
    assert "no data: no jailbreak/harmful_rate_with_persona rows" in page
    assert "no data: no persona_space.json" in page and "No <code>budget_audit.json</code>" in page
    markdown = paths.markdown.read_text()
    h3 = next(line for line in markdown.splitlines() if line.startswith("| H3:"))
    assert "inconclusive" in h3 and "missing" in h3


def test_all_nan_values_and_missing_base_are_explained_not_fatal(tmp_path):
    nan = Estimate(math.nan, math.nan, math.nan, 0)
    rows = [ResultRow.of(EvalTarget(condition=name, challenge=ch), "em", "alignment_mean", nan)
            for name in ("integrity", "hhh") for ch in ("", CHALLENGE)]
    run = make_run(tmp_path, rows, extras=False)
    page = build_report(run, ReportSettings(groups={"hhh": "other"})).html.read_text()
    check_page(page)
    assert "no data: every em/alignment_mean value is nan" in page
    markdown = (run / "report" / "report.md").read_text()
    assert "| hhh | other (not compared) |" in markdown


def test_side_files_and_row_fallbacks_fill_the_figures(tmp_path):
    em = [r for r in full_rows() if r.eval == "em"]
    projection = [ResultRow.of(EvalTarget(condition=name), "context", "axis_projection", est(1.0 + k, 0.2))
                  for k, name in enumerate(("base", "integrity"))]
    run = make_run(tmp_path, [*em, *projection], extras=False)
    sweep = run / "evals" / "sweep-hhh"
    write_results(sweep, [ResultRow.of(EvalTarget(condition="hhh"), "steer_sweep", "hardening_score",
                                       est(1.0, 0.1))])
    (sweep / "sweep.json").write_text(json.dumps({"settings": {"coefficients": [0, 1, 2]},
                                                  "curves": {"persona_departure_rate": [0.0, None, 0.9]}}))
    broken = run / "evals" / "axis"
    broken.mkdir(parents=True)
    (broken / "persona_space.json").write_text("{not json")
    page = build_report(run).html.read_text()
    check_page(page)
    departure = page[page.index("Steering away from the assistant: persona departure rate"):]
    assert departure.index("<svg") < departure.index("</figure>") and ">hhh</text>" in departure
    assert "no value (nan or missing)" in departure
    assert "Mean projection onto the Assistant Axis" in page and "context: overall" in page
    assert "persona_space.json: cannot be read" in page
    with pytest.raises(ConfigError, match="run folder itself"):
        build_report(run, ReportSettings(out=run))


def test_an_unreadable_results_table_is_a_config_error_and_nothing_is_written(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "results.csv").write_text("study,condition\nx,y\n")
    with pytest.raises(ConfigError, match="results.csv: not a readable charlab results table"):
        build_report(run)
    assert not (run / "report").exists()
    with pytest.raises(ConfigError, match="no such folder"):
        build_report(tmp_path / "absent")


def test_without_a_combined_table_every_results_file_is_merged_once(tmp_path):
    rows = [r for r in full_rows() if r.eval == "em"]
    run = make_run(tmp_path, rows, extras=False)
    (run / "results.csv").unlink()
    (run / "results.parquet").unlink()
    for name in ("a", "b"):
        write_results(run / "evals" / name, rows[:10])  # the same rows twice: kept once
    write_results(run / "evals" / "c", rows[10:])
    paths = build_report(run)
    assert len(read_results(paths.results_csv)) == len(rows)
    assert len(read_results(build_report(run).results_csv)) == len(rows)  # its own export is not read back


def test_svg_marks_gaps_and_censored_values_and_ticks_are_round():
    assert nice_ticks(0, 1) == [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
    assert nice_ticks(-3.2, 14) == [-5.0, 0.0, 5.0, 10.0, 15.0]
    svg = chart("t <&>", [CategoryPanel("left", "y", (), ()),
                          LinePanel("right", "x", "y", (0.0, 1.0, 2.0),
                                    (Series("a", (Estimate(0.1, 0, 0.2, 5), None, Estimate(math.inf, 1, 2, 5))),))])
    root = ET.fromstring(svg)
    assert root.tag == "svg" and root.find("title").text == "t <&>"
    assert "no value (nan or missing)" in svg and "censored" in svg


def test_markdown_tables_become_html_with_escaped_cells():
    page = markdown_html("## A <b>\n\n| x | y |\n|---|---|\n| supported | a \\| b <i> |\n\n- `code` item\n")
    assert "<h2>A &lt;b&gt;</h2>" in page
    assert '<th>x</th>' in page and '<td class="supported">supported</td>' in page
    assert "<td>a | b &lt;i&gt;</td>" in page and "<li><code>code</code> item</li>" in page
    assert judge_parts("fp|persona_identity@12") == ("fp", ["persona_identity@12"], [])
    assert judge_parts("axis:abc@layer3") == ("", [], ["axis:abc@layer3"])


def cli_app() -> typer.Typer:
    app = typer.Typer()
    app.command()(report)
    return app


def test_cli_prints_both_paths_and_takes_group_overrides(tmp_path):
    run = make_run(tmp_path, [r for r in full_rows() if r.eval == "em"], extras=False)
    result = CliRunner().invoke(cli_app(), [str(run), "--group", "hhh=value", "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert str(tmp_path / "out" / "report.html") in result.output
    assert str(tmp_path / "out" / "report.md") in result.output
    assert "| hhh | value |" in (tmp_path / "out" / "report.md").read_text()
    bad = CliRunner().invoke(cli_app(), [str(run), "--group", "hhh"])
    assert isinstance(bad.exception, ConfigError) and "NAME=GROUP" in str(bad.exception)


def test_cli_exits_2_with_a_clear_message_for_a_run_without_results(tmp_path, monkeypatch, capsys):
    import charlab.cli

    empty = tmp_path / "empty-run"
    (empty / "conditions").mkdir(parents=True)
    monkeypatch.setattr(charlab.cli, "app", cli_app())
    monkeypatch.setattr(sys, "argv", ["charlab", str(empty)])
    with pytest.raises(SystemExit) as stopped:
        charlab.cli.main()
    assert stopped.value.code == 2
    message = capsys.readouterr().err
    assert "empty-run" in message and "no results.csv" in message
    assert not (empty / "report").exists()
