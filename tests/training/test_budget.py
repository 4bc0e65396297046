"""Matched compute: the budget's settings and how a dataset is fitted to an amount of training."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from charlab.errors import ConfigError
from charlab.training.budget import Amount, Budget, select_rows
from charlab.training.settings import OptimSettings


def test_budget_states_exactly_one_amount():
    with pytest.raises(ValidationError, match="either steps or tokens"):
        Budget(training="demo")
    with pytest.raises(ValidationError, match="either steps or tokens"):
        Budget(training="demo", steps=3, tokens=100)
    with pytest.raises(ValidationError, match="summing to 1"):
        Budget(training="demo", steps=3, stage_shares={"dpo": 0.7, "sft": 0.7})
    with pytest.raises(ValidationError, match="unknown stage"):
        Budget(training="demo", steps=3, stage_shares={"dpo": 0.5, "kto": 0.5})


def test_two_stage_conditions_split_the_total_and_one_stage_takes_it_all():
    budget = Budget(training="demo", tokens=10_000, stage_shares={"dpo": 0.3, "sft": 0.7})
    assert budget.for_stage("dpo", ("dpo", "sft")).amount == Amount(tokens=3000)
    assert budget.for_stage("sft", ("sft",)).amount == Amount(tokens=10_000)
    # The second stage gets what the first really left, so the first's rounding does not carry over.
    assert budget.for_stage("sft", ("dpo", "sft"), {"tokens": 2900, "optimizer_steps": 3}).amount == Amount(
        tokens=7100)
    steps = Budget(training="demo", steps=9)
    assert steps.for_stage("dpo", ("dpo", "sft")).amount.steps == 4  # round(4.5), to even
    assert steps.for_stage("sft", ("dpo", "sft"), {"tokens": 1, "optimizer_steps": 4}).amount.steps == 5
    with pytest.raises(ValueError, match="pass its compute"):
        steps.for_stage("sft", ("dpo", "sft"))


def test_budget_training_must_leave_epochs_to_the_budget(tmp_path):
    config = tmp_path / "three-epochs.yaml"
    config.write_text("optim: {epochs: 3, global_batch: 2, per_device_batch: 2}\n")
    with pytest.raises(ConfigError, match="optim.epochs is 3"):
        Budget(training=str(config), steps=2).training_config()
    with pytest.raises(ConfigError, match="leave epochs at 1"):
        Budget(training="demo", steps=2).for_stage("sft", ("sft",)).select(
            [10] * 8, OptimSettings(epochs=2, global_batch=2, per_device_batch=2), seed=0, where="x.jsonl")


def test_steps_subsample_without_repeats_when_data_is_plenty():
    selection = select_rows([5] * 20, Amount(steps=3), global_batch=4, max_repeats=2, seed=0, where="d")
    assert len(selection.indices) == 12 and len(set(selection.indices)) == 12
    assert selection.max_uses == 1 and selection.tokens == 60


def test_steps_repeat_rows_in_whole_passes_when_data_is_short():
    selection = select_rows([5] * 6, Amount(steps=4), global_batch=4, max_repeats=3, seed=1, where="d")
    assert len(selection.indices) == 16
    assert sorted(selection.indices[:6]) == list(range(6))  # the first pass uses every row once
    assert sorted(selection.indices[6:12]) == list(range(6))  # and so does the second
    assert selection.max_uses == 3 and selection.passes == pytest.approx(16 / 6)


def test_token_target_is_hit_within_half_a_batch():
    tokens = [10 * (i % 7 + 1) for i in range(30)]
    selection = select_rows(tokens, Amount(tokens=1000), global_batch=2, max_repeats=2, seed=3, where="d")
    assert len(selection.indices) % 2 == 0
    assert abs(selection.tokens - 1000) <= max(tokens)  # the nearest whole batch, not the first one past it
    assert selection.tokens == sum(tokens[i] for i in selection.indices)


def test_seed_changes_the_selection_and_reproduces_it():
    tokens = list(range(1, 41))
    pick = lambda seed: select_rows(tokens, Amount(steps=5), global_batch=2, max_repeats=1, seed=seed,  # noqa: E731
                                    where="d").indices
    assert pick(0) == pick(0)
    assert pick(0) != pick(1)


def test_budget_beyond_the_repeat_limit_names_the_numbers():
    with pytest.raises(ConfigError) as caught:
        select_rows([5] * 10, Amount(steps=20), global_batch=4, max_repeats=3, seed=0, where="data/hhh.jsonl")
    message = str(caught.value)
    assert "data/hhh.jsonl" in message and "80 examples" in message and "10 rows" in message
    assert "8.00 uses" in message and "max_repeats = 3" in message
    with pytest.raises(ConfigError) as caught:
        select_rows([100] * 10, Amount(tokens=5000), global_batch=2, max_repeats=4, seed=0, where="sft.jsonl")
    assert "5000 tokens" in str(caught.value) and "give only 4000" in str(caught.value)


def test_budget_smaller_than_one_batch_is_an_error():
    with pytest.raises(ConfigError, match="less than half of one global batch"):
        select_rows([500] * 10, Amount(tokens=100), global_batch=4, max_repeats=1, seed=0, where="d")
