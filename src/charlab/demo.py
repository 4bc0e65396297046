"""The CPU demo: the default model answers a constitution's prompts as teacher and as student.

This is the first slice of the study the later stages grow into. It reads top to bottom:
fetch the model, load the shipped value constitution, pick one seed question per trait, let the
model answer each with the constitution in its system prompt (teacher) and with none (student),
and write both plus a side-by-side summary into a run folder. Generations go through the row
cache and the step manifest, so a rerun is instant and a killed run resumes.
"""

from __future__ import annotations

import html
from dataclasses import dataclass
from pathlib import Path

from charlab.constitution import Constitution, load_constitution
from charlab.generate import generate_cached, write_generation_records
from charlab.io import atomic_write_text
from charlab.models.base import GenerationRequest, SamplingParams
from charlab.models.builtin import fetch_builtin
from charlab.models.refs import ModelRef
from charlab.pipeline.distill import student_messages, teacher_messages
from charlab.store.artifacts import Run
from charlab.store.cache import RowCache

DEMO_VERSION = "demo-v1"


@dataclass(frozen=True)
class DemoSettings:
    """Knobs of the demo; the defaults fit a 2-core laptop in about a minute."""

    model: str = "builtin:smollm2-135m"
    constitution: str = "integrity"
    assistant_name: str = "SmolLM"  # the name the default model's own template uses
    n_prompts: int = 6
    max_new_tokens: int = 96
    temperature: float = 0.7  # the published recipe's sampling
    top_p: float = 0.95
    repetition_penalty: float = 1.1
    seed: int = 0


def demo_prompts(constitution: Constitution, n: int) -> list[tuple[str, str]]:
    """(trait statement, question) pairs: the first seed question of each of the first n traits."""
    return [(t.statement, t.questions[0].text) for t in constitution.traits[:n]]


def run_demo(out: str | Path, settings: DemoSettings = DemoSettings(), cache_path: str | Path | None = None) -> Path:
    """Run the demo into ``out`` and return the path of the Markdown summary."""
    from charlab.models.hf import HFBackend

    if settings.model.startswith("builtin:"):
        fetch_builtin(settings.model.removeprefix("builtin:"))
    constitution = load_constitution(settings.constitution)
    prompts = demo_prompts(constitution, settings.n_prompts)
    sampling = SamplingParams(temperature=settings.temperature, top_p=settings.top_p,
                              max_new_tokens=settings.max_new_tokens,
                              repetition_penalty=settings.repetition_penalty)
    teacher = [GenerationRequest.make(teacher_messages(constitution, settings.assistant_name, q), sampling, settings.seed)
               for _, q in prompts]
    student = [GenerationRequest.make(student_messages(q), sampling, settings.seed) for _, q in prompts]

    run = Run(out)
    backend = HFBackend(ModelRef.parse(settings.model), batch_size=len(teacher) + len(student))
    step = run.step("demo-distill", {"model": backend.fingerprint, "constitution": constitution.model_dump(mode="json"),
                                     "settings": settings.__dict__}, version=DEMO_VERSION, label="demo")
    if not step.done:
        with step.running(), RowCache(cache_path) as cache:
            generations = generate_cached(backend, teacher + student, cache)
            write_generation_records(step.path("teacher.jsonl"), backend.fingerprint, teacher, generations[:len(teacher)])
            write_generation_records(step.path("student.jsonl"), backend.fingerprint, student, generations[len(teacher):])
            summary = _summary(constitution, settings, prompts, generations[:len(teacher)], generations[len(teacher):])
            atomic_write_text(step.path("summary.md"), summary.markdown)
            atomic_write_text(step.path("summary.html"), summary.html)
            stats = generations.stats
            step.finish(counts={"prompts": len(prompts), "generations": len(generations), "cache_hits": stats.hits},
                        tokens={"prompt": stats.prompt_tokens, "completion": stats.completion_tokens})
    backend.close()
    for name in ("summary.md", "summary.html"):
        atomic_write_text(run.path / name, step.path(name).read_text(encoding="utf-8"))
    return run.path / "summary.md"


@dataclass
class _Summary:
    markdown: str
    html: str


def _summary(constitution, settings, prompts, teacher, student) -> _Summary:
    intro = (f"Model `{settings.model}`, constitution `{constitution.name}`, sampling temperature "
             f"{settings.temperature}, top_p {settings.top_p}, repetition penalty {settings.repetition_penalty}, "
             f"seed {settings.seed}. Teacher = the constitution in the system prompt; student = no system prompt. "
             "A 135M model gives demo output, not findings.")
    md = [f"# charlab demo: teacher vs student on `{constitution.name}`", "", intro, ""]
    page = [f"<h1>charlab demo: teacher vs student on <code>{html.escape(constitution.name)}</code></h1>",
            f"<p>{html.escape(intro)}</p>"]
    for i, ((trait, question), t, s) in enumerate(zip(prompts, teacher, student), start=1):
        md += [f"## {i}. {question}", "", f"*Trait:* {trait}", "",
               f"**Teacher** ({t.finish_reason}, {t.completion_tokens} tokens):", "", _quote(t.text), "",
               f"**Student** ({s.finish_reason}, {s.completion_tokens} tokens):", "", _quote(s.text), ""]
        page.append(
            f"<h2>{i}. {html.escape(question)}</h2><p><em>Trait:</em> {html.escape(trait)}</p>"
            "<table><tr><th>Teacher (constitution in system prompt)</th><th>Student (no system prompt)</th></tr>"
            f"<tr><td>{html.escape(t.text)}</td><td>{html.escape(s.text)}</td></tr></table>")
    style = ("body{font-family:system-ui,sans-serif;max-width:60rem;margin:2rem auto;padding:0 1rem;line-height:1.45}"
             "table{border-collapse:collapse;width:100%}td,th{border:1px solid #ccc;padding:.5rem;vertical-align:top;"
             "width:50%;white-space:pre-wrap;text-align:left}th{background:#f3f3f3}")
    document = (f"<!doctype html><html><head><meta charset='utf-8'><title>charlab demo</title><style>{style}</style>"
                f"</head><body>{''.join(page)}</body></html>\n")
    return _Summary("\n".join(md) + "\n", document)


def _quote(text: str) -> str:
    return "\n".join("> " + line for line in (text.strip() or "(empty)").splitlines())
