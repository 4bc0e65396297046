"""The backend protocol: what every generator (hf, openai, vllm) accepts and returns.

A backend turns a batch of conversations into completions. Sampling is described by
``SamplingParams``; reproducibility comes from a per-request ``seed`` and ``sample_index`` so the
same request always means the same random draw, whichever batch it lands in. That property is
what lets the row cache (``charlab.store.cache``) key on the request alone.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol, runtime_checkable

from pydantic import BaseModel, ConfigDict, Field, field_validator

Role = Literal["system", "user", "assistant"]
FinishReason = Literal["stop", "length"]


def check_messages(messages: Sequence[dict], where: str = "messages") -> list[dict[str, str]]:
    """Return a clean copy of a conversation or raise ValueError naming the bad turn."""
    clean = []
    for i, msg in enumerate(messages):
        if not isinstance(msg, dict) or "role" not in msg or "content" not in msg:
            raise ValueError(f"{where}[{i}]: each turn needs 'role' and 'content'")
        if msg["role"] not in ("system", "user", "assistant"):
            raise ValueError(f"{where}[{i}]: role '{msg['role']}' is not system, user or assistant")
        if not isinstance(msg["content"], str):
            raise ValueError(f"{where}[{i}]: content must be a string")
        clean.append({"role": msg["role"], "content": msg["content"]})
    return clean


class SamplingParams(BaseModel):
    """How to sample. ``temperature == 0`` means greedy decoding."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    temperature: float = Field(0.0, ge=0.0, description="0 = greedy; upstream OCT uses 0.7")
    top_p: float = Field(1.0, gt=0.0, le=1.0, description="nucleus sampling mass")
    max_new_tokens: int = Field(256, ge=1, description="hard cap on generated tokens")
    repetition_penalty: float = Field(1.0, gt=0.0, description="HF-style penalty; 1.0 = off")
    top_logprobs: int = Field(0, ge=0, le=20, description="alternatives to return per position")
    stop: tuple[str, ...] = Field((), description="extra stop strings")

    @field_validator("stop", mode="before")
    @classmethod
    def _listify(cls, value):
        return tuple(value) if isinstance(value, list) else value


@dataclass(frozen=True)
class GenerationRequest:
    """One conversation to continue with one assistant turn."""

    messages: tuple[tuple[str, str], ...]
    sampling: SamplingParams = field(default_factory=SamplingParams)
    seed: int = 0
    sample_index: int = 0

    @classmethod
    def make(cls, messages: Sequence[dict], sampling: SamplingParams | None = None, seed: int = 0,
             sample_index: int = 0) -> GenerationRequest:
        msgs = check_messages(messages)
        return cls(tuple((m["role"], m["content"]) for m in msgs), sampling or SamplingParams(), seed, sample_index)

    @property
    def message_dicts(self) -> list[dict[str, str]]:
        return [{"role": r, "content": c} for r, c in self.messages]


@dataclass
class Generation:
    """A backend's answer to one request."""

    text: str
    finish_reason: FinishReason
    prompt_tokens: int
    completion_tokens: int
    # One dict per generated position: token string -> log-probability (only when asked for).
    top_logprobs: list[dict[str, float]] | None = None

    def to_dict(self) -> dict:
        return {
            "text": self.text,
            "finish_reason": self.finish_reason,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "top_logprobs": self.top_logprobs,
        }

    @classmethod
    def from_dict(cls, row: dict) -> Generation:
        return cls(row["text"], row["finish_reason"], row["prompt_tokens"], row["completion_tokens"],
                   row.get("top_logprobs"))


@dataclass
class TokenScores:
    """Log-probabilities of the tokens of the final assistant turn under a model."""

    token_ids: list[int]
    logprobs: list[float]

    @property
    def total(self) -> float:
        return float(sum(self.logprobs))

    @property
    def mean(self) -> float:
        return self.total / max(len(self.logprobs), 1)


@runtime_checkable
class Backend(Protocol):
    """What every backend provides.

    ``fingerprint`` identifies the exact weights (base + adapter stack) so cached rows from one
    model are never served for another. ``generate`` keeps request order. ``score`` returns the
    log-probabilities of each conversation's final assistant turn; backends that cannot score
    raise ``NotSupportedError`` from ``charlab.models.base``.
    """

    name: str

    @property
    def fingerprint(self) -> str: ...

    def generate(self, requests: Sequence[GenerationRequest], *, progress: bool = False) -> list[Generation]: ...

    def score(self, conversations: Sequence[Sequence[dict]]) -> list[TokenScores]: ...

    def close(self) -> None: ...


class NotSupportedError(Exception):
    """A backend was asked for something it cannot do (for example scoring over an API)."""
