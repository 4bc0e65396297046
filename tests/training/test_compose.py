"""Exact adapter composition: one LoRA whose delta is the sum of a stack's deltas."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from charlab.errors import CharlabError
from charlab.training import compose_adapters

IDS = torch.tensor([[1, 9690, 198, 2683, 359, 253, 5356, 4093, 198, 6004, 2, 198, 1, 520, 9531, 198]])


def base_model(folder: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).eval()


def random_lora(tiny_model_dir: Path, out: Path, seed: int, **options) -> Path:
    """A LoRA with random non-zero A and B (``init_lora_weights=False``) saved to ``out``."""
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(seed)
    model = get_peft_model(base_model(tiny_model_dir), LoraConfig(init_lora_weights=False, **options))
    model.save_pretrained(out)
    return out


def logits(model) -> torch.Tensor:
    with torch.no_grad():
        return model(IDS).logits


@pytest.fixture(scope="module")
def stack(tiny_model_dir, tmp_path_factory) -> list[Path]:
    """Three adapters with different ranks, scalings (one rsLoRA) and partly different targets."""
    root = tmp_path_factory.mktemp("stack")
    return [
        random_lora(tiny_model_dir, root / "a", 1, r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"]),
        random_lora(tiny_model_dir, root / "b", 2, r=2, lora_alpha=16, target_modules=["v_proj", "down_proj"],
                    lora_dropout=0.1),
        random_lora(tiny_model_dir, root / "c", 3, r=3, lora_alpha=5, use_rslora=True,
                    target_modules=["q_proj", "gate_proj"], layers_to_transform=[1]),
    ]


def test_composed_adapter_equals_the_stack_and_sequential_merges(tiny_model_dir, stack, tmp_path):
    from peft import PeftModel

    composed = compose_adapters(stack, tmp_path / "composed")
    config = json.loads((composed / "adapter_config.json").read_text())
    assert (config["r"], config["lora_alpha"], config["use_rslora"], config["lora_dropout"]) == (9, 9, False, 0.0)

    one = PeftModel.from_pretrained(base_model(tiny_model_dir), composed).eval()

    active = PeftModel.from_pretrained(base_model(tiny_model_dir), stack[0], adapter_name="a0")
    for i, folder in enumerate(stack[1:], start=1):
        active.load_adapter(folder, adapter_name=f"a{i}")
    active.base_model.set_adapter(["a0", "a1", "a2"])
    active.eval()

    merged = base_model(tiny_model_dir)
    for folder in stack:
        merged = PeftModel.from_pretrained(merged, folder).merge_and_unload()

    expected = logits(active)
    torch.testing.assert_close(logits(one), expected, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(logits(merged), expected, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(logits(base_model(tiny_model_dir)), expected, atol=1e-3)


def test_modules_missing_from_an_adapter_get_zero_blocks(stack, tmp_path):
    from safetensors.torch import load_file

    tensors = load_file(compose_adapters(stack, tmp_path / "composed") / "adapter_model.safetensors")
    prefix = "base_model.model.model.layers"
    down_a = tensors[f"{prefix}.0.mlp.down_proj.lora_A.weight"]  # only adapter b (rank 2, rows 4:6) has it
    assert down_a.shape == (9, 128)
    assert down_a[:4].abs().sum() == 0 and down_a[6:].abs().sum() == 0 and down_a[4:6].abs().sum() > 0
    q0 = tensors[f"{prefix}.0.self_attn.q_proj.lora_B.weight"]  # c adapts layer 1 only
    assert q0[:, 6:].abs().sum() == 0 and q0[:, :4].abs().sum() > 0
    assert f"{prefix}.1.mlp.gate_proj.lora_A.weight" in tensors
    assert f"{prefix}.0.mlp.gate_proj.lora_A.weight" not in tensors


def test_linear_weighted_merge_is_not_the_sum(tiny_model_dir, tmp_path):
    """Upstream's PEFT ``combination_type="linear"`` multiplies summed factors: cross terms B_i A_j."""
    from peft import PeftModel

    first = random_lora(tiny_model_dir, tmp_path / "x", 4, r=2, lora_alpha=4, target_modules=["q_proj"])
    second = random_lora(tiny_model_dir, tmp_path / "y", 5, r=2, lora_alpha=4, target_modules=["q_proj"])
    exact = logits(PeftModel.from_pretrained(base_model(tiny_model_dir),
                                             compose_adapters([first, second], tmp_path / "sum")).eval())

    model = PeftModel.from_pretrained(base_model(tiny_model_dir), first, adapter_name="x")
    model.load_adapter(second, adapter_name="y")
    model.add_weighted_adapter(["x", "y"], [1.0, 1.0], "linear", combination_type="linear")
    model.set_adapter("linear")
    assert not torch.allclose(logits(model.eval()), exact, atol=1e-3)


def test_records_the_charlab_base(tiny_model_dir, tmp_path):
    folders = [random_lora(tiny_model_dir, tmp_path / n, i, r=2, target_modules=["q_proj"]) for i, n in
               enumerate("pq")]
    for folder in folders:
        (folder / "charlab_adapter.json").write_text(json.dumps({"base_fingerprint": "local:abc"}))
    meta = json.loads((compose_adapters(folders, tmp_path / "out") / "charlab_adapter.json").read_text())
    assert meta["base_fingerprint"] == "local:abc" and meta["stage"] == "compose" and len(meta["composed_from"]) == 2

    (folders[1] / "charlab_adapter.json").write_text(json.dumps({"base_fingerprint": "local:other"}))
    with pytest.raises(CharlabError, match="different bases"):
        compose_adapters(folders, tmp_path / "mixed")


@pytest.mark.parametrize("options, reason", [
    ({"use_dora": True}, "DoRA"),
    ({"modules_to_save": ["lm_head"]}, "modules_to_save"),
    ({"lora_bias": True}, "LoRA bias"),
])
def test_refuses_what_cannot_compose_exactly(tiny_model_dir, tmp_path, options, reason):
    plain = random_lora(tiny_model_dir, tmp_path / "plain", 0, r=2, target_modules=["q_proj"])
    odd = random_lora(tiny_model_dir, tmp_path / "odd", 1, r=2, target_modules=["q_proj"], **options)
    with pytest.raises(CharlabError, match=f"cannot be composed exactly.*{reason}"):
        compose_adapters([plain, odd], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_refuses_pickled_and_non_lora_adapters(tiny_model_dir, tmp_path):
    from peft import IA3Config, get_peft_model

    pickled = random_lora(tiny_model_dir, tmp_path / "pickled", 0, r=2, target_modules=["q_proj"])
    weights = pickled / "adapter_model.safetensors"
    torch.save({}, pickled / "adapter_model.bin")
    weights.unlink()
    with pytest.raises(CharlabError, match="only a pickled adapter_model.bin"):
        compose_adapters([pickled], tmp_path / "out")

    ia3 = get_peft_model(base_model(tiny_model_dir), IA3Config(target_modules=["k_proj", "down_proj"],
                                                               feedforward_modules=["down_proj"]))
    ia3.save_pretrained(tmp_path / "ia3")
    with pytest.raises(CharlabError, match="peft_type is 'IA3', not LORA"):
        compose_adapters([tmp_path / "ia3"], tmp_path / "out")
