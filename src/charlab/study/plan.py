"""A study as a DAG of steps, with what each will cost before anything runs.

Nodes, in an order that is already topological:

* ``train/<condition>/seed-<s>``: one condition trained (or given) for one seed;
* ``challenge/<challenge>/<condition>/seed-<s>``: the challenge stacked on it;
* ``axis``: the Assistant Axis on the base model (when the study asks for one);
* ``evaluate/<condition>/seed-<s>/<stage>``: every evaluation of one model under test, where stage is
  ``before`` or a challenge's name;
* ``margin/<condition>/seed-<s>``: the judge-free pull of a challenge on held-out questions;
* ``audit`` and ``report``: the budget audit and the report, over everything.

Estimates are upper bounds from the configs (every generation runs to ``max_new_tokens``, every
training row to its length cap when the budget is in steps): generated and trained tokens per
node, judge calls, and device-hours at the throughputs in the study's ``hardware`` block.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from charlab.conditions.character import ASSUMED_TRAITS
from charlab.conditions.registry import kind_of
from charlab.costs import Cost
from charlab.errors import ConfigError
from charlab.evals.jailbreak import ASSUMED_ATTACK_PROMPTS
from charlab.evals.registry import evaluations_for, evaluations_in
from charlab.store import layout
from charlab.study.spec import StudyConfig, missing_inputs

# Sizes assumed for inputs that do not exist yet (the plan says which): the emergent-misalignment
# challenge sets hold about 6,000 conversations.
ASSUMED_CHALLENGE_ROWS = 6000
ASSUMED_CHALLENGE_ROW_TOKENS = 300  # a question and a short answer
CHARS_PER_TOKEN = 4  # a rough English average, for sizing data without a tokenizer


@dataclass(frozen=True)
class Node:
    """One step of the study: what it runs on, what it waits for, what it costs."""

    id: str
    kind: str  # train | challenge | axis | evaluate | margin | audit | report
    deps: tuple[str, ...] = ()
    params: dict[str, Any] = field(default_factory=dict)
    uses_model: bool = True  # asks for the hardware block's GPUs and memory under Ray
    cost: Cost = Cost()


@dataclass(frozen=True)
class Plan:
    study: StudyConfig
    nodes: tuple[Node, ...]

    def node(self, node_id: str) -> Node:
        return next(n for n in self.nodes if n.id == node_id)

    @property
    def total(self) -> Cost:
        return sum((n.cost for n in self.nodes), Cost())

    def device_hours(self, nodes: tuple[Node, ...] | list[Node] | None = None) -> float:
        """Tokens at the hardware's throughputs plus its fixed overhead per model-running step."""
        nodes = self.nodes if nodes is None else nodes
        cost = sum((n.cost for n in nodes), Cost())
        hardware = self.study.hardware
        seconds = (cost.generated_tokens / hardware.generate_tokens_per_s
                   + cost.trained_tokens / hardware.train_tokens_per_s
                   + hardware.step_overhead_s * sum(n.uses_model for n in nodes))
        return seconds / 3600


def model_stages(study: StudyConfig) -> list[str]:
    """``before`` and, when the study evaluates after challenges, each challenge's name."""
    after = [c.name for c in study.challenges] if study.evaluations.after_challenge else []
    return [layout.BEFORE, *after]


def plan_study(study: StudyConfig) -> Plan:
    """Every node of the study with its dependencies and cost."""
    nodes: list[Node] = []
    evaluations = study.evaluations
    axis_id = "axis" if evaluations.axis is not None else None
    if axis_id:
        nodes.append(Node("axis", "axis", (), {}, True, _axis_cost(study)))
    for condition in study.conditions:
        for seed in condition.seeds:
            train = layout.train_node(condition.name, seed)
            kind = kind_of(condition)
            nodes.append(Node(train, "train", (), {"condition": condition.name, "seed": seed},
                              kind.budget_matched, kind.cost(condition, study.budget, study.teacher)))
            for challenge in study.challenges:
                nodes.append(Node(layout.challenge_node(challenge.name, condition.name, seed), "challenge", (train,),
                                  {"challenge": challenge.name, "condition": condition.name, "seed": seed}, True,
                                  Cost(trained_tokens=_challenge_tokens(challenge))))
    traits_train = (layout.train_node(evaluations.traits_of, _first_seed(study, evaluations.traits_of)),) \
        if evaluations.traits_of and any(e.reads_traits_of for e in evaluations_in(evaluations)) else ()
    for condition in study.conditions:
        for seed in condition.seeds:
            for stage in model_stages(study):
                producer = layout.producer_node(condition.name, seed, stage)
                deps = tuple(dict.fromkeys((producer, *traits_train, *((axis_id,) if axis_id else ()))))
                nodes.append(Node(layout.evaluate_node(condition.name, seed, stage), "evaluate", deps,
                                  {"condition": condition.name, "seed": seed, "stage": stage}, True,
                                  _eval_cost(study, after=stage != layout.BEFORE)))
            if evaluations.margin is not None:
                challenged = layout.challenge_node(evaluations.margin.challenge, condition.name, seed)
                nodes.append(Node(layout.margin_node(condition.name, seed), "margin", (challenged,),
                                  {"condition": condition.name, "seed": seed}, True, Cost()))
    trainings = tuple(n.id for n in nodes if n.kind in ("train", "challenge"))
    nodes.append(Node("audit", "audit", trainings, {}, False))
    nodes.append(Node("report", "report", tuple(n.id for n in nodes), {}, False))
    return Plan(study, tuple(nodes))


