"""Exact composition of a LoRA stack into one adapter, by concatenating ranks.

A stack of LoRA adapters adds ``sum_i s_i B_i A_i`` to each target weight (``s_i = alpha_i / r_i``,
or ``alpha_i / sqrt(r_i)`` with rsLoRA). That sum is itself one low-rank product::

    A = [A_1; A_2; ...; A_k]          (ranks stacked as rows)
    B = [s_1 B_1, s_2 B_2, ..., s_k B_k]  (scaled blocks side by side)
    B @ A == sum_i s_i B_i A_i

so one adapter of rank ``r_1 + ... + r_k`` with scaling 1 (``alpha = r``, no rsLoRA) reproduces the
stack exactly. A module that some adapters do not target gets zero blocks for them. This replaces
upstream's PEFT ``combination_type="linear"`` merge, which builds ``(sum A)(sum B)`` and so adds
cross terms ``B_i A_j`` that no adapter learned.

Only plain LoRA composes this way. DoRA (a per-column normalisation of the merged weight), LoRA
bias terms, embedding LoRA and ``modules_to_save`` are refused. Dropout is accepted: it acts only
while training, so it is not part of the delta an adapter adds at inference.
"""

from __future__ import annotations

import math
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from charlab.errors import CharlabError
from charlab.io import atomic_write_json, read_json_object
from charlab.models.refs import ADAPTER_META, adapter_fingerprint

PEFT_PREFIX = "base_model.model."
_FACTOR_SUFFIXES = {".lora_A.weight": "A", ".lora_B.weight": "B"}


@dataclass(frozen=True)
class LoraFactors:
    """One adapter's factors on one module: its delta is ``scale * B @ A``."""

    A: torch.Tensor  # (rank, in_features)
    B: torch.Tensor  # (out_features, rank)
    scale: float


