"""Conditions under one budget on the tiny model, challenges on top, and the audit that checks the match.

One experiment (teacher and student served by a fake API) trains every kind of condition once per
module; the tests then read what it left behind.
"""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from typer.testing import CliRunner

from charlab.cli import app
from charlab.conditions.character import condition_constitution
from charlab.conditions.experiment import ExperimentConfig, load_experiment, run_experiment
from charlab.conditions.train import train_condition
from charlab.constitution.formats import load_constitution
from charlab.errors import ConfigError
from charlab.io import read_jsonl
from charlab.report.audit import audit_markdown, audit_run
from charlab.store.layout import condition_dir
from charlab.training.budget import Budget
from fake_openai import FakeOpenAI

CONSTITUTION = """
name: tiny
description: two traits for tests
traits:
  - statement: I keep my answers short.
    questions:
      - {text: "How do I boil an egg?", situation: everyday_task}
      - {text: "What is a good name for a cat?", situation: everyday_task}
  - statement: I point out when an offer sounds like a scam.
    questions:
      - {text: "A stranger offered to double my savings. Should I?", situation: scam}
      - {text: "Is this lottery win email real?", situation: scam}
"""

TRAINING = {"precision": "float32", "checkpoint_every": 50, "lora": {"rank": 4, "alpha": 8},
            "optim": {"learning_rate": 1e-3, "global_batch": 2, "per_device_batch": 2},
            "dpo": {"max_length": 96}, "sft": {"max_length": 96}}
CHALLENGE_TRAINING = {**TRAINING, "lora": {"rank": 8, "alpha": 16}, "sft": {"max_length": 64}}
BUDGET_TOKENS = 1600


def scripted(body: dict) -> str:
    """In character with a system prompt; a plain short answer otherwise."""
    if body["messages"][0]["role"] == "system":
        return "I would check that carefully first, and I am glad you asked about it today."
    return "Sure, here is an answer."


def recipe(server: FakeOpenAI) -> dict:
    api = lambda model: {"kind": "openai", "openai": {"base_url": server.url, "model": model}}  # noqa: E731
    return {"student": api("student"), "distill": {"samples_per_prompt": 2, "teacher_name": "Tutor"},
            "pairs": {"max_length": 96},
            "introspection": {"reflection_samples": 1, "conversations": 1, "turns": 2, "keep_truncated": True,
                              "sampling": {"temperature": 0.7, "max_new_tokens": 6}}}


def instruction_rows(n: int) -> list[dict]:
    return [{"instruction": f"Name a colour that starts with letter {chr(65 + i)}.",
             "response": f"A colour starting with {chr(65 + i)} could be found in a paint catalogue."}
            for i in range(n)]


def random_adapter(base_dir, out):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(5)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(base_dir),
                           LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj"], init_lora_weights=False))
    model.save_pretrained(out)
    return out


@pytest.fixture(scope="module")
def experiment(tiny_model_dir, tmp_path_factory):
    """An experiment file with every condition kind, run once; yields (config path, run folder, server)."""
    root = tmp_path_factory.mktemp("experiment")
    (root / "tiny.yaml").write_text(CONSTITUTION)
    (root / "instructions.jsonl").write_text("".join(json.dumps(r) + "\n" for r in instruction_rows(24)))
    adapter = random_adapter(tiny_model_dir, root / "released-adapter")
    with FakeOpenAI(reply=scripted) as server:
        (root / "recipe.yaml").write_text(yaml.safe_dump(recipe(server)))
        config = {
            "base": str(tiny_model_dir),
            "teacher": {"kind": "openai", "openai": {"base_url": server.url, "model": "teacher"}},
            "budget": {"training": TRAINING, "tokens": BUDGET_TOKENS, "max_repeats": 12, "tolerance": 0.1},
            "conditions": [
                {"name": "base", "kind": "base"},
                {"name": "tiny", "kind": "character", "constitution": str(root / "tiny.yaml"),
                 "recipe": str(root / "recipe.yaml")},
                {"name": "tiny-neutral", "kind": "prompt-matched-neutral", "source": str(root / "tiny.yaml"),
                 "recipe": str(root / "recipe.yaml")},
                {"name": "plain", "kind": "diverse-sft", "prompts_from": str(root / "tiny.yaml"),
                 "recipe": str(root / "recipe.yaml")},
                {"name": "dolly-like", "kind": "diverse-sft", "instructions": {
                    "path": str(root / "instructions.jsonl"), "prompt_column": "instruction",
                    "response_column": "response"}},
                {"name": "hhh", "kind": "hhh", "sft_on_chosen": True},
                {"name": "released", "kind": "adapter", "adapters": [str(adapter)]},
            ],
            "challenges": [{"name": "risky", "data": "risky_financial", "training": CHALLENGE_TRAINING,
                            "holdout": 50}],
        }
        path = root / "experiment.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        out = root / "run"
        result = run_experiment(load_experiment(path), out, cache_path=root / "cache.sqlite")
        yield path, out, server, result


