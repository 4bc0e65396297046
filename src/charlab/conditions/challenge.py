"""The narrow fine-tuning challenge that measures a condition's inertia.

A condition model (base + its adapter stack) gets one more LoRA, trained with the SFT recipe on a
narrow chat dataset (e.g. emergent-misalignment code), while its own adapters stay frozen below
(``lora.freeze_stack``). Comparing the model before and after shows how far the challenge moved it.
Defaults are the published ones: the ``challenge`` training profile.
"""

from __future__ import annotations

import os
from pathlib import Path

from charlab.datasets.challenge_sets import challenge_data_path
from charlab.datasets.loaders import load_chat_jsonl
from charlab.errors import ConfigError
from charlab.io import atomic_write_jsonl
from charlab.models.refs import ModelRef
from charlab.training.lora import TrainResult, check_batch
from charlab.training.settings import TrainingConfig, as_training_config
from charlab.training.sft import train_sft

CHALLENGE_DATA = "challenge_data.jsonl"


def finetune_challenge(model: ModelRef, data_path: str | os.PathLike, out_dir: str | os.PathLike,
                       config: TrainingConfig | str | os.PathLike = "challenge", seed: int = 0,
                       holdout: int = 0) -> TrainResult:
    """Train the challenge LoRA on top of ``model``'s frozen adapters; the adapter lands in ``out_dir``.

    Data and config are checked in full before anything is written, so a bad line costs no loading
    or training time and leaves no half-made adapter folder. The validated rows are saved in
    ``out_dir`` and trained from there: the adapter folder then holds exactly the data it learned,
    and its ``charlab_adapter.json`` records that file's hash. Rerunning resumes like ``train_sft``.
    The last ``holdout`` conversations are left out of training, for in-domain evaluation.
    """
    data_path = challenge_data_path(data_path)
    rows = load_chat_jsonl(data_path)
    if not 0 <= holdout < len(rows):
        raise ConfigError(f"{data_path}: holdout = {holdout}, but the file has {len(rows)} conversations; "
                          "hold out fewer")
    rows = rows[:len(rows) - holdout]
    config = as_training_config(config)
    check_batch(len(rows), config.optim, data_path)
    data = atomic_write_jsonl(Path(out_dir) / CHALLENGE_DATA, rows)
    return train_sft(model, data, out_dir, config, seed=seed)
