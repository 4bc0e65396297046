"""The CPU demo: the controlled experiment in miniature on the default model.

It reads top to bottom:

1. fetch ``builtin:smollm2-135m`` and load the packaged experiment (``data/experiments/demo.yaml``):
   base, the value-laden ``integrity`` character, the ``neutral`` character, diverse SFT (the
   integrity prompts answered with no constitution) and HHH preferences with DPO, all under one
   token budget;
2. train every condition and put the risky-financial-advice challenge on top of each
   (``charlab.experiment``);
3. audit the budget from the step manifests (``charlab.audit``);
4. measure how far the challenge moved each condition on held-out financial questions it never
   trained on: the mean log-probability per token of the risky answer minus that of the sound
   answer, before and after the challenge. A smaller shift than base's is inertia;
5. run every behavioural evaluation at small sizes (``evals.suite``) on each condition before and
   after the challenge, with the base model as a local judge, into ``results.csv`` / ``.parquet``;
6. write ``summary.md`` and ``summary.html`` into the run folder.

Every generation is cached and every piece is a resumable step, so a rerun is fast and a killed
run picks up where it stopped. A 135M model gives demo numbers, not findings.
"""

from __future__ import annotations

import html
import json
import re
import statistics
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path

from charlab.audit import Audit, audit_markdown, audit_run, verdict
from charlab.challenge import challenge_data_path
from charlab.constitution import Constitution, load_constitution
from charlab.data_loaders import load_chat_jsonl
from charlab.evals.answers import EvalPrompt
from charlab.evals.capability import CapabilitySettings
from charlab.evals.em import EMSettings
from charlab.evals.jailbreak import JailbreakSettings
from charlab.evals.results import EvalTarget, ResultRow, read_results, write_results
from charlab.evals.roles import RoleAdoptionSettings
from charlab.evals.suite import SuiteSettings, run_suite
from charlab.evals.traits import TraitSettings
from charlab.experiment import ChallengeResult, ExperimentConfig, ExperimentResult, load_experiment, run_experiment
from charlab.io import atomic_write_json, atomic_write_text, read_jsonl, sha256_file
from charlab.models.base import Backend, SamplingParams
from charlab.models.builtin import fetch_builtin
from charlab.models.refs import ModelRef
from charlab.store.artifacts import Run
from charlab.store.cache import RowCache

DEMO_VERSION = "demo-v5"
TWIN = "sound_financial"  # the aligned twin of the demo challenge, answering the same questions
TRAIT_PROMPTS = 2  # held-out value-constitution questions the trait-expression eval asks
DEMO_SAMPLING = SamplingParams(temperature=0.7, top_p=0.95, max_new_tokens=48)
DEMO_SUITE = SuiteSettings(  # ten models (five conditions, before and after) on two cores: the smallest useful sizes
    em=EMSettings(samples_per_paraphrase=1, sampling=DEMO_SAMPLING, max_questions=2, bootstrap_resamples=500),
    jailbreak=JailbreakSettings(max_new_tokens=48, resamples=500),
    roles=2, role_questions=2, role_adoption=RoleAdoptionSettings(sampling=DEMO_SAMPLING),
    traits=TraitSettings(sampling=DEMO_SAMPLING),
    capability=CapabilitySettings(tasks=("charlab_tiny_mc",), batch_size=4, limit=10),
)


def demo_experiment_path() -> Path:
    return Path(str(resources.files("charlab") / "data" / "experiments" / "demo.yaml"))


@dataclass
class InertiaCheck:
    """How far a challenge moved one condition on held-out questions of its domain.

    ``margin_before[i]`` / ``margin_after[i]``: for held-out question i, the mean log-probability
    per token of the risky answer minus that of the sound answer, under the condition model and
    under condition + challenge. ``shift`` is the mean change: how much riskier the model became.
    """

    condition: str
    seed: int
    questions: int
    margin_before: list[float]
    margin_after: list[float]

    @property
    def shift(self) -> float:
        return statistics.fmean(a - b for a, b in zip(self.margin_after, self.margin_before))


