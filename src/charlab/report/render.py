"""``build_report``: one self-contained HTML page and a Markdown summary of a run, hypotheses first.

The report is a list of blocks, Markdown text or figures, rendered twice: to Markdown (figures
become their title, caption and a pointer to the HTML page, or their "no data" note) and to HTML
(the Markdown's headings, lists and tables as tags, figures as inline SVG). One list keeps both
files saying the same thing. Everything is read and checked (``collect``) before anything is
written; the combined results table is exported next to the report as CSV and Parquet.
"""

from __future__ import annotations

import html
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field

from charlab import __version__
from charlab.analysis.groups import HYPOTHESIS_GROUPS, Group
from charlab.analysis.hypotheses import decide, hypotheses_markdown
from charlab.analysis.inertia import (
    ALIGNMENT,
    CRITICAL,
    InertiaRow,
    context_sensitivity,
    gather_evidence,
    hardening_score,
    inertia_table,
    parse_metric,
    seed_means,
)
from charlab.analysis.results import ResultRow, write_results
from charlab.errors import ConfigError
from charlab.evals.registry import headline_metrics, lower_is_better
from charlab.io import atomic_write_text
from charlab.report.collect import RunData, collect
from charlab.report.figures import Figure, build_figures, group_of, ordered_conditions
from charlab.report.svg import describe

VERDICTS = ("supported", "contradicted", "inconclusive")


class ReportSettings(BaseModel):
    """What ``build_report`` writes where, and the knobs of the hypothesis rules."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    out: Path | None = Field(None, description="folder for report.html, report.md and the exported results "
                             "table; default RUN/report")
    groups: dict[str, Group] = Field({}, description="condition name -> group (value, neutral, control, base, "
                                         "other); wins over what condition.json implies")
    base: str = Field("base", description="the condition every inertia is measured against")
    margin: float = Field(0.0, ge=0, description="H1/H2 margin on the inertia scale, in the inertia metric's units")
    hardening_margin: float = Field(0.1, ge=0, description="H3: how far value and neutral hardening may differ "
                                    "and still count as matched, in steering-coefficient units")
    confidence: float = Field(0.95, gt=0, lt=1, description="level of the rows' intervals and of every interval "
                              "the report computes")
    inertia_metric: str = Field("em/alignment_mean", description="eval/metric whose change under the challenge is "
                                "the inertia the hypotheses read (challenge_margin/risky_margin: judge-free)")

    @property
    def metric(self) -> tuple[str, str]:
        return parse_metric(self.inertia_metric)


@dataclass(frozen=True)
class ReportPaths:
    html: Path
    markdown: Path
    results_csv: Path
    results_parquet: Path


@dataclass(frozen=True)
class Text:
    """A Markdown block; ``table_class`` marks its HTML tables (the hypothesis table gets its own)."""

    markdown: str
    table_class: str = ""


Block = Text | Figure


# -- Markdown pieces ------------------------------------------------------------------------------


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(map(_cell, header)) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(str(c)) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def _challenges(rows: Sequence[ResultRow], metric: tuple[str, str] = ALIGNMENT) -> list[str]:
    return sorted({r.challenge for r in rows if (r.eval, r.metric) == metric and r.challenge})


def hypotheses_section(data: RunData, settings: ReportSettings) -> tuple[list[Block], list[str]]:
    """One verdict table per challenge (one with inertia missing when there is none), and the evidence notes."""
    challenges: list[str | None] = list(_challenges(data.rows, settings.metric)) or [None]
    blocks: list[Block] = []
    notes: list[str] = []
    for challenge in challenges:
        found = gather_evidence(data.rows, data.groups, challenge=challenge, base=settings.base,
                                confidence=settings.confidence, metric=settings.metric,
                                lower_is_better=lower_is_better(settings.metric))
        results = decide(found.conditions, margin=settings.margin, hardening_margin=settings.hardening_margin,
                         confidence=settings.confidence)
        heading = "## Hypotheses" + (f" (challenge {challenge})" if len(challenges) > 1 else "")
        blocks.append(Text(f"{heading}\n\n{hypotheses_markdown(results)}", table_class="hypotheses"))
        notes += found.notes
    return blocks, notes


def evidence_section(data: RunData, settings: ReportSettings) -> Text:
    """Each condition's group and the three estimates the hypotheses read."""
    challenges = _challenges(data.rows, settings.metric)
    inertia = {(r.condition, r.challenge): r.inertia
               for r in inertia_table(data.rows, metric=settings.metric, base=settings.base,
                                      confidence=settings.confidence, lower_is_better=lower_is_better(settings.metric))}
    rows = []
    for condition in ordered_conditions(data):
        group = group_of(data, condition)
        used = "" if group in HYPOTHESIS_GROUPS else " (not compared)"
        rows.append([condition, group + used,
                     *("reference" if condition == settings.base else describe(inertia.get((condition, c)))
                       for c in challenges),
                     describe(context_sensitivity(data.rows, condition, confidence=settings.confidence)),
                     describe(hardening_score(data.rows, condition, confidence=settings.confidence))])
    header = ["condition", "group", *(f"inertia ({c})" for c in challenges), "context sensitivity", "hardening"]
    return Text("## Conditions and their evidence\n\nGroups come from each condition's `condition.json` (or "
                f"`--group`); inertia is how much less the challenge moved `{settings.inertia_metric}` than it "
                f"moved {settings.base} (in that metric's units), context sensitivity is probe accuracy minus "
                "chance, hardening is the steering flip coefficient. Means over seeds with "
                f"{settings.confidence:.0%} intervals.\n\n" + _table(header, rows) + "\n")


