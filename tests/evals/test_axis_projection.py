"""Projecting answers and conversation turns onto a fixed axis, on the tiny random Llama (hidden 64, 2 layers)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from charlab.analysis.results import EvalTarget
from charlab.datasets.attacks import load_attack_set
from charlab.errors import ConfigError
from charlab.evals.axis_projection import (
    ConversationSet,
    ProjectionSettings,
    axis_fingerprint,
    load_conversations,
    locate_axis,
    open_axis,
    project_answers,
    project_drift,
    projection_prompts,
)
from charlab.interp.activations import extract_activations
from charlab.interp.axis import Axis, save_axis
from charlab.interp.roleset import AxisRoleSet, DefaultPrompts, ExtractionQuestionSet
from charlab.io import read_jsonl, sha256_file
from charlab.models.base import GenerationRequest, SamplingParams
from charlab.models.hf import HFBackend
from charlab.models.refs import ModelRef
from charlab.store.cache import RowCache, generation_key

ROLES = AxisRoleSet.model_validate({"roles": [
    {"name": "ferryman", "prompts": ["You row a ferry across a wide river."]},
    {"name": "owl", "prompts": ["You are an old owl in a barn."]}]})
DEFAULTS = DefaultPrompts(prompts=["", "You are {model_name}."])
QUESTIONS = ExtractionQuestionSet.model_validate({"questions": [
    {"id": "q1", "text": "What do you enjoy?"}, {"id": "q2", "text": "What worries you?"}]})
# Random weights sample random tokens at temperature 1 (greedy would repeat one token).
SAMPLING = SamplingParams(temperature=1.0, max_new_tokens=6)
SETTINGS = ProjectionSettings(questions=2, roles=2, attacks=2, sampling=SAMPLING, model_name="Tiny", resamples=200)
CONVERSATIONS = ConversationSet.model_validate({"conversations": [
    {"id": "chat", "turns": ["Hello there.", "How are you today?", "Tell me more."]},
    {"id": "story", "system": "You tell short stories.", "turns": ["Start a story.", "Go on."]}]})


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    with HFBackend(ModelRef.parse(str(tiny_model_dir))) as backend:
        yield backend


def random_axis(layers: int = 2, hidden: int = 64, seed: int = 0) -> Axis:
    return Axis(torch.randn(layers, hidden, generator=torch.Generator().manual_seed(seed)), list(range(layers)),
                {"source": "test"})


def unit_dot(values: torch.Tensor, direction: torch.Tensor) -> torch.Tensor:
    return values @ (direction / direction.norm())


def test_projections_are_dot_products_with_the_unit_axis(tiny, tmp_path):
    prompts = projection_prompts(SETTINGS, roles=ROLES, defaults=DEFAULTS, questions=QUESTIONS,
                                 attacks=load_attack_set("demo"))
    assert [p.meta["set"] for p in prompts] == ["default"] * 4 + ["roles"] * 4 + ["jailbreak"] * 2
    assert prompts[2].messages[0]["content"] == "You are Tiny." and prompts[4].cluster == "ferryman"
    assert prompts[-1].messages[0]["role"] == "system" and prompts[-1].item_id.startswith("jailbreak/")
    axis = random_axis()
    with RowCache(tmp_path / "cache.sqlite") as cache:
        run = project_answers(tiny, axis, prompts, SETTINGS, cache, tmp_path / "out", EvalTarget(condition="base"))

    records = read_jsonl(tmp_path / "out" / "projections.jsonl")
    texts = {a["item_id"]: a["text"] for a in read_jsonl(tmp_path / "out" / "answers.jsonl")}
    by_id = {p.item_id: p for p in prompts}
    conversations = [[*by_id[r["id"]].messages, {"role": "assistant", "content": texts[r["id"]].strip()}]
                     for r in records]
    acts = extract_activations(tiny, conversations, layers=[0, 1])  # independently, and at both layers
    expected = unit_dot(acts.at(1), axis.vectors[1])  # layer None reads the axis's middle layer, 1 of 0..1
    assert torch.allclose(torch.tensor([r["value"] for r in records]), expected, atol=1e-4)

    summary = run.summary
    assert summary["axis"]["fingerprint"] == axis_fingerprint(axis) and summary["axis"]["layer"] == 1
    default = [r["value"] for r in records if r["set"] == "default"]
    assert summary["sets"]["default"]["mean"] == pytest.approx(np.mean(default))
    assert summary["sets"]["default"]["n"] + summary["sets"]["default"]["empty"] == 4
    assert summary["sets"]["roles"]["clusters"] <= 2 and summary["sets"]["default"]["q1"] <= \
        summary["sets"]["default"]["q3"]
    assert [(r.metric, r.group, r.condition) for r in run.rows] == [
        ("axis_projection", name, "base") for name in ("default", "roles", "jailbreak")]
    assert {r.judge for r in run.rows} == {f"axis:{axis_fingerprint(axis)}@layer1"}
    assert (tmp_path / "out" / "results.parquet").is_file()


def test_one_fixed_axis_measures_the_base_and_an_adapter(tiny, tiny_model_dir, condition_adapter, tmp_path):
    save_axis(tmp_path / "axis", random_axis(seed=3))
    before = sha256_file(tmp_path / "axis" / "axis.safetensors")
    settings = SETTINGS.model_copy(update={"sets": ("default",), "questions": 1})
    prompts = projection_prompts(settings, defaults=DEFAULTS, questions=QUESTIONS)
    with RowCache(tmp_path / "cache.sqlite") as cache, \
            HFBackend(ModelRef.parse(str(tiny_model_dir), [str(condition_adapter)])) as adapted:
        runs = [project_answers(model, open_axis(tmp_path / "axis"), prompts, settings, cache, tmp_path / name)
                for name, model in (("base", tiny), ("adapted", adapted))]
    base, other = (run.summary for run in runs)
    assert base["axis"] == other["axis"] and base["model"] != other["model"]
    assert base["sets"]["default"]["mean"] != other["sets"]["default"]["mean"]
    assert sha256_file(tmp_path / "axis" / "axis.safetensors") == before


def test_the_axis_must_fit_the_model_and_nothing_is_generated_otherwise(tiny, tmp_path):
    prompts = projection_prompts(SETTINGS.model_copy(update={"sets": ("default",)}), defaults=DEFAULTS,
                                 questions=QUESTIONS)
    torch.save(torch.randn(2, 32), tmp_path / "narrow.pt")
    cases = [(open_axis(tmp_path / "narrow.pt"), SETTINGS, r"32 wide but .* hidden size 64"),
             (random_axis(layers=4), SETTINGS.model_copy(update={"layer": 3}), r"decoder layers 0\.\.1"),
             (random_axis(), SETTINGS.model_copy(update={"layer": 5}), "the axis has layers 0..1, not 5")]
    with RowCache(tmp_path / "cache.sqlite") as cache:
        for axis, settings, message in cases:
            with pytest.raises(ConfigError, match=message):
                project_answers(tiny, axis, prompts, settings, cache, tmp_path / "out")
            with pytest.raises(ConfigError, match=message):
                project_drift(tiny, axis, CONVERSATIONS, settings, cache, tmp_path / "out")
        assert cache.stats().rows == 0
    assert not (tmp_path / "out").exists()


def test_external_axis_tensors_and_axis_folders_are_found_and_checked(tmp_path):
    vectors = torch.randn(3, 64)
    torch.save(vectors, tmp_path / "axis.pt")
    save_file({"assistant_axis": vectors}, tmp_path / "axis.safetensors")
    from_pt, from_st = open_axis(tmp_path / "axis.pt", [4, 5, 6]), open_axis(tmp_path / "axis.safetensors", [4, 5, 6])
    assert from_pt.layers == [4, 5, 6] and torch.equal(from_pt.vectors, vectors) and from_pt.middle_layer == 5
    assert axis_fingerprint(from_pt) == axis_fingerprint(from_st) != axis_fingerprint(open_axis(tmp_path / "axis.pt"))
    with pytest.raises(ConfigError, match="3 layer vectors but 2 layer numbers"):
        open_axis(tmp_path / "axis.pt", [0, 1])
    torch.save(torch.randn(64), tmp_path / "flat.pt")
    with pytest.raises(ConfigError, match=r"flat\.pt: tensor of shape \(64,\)"):
        open_axis(tmp_path / "flat.pt")
    with pytest.raises(ConfigError, match="nowhere: no axis here"):
        open_axis(tmp_path / "nowhere")

    save_axis(tmp_path / "build" / "axis", Axis(vectors, [0, 1, 2]))
    (tmp_path / "build" / "persona_space.json").write_text("{}")
    assert locate_axis(tmp_path / "build") == (tmp_path / "build" / "axis", tmp_path / "build")
    assert locate_axis(tmp_path / "build" / "axis") == (tmp_path / "build" / "axis", tmp_path / "build")
    with pytest.raises(ConfigError, match="only given for an external tensor"):
        open_axis(tmp_path / "build", [0, 1, 2])


def test_drift_projects_each_turn_in_its_context_and_reruns_from_the_cache(tiny, tmp_path, monkeypatch):
    settings = SETTINGS.model_copy(update={"sets": ()})
    axis = random_axis(seed=5)
    with RowCache(tmp_path / "cache.sqlite") as cache:
        run = project_drift(tiny, axis, CONVERSATIONS, settings, cache, tmp_path / "drift")
        transcripts = {t["id"]: t["messages"] for t in read_jsonl(tmp_path / "drift" / "transcripts.jsonl")}
        # Every reply was generated from the conversation before it, the model's earlier replies included.
        for messages in transcripts.values():
            replies = [i for i, m in enumerate(messages) if m["role"] == "assistant"]
            assert [messages[i - 1]["role"] for i in replies] == ["user"] * len(replies)
            for i in replies:
                key = generation_key(tiny.fingerprint, GenerationRequest.make(messages[:i], SAMPLING, settings.seed))
                assert cache.get_many([key])[key]["text"].strip() == messages[i]["content"]
        assert cache.stats().rows == 5  # one generation per turn: 3 + 2

        records = read_jsonl(tmp_path / "drift" / "projections.jsonl")
        assert [(r["conversation"], r["turn"]) for r in records] == [
            ("chat", 1), ("chat", 2), ("chat", 3), ("story", 1), ("story", 2)]
        assert sum(r["value"] is not None for r in records) >= 4  # random replies are almost never empty
        for record in records:
            messages = transcripts[record["conversation"]]
            end = [i for i, m in enumerate(messages) if m["role"] == "assistant"][record["turn"] - 1] + 1
            if not messages[end - 1]["content"]:
                assert record["value"] is None
                continue
            prefix = extract_activations(tiny, [messages[:end]], layers=[1])  # the turn as the last one
            assert record["value"] == pytest.approx(float(unit_dot(prefix.at(1), axis.vectors[1])[0]), abs=1e-4)

        rows = {(r.metric, r.group): r for r in run.rows}
        assert rows[("axis_projection_turn", "turn-3")].n == 1 and rows[("axis_projection_turn", "turn-1")].n == 2
        chat = [r for r in records if r["conversation"] == "chat" and r["value"] is not None]
        slope = np.polyfit([r["turn"] for r in chat], [r["value"] for r in chat], 1)[0]
        assert rows[("axis_drift_slope", "chat")].value == pytest.approx(slope)
        assert rows[("axis_drift_slope", "")].value == pytest.approx(np.mean(list(run.summary["slopes"].values())))

        def no_generation(*args, **kwargs):
            raise AssertionError("a rerun must take every turn from the cache")

        monkeypatch.setattr(tiny, "generate", no_generation)
        again = project_drift(tiny, axis, CONVERSATIONS, settings, cache, tmp_path / "again")
    assert read_jsonl(tmp_path / "again" / "projections.jsonl") == records and again.rows == run.rows


def test_conversation_files_are_validated_naming_file_line_and_field(tmp_path):
    shipped = load_conversations()
    assert len(shipped.conversations) == 4 and {len(c.turns) for c in shipped.conversations} == {6}
    assert "coding" in [c.id for c in shipped.conversations]
    cases = [
        ("conversations:\n  - id: a\n    turns: []\n", "bad.yaml:3: field 'conversations.0.turns'"),
        ("conversations:\n  - id: a\n    turns: [hi, '  ']\n", "bad.yaml:3: field 'conversations.0.turns.1'"),
        ("conversations:\n  - id: a\n    turns: [hi]\n  - id: a\n    turns: [yo]\n", "'a' is used twice"),
        ("conversations:\n  - id: a\n    turns: [hi]\n    persona: pirate\n",
         "bad.yaml:4: field 'conversations.0.persona'"),
        ("conversations:\n  - turns: [hi]\n", "bad.yaml:2: field 'conversations.0.id'"),
    ]
    for text, message in cases:
        (tmp_path / "bad.yaml").write_text(text)
        with pytest.raises(ConfigError, match=message.replace(".", r"\.")):
            load_conversations(tmp_path / "bad.yaml")
    with pytest.raises(ConfigError, match="missing.yaml: file not found"):
        load_conversations(tmp_path / "missing.yaml")