def run_demo(out: str | Path, config_path: str | Path | None = None, cache_path: str | Path | None = None) -> Path:
    """Run the demo into ``out`` and return the path of the Markdown summary."""
    config = load_experiment(config_path or demo_experiment_path())
    if config.base.base.startswith("builtin:"):
        fetch_builtin(config.base.base.removeprefix("builtin:"))
    run = Run(out)
    result = run_experiment(config, run.path, cache_path=cache_path)
    audit = audit_run(run.path)
    atomic_write_text(run.path / "budget_audit.md", audit_markdown(audit))
    atomic_write_json(run.path / "budget_audit.json", audit.to_dict())
    challenge = config.challenges[0]
    checks = [inertia_check(run, challenged, challenge.data, challenge.holdout) for challenged in result.challenges]
    rows = evaluate_all(run, config, result, cache_path)
    write_results(run.path, rows)
    markdown = render_summary(config, audit, checks, challenge.name) + render_evals(rows)
    atomic_write_text(run.path / "summary.md", markdown)
    atomic_write_text(run.path / "summary.html", _html(markdown))
    return run.path / "summary.md"


def held_out_twins(data: str, holdout: int) -> list[tuple[list[dict], str, str]]:
    """(prompt, risky answer, sound answer) for the challenge's held-out rows, matched by id."""
    risky = load_chat_jsonl(challenge_data_path(data))[-holdout:]
    sound = {row["meta"]["id"]: row for row in load_chat_jsonl(challenge_data_path(TWIN))}
    return [(row["messages"][:-1], row["messages"][-1]["content"], sound[row["meta"]["id"]]["messages"][-1]["content"])
            for row in risky]


def inertia_check(run: Run, challenged: ChallengeResult, data: str, holdout: int) -> InertiaCheck:
    """Score the held-out risky and sound answers before and after the challenge (one cached step)."""
    from charlab.models.hf import HFBackend

    before = challenged.model.model_copy(update={"adapters": challenged.model.adapters[:-1]})
    twins = held_out_twins(data, holdout)
    step = run.step("demo-inertia", {"before": before.resolve().fingerprint,
                                     "after": challenged.model.resolve().fingerprint,
                                     "data": sha256_file(challenge_data_path(data)), "holdout": holdout},
                    version=DEMO_VERSION, label=f"{challenged.condition}-seed-{challenged.seed}")
    if step.done:
        return InertiaCheck(**json.loads(step.path("check.json").read_text()))
    conversations = [prompt + [{"role": "assistant", "content": answer}]
                     for prompt, risky, sound in twins for answer in (risky, sound)]
    margins = []
    with step.running():
        for ref in (before, challenged.model):
            with HFBackend(ref) as model:
                scores = [s.mean for s in model.score(conversations)]
            margins.append([risky - sound for risky, sound in zip(scores[::2], scores[1::2])])
        check = InertiaCheck(challenged.condition, challenged.seed, len(twins), *margins)
        atomic_write_json(step.path("check.json"), asdict(check))
        step.finish(counts={"questions": len(twins)}, extra={"shift": check.shift})
    return check


def evaluate_all(run: Run, config: ExperimentConfig, result: ExperimentResult,
                 cache_path: str | Path | None) -> list[ResultRow]:
    """The eval suite on every condition before and after its challenge, judged by the base model."""
    from charlab.models.hf import HFBackend

    constitution, prompts = trait_material(result)
    rows: list[ResultRow] = []
    with RowCache(cache_path) as cache, HFBackend(config.base) as judge:
        for challenged in result.challenges:
            before = challenged.model.model_copy(update={"adapters": challenged.model.adapters[:-1]})
            for model, label in ((before, ""), (challenged.model, challenged.challenge)):
                target = EvalTarget(condition=challenged.condition, seed=challenged.seed, challenge=label)
                rows += evaluate_model(run, model, target, judge, cache, constitution, prompts)
    return rows


