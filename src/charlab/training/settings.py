"""Typed settings of a LoRA training, and the packaged profiles.

``upstream`` holds the published OpenCharacterTraining defaults, ``demo`` a CPU-sized variant,
``challenge`` / ``challenge-demo`` the narrow fine-tuning challenge. Every knob is a documented
field; a YAML file with a wrong field fails with its file, line and field.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from charlab.configfile import load_model
from charlab.errors import ConfigError

PROFILES = "charlab.data.train_configs"


# ---------------------------------------------------------------------------------------------
# Settings


class _Settings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class LoraSettings(_Settings):
    """The new adapter's shape. Defaults: upstream OCT (rank 64, alpha 128, all linear layers)."""

    rank: int = Field(64, ge=1, description="LoRA rank r")
    alpha: float = Field(128, gt=0, description="LoRA alpha; the delta is scaled by alpha / rank")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="dropout on the adapter input while training")
    target_modules: Literal["all-linear"] | tuple[str, ...] = Field(
        "all-linear", description="'all-linear' (every linear layer but the LM head) or module names; each "
        "name must match at least one linear layer of the model")

    @field_validator("target_modules", mode="before")
    @classmethod
    def _names(cls, value):
        if isinstance(value, list):
            if not value:
                raise ValueError("give at least one module name, or 'all-linear'")
            return tuple(value)
        return value


class OptimSettings(_Settings):
    """Optimiser and schedule. Defaults: upstream OCT."""

    learning_rate: float = Field(5e-5, gt=0, description="peak learning rate (AdamW)")
    lr_floor_ratio: float = Field(0.1, ge=0, le=1, description="cosine decay ends at this fraction of the peak")
    warmup_ratio: float = Field(0.1, ge=0, lt=1, description="fraction of optimizer steps with linear warmup")
    weight_decay: float = Field(0.0, ge=0, description="AdamW decoupled weight decay on the adapter")
    max_grad_norm: float = Field(1.0, gt=0, description="gradient clipping norm")
    epochs: int = Field(1, ge=1, description="passes over the data")
    global_batch: int = Field(32, ge=1, description="examples per optimizer step, over all devices")
    per_device_batch: int = Field(2, ge=1, description="examples per forward pass; the rest of the global "
                                  "batch comes from gradient accumulation, so memory sets only this")
    gradient_checkpointing: bool = Field(True, description="recompute activations in the backward pass: "
                                         "less memory, one more forward of compute")

    @model_validator(mode="after")
    def _divides(self):
        if self.global_batch % self.per_device_batch:
            raise ValueError(f"global_batch {self.global_batch} is not a multiple of per_device_batch "
                             f"{self.per_device_batch}")
        return self


class DPOSettings(_Settings):
    """DPO stage. Loss = sigmoid DPO + nll_coef x NLL of the chosen completion (TRL ``["sigmoid", "sft"]``)."""

    beta: float = Field(0.1, gt=0, description="DPO temperature: strength of the pull towards the reference")
    nll_coef: float = Field(0.1, ge=0, description="weight of the NLL term on chosen completions (rpo_alpha)")
    max_length: int = Field(1024, ge=2, description="tokens per prompt+completion sequence; longer ones are cut "
                            "at the end, and pairs whose prompt alone fills it are dropped")


class SFTSettings(_Settings):
    """SFT stage: loss on every assistant turn, nothing else."""

    max_length: int = Field(3072, ge=2, description="tokens per conversation; longer ones are cut at the end, "
                            "and conversations left without an assistant token are dropped")


class TrainingConfig(_Settings):
    """One LoRA training: the adapter, the optimiser, the stage settings, seed and checkpoints."""

    seed: int = Field(0, description="seeds adapter init, data order and dropout (overridable per call)")
    precision: Literal["auto", "float32", "bfloat16"] = Field(
        "auto", description="weights and compute dtype; auto = bfloat16 on CUDA, float32 on CPU")
    checkpoint_every: int = Field(50, ge=1, description="optimizer steps between resumable checkpoints")
    lora: LoraSettings = LoraSettings()
    optim: OptimSettings = OptimSettings()
    dpo: DPOSettings = DPOSettings()
    sft: SFTSettings = SFTSettings()


def training_profiles() -> list[str]:
    return sorted(p.name.removesuffix(".yaml") for p in resources.files(PROFILES).iterdir()
                  if p.name.endswith(".yaml"))


def load_training_config(name_or_path: str | os.PathLike) -> TrainingConfig:
    """A packaged profile by name (``upstream``, ``demo``) or a YAML/JSON file; errors name file and line."""
    text = str(name_or_path)
    if not Path(text).expanduser().exists() and "/" not in text and not text.endswith((".yaml", ".yml", ".json")):
        if text not in training_profiles():
            raise ConfigError(f"no training profile '{text}'; profiles: {', '.join(training_profiles())} "
                              "(or give the path of a YAML file)")
        with resources.as_file(resources.files(PROFILES) / f"{text}.yaml") as path:
            return load_model(TrainingConfig, path)
    return load_model(TrainingConfig, Path(text).expanduser())


def as_training_config(config: TrainingConfig | str | os.PathLike) -> TrainingConfig:
    return config if isinstance(config, TrainingConfig) else load_training_config(config)
