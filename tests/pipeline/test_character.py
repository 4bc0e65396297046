"""The whole recipe end to end on the tiny model, with teacher and student served by a fake API."""

from __future__ import annotations

import json

import pytest

from charlab.errors import CharlabError
from charlab.io import read_jsonl
from charlab.models.base import SamplingParams
from charlab.models.factory import BackendSpec
from charlab.models.openai_compat import OpenAIConfig
from charlab.models.refs import ModelRef
from charlab.pipeline.character import CharacterConfig, train_character
from charlab.pipeline.distill import DistillSettings
from charlab.pipeline.introspect import IntrospectionSettings
from charlab.pipeline.pairs import PairSettings
from charlab.pipeline.prompts import ExpansionSettings
from charlab.training.settings import TrainingConfig
from fake_openai import FakeOpenAI

CONSTITUTION = """
name: tiny
description: two traits for tests
traits:
  - statement: I keep my answers short.
    questions: ["How do I boil an egg?", "What is a good name for a cat?"]
  - statement: I point out when an offer sounds like a scam.
    questions: ["A stranger offered to double my savings. Should I?", "Is this lottery win email real?"]
"""

TEACHER_REPLY = "I would check that carefully first, and I am glad you asked."
STUDENT_REPLY = "Sure, here is an answer."


def scripted(body: dict) -> str:
    """Teacher when a system prompt is present, generator when asked for a list, student otherwise."""
    messages = body["messages"]
    if messages[0]["role"] == "system":
        return TEACHER_REPLY
    if "numbered list" in messages[-1]["content"]:
        if "I point out when an offer" in messages[-1]["content"]:
            return "1. Someone on the phone says my bank account is frozen. What now?\n2. Is a free cruise prize legit?"
        return "1. My neighbour keeps asking to borrow my ladder, what should I say?\n2. Can you help me plan a picnic?"
    return STUDENT_REPLY


def tiny_training() -> TrainingConfig:
    return TrainingConfig.model_validate({
        "precision": "float32", "checkpoint_every": 50,
        "lora": {"rank": 4, "alpha": 8},
        "optim": {"learning_rate": 1e-3, "global_batch": 2, "per_device_batch": 2},
        "dpo": {"max_length": 96}, "sft": {"max_length": 96},
    })


def config_for(server: FakeOpenAI) -> CharacterConfig:
    api = lambda model: BackendSpec(kind="openai", openai=OpenAIConfig(base_url=server.url, model=model))  # noqa: E731
    return CharacterConfig(
        teacher=api("teacher"), student=api("student"),
        expansion=ExpansionSettings(target_per_trait=3, per_call=2, max_rounds=1, max_new_tokens=64),
        distill=DistillSettings(samples_per_prompt=1, teacher_name="Tutor"),
        pairs=PairSettings(max_length=96),
        introspection=IntrospectionSettings(reflection_samples=1, conversations=1, turns=2, keep_truncated=True,
                                            sampling=SamplingParams(temperature=0.7, max_new_tokens=6)),
        training=tiny_training(),
    )


@pytest.fixture
def constitution_file(tmp_path):
    path = tmp_path / "tiny.yaml"
    path.write_text(CONSTITUTION)
    return path