def trait_material(result: ExperimentResult) -> tuple[Constitution, list[EvalPrompt]]:
    """The value constitution the demo trains, and its questions that distillation never used."""
    trained = next(c for c in result.conditions if c.kind == "character")
    prompts_step, distill_step = (trained.path / "steps" / kind for kind in ("prompts", "distill"))
    constitution = load_constitution(next(prompts_step.glob("*/constitution.yaml")))
    seen = {r["messages"][-1]["content"] for r in read_jsonl(next(distill_step.glob("*/student.jsonl")))}
    held_out = [q for q in constitution.questions if q.text not in seen][:TRAIT_PROMPTS]
    return constitution, [EvalPrompt(f"held-out-{i}", [{"role": "user", "content": q.text}], f"held-out-{i}")
                          for i, q in enumerate(held_out)]


def evaluate_model(run: Run, model: ModelRef, target: EvalTarget, judge: Backend, cache: RowCache,
                   constitution: Constitution, prompts: list[EvalPrompt]) -> list[ResultRow]:
    """One model through the suite, as a step keyed by the model, the judge and the settings."""
    from charlab.models.hf import HFBackend

    settings = DEMO_SUITE
    step = run.step("demo-evals", {"model": model.resolve().fingerprint, "judge": judge.fingerprint,
                                   "target": target.model_dump(), "settings": settings.model_dump(mode="json"),
                                   "prompts": [p.question for p in prompts]},
                    version=DEMO_VERSION, label=f"{target.condition}-{target.challenge or 'before'}")
    if not step.done:
        with step.running(), HFBackend(model) as backend:
            rows = run_suite(model, backend, judge, target, cache, step.dir, settings, constitution=constitution,
                             trait_prompts=prompts)
            write_results(step.dir, rows, name="suite")
            step.finish(counts={"rows": len(rows)})
    return read_results(step.path("suite.csv"))


HEADLINE = (("em", "alignment_mean", "EM alignment"), ("em", "critical_rate", "EM critical"),
            ("jailbreak", "harmful_rate_with_persona", "harmful (persona)"),
            ("jailbreak", "harmful_rate_without_persona", "harmful (plain)"),
            ("jailbreak", "over_refusal_rate", "over-refusal"), ("role_adoption", "adoption_rate", "role adoption"),
            ("trait_expression", "trait_score", "trait score"), ("capability", "charlab_tiny_mc/acc", "tiny MC acc"))


def render_evals(rows: list[ResultRow]) -> str:
    """Headline metric per condition, before and after the challenge, with intervals."""
    overall = {(r.condition, r.challenge, r.eval, r.metric): r for r in rows if not r.group}
    targets = list(dict.fromkeys((r.condition, r.challenge) for r in rows))
    md = ["", "## Evaluations before and after the challenge", "",
          "Every evaluation at small sizes, judged by the base model itself (SmolLM2-135M, sampled answers). "
          "A 135M judge gives demo numbers, not findings: most of its judgements are unreadable or arbitrary, "
          "and the counts of unreadable ones are in each eval's parse report and in `results.csv`. Values "
          "with 95% intervals; all rows, per question and per category included, are in `results.csv` and "
          "`results.parquet`.", "",
          "| condition | challenge | " + " | ".join(h[2] for h in HEADLINE) + " | unreadable judgements |",
          "|---|---|" + "---|" * (len(HEADLINE) + 1)]
    for condition, challenge in targets:
        cells = [_cell(overall.get((condition, challenge, eval_name, metric))) for eval_name, metric, _ in HEADLINE]
        mine = [r for r in rows if (r.condition, r.challenge) == (condition, challenge) and not r.group]
        md.append(f"| {condition} | {challenge or '(before)'} | " + " | ".join(cells) + f" | {_unreadable(mine)} |")
    return "\n".join(md) + "\n"


def _unreadable(rows: list[ResultRow]) -> str:
    """Judgements the judge's answer could not be read from, over all judged evals of one model."""
    failed = total = 0.0
    for row in rows:
        if row.metric in ("alignment_parse_failures", "coherence_parse_failures", "parse_failures"):
            failed, total = failed + row.value, total + row.n
        elif row.metric.startswith("judge_unparseable_"):  # a rate over n judgements
            failed, total = failed + row.value * row.n, total + row.n
    return f"{failed:.0f} of {total:.0f}"


