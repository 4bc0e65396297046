"""The transformers backend: batched generation and scoring with a base model + adapter stack.

Generation is batched (left padding, prompts sorted by length) but every row samples on its own:
``model.generate`` runs greedy, and ``_RowSampler`` replaces each step's logits by a one-hot choice
it made per row with that row's own ``torch.Generator``, seeded from (seed, sample_index, messages).
A request therefore produces the same text alone or in any batch, which is what lets the row cache
key on the request alone. Batch shape and padding still change the arithmetic in the last bits: in
float32 that practically never flips a token, in bfloat16 (the CUDA default) it does flip near-ties,
so use float32 where batch-independent outputs matter more than speed.

``top_logprobs`` are the model's own distribution at each generated position: ``log_softmax`` of
the raw logits, before repetition penalty, temperature and top-p (vLLM's default "raw" logprobs).
There is one entry per completion token, the stop token included.
"""

from __future__ import annotations

import gc
from collections.abc import Iterable, Sequence

import torch
from transformers import GenerationConfig, LogitsProcessor, LogitsProcessorList, StoppingCriteria, StoppingCriteriaList

from charlab.io import stable_hash
from charlab.models import chat
from charlab.models.base import Generation, GenerationRequest, TokenScores, check_messages
from charlab.models.loading import as_resolved, load_model_and_tokenizer
from charlab.models.refs import ModelRef, ResolvedModel


def row_seed(request: GenerationRequest) -> int:
    """The 64-bit seed of a request's private random stream."""
    return int(stable_hash([request.seed, request.sample_index, request.messages], length=16), 16)