def _inertia_rows(table: Sequence[InertiaRow]) -> list[list[str]]:
    return [[r.condition, r.challenge, ",".join(map(str, r.seeds)) or "-", describe(r.before), describe(r.after),
             describe(r.drop), describe(r.inertia), r.reason] for r in table]


def inertia_section(data: RunData, settings: ReportSettings) -> Text:
    header = ["condition", "challenge", "seeds", "before", "after", "drop", "inertia", "note"]
    parts = ["## Inertia tables", "",
             ("*Drop* is how much worse the challenge made the metric (alignment: before − after; critical rate "
              "and the challenge margin: after − before); *inertia* is base's drop minus the condition's. Where "
              "the evaluation wrote its own paired change (the challenge margin's `risky_margin_shift`, a "
              "bootstrap over the same questions before and after), the drop is that; otherwise the rows' "
              "intervals are combined as independent normal errors, which errs wide because before and after "
              "share their questions.")]
    for metric in dict.fromkeys((settings.metric, ALIGNMENT, CRITICAL)):
        table = inertia_table(data.rows, metric=metric, base=settings.base, confidence=settings.confidence,
                              lower_is_better=lower_is_better(metric))
        parts += ["", f"### {'/'.join(metric)}", ""]
        parts.append(_table(header, _inertia_rows(table)) if table else
                     "No rows both before and after a challenge.")
    return Text("\n".join(parts) + "\n")


def headline_section(data: RunData, settings: ReportSettings) -> Text:
    """The headline metrics (each evaluation declares its own) per condition, before and after each challenge."""
    present = [(metric, label) for metric, label in headline_metrics()
               if any((r.eval, r.metric) == metric for r in data.rows)]
    means = {metric: seed_means(data.rows, metric, confidence=settings.confidence) for metric, _ in present}
    order = ordered_conditions(data)
    targets = sorted({(r.condition, r.challenge) for r in data.rows}, key=lambda t: (order.index(t[0]), t[1]))
    rows = [[condition, challenge or "(before)",
             *(describe(means[metric].get((condition, challenge, ""))) for metric, _ in present)]
            for condition, challenge in targets]
    return Text("## Headline metrics\n\nMeans over seeds with intervals; every row, per question and per "
                "category included, is in the exported `results.csv`.\n\n"
                + _table(["condition", "challenge", *(label for _, label in present)], rows) + "\n")


def _failures(row: ResultRow) -> tuple[float, float] | None:
    """(unreadable judgements, judgements) a row reports, or None if it is not a parse-failure row."""
    if row.metric.endswith("parse_failures"):
        return row.value, row.n
    if row.metric.startswith("judge_unparseable_"):
        return row.value * row.n, row.n
    return None