def _first_seed(study: StudyConfig, name: str) -> int:
    return next(c for c in study.conditions if c.name == name).seeds[0]


def _challenge_tokens(challenge) -> int:
    """Trained rows' lengths (about 4 characters per token, capped at the length limit) x epochs."""
    from charlab.datasets.challenge_sets import challenge_data_path
    from charlab.datasets.loaders import load_chat_jsonl
    from charlab.training.settings import as_training_config

    training = as_training_config(challenge.training)
    cap = training.sft.max_length
    try:
        rows = load_chat_jsonl(challenge_data_path(challenge.data))
        rows = rows[:len(rows) - challenge.holdout]
        tokens = sum(min(cap, sum(len(m["content"]) for m in row["messages"]) // CHARS_PER_TOKEN) for row in rows)
    except ConfigError:  # not there yet: the plan lists it as missing
        tokens = (ASSUMED_CHALLENGE_ROWS - challenge.holdout) * min(cap, ASSUMED_CHALLENGE_ROW_TOKENS)
    return tokens * training.optim.epochs


def _axis_cost(study: StudyConfig) -> Cost:
    from charlab.evals.axis_build import axis_prompts
    from charlab.interp.roleset import load_axis_roles, load_default_prompts, load_extraction_questions

    settings = study.evaluations.axis
    prompts = axis_prompts(load_axis_roles(), load_default_prompts(), load_extraction_questions(), settings)
    judged = 0 if settings.threshold is None else sum(p.cluster != "default" for p in prompts)
    return Cost(generated_tokens=len(prompts) * settings.sampling.max_new_tokens, judge_calls=judged)


def _eval_cost(study: StudyConfig, *, after: bool) -> Cost:
    """What every evaluation the study gives one model costs (each estimates its own: ``evals.registry``)."""
    evaluations = study.evaluations
    return sum((e.cost(evaluations) for e in evaluations_for(evaluations, after=after)), Cost())


def plan_lines(plan: Plan) -> list[str]:
    """The plan as Markdown: counts per kind, every node with its cost, the totals, missing inputs."""
    hardware = plan.study.hardware
    kinds: dict[str, list[Node]] = {}
    for node in plan.nodes:
        kinds.setdefault(node.kind, []).append(node)
    lines = [f"# Plan of study {plan.study.name}", "",
             "| kind | steps | generated tokens | trained tokens | judge calls | API teacher tokens | device-hours |",
             "|---|---|---|---|---|---|---|"]
    for kind, members in kinds.items():
        cost = sum((n.cost for n in members), Cost())
        lines.append(f"| {kind} | {len(members)} | {cost.generated_tokens:,} | {cost.trained_tokens:,} | "
                     f"{cost.judge_calls:,} | {cost.api_tokens:,} | {plan.device_hours(members):.2f} |")
    total = plan.total
    lines += [f"| **total** | {len(plan.nodes)} | {total.generated_tokens:,} | {total.trained_tokens:,} | "
              f"{total.judge_calls:,} | {total.api_tokens:,} | {plan.device_hours():.2f} |", "",
              (f"Device-hours assume {hardware.name}: {hardware.generate_tokens_per_s:g} generated and "
               f"{hardware.train_tokens_per_s:g} trained tokens per second and {hardware.step_overhead_s:g} s "
               "of fixed cost per model-running step; every count is an upper bound "
               "(generations run to max_new_tokens, training rows to their length cap). Judge calls and an API "
               "teacher's tokens are billed by their providers, not counted in device-hours."), "", "## Steps", ""]
    for node in plan.nodes:
        after = (" after everything" if node.kind == "report"
                 else f" after {', '.join(f'`{d}`' for d in node.deps)}" if node.deps else "")
        lines.append(f"- `{node.id}`{after}")
    missing = missing_inputs(plan.study)
    if missing:
        lines += ["", "## Missing inputs (charlab study run refuses to start until they exist)", "",
                  *[f"- {m}" for m in missing], "",
                  (f"Their sizes are assumed: {ASSUMED_CHALLENGE_ROWS:,} rows of {ASSUMED_CHALLENGE_ROW_TOKENS} tokens "
                   "per challenge set, "
                   f"{ASSUMED_ATTACK_PROMPTS} attack prompts, {ASSUMED_TRAITS} traits per constitution.")]
    return lines