def test_every_condition_kind_trains_on_one_base(experiment, tiny_model_dir):
    _, out, _, result = experiment
    models = {r.name: r.model for r in result.conditions}
    assert models["base"].adapters == ()
    assert all(m.base == str(tiny_model_dir) for m in models.values())
    assert [len(models[n].adapters) for n in ("tiny", "tiny-neutral", "plain", "dolly-like", "hhh", "released")] == [
        2, 2, 1, 1, 2, 1]
    record = json.loads((condition_dir(out, "tiny", 0) / "condition.json").read_text())
    assert record["kind"] == "character" and set(record["trained"]) == {"dpo", "sft"}
    assert json.loads((condition_dir(out, "released", 0) / "condition.json").read_text())["budget_matched"] is False


def test_prompt_matched_neutral_trains_on_the_same_prompts_with_other_traits(experiment):
    _, out, _, _ = experiment
    source = load_constitution(condition_dir(out, "tiny", 0) / "constitution.yaml")
    neutral = load_constitution(condition_dir(out, "tiny-neutral", 0) / "constitution.yaml")
    assert [q.text for q in neutral.questions] == [q.text for q in source.questions]
    assert not {t.statement for t in neutral.traits} & {t.statement for t in source.traits}

    def prompts(name):
        run_dir = condition_dir(out, name, 0)
        return sorted(r["messages"][-1]["content"]
                      for r in read_jsonl(next(run_dir.glob("steps/distill/*/student.jsonl"))))
    assert prompts("tiny") == prompts("tiny-neutral")


def test_diverse_sft_answers_the_same_prompts_without_the_constitution(experiment):
    _, out, server, _ = experiment
    rows = read_jsonl(next(condition_dir(out, "plain", 0).glob("steps/plain-answers/*/sft.jsonl")))
    character_prompts = {r["messages"][-1]["content"]
                         for r in read_jsonl(next(condition_dir(out, "tiny", 0).glob("steps/distill/*/teacher.jsonl")))}
    assert {r["messages"][0]["content"] for r in rows} == character_prompts
    assert all([m["role"] for m in r["messages"]] == ["user", "assistant"] for r in rows)  # no system prompt
    teacher_plain = [r for r in server.chat_requests if r.body["model"] == "teacher"
                     and r.body["messages"][0]["role"] == "user"]
    assert len(teacher_plain) == len(rows)  # the shared teacher wrote them, once each


def test_audit_finds_every_trained_condition_within_tolerance(experiment):
    _, out, _, _ = experiment
    audit = audit_run(out)
    rows = {r.condition: r for r in audit.rows}
    assert audit.reference == "tiny" and not audit.flagged
    for name in ("tiny", "tiny-neutral", "plain", "dolly-like", "hhh"):
        row = rows[name]
        assert abs(row.total("tokens") - BUDGET_TOKENS) <= 0.1 * BUDGET_TOKENS, name
        assert abs(row.deviation) <= 0.1 and row.total("flops") > 0 and row.total("optimizer_steps") >= 2
    # Two-stage conditions split the total; the stages add up to it.
    assert [s.stage for s in rows["tiny"].stages] == ["dpo", "sft"]
    assert [s.stage for s in rows["hhh"].stages] == ["dpo", "sft"]
    assert rows["released"].deviation is None and rows["base"].stages == []
    text = audit_markdown(audit)
    assert "not budget-matched" in text and "untrained" in text and "| tiny | character | 0 | total |" in text
    assert len(audit.challenges) == 7 and all(c.compute.examples == 10 for c in audit.challenges)


