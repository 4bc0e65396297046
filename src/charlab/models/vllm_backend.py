"""Offline vLLM backend (``pip install charlab[vllm]``, CUDA only); vllm is imported lazily.

One engine holds one base model. Every ref whose base is the same can share it (multi-LoRA):
``backend.view(ref)`` returns a backend for that ref that reuses the engine, so judging or sampling
many personas costs one model load. vLLM applies a single LoRA per request, so a ref's stack may
hold zero or one adapter here; a longer stack must first be composed into one adapter.

Prompts are rendered by ``charlab.models.chat`` with the model's own tokenizer and sent as token
ids, so both local backends see identical prompts. Seeds come from ``api_seed(seed, sample_index)``,
the same seeds the OpenAI backend sends to a vLLM server; vLLM keeps one generator per request, so
a request's draw does not depend on its batch. ``top_logprobs`` are vLLM's default raw logprobs
(``log_softmax`` of the model's logits before penalties and temperature), as in the hf backend.

``score`` uses ``prompt_logprobs``. vLLM before 0.10.2 refuses prompt logprobs while prefix caching
is on; construct with ``enable_prefix_caching=False`` there.
"""

from __future__ import annotations

import copy
import gc
from collections.abc import Sequence
from pathlib import Path

from charlab.errors import ModelError
from charlab.io import read_json_object
from charlab.models import chat
from charlab.models.base import Generation, GenerationRequest, TokenScores, check_messages
from charlab.models.loading import as_resolved, load_tokenizer
from charlab.models.openai_compat import api_seed
from charlab.models.refs import ModelRef, ResolvedAdapter, ResolvedModel


def _check_stack(resolved: ResolvedModel, max_lora_rank: int) -> None:
    if len(resolved.adapters) > 1:
        raise ModelError(
            f"{resolved.ref}: vLLM applies one LoRA per request, but this stack has {len(resolved.adapters)}; "
            "compose the stack into a single adapter first, or use the hf backend, which stacks adapters")
    for adapter in resolved.adapters:
        config = Path(adapter.load_from) / "adapter_config.json"
        rank = read_json_object(config).get("r", 0) if config.is_file() else 0
        if rank > max_lora_rank:
            raise ModelError(f"adapter {adapter.ref} has rank {rank}, above max_lora_rank={max_lora_rank}; "
                             f"construct VLLMBackend with max_lora_rank={rank} or more")


class _Engine:
    """The shared vLLM engine for one base model, and the LoRA ids it has handed out."""

    def __init__(self, base: ResolvedModel, **options):
        try:
            from vllm import LLM
        except ImportError:
            raise ModelError("the vllm backend needs vLLM: pip install 'charlab[vllm]' (CUDA machines only), "
                             "or use the hf backend") from None
        self.base = base
        self.tokenizer = load_tokenizer(base, trust_remote_code=options.get("trust_remote_code", False))
        self.facts = chat.template_facts(self.tokenizer)
        try:
            self.llm = LLM(model=base.load_from, revision=base.revision, enable_lora=True, **options)
        except (OSError, ValueError, RuntimeError) as exc:
            raise ModelError(f"vLLM could not load {base.ref.base} from {base.load_from}: {exc}; check the "
                             "model files, GPU memory (gpu_memory_utilization, max_model_len) and the vLLM "
                             "version") from exc
        self.stop_ids = sorted({self.tokenizer.eos_token_id, self.tokenizer.convert_tokens_to_ids(
            self.facts.end_of_turn or self.tokenizer.eos_token)} - {None})
        self._lora_ids: dict[str, int] = {}

    def lora_request(self, adapter: ResolvedAdapter | None):
        if adapter is None:
            return None
        from vllm.lora.request import LoRARequest

        lora_id = self._lora_ids.setdefault(adapter.fingerprint, len(self._lora_ids) + 1)
        return LoRARequest(f"charlab-{lora_id}", lora_id, _local_adapter_path(adapter))


def _local_adapter_path(adapter: ResolvedAdapter) -> str:
    """vLLM wants a folder: local adapters as they are, hub ones (subfolder, revision) downloaded."""
    if adapter.ref.path:
        return adapter.load_from
    from huggingface_hub import snapshot_download

    patterns = [f"{adapter.subfolder}/*"] if adapter.subfolder else None
    try:
        root = snapshot_download(adapter.load_from, revision=adapter.revision, allow_patterns=patterns)
    except Exception as exc:  # hub errors have no common base class worth naming here
        raise ModelError(f"could not download adapter {adapter.ref}: {exc}; check the repo, subfolder, "
                         "revision and network access") from exc
    return str(Path(root, adapter.subfolder or ""))


