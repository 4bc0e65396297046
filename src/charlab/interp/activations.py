"""Mean residual-stream activations over the assistant's response tokens.

**Layer i** is the output of decoder block ``i`` (0-based): the residual stream after that block's
attention and MLP have been added. With transformers' ``output_hidden_states`` that is
``hidden_states[i + 1]`` (``hidden_states[0]`` is the embeddings), except for the last block:
transformers hands back the final norm's output there instead, while the hook here keeps the raw
residual stream, so every layer means the same kind of quantity.

Each conversation ends with the assistant turn whose activations we want. Its content tokens are
located with ``chat.assistant_spans`` (no system, user or template tokens), and a forward hook on
each chosen block reduces that block's output to the mean over those tokens as soon as the block
runs. Only the reduced ``[batch, layers, hidden]`` values leave the hook, so extracting N responses
at L layers keeps one float32 tensor of N x L x hidden values and no per-token activations.

Activations are saved as one safetensors file plus a JSON index written after it (layers, item ids,
model fingerprint, dtype, the file's SHA-256), so a reader never trusts a half-written pair.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, NamedTuple

import torch

from charlab.errors import ConfigError, ModelError
from charlab.io import atomic_write_bytes, atomic_write_json, read_json_object, sha256_file
from charlab.models import chat
from charlab.models.base import TokenScores, check_messages
from charlab.models.hf import HFBackend
from charlab.models.refs import ModelRef, ResolvedModel

FORMAT = "charlab-activations/1"
TENSOR_FILE = "activations.safetensors"
INDEX_FILE = "index.json"
LAYER_DEFINITION = "layer i = output of decoder block i (0-based), before the final norm"
Padding = Literal["left", "right"]
Batch = tuple[list[int], dict[str, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class Activations:
    """Per-response mean activations: ``values[n, k]`` is item ``ids[n]`` at layer ``layers[k]``."""

    values: torch.Tensor  # [N, L, hidden], float32, CPU
    layers: tuple[int, ...]
    ids: tuple[str, ...]
    fingerprint: str | None = None

    def at(self, layer: int) -> torch.Tensor:
        """The ``[N, hidden]`` means at one decoder layer (by layer number, not position)."""
        if layer not in self.layers:
            raise KeyError(f"layer {layer} was not extracted; these were: {list(self.layers)}")
        return self.values[:, self.layers.index(layer)]


class ResponseTokens(NamedTuple):
    """A rendered conversation and its final assistant turn's content as ``[start, end)``."""

    input_ids: list[int]
    span: tuple[int, int]


def decoder_layers(model: Any) -> torch.nn.ModuleList:
    """The decoder blocks of a causal LM, through an ``HFBackend`` or a PEFT wrapper.

    Hooks go on these modules, which a PeftModel shares with the model underneath, so hooks placed
    here see the adapter stack's effect and fire in ``HFBackend.generate`` too.
    """
    lm = language_model(model)
    blocks = getattr(lm.get_decoder(), "layers", None)
    if not isinstance(blocks, torch.nn.ModuleList):
        raise ModelError(f"{type(lm).__name__} keeps its decoder blocks somewhere other than "
                         "get_decoder().layers; activation hooks do not support this architecture")
    return blocks


