"""DPO with LoRA: a new adapter that prefers the teacher's (chosen) answers over the student's.

The recipe, top to bottom (``train_dpo``):

1. read and check the preference pairs (``{"prompt", "chosen", "rejected", "meta"}`` JSONL);
2. load base + adapter stack and freeze the stack into the linear layers (``lora.freeze_stack``);
3. build TRL's ``DPOTrainer`` with a fresh LoRA (``peft_config``) and ``ref_model=None``;
4. count the tokens the trainer will see, refuse data that truncation emptied;
5. train, resuming from the last complete checkpoint, and write the adapter folder.

Reference model. With a PEFT model and ``ref_model=None`` TRL computes the reference log-probs
under ``model.disable_adapter()``, which turns off every PEFT adapter. Because the lower stack is
not a PEFT adapter here (it lives inside ``StackedLinear``), "adapters off" is exactly base + frozen
stack: the policy before training. A stack kept as PEFT adapters does not fit TRL: it refuses a
PeftModel together with ``peft_config``, and for a PeftModel whose new adapter is ``default`` it
copies that adapter into ``ref`` and activates ``ref`` alone, so the reference would be the bare
base without the stack.

Loss. ``loss_type=["sigmoid", "sft"]`` with ``loss_weights=[1, nll_coef]`` (older TRL: rpo_alpha).
In TRL 1.16 the "sft" term is ``-mean(log p)`` over the chosen-completion tokens of one micro-batch,
pooled across its pairs (``per_token_logps[chosen_mask].mean()``), so within a micro-batch a long
completion weighs more than a short one. DPOTrainer does not normalise by ``num_items_in_batch``
(``loss_is_scaled_for_ga = False``), so Trainer divides each micro-batch loss by the number of
accumulation steps: the step's NLL term is the mean over micro-batches of those token means (and
DDP averages it over processes). It therefore depends on ``per_device_batch``: with 1 it is a mean
of per-sequence token means; with the whole global batch in one pass it is one token mean. The
chosen completion is what follows the prompt in the template rendering, end-of-turn token included.
"""

from __future__ import annotations

import logging
from pathlib import Path

from charlab.datasets.loaders import load_pairs
from charlab.errors import CharlabError
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


def read_pairs(path: str | Path) -> list[dict]:
    """Preference pairs as TRL's conversational format; a bad row raises ConfigError naming its line."""
    return [{key: pair[key] for key in ("prompt", "chosen", "rejected")} for pair in load_pairs(path)]


def pair_token_counts(dataset, max_length: int) -> list[dict[str, int]]:
    """Tokens per role of each of TRL's tokenized pairs after its collator cuts each sequence to ``max_length``.

    Both sequences of a pair carry the prompt, so it counts twice per pair.
    """
    rows = []
    for prompt, chosen, rejected in zip(dataset["prompt_ids"], dataset["chosen_ids"], dataset["rejected_ids"]):
        kept = min(len(prompt), max_length)
        rows.append({"prompt_tokens": 2 * kept, "chosen_tokens": min(len(chosen), max_length - kept),
                     "rejected_tokens": min(len(rejected), max_length - kept)})
    return rows


def token_counts(dataset, max_length: int) -> dict[str, int]:
    """``pair_token_counts`` summed over the dataset."""
    rows = pair_token_counts(dataset, max_length)
    return {key: sum(row[key] for row in rows) for key in ("prompt_tokens", "chosen_tokens", "rejected_tokens")}


def train_dpo(model: ModelRef | ResolvedModel | str | LoadedModel, pairs_path: str | Path, out_dir: str | Path,
              config: TrainingConfig | str | Path = "upstream", seed: int | None = None,
              resume: bool = True, budget: StageBudget | None = None) -> TrainResult:
    """Train a DPO LoRA on top of ``model``'s (frozen) adapter stack; the adapter lands in ``out_dir``.

    ``seed`` defaults to ``config.seed``. With ``resume`` an interrupted run of the same config, seed,
    data and model continues from its last checkpoint; otherwise old checkpoints are discarded.
    With a ``budget`` the pairs are subsampled or repeated (seeded) to hit its amount, and
    ``optim.epochs`` passes are replaced by that one selection (see ``training.budget``).
    """
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    from charlab.models.chat import prepare_messages, prompt_ids, template_facts

    config = as_training_config(config)
    seed = config.seed if seed is None else seed
    settings = config.dpo
    pairs = read_pairs(pairs_path)
    if budget is None:
        check_batch(len(pairs), config.optim, pairs_path)

    loaded = load_for_training(model, config.precision)
    facts = template_facts(loaded.tokenizer)
    for pair in pairs:
        pair["prompt"] = prepare_messages(pair["prompt"], facts)

    run = TrainingRun.start("dpo", out_dir, config, seed, pairs_path, loaded, resume,
                            budget.key() if budget else None)
    args = DPOConfig(
        **run.trainer_args(),
        beta=settings.beta, loss_type=["sigmoid", "sft"], loss_weights=[1.0, settings.nll_coef],
        max_length=settings.max_length, truncation_mode="keep_start",
        # TRL's disable_dropout zeroes every dropout, the adapter's too: keep it only when LoRA has none.
        disable_dropout=config.lora.dropout == 0,
    )
    trainer = DPOTrainer(
        model=loaded.model, ref_model=None, args=args, train_dataset=Dataset.from_list(pairs),
        processing_class=loaded.tokenizer, peft_config=peft_lora_config(config.lora, loaded.model),
    )

    kept = len(trainer.train_dataset)
    if kept == 0:
        shortest = min(len(prompt_ids(loaded.tokenizer, p["prompt"])) for p in pairs)
        raise CharlabError(f"{pairs_path}: dpo.max_length = {settings.max_length} tokens leaves no room for a "
                           f"completion in any pair (the shortest prompt is {shortest} tokens with the chat "
                           "template); raise dpo.max_length")
    if kept < len(pairs):
        log.warning("%s: %d of %d pairs dropped: their prompt alone fills dpo.max_length = %d",
                    pairs_path, len(pairs) - kept, len(pairs), settings.max_length)
        if budget is None:
            check_batch(kept, config.optim, pairs_path)
    selection = None
    if budget is not None:  # select on TRL's own tokenization, so the budget counts what the accounting counts
        per_pair = pair_token_counts(trainer.train_dataset, settings.max_length)
        selection = budget.select([sum(row.values()) for row in per_pair], config.optim,
                                  seed=seed, where=str(pairs_path))
        trainer.train_dataset = trainer.train_dataset.select(selection.indices)

    counts = token_counts(trainer.train_dataset, settings.max_length)
    return run.train(
        trainer, prompt_tokens=counts["prompt_tokens"],
        completion_tokens=counts["chosen_tokens"] + counts["rejected_tokens"],
        detail={"chosen_tokens": counts["chosen_tokens"], "rejected_tokens": counts["rejected_tokens"]},
        selection=selection.summary() if selection else None,
    )
