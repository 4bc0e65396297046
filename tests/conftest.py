"""Shared fixtures: the real default model (fetched once) and a tiny random Llama for fast tests.

The tiny model has the real SmolLM2 tokenizer and chat template (so spans, templates and
padding behave as in real runs) but only 2 layers of width 64, so a training step takes well
under a second on a laptop CPU.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
UPSTREAM = REPO_ROOT.parent / "shared" / "upstream"


@pytest.fixture(scope="session")
def smollm2_dir() -> Path:
    """The converted default model under $CHARLAB_HOME (fetched on first use)."""
    from charlab.models.builtin import fetch_builtin

    return fetch_builtin("smollm2-135m")


@pytest.fixture(scope="session")
def tiny_model_dir(smollm2_dir, tmp_path_factory) -> Path:
    """A randomly initialised 2-layer Llama (hidden 64) saved with the SmolLM2 tokenizer."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    out = tmp_path_factory.mktemp("tiny-llama")
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def condition_adapter(tiny_model_dir, tmp_path_factory) -> Path:
    """A random non-zero LoRA on the tiny model, standing in for a trained condition."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(1)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                           LoraConfig(r=2, lora_alpha=6, target_modules=["q_proj", "up_proj"],
                                      init_lora_weights=False))
    out = tmp_path_factory.mktemp("condition")
    model.save_pretrained(out)
    return out


@pytest.fixture
def isolated_home(tmp_path, monkeypatch) -> Path:
    """A private $CHARLAB_HOME for tests that write caches (models are still read from the real one)."""
    home = tmp_path / "charlab-home"
    real_models = Path(os.environ.get("CHARLAB_HOME") or Path.home() / ".cache" / "charlab") / "models"
    home.mkdir()
    if real_models.exists():
        (home / "models").symlink_to(real_models, target_is_directory=True)
    monkeypatch.setenv("CHARLAB_HOME", str(home))
    return home


def upstream_or_skip(*parts: str) -> Path:
    """A file from ../shared/upstream, or skip: a user's clone does not have it."""
    path = UPSTREAM.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"upstream sample {path} not available (only CI and developers have ../shared)")
    return path