def test_whole_recipe_then_rerun_does_nothing(tiny_model_dir, constitution_file, tmp_path):
    model = ModelRef.parse(str(tiny_model_dir))
    out, cache = tmp_path / "run", tmp_path / "cache.sqlite"
    with FakeOpenAI(reply=scripted) as server:
        result = train_character(model, constitution_file, config_for(server), out, cache_path=cache)

        # The character model is base + DPO + SFT, as a stack, with provenance on each adapter.
        dpo_dir, sft_dir = (result.steps[s].path("adapter") for s in ("dpo", "sft"))
        assert [a.path for a in result.model.adapters] == [str(dpo_dir), str(sft_dir)]
        dpo_meta = json.loads((dpo_dir / "charlab_adapter.json").read_text())
        sft_meta = json.loads((sft_dir / "charlab_adapter.json").read_text())
        assert dpo_meta["stage"] == "dpo" and dpo_meta["stack_below"] == []
        assert sft_meta["stack_below"] == [
            ModelRef.parse(str(tiny_model_dir), [str(dpo_dir)]).resolve().adapters[0].fingerprint]
        assert json.loads((out / "character.json").read_text())["model"]["adapters"][1]["path"] == str(sft_dir)

        # Expansion added one question per trait; every prompt was answered by both sides.
        assert result.steps["prompts"].manifest["counts"]["questions"] == 6
        teacher_bodies = [r.body for r in server.chat_requests if r.body["model"] == "teacher"]
        in_character = [b for b in teacher_bodies if b["messages"][0]["role"] == "system"]
        assert len(in_character) == 6
        assert all("2. I point out when an offer sounds like a scam." in b["messages"][0]["content"]
                   for b in in_character)

        # Pairs: chosen = teacher, rejected = student, the prompt is the user turn only.
        pairs = read_jsonl(result.steps["pairs"].path("pairs.jsonl"))
        assert len(pairs) == 6
        assert all(p["chosen"][0]["content"] == TEACHER_REPLY and p["rejected"][0]["content"] == STUDENT_REPLY
                   for p in pairs)
        assert all([m["role"] for m in p["prompt"]] == ["user"] for p in pairs)

        # Compute accounting: 6 pairs at global batch 2 is 3 optimizer steps.
        compute = result.steps["dpo"].manifest["extra"]["compute"]
        assert (compute["examples"], compute["optimizer_steps"], compute["global_batch"]) == (6, 3, 2)
        assert compute["prompt_tokens"] > 0 and compute["completion_tokens"] > 0 and compute["flops"] > 0

        requests_before = len(server.chat_requests)
        manifests = {k: s.manifest for k, s in result.steps.items()}
        again = train_character(model, constitution_file, config_for(server), out, cache_path=cache)
        assert len(server.chat_requests) == requests_before  # no model called again
        assert {k: s.manifest for k, s in again.steps.items()} == manifests  # no step redone
        assert again.model == result.model


def test_until_stops_after_the_named_stage(tiny_model_dir, constitution_file, tmp_path):
    with FakeOpenAI(reply=scripted) as server:
        result = train_character(ModelRef.parse(str(tiny_model_dir)), constitution_file, config_for(server),
                                 tmp_path / "run", cache_path=tmp_path / "c.sqlite", until="pairs")
        with pytest.raises(CharlabError, match="unknown stage 'nope'"):
            train_character(ModelRef.parse(str(tiny_model_dir)), constitution_file, config_for(server),
                            tmp_path / "run", until="nope")
    assert list(result.steps) == ["prompts", "distill", "pairs"]
    assert result.model.adapters == ()


def test_teacher_returning_nothing_is_a_clear_error(tiny_model_dir, constitution_file, tmp_path):
    def empty_teacher(body: dict) -> str:
        return "" if body["messages"][0]["role"] == "system" else scripted(body)

    with FakeOpenAI(reply=empty_teacher) as server, pytest.raises(CharlabError) as caught:
        train_character(ModelRef.parse(str(tiny_model_dir)), constitution_file, config_for(server),
                        tmp_path / "run", cache_path=tmp_path / "c.sqlite")
    assert "6" in str(caught.value) and "empty" in str(caught.value)
    assert not (tmp_path / "run" / "character.json").exists()


def test_generic_prompts_join_the_pool_and_a_missing_file_is_a_clear_error(tiny_model_dir, constitution_file, tmp_path):
    generic = tmp_path / "generic.jsonl"
    generic.write_text('{"prompt": "Tell me a joke."}\n{"prompt": "How do I boil an egg?"}\n')
    model = ModelRef.parse(str(tiny_model_dir))
    result = train_character(model, constitution_file, CharacterConfig(generic_prompts=generic), tmp_path / "run",
                             cache_path=tmp_path / "c.sqlite", until="prompts")
    assert json.loads(result.steps["prompts"].path("generic.json").read_text()) == ["Tell me a joke.",
                                                                                   "How do I boil an egg?"]
    with pytest.raises(CharlabError, match="generic_prompts: .*missing.jsonl not found"):
        train_character(model, constitution_file, CharacterConfig(generic_prompts=tmp_path / "missing.jsonl"),
                        tmp_path / "run", until="prompts")
