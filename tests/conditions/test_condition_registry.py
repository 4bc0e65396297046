"""A condition kind added from outside the package: one config class, one train function, one registration.

The toy kind below trains a plain SFT adapter on a few inline conversations through the shared
budgeted training; once registered, a study file accepts it, the plan prices it, the train node
trains it, and the report puts it in its group. A kind without a group is refused when it is made.
"""

from __future__ import annotations

import json
from typing import Literal

import pytest
import yaml

from charlab.conditions.kind import ConditionKind, ConditionSpec, Trained, TrainingJob, budget_cost
from charlab.conditions.registry import kind_named, kind_of, register, registered, unregister
from charlab.costs import Cost
from charlab.errors import ConfigError
from charlab.io import atomic_write_jsonl
from charlab.report.collect import condition_groups
from charlab.store import layout
from charlab.study.nodes import StudyRun, execute
from charlab.study.plan import plan_lines, plan_study
from charlab.study.spec import load_study
from charlab.training.budgeted import train_budgeted
from study_fixture import TRAINING

BUDGET_TOKENS = 400


class ToyCondition(ConditionSpec):
    """A few inline conversations, as SFT data."""

    kind: Literal["toy-sft"]
    conversations: int = 6


def toy_rows(n: int) -> list[dict]:
    return [{"messages": [{"role": "user", "content": f"Count to {i + 1}."},
                          {"role": "assistant", "content": " ".join(str(j + 1) for j in range(i + 1))}]}
            for i in range(n)]


def train_toy(condition: ToyCondition, job: TrainingJob) -> Trained:
    run = job.run
    data = run.step("toy-data", {"conversations": condition.conversations}, version="toy-v1", label="toy-data")
    if not data.done:
        with data.running():
            atomic_write_jsonl(data.path("sft.jsonl"), toy_rows(condition.conversations))
            data.finish(counts={"examples": condition.conversations})
    sft = train_budgeted(run, "sft", job.base, data, "sft.jsonl", job.budget.training_config(), job.seed,
                         job.budget.for_stage("sft", ("sft",)))
    return Trained(job.base.with_adapter(sft.path("adapter")), {"sft": sft})


TOY = ConditionKind(ToyCondition, group="control", train=train_toy, cost=budget_cost)


@pytest.fixture
def toy_kind():
    register(TOY)
    yield TOY
    unregister(TOY.name)


def write_toy_study(root, tiny_model_dir):
    path = root / "study.yaml"
    path.write_text(yaml.safe_dump({
        "name": "toy-study", "base": str(tiny_model_dir),
        "budget": {"training": TRAINING, "tokens": BUDGET_TOKENS, "max_repeats": 40},
        "conditions": [{"name": "base", "kind": "base"}, {"name": "toy", "kind": "toy-sft", "conversations": 4}],
        "evaluations": {"evals": ["em"]},
    }, sort_keys=False))
    return path


def test_a_registered_kind_goes_through_study_plan_training_and_groups(toy_kind, tiny_model_dir, tmp_path):
    study = load_study(write_toy_study(tmp_path, tiny_model_dir))
    toy = study.conditions[1]
    assert isinstance(toy, ToyCondition) and toy.conversations == 4 and kind_of(toy) is TOY
    assert study.model_dump(mode="json")["conditions"][1] == {"name": "toy", "seeds": [0], "kind": "toy-sft",
                                                              "conversations": 4}

    plan = plan_study(study)
    node = plan.node(layout.train_node("toy", 0))
    assert node.uses_model and node.cost == Cost(trained_tokens=BUDGET_TOKENS)
    assert not plan.node(layout.train_node("base", 0)).uses_model
    assert any("train/toy/seed-0" in line for line in plan_lines(plan))

    out = tmp_path / "run"
    run = StudyRun(study, plan, out)
    execute(run, node, run.step(node, {}))
    folder = layout.condition_dir(out, "toy", 0)
    record = json.loads((folder / layout.CONDITION_FILE).read_text())
    assert record["kind"] == "toy-sft" and record["budget_matched"] is True and set(record["trained"]) == {"sft"}
    assert len(record["model"]["adapters"]) == 1
    sft = next((folder / "steps" / "sft").iterdir())
    manifest = json.loads((sft / "manifest.json").read_text())
    assert manifest["extra"]["budget"] is not None and manifest["key_fields"]["budget"] is not None
    assert abs(manifest["extra"]["compute"]["tokens"] - BUDGET_TOKENS) <= 0.1 * BUDGET_TOKENS  # fitted to the budget

    assert condition_groups(out) == {"toy": "control"}


def test_an_unregistered_kind_is_refused_by_name(toy_kind, tiny_model_dir, tmp_path):
    path = write_toy_study(tmp_path, tiny_model_dir)
    record = layout.condition_dir(tmp_path / "run", "toy", 0) / layout.CONDITION_FILE
    record.parent.mkdir(parents=True)
    record.write_text(json.dumps({"name": "toy", "kind": "toy-sft", "seed": 0,
                                  "spec": {"name": "toy", "kind": "toy-sft"}}))
    assert condition_groups(tmp_path / "run") == {"toy": "control"}
    unregister(TOY.name)
    try:
        with pytest.raises(ConfigError, match="conditions.1.*'toy-sft'.*does not match"):
            load_study(path)
        with pytest.raises(ConfigError, match=f"{record}: 'toy-sft' is not a condition kind"):
            condition_groups(tmp_path / "run")
        assert condition_groups(tmp_path / "run", {"toy": "value"}) == {"toy": "value"}  # an override still works
        with pytest.raises(ConfigError, match="not a condition kind; kinds: base, character"):
            kind_named("toy-sft")
    finally:
        register(TOY)


def test_a_kind_needs_a_group_a_kind_literal_and_a_free_name(toy_kind):
    with pytest.raises(ValueError, match="group must be one of value, neutral, control, base, other"):
        ConditionKind(ToyCondition, group=None, train=train_toy, cost=budget_cost)
    with pytest.raises(ValueError, match="group must be one of"):
        ConditionKind(ToyCondition, group="friends", train=train_toy, cost=budget_cost)
    with pytest.raises(TypeError):
        ConditionKind(ToyCondition, train=train_toy, cost=budget_cost)

    class Untagged(ConditionSpec):
        pass

    with pytest.raises(ValueError, match="kind: Literal"):
        ConditionKind(Untagged, group="other", train=train_toy, cost=budget_cost)
    with pytest.raises(ValueError, match="already registered"):
        register(TOY)
    assert registered()[-1] is TOY


def test_shipped_kinds_say_their_group_training_and_role():
    by_name = {kind.name: kind for kind in registered()}
    assert list(by_name)[:8] == ["base", "character", "prompt-matched-neutral", "shuffled-traits",
                                 "question-diversity", "adapter", "diverse-sft", "hhh"]
    assert {name: k.training for name, k in by_name.items() if not k.budget_matched} == {"base": "none",
                                                                                        "adapter": "elsewhere"}
    assert [name for name, k in by_name.items() if k.character] == ["character", "prompt-matched-neutral",
                                                                     "shuffled-traits", "question-diversity"]
