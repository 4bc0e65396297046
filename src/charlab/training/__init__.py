"""LoRA training recipes (DPO, SFT) on top of a frozen adapter stack, with compute accounting and
exact adapter composition. TRL and PEFT are imported when a recipe runs."""

from charlab.training.accounting import ComputeReport
from charlab.training.compose import compose_adapters
from charlab.training.dpo import train_dpo
from charlab.training.lora import LoadedModel, TrainResult, resolve_target_modules
from charlab.training.settings import (
    DPOSettings,
    LoraSettings,
    OptimSettings,
    SFTSettings,
    TrainingConfig,
    load_training_config,
)
from charlab.training.sft import sft_example, train_sft

__all__ = [
    "ComputeReport", "DPOSettings", "LoadedModel", "LoraSettings", "OptimSettings", "SFTSettings", "TrainResult",
    "TrainingConfig", "compose_adapters", "load_training_config", "resolve_target_modules", "sft_example",
    "train_dpo", "train_sft",
]
