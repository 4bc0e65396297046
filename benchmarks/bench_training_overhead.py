"""charlab's DPO recipe vs a plain TRL script with identical settings: what does charlab add?

Both sides train the same LoRA (all linear layers) with DPO + NLL on the same pairs and model, with
the same batch, schedule, precision and checkpoint interval, and save the adapter. charlab's side is
``train_dpo`` (row checks, stack freezing, token accounting, checkpoint bookkeeping, adapter meta);
the plain side is the TRL quick-start. After one untimed warm-up of each, the two alternate for
``--repeats`` rounds. Reports median seconds end to end (load + build + train + save) and inside
``trainer.train`` for both, and charlab / plain ratios of the medians (target: at most 1.05) and of
the fastest runs (``*_best``: the better estimate on a machine shared with other work). Prints JSON.

    python benchmarks/bench_training_overhead.py [--model builtin:smollm2-135m] [--steps 4] [--precision auto]
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import tempfile
import time
from pathlib import Path

import torch

from charlab.models.loading import pick_device, pick_dtype
from charlab.models.refs import ModelRef
from charlab.training import TrainingConfig, load_training_config, train_dpo


def make_pairs(path: Path, n: int) -> Path:
    rows = []
    for i in range(n):
        question = f"Question {i}: how should a good assistant respond when a user is upset about {i} things?"
        rows.append({
            "prompt": [{"role": "user", "content": question}],
            "chosen": [{"role": "assistant", "content": f"With patience and care. Listen first, then help with "
                                                        f"each of the {i} things, one at a time."}],
            "rejected": [{"role": "assistant", "content": f"Tell them {i} things is not a real problem."}],
            "meta": {"i": i},
        })
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def run_charlab(model: str, pairs: Path, out: Path, config: TrainingConfig) -> tuple[float, float]:
    start = time.perf_counter()
    result = train_dpo(model, pairs, out, config)
    return time.perf_counter() - start, result.compute.wall_seconds


def run_plain_trl(model: str, pairs: Path, out: Path, config: TrainingConfig) -> tuple[float, float]:
    """The TRL quick-start with the same settings as charlab's profile (no charlab code)."""
    from datasets import load_dataset
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from trl import DPOConfig, DPOTrainer

    start = time.perf_counter()
    path = ModelRef(base=model).resolve().load_from
    tokenizer = AutoTokenizer.from_pretrained(path)
    dtype = pick_dtype(config.precision, pick_device("auto"))
    policy = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    dataset = load_dataset("json", data_files=str(pairs), split="train").remove_columns("meta")
    optim = config.optim
    args = DPOConfig(
        output_dir=str(out / "checkpoints"), seed=config.seed, data_seed=config.seed,
        learning_rate=optim.learning_rate, lr_scheduler_type="cosine_with_min_lr",
        lr_scheduler_kwargs={"min_lr_rate": optim.lr_floor_ratio}, warmup_steps=optim.warmup_ratio,
        weight_decay=optim.weight_decay, max_grad_norm=optim.max_grad_norm, num_train_epochs=optim.epochs,
        per_device_train_batch_size=optim.per_device_batch,
        gradient_accumulation_steps=optim.global_batch // optim.per_device_batch,
        gradient_checkpointing=optim.gradient_checkpointing, bf16=dtype == torch.bfloat16,
        save_strategy="steps", save_steps=config.checkpoint_every, save_total_limit=2,
        logging_steps=1, report_to=[], beta=config.dpo.beta, loss_type=["sigmoid", "sft"],
        loss_weights=[1.0, config.dpo.nll_coef], max_length=config.dpo.max_length,
    )
    lora = LoraConfig(r=config.lora.rank, lora_alpha=config.lora.alpha, lora_dropout=config.lora.dropout,
                      target_modules="all-linear", task_type="CAUSAL_LM")
    trainer = DPOTrainer(model=policy, args=args, train_dataset=dataset, processing_class=tokenizer,
                         peft_config=lora)
    train_start = time.perf_counter()
    trainer.train()
    train_seconds = time.perf_counter() - train_start
    trainer.model.save_pretrained(out)
    return time.perf_counter() - start, train_seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="builtin:smollm2-135m", help="a model ref without adapters")
    parser.add_argument("--profile", default="demo", help="training profile the settings start from")
    parser.add_argument("--steps", type=int, default=4, help="optimizer steps per run")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-length", type=int, default=128)
    parser.add_argument("--precision", help="override the profile's: auto, float32 or bfloat16")
    parser.add_argument("--out", help="write the results as JSON here")
    args = parser.parse_args()

    base = load_training_config(args.profile)
    config = base.model_copy(update={
        "checkpoint_every": max(1, args.steps // 2), "precision": args.precision or base.precision,
        "dpo": base.dpo.model_copy(update={"max_length": args.max_length}),
    })
    runners = {"charlab": run_charlab, "plain_trl": run_plain_trl}
    times: dict[str, list[tuple[float, float]]] = {name: [] for name in runners}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        pairs = make_pairs(work / "pairs.jsonl", args.steps * config.optim.global_batch)
        for name, runner in runners.items():  # warm-up: imports, kernels, caches
            runner(args.model, pairs, work / f"warm-{name}", config)
        for round_ in range(args.repeats):
            order = list(runners) if round_ % 2 == 0 else list(reversed(runners))
            for name in order:
                times[name].append(runners[name](args.model, pairs, work / f"{name}-{round_}", config))

    def median(name: str, part: int) -> float:
        return statistics.median(t[part] for t in times[name])

    def best(name: str, part: int) -> float:
        return min(t[part] for t in times[name])

    result = {
        "benchmark": "training_overhead", "model": args.model, "steps": args.steps, "repeats": args.repeats,
        "global_batch": config.optim.global_batch, "per_device_batch": config.optim.per_device_batch,
        "max_length": args.max_length, "lora_rank": config.lora.rank, "precision": config.precision,
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else platform.processor() or "cpu",
        "torch_threads": torch.get_num_threads(),
        "seconds": {name: {"end_to_end": [round(t[0], 3) for t in runs], "train": [round(t[1], 3) for t in runs]}
                    for name, runs in times.items()},
        "median_end_to_end_s": {name: round(median(name, 0), 3) for name in runners},
        "median_train_s": {name: round(median(name, 1), 3) for name in runners},
        "ratio_end_to_end": round(median("charlab", 0) / median("plain_trl", 0), 4),
        "ratio_train": round(median("charlab", 1) / median("plain_trl", 1), 4),
        "ratio_end_to_end_best": round(best("charlab", 0) / best("plain_trl", 0), 4),
        "ratio_train_best": round(best("charlab", 1) / best("plain_trl", 1), 4),
        "target_ratio": 1.05,
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")


if __name__ == "__main__":
    main()
