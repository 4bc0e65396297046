"""Batched vs one-at-a-time greedy generation with the hf backend.

Runs the same 16 prompts on one loaded model as a single batch and one request at a time, after a
short warm-up of both paths (so lazily loaded kernels are not timed). With ``--repeats N`` the two
modes alternate N times and the fastest time of each counts, which steadies numbers on a shared
machine. Reports generated tokens per second for both, the speed-up, and how many of the 16 greedy
outputs are identical (in float32 batching must not change them; bfloat16 adds numerical noise).

    python benchmarks/bench_generation.py [--model builtin:smollm2-135m] [--out results.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import time

import torch

from charlab.models.base import GenerationRequest, SamplingParams
from charlab.models.hf import HFBackend
from charlab.models.refs import ModelRef

PROMPTS = [
    "What is the capital of France?",
    "Give me one tip for sleeping better.",
    "Why do cats purr?",
    "Name three primary colours.",
    "Explain what a prime number is.",
    "Write a two-line poem about autumn.",
    "How many legs does a spider have?",
    "What does a compiler do?",
    "Suggest a name for a friendly robot.",
    "What is the boiling point of water at sea level?",
    "Describe the moon in one sentence.",
    "What is photosynthesis?",
    "How do I say thank you in Spanish?",
    "Why is exercise good for you?",
    "What is the largest ocean on Earth?",
    "Tell me a fun fact about octopuses.",
]


def best_of(repeats: int, *runs):
    """Alternate the runs ``repeats`` times; the outputs of the last round and each run's fastest time."""
    times = [float("inf")] * len(runs)
    for _ in range(repeats):
        outputs = []
        for i, run in enumerate(runs):
            start = time.perf_counter()
            outputs.append(run())
            times[i] = min(times[i], time.perf_counter() - start)
    return outputs, times


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="builtin:smollm2-135m")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto", help="auto = bfloat16 on CUDA, float32 on CPU")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--max-new-tokens", type=int, default=48)
    parser.add_argument("--repeats", type=int, default=1, help="alternate both modes N times, keep the fastest")
    parser.add_argument("--out", help="write the results as JSON here")
    args = parser.parse_args()

    sampling = SamplingParams(temperature=0.0, max_new_tokens=args.max_new_tokens)
    requests = [GenerationRequest.make([{"role": "user", "content": p}], sampling) for p in PROMPTS]
    backend = HFBackend(ModelRef.parse(args.model), device=args.device, dtype=args.dtype,
                        batch_size=args.batch_size)
    warm_up = [GenerationRequest.make(r.message_dicts, SamplingParams(max_new_tokens=4)) for r in requests]
    backend.generate(warm_up)
    backend.generate(warm_up[:1])

    (batched, single), (batched_s, single_s) = best_of(
        args.repeats, lambda: backend.generate(requests), lambda: [backend.generate([r])[0] for r in requests])
    batched_tokens = sum(g.completion_tokens for g in batched)
    single_tokens = sum(g.completion_tokens for g in single)
    matches = sum(a.text == b.text for a, b in zip(batched, single))

    results = {
        "model": args.model,
        "device": str(backend.device),
        "dtype": str(next(backend.model.parameters()).dtype),
        "cpu_threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
        "prompts": len(requests),
        "batch_size": args.batch_size,
        "max_new_tokens": args.max_new_tokens,
        "repeats": args.repeats,
        "batched": {"seconds": round(batched_s, 3), "tokens": batched_tokens,
                    "tokens_per_s": round(batched_tokens / batched_s, 1)},
        "one_at_a_time": {"seconds": round(single_s, 3), "tokens": single_tokens,
                          "tokens_per_s": round(single_tokens / single_s, 1)},
        "speedup": round((batched_tokens / batched_s) / (single_tokens / single_s), 2),
        "identical_outputs": matches,
    }
    print(f"{args.model} on {results['device']} ({results['dtype']}), {len(requests)} prompts, "
          f"max_new_tokens={args.max_new_tokens}")
    print(f"  batched ({args.batch_size}/batch): {batched_tokens} tokens in {batched_s:.2f}s = "
          f"{results['batched']['tokens_per_s']} tok/s")
    print(f"  one at a time:       {single_tokens} tokens in {single_s:.2f}s = "
          f"{results['one_at_a_time']['tokens_per_s']} tok/s")
    print(f"  speed-up: {results['speedup']}x; identical outputs: {matches}/{len(requests)}")
    if args.out:
        with open(args.out, "w") as handle:
            json.dump(results, handle, indent=2)
    backend.close()


if __name__ == "__main__":
    main()
