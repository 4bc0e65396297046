"""Load a resolved model: base weights, tokenizer and the PEFT adapter stack, unmerged.

Adapters stay separate modules (``a0``, ``a1``, ... in stack order) and are all active at once, so a
LoRA layer computes ``W x + sum_i s_i B_i A_i x``: the same function as merging them one after the
other, without changing the base weights. That keeps each adapter swappable, lets training add a
new trainable adapter on top of a frozen stack, and keeps the fingerprint meaningful.
"""

from __future__ import annotations

import torch

from charlab.errors import ModelError
from charlab.models.refs import ModelRef, ResolvedModel

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
# Errors that mean "these weights cannot be loaded from there" rather than a bug in charlab:
# missing or corrupt files, hub/network failures (transformers raises OSError), bad configs, OOM.
LOAD_ERRORS = (OSError, ValueError, RuntimeError, ImportError)


def pick_device(device: str | torch.device = "auto") -> torch.device:
    """``auto`` = the first CUDA GPU when there is one, else the CPU."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def pick_dtype(dtype: str | torch.dtype, device: torch.device) -> torch.dtype:
    """``auto`` = bfloat16 on CUDA, float32 elsewhere (CPU bfloat16 matmuls are slow and lossy)."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if dtype not in DTYPES:
        raise ModelError(f"dtype '{dtype}' is not one of auto, {', '.join(DTYPES)}")
    return DTYPES[dtype]


def as_resolved(ref: ModelRef | ResolvedModel | str) -> ResolvedModel:
    """Accept a ref in any form; resolving checks files and adapter bases (ModelError if wrong)."""
    if isinstance(ref, ResolvedModel):
        return ref
    return (ref if isinstance(ref, ModelRef) else ModelRef(base=ref)).resolve()


def adapter_names(resolved: ResolvedModel) -> list[str]:
    return [f"a{i}" for i in range(len(resolved.adapters))]


def _hint(resolved: ResolvedModel) -> str:
    if resolved.ref.kind == "builtin":
        return f"delete {resolved.load_from} and fetch it again with: charlab models fetch {resolved.ref.base}"
    if resolved.is_local:
        return "check that the folder holds the config and weights written by save_pretrained"
    return ("check the hub id and revision and your network access, or download it first and point "
            "to the local folder")


def load_tokenizer(resolved: ResolvedModel, *, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(resolved.load_from, revision=resolved.revision,
                                                  trust_remote_code=trust_remote_code)
    except LOAD_ERRORS as exc:
        raise ModelError(f"could not load the tokenizer of {resolved.ref.base} from {resolved.load_from}: "
                         f"{exc}; {_hint(resolved)}") from exc
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token  # only ever used under a zero attention mask
    return tokenizer


def load_base(resolved: ResolvedModel, *, dtype: str | torch.dtype = "auto", device: str | torch.device = "auto",
              trust_remote_code: bool = False):
    from transformers import AutoModelForCausalLM

    where = pick_device(device)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            resolved.load_from, revision=resolved.revision, dtype=pick_dtype(dtype, where),
            device_map=where, trust_remote_code=trust_remote_code)
    except LOAD_ERRORS as exc:
        raise ModelError(f"could not load model {resolved.ref.base} from {resolved.load_from}: {exc}; "
                         f"{_hint(resolved)}") from exc
    return model


def apply_adapters(model, resolved: ResolvedModel):
    """Load the adapter stack onto ``model`` (a PeftModel is returned), all active and frozen."""
    if not resolved.adapters:
        return model
    from peft import PeftModel

    device = str(next(model.parameters()).device)
    names = adapter_names(resolved)
    for name, adapter in zip(names, resolved.adapters):
        options = {"adapter_name": name, "subfolder": adapter.subfolder, "revision": adapter.revision,
                   "is_trainable": False, "torch_device": device}
        try:
            if isinstance(model, PeftModel):
                model.load_adapter(adapter.load_from, **options)
            else:
                model = PeftModel.from_pretrained(model, adapter.load_from, **options)
        except (*LOAD_ERRORS, KeyError) as exc:
            raise ModelError(f"could not load adapter {adapter.ref} onto {resolved.ref.base}: {exc}; check "
                             "that it is a PEFT adapter folder for this base model") from exc
    # PeftModel.set_adapter takes one name; the tuner underneath takes the whole list.
    model.base_model.set_adapter(names, inference_mode=True)
    model.requires_grad_(False)
    return model


def load_model_and_tokenizer(ref: ModelRef | ResolvedModel | str, *, dtype: str | torch.dtype = "auto",
                             device: str | torch.device = "auto", trust_remote_code: bool = False):
    """``(model, tokenizer)`` for a ref: base + adapter stack, in eval mode with every weight frozen."""
    resolved = as_resolved(ref)
    tokenizer = load_tokenizer(resolved, trust_remote_code=trust_remote_code)
    model = apply_adapters(load_base(resolved, dtype=dtype, device=device, trust_remote_code=trust_remote_code),
                           resolved)
    model.requires_grad_(False)
    model.eval()
    return model, tokenizer
