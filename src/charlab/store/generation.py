"""Generation through the row cache, and generation records for artifacts.

``generate_cached`` is how every pipeline stage calls a model: rows already in the cache cost
nothing, the rest go to the backend chunk by chunk, and each finished chunk is stored at once,
so a killed job loses at most one chunk of work.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from charlab.errors import BackendError
from charlab.io import atomic_write_jsonl
from charlab.models.base import Backend, Generation, GenerationRequest
from charlab.store.cache import GENERATION, CacheRow, RowCache, generation_key

log = logging.getLogger(__name__)

DEFAULT_CHUNK = 16


@dataclass
class GenerationStats:
    """What one ``generate_cached`` call did.

    ``hits`` counts requests served from the cache, ``generated`` the distinct rows the backend
    produced (a repeated request is generated once); tokens count only those generated rows.
    """

    requests: int = 0
    hits: int = 0
    generated: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    seconds: float = 0.0

    def __str__(self) -> str:
        return (f"{self.requests} requests: {self.hits} from cache, {self.generated} generated "
                f"({self.prompt_tokens} prompt + {self.completion_tokens} completion tokens) "
                f"in {self.seconds:.1f}s")


class CachedGenerations(list):
    """The generations, in request order, with ``.stats`` about how they were obtained."""

    def __init__(self, generations: Sequence[Generation], stats: GenerationStats):
        super().__init__(generations)
        self.stats = stats


def generate_cached(backend: Backend, requests: Sequence[GenerationRequest], cache: RowCache, *,
                    progress: bool = True, chunk_size: int | None = None) -> CachedGenerations:
    """One Generation per request, in order, generating only what the cache does not hold.

    Identical requests are generated once.
    """
    started = time.monotonic()
    fingerprint = backend.fingerprint
    keys = [generation_key(fingerprint, r) for r in requests]
    found = {k: Generation.from_dict(v) for k, v in cache.get_many(keys, GENERATION).items()}
    stats = GenerationStats(requests=len(requests), hits=sum(k in found for k in keys))

    todo = list({k: r for k, r in zip(keys, requests) if k not in found}.items())  # distinct keys, in order
    size = chunk_size or getattr(backend, "batch_size", None) or DEFAULT_CHUNK
    chunks = [todo[i:i + size] for i in range(0, len(todo), size)]
    with _progress(progress, len(todo), f"generating with {backend.name}") as advance:
        for chunk in chunks:
            outs = backend.generate([r for _, r in chunk], progress=False)
            if len(outs) != len(chunk):
                raise BackendError(f"backend {backend.name} returned {len(outs)} generations for "
                                   f"{len(chunk)} requests; this is a bug in the backend")
            cache.put_many([CacheRow(k, fingerprint, g.to_dict(), g.prompt_tokens, g.completion_tokens)
                            for (k, _), g in zip(chunk, outs)])
            for (k, _), g in zip(chunk, outs):
                found[k] = g
                stats.generated += 1
                stats.prompt_tokens += g.prompt_tokens
                stats.completion_tokens += g.completion_tokens
            advance(len(chunk))

    stats.seconds = time.monotonic() - started
    log.info("%s: %s", fingerprint, stats)
    return CachedGenerations([found[k] for k in keys], stats)


@contextmanager
def _progress(enabled: bool, total: int, label: str) -> Iterator[Callable[[int], None]]:
    """Yield ``advance(n)`` for a rich progress bar on stderr, or a no-op when disabled."""
    if not (enabled and total):
        yield lambda n: None
        return
    from rich.console import Console
    from rich.progress import Progress

    with Progress(console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(label, total=total)
        yield lambda n: bar.advance(task, n)


def generation_record(fingerprint: str, request: GenerationRequest, generation: Generation,
                      record_id: str | None = None) -> dict:
    """A generation record as the data contract has it; the id defaults to the cache key."""
    record = {
        "id": record_id or generation_key(fingerprint, request),
        "model": fingerprint,
        "messages": request.message_dicts,
        "sampling": request.sampling.model_dump(mode="json"),
        "response": generation.text,
        "finish_reason": generation.finish_reason,
        "n_tokens": {"prompt": generation.prompt_tokens, "completion": generation.completion_tokens},
        "seed": request.seed,
        "sample_index": request.sample_index,
    }
    if generation.top_logprobs is not None:
        record["top_logprobs"] = generation.top_logprobs
    return record


def write_generation_records(path: str | os.PathLike, fingerprint: str, requests: Sequence[GenerationRequest],
                             generations: Sequence[Generation], ids: Sequence[str] | None = None) -> Path:
    """Write one record per request as JSONL, atomically (the file appears whole or not at all)."""
    if len(generations) != len(requests) or (ids is not None and len(ids) != len(requests)):
        raise ValueError("requests, generations and ids must have the same length")
    ids = ids or [None] * len(requests)
    return atomic_write_jsonl(path, (generation_record(fingerprint, r, g, i)
                                     for r, g, i in zip(requests, generations, ids)))
