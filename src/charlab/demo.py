"""The CPU demo: character-train the default model on two constitutions and look at the result.

It reads top to bottom:

1. fetch ``builtin:smollm2-135m`` and load the shipped ``integrity`` (value-laden) and
   ``neutral`` constitutions;
2. run the whole recipe on each (``charlab.pipeline.character`` with the ``demo`` profile:
   prompts, distill, pairs, DPO, introspection, SFT);
3. on held-out questions (never distilled), check that training moved the model toward its
   teacher: the mean log-probability per token of the teacher's held-out answers under the base
   model and under the trained model, and the two models' answers side by side;
4. write ``summary.md`` and ``summary.html`` into the run folder.

Every generation is cached and every stage is a resumable step, so a rerun is fast and a killed
run picks up where it stopped. A 135M model gives demo numbers, not findings.
"""

from __future__ import annotations

import html
import json
import re
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from charlab.constitution import load_constitution
from charlab.generate import generate_cached
from charlab.io import atomic_write_json, atomic_write_text, read_jsonl
from charlab.models.base import GenerationRequest, SamplingParams
from charlab.models.builtin import fetch_builtin
from charlab.models.refs import ModelRef
from charlab.pipeline.character import CharacterResult, load_character_config, train_character
from charlab.pipeline.distill import student_messages, teacher_messages
from charlab.store.artifacts import Run
from charlab.store.cache import RowCache

DEMO_VERSION = "demo-v4"


@dataclass(frozen=True)
class DemoSettings:
    """Knobs of the demo; the defaults fit a 2-core laptop."""

    model: str = "builtin:smollm2-135m"
    constitutions: tuple[str, ...] = ("integrity", "neutral")
    profile: str = "demo"  # recipe profile (charlab/data/character/demo.yaml)
    held_out: int = 4  # held-out questions per constitution for the before/after comparison
    max_new_tokens: int = 160
    seed: int = 0


MODELS = ("base", "dpo", "character")  # the three models each check scores under


@dataclass
class HeldOutCheck:
    """Base vs trained on questions the training never saw, and on the pairs it trained on.

    ``logprob[set][model]`` is, per conversation, the mean log-probability per token of the
    teacher's reply (no system prompt), for set ``held_out`` (teacher answers to unseen
    questions) or ``trained`` (the chosen replies of the DPO pairs), under each of ``MODELS``.
    """

    constitution: str
    questions: list[str]
    teacher: list[str]  # base model with the constitution in its system prompt
    base: list[str]  # base model, no system prompt
    trained: list[str]  # character model, no system prompt
    logprob: dict[str, dict[str, list[float]]] = field(default_factory=dict)

    def mean(self, subset: str, model: str) -> float:
        return statistics.fmean(self.logprob[subset][model])

    def moved_up(self, subset: str, model: str) -> int:
        """How many replies became more likely than under the base model."""
        return sum(t > b for t, b in zip(self.logprob[subset][model], self.logprob[subset]["base"]))


def run_demo(out: str | Path, settings: DemoSettings = DemoSettings(), cache_path: str | Path | None = None) -> Path:
    """Run the demo into ``out`` and return the path of the Markdown summary."""
    if settings.model.startswith("builtin:"):
        fetch_builtin(settings.model.removeprefix("builtin:"))
    base = ModelRef.parse(settings.model)
    config = load_character_config(settings.profile)
    run = Run(out)
    trained = {name: train_character(base, name, config, run.path / name, cache_path=cache_path, seed=settings.seed)
               for name in settings.constitutions}
    checks = [held_out_check(run, base, name, result, settings, cache_path) for name, result in trained.items()]
    summary = render_summary(settings, trained, checks)
    atomic_write_text(run.path / "summary.md", summary.markdown)
    atomic_write_text(run.path / "summary.html", summary.html)
    return run.path / "summary.md"


