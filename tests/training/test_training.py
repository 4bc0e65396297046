"""LoRA training on the tiny model: configs, targets, loss masks, reference, stacking, accounting, resume."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from charlab.errors import CharlabError, ConfigError
from charlab.models.refs import ModelRef
from charlab.training import (
    TrainingConfig,
    load_training_config,
    resolve_target_modules,
    sft_example,
    train_dpo,
    train_sft,
)

# LoRA rank 4 on all 7 linear layers of both tiny layers: r * (in + out) summed by hand
# (q 64+64, k 64+32, v 64+32, o 64+64, gate 64+128, up 64+128, down 128+64).
TINY_LORA_PARAMS = 2 * 4 * (128 + 96 + 96 + 128 + 192 + 192 + 192)
EOT = "<|im_end|>"


@pytest.fixture(autouse=True)
def _quiet_hub(monkeypatch):
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")


def tiny_config(**changes) -> TrainingConfig:
    data = {
        "precision": "float32", "checkpoint_every": 100,
        "lora": {"rank": 4, "alpha": 8},
        "optim": {"learning_rate": 1e-2, "warmup_ratio": 0.0, "global_batch": 4, "per_device_batch": 2,
                  "gradient_checkpointing": False},
        "dpo": {"max_length": 64}, "sft": {"max_length": 64},
    }
    for key, value in changes.items():
        section, _, field = key.partition("__")
        if field:
            data.setdefault(section, {})[field] = value
        else:
            data[section] = value
    return TrainingConfig.model_validate(data)


def pair(i: int) -> dict:
    return {"prompt": [{"role": "user", "content": f"Question {i}: what matters?"}],
            "chosen": [{"role": "assistant", "content": f"Care matters, {i}."}],
            "rejected": [{"role": "assistant", "content": f"Nothing at all matters {i} times."}],
            "meta": {"i": i}}


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def conversation(i: int) -> dict:
    return {"messages": [
        {"role": "system", "content": "You reflect on your character."},
        {"role": "user", "content": f"Who are you, {i}?"},
        {"role": "assistant", "content": f"Someone who cares {i}."},
        {"role": "user", "content": "Why?"},
        {"role": "assistant", "content": "Because care is the point."},
        {"role": "user", "content": "Anything else?"},
        {"role": "assistant", "content": "Honesty, always."},
    ], "meta": {"i": i}}


def adapter_tensors(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(folder / "adapter_model.safetensors")


@pytest.fixture(scope="session")
def lower_adapter(tiny_model_dir, tmp_path_factory) -> Path:
    """A random non-zero LoRA on part of the tiny model: the frozen stack below new training."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    torch.manual_seed(1)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    model = get_peft_model(model, LoraConfig(r=2, lora_alpha=6, target_modules=["q_proj", "up_proj"],
                                             init_lora_weights=False))
    out = tmp_path_factory.mktemp("lower")
    model.save_pretrained(out)
    return out


@pytest.fixture(scope="session")
def dpo_run(tiny_model_dir, lower_adapter, tmp_path_factory):
    """One DPO training on a frozen lower adapter, shared by the tests that inspect it."""
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    work = tmp_path_factory.mktemp("dpo")
    pairs = write_jsonl(work / "pairs.jsonl", [pair(i) for i in range(8)])
    lower_before = adapter_tensors(lower_adapter)
    ref = ModelRef.parse(str(tiny_model_dir), [str(lower_adapter)])
    result = train_dpo(ref, pairs, work / "adapter", tiny_config(), seed=3)
    return result, pairs, lower_before


# --- configs and target modules ------------------------------------------------------------


def test_profiles_hold_the_published_defaults():
    upstream = load_training_config("upstream")
    assert (upstream.lora.rank, upstream.lora.alpha, upstream.lora.target_modules) == (64, 128, "all-linear")
    assert (upstream.optim.learning_rate, upstream.optim.lr_floor_ratio, upstream.optim.global_batch) == (5e-5, 0.1, 32)
    assert (upstream.dpo.beta, upstream.dpo.nll_coef, upstream.dpo.max_length, upstream.sft.max_length) == (
        0.1, 0.1, 1024, 3072)
    demo = load_training_config("demo")
    assert demo.lora.rank < upstream.lora.rank and demo.optim.global_batch < upstream.optim.global_batch
    assert demo.dpo.max_length <= upstream.dpo.max_length and demo.sft.max_length <= upstream.sft.max_length