def parse_failures_section(data: RunData) -> Text:
    """Unreadable judge answers per condition, challenge and eval, summed over seeds and judged sets."""
    counts: dict[tuple[str, str, str], list[float]] = {}
    for row in data.rows:
        found = _failures(row) if not row.group else None
        if found is not None and all(math.isfinite(x) for x in found):
            total = counts.setdefault((row.condition, row.challenge, row.eval), [0.0, 0.0])
            total[0] += found[0]
            total[1] += found[1]
    order = ordered_conditions(data)
    rows = [[c, ch or "(before)", e, f"{bad:.0f}", f"{n:.0f}", f"{bad / n:.0%}" if n else "-"]
            for (c, ch, e), (bad, n) in sorted(counts.items(), key=lambda kv: (order.index(kv[0][0]), kv[0][1:]))]
    body = (_table(["condition", "challenge", "eval", "unreadable", "judged", "share"], rows) if rows
            else "No parse-failure rows in the results.")
    return Text("## Judge parse failures\n\nJudge answers no score or label could be read from; they are left out "
                "of every rate and mean above.\n\n" + body + "\n")


def audit_section(data: RunData) -> Text:
    if data.audit is None:
        return Text("## Budget audit\n\nNo `budget_audit.json` in the run; `charlab budget audit RUN` writes it.\n")
    from charlab.report.audit import audit_markdown

    return Text(re.sub(r"^(#+) ", r"#\1 ", audit_markdown(data.audit), flags=re.MULTILINE))  # one level down


def _model(ref: object) -> str:
    """A model reference record as one line: base + each adapter (path, or repo/subfolder@revision)."""
    if not isinstance(ref, dict):
        return str(ref) if ref else "-"
    adapters = []
    for adapter in ref.get("adapters") or ():
        if isinstance(adapter, dict) and adapter.get("repo"):
            sub = f"/{adapter['subfolder']}" if adapter.get("subfolder") else ""
            adapters.append(f"{adapter['repo']}{sub}@{adapter.get('revision') or 'main'}")
        else:
            adapters.append(str(adapter.get("path") if isinstance(adapter, dict) else adapter))
    return " + ".join([str(ref.get("base", "?")), *adapters])


def _teacher(spec: object) -> str:
    if not isinstance(spec, dict):
        return "each recipe's own (the base model)"
    if spec.get("model"):
        return f"{spec.get('kind', 'hf')}: {_model(spec['model'])}"
    openai = spec.get("openai") if isinstance(spec.get("openai"), dict) else {}
    return f"{spec.get('kind', '?')}: {openai.get('model', '?')}"


def judge_parts(label: str) -> tuple[str, list[str], list[str]]:
    """A ``judge`` column value split into the judge model, rubric ids and other ids (attack sets, axes)."""
    model, rubrics, other = "", [], []
    for token in re.split(r"[\s|]+", label.strip()):
        if not token:
            continue
        if token.startswith(("attacks:", "axis:")):
            other.append(token)
        elif "@" in token:
            rubrics.append(token)
        else:
            model = model or token
    return model, rubrics, other