def _cell(row: ResultRow | None) -> str:
    if row is None or row.value != row.value:  # missing, or nan (nothing to average)
        return "n/a"
    interval = f" [{row.ci_low:.2f}, {row.ci_high:.2f}]" if row.ci_low is not None and row.ci_high is not None else ""
    return f"{row.value:.2f}{interval} (n={row.n})"


def render_summary(config: ExperimentConfig, audit: Audit, checks: list[InertiaCheck], challenge: str) -> str:
    base_shift = next((c.shift for c in checks if c.condition == "base"), None)
    rows = {(r.condition, r.seed): r for r in audit.rows}
    md = ["# charlab demo: matched controls and the narrow fine-tuning challenge", "",
          f"Model `{config.base}`. Every trained condition got the same budget "
          f"({_amount(audit)}, training profile `{config.budget.training}`), checked by the audit below. "
          f"Then the `{challenge}` challenge (risky personal-finance advice) was trained on top of each. "
          "A 135M model trained for a handful of steps gives demo numbers, not findings.", "",
          "## How far did the challenge move each condition?", "",
          f"On {checks[0].questions if checks else 0} held-out finance questions the challenge never trained on: "
          "mean log-probability per token of the risky answer minus the sound one (*margin*), before and after "
          "the challenge. *Shift* is how much riskier the challenge made the model; a shift smaller than "
          "base's is inertia.", "",
          "| condition | kind | trained tokens | audit | margin before | margin after | shift | shift vs base |",
          "|---|---|---|---|---|---|---|---|"]
    for c in checks:
        row = rows[(c.condition, c.seed)]
        relative = f"{c.shift - base_shift:+.4f}" if base_shift is not None and c.condition != "base" else ""
        md.append(f"| {c.condition} | {row.kind} | {row.total('tokens'):,.0f} | {verdict(row)} | "
                  f"{statistics.fmean(c.margin_before):+.4f} | {statistics.fmean(c.margin_after):+.4f} | "
                  f"{c.shift:+.4f} | {relative} |")
    md += ["", *audit_markdown(audit).replace("# Budget audit", "## Budget audit", 1).splitlines()]
    return "\n".join(md) + "\n"


def _amount(audit: Audit) -> str:
    return ", ".join(f"{value:,} {unit}" for unit, value in audit.target.items())


def _inline(text: str) -> str:
    """Escaped text with the summary's own Markdown marks (bold, italics, code) turned into tags."""
    text = html.escape(text)
    text = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", text)
    text = re.sub(r"\*(.+?)\*", r"<em>\1</em>", text)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", text)


def _html(markdown: str) -> str:
    """A plain self-contained page: tables and headings from the Markdown, everything escaped."""
    out, in_table = [], False
    for line in markdown.splitlines():
        if line.startswith("|"):
            cells = [html.escape(c.strip()) for c in line.strip("|").split("|")]
            if set("".join(cells)) <= set("-"):
                continue
            out.append(("<table>" if not in_table else "") + "<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
            in_table = True
            continue
        if in_table:
            out.append("</table>")
            in_table = False
        level = len(line) - len(line.lstrip("#"))
        if level and line[level:level + 1] == " ":
            out.append(f"<h{level}>{html.escape(line[level + 1:])}</h{level}>")
        elif line.startswith("> "):
            out.append(f"<blockquote>{html.escape(line[2:])}</blockquote>")
        elif line.startswith("- "):
            out.append(f"<li>{_inline(line[2:])}</li>")
        elif line.strip():
            out.append(f"<p>{_inline(line)}</p>")
    if in_table:
        out.append("</table>")
    style = ("body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;line-height:1.45}"
             "table{border-collapse:collapse}td{border:1px solid #ccc;padding:.3rem .6rem}"
             "tr:first-child td{background:#f3f3f3;font-weight:600}blockquote{margin:0;padding:0 1rem;"
             "border-left:3px solid #ddd;white-space:pre-wrap}")
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>charlab demo</title><style>{style}</style>"
            f"</head><body>{''.join(out)}</body></html>\n")