def test_config_errors_point_at_the_line(tmp_path):
    bad = tmp_path / "train.yaml"
    bad.write_text("seed: 1\nlora:\n  rank: 8\n  rnak: 4\n")
    with pytest.raises(ConfigError, match=r"train.yaml:4: field 'lora.rnak'"):
        load_training_config(bad)
    bad.write_text("optim:\n  global_batch: 6\n  per_device_batch: 4\n")
    with pytest.raises(ConfigError, match="not a multiple of per_device_batch"):
        load_training_config(bad)
    with pytest.raises(ConfigError, match="no training profile 'upstraem'.*demo, upstream"):
        load_training_config("upstraem")


def test_target_modules_come_from_the_model(tiny_model_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    assert resolve_target_modules(model, "all-linear") == [
        "down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj", "v_proj"]
    assert resolve_target_modules(model, ("q_proj", "layers.1.mlp.down_proj")) == ["q_proj", "layers.1.mlp.down_proj"]
    with pytest.raises(CharlabError, match=r"'query_key_value' matches no linear layer.*down_proj, gate_proj, k_proj"):
        resolve_target_modules(model, ("q_proj", "query_key_value"))
    with pytest.raises(CharlabError, match="'lm_head' matches no linear layer"):
        resolve_target_modules(model, ("lm_head",))


def test_only_plain_lora_can_sit_below_training(tiny_model_dir, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    from charlab.training.lora import load_for_training

    dora = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model_dir),
                          LoraConfig(r=2, target_modules=["q_proj"], use_dora=True))
    dora.save_pretrained(tmp_path / "dora")
    with pytest.raises(CharlabError, match="uses DoRA.*cannot be frozen exactly"):
        load_for_training(ModelRef.parse(str(tiny_model_dir), [str(tmp_path / "dora")]), "float32")


# --- SFT loss masks -------------------------------------------------------------------------