def provenance_section(data: RunData) -> Text:
    experiment = data.experiment or {}
    lines = ["## Provenance", "", f"- charlab version: {__version__}"]
    if data.experiment is None:
        lines.append("- experiment.json: not in the run")
    else:
        budget = experiment.get("budget") if isinstance(experiment.get("budget"), dict) else {}
        amount = ", ".join(f"{k} {budget[k]}" for k in ("tokens", "steps") if budget.get(k))
        lines += [f"- experiment.json sha256: `{data.experiment_sha256}`",
                  f"- base model: {_model(experiment.get('base'))}",
                  f"- teacher: {_teacher(experiment.get('teacher'))}",
                  (f"- budget: {amount or '?'} (training profile {budget.get('training', '?')}), reference "
                   f"{experiment.get('reference') or '(none)'}")]
        for challenge in experiment.get("challenges") or ():
            if isinstance(challenge, dict):
                lines.append(f"- challenge {challenge.get('name')}: data {challenge.get('data')}, training "
                             f"{challenge.get('training')}, holdout {challenge.get('holdout')}")
    shown = [p.relative_to(data.run_dir).as_posix() for p in data.sources[:10]]
    more = f" and {len(data.sources) - 10} more" if len(data.sources) > 10 else ""
    lines.append(f"- results read from: {', '.join(shown)}{more} ({len(data.rows)} rows)")
    if data.conditions:
        lines += ["", "### Models under test", "",
                  _table(["condition", "kind", "seed", "group", "model (base + adapters)"],
                         [[str(c.get("name")), str(c.get("kind")), str(c.get("seed")),
                           group_of(data, str(c.get("name"))), _model(c.get("model"))] for c in data.conditions])]
    if data.challenges:
        lines += ["", "### Challenged models", "",
                  _table(["challenge", "condition", "seed", "model (base + adapters)"],
                         [[str(c.get("challenge")), str(c.get("condition")), str(c.get("seed")),
                           _model(c.get("model"))] for c in data.challenges])]
    judges: dict[tuple[str, str], tuple[str, list[str], list[str]]] = {}
    for row in data.rows:
        if row.judge:
            judges.setdefault((row.eval, row.judge), judge_parts(row.judge))
    if judges:
        lines += ["", "### Judges, rubrics and attack sets", "",
                  _table(["eval", "judge model", "rubrics", "attack sets and axes"],
                         [[e, model or "-", ", ".join(rubrics) or "-", ", ".join(other) or "-"]
                          for (e, _), (model, rubrics, other) in sorted(judges.items())])]
    return Text("\n".join(lines) + "\n")


def notes_section(notes: Sequence[str]) -> Text:
    unique = list(dict.fromkeys(notes))
    body = "\n".join(f"- {n}" for n in unique) if unique else "Nothing was left out."
    return Text(f"## Notes on missing evidence\n\n{body}\n")


def blocks(data: RunData, settings: ReportSettings) -> list[Block]:
    """The whole report in order: hypotheses first, then evidence, figures, tables, audit and provenance."""
    hypotheses, notes = hypotheses_section(data, settings)
    intro = Text(f"# charlab report: {data.run_dir.name}\n\n{len(data.rows)} result rows, "
                 f"{len(ordered_conditions(data))} conditions. Verdicts follow fixed rules (listed under the table) "
                 f"applied to {settings.confidence:.0%} intervals; *inconclusive* includes missing evidence, "
                 "which the notes at the end explain.\n")
    return [intro, *hypotheses, evidence_section(data, settings), Text("## Figures\n"),
            *build_figures(data, base=settings.base, confidence=settings.confidence, metric=settings.metric),
            inertia_section(data, settings), headline_section(data, settings), audit_section(data),
            parse_failures_section(data), provenance_section(data), notes_section([*notes, *data.notes])]


# -- rendering ------------------------------------------------------------------------------------


def to_markdown(report: Sequence[Block]) -> str:
    parts = []
    for block in report:
        if isinstance(block, Text):
            parts.append(block.markdown.rstrip("\n"))
        else:
            body = block.missing or "(figure in report.html)"
            parts.append(f"### {block.title}\n\n{block.caption}\n\n{body}")
    return "\n\n".join(parts) + "\n"


def _inline(text: str) -> str:
    """Escaped text with the report's own Markdown marks (code, bold, italics) as tags."""
    text = html.escape(text)
    text = re.sub(r"`([^`]+)`", r"<code>\1</code>", text)
    text = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", text)
    return re.sub(r"\*([^*]+)\*", r"<em>\1</em>", text)


