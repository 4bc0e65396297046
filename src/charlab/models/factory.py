"""Backends as plain config: ``BackendSpec`` says which backend and how to build it.

Configs name a backend per role (teacher, generator, judge, attacker); the stage that needs one
calls ``make_backend(spec)``. The student's own backend is built from the model under training.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from charlab.models.base import Backend
from charlab.models.openai_compat import OpenAIConfig
from charlab.models.refs import ModelRef


class BackendSpec(BaseModel):
    """One backend. ``hf`` and ``vllm`` need ``model``; ``openai`` needs ``openai``."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    kind: Literal["hf", "openai", "vllm"] = Field("hf", description="which backend runs the model")
    model: ModelRef | None = Field(None, description="base + adapters for hf / vllm")
    openai: OpenAIConfig | None = Field(None, description="endpoint settings for the openai backend")
    batch_size: int = Field(16, ge=1, description="rows per forward batch (hf) or per cache chunk")
    dtype: str = Field("auto", description="hf: auto = float32 on CPU, bfloat16 on CUDA")
    trust_remote_code: bool = Field(False, description="allow model repos to run their own code (off by default)")

    @model_validator(mode="after")
    def _complete(self):
        if self.kind in ("hf", "vllm") and self.model is None:
            raise ValueError(f"a {self.kind} backend needs 'model' (e.g. builtin:smollm2-135m)")
        if self.kind == "openai" and self.openai is None:
            raise ValueError("an openai backend needs an 'openai' block with base_url and model")
        return self


def make_backend(spec: BackendSpec) -> Backend:
    """Build the backend a spec describes (loads weights for hf / vllm)."""
    if spec.kind == "openai":
        from charlab.models.openai_compat import OpenAIBackend

        return OpenAIBackend(spec.openai)
    if spec.kind == "vllm":
        from charlab.models.vllm_backend import VLLMBackend

        return VLLMBackend(spec.model, trust_remote_code=spec.trust_remote_code)
    from charlab.models.hf import HFBackend

    return HFBackend(spec.model, dtype=spec.dtype, batch_size=spec.batch_size,
                     trust_remote_code=spec.trust_remote_code)


class BackendPool:
    """Backends built on first use and shared by stages that run back to back, then closed together.

    Prompt expansion and distillation often use the same model (the generator is the teacher, and
    the teacher may be the student's base): loading it once saves a full model load per stage.
    """

    def __init__(self) -> None:
        self._open: dict[str, Backend] = {}

    def get(self, spec: BackendSpec) -> Backend:
        key = spec.model_dump_json()
        if key not in self._open:
            self._open[key] = make_backend(spec)
        return self._open[key]

    def close(self) -> None:
        for backend in self._open.values():
            backend.close()
        self._open.clear()

    def __enter__(self) -> BackendPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