def concat_factors(stack: Sequence[Mapping[str, LoraFactors]]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """Per module, ``(A, B)`` in float32 with ``B @ A == sum_i s_i B_i A_i`` over the adapters in ``stack``.

    Adapter ``i`` owns a block of width ``w_i`` (its largest rank over modules) at the same offset in
    every module; where it has a smaller rank or skips the module, the block is zero-padded.
    """
    widths = [max((f.A.shape[0] for f in adapter.values()), default=0) for adapter in stack]
    modules = sorted({name for adapter in stack for name in adapter})
    out = {}
    for name in modules:
        present = [adapter[name] for adapter in stack if name in adapter]
        d_in, d_out = present[0].A.shape[1], present[0].B.shape[0]
        a_blocks, b_blocks = [], []
        for adapter, width in zip(stack, widths):
            a_block, b_block = torch.zeros(width, d_in), torch.zeros(d_out, width)
            if name in adapter:
                f = adapter[name]
                if f.A.shape[1] != d_in or f.B.shape[0] != d_out:
                    raise CharlabError(f"module {name}: adapters disagree on its shape ({tuple(f.B.shape)} x "
                                       f"{tuple(f.A.shape)} vs {d_out} x {d_in}); they target different bases")
                rank = f.A.shape[0]
                a_block[:rank] = f.A.float()
                b_block[:, :rank] = f.scale * f.B.float()
            a_blocks.append(a_block)
            b_blocks.append(b_block)
        out[name] = (torch.cat(a_blocks, dim=0), torch.cat(b_blocks, dim=1))
    return out


def _config_problems(config: dict) -> list[str]:
    """Why an adapter_config.json cannot be composed exactly (empty when it can)."""
    problems = []
    if config.get("peft_type") != "LORA":
        problems.append(f"peft_type is {config.get('peft_type')!r}, not LORA")
    if config.get("use_dora"):
        problems.append("it uses DoRA, whose weight normalisation is not a sum of low-rank deltas")
    if config.get("lora_bias"):
        problems.append("it trains LoRA bias terms")
    if config.get("bias", "none") != "none":
        problems.append(f"it trains the base biases (bias={config['bias']!r})")
    if config.get("modules_to_save"):
        problems.append(f"it replaces whole modules (modules_to_save={config['modules_to_save']})")
    if config.get("fan_in_fan_out"):
        problems.append("it uses fan_in_fan_out (Conv1D layers)")
    if config.get("target_parameters"):
        problems.append("it targets parameters directly (target_parameters)")
    if config.get("trainable_token_indices"):
        problems.append("it trains token embeddings (trainable_token_indices)")
    return problems


def read_adapter(folder: str | Path) -> tuple[dict, dict[str, LoraFactors]]:
    """An adapter folder's config and per-module factors; refuses what does not compose exactly."""
    from peft.utils.other import get_pattern_key
    from safetensors.torch import load_file

    folder = Path(folder)
    config_path, weights_path = folder / "adapter_config.json", folder / "adapter_model.safetensors"
    if not config_path.is_file():
        raise CharlabError(f"{folder} has no adapter_config.json; is it a PEFT adapter folder?")
    if not weights_path.is_file():
        hint = " (only a pickled adapter_model.bin; re-save it with safetensors)" if (
            folder / "adapter_model.bin").is_file() else ""
        raise CharlabError(f"{folder} has no adapter_model.safetensors{hint}")
    config = read_json_object(config_path)
    if problems := _config_problems(config):
        raise CharlabError(f"adapter {folder} cannot be composed exactly: {'; '.join(problems)}")

    tensors: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in load_file(weights_path).items():
        part = next((p for s, p in _FACTOR_SUFFIXES.items() if key.endswith(s)), None)
        if part is None or not key.startswith(PEFT_PREFIX):
            raise CharlabError(f"adapter {folder}: tensor {key!r} is not a LoRA A/B factor (embedding LoRA, "
                               "DoRA magnitude or a saved module); such adapters cannot be composed exactly")
        module = key[len(PEFT_PREFIX):].rsplit(".lora_", 1)[0]
        tensors.setdefault(module, {})[part] = tensor

    alpha_pattern = config.get("alpha_pattern") or {}
    factors = {}
    for module, parts in tensors.items():
        if set(parts) != {"A", "B"}:
            raise CharlabError(f"adapter {folder}: module {module} has only lora_{''.join(parts)}; "
                               "the file is incomplete")
        rank = parts["A"].shape[0]
        alpha = alpha_pattern.get(get_pattern_key(list(alpha_pattern), module), config["lora_alpha"])
        scale = alpha / math.sqrt(rank) if config.get("use_rslora") else alpha / rank
        factors[module] = LoraFactors(parts["A"], parts["B"], scale)
    return config, factors


def _base_names(folders: Sequence[Path], configs: Sequence[dict]) -> tuple[str | None, str | None]:
    """The base every adapter was trained on (name, charlab fingerprint); refuse a mixed stack."""
    names = {Path(c["base_model_name_or_path"].rstrip("/")).name for c in configs if c.get("base_model_name_or_path")}
    prints = set()
    for folder in folders:
        meta = folder / ADAPTER_META
        if meta.is_file() and (fp := read_json_object(meta).get("base_fingerprint")):
            prints.add(fp)
    if len(names) > 1 or len(prints) > 1:
        raise CharlabError(f"adapters {', '.join(map(str, folders))} were trained on different bases "
                           f"({', '.join(sorted(names | prints))}); only a stack over one base composes")
    first = next((c["base_model_name_or_path"] for c in configs if c.get("base_model_name_or_path")), None)
    return first, next(iter(prints), None)


def compose_adapters(adapter_dirs: Sequence[str | Path], out_dir: str | Path) -> Path:
    """Write ONE LoRA adapter to ``out_dir`` whose delta equals the sum of the stack's deltas exactly.

    The result has rank ``sum of ranks``, ``lora_alpha == r`` (scaling 1), no dropout, and targets the
    exact module paths any input adapter targets. When the inputs are charlab adapters, its
    ``charlab_adapter.json`` records their base fingerprint and the fingerprints of the composed
    adapters. The folder appears complete or not at all.
    """
    from peft import LoraConfig
    from safetensors.torch import save_file

    folders = [Path(d).expanduser().resolve() for d in adapter_dirs]
    if not folders:
        raise CharlabError("compose_adapters needs at least one adapter folder")
    read = [read_adapter(folder) for folder in folders]
    configs = [config for config, _ in read]
    base_name, base_fingerprint = _base_names(folders, configs)
    tasks = {c.get("task_type") for c in configs}
    if len(tasks) > 1:
        raise CharlabError(f"adapters have different task types ({sorted(map(str, tasks))}); compose one kind only")

    factors = concat_factors([f for _, f in read])
    if not factors:
        raise CharlabError(f"adapters {', '.join(map(str, folders))} hold no LoRA factors; nothing to compose")
    rank = next(iter(factors.values()))[0].shape[0]
    config = LoraConfig(
        r=rank, lora_alpha=rank, lora_dropout=0.0, use_rslora=False, bias="none",
        target_modules=sorted(factors), task_type=tasks.pop(), base_model_name_or_path=base_name,
    )
    tensors = {}
    for module, (a, b) in factors.items():
        tensors[f"{PEFT_PREFIX}{module}.lora_A.weight"] = a.contiguous()
        tensors[f"{PEFT_PREFIX}{module}.lora_B.weight"] = b.contiguous()

    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out_dir.parent, prefix=f".{out_dir.name}."))
    try:
        config.save_pretrained(staging)
        save_file(tensors, staging / "adapter_model.safetensors", metadata={"format": "pt"})
        if base_fingerprint:  # without one, refs.py checks the base by name from adapter_config.json
            atomic_write_json(staging / ADAPTER_META, {
                "base_fingerprint": base_fingerprint, "stage": "compose",
                "composed_from": [f"local:{adapter_fingerprint(f)}" for f in folders], "rank": rank,
            })
        if out_dir.exists():
            shutil.rmtree(out_dir)
        staging.rename(out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out_dir
