"""Compute accounting: what a LoRA training consumed, so conditions can be matched on budget.

Token counts come from the tokenized rows the trainer actually saw (after truncation), times the
number of epochs. FLOPs are an estimate from parameter counts (see ``training_flops``); attention's
sequence-squared term and the fused LM head skipping prompt positions are ignored, which is the
usual ``6ND``-style approximation and is the same for every condition trained this way.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

FLOPS_FORMULA = (
    "2*N*T forward + 2*N*T backward through every layer (activation gradients pass the frozen base) "
    "+ 2*N_train*T weight gradients of the new adapter [+ 2*N*T recompute with gradient checkpointing] "
    "[+ 2*(N - N_train)*T reference forward for DPO]; N = parameters used in matmuls per token (all but "
    "the input embedding, LM head included, frozen lower adapters included), T = tokens processed"
)


@dataclass
class ComputeReport:
    """What one training consumed. ``to_dict()`` goes into the step manifest."""

    stage: str  # "dpo" or "sft"
    examples: int  # rows trained on (after dropping rows that truncation left without a loss token)
    epochs: int
    optimizer_steps: int
    global_batch: int  # per-device batch x gradient accumulation x processes
    prompt_tokens: int  # tokens without loss, x epochs (DPO: the prompt counts once per sequence, twice per pair)
    completion_tokens: int  # tokens with loss, x epochs (DPO: chosen + rejected completions)
    trainable_params: int
    total_params: int  # base + frozen lower adapters + the new adapter
    flops: float
    wall_seconds: float  # time spent in the trainer by this call (a resumed run counts only its own part)
    detail: dict[str, int] = field(default_factory=dict)  # stage-specific counts, e.g. chosen/rejected tokens
    flops_formula: str = FLOPS_FORMULA

    @property
    def tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def to_dict(self) -> dict:
        return {**asdict(self), "tokens": self.tokens}


@dataclass(frozen=True)
class ParamCounts:
    trainable: int
    total: int
    matmul: int  # parameters multiplied per token: what FLOPs scale with


def count_params(model) -> ParamCounts:
    """Parameter counts of a (PEFT) causal LM, frozen-stack buffers included (see ``lora.StackedLinear``)."""
    params = list(model.parameters())
    trainable = sum(p.numel() for p in params if p.requires_grad)
    stack = sum(b.numel() for name, b in model.named_buffers() if name.rsplit(".", 1)[-1] in ("stack_A", "stack_B"))
    total = sum(p.numel() for p in params) + stack
    embed, head = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    matmul = total - embed.numel() + (head.numel() if head is embed else 0)
    return ParamCounts(trainable=trainable, total=total, matmul=matmul)


def training_flops(params: ParamCounts, tokens: int, *, reference_forward: bool, recompute: bool) -> float:
    """Estimated FLOPs of LoRA training over ``tokens`` (formula: ``FLOPS_FORMULA``).

    Full fine-tuning costs about ``6*N*T``; LoRA saves the base's weight gradients (``2*N*T``) but
    still back-propagates activations through the frozen base, hence ``4*N*T + 2*N_train*T``.
    """
    n, n_train = params.matmul, params.trainable
    flops = 4 * n * tokens + 2 * n_train * tokens
    if recompute:
        flops += 2 * n * tokens
    if reference_forward:
        flops += 2 * (n - n_train) * tokens
    return float(flops)