def language_model(model: Any) -> torch.nn.Module:
    """The transformers model under an ``HFBackend`` and any PeftModel wrapper."""
    model = model.model if isinstance(model, HFBackend) else model
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def middle_band(num_layers: int, width: int) -> list[int]:
    """``width`` consecutive layers centred on the middle one (all layers if width covers them).

    Persona and trait directions are usually clearest in the middle of the stack, so this is the
    cheap default when extracting every layer is too much.
    """
    if width < 1:
        raise ConfigError(f"middle band width must be at least 1, got {width}")
    width = min(width, num_layers)
    start = min(max(0, num_layers // 2 - width // 2), num_layers - width)
    return list(range(start, start + width))


def response_tokens(tokenizer, conversations: Sequence[Sequence[dict]]) -> list[ResponseTokens]:
    """Render each conversation and locate its final assistant turn's content tokens."""
    out = []
    for i, conversation in enumerate(conversations):
        msgs = check_messages(conversation, where=f"conversations[{i}]")
        if not msgs or msgs[-1]["role"] != "assistant":
            raise ConfigError(f"conversations[{i}]: the last turn must be the assistant response to average over")
        ids, spans = chat.assistant_spans(tokenizer, msgs)
        if spans[-1][0] == spans[-1][1]:
            raise ConfigError(f"conversations[{i}]: the final assistant turn is empty, so it has no mean activation")
        out.append(ResponseTokens(ids, spans[-1]))
    return out


def padded_batches(responses: Sequence[ResponseTokens], batch_size: int, pad_id: int, device: torch.device,
                   padding_side: Padding = "right") -> Iterator[Batch]:
    """``(item indices, model inputs, span mask)`` per batch, items sorted by length to waste little padding.

    Explicit position ids make a padded row compute what it would alone on either padding side; the
    span mask is True exactly on each row's response tokens, wherever padding moved them.
    """
    order = sorted(range(len(responses)), key=lambda i: len(responses[i].input_ids))
    for first in range(0, len(order), batch_size):
        batch = order[first:first + batch_size]
        width = max(len(responses[i].input_ids) for i in batch)
        ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
        mask = torch.zeros((len(batch), width), dtype=torch.long)
        span = torch.zeros((len(batch), width), dtype=torch.bool)
        for row, i in enumerate(batch):
            tokens, (start, end) = responses[i]
            shift = width - len(tokens) if padding_side == "left" else 0
            ids[row, shift:shift + len(tokens)] = torch.tensor(tokens)
            mask[row, shift:shift + len(tokens)] = 1
            span[row, shift + start:shift + end] = True
        positions = (mask.cumsum(-1) - 1).clamp_(min=0)
        inputs = {"input_ids": ids, "attention_mask": mask, "position_ids": positions}
        yield batch, {k: v.to(device) for k, v in inputs.items()}, span.to(device)


class _SpanMeans:
    """Forward hooks that reduce each hooked block's output to its mean over the span, per row.

    The span mask is set before each batch; the hook writes ``means[:, slot]`` and keeps nothing
    else, so per-token activations are freed as soon as the next block has consumed them.
    """

    def __init__(self) -> None:
        self.span: torch.Tensor | None = None  # [B, T] bool
        self.means: torch.Tensor | None = None  # [B, L, hidden] float32

    def start_batch(self, span: torch.Tensor, num_layers: int, hidden_size: int) -> None:
        self.span = span
        self.means = torch.empty((span.shape[0], num_layers, hidden_size), dtype=torch.float32, device=span.device)

    def hook(self, slot: int):
        def reduce(module, args, output):
            hidden = output[0] if isinstance(output, tuple) else output
            # where(), not a multiply: padded positions may hold NaN, and 0 * NaN is NaN.
            kept = torch.where(self.span[..., None], hidden.float(), 0.0)
            self.means[:, slot] = kept.sum(1) / self.span.sum(1, keepdim=True)
        return reduce


def mean_activations(model: Any, responses: Sequence[ResponseTokens], layers: Sequence[int], *, batch_size: int,
                     pad_id: int, padding_side: Padding = "right") -> torch.Tensor:
    """``[N, len(layers), hidden]`` float32 means over each response's span, from hooked forward passes."""
    return _hooked_passes(model, responses, layers, batch_size, pad_id, padding_side, score=False)[0]


def _hooked_passes(model: Any, responses: Sequence[ResponseTokens], layers: Sequence[int], batch_size: int,
                   pad_id: int, padding_side: Padding, *, score: bool) -> tuple[torch.Tensor, list[TokenScores]]:
    """One forward pass per batch; the hooks reduce activations and, with ``score``, the logits score the span.

    Scoring needs the logits at the positions before each response token. Left padding puts every
    span near the end of its row, so only the tail is projected onto the vocabulary, as in
    ``HFBackend.score``; without scoring one position is enough.
    """
    lm = language_model(model)
    blocks = decoder_layers(lm)
    device = next(lm.parameters()).device
    values = torch.empty((len(responses), len(layers), lm.config.hidden_size), dtype=torch.float32)
    scores: list[TokenScores | None] = [None] * len(responses) if score else []
    reducer = _SpanMeans()
    handles = [blocks[layer].register_forward_hook(reducer.hook(slot)) for slot, layer in enumerate(layers)]
    try:
        with torch.inference_mode():
            for batch, inputs, span in padded_batches(responses, batch_size, pad_id, device, padding_side):
                reducer.start_batch(span, len(layers), values.shape[-1])
                keep = _tail_needed(responses, batch, inputs["input_ids"].shape[1], padding_side) if score else 1
                logits = lm(**inputs, use_cache=False, logits_to_keep=keep).logits
                values[batch] = reducer.means.cpu()
                if score:
                    _read_scores(logits, responses, batch, span, scores)
    finally:
        for handle in handles:
            handle.remove()
    return values, scores


def _tail_needed(responses: Sequence[ResponseTokens], batch: list[int], width: int, padding_side: Padding) -> int:
    """How many final positions' logits cover every row's span (the position before each token included)."""
    if padding_side != "left":
        return width
    return max(len(responses[i].input_ids) - responses[i].span[0] + 1 for i in batch)


def _read_scores(logits: torch.Tensor, responses: Sequence[ResponseTokens], batch: list[int], span: torch.Tensor,
                 scores: list[TokenScores | None]) -> None:
    """Log-probability of each span token from the logits at the position just before it."""
    offset = span.shape[1] - logits.shape[1]  # logits cover the last positions of the padded row
    for row, i in enumerate(batch):
        positions = span[row].nonzero().squeeze(1)
        targets = responses[i].input_ids[responses[i].span[0]:responses[i].span[1]]
        predicted = logits[row, positions - 1 - offset].float().log_softmax(-1)
        picked = predicted.gather(1, torch.tensor(targets, device=predicted.device)[:, None]).squeeze(1)
        scores[i] = TokenScores(token_ids=list(targets), logprobs=picked.tolist())


def check_layers(layers: Sequence[int] | None, num_layers: int) -> tuple[int, ...]:
    """The requested layer numbers (all when None), each checked against the model's depth."""
    chosen = tuple(range(num_layers)) if layers is None else tuple(layers)
    bad = [layer for layer in chosen if not 0 <= layer < num_layers]
    if bad or not chosen or len(set(chosen)) != len(chosen):
        raise ConfigError(f"layers {list(chosen)}: need distinct layer numbers from 0 to {num_layers - 1} "
                          f"(bad: {bad or 'duplicates or none'})")
    return chosen


def extract_activations(model_or_backend: HFBackend | ModelRef | ResolvedModel | str,
                        conversations: Sequence[Sequence[dict]], layers: Sequence[int] | None = None,
                        batch_size: int | None = None, *, ids: Sequence[str] | None = None,
                        padding_side: Padding = "right") -> Activations:
    """Mean residual stream over each conversation's final assistant content, at ``layers`` (default all).

    A ref is loaded into an ``HFBackend`` for the call and freed afterwards; pass a backend to reuse
    one. ``ids`` name the items in the saved index (default "0", "1", ...).
    """
    if isinstance(model_or_backend, HFBackend):
        return _extract(model_or_backend, conversations, layers, batch_size, ids, padding_side)
    with HFBackend(model_or_backend) as backend:
        return _extract(backend, conversations, layers, batch_size, ids, padding_side)


def _extract(backend: HFBackend, conversations, layers, batch_size, ids, padding_side) -> Activations:
    names = _names(ids, conversations)
    chosen = check_layers(layers, len(decoder_layers(backend)))
    responses = response_tokens(backend.tokenizer, conversations)
    values = mean_activations(backend, responses, chosen, batch_size=batch_size or backend.batch_size,
                              pad_id=backend.tokenizer.pad_token_id, padding_side=padding_side)
    return Activations(values, chosen, names, backend.fingerprint)


def score_and_extract(backend: HFBackend, conversations: Sequence[Sequence[dict]],
                      layers: Sequence[int] | None = None, batch_size: int | None = None, *,
                      ids: Sequence[str] | None = None) -> tuple[list[TokenScores], Activations]:
    """``HFBackend.score`` and ``extract_activations`` from the same forward pass over each conversation.

    An eval that scores its answers anyway (log-likelihood, fluency) gets their activations without
    a second pass over the same tokens; the benchmark ``bench_activations.py`` measures the cost.
    """
    names = _names(ids, conversations)
    chosen = check_layers(layers, len(decoder_layers(backend)))
    responses = response_tokens(backend.tokenizer, conversations)
    values, scores = _hooked_passes(backend, responses, chosen, batch_size or backend.batch_size,
                                    backend.tokenizer.pad_token_id, "left", score=True)
    return scores, Activations(values, chosen, names, backend.fingerprint)


def _names(ids: Sequence[str] | None, conversations: Sequence) -> tuple[str, ...]:
    names = tuple(str(i) for i in range(len(conversations))) if ids is None else tuple(ids)
    if len(names) != len(conversations):
        raise ConfigError(f"{len(names)} ids for {len(conversations)} conversations; give one id per conversation")
    return names


def mean_norms(acts: Activations) -> dict[int, float]:
    """Per layer, the mean L2 norm of the response-mean activations: the unit of steering coefficients.

    Only response means are stored, so this is the norm of a mean, which is at most the mean
    per-token norm (the triangle inequality); both are dominated by the residual stream's large
    shared component, and using the stored means keeps steering units reproducible from the file.
    """
    norms = acts.values.norm(dim=-1).mean(0)
    return {layer: float(norm) for layer, norm in zip(acts.layers, norms)}


def save_activations(path: str | Path, acts: Activations, meta: Mapping[str, Any] | None = None) -> Path:
    """Write ``path/activations.safetensors`` then ``path/index.json`` (which names the file's hash)."""
    from safetensors.torch import save

    folder = Path(path)
    tensor_path = atomic_write_bytes(folder / TENSOR_FILE, save({"activations": acts.values.contiguous()}))
    index = {
        "format": FORMAT, "file": TENSOR_FILE, "sha256": sha256_file(tensor_path),
        "shape": list(acts.values.shape), "dtype": "float32", "layers": list(acts.layers),
        "layer_definition": LAYER_DEFINITION, "reduction": "mean over the final assistant turn's content tokens",
        "ids": list(acts.ids), "model_fingerprint": acts.fingerprint, "meta": dict(meta or {}),
    }
    atomic_write_json(folder / INDEX_FILE, index)
    return folder


def load_activations(path: str | Path) -> tuple[Activations, dict[str, Any]]:
    """Read a folder written by ``save_activations``; returns the activations and the saved ``meta``."""
    from safetensors.torch import load_file

    folder = Path(path)
    index_path = folder / INDEX_FILE
    if not index_path.is_file():
        raise ConfigError(f"{folder}: no {INDEX_FILE}; not an activations folder, or its writing was interrupted")
    index = read_json_object(index_path)
    tensor_path = folder / index["file"]
    if not tensor_path.is_file() or sha256_file(tensor_path) != index["sha256"]:
        raise ConfigError(f"{tensor_path}: missing or does not match the hash in {index_path}; extract again")
    values = load_file(tensor_path)["activations"]
    acts = Activations(values, tuple(index["layers"]), tuple(index["ids"]), index["model_fingerprint"])
    return acts, index["meta"]