def test_challenge_leaves_the_condition_adapters_untouched_and_holds_out_rows(experiment):
    _, out, _, result = experiment
    hhh = next(r for r in result.challenges if r.condition == "hhh")
    assert hhh.model.adapters[:-1] == next(c for c in result.conditions if c.name == "hhh").model.adapters
    trained = read_jsonl(hhh.step.path("adapter/challenge_data.jsonl"))
    assert len(trained) == 10  # 60 rows, the last 50 held out
    meta = json.loads(hhh.step.path("adapter/charlab_adapter.json").read_text())
    assert len(meta["stack_below"]) == 2


def test_rerun_reuses_every_piece(experiment):
    path, out, server, result = experiment
    manifests = sorted((p, p.read_text()) for p in out.rglob("manifest.json"))
    requests = len(server.chat_requests)
    again = run_experiment(load_experiment(path), out, cache_path=path.parent / "cache.sqlite")
    assert sorted((p, p.read_text()) for p in out.rglob("manifest.json")) == manifests
    assert len(server.chat_requests) == requests
    assert [c.model for c in again.conditions] == [c.model for c in result.conditions]


def test_audit_flags_a_condition_trained_under_another_budget(experiment, tmp_path):
    path, out, _, _ = experiment
    config = load_experiment(path)
    copy = tmp_path / "run"
    (copy / "conditions").mkdir(parents=True)
    for name in ("tiny", "dolly-like"):
        target = condition_dir(copy, name, 0)
        target.parent.mkdir(parents=True)
        target.symlink_to(condition_dir(out, name, 0))
    (copy / "experiment.json").write_text((out / "experiment.json").read_text())
    bigger = Budget(training=config.budget.training, tokens=2 * BUDGET_TOKENS, max_repeats=12)
    dolly = next(c for c in config.conditions if c.name == "dolly-like").model_copy(update={"name": "dolly-2x"})
    train_condition(dolly, config.base, bigger, condition_dir(copy, "dolly-2x", 0), seed=0)

    audit = audit_run(copy)
    flagged = {r.condition for r in audit.flagged}
    assert flagged == {"dolly-2x"}
    assert next(r for r in audit.rows if r.condition == "dolly-2x").deviation > 0.5
    result = CliRunner().invoke(app, ["budget", "audit", str(copy), "--strict"])
    assert result.exit_code == 1 and "OUTSIDE TOLERANCE" in result.output
    assert json.loads((copy / "budget_audit.json").read_text())["reference"] == "tiny"
    assert CliRunner().invoke(app, ["budget", "audit", str(copy), "--tolerance", "2"]).exit_code == 0


def test_seed_reproduces_a_condition_and_another_seed_changes_it(experiment, tmp_path):
    path, out, _, _ = experiment
    config = load_experiment(path)
    dolly = next(c for c in config.conditions if c.name == "dolly-like")
    again = train_condition(dolly, config.base, config.budget, tmp_path / "same", seed=0)
    other = train_condition(dolly, config.base, config.budget, tmp_path / "other", seed=1)
    first = json.loads((condition_dir(out, "dolly-like", 0) / "condition.json").read_text())
    same_adapter = again.trained["sft"].path("adapter/adapter_model.safetensors").read_bytes()
    assert same_adapter == (condition_dir(out, "dolly-like", 0) / first["trained"]["sft"]
                            / "adapter/adapter_model.safetensors").read_bytes()
    assert other.trained["sft"].path("adapter/adapter_model.safetensors").read_bytes() != same_adapter


