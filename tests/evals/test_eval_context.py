"""The context-sensitivity evaluation wired end to end: tiny model, fake mode judge, a fixed axis."""

from __future__ import annotations

import json
import zlib

import pytest
import torch

from charlab.analysis.results import EvalTarget, read_results
from charlab.errors import ConfigError
from charlab.evals.context import ContextSettings, run_context, subset
from charlab.evals.situations import MODES, load_situations
from charlab.interp.activations import load_activations
from charlab.interp.axis import Axis
from charlab.judges.judge import Judge, JudgeConfig
from charlab.judges.rubrics import load_rubric
from charlab.models.base import SamplingParams
from charlab.models.hf import HFBackend
from charlab.models.openai_compat import OpenAIBackend, OpenAIConfig
from charlab.models.refs import ModelRef
from charlab.store.cache import RowCache
from fake_openai import FakeOpenAI

pytestmark = pytest.mark.timeout(300)

SETTINGS = ContextSettings(types=3, prompts_per_type=2, personas=["You are a lighthouse keeper."],
                           sampling=SamplingParams(temperature=1.0, max_new_tokens=6), folds=2, resamples=50,
                           probe_steps=20)


def mode_of(body: dict) -> str:
    """A judged mode that depends only on the reply, so reruns and paraphrases are deterministic."""
    prompt = body["messages"][-1]["content"]
    return MODES[zlib.crc32(prompt.split("<<<REPLY", 1)[1].encode()) % len(MODES)]


def test_subset_takes_the_first_types_prompts_and_phrasings():
    suite = subset(load_situations(), ContextSettings(types=2, prompts_per_type=3, paraphrases=1))
    assert len(suite.types) == 2 and all(len(t.prompts) == 3 for t in suite.types)
    assert suite.paraphrase_count == 1


def test_context_eval_on_the_tiny_model(tiny_model_dir, tmp_path):
    torch.manual_seed(0)
    axis = Axis(torch.randn(2, 64), [0, 1], {"source": "test"})
    target = EvalTarget(condition="base")
    with FakeOpenAI(reply=mode_of) as server, RowCache(tmp_path / "cache.sqlite") as cache, \
            HFBackend(ModelRef(base=str(tiny_model_dir)), batch_size=4, dtype="float32") as backend:
        judge = Judge(OpenAIBackend(OpenAIConfig(base_url=server.url, model="judge")), load_rubric("response_mode"),
                      JudgeConfig(method="sample"))
        run = run_context(backend, judge, load_situations(), SETTINGS, target, cache, tmp_path / "ctx", axis=axis)
        asked = len(server.chat_requests)
        again = run_context(backend, judge, load_situations(), SETTINGS, target, cache, tmp_path / "ctx2", axis=axis)
        assert len(server.chat_requests) == asked  # answers and judgements all cached
    assert again.rows == run.rows

    # 3 types x 2 prompts x 2 phrasings x (no persona + 1 persona), minus empty answers.
    rows = [json.loads(line) for line in (tmp_path / "ctx" / "rows.jsonl").read_text().splitlines()]
    assert len(rows) == 24 - run.dropped_empty and asked == len(rows)
    acts, meta = load_activations(tmp_path / "ctx" / "activations")
    assert acts.values.shape == (len(rows), 1, 64) and meta["layer"] == axis.middle_layer
    unit = axis.at(axis.middle_layer) / axis.at(axis.middle_layer).norm()
    manual = (acts.values[:, 0] @ unit).tolist()
    assert [r["projection"] for r in rows] == pytest.approx(manual, abs=1e-5)
    assert all(r["mean_logprob"] < 0 for r in rows)
    drawn = [json.loads(line) for line in (tmp_path / "ctx" / "projections.jsonl").read_text().splitlines()]
    assert [d["value"] for d in drawn] == [r["projection"] for r in rows]
    assert {d["set"] for d in drawn} == {"situations", "situations, persona prompt"}

    table = {(r.metric, r.group): r for r in read_results(tmp_path / "ctx" / "results.csv")}
    plain = [r for r in rows if r["system_index"] == 0]
    hits = sum(r["mode"] == r["expected_mode"] for r in plain)
    assert table[("expected_mode_rate", "")].value == pytest.approx(hits / len(plain))
    for metric in ("probe_accuracy", "probe_chance", "variance_ratio", "mode_nmi", "paraphrase_mode_agreement",
                   "persona_mode_agreement", "persona_projection_icc", "persona_projection_shift", "axis_projection"):
        assert (metric, "") in table, metric
    assert {g for m, g in table if m == "probe_accuracy" and g} <= {t.id for t in load_situations().types[:3]}
    report = (tmp_path / "ctx" / "context.md").read_text()
    assert "discrimination (context sensitivity)" in report and "invariance (hardening)" in report


def test_an_api_model_gets_the_behavioural_metrics_only(tmp_path):
    with FakeOpenAI(reply=lambda body: "A reply" if "<<<REPLY" not in body["messages"][-1]["content"]
                    else mode_of(body)) as server, RowCache(tmp_path / "cache.sqlite") as cache:
        model = OpenAIBackend(OpenAIConfig(base_url=server.url, model="student"))
        judge = Judge(OpenAIBackend(OpenAIConfig(base_url=server.url, model="judge")), load_rubric("response_mode"),
                      JudgeConfig(method="sample"))
        run = run_context(model, judge, load_situations(), SETTINGS, EvalTarget(), cache, tmp_path / "ctx")
    metrics = {r.metric for r in run.rows}
    assert "expected_mode_rate" in metrics and "probe_accuracy" not in metrics and "axis_projection" not in metrics
    assert not (tmp_path / "ctx" / "activations").exists()


def test_a_judge_without_the_mode_labels_is_refused(tmp_path):
    judge = Judge(OpenAIBackend(OpenAIConfig(base_url="http://127.0.0.1:9", model="judge")),
                  load_rubric("harmfulness"), JudgeConfig(method="sample"))
    with RowCache(tmp_path / "cache.sqlite") as cache, pytest.raises(ConfigError, match="response_mode"):
        run_context(None, judge, load_situations(), SETTINGS, EvalTarget(), cache, tmp_path / "ctx")


def test_cli_context_with_an_api_model(tmp_path):
    from typer.testing import CliRunner

    from charlab.cli.eval import app

    with FakeOpenAI(reply=lambda body: "A reply" if "<<<REPLY" not in body["messages"][-1]["content"]
                    else mode_of(body)) as server:
        judge, model = tmp_path / "judge.yaml", tmp_path / "model.yaml"
        judge.write_text(f'backend: {{kind: openai, openai: {{base_url: "{server.url}", model: judge}}}}\n'
                         "rubric: coherence\n")
        model.write_text(f'kind: openai\nopenai: {{base_url: "{server.url}", model: student}}\n')
        settings = tmp_path / "ctx.yaml"
        settings.write_text("types: 2\nprompts_per_type: 2\npersonas: []\nresamples: 20\n")
        result = CliRunner().invoke(app, ["context", "--backend", str(model), "--judge", str(judge), "--settings",
                                          str(settings), "--out", str(tmp_path / "out"), "--cache",
                                          str(tmp_path / "c.sqlite"), "--condition", "neutral"])
    assert result.exit_code == 0, result.output
    rows = read_results(tmp_path / "out" / "results.csv")
    assert {r.condition for r in rows} == {"neutral"} and "mode_nmi" in {r.metric for r in rows}
    assert "invariance (hardening)" in (tmp_path / "out" / "context.md").read_text()
