"""LoRA training settings and the plumbing the DPO and SFT recipes share.

* ``TrainingConfig`` (in ``training.config``) — every knob, typed and documented, with profiles.
* ``resolve_target_modules`` — target names checked against the real model, so a typo or a
  projection another family lacks fails before training instead of training nothing.
* ``freeze_stack`` — the lower adapter stack becomes a fixed low-rank term inside each linear layer
  (``StackedLinear``). The new adapter is then the model's only PEFT adapter, so TRL's "adapter off"
  reference is exactly base + frozen stack. (Left as PEFT adapters, TRL's reference would disable
  the whole stack and compare against the bare base.)
* ``TrainingRun`` — checkpoints under ``out_dir/checkpoints``, resume, the adapter folder and its
  ``charlab_adapter.json``, the compute report.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from charlab.errors import CharlabError
from charlab.io import atomic_write_json, sha256_file, stable_hash
from charlab.models.refs import ADAPTER_META, ModelRef, ResolvedModel
from charlab.training.accounting import ComputeReport, count_params, training_flops
from charlab.training.compose import LoraFactors, concat_factors
from charlab.training.settings import LoraSettings, OptimSettings, TrainingConfig

log = logging.getLogger(__name__)

# ---------------------------------------------------------------------------------------------
# Target modules


def linear_modules(model: nn.Module) -> dict[str, list[str]]:
    """Linear layers a LoRA may target, by leaf name -> full paths (the LM head excluded)."""
    head = model.get_output_embeddings()
    found: dict[str, list[str]] = {}
    for path, module in model.named_modules():
        if isinstance(module, nn.Linear) and module is not head:
            found.setdefault(path.rsplit(".", 1)[-1], []).append(path)
    return found


def resolve_target_modules(model: nn.Module, requested: str | tuple[str, ...] | list[str]) -> list[str]:
    """Module names for ``LoraConfig.target_modules``, checked against ``model``.

    ``"all-linear"`` gives the leaf names of every linear layer except the LM head. An explicit name
    must match (PEFT's rule: equal to a module path or its dotted suffix) at least one linear layer.
    """
    available = linear_modules(model)
    if requested == "all-linear":
        return sorted(available)
    paths = [p for group in available.values() for p in group]
    unmatched = [name for name in requested if not any(p == name or p.endswith("." + name) for p in paths)]
    if unmatched:
        raise CharlabError(
            f"lora.target_modules: {', '.join(map(repr, unmatched))} matches no linear layer of "
            f"{type(model).__name__}; its linear layers are: {', '.join(sorted(available))} (the LM head "
            "cannot be targeted); fix the names or use 'all-linear'")
    return list(requested)


def peft_lora_config(settings: LoraSettings, model: nn.Module):
    from peft import LoraConfig

    return LoraConfig(r=settings.rank, lora_alpha=settings.alpha, lora_dropout=settings.dropout, bias="none",
                      target_modules=resolve_target_modules(model, settings.target_modules), task_type="CAUSAL_LM")


# ---------------------------------------------------------------------------------------------
# The frozen lower stack


class StackedLinear(nn.Linear):
    """A frozen linear layer plus the lower adapter stack as one fixed low-rank term ``B @ A``.

    It subclasses ``nn.Linear`` so PEFT wraps it like any linear layer; disabling PEFT adapters
    therefore leaves the stack on. The factors are non-persistent buffers: they never enter a
    checkpoint or the saved adapter. Like PEFT, the low-rank term runs in the factors' dtype.
    """

    def __init__(self, base: nn.Linear, a: torch.Tensor, b: torch.Tensor):
        nn.Module.__init__(self)
        self.in_features, self.out_features = base.in_features, base.out_features
        self.weight, self.bias = base.weight, base.bias
        self.register_buffer("stack_A", a.to(base.weight.device), persistent=False)
        self.register_buffer("stack_B", b.to(base.weight.device), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.linear(x, self.weight, self.bias)
        delta = F.linear(F.linear(x.to(self.stack_A.dtype), self.stack_A), self.stack_B)
        return out + delta.to(out.dtype)


def _stack_factors(peft_model) -> list[dict[str, LoraFactors]]:
    """Each active adapter's per-module factors, read from the live LoRA layers (their own scaling)."""
    from peft import PeftType
    from peft.tuners.lora import LoraLayer
    from peft.tuners.lora.layer import Linear as LoraLinear

    for name, cfg in peft_model.peft_config.items():
        if cfg.peft_type != PeftType.LORA:
            raise CharlabError(f"adapter '{name}' is {cfg.peft_type}, not LoRA; only LoRA stacks can sit below "
                               "a trained adapter")
    active = list(peft_model.base_model.active_adapters)
    stack: list[dict[str, LoraFactors]] = [{} for _ in active]
    for path, module in peft_model.base_model.model.named_modules():
        if not isinstance(module, LoraLayer):
            continue
        for factors, name in zip(stack, active):
            if name in module.lora_embedding_A or (name in module.lora_A and not isinstance(module, LoraLinear)):
                raise CharlabError(f"adapter '{name}' adapts {path} ({type(module).__name__}); only LoRA on "
                                   "linear layers can be frozen below a new adapter")
            if name not in module.lora_A:
                continue
            if module.lora_variant.get(name) is not None or module.lora_bias.get(name) or module.fan_in_fan_out:
                raise CharlabError(f"adapter '{name}' on {path} uses DoRA, a LoRA bias or fan_in_fan_out; "
                                   "it is not a plain low-rank delta and cannot be frozen exactly")
            factors[path] = LoraFactors(module.lora_A[name].weight.detach(), module.lora_B[name].weight.detach(),
                                        float(module.scaling[name]))
    return stack


def freeze_stack(model):
    """A plain model computing ``W x + sum_i s_i B_i A_i x`` for the PEFT stack ``model`` carried.

    A model without adapters is returned as is. Every weight ends up frozen.
    """
    from peft import PeftModel

    if isinstance(model, PeftModel):
        factors = concat_factors(_stack_factors(model))
        model = model.unload()
        for path, (a, b) in factors.items():
            parent, _, leaf = path.rpartition(".")
            setattr(model.get_submodule(parent), leaf, StackedLinear(model.get_submodule(path), a, b))
    return model.requires_grad_(False)


@dataclass
class LoadedModel:
    """Weights ready for training: a causal LM (plain, or a PeftModel carrying the stack), its tokenizer
    and its identity. Training consumes it: the new adapter is injected into ``model`` in place."""

    model: Any
    tokenizer: Any
    resolved: ResolvedModel


def load_for_training(model: ModelRef | ResolvedModel | str | LoadedModel, precision: str = "auto") -> LoadedModel:
    """Load base + adapter stack (``models.loading``) and turn the stack into frozen ``StackedLinear`` terms."""
    from charlab.models import loading

    if not isinstance(model, LoadedModel):
        resolved = loading.as_resolved(model)
        tokenizer = loading.load_tokenizer(resolved)
        base = loading.apply_adapters(loading.load_base(resolved, dtype=precision), resolved)
        model = LoadedModel(base, tokenizer, resolved)
    return LoadedModel(freeze_stack(model.model), model.tokenizer, model.resolved)


# ---------------------------------------------------------------------------------------------
# One training run: batches, checkpoints, resume, output


def check_batch(n_examples: int, optim: OptimSettings, source: str | Path) -> None:
    if n_examples < optim.global_batch:
        raise CharlabError(f"{source}: only {n_examples} training examples, fewer than optim.global_batch = "
                           f"{optim.global_batch}, so not even one optimizer step is full; add data or lower "
                           "optim.global_batch (and optim.per_device_batch)")


def _world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def _complete_checkpoint(folder: Path) -> int | None:
    """The global step of a checkpoint folder the trainer finished writing (trainer_state.json is last)."""
    try:
        state = json.loads((folder / "trainer_state.json").read_text())
    except (OSError, ValueError):
        return None
    return state.get("global_step") if (folder / "adapter_model.safetensors").is_file() else None


@dataclass
class TrainResult:
    """What a training produced. ``compute.to_dict()`` belongs in the step manifest."""

    adapter_dir: Path
    stage: str
    seed: int
    global_step: int
    resumed_from_step: int | None  # None: started from scratch
    compute: ComputeReport
    log_history: list[dict] = field(default_factory=list)
    selection: dict | None = None  # how a budget picked the rows (None: the data as given, ``epochs`` times)


@dataclass
class TrainingRun:
    """The life of one training in ``out_dir``: checkpoint folder, resume point, final adapter."""

    stage: str
    out_dir: Path
    config: TrainingConfig
    seed: int
    data_path: Path
    loaded: LoadedModel
    budget: dict | None = None  # the amount a budgeted training aims at (see ``training.budget``)
    resume_from: Path | None = None
    resume_step: int | None = None

    @property
    def checkpoint_dir(self) -> Path:
        return self.out_dir / "checkpoints"

    @classmethod
    def start(cls, stage: str, out_dir: str | Path, config: TrainingConfig, seed: int, data_path: str | Path,
              loaded: LoadedModel, resume: bool, budget: dict | None = None) -> TrainingRun:
        """Find the checkpoint to resume from, or clear stale ones. A checkpoint counts only if it was
        written for the same stage, config, seed, data, budget and model (recorded in ``checkpoints/run.json``)."""
        run = cls(stage, Path(out_dir), config, seed, Path(data_path), loaded, budget)
        (run.out_dir / ADAPTER_META).unlink(missing_ok=True)  # the folder is not a finished adapter until the end
        key = stable_hash({"stage": stage, "config": config.model_dump(mode="json"), "seed": seed,
                           "data": sha256_file(data_path), "model": loaded.resolved.fingerprint, "budget": budget})
        marker = run.checkpoint_dir / "run.json"
        same_run = marker.is_file() and json.loads(marker.read_text()).get("key") == key
        if resume and same_run:
            done = []
            for folder in run.checkpoint_dir.glob("checkpoint-*"):
                if (step := _complete_checkpoint(folder)) is None:
                    shutil.rmtree(folder)  # cut short by the kill
                else:
                    done.append((step, folder))
            if done:
                run.resume_step, run.resume_from = max(done)
        elif run.checkpoint_dir.exists():
            if resume:
                log.warning("%s holds checkpoints of a different run (config, seed, data or model changed); "
                            "starting over", run.checkpoint_dir)
            shutil.rmtree(run.checkpoint_dir)
        run.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_json(marker, {"key": key})
        return run

    def trainer_args(self) -> dict[str, Any]:
        """TrainingArguments shared by both stages: schedule, batch, precision, checkpoints, logging."""
        optim = self.config.optim
        per_step = optim.per_device_batch * _world_size()
        if optim.global_batch % per_step:
            raise CharlabError(f"optim.global_batch {optim.global_batch} is not a multiple of per_device_batch x "
                               f"processes = {per_step}")
        return dict(
            output_dir=str(self.checkpoint_dir), seed=self.seed, data_seed=self.seed,
            learning_rate=optim.learning_rate, lr_scheduler_type="cosine_with_min_lr",
            lr_scheduler_kwargs={"min_lr_rate": optim.lr_floor_ratio}, warmup_steps=optim.warmup_ratio,
            weight_decay=optim.weight_decay, max_grad_norm=optim.max_grad_norm, num_train_epochs=optim.epochs,
            per_device_train_batch_size=optim.per_device_batch,
            gradient_accumulation_steps=optim.global_batch // per_step,
            gradient_checkpointing=optim.gradient_checkpointing,
            bf16=self.loaded.model.dtype == torch.bfloat16, fp16=False,
            save_strategy="steps", save_steps=self.config.checkpoint_every, save_total_limit=2,
            logging_steps=1, report_to=[], dataloader_num_workers=0,
        )

    def train(self, trainer, *, prompt_tokens: int, completion_tokens: int, detail: dict[str, int],
              selection: dict | None = None) -> TrainResult:
        """Train (resuming if possible), write the adapter folder, remove the checkpoints.

        ``selection`` is the budget's row selection summary (``budget.Selection.summary``), if any.
        """
        epochs = self.config.optim.epochs
        started = time.perf_counter()
        trainer.train(resume_from_checkpoint=str(self.resume_from) if self.resume_from else None)
        wall = time.perf_counter() - started

        model = trainer.model
        model.save_pretrained(self.out_dir)
        params = count_params(model)
        tokens = (prompt_tokens + completion_tokens) * epochs
        compute = ComputeReport(
            stage=self.stage, examples=len(trainer.train_dataset), epochs=epochs,
            optimizer_steps=trainer.state.global_step,
            global_batch=trainer.args.per_device_train_batch_size * trainer.args.gradient_accumulation_steps
            * trainer.args.world_size,
            prompt_tokens=prompt_tokens * epochs, completion_tokens=completion_tokens * epochs,
            trainable_params=params.trainable, total_params=params.total,
            flops=training_flops(params, tokens, reference_forward=self.stage == "dpo",
                                 recompute=self.config.optim.gradient_checkpointing),
            wall_seconds=round(wall, 3), detail={k: v * epochs for k, v in detail.items()},
        )
        resolved = self.loaded.resolved
        atomic_write_json(self.out_dir / ADAPTER_META, {
            "base_fingerprint": resolved.base_fingerprint,
            "stack_below": [a.fingerprint for a in resolved.adapters],
            "stage": self.stage, "seed": self.seed,
            "data": {"path": str(self.data_path), "sha256": sha256_file(self.data_path)},
            "target_modules": sorted(model.peft_config["default"].target_modules),
            "config": self.config.model_dump(mode="json"),
            "budget": selection,
        })
        shutil.rmtree(self.checkpoint_dir)
        return TrainResult(
            adapter_dir=self.out_dir, stage=self.stage, seed=self.seed, global_step=trainer.state.global_step,
            resumed_from_step=self.resume_step,
            compute=compute, log_history=list(trainer.state.log_history), selection=selection,
        )

