"""``charlab train`` from the command line: help with examples, and bad input exits 2 with a clear message."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

SUBCOMMANDS = ("character", "prompts", "distill", "pairs", "introspect", "dpo", "sft", "compose")


def charlab(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "charlab", *args], capture_output=True, text=True)


@pytest.mark.parametrize("command", SUBCOMMANDS)
def test_every_train_command_has_help_with_an_example(command):
    result = charlab("train", command, "--help")
    assert result.returncode == 0 and "Example: charlab train" in result.stdout


def test_unknown_recipe_profile(tmp_path):
    result = charlab("train", "pairs", "--constitution", "integrity", "--config", "nope", "--out", str(tmp_path / "r"))
    assert result.returncode == 2
    assert "no recipe profile 'nope'; profiles: demo, upstream" in result.stderr and "Traceback" not in result.stderr


def test_recipe_config_with_a_bad_field_names_file_and_line(tmp_path):
    config = tmp_path / "recipe.yaml"
    config.write_text("distill:\n  samples_per_prompt: 0\n")
    result = charlab("train", "pairs", "--constitution", "integrity", "--config", str(config),
                     "--out", str(tmp_path / "r"))
    assert result.returncode == 2
    assert f"{config}:2: field 'distill.samples_per_prompt'" in result.stderr
    assert not (tmp_path / "r").exists() or not any((tmp_path / "r").rglob("manifest.json"))


def test_dpo_on_a_malformed_pairs_file_names_the_line(tmp_path):
    pairs = tmp_path / "pairs.jsonl"
    good = {"prompt": [{"role": "user", "content": "Hi"}], "chosen": [{"role": "assistant", "content": "Hello."}],
            "rejected": [{"role": "assistant", "content": "Go away."}]}
    bad = {**good, "chosen": [{"role": "robot", "content": "Beep."}]}
    pairs.write_text(json.dumps(good) + "\n" + json.dumps(bad) + "\n")
    result = charlab("train", "dpo", "--data", str(pairs), "--config", "demo", "--out", str(tmp_path / "adapter"))
    assert result.returncode == 2
    assert f"{pairs}:2:" in result.stderr and "robot" in result.stderr
    assert not (tmp_path / "adapter").exists()


def test_sft_on_a_missing_file(tmp_path):
    result = charlab("train", "sft", "--data", str(tmp_path / "none.jsonl"), "--out", str(tmp_path / "adapter"))
    assert result.returncode == 2 and "none.jsonl: file not found" in result.stderr
