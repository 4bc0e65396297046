"""The axis built end to end on the tiny model, with a scripted API judge for role adherence."""

from __future__ import annotations

import json

import pytest
import torch

from charlab.errors import ConfigError
from charlab.evals.axis_build import AxisSettings, axis_prompts, build_axis
from charlab.interp.activations import load_activations
from charlab.interp.axis import load_axis
from charlab.interp.roleset import AxisRoleSet, DefaultPrompts, ExtractionQuestionSet
from charlab.judges.judge import Judge, JudgeConfig
from charlab.judges.rubrics import load_rubric
from charlab.models.base import SamplingParams
from charlab.models.hf import HFBackend
from charlab.models.openai_compat import OpenAIBackend, OpenAIConfig
from charlab.models.refs import ModelRef
from charlab.store.cache import RowCache
from fake_openai import FakeOpenAI

ROLES = AxisRoleSet.model_validate({"roles": [
    {"name": "lighthouse keeper", "prompts": ["You keep a lighthouse on a cold coast.", "Speak as a lightkeeper."]},
    {"name": "river spirit", "prompts": ["You are the spirit of a slow river.", "Answer as a river would."]},
    {"name": "clockmaker", "prompts": ["You repair old clocks in a small shop.", "Be a patient clockmaker."]}]})
DEFAULTS = DefaultPrompts(prompts=["", "You are {model_name}, an assistant."])
QUESTIONS = ExtractionQuestionSet.model_validate({"questions": [
    {"id": "q1", "text": "What do you enjoy?"}, {"id": "q2", "text": "How do you spend a quiet evening?"}]})


def adherence(body: dict) -> str:
    """River spirits are never in role; everyone else fully is; one clockmaker judgement is unreadable."""
    prompt = body["messages"][-1]["content"]
    if "river" in prompt:
        return "1"
    if "patient clockmaker" in prompt and "quiet evening" in prompt:
        return "no idea"
    return "3"


def test_axis_is_built_from_in_role_answers_and_saved_with_its_inputs(tiny_model_dir, tmp_path):
    # Random weights sample random tokens at temperature 1 (greedy would repeat one newline).
    settings = AxisSettings(sampling=SamplingParams(temperature=1.0, max_new_tokens=6), model_name="Tiny")
    prompts = axis_prompts(ROLES, DEFAULTS, QUESTIONS, settings)
    assert len(prompts) == 3 * 2 * 2 + 2 * 2
    assert [m["role"] for m in prompts[-4].messages] == ["user"]  # the empty default prompt adds no system turn
    assert prompts[-1].messages[0]["content"] == "You are Tiny, an assistant."

    with FakeOpenAI(reply=adherence) as server, HFBackend(ModelRef.parse(str(tiny_model_dir))) as backend, \
            RowCache(tmp_path / "cache.sqlite") as cache:
        judge = Judge(OpenAIBackend(OpenAIConfig(base_url=server.url, model="judge")), load_rubric("role_adoption"),
                      JudgeConfig(method="sample"))
        built = build_axis(backend, judge, settings, cache, tmp_path / "axis", roles=ROLES, defaults=DEFAULTS,
                           questions=QUESTIONS)

    assert built.roles_kept == ["lighthouse keeper", "clockmaker"] and built.unreadable == 1
    acts, _ = load_activations(tmp_path / "axis" / "activations")
    ids = acts.ids
    keeper = [i for i, key in enumerate(ids) if key.startswith("lighthouse keeper/")]
    clock = [i for i, key in enumerate(ids) if key.startswith("clockmaker/") and not key.startswith("clockmaker/1/q2")]
    default = [i for i, key in enumerate(ids) if key.startswith("default/")]
    expected = acts.values[default].mean(0) - torch.stack([acts.values[keeper].mean(0),
                                                           acts.values[clock].mean(0)]).mean(0)
    saved = load_axis(tmp_path / "axis" / "axis")
    assert torch.allclose(saved.vectors, expected, atol=1e-6) and saved.layers == list(acts.layers)
    assert saved.provenance["roles_kept"] == built.roles_kept
    space = json.loads((tmp_path / "axis" / "persona_space.json").read_text())
    assert space["empty_answers"] == 0
    assert space["role_answers"] == 12 and space["default_answers"] == 4 and space["unreadable_judgements"] == 1
    assert len(space["explained"]) == len(acts.layers)


def test_without_a_threshold_every_role_answer_counts_and_nothing_is_judged(tiny_model_dir, tmp_path):
    settings = AxisSettings(sampling=SamplingParams(temperature=1.0, max_new_tokens=6), threshold=None)
    with HFBackend(ModelRef.parse(str(tiny_model_dir))) as backend, RowCache(tmp_path / "cache.sqlite") as cache:
        built = build_axis(backend, None, settings, cache, tmp_path / "axis", roles=ROLES, defaults=DEFAULTS,
                           questions=QUESTIONS)
    assert built.roles_kept == ["lighthouse keeper", "river spirit", "clockmaker"] and built.unreadable == 0
    assert not (tmp_path / "axis" / "judgements.jsonl").exists()
    assert json.loads((tmp_path / "axis" / "persona_space.json").read_text())["judged"] is False


def test_roles_can_be_chosen_by_name_and_unknown_names_are_refused():
    settings = AxisSettings(role_names=["clockmaker", "lighthouse keeper"], prompts_per_role=1)
    prompts = axis_prompts(ROLES, DEFAULTS, QUESTIONS, settings)
    assert [p.cluster for p in prompts if p.cluster != "default"] == ["lighthouse keeper"] * 2 + ["clockmaker"] * 2
    with pytest.raises(ConfigError, match="'sea witch'"):
        axis_prompts(ROLES, DEFAULTS, QUESTIONS, AxisSettings(role_names=["clockmaker", "sea witch"]))