def _cells(line: str) -> list[str]:
    inner = line.strip()
    inner = inner.removeprefix("|")
    inner = inner[:-1] if inner.endswith("|") and not inner.endswith("\\|") else inner
    return [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", inner)]


def _td(text: str, tag: str) -> str:
    verdict = f' class="{text}"' if text in VERDICTS else ""
    return f"<{tag}{verdict}>{_inline(text)}</{tag}>"


def _html_table(lines: Sequence[str], css: str) -> str:
    rows = [_cells(line) for line in lines if not re.fullmatch(r"\|?(\s*:?-+:?\s*\|)+\s*", line.strip())]
    head, body = rows[0], rows[1:]
    attr = f' class="{css}"' if css else ""
    return (f"<table{attr}><thead><tr>{''.join(_td(c, 'th') for c in head)}</tr></thead><tbody>"
            + "".join("<tr>" + "".join(_td(c, "td") for c in row) + "</tr>" for row in body) + "</tbody></table>")


def markdown_html(markdown: str, table_class: str = "") -> str:
    """The report's Markdown (headings, paragraphs, lists, tables) as HTML, every text escaped."""
    out: list[str] = []
    lines = markdown.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("|"):
            start = i
            while i < len(lines) and lines[i].startswith("|"):
                i += 1
            out.append(_html_table(lines[start:i], table_class))
            continue
        if line.startswith("- "):
            items = []
            while i < len(lines) and lines[i].startswith("- "):
                items.append(f"<li>{_inline(lines[i][2:])}</li>")
                i += 1
            out.append(f"<ul>{''.join(items)}</ul>")
            continue
        level = len(line) - len(line.lstrip("#"))
        if level and line[level:level + 1] == " ":
            out.append(f"<h{level}>{_inline(line[level + 1:])}</h{level}>")
        elif line.strip():
            out.append(f"<p>{_inline(line)}</p>")
        i += 1
    return "\n".join(out)


STYLE = """
body{font-family:system-ui,sans-serif;max-width:62rem;margin:2rem auto;padding:0 1rem;line-height:1.45;color:#222}
table{border-collapse:collapse;margin:.5rem 0 1rem;font-size:.9rem}
th,td{border:1px solid #ccc;padding:.25rem .5rem;vertical-align:top;text-align:left}
th{background:#f3f3f3}
td.supported{background:#d8f0d8;font-weight:600}td.contradicted{background:#f6d5d1;font-weight:600}
td.inconclusive{background:#fbf0c9;font-weight:600}
table.hypotheses{font-size:.95rem}
figure{margin:1.5rem 0;padding:0}figure h3{margin:.2rem 0}figcaption{color:#555;font-size:.9rem}
p.nodata{color:#777;font-style:italic;border:1px dashed #ccc;padding:.6rem}
svg{display:block;max-width:100%;height:auto}code{font-size:.9em}
"""


def _figure_html(figure: Figure) -> str:
    body = f'<p class="nodata">{html.escape(figure.missing)}</p>' if figure.missing else figure.svg
    return (f"<figure><h3>{html.escape(figure.title)}</h3>{body}"
            f"<figcaption>{html.escape(figure.caption)}</figcaption></figure>")


def to_html(report: Sequence[Block], title: str) -> str:
    body = "\n".join(markdown_html(b.markdown, b.table_class) if isinstance(b, Text) else _figure_html(b)
                     for b in report)
    return (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>{html.escape(title)}</title><style>{STYLE}</style></head>\n<body>\n{body}\n</body></html>\n")


def build_report(run_dir: str | Path, settings: ReportSettings | None = None) -> ReportPaths:
    """Write ``report.html``, ``report.md`` and the combined ``results.csv``/``.parquet`` into the report folder.

    Nothing is written unless the run reads cleanly (``collect`` raises ``ConfigError`` first).
    """
    settings = settings or ReportSettings()
    run_dir = Path(run_dir)
    out = settings.out if settings.out is not None else run_dir / "report"
    if out.resolve() == run_dir.resolve():
        raise ConfigError(f"--out {out}: that is the run folder itself, whose results.csv the export would replace; "
                          "give a folder of its own (default: RUN/report)")
    data = collect(run_dir, dict(settings.groups), skip=out)
    report = blocks(data, settings)
    markdown, page = to_markdown(report), to_html(report, f"charlab report: {run_dir.name}")
    csv_path, parquet_path = write_results(out, data.rows)
    return ReportPaths(atomic_write_text(out / "report.html", page), atomic_write_text(out / "report.md", markdown),
                       csv_path, parquet_path)
