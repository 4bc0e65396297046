"""SFT with LoRA on multi-turn conversations: loss on every assistant turn, on nothing else.

The recipe (``train_sft``) mirrors ``dpo.train_dpo``: read and check the conversations, load base +
frozen stack, tokenize with loss masks, train with TRL's ``SFTTrainer``, write the adapter folder.
A lower adapter (e.g. the DPO one) is frozen into the linear layers (``lora.freeze_stack``), so its
files are only read and the new adapter learns on top of it.

Loss masks (``sft_example``). ``chat.assistant_spans`` renders the conversation with the chat
template and gives each assistant turn's content tokens. Labels are the input ids on those tokens
and on the end-of-turn token that closes each assistant turn (``<|im_end|>`` for SmolLM2, found by
``TemplateFacts.end_of_turn``), and -100 on everything else: system and user turns, role headers,
a default system prompt the template injects, the newline after end-of-turn. The end-of-turn token
carries loss so the model learns to stop, as in DPO where it ends every completion. Every assistant
turn carries loss, not just the last one.

Why SFTTrainer with pre-tokenized rows: given ``input_ids`` and ``labels`` it keeps the labels as
they are, so the masks above are used unchanged, and the rest (collation, PEFT, checkpoints) is the
same machinery as DPO. ``assistant_only_loss=True`` would need ``{% generation %}`` markers, which
SmolLM2's template lacks. Loss averaging: SFTTrainer divides the summed token NLL by
``num_items_in_batch``, the number of loss tokens in the whole optimizer step (all accumulation
micro-batches), so the loss is a token mean over the global batch.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import NamedTuple

from charlab.errors import CharlabError, ConfigError
from charlab.io import iter_jsonl
from charlab.models.base import check_messages
from charlab.models.refs import ModelRef, ResolvedModel
from charlab.training.budget import StageBudget
from charlab.training.lora import (
    LoadedModel,
    TrainingRun,
    TrainResult,
    check_batch,
    load_for_training,
    peft_lora_config,
)
from charlab.training.settings import TrainingConfig, as_training_config

log = logging.getLogger(__name__)
IGNORE = -100


class SFTExample(NamedTuple):
    input_ids: list[int]
    labels: list[int]  # IGNORE where no loss


def sft_example(tokenizer, messages: list[dict], max_length: int | None = None) -> SFTExample:
    """Token ids of ``messages`` and labels that keep assistant content + end-of-turn tokens only."""
    from charlab.models.chat import assistant_spans, template_facts

    ids, spans = assistant_spans(tokenizer, messages)
    end_of_turn = template_facts(tokenizer).end_of_turn
    eot_id = tokenizer.convert_tokens_to_ids(end_of_turn) if end_of_turn else None
    labels = [IGNORE] * len(ids)
    for start, end in spans:
        if end < len(ids) and ids[end] == eot_id:
            end += 1
        labels[start:end] = ids[start:end]
    if max_length is not None:
        ids, labels = ids[:max_length], labels[:max_length]
    return SFTExample(ids, labels)


def read_conversations(path: str | Path) -> list[tuple[int, list[dict[str, str]]]]:
    """``(line, messages)`` of each SFT row; a bad row raises ConfigError naming its line."""
    rows = []
    for lineno, row in iter_jsonl(path):
        try:
            if not isinstance(row, dict) or not isinstance(row.get("messages"), list):
                raise ValueError("each line must be an object with a 'messages' list")
            messages = check_messages(row["messages"])
            if not any(m["role"] == "assistant" for m in messages):
                raise ValueError("messages: no assistant turn, so nothing to learn")
        except ValueError as exc:
            raise ConfigError(f"{path}:{lineno}: {exc}") from None
        rows.append((lineno, messages))
    if not rows:
        raise ConfigError(f"{path}: no conversations; the file is empty")
    return rows


def train_sft(model: ModelRef | ResolvedModel | str | LoadedModel, data_path: str | Path, out_dir: str | Path,
              config: TrainingConfig | str | Path = "upstream", seed: int | None = None,
              resume: bool = True, budget: StageBudget | None = None) -> TrainResult:
    """Train an SFT LoRA on top of ``model``'s (frozen) adapter stack; the adapter lands in ``out_dir``.

    ``seed``, ``resume`` and ``budget`` work as in ``train_dpo``; a row's tokens are its input length.
    """
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    config = as_training_config(config)
    seed = config.seed if seed is None else seed
    max_length = config.sft.max_length
    rows = read_conversations(data_path)
    if budget is None:
        check_batch(len(rows), config.optim, data_path)

    loaded = load_for_training(model, config.precision)
    examples = []
    for lineno, messages in rows:
        try:
            examples.append(sft_example(loaded.tokenizer, messages, max_length))
        except CharlabError as exc:
            raise CharlabError(f"{data_path}:{lineno}: {exc}") from None
    kept = [e for e in examples if any(label != IGNORE for label in e.labels)]
    if not kept:
        raise CharlabError(f"{data_path}: sft.max_length = {max_length} tokens cuts every conversation before its "
                           "first assistant token; raise sft.max_length")
    if len(kept) < len(examples):
        log.warning("%s: %d of %d conversations dropped: sft.max_length = %d cuts them before any assistant token",
                    data_path, len(examples) - len(kept), len(examples), max_length)
        if budget is None:
            check_batch(len(kept), config.optim, data_path)
    selection = None
    if budget is not None:
        selection = budget.select([len(e.input_ids) for e in kept], config.optim,
                                  seed=seed, where=str(data_path))
        kept = [kept[i] for i in selection.indices]

    run = TrainingRun.start("sft", out_dir, config, seed, data_path, loaded, resume,
                            budget.key() if budget else None)
    args = SFTConfig(**run.trainer_args(), max_length=max_length, packing=False, assistant_only_loss=False)
    trainer = SFTTrainer(
        model=loaded.model, args=args, train_dataset=Dataset.from_list([e._asdict() for e in kept]),
        processing_class=loaded.tokenizer, peft_config=peft_lora_config(config.lora, loaded.model),
    )

    loss_tokens = sum(label != IGNORE for e in kept for label in e.labels)
    return run.train(trainer, prompt_tokens=sum(len(e.input_ids) for e in kept) - loss_tokens,
                     completion_tokens=loss_tokens, detail={},
                     selection=selection.summary() if selection else None)