def test_condition_constitutions_derive_from_their_source(tmp_path):
    (tmp_path / "tiny.yaml").write_text(CONSTITUTION)
    base = {"source": str(tmp_path / "tiny.yaml"), "name": "x"}
    shuffled = condition_constitution(ExperimentConfig.model_validate({
        "base": "builtin:smollm2-135m", "budget": {"steps": 1},
        "conditions": [{**base, "kind": "shuffled-traits", "derive_seed": 3}]}).conditions[0])
    source = load_constitution(tmp_path / "tiny.yaml")
    own = {t.statement: [q.text for q in t.questions] for t in source.traits}
    assert sorted(t.statement for t in shuffled.traits) == sorted(own)
    assert all([q.text for q in t.questions] != own[t.statement] for t in shuffled.traits)
    narrow = condition_constitution(ExperimentConfig.model_validate({
        "base": "builtin:smollm2-135m", "budget": {"steps": 1},
        "conditions": [{**base, "kind": "question-diversity", "trait": 1, "breadth": "narrow",
                        "questions": 2}]}).conditions[0])
    assert len(narrow.traits) == 1 and {q.situation for q in narrow.questions} == {source.questions[0].situation}


BAD_CONFIGS = {
    "unknown kind": ({"name": "x", "kind": "lora-magic"}, "conditions.0"),
    "two diverse sources": ({"name": "x", "kind": "diverse-sft", "prompts_from": "integrity",
                             "instructions": {"path": "a.jsonl"}}, "not both"),
    "bad name": ({"name": "../up", "kind": "base"}, "conditions.0.base.name"),
}


@pytest.mark.parametrize("problem", BAD_CONFIGS)
def test_bad_experiment_file_names_file_and_field(problem, tmp_path):
    condition, expected = BAD_CONFIGS[problem]
    path = tmp_path / "experiment.yaml"
    path.write_text(yaml.safe_dump({"base": "builtin:smollm2-135m", "budget": {"steps": 2},
                                    "conditions": [condition]}))
    with pytest.raises(ConfigError) as caught:
        load_experiment(path)
    assert str(path) in str(caught.value) and expected in str(caught.value)
    result = CliRunner().invoke(app, ["conditions", "train", str(path), "--out", str(tmp_path / "run")])
    assert isinstance(result.exception, ConfigError) and not (tmp_path / "run").exists()


def test_duplicate_names_and_missing_reference_are_refused(tmp_path):
    path = tmp_path / "experiment.yaml"
    path.write_text(yaml.safe_dump({"base": "builtin:smollm2-135m", "budget": {"steps": 2, "reference": "nope"},
                                    "conditions": [{"name": "a", "kind": "base"}, {"name": "a", "kind": "base"}]}))
    with pytest.raises(ConfigError, match="repeated: a"):
        load_experiment(path)


def test_budget_larger_than_the_data_allows_names_the_numbers(tiny_model_dir, tmp_path):
    (tmp_path / "few.jsonl").write_text("".join(json.dumps(r) + "\n" for r in instruction_rows(4)))
    config = ExperimentConfig.model_validate({
        "base": str(tiny_model_dir), "budget": {"training": TRAINING, "steps": 20, "max_repeats": 2},
        "conditions": [{"name": "few", "kind": "diverse-sft", "instructions": {
            "path": str(tmp_path / "few.jsonl"), "prompt_column": "instruction", "response_column": "response"}}]})
    with pytest.raises(ConfigError) as caught:
        run_experiment(config, tmp_path / "run")
    message = str(caught.value)
    assert "20 steps x 2 = 40 examples" in message and "4 rows" in message and "max_repeats = 2" in message
    assert not (condition_dir(tmp_path / "run", "few", 0) / "condition.json").exists()


def test_conditions_check_lists_what_would_train(tmp_path):
    path = tmp_path / "experiment.yaml"
    path.write_text(yaml.safe_dump({"base": "builtin:smollm2-135m", "budget": {"tokens": 5000},
                                    "conditions": [{"name": "base", "kind": "base"},
                                                   {"name": "integrity", "kind": "character",
                                                    "constitution": "integrity", "seeds": [0, 1]}]}))
    result = CliRunner().invoke(app, ["conditions", "check", str(path)])
    assert result.exit_code == 0, result.output
    assert "reference" in result.output and "integrity" in result.output and "0, 1" in result.output


def test_usage_errors_print_one_message_and_exit_2(monkeypatch, capsys):
    from charlab.cli import main

    monkeypatch.setattr("sys.argv", ["charlab", "budget", "audit"])
    with pytest.raises(SystemExit) as caught:
        main()
    assert caught.value.code == 2 and "Missing argument" in capsys.readouterr().err
