"""GPU smoke run at Llama-3.1-8B shape: charlab's hf backend and DPO training on one GPU.

Machines without hub access cannot load the real Llama-3.1-8B-Instruct, so this builds a model
of the same shape (32 layers, width 4096, 8 KV heads) with random bf16 weights and the SmolLM2
tokenizer, saves it as a local folder, and runs charlab on it exactly as on a real checkpoint:
batched vs one-at-a-time generation through ``HFBackend``, then a DPO step with the upstream
LoRA settings (rank 64 on all linear layers, global batch 32) through ``train_dpo``. It prints
one JSON object with timings and peak GPU memory. Numbers from random weights measure speed
and memory, not behaviour.

Example: python benchmarks/gpu_smoke.py --tokenizer ~/.cache/charlab/models/smollm2-135m --out /tmp/smoke
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from charlab.io import atomic_write_jsonl
from charlab.models.base import GenerationRequest, SamplingParams
from charlab.models.hf import HFBackend
from charlab.models.refs import ModelRef
from charlab.training.dpo import train_dpo
from charlab.training.settings import TrainingConfig


def build_model(tokenizer_dir: Path, out: Path, layers: int, hidden: int, intermediate: int) -> Path:
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=hidden, intermediate_size=intermediate,
                         num_hidden_layers=layers, num_attention_heads=hidden // 128,
                         num_key_value_heads=min(8, hidden // 128),
                         max_position_embeddings=8192, rope_theta=500000.0, bos_token_id=tokenizer.bos_token_id,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    torch.set_default_dtype(torch.bfloat16)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = LlamaForCausalLM(config)
    torch.set_default_dtype(torch.float32)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    del model
    torch.cuda.empty_cache()
    return out


def peak_gib() -> float | None:
    return round(torch.cuda.max_memory_allocated() / 2**30, 1) if torch.cuda.is_available() else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokenizer", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--layers", type=int, default=32)
    parser.add_argument("--hidden", type=int, default=4096)
    parser.add_argument("--intermediate", type=int, default=14336)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--pairs", type=int, default=32)
    args = parser.parse_args()
    report: dict = {"device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"}

    started = time.perf_counter()
    model_dir = build_model(args.tokenizer, args.out / "model", args.layers, args.hidden, args.intermediate)
    report["build_and_save_s"] = round(time.perf_counter() - started, 1)

    prompts = [f"Question {i}: what would you do with a free afternoon?" for i in range(16)]
    greedy = SamplingParams(max_new_tokens=args.new_tokens)
    requests = [GenerationRequest.make([{"role": "user", "content": p}], greedy) for p in prompts]
    started = time.perf_counter()
    backend = HFBackend(ModelRef.parse(str(model_dir)), batch_size=16)
    report["load_s"] = round(time.perf_counter() - started, 1)
    backend.generate(requests[:2])  # warm-up
    started = time.perf_counter()
    batched = backend.generate(requests)
    batched_s = time.perf_counter() - started
    started = time.perf_counter()
    single = [backend.generate([r])[0] for r in requests[:4]]
    single_s = time.perf_counter() - started
    report["generate_batched_tok_per_s"] = round(sum(g.completion_tokens for g in batched) / batched_s, 1)
    report["generate_single_tok_per_s"] = round(sum(g.completion_tokens for g in single) / single_s, 1)
    report["peak_gpu_gib_generate"] = peak_gib()
    backend.close()
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()

    pairs = [{"prompt": [{"role": "user", "content": p}],
              "chosen": [{"role": "assistant", "content": "A long walk and a good book. " * 20}],
              "rejected": [{"role": "assistant", "content": "Nothing much. " * 30}]}
             for p in (prompts * (args.pairs // len(prompts) + 1))[:args.pairs]]
    atomic_write_jsonl(args.out / "pairs.jsonl", pairs)
    config = TrainingConfig.model_validate({
        "precision": "auto", "checkpoint_every": 1000,  # bfloat16 on CUDA
        "lora": {"rank": 64, "alpha": 128},
        "optim": {"global_batch": 32, "per_device_batch": 8, "gradient_checkpointing": True},
        "dpo": {"max_length": 512},
    })
    started = time.perf_counter()
    result = train_dpo(ModelRef.parse(str(model_dir)), args.out / "pairs.jsonl", args.out / "dpo", config)
    report["dpo_wall_s"] = round(time.perf_counter() - started, 1)
    report["dpo_compute"] = result.compute.to_dict()
    report["peak_gpu_gib_dpo"] = peak_gib()
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
