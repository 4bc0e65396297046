"""A backend for any OpenAI-compatible chat server (OpenAI, OpenRouter, Together, vLLM, llama.cpp).

Requests go out concurrently over one ``httpx.AsyncClient``, bounded by a semaphore, from an event
loop that lives in a private thread; ``generate`` is an ordinary blocking call that works from any
thread, even one already running its own loop. Transient failures (429, 5xx, timeouts, dropped
connections, garbled bodies) are retried with capped exponential backoff and full jitter; anything
else fails at once with a ``BackendError`` that names the URL and what to check.

The API key is read from the environment variable the config names and is kept out of every
message, repr and fingerprint: servers that echo the key back have it masked before we show it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import random
import re
import threading
from collections import Counter
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import httpx
from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator

from charlab.errors import BackendError, ConfigError
from charlab.io import stable_hash
from charlab.models.base import Generation, GenerationRequest, NotSupportedError, TokenScores

log = logging.getLogger(__name__)

T = TypeVar("T")

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_MAX_SERVER_MESSAGE = 300


class OpenAIConfig(BaseModel):
    """Where and how to reach an OpenAI-compatible ``/chat/completions`` endpoint."""

    # hide_input_in_errors: a key pasted into api_key_env by mistake must not be echoed back.
    model_config = ConfigDict(extra="forbid", frozen=True, hide_input_in_errors=True)

    base_url: str = Field(
        description="API root that /chat/completions is appended to, e.g. http://127.0.0.1:8000/v1 "
                    "(vLLM), https://openrouter.ai/api/v1, https://api.openai.com/v1")
    model: str = Field(min_length=1, description="model name as the server knows it, e.g. "
                                                 "meta-llama/llama-3.1-8b-instruct")
    api_key_env: str | None = Field(
        None, description="NAME of the environment variable holding the API key (e.g. "
                          "OPENROUTER_API_KEY), never the key itself; None sends no Authorization "
                          "header, for local servers")
    max_concurrency: int = Field(16, ge=1, description="most requests in flight at once")
    timeout_s: float = Field(120.0, gt=0, description="per-attempt limit for connecting, sending and "
                                                      "waiting for each chunk of the reply")
    max_retries: int = Field(6, ge=0, description="retries after the first attempt for transient "
                                                  "failures (429, 5xx, timeouts, dropped connections)")
    backoff_base_s: float = Field(1.0, ge=0, description="first retry waits up to this long; the cap "
                                                         "doubles on each further retry (full jitter)")
    backoff_max_s: float = Field(60.0, ge=0, description="ceiling on any single wait, Retry-After "
                                                         "included")
    extra_body: dict[str, Any] = Field(
        default_factory=dict, description="extra JSON fields merged last into every request body, "
                                          "e.g. {'min_p': 0.05} for vLLM or {'provider': {...}} for "
                                          "OpenRouter")

    @field_validator("base_url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")):
            raise ValueError("base_url must start with http:// or https:// (e.g. http://127.0.0.1:8000/v1)")
        return value.rstrip("/")

    @field_validator("api_key_env")
    @classmethod
    def _check_env_name(cls, value: str | None) -> str | None:
        if value is not None and not _ENV_NAME.fullmatch(value):
            raise ValueError("api_key_env must be the NAME of an environment variable "
                             "(e.g. OPENROUTER_API_KEY), not the key itself")
        return value


@dataclass
class RequestStats:
    """What the last ``generate`` call cost: handy for logs and for tests of the retry logic."""

    requests: int = 0
    attempts: int = 0
    retries: int = 0
    retry_reasons: Counter[str] = field(default_factory=Counter)


class _Retryable(Exception):
    """One attempt failed in a way that another attempt may fix."""

    def __init__(self, kind: str, detail: str, wait_s: float | None = None):
        super().__init__(f"{kind}: {detail}")
        self.kind = kind  # short label counted in RequestStats.retry_reasons
        self.reason = f"{kind}: {detail}"
        self.wait_s = wait_s  # the server's Retry-After, when it gave one


def api_seed(seed: int, sample_index: int) -> int:
    """A 31-bit seed standing for (seed, sample_index), so sample k is the same draw on every run."""
    return int(stable_hash([seed, sample_index], length=8), 16) & 0x7FFFFFFF


def _retry_after(response: httpx.Response) -> float | None:
    try:
        return max(0.0, float(response.headers["retry-after"]))
    except (KeyError, ValueError):
        return None  # absent, or an HTTP date: fall back to our own backoff


def _server_message(response: httpx.Response) -> str:
    """The error text a server sent, from OpenAI-style JSON if possible, truncated."""
    try:
        body = response.json()
        err = body.get("error", body) if isinstance(body, dict) else body
        text = (err.get("message") or err.get("detail") or str(err)) if isinstance(err, dict) else str(err)
    except ValueError:
        text = response.text
    text = " ".join(str(text).split()) or "(empty body)"
    return text if len(text) <= _MAX_SERVER_MESSAGE else text[:_MAX_SERVER_MESSAGE] + "..."


class _LoopThread:
    """An event loop running forever in a daemon thread, so sync callers can submit coroutines."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, name="charlab-openai", daemon=True)
        self.thread.start()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result()
        except BaseException:
            future.cancel()  # e.g. Ctrl-C in the caller: stop the requests too
            raise

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()
        self.loop.close()