class VLLMBackend:
    """Generation (and prompt-logprob scoring) with an offline vLLM engine; see the module docs."""

    name = "vllm"

    def __init__(self, ref: ModelRef | ResolvedModel | str, *, gpu_memory_utilization: float = 0.85,
                 max_model_len: int | None = None, max_lora_rank: int = 64, max_loras: int = 4,
                 dtype: str = "auto", enable_prefix_caching: bool = True, trust_remote_code: bool = False):
        self.resolved = as_resolved(ref)
        self.max_lora_rank = max_lora_rank
        _check_stack(self.resolved, max_lora_rank)
        self._engine = _Engine(
            self.resolved, gpu_memory_utilization=gpu_memory_utilization, max_model_len=max_model_len,
            max_lora_rank=max_lora_rank, max_loras=max_loras, dtype=dtype,
            enable_prefix_caching=enable_prefix_caching, trust_remote_code=trust_remote_code)
        self._owns_engine = True

    def view(self, ref: ModelRef | ResolvedModel | str) -> VLLMBackend:
        """A backend for another ref on the same base that shares this engine (closing it is a no-op)."""
        resolved = as_resolved(ref)
        if resolved.base_fingerprint != self._engine.base.base_fingerprint:
            raise ModelError(f"{resolved.ref} has base {resolved.ref.base}, but this vLLM engine serves "
                             f"{self._engine.base.ref.base}; start another VLLMBackend for it")
        _check_stack(resolved, self.max_lora_rank)
        view = copy.copy(self)
        view.resolved = resolved
        view._owns_engine = False
        return view

    def __repr__(self) -> str:
        return f"VLLMBackend({self.resolved.ref})"

    @property
    def fingerprint(self) -> str:
        return self.resolved.fingerprint

    @property
    def tokenizer(self):
        return self._engine.tokenizer

    def _lora(self):
        return self._engine.lora_request(self.resolved.adapters[0] if self.resolved.adapters else None)

    def _sampling(self, request: GenerationRequest):
        from vllm import SamplingParams

        s = request.sampling
        return SamplingParams(
            n=1, temperature=s.temperature, top_p=s.top_p, max_tokens=s.max_new_tokens,
            repetition_penalty=s.repetition_penalty, stop=list(s.stop), stop_token_ids=self._engine.stop_ids,
            seed=api_seed(request.seed, request.sample_index), logprobs=s.top_logprobs or None,
            skip_special_tokens=True)

    def generate(self, requests: Sequence[GenerationRequest], *, progress: bool = False) -> list[Generation]:
        """One assistant turn per request, in request order; vLLM schedules the batching itself."""
        if not requests:
            return []
        prompts = [{"prompt_token_ids": chat.prompt_ids(self.tokenizer, r.message_dicts)} for r in requests]
        outputs = self._engine.llm.generate(prompts, [self._sampling(r) for r in requests], use_tqdm=progress,
                                            lora_request=self._lora())
        return [self._generation(request, output) for request, output in zip(requests, outputs)]

    @staticmethod
    def _generation(request: GenerationRequest, output) -> Generation:
        completion = output.outputs[0]
        top = None
        if request.sampling.top_logprobs:
            k = request.sampling.top_logprobs
            # vLLM adds the chosen token to the top k when it ranks lower; keep the top k only.
            top = [{lp.decoded_token: lp.logprob for lp in sorted(position.values(), key=lambda lp: lp.rank)
                    if lp.rank <= k} for position in completion.logprobs]
        return Generation(text=completion.text,
                          finish_reason="length" if completion.finish_reason == "length" else "stop",
                          prompt_tokens=len(output.prompt_token_ids), completion_tokens=len(completion.token_ids),
                          top_logprobs=top)

    def score(self, conversations: Sequence[Sequence[dict]]) -> list[TokenScores]:
        """Log-probabilities of each final assistant content, read from vLLM's prompt logprobs."""
        from vllm import SamplingParams

        prompts, spans = [], []
        for i, conversation in enumerate(conversations):
            msgs = check_messages(conversation, where=f"conversations[{i}]")
            if not msgs or msgs[-1]["role"] != "assistant":
                raise ValueError(f"conversations[{i}]: the last turn must be the assistant text to score")
            ids, turn_spans = chat.assistant_spans(self.tokenizer, msgs)
            start, end = turn_spans[-1]
            prompts.append({"prompt_token_ids": ids[:end]})
            spans.append((start, end))
        params = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=1, detokenize=False)
        outputs = self._engine.llm.generate(prompts, params, use_tqdm=False, lora_request=self._lora())
        scores = []
        for prompt, (start, end), output in zip(prompts, spans, outputs):
            targets = prompt["prompt_token_ids"][start:end]
            logprobs = [output.prompt_logprobs[j][token].logprob for j, token in enumerate(targets, start)]
            scores.append(TokenScores(token_ids=targets, logprobs=logprobs))
        return scores

    def close(self) -> None:
        """Shut the engine down (views only let go of it)."""
        if self._owns_engine and self._engine is not None:
            del self._engine.llm
            gc.collect()
        self._engine = None

    def __enter__(self) -> VLLMBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_SHARED: dict[str, VLLMBackend] = {}


def shared_engine(base: ModelRef | ResolvedModel | str, **options) -> VLLMBackend:
    """One engine per base model for this process, so evaluating N adapter stacks loads the base once.

    Callers take ``.view(ref)`` of it for each model under test; ``close_shared_engines`` ends them.
    """
    resolved = as_resolved(base)
    if resolved.adapters:
        raise ModelError(f"{resolved.ref}: a shared engine is started from the bare base model")
    if resolved.base_fingerprint not in _SHARED:
        _SHARED[resolved.base_fingerprint] = VLLMBackend(resolved, **options)
    return _SHARED[resolved.base_fingerprint]


def close_shared_engines() -> None:
    for engine in _SHARED.values():
        engine.close()
    _SHARED.clear()
