"""Response-mean activation extraction vs a plain forward pass over the same tokens.

Renders 64 conversations, finds their assistant spans once, then alternates two passes over the
same padded batches: the hooked extraction at every layer (``mean_activations``) and the identical
forward call with no hooks. Reports activations per second (response means, and response x layer
vectors), the time to render and locate the spans, and the overhead ratio hooked / plain (the
target is <= 1.2x). It also times the scoring path: ``HFBackend.score`` alone vs
``score_and_extract``, which reads the activations in that same scoring pass (ratio
``scoring_overhead_ratio``). With ``--repeats N`` each pass keeps its fastest of N rounds.

By default the model is a tiny random Llama (2 layers, width 64, the SmolLM2 tokenizer) built in a
temporary folder; ``--model builtin:smollm2-135m`` (or any ref) measures a real one.

    python benchmarks/bench_activations.py [--model builtin:smollm2-135m] [--repeats 3] [--out results.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import torch

from charlab.interp.activations import (
    decoder_layers,
    language_model,
    mean_activations,
    padded_batches,
    response_tokens,
    score_and_extract,
)
from charlab.models.hf import HFBackend
from charlab.models.refs import ModelRef

TOPICS = ["the sea", "bread", "prime numbers", "the moon", "octopuses", "compilers", "sleep", "autumn"]
STYLES = ["Briefly", "In detail", "As a story", "As a list", "Plainly", "Carefully", "Kindly", "Formally"]


def conversations() -> list[list[dict]]:
    """64 conversations of mixed lengths, half with a system prompt, each ending with the reply to average."""
    out = []
    for i, topic in enumerate(TOPICS):
        for j, style in enumerate(STYLES):
            reply = " ".join(f"{style}, here is point {k} about {topic}." for k in range(1 + (i + j) % 6))
            turns = [{"role": "user", "content": f"{style}, tell me about {topic}."},
                     {"role": "assistant", "content": reply}]
            out.append(([{"role": "system", "content": "You are a helpful assistant."}] if j % 2 else []) + turns)
    return out


def tiny_model(folder: Path) -> Path:
    """The test suite's tiny random Llama, saved with the default model's tokenizer."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from charlab.models.builtin import fetch_builtin

    tokenizer = AutoTokenizer.from_pretrained(fetch_builtin("smollm2-135m"))
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=True)
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def plain_forward(backend: HFBackend, responses, batch_size: int) -> None:
    """The extraction's forward calls on the same batches, without hooks or reductions."""
    lm = language_model(backend)
    with torch.inference_mode():
        for _, inputs, _ in padded_batches(responses, batch_size, backend.tokenizer.pad_token_id, backend.device):
            lm(**inputs, use_cache=False, logits_to_keep=1)


def timed(run) -> float:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = time.perf_counter()
    run()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return time.perf_counter() - start


def measure(backend: HFBackend, batch_size: int, repeats: int) -> dict:
    items = conversations()
    spans_s = timed(lambda: response_tokens(backend.tokenizer, items))
    responses = response_tokens(backend.tokenizer, items)
    layers = list(range(len(decoder_layers(backend))))
    pad_id = backend.tokenizer.pad_token_id

    def hooked():
        mean_activations(backend, responses, layers, batch_size=batch_size, pad_id=pad_id)

    hooked(), plain_forward(backend, responses, batch_size)  # warm-up
    hooked_s = plain_s = float("inf")
    for _ in range(repeats):
        hooked_s = min(hooked_s, timed(hooked))
        plain_s = min(plain_s, timed(lambda: plain_forward(backend, responses, batch_size)))
    score_alone_s = scored_s = float("inf")
    for _ in range(repeats):
        score_alone_s = min(score_alone_s, timed(lambda: backend.score(items)))
        scored_s = min(scored_s, timed(lambda: score_and_extract(backend, items, layers, batch_size)))
    tokens = sum(len(r.input_ids) for r in responses)
    return {
        "responses": len(responses), "layers": len(layers), "tokens": tokens, "batch_size": batch_size,
        "render_and_spans_s": round(spans_s, 4), "hooked_s": round(hooked_s, 4), "plain_forward_s": round(plain_s, 4),
        "responses_per_s": round(len(responses) / hooked_s, 1),
        "activations_per_s": round(len(responses) * len(layers) / hooked_s, 1),
        "overhead_ratio": round(hooked_s / plain_s, 3),
        "end_to_end_ratio": round((spans_s + hooked_s) / plain_s, 3),
        "score_alone_s": round(score_alone_s, 4), "score_and_extract_s": round(scored_s, 4),
        "scoring_overhead_ratio": round(scored_s / score_alone_s, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny", help="'tiny' (default) or a model ref, e.g. builtin:smollm2-135m")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--dtype", default="auto", help="auto = bfloat16 on CUDA, float32 on CPU")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3, help="rounds of both passes; each keeps its fastest")
    parser.add_argument("--out", help="write the results as JSON here")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as scratch:
        ref = ModelRef(base=str(tiny_model(Path(scratch)))) if args.model == "tiny" else ModelRef.parse(args.model)
        with HFBackend(ref, device=args.device, dtype=args.dtype, batch_size=args.batch_size) as backend:
            results = {"model": args.model, "device": str(backend.device),
                       "dtype": str(next(backend.model.parameters()).dtype), "machine": platform.machine(),
                       "threads": torch.get_num_threads(), **measure(backend, args.batch_size, args.repeats)}
    print(json.dumps(results, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