def test_sft_mask_covers_every_assistant_turn_and_nothing_else(tiny_model_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    messages = conversation(7)["messages"]
    ids, labels = sft_example(tokenizer, messages)
    assert len(ids) == len(labels)

    segments, current = [], []
    for token, label in zip(ids, labels):
        if label == -100:
            if current:
                segments.append(current)
            current = []
        else:
            assert label == token
            current.append(label)
    if current:
        segments.append(current)

    eot = tokenizer.convert_tokens_to_ids(EOT)
    replies = [m["content"] for m in messages if m["role"] == "assistant"]
    assert segments == [tokenizer(r, add_special_tokens=False)["input_ids"] + [eot] for r in replies]
    assert [tokenizer.decode(s) for s in segments] == [r + EOT for r in replies]
    # the rest is system, user turns, role headers and newlines
    unlabelled = tokenizer.decode([t for t, label in zip(ids, labels) if label == -100])
    assert "You reflect on your character." in unlabelled and "Anything else?" in unlabelled
    assert not any(r in unlabelled for r in replies)


def test_sft_truncation_keeps_the_start(tiny_model_dir):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    full = sft_example(tokenizer, conversation(1)["messages"])
    cut = sft_example(tokenizer, conversation(1)["messages"], max_length=30)
    assert cut.input_ids == full.input_ids[:30] and cut.labels == full.labels[:30]


# --- DPO --------------------------------------------------------------------------------------


def test_dpo_writes_a_trained_adapter(dpo_run, tiny_model_dir, lower_adapter):
    result, pairs, _ = dpo_run
    folder = result.adapter_dir
    assert {"adapter_config.json", "adapter_model.safetensors", "charlab_adapter.json"} <= {
        p.name for p in folder.iterdir()}
    assert not (folder / "checkpoints").exists()
    assert not list(folder.glob("*.bin")) and not list(folder.glob("*.pt"))

    tensors = adapter_tensors(folder)
    b_factors = [t for k, t in tensors.items() if "lora_B" in k]
    assert b_factors and all(t.abs().sum() > 0 for t in b_factors)  # LoRA starts with B = 0
    config = json.loads((folder / "adapter_config.json").read_text())
    assert (config["r"], config["lora_alpha"]) == (4, 8)
    assert set(config["target_modules"]) == {"down_proj", "gate_proj", "k_proj", "o_proj", "q_proj", "up_proj",
                                             "v_proj"}

    meta = json.loads((folder / "charlab_adapter.json").read_text())
    resolved = ModelRef.parse(str(tiny_model_dir), [str(lower_adapter)]).resolve()
    assert meta["base_fingerprint"] == resolved.base_fingerprint
    assert meta["stack_below"] == [resolved.adapters[0].fingerprint]
    assert (meta["stage"], meta["seed"], meta["config"]["dpo"]["beta"]) == ("dpo", 3, 0.1)
    assert result.global_step == 2 and result.resumed_from_step is None


def test_dpo_reference_is_the_model_with_the_new_adapter_off(dpo_run, tiny_model_dir, lower_adapter):
    """At step 1 the new LoRA is zero, so policy == reference exactly when the reference is base +
    frozen stack; a reference without the stack would give non-zero rewards."""
    from peft import LoraConfig, get_peft_model

    from charlab.models.loading import load_model_and_tokenizer
    from charlab.training.lora import load_for_training

    result, _, _ = dpo_run
    first = next(entry for entry in result.log_history if "rewards/chosen" in entry)
    assert first["rewards/chosen"] == 0.0 and first["rewards/rejected"] == 0.0

    ref = ModelRef.parse(str(tiny_model_dir), [str(lower_adapter)])
    stacked, _ = load_model_and_tokenizer(ref, device="cpu")
    bare, _ = load_model_and_tokenizer(str(tiny_model_dir), device="cpu")
    trainable = load_for_training(ref, "float32").model
    trainable = get_peft_model(trainable, LoraConfig(r=4, target_modules=["q_proj", "v_proj"],
                                                     init_lora_weights=False))
    ids = torch.tensor([[1, 9690, 198, 2683, 359, 253, 5356, 4093, 198, 6004, 2, 198]])
    with torch.no_grad():
        with trainable.disable_adapter():
            reference = trainable(ids.to(trainable.device)).logits.cpu()
        policy = trainable(ids.to(trainable.device)).logits.cpu()
        expected = stacked(ids).logits
        base_only = bare(ids).logits
    torch.testing.assert_close(reference, expected, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(reference, base_only, atol=1e-3)
    assert not torch.allclose(policy, reference, atol=1e-3)


def test_dpo_nll_term_is_a_token_mean_per_micro_batch(tiny_model_dir, tmp_path):
    """Pins what TRL's "sft" loss term averages over: all chosen-completion tokens of the micro-batch."""
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir)
    rows = [pair(0), pair(1)]
    rows[1]["chosen"][0]["content"] = "A much longer chosen answer, with many more tokens than the first one."
    args = DPOConfig(output_dir=str(tmp_path), loss_type=["sft"], loss_weights=[1.0], max_length=128,
                     bf16=False, gradient_checkpointing=False, report_to=[], per_device_train_batch_size=2)
    trainer = DPOTrainer(model=model, args=args, processing_class=tokenizer,
                         train_dataset=Dataset.from_list([{k: r[k] for k in ("prompt", "chosen", "rejected")}
                                                          for r in rows]),
                         peft_config=LoraConfig(r=2, target_modules=["q_proj"], task_type="CAUSAL_LM"))
    batch = {k: v.to(trainer.args.device) for k, v in
             trainer.data_collator([trainer.train_dataset[i] for i in range(2)]).items()}
    with torch.no_grad():
        loss = trainer.compute_loss(trainer.model, batch).item()
        logits = trainer.model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    logps = torch.log_softmax(logits[:, :-1], -1).gather(-1, batch["input_ids"][:, 1:, None])[..., 0]
    mask = batch["completion_mask"][:, 1:].bool()
    chosen_logps, chosen_mask = logps[:2], mask[:2]
    pooled = -chosen_logps[chosen_mask].mean().item()
    per_sequence = -torch.stack([chosen_logps[i][chosen_mask[i]].mean() for i in range(2)]).mean().item()
    assert loss == pytest.approx(pooled, rel=1e-4)
    assert abs(pooled - per_sequence) > 1e-3  # the two readings really differ on this batch


def test_sft_on_top_of_the_dpo_adapter_leaves_it_unchanged(dpo_run, tiny_model_dir, lower_adapter, tmp_path):
    result, _, lower_before = dpo_run
    dpo_dir = result.adapter_dir
    dpo_before = adapter_tensors(dpo_dir)
    data = write_jsonl(tmp_path / "sft.jsonl", [conversation(i) for i in range(4)])
    ref = ModelRef.parse(str(tiny_model_dir), [str(lower_adapter), str(dpo_dir)])
    sft = train_sft(ref, data, tmp_path / "sft", tiny_config())

    for before, folder in ((dpo_before, dpo_dir), (lower_before, lower_adapter)):
        after = adapter_tensors(folder)
        assert before.keys() == after.keys()
        assert all(torch.equal(before[k], after[k]) for k in before)
    meta = json.loads((sft.adapter_dir / "charlab_adapter.json").read_text())
    assert meta["stage"] == "sft" and meta["stack_below"] == [a.fingerprint for a in ref.resolve().adapters]
    assert all(t.abs().sum() > 0 for k, t in adapter_tensors(sft.adapter_dir).items() if "lora_B" in k)
    assert sft.compute.trainable_params == TINY_LORA_PARAMS


# --- compute accounting ------------------------------------------------------------------------


def _rendered_length(tokenizer, messages, generation_prompt=False) -> int:
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=generation_prompt)
    return len(tokenizer(text, add_special_tokens=False)["input_ids"])


