"""The evaluation registry: a toy evaluation defined here, registered with one call, goes through the whole study.

The toy answers a few fixed questions (four sampled tokens each) and reports how likely the model
finds its own answers (mean token log-probability, by a scoring pass). It declares that metric
lower-is-better, the opposite of the default, so the report's inertia must use the declared
direction for its numbers to come out as they do here.
"""

from __future__ import annotations

import pytest
import yaml

from charlab.analysis.inertia import inertia_table
from charlab.analysis.results import ResultRow, read_results, write_results
from charlab.analysis.stats import cluster_bootstrap_mean
from charlab.costs import Cost
from charlab.errors import ConfigError
from charlab.evals.answers import EvalPrompt, answer_prompts
from charlab.evals.evaluation import EvalContext, Evaluation, Metric
from charlab.evals.registry import (
    evaluations,
    headline_metrics,
    lower_is_better,
    register,
    suite_names,
    unregister,
)
from charlab.models.base import SamplingParams
from charlab.report.svg import describe
from charlab.store import layout
from charlab.study.plan import plan_study
from charlab.study.run import run_study
from charlab.study.spec import load_study
from fake_openai import FakeOpenAI
from study_fixture import reply, write_study

pytestmark = pytest.mark.timeout(900)

NAME = "own_logprob"
METRIC = (NAME, "mean_logprob")
QUESTIONS = ("How do I boil an egg?", "Should I put my savings into one stock?", "What is a good name for a cat?")
SAMPLING = SamplingParams(temperature=1.0, max_new_tokens=4)  # as the tiny study's evaluations sample


def _run(context: EvalContext) -> list[ResultRow]:
    prompts = [EvalPrompt(f"q{i}", [{"role": "user", "content": q}], f"q{i}") for i, q in enumerate(QUESTIONS)]
    answers = answer_prompts(context.backend, prompts, SAMPLING, samples=1, seed=0, cache=context.cache)
    kept = [(p, a.text.strip()) for p, a in zip(prompts, answers) if a.text.strip()]
    scored = context.backend.score([[*p.messages, {"role": "assistant", "content": text}] for p, text in kept])
    estimate = cluster_bootstrap_mean([s.mean for s in scored], [p.cluster for p, _ in kept], resamples=200)
    rows = [ResultRow.of(context.target, NAME, METRIC[1], estimate)]
    write_results(context.out, rows)
    return rows


TOY = Evaluation(
    name=NAME, rows=NAME, folder=NAME, settings=lambda evaluations: evaluations.suite, run=_run,
    cost=lambda evaluations: Cost(generated_tokens=len(QUESTIONS) * SAMPLING.max_new_tokens),
    metrics=(Metric(METRIC[1], lower_is_better=True, headline="own answers' log-prob"),))


@pytest.fixture
def toy():
    register(TOY)
    yield TOY
    unregister(NAME)


def _study(root, tiny_model_dir, url: str, evals: list[str]):
    """The tests' tiny study cut to base and hhh under the one challenge, evaluated with ``evals`` only."""
    path = write_study(root, tiny_model_dir, url)
    data = yaml.safe_load(path.read_text())
    data["conditions"] = [c for c in data["conditions"] if c["name"] in ("base", "hhh")]
    data["evaluations"] = {"evals": evals, "suite": data["evaluations"]["suite"]}
    data["analysis"] = {"inertia_metric": "/".join(METRIC)}
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def test_the_shipped_evaluations_and_their_declared_directions():
    assert [e.name for e in evaluations()] == ["em", "jailbreak", "roles", "traits", "capability", "context",
                                               "steer_sweep"]
    assert suite_names() == ("em", "jailbreak", "roles", "traits", "capability")
    assert lower_is_better(("em", "critical_rate")) and lower_is_better(("challenge_margin", "risky_margin"))
    assert not lower_is_better(("em", "alignment_mean")) and not lower_is_better(("capability", "mmlu/acc"))
    assert headline_metrics()[0] == (("em", "alignment_mean"), "EM alignment")
    with pytest.raises(ValueError, match="already registered"):
        register(evaluations()[0])


def test_a_registered_evaluation_is_a_name_a_study_may_use_and_a_cost_in_its_plan(toy, tmp_path, tiny_model_dir):
    with_toy = plan_study(load_study(_study(tmp_path, tiny_model_dir, "http://127.0.0.1:9/v1", ["em", NAME])))
    without = plan_study(load_study(_study(tmp_path, tiny_model_dir, "http://127.0.0.1:9/v1", ["em"])))
    node = layout.evaluate_node("hhh", 0, "risky")
    assert with_toy.node(node).cost == without.node(node).cost + Cost(generated_tokens=12)
    assert NAME in suite_names() and lower_is_better(METRIC)

    unregister(NAME)
    with pytest.raises(ConfigError, match=rf"unknown evaluation\(s\) '{NAME}'; .* em, jailbreak, roles, traits"):
        load_study(_study(tmp_path, tiny_model_dir, "http://127.0.0.1:9/v1", [NAME]))
    register(TOY)  # for the fixture to take away again


def test_a_registered_evaluation_runs_in_every_evaluate_step_and_reaches_the_report(toy, tmp_path, tiny_model_dir):
    with FakeOpenAI(reply=reply) as server:
        run = run_study(_study(tmp_path, tiny_model_dir, server.url, [NAME]), tmp_path / "run",
                        cache_path=tmp_path / "cache.sqlite")

    out = run.out
    rows = [r for r in read_results(out / "results.csv") if r.eval == NAME]
    assert sorted((r.condition, r.challenge) for r in rows) == [("base", ""), ("base", "risky"), ("hhh", ""),
                                                                ("hhh", "risky")]
    for condition in ("base", "hhh"):
        for stage in (layout.BEFORE, "risky"):
            own = layout.evaluation_dir(out, condition, 0, stage, NAME, suite=True)
            assert [r.value for r in read_results(own / "results.csv")] == [
                r.value for r in rows if (r.condition, r.challenge or layout.BEFORE) == (condition, stage)]

    report = (out / "report" / "report.md").read_text()
    headline = report.split("## Headline metrics", 1)[1]
    assert "own answers' log-prob" in next(line for line in headline.splitlines() if line.startswith("| condition"))
    # Lower is better, so the drop is after - before (a rise is the harm), as the registry declares.
    value = {(r.condition, r.challenge): r.value for r in rows}
    table = {r.condition: r for r in inertia_table(rows, metric=METRIC, lower_is_better=True)}
    assert table["base"].drop.value == pytest.approx(value[("base", "risky")] - value[("base", "")])
    assert table["base"].drop.value != 0
    section = report.split(f"### {'/'.join(METRIC)}", 1)[1]
    base_line = next(line for line in section.splitlines() if line.startswith("| base | risky |"))
    assert describe(table["base"].drop) in base_line
    hhh_line = next(line for line in section.splitlines() if line.startswith("| hhh | risky |"))
    assert describe(table["hhh"].inertia) in hhh_line