class _RowSampler(LogitsProcessor):
    """Choose each row's next token by that row's settings and random stream; return it one-hot.

    Per row: HF-style repetition penalty over the row's real tokens (prompt + generated, never
    padding), then greedy (temperature 0) or temperature + top-p sampling by inverse CDF over the
    sorted distribution with one uniform draw from the row's generator per step.
    """

    def __init__(self, requests: Sequence[GenerationRequest], pads: list[int], device: torch.device):
        params = [r.sampling for r in requests]
        self.pads = torch.tensor(pads, device=device)
        self.temperature = torch.tensor([p.temperature for p in params], device=device)
        self.top_p = torch.tensor([p.top_p for p in params], device=device)
        self.penalty = torch.tensor([p.repetition_penalty for p in params], device=device)
        self.penalize = any(p.repetition_penalty != 1.0 for p in params)
        self.sampled = [i for i, p in enumerate(params) if p.temperature > 0]
        self.generators = {i: torch.Generator().manual_seed(row_seed(requests[i])) for i in self.sampled}
        self.top_k = max(p.top_logprobs for p in params)
        self.top: list[tuple[torch.Tensor, torch.Tensor]] = []  # per step: (logprobs, token ids), on CPU

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.top_k:
            values, ids = scores.float().log_softmax(-1).topk(self.top_k, dim=-1)
            self.top.append((values.cpu(), ids.cpu()))
        if self.penalize:
            scores = self._penalize(input_ids, scores)
        choice = scores.argmax(-1)
        if self.sampled:
            rows = torch.tensor(self.sampled, device=scores.device)
            choice[rows] = self._sample(scores[rows])
        one_hot = torch.full_like(scores, float("-inf"))
        return one_hot.scatter_(1, choice[:, None], 0.0)

    def _penalize(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        real = torch.arange(input_ids.shape[1], device=scores.device)[None, :] >= self.pads[:, None]
        seen = torch.zeros_like(scores).scatter_add_(1, input_ids, real.to(scores.dtype)) > 0
        penalty = self.penalty[:, None]
        return torch.where(seen, torch.where(scores < 0, scores * penalty, scores / penalty), scores)

    def _sample(self, logits: torch.FloatTensor) -> torch.LongTensor:
        probs = (logits.float() / self.temperature[self.sampled, None]).softmax(-1)
        probs, order = probs.sort(dim=-1, descending=True, stable=True)
        mass_before = probs.cumsum(-1) - probs
        probs = probs.masked_fill(mass_before >= self.top_p[self.sampled, None], 0.0)
        cdf = probs.cumsum(-1)
        draws = torch.stack([torch.rand((), generator=self.generators[i]) for i in self.sampled])
        targets = draws.to(cdf.device)[:, None] * cdf[:, -1:]
        pick = torch.searchsorted(cdf, targets, right=True).clamp_(max=cdf.shape[-1] - 1)
        return order.gather(1, pick).squeeze(1)


class _RowStops(StoppingCriteria):
    """Per-row stop: a stop token, a stop string in the decoded text, or the row's own token cap.

    Records for each row how many tokens it generated (the stop token included) and why it ended.
    """

    def __init__(self, requests: Sequence[GenerationRequest], width: int, stop_ids: set[int], tokenizer):
        self.width = width
        self.stop_ids = stop_ids
        self.tokenizer = tokenizer
        self.caps = [r.sampling.max_new_tokens for r in requests]
        self.stop_strings = [r.sampling.stop for r in requests]
        self.ends: list[tuple[int, str] | None] = [None] * len(requests)

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        count = input_ids.shape[1] - self.width
        generated = input_ids[:, self.width:].tolist() if any(self.stop_strings) else None
        for row, last in enumerate(input_ids[:, -1].tolist()):
            if self.ends[row] is not None:
                continue
            if last in self.stop_ids:
                self.ends[row] = (count, "stop")
            elif generated and self.stop_strings[row] and find_stop(
                    self.tokenizer.decode(generated[row], skip_special_tokens=True), self.stop_strings[row]) >= 0:
                self.ends[row] = (count, "stop")
            elif count >= self.caps[row]:
                self.ends[row] = (count, "length")
        return torch.tensor([end is not None for end in self.ends], device=input_ids.device)


def find_stop(text: str, stops: Sequence[str]) -> int:
    """Index of the earliest stop string in ``text``, or -1."""
    hits = [i for i in (text.find(s) for s in stops if s) if i >= 0]
    return min(hits, default=-1)


def _batches(order: list[int], size: int) -> list[list[int]]:
    return [order[i:i + size] for i in range(0, len(order), size)]


def _with_progress(batches: list, label: str, progress: bool) -> Iterable:
    if not progress:
        yield from batches
        return
    from rich.progress import Progress

    with Progress(transient=True) as bar:
        task = bar.add_task(label, total=len(batches))
        for batch in batches:
            yield batch
            bar.advance(task)


class HFBackend:
    """Generation and scoring with transformers on one device. ``model`` and ``tokenizer`` are public
    so analysis code can hook activations; the adapters in ``model`` are active but never merged."""

    name = "hf"

    def __init__(self, ref: ModelRef | ResolvedModel | str, *, dtype: str | torch.dtype = "auto",
                 device: str | torch.device = "auto", batch_size: int = 16, trust_remote_code: bool = False):
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        self.resolved = as_resolved(ref)
        self.model, self.tokenizer = load_model_and_tokenizer(self.resolved, dtype=dtype, device=device,
                                                              trust_remote_code=trust_remote_code)
        self.batch_size = batch_size
        self.device = next(self.model.parameters()).device
        self.facts = chat.template_facts(self.tokenizer)
        # The transformers model underneath any PeftModel wrapper: it already routes through the
        # injected adapter layers, and PeftModel.generate assumes a single active adapter.
        self._lm = self.model.get_base_model() if hasattr(self.model, "get_base_model") else self.model
        self.stop_ids = self._stop_ids(self._lm.generation_config)
        # generate() fills every unset option from the checkpoint's generation_config (a shipped
        # repetition_penalty or suppress_tokens, say); a blank one leaves decoding to our settings.
        self._lm.generation_config = GenerationConfig()

    def __repr__(self) -> str:
        return f"HFBackend({self.resolved.ref}, device={self.device}, batch_size={self.batch_size})"

    @property
    def fingerprint(self) -> str:
        return self.resolved.fingerprint

    def _stop_ids(self, checkpoint_config: GenerationConfig) -> set[int]:
        """EOS, the checkpoint's extra EOS ids (e.g. Llama 3's <|eot_id|>) and the template's end of turn."""
        ids = {self.tokenizer.eos_token_id}
        eos = checkpoint_config.eos_token_id
        ids.update(eos if isinstance(eos, list) else [eos])
        if self.facts.end_of_turn:
            ids.add(self.tokenizer.convert_tokens_to_ids(self.facts.end_of_turn))
        ids.discard(None)
        return ids

    # -- generation ---------------------------------------------------------------------------

    def generate(self, requests: Sequence[GenerationRequest], *, progress: bool = False) -> list[Generation]:
        """One assistant turn per request, in request order."""
        prompts = [chat.prompt_ids(self.tokenizer, r.message_dicts) for r in requests]
        order = sorted(range(len(requests)), key=lambda i: len(prompts[i]))
        results: list[Generation | None] = [None] * len(requests)
        batches = _batches(order, self.batch_size)
        for batch in _with_progress(batches, f"generating with {self.name}", progress):
            outputs = self._generate_batch([requests[i] for i in batch], [prompts[i] for i in batch])
            for i, generation in zip(batch, outputs):
                results[i] = generation
        return results

    def _left_pad(self, rows: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        width = max(len(r) for r in rows)
        pad = self.tokenizer.pad_token_id
        ids = torch.tensor([[pad] * (width - len(r)) + r for r in rows], device=self.device)
        mask = torch.tensor([[0] * (width - len(r)) + [1] * len(r) for r in rows], device=self.device)
        return ids, mask

    @torch.inference_mode()
    def _generate_batch(self, requests: list[GenerationRequest], prompts: list[list[int]]) -> list[Generation]:
        input_ids, attention_mask = self._left_pad(prompts)
        width = input_ids.shape[1]
        sampler = _RowSampler(requests, [width - len(p) for p in prompts], self.device)
        stops = _RowStops(requests, width, self.stop_ids, self.tokenizer)
        config = GenerationConfig(
            max_new_tokens=max(r.sampling.max_new_tokens for r in requests), do_sample=False,
            eos_token_id=sorted(self.stop_ids), pad_token_id=self.tokenizer.pad_token_id)
        sequences = self._lm.generate(
            input_ids=input_ids, attention_mask=attention_mask, generation_config=config,
            logits_processor=LogitsProcessorList([sampler]), stopping_criteria=StoppingCriteriaList([stops]))
        new_tokens = sequences[:, width:].tolist()
        return [self._finish(request, len(prompt), new_tokens[row], stops.ends[row], sampler, row)
                for row, (request, prompt) in enumerate(zip(requests, prompts))]

    def _finish(self, request: GenerationRequest, n_prompt: int, tokens: list[int], end: tuple[int, str],
                sampler: _RowSampler, row: int) -> Generation:
        count, reason = end
        tokens = tokens[:count]
        body = tokens[:-1] if tokens and tokens[-1] in self.stop_ids else tokens
        text = self.tokenizer.decode(body, skip_special_tokens=True)
        cut = find_stop(text, request.sampling.stop)
        if cut >= 0:
            text = text[:cut]
        k = request.sampling.top_logprobs
        top = [self._alternatives(values[row, :k], ids[row, :k]) for values, ids in sampler.top[:count]] if k else None
        return Generation(text=text, finish_reason=reason, prompt_tokens=n_prompt, completion_tokens=count,
                          top_logprobs=top)

    def _alternatives(self, values: torch.Tensor, ids: torch.Tensor) -> dict[str, float]:
        """token text -> logprob, best first; tokens that decode alike keep the likelier one."""
        out: dict[str, float] = {}
        for text, value in zip(self.tokenizer.batch_decode([[i] for i in ids.tolist()]), values.tolist()):
            out.setdefault(text, value)
        return out

    # -- scoring ------------------------------------------------------------------------------

    def score(self, conversations: Sequence[Sequence[dict]]) -> list[TokenScores]:
        """Log-probabilities of each conversation's final assistant content given everything before it."""
        items = []
        for i, conversation in enumerate(conversations):
            msgs = check_messages(conversation, where=f"conversations[{i}]")
            if not msgs or msgs[-1]["role"] != "assistant":
                raise ValueError(f"conversations[{i}]: the last turn must be the assistant text to score")
            ids, spans = chat.assistant_spans(self.tokenizer, msgs)
            items.append((ids, spans[-1]))
        order = sorted(range(len(items)), key=lambda i: len(items[i][0]))
        results: list[TokenScores | None] = [None] * len(items)
        for batch in _batches(order, self.batch_size):
            for i, scores in zip(batch, self._score_batch([items[i] for i in batch])):
                results[i] = scores
        return results

    @torch.inference_mode()
    def _score_batch(self, items: list[tuple[list[int], tuple[int, int]]]) -> list[TokenScores]:
        input_ids, attention_mask = self._left_pad([ids for ids, _ in items])
        width = input_ids.shape[1]
        # Left padding puts every scored span near the end, so only the tail's logits are needed.
        keep = max(len(ids) - start + 1 for ids, (start, _) in items)
        position_ids = (attention_mask.cumsum(-1) - 1).clamp_(min=0)
        logits = self._lm(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                          logits_to_keep=keep).logits
        out = []
        for row, (ids, (start, end)) in enumerate(items):
            targets = ids[start:end]
            # logits[row, j] is the distribution of padded position width - keep + j + 1.
            first = width - len(ids) + start - 1 - (width - keep)
            row_logits = logits[row, first:first + len(targets)].float().log_softmax(-1)
            picked = row_logits.gather(1, torch.tensor(targets, dtype=torch.long, device=row_logits.device)[:, None])
            out.append(TokenScores(token_ids=targets, logprobs=picked.squeeze(1).tolist()))
        return out

    def close(self) -> None:
        """Drop the model and free its memory; the backend cannot be used afterwards."""
        self.model = self._lm = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()

    def __enter__(self) -> HFBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