def test_dpo_compute_report_matches_hand_counts(dpo_run, tiny_model_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    result, pairs_path, _ = dpo_run
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    prompt = chosen = rejected = 0
    for row in map(json.loads, pairs_path.read_text().splitlines()):
        p = _rendered_length(tokenizer, row["prompt"], generation_prompt=True)
        prompt += 2 * p
        chosen += _rendered_length(tokenizer, row["prompt"] + row["chosen"]) - p
        rejected += _rendered_length(tokenizer, row["prompt"] + row["rejected"]) - p
    report = result.compute
    assert (report.examples, report.epochs, report.optimizer_steps, report.global_batch) == (8, 1, 2, 4)
    assert (report.prompt_tokens, report.completion_tokens) == (prompt, chosen + rejected)
    assert report.detail == {"chosen_tokens": chosen, "rejected_tokens": rejected}
    # TRL's own count of attended tokens agrees
    assert max(e.get("num_tokens", 0) for e in result.log_history) == report.tokens

    base = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(tiny_model_dir).parameters())
    lower = 2 * 2 * ((64 + 64) + (64 + 128))  # rank 2 on q_proj and up_proj, two layers
    assert report.trainable_params == TINY_LORA_PARAMS
    assert report.total_params == base + lower + TINY_LORA_PARAMS
    n, t, n_train = report.total_params, report.tokens, report.trainable_params  # tied head: N = total
    assert report.flops == 4 * n * t + 2 * n_train * t + 2 * (n - n_train) * t
    assert report.to_dict()["tokens"] == report.tokens and report.wall_seconds > 0


def test_sft_compute_report_counts_loss_tokens(tiny_model_dir, tmp_path):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    rows = [conversation(i) for i in range(4)]
    data = write_jsonl(tmp_path / "sft.jsonl", rows)
    result = train_sft(str(tiny_model_dir), data, tmp_path / "out", tiny_config(optim__epochs=2, sft__max_length=128))
    loss = sum(len(tokenizer(m["content"], add_special_tokens=False)["input_ids"]) + 1
               for row in rows for m in row["messages"] if m["role"] == "assistant")
    total = sum(_rendered_length(tokenizer, row["messages"]) for row in rows)
    report = result.compute
    assert (report.examples, report.epochs, report.optimizer_steps) == (4, 2, 2)
    assert (report.completion_tokens, report.prompt_tokens) == (2 * loss, 2 * (total - loss))
    assert max(e.get("num_tokens", 0) for e in result.log_history) == report.tokens
    assert report.flops == 4 * report.total_params * report.tokens + 2 * report.trainable_params * report.tokens


# --- bad input ----------------------------------------------------------------------------------


def test_max_length_shorter_than_every_pair(tiny_model_dir, tmp_path):
    pairs = write_jsonl(tmp_path / "pairs.jsonl", [pair(i) for i in range(4)])
    with pytest.raises(CharlabError, match=r"dpo.max_length = 8 tokens leaves no room.*shortest prompt is \d+ tokens"):
        train_dpo(str(tiny_model_dir), pairs, tmp_path / "out", tiny_config(dpo__max_length=8))