class OpenAIBackend:
    """Generation over an OpenAI-compatible chat API. Cannot score text (see ``score``)."""

    name = "openai"

    def __init__(self, config: OpenAIConfig):
        self.config = config
        self.url = f"{config.base_url}/chat/completions"
        self._key = self._read_key(config.api_key_env)
        self.stats = RequestStats()
        self._runner: _LoopThread | None = None
        self._client: httpx.AsyncClient | None = None

    @staticmethod
    def _read_key(env_name: str | None) -> SecretStr | None:
        if env_name is None:
            return None
        value = os.environ.get(env_name, "").strip()
        if not value:
            raise ConfigError(f"environment variable {env_name} (named by api_key_env) is not set; "
                              f"export it with your API key, or set api_key_env to null for a local "
                              f"server that needs no key")
        return SecretStr(value)

    def __repr__(self) -> str:
        return f"OpenAIBackend(model={self.config.model!r}, base_url={self.config.base_url!r})"

    @property
    def batch_size(self) -> int:
        """Requests handed over per cache chunk: several times the concurrency, so the pool stays full
        while a chunk's slowest call finishes, and finished rows still reach the cache regularly."""
        return 4 * self.config.max_concurrency

    @property
    def fingerprint(self) -> str:
        digest = stable_hash({"base_url": self.config.base_url, "model": self.config.model}, length=12)
        return f"openai:{self.config.model}@{digest}"

    # -- public API ---------------------------------------------------------------------------

    def generate(self, requests: Sequence[GenerationRequest], *, progress: bool = False) -> list[Generation]:
        """One completion per request, in request order; blocks until all are done."""
        self.stats = RequestStats(requests=len(requests))
        if not requests:
            return []
        if self._runner is None:
            self._runner = _LoopThread()
        if not progress:
            return self._runner.run(self._generate_all(requests, lambda: None))
        from rich.progress import Progress

        with Progress(transient=True) as bar:
            task = bar.add_task(f"{self.config.model}", total=len(requests))
            return self._runner.run(self._generate_all(requests, lambda: bar.advance(task)))

    def score(self, conversations: Sequence[Sequence[dict]]) -> list[TokenScores]:
        raise NotSupportedError("chat APIs return log-probabilities only for text they generate, not "
                                "for given text; score with the hf or vllm backend instead")

    def close(self) -> None:
        """Close the HTTP client and stop the loop thread; a later ``generate`` starts afresh."""
        if self._runner is None:
            return
        if self._client is not None:
            self._runner.run(self._client.aclose())
            self._client = None
        self._runner.stop()
        self._runner = None

    def __enter__(self) -> OpenAIBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals (run on the loop thread) ---------------------------------------------------

    async def _generate_all(self, requests: Sequence[GenerationRequest],
                            advance: Callable[[], None]) -> list[Generation]:
        client = self._http()
        gate = asyncio.Semaphore(self.config.max_concurrency)

        async def one(request: GenerationRequest) -> Generation:
            async with gate:
                result = await self._with_retries(lambda: self._attempt(client, request))
            advance()
            return result

        tasks = [asyncio.create_task(one(r)) for r in requests]
        try:
            return list(await asyncio.gather(*tasks))
        finally:
            for task in tasks:  # one request failed for good (or we were cancelled): stop the rest
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    def _http(self) -> httpx.AsyncClient:
        if self._client is None:
            headers = {"Authorization": f"Bearer {self._key.get_secret_value()}"} if self._key else {}
            n = self.config.max_concurrency
            self._client = httpx.AsyncClient(
                headers=headers, timeout=httpx.Timeout(self.config.timeout_s),
                limits=httpx.Limits(max_connections=n, max_keepalive_connections=n))
        return self._client

    def _body(self, request: GenerationRequest) -> dict[str, Any]:
        s = request.sampling
        body: dict[str, Any] = {
            "model": self.config.model,
            "messages": request.message_dicts,
            "temperature": s.temperature,
            "top_p": s.top_p,
            "max_tokens": s.max_new_tokens,
            "seed": api_seed(request.seed, request.sample_index),
            "n": 1,
        }
        if s.stop:
            body["stop"] = list(s.stop)
        if s.repetition_penalty != 1.0:
            body["repetition_penalty"] = s.repetition_penalty
        if s.top_logprobs > 0:
            body["logprobs"] = True
            body["top_logprobs"] = s.top_logprobs
        body.update(self.config.extra_body)
        return body

    async def _with_retries(self, attempt: Callable[[], Awaitable[T]]) -> T:
        cfg = self.config
        total = cfg.max_retries + 1
        for n in range(1, total + 1):
            self.stats.attempts += 1
            try:
                return await attempt()
            except _Retryable as exc:
                failure = exc
            if n == total:
                break
            ceiling = min(cfg.backoff_max_s, cfg.backoff_base_s * 2 ** min(n - 1, 32))
            wait = random.uniform(0, ceiling) if failure.wait_s is None else min(failure.wait_s, cfg.backoff_max_s)
            self.stats.retries += 1
            self.stats.retry_reasons[failure.kind] += 1
            log.info("POST %s failed (%s); retry %d/%d in %.2fs",
                     self.url, self._redact(failure.reason), n, cfg.max_retries, wait)
            await asyncio.sleep(wait)
        raise BackendError(self._redact(
            f"POST {self.url} failed after {total} attempts; last error: {failure.reason}. Check that the "
            f"server is up and reachable, or raise max_retries / timeout_s if it is just overloaded"))

    async def _attempt(self, client: httpx.AsyncClient, request: GenerationRequest) -> Generation:
        try:
            response = await client.post(self.url, json=self._body(request))
        except httpx.TimeoutException:
            raise _Retryable("timeout", f"no reply within timeout_s={self.config.timeout_s}s") from None
        except httpx.TransportError as exc:
            raise _Retryable("connection", f"{type(exc).__name__}: {str(exc) or 'connection dropped'}") from None
        if response.status_code in RETRY_STATUSES:
            raise _Retryable(f"HTTP {response.status_code}", _server_message(response),
                             _retry_after(response))
        if response.status_code != 200:
            raise BackendError(self._redact(
                f"POST {self.url} returned HTTP {response.status_code}: {_server_message(response)}. "
                f"{self._hint(response.status_code)}"))
        try:
            payload = response.json()
        except ValueError:
            raise _Retryable("malformed", f"reply is not JSON: {response.text[:80]!r}") from None
        return self._parse(payload, request)

    def _parse(self, payload: Any, request: GenerationRequest) -> Generation:
        try:
            choice = payload["choices"][0]
            text = choice["message"].get("content") or ""
        except (KeyError, IndexError, TypeError, AttributeError):
            # Some gateways answer 200 with an {"error": ...} body when an upstream provider fails.
            raise _Retryable("malformed", f"reply has no choices[0].message: {str(payload)[:120]}") from None
        usage = payload.get("usage") or {}
        logprobs = None
        if request.sampling.top_logprobs > 0:
            logprobs = self._top_logprobs(choice)
        return Generation(
            text=text,
            finish_reason="length" if choice.get("finish_reason") == "length" else "stop",
            prompt_tokens=int(usage.get("prompt_tokens") or 0),
            completion_tokens=int(usage.get("completion_tokens") or 0),
            top_logprobs=logprobs,
        )

    def _top_logprobs(self, choice: dict) -> list[dict[str, float]]:
        content = (choice.get("logprobs") or {}).get("content")
        if content is None:
            raise BackendError(f"POST {self.url}: top_logprobs were asked for but the reply has none; "
                               f"check that model {self.config.model!r} and its provider support logprobs")
        positions = []
        for entry in content:
            alternatives = {alt["token"]: float(alt["logprob"]) for alt in entry.get("top_logprobs") or []}
            positions.append(alternatives or {entry["token"]: float(entry["logprob"])})
        return positions

    def _hint(self, status: int) -> str:
        if status in (401, 403):
            where = f"${self.config.api_key_env}" if self.config.api_key_env else "api_key_env (no key is sent)"
            return f"Check the API key in {where} and that it may use this model"
        if status == 404:
            return f"Check base_url ({self.config.base_url}) and model ({self.config.model!r})"
        return f"Check model ({self.config.model!r}), the sampling parameters and extra_body"

    def _redact(self, text: str) -> str:
        return text.replace(self._key.get_secret_value(), "***") if self._key else text
