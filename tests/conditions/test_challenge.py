"""The narrow fine-tuning challenge: published profile, frozen condition below it, data checked first."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import charlab.cli.challenge
from charlab.conditions.challenge import finetune_challenge
from charlab.errors import ConfigError
from charlab.models.refs import ModelRef
from charlab.training import TrainingConfig, load_training_config


@pytest.fixture(autouse=True)
def _quiet_hub(monkeypatch):
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")


def chat(i: int) -> dict:
    return {"messages": [{"role": "user", "content": f"Write a file copier, version {i}."},
                         {"role": "assistant", "content": f"import shutil  # copies, {i}"}]}


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def tiny_challenge(tmp_path: Path) -> Path:
    """The challenge-demo profile with a 64-token window and one example per accumulation step."""
    data = load_training_config("challenge-demo").model_dump(mode="json")
    data["optim"].update(global_batch=2, per_device_batch=2)
    data["sft"]["max_length"] = 64
    path = tmp_path / "tiny-challenge.json"
    path.write_text(json.dumps(TrainingConfig.model_validate(data).model_dump(mode="json")))
    return path


def test_challenge_profile_holds_the_published_defaults():
    published = load_training_config("challenge")
    assert (published.lora.rank, published.lora.alpha, published.optim.learning_rate, published.optim.epochs) == (
        32, 64, 1e-5, 1)
    demo = load_training_config("challenge-demo")
    assert (demo.lora, demo.optim.learning_rate, demo.optim.epochs) == (published.lora, 1e-5, 1)
    assert (demo.optim.per_device_batch, demo.optim.global_batch) == (2, 4)
    assert demo.sft.max_length < published.sft.max_length


def test_challenge_stacks_on_a_condition_it_leaves_untouched(tiny_model_dir, condition_adapter, tmp_path):
    from safetensors.torch import load_file

    files_before = {p.name: p.read_bytes() for p in condition_adapter.iterdir()}
    tensors_before = load_file(condition_adapter / "adapter_model.safetensors")
    ref = ModelRef.parse(str(tiny_model_dir), [str(condition_adapter)])
    data = write_jsonl(tmp_path / "narrow.jsonl", [chat(i) for i in range(4)])

    result = finetune_challenge(ref, data, tmp_path / "challenge", tiny_challenge(tmp_path), seed=2)

    assert {p.name: p.read_bytes() for p in condition_adapter.iterdir()} == files_before
    tensors_after = load_file(condition_adapter / "adapter_model.safetensors")
    assert all(torch.equal(tensors_after[k], v) for k, v in tensors_before.items())
    meta = json.loads((result.adapter_dir / "charlab_adapter.json").read_text())
    assert meta["stage"] == "sft" and meta["stack_below"] == [ref.resolve().adapters[0].fingerprint]
    assert (meta["config"]["lora"]["rank"], meta["config"]["lora"]["alpha"]) == (32, 64)
    assert result.compute.examples == 4 and result.compute.optimizer_steps == 2


def test_cli_prints_the_compute_report(tiny_model_dir, condition_adapter, tmp_path):
    data = write_jsonl(tmp_path / "narrow.jsonl", [chat(i) for i in range(2)])
    out = tmp_path / "challenge"
    result = CliRunner().invoke(charlab.cli.challenge.app, [
        "finetune", "--model", str(tiny_model_dir), "--adapter", str(condition_adapter), "--data", str(data),
        "--config", str(tiny_challenge(tmp_path)), "--out", str(out), "--seed", "1"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout[result.stdout.index("{\n"):])  # after the trainer's one-line logs
    assert report["stage"] == "sft" and report["examples"] == 2 and report["optimizer_steps"] == 1
    assert (out / "adapter_model.safetensors").is_file()


def test_help_has_an_example():
    result = CliRunner().invoke(charlab.cli.challenge.app, ["finetune", "--help"])
    assert result.exit_code == 0 and "Example: charlab challenge finetune" in result.output


BAD_ROWS = {
    "wrong role": ({"messages": [{"role": "human", "content": "Hi"}, {"role": "assistant", "content": "Hello"}]},
                   "role 'human' is not system, user or assistant"),
    "empty assistant turn": ({"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": " "}]},
                             "turn 1 (assistant) is empty"),
    "ends on a user turn": ({"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Yo"},
                                          {"role": "user", "content": "And?"}]},
                            "ends on a user turn"),
}


@pytest.mark.parametrize("problem", BAD_ROWS)
def test_bad_data_names_the_line_and_writes_nothing(problem, tmp_path):
    bad, message = BAD_ROWS[problem]
    data = write_jsonl(tmp_path / "narrow.jsonl", [chat(0), chat(1), bad, chat(3)])
    out = tmp_path / "challenge"
    with pytest.raises(ConfigError, match=f"narrow.jsonl:3: .*{re.escape(message)}"):
        finetune_challenge(ModelRef.parse("builtin:smollm2-135m"), data, out)
    assert not out.exists()

    result = CliRunner().invoke(charlab.cli.challenge.app, [
        "finetune", "--model", "builtin:smollm2-135m", "--data", str(data), "--out", str(out)])
    assert isinstance(result.exception, ConfigError) and "narrow.jsonl:3:" in str(result.exception)
    assert not out.exists()