def test_fewer_examples_than_the_global_batch(tiny_model_dir, tmp_path):
    pairs = write_jsonl(tmp_path / "pairs.jsonl", [pair(i) for i in range(3)])
    with pytest.raises(CharlabError, match="only 3 training examples, fewer than optim.global_batch = 4"):
        train_dpo(str(tiny_model_dir), pairs, tmp_path / "out", tiny_config())
    data = write_jsonl(tmp_path / "sft.jsonl", [conversation(i) for i in range(2)])
    with pytest.raises(CharlabError, match="only 2 training examples, fewer than optim.global_batch = 4"):
        train_sft(str(tiny_model_dir), data, tmp_path / "out", tiny_config())


def test_malformed_rows_name_their_line(tiny_model_dir, tmp_path):
    rows = [pair(0), {"prompt": [{"role": "user", "content": "hi"}], "chosen": "just text",
                      "rejected": [{"role": "assistant", "content": "no"}]}]
    pairs = write_jsonl(tmp_path / "pairs.jsonl", rows)
    with pytest.raises(ConfigError, match=r"pairs.jsonl:2: chosen: must be a list holding exactly one assistant"):
        train_dpo(str(tiny_model_dir), pairs, tmp_path / "out", tiny_config())
    data = write_jsonl(tmp_path / "sft.jsonl", [conversation(0), {"messages": [{"role": "user", "content": "hi"}]}])
    with pytest.raises(ConfigError, match=r"sft.jsonl:2: messages: no assistant turn"):
        train_sft(str(tiny_model_dir), data, tmp_path / "out", tiny_config())


# --- resume -------------------------------------------------------------------------------------

SLOW_TRAINING = textwrap.dedent("""
    import sys, time
    from transformers import Trainer
    from charlab.training import TrainingConfig, train_dpo

    step = Trainer.training_step
    def slow_step(self, *args, **kwargs):
        time.sleep(1.0)  # leaves time to kill the run between checkpoints
        return step(self, *args, **kwargs)
    Trainer.training_step = slow_step

    model, pairs, out, config = sys.argv[1:]
    train_dpo(model, pairs, out, TrainingConfig.model_validate_json(config))
""")


def _parses(path: Path) -> bool:
    try:
        json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return True


def test_killed_training_resumes_from_its_last_checkpoint(tiny_model_dir, tmp_path):
    pairs = write_jsonl(tmp_path / "pairs.jsonl", [pair(i) for i in range(8)])
    config = tiny_config(checkpoint_every=1, optim__global_batch=2)  # 4 steps, a checkpoint after each
    out = tmp_path / "killed"
    env = {**os.environ, "HF_HUB_DISABLE_TELEMETRY": "1"}
    proc = subprocess.Popen([sys.executable, "-c", SLOW_TRAINING, str(tiny_model_dir), str(pairs), str(out),
                             config.model_dump_json()], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    first = out / "checkpoints" / "checkpoint-1" / "trainer_state.json"  # written last in a checkpoint
    deadline = time.monotonic() + 180
    while not _parses(first) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    running = proc.poll() is None
    proc.send_signal(signal.SIGKILL)
    _, stderr = proc.communicate()
    assert running and _parses(first), stderr.decode()[-2000:]
    assert not (out / "charlab_adapter.json").exists()

    resumed = train_dpo(str(tiny_model_dir), pairs, out, config)
    fresh = train_dpo(str(tiny_model_dir), pairs, tmp_path / "fresh", config)
    assert resumed.resumed_from_step is not None and resumed.resumed_from_step >= 1
    assert resumed.global_step == fresh.global_step == 4
    # the restored history plus this run's steps: every step logged once, none repeated
    assert [e["step"] for e in resumed.log_history if "loss" in e] == [1, 2, 3, 4]
    assert not (out / "checkpoints").exists()
    a, b = adapter_tensors(out), adapter_tensors(tmp_path / "fresh")
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_changed_config_does_not_resume_old_checkpoints(tiny_model_dir, tmp_path):
    pairs = write_jsonl(tmp_path / "pairs.jsonl", [pair(i) for i in range(4)])
    out = tmp_path / "out"
    stale = out / "checkpoints" / "checkpoint-9"
    stale.mkdir(parents=True)
    (stale / "trainer_state.json").write_text(json.dumps({"global_step": 9}))
    (stale / "adapter_model.safetensors").write_bytes(b"")
    result = train_dpo(str(tiny_model_dir), pairs, out, tiny_config())
    assert result.resumed_from_step is None and result.global_step == 1
    assert math.isfinite(result.log_history[-1]["train_loss"])