def held_out_check(run: Run, base: ModelRef, name: str, result: CharacterResult, settings: DemoSettings,
                   cache_path: str | Path | None) -> HeldOutCheck:
    """Answers on unseen questions, and log-likelihoods of teacher replies under base, DPO and character."""
    from charlab.models.hf import HFBackend

    constitution = load_constitution(result.steps["prompts"].path("constitution.yaml"))
    seen = {r["messages"][-1]["content"] for r in read_jsonl(result.steps["distill"].path("student.jsonl"))}
    questions = [q.text for q in constitution.questions if q.text not in seen][:settings.held_out]
    dpo_model = ModelRef(base=base.base, adapters=result.model.adapters[:1])
    step = run.step("demo-held-out", {"constitution": name, "model": result.model.resolve().fingerprint,
                                      "questions": questions, "max_new_tokens": settings.max_new_tokens,
                                      "seed": settings.seed}, version=DEMO_VERSION, label=name)
    if step.done:
        return HeldOutCheck(**json.loads(step.path("check.json").read_text()))
    sampling = SamplingParams(max_new_tokens=settings.max_new_tokens)  # greedy: one comparable answer each
    plain = [GenerationRequest.make(student_messages(q), sampling, settings.seed) for q in questions]
    pairs = read_jsonl(result.steps["pairs"].path("pairs.jsonl"))
    scored = {"trained": [p["prompt"] + p["chosen"] for p in pairs]}
    logprob: dict[str, dict[str, list[float]]] = {"held_out": {}, "trained": {}}
    with step.running(), RowCache(cache_path) as cache:
        for label, ref in zip(MODELS, (base, dpo_model, result.model)):
            with HFBackend(ref) as model:
                if label == "base":  # the teacher is the base model with the constitution as system prompt
                    teacher = generate_cached(model, [GenerationRequest.make(
                        teacher_messages(constitution, "SmolLM", q), sampling, settings.seed) for q in questions], cache)
                    base_answers = generate_cached(model, plain, cache)
                    scored["held_out"] = [student_messages(q) + [{"role": "assistant", "content": t.text}]
                                          for q, t in zip(questions, teacher)]
                for subset, conversations in scored.items():
                    logprob[subset][label] = [s.mean for s in model.score(conversations)]
                if label == "character":
                    trained_answers = generate_cached(model, plain, cache)
        check = HeldOutCheck(name, questions, [g.text for g in teacher], [g.text for g in base_answers],
                             [g.text for g in trained_answers], logprob)
        atomic_write_json(step.path("check.json"), check.__dict__)
        step.finish(counts={"questions": len(questions), "pairs": len(pairs)},
                    extra={"shift": {subset: check.mean(subset, "character") - check.mean(subset, "base")
                                     for subset in logprob}})
    return check


@dataclass
class _Summary:
    markdown: str
    html: str


def render_summary(settings: DemoSettings, trained: dict[str, CharacterResult], checks: list[HeldOutCheck]) -> _Summary:
    intro = (f"Model `{settings.model}`, recipe profile `{settings.profile}`, seed {settings.seed}. Each constitution "
             "went through the whole recipe (prompts, distill, pairs, DPO, introspection, SFT). A 135M model "
             "trained for a few steps gives demo numbers, not findings.")
    md = ["# charlab demo: character training on the default model", "", intro, "", "## Training", "",
          "| constitution | pairs | DPO steps | DPO tokens | SFT examples | SFT steps | SFT tokens |",
          "|---|---|---|---|---|---|---|"]
    for name, result in trained.items():
        dpo, sft = (result.steps[s].manifest["extra"]["compute"] for s in ("dpo", "sft"))
        pairs = result.steps["pairs"].manifest["counts"]["pairs"]
        md.append(f"| {name} | {pairs} | {dpo['optimizer_steps']} | {dpo['prompt_tokens'] + dpo['completion_tokens']} "
                  f"| {sft['examples']} | {sft['optimizer_steps']} | {sft['prompt_tokens'] + sft['completion_tokens']} |")
    md += ["", "## Did training move the model toward its teacher?", "",
           "Mean log-probability per token of teacher replies, scored without any system prompt, under the base "
           "model, after DPO, and after DPO + SFT (the character). *Trained pairs*: the chosen replies DPO trained "
           "on. *Held out*: the teacher's answers (base model with the constitution as system prompt) to questions "
           "the training never saw. Higher means closer to the teacher.", "",
           "| constitution | replies | base | after DPO | character | character - base | replies more likely |",
           "|---|---|---|---|---|---|---|"]
    for c in checks:
        for subset, label in (("trained", "trained pairs"), ("held_out", "held out")):
            md.append(f"| {c.constitution} | {label} | {c.mean(subset, 'base'):.4f} | {c.mean(subset, 'dpo'):.4f} | "
                      f"{c.mean(subset, 'character'):.4f} | {c.mean(subset, 'character') - c.mean(subset, 'base'):+.4f} "
                      f"| {c.moved_up(subset, 'character')} of {len(c.logprob[subset]['base'])} |")
    for c in checks:
        md += ["", f"## Held-out answers: {c.constitution}", ""]
        for q, b, t in zip(c.questions, c.base, c.trained):
            md += [f"### {q}", "", "**Base:**", "", _quote(b), "", "**Trained:**", "", _quote(t), ""]
    markdown = "\n".join(md) + "\n"
    return _Summary(markdown, _html(markdown))


def _quote(text: str) -> str:
    return "\n".join("> " + line for line in (text.strip() or "(empty)").splitlines())


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
