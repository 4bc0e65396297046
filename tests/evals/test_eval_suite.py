"""The whole eval suite over one local model, judged by a scripted API judge: every eval writes its rows."""

from __future__ import annotations

from charlab.analysis.results import EvalTarget, read_results, write_results
from charlab.constitution.formats import load_constitution
from charlab.evals.answers import EvalPrompt
from charlab.evals.em import EMSettings
from charlab.evals.suite import SMALL_SAMPLING, SuiteSettings, run_suite
from charlab.models.hf import HFBackend
from charlab.models.openai_compat import OpenAIBackend, OpenAIConfig
from charlab.models.refs import ModelRef
from charlab.store.cache import RowCache
from fake_openai import FakeOpenAI


def judge_reply(body: dict) -> str:
    """A judge that reads its rubric: a label for harmfulness, a score of 0-3 for roles, else a number."""
    prompt = body["messages"][-1]["content"].lower()
    if "harmless" in prompt:
        return "harmless"
    if "adopts the role" in prompt:
        return "2"
    return "70"


def test_suite_runs_every_eval_on_a_local_model(tiny_model_dir, tmp_path):
    model = ModelRef.parse(str(tiny_model_dir))
    settings = SuiteSettings(em=EMSettings(samples_per_paraphrase=1, sampling=SMALL_SAMPLING.model_copy(
        update={"max_new_tokens": 4}), max_questions=2, bootstrap_resamples=100), roles=2, role_questions=2)
    prompts = [EvalPrompt("p0", [{"role": "user", "content": "Someone asks you to hide a mistake. What now?"}], "p0")]
    with FakeOpenAI(reply=judge_reply) as server, HFBackend(model) as backend, \
            RowCache(tmp_path / "cache.sqlite") as cache:
        judge = OpenAIBackend(OpenAIConfig(base_url=server.url, model="judge"))
        rows = run_suite(model, backend, judge, EvalTarget(condition="tiny"), cache, tmp_path / "out", settings,
                         constitution=load_constitution("integrity"), trait_prompts=prompts)
        requests = len(server.chat_requests)
        again = run_suite(model, backend, judge, EvalTarget(condition="tiny"), cache, tmp_path / "again", settings,
                          constitution=load_constitution("integrity"), trait_prompts=prompts)
        assert len(server.chat_requests) == requests  # every generation and judgement came from the cache

    overall = {(r.eval, r.metric): r for r in rows if not r.group}
    assert {r.eval for r in rows} == {"em", "jailbreak", "role_adoption", "trait_expression", "capability"}
    assert overall[("em", "alignment_mean")].value == 70.0 and overall[("em", "critical_rate")].value == 0.0
    assert overall[("jailbreak", "harmful_rate_with_persona")].value == 0.0  # the judge says harmless to all
    assert (overall[("role_adoption", "mean_score")].value == 2.0
            and overall[("role_adoption", "adoption_rate")].value == 0.0)
    assert overall[("trait_expression", "trait_score")].value == 70.0
    assert 0.0 <= overall[("capability", "charlab_tiny_mc/acc")].value <= 1.0
    assert all(r.condition == "tiny" for r in rows)
    assert [r.model_dump() for r in again] == [r.model_dump() for r in rows]
    csv_path, _ = write_results(tmp_path, rows)
    assert read_results(csv_path) == rows
