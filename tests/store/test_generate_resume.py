"""generate_cached: hits, chunked writes, records; and a real HF job killed mid-way that resumes.

The kill test runs ``run_job`` (below) in a subprocess, SIGKILLs it once the cache holds some
but not all rows, and checks that the rerun pays only for the missing rows and produces exactly
what an uninterrupted run produces.
"""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from dataclasses import asdict
from pathlib import Path

import pytest

from charlab.errors import BackendError
from charlab.io import atomic_write_json, read_jsonl
from charlab.models.base import Generation, GenerationRequest, NotSupportedError, SamplingParams
from charlab.store.cache import RowCache, generation_key
from charlab.store.generation import generate_cached, write_generation_records

pytestmark = pytest.mark.timeout(300)

N_JOB = 24


def ask(text: str, **kw) -> GenerationRequest:
    return GenerationRequest.make([{"role": "user", "content": text}], **kw)


class EchoBackend:
    """A backend that answers instantly and records the size of every batch it was sent."""

    name = "echo"
    batch_size = 3

    def __init__(self, fingerprint: str = "echo-1", fail_on_call: int | None = None):
        self.fingerprint = fingerprint
        self.calls: list[int] = []
        self.fail_on_call = fail_on_call

    def generate(self, requests, *, progress=False):
        self.calls.append(len(requests))
        if len(self.calls) == self.fail_on_call:
            raise BackendError("server went away")
        return [Generation(f"echo {r.messages[-1][1]} #{r.sample_index}", "stop", 4, 2) for r in requests]

    def score(self, conversations):
        raise NotSupportedError("echo cannot score")

    def close(self):
        pass


# -- generate_cached with a fake backend --------------------------------------------------------


def test_second_call_is_served_from_the_cache(tmp_path):
    cache = RowCache(tmp_path / "c.sqlite")
    requests = [ask(f"q{i}") for i in range(7)]
    backend = EchoBackend()

    first = generate_cached(backend, requests, cache, progress=False)
    assert [g.text for g in first] == [f"echo q{i} #0" for i in range(7)]
    assert backend.calls == [3, 3, 1]  # chunks follow the backend's batch size
    assert (first.stats.requests, first.stats.hits, first.stats.generated) == (7, 0, 7)
    assert (first.stats.prompt_tokens, first.stats.completion_tokens) == (28, 14)

    again = generate_cached(backend, requests[::-1], cache, progress=True)
    assert [g.text for g in again] == [f"echo q{i} #0" for i in reversed(range(7))]
    assert backend.calls == [3, 3, 1]
    assert (again.stats.hits, again.stats.generated, again.stats.completion_tokens) == (7, 0, 0)
    assert "7 from cache, 0 generated" in str(again.stats)


def test_only_misses_are_generated_and_duplicates_once(tmp_path):
    cache = RowCache(tmp_path / "c.sqlite")
    backend = EchoBackend()
    generate_cached(backend, [ask("a"), ask("b")], cache, progress=False)
    backend.calls.clear()

    requests = [ask("a"), ask("c"), ask("c"), ask("b"), ask("c", sample_index=1), ask("d")]
    outs = generate_cached(backend, requests, cache, progress=False, chunk_size=2)
    assert backend.calls == [2, 1]  # c, c#1 | d
    assert [g.text for g in outs] == ["echo a #0", "echo c #0", "echo c #0", "echo b #0", "echo c #1", "echo d #0"]
    assert (outs.stats.hits, outs.stats.generated) == (2, 3)


def test_rows_are_cached_per_model(tmp_path):
    cache = RowCache(tmp_path / "c.sqlite")
    generate_cached(EchoBackend("model-a"), [ask("x")], cache, progress=False)
    other = EchoBackend("model-b")
    assert generate_cached(other, [ask("x")], cache, progress=False).stats.generated == 1


def test_each_chunk_is_stored_before_the_next_is_generated(tmp_path):
    cache = RowCache(tmp_path / "c.sqlite")
    requests = [ask(f"q{i}") for i in range(8)]
    with pytest.raises(BackendError):
        generate_cached(EchoBackend(fail_on_call=3), requests, cache, progress=False)
    assert cache.stats().rows == 6

    backend = EchoBackend()
    outs = generate_cached(backend, requests, cache, progress=False)
    assert backend.calls == [2] and outs.stats.hits == 6


def test_generation_records_follow_the_contract(tmp_path):
    sampling = SamplingParams(temperature=0.7, max_new_tokens=9)
    requests = [ask("hi", sampling=sampling, seed=3, sample_index=1), ask("yo")]
    outs = [Generation("hello", "stop", 5, 1), Generation("hey", "length", 4, 9, [{"hey": -0.2}])]
    path = write_generation_records(tmp_path / "gens.jsonl", "fp-a", requests, outs)

    first, second = read_jsonl(path)
    assert first == {
        "id": generation_key("fp-a", requests[0]), "model": "fp-a",
        "messages": [{"role": "user", "content": "hi"}], "sampling": sampling.model_dump(mode="json"),
        "response": "hello", "finish_reason": "stop", "n_tokens": {"prompt": 5, "completion": 1},
        "seed": 3, "sample_index": 1,
    }
    assert second["top_logprobs"] == [{"hey": -0.2}]
    written = write_generation_records(path, "fp-a", requests, outs, ids=["a", "b"])
    assert [r["id"] for r in read_jsonl(written)] == ["a", "b"]
    with pytest.raises(ValueError):
        write_generation_records(path, "fp-a", requests, outs[:1])


# -- the kill test with the real HF backend -----------------------------------------------------


def job_requests() -> list[GenerationRequest]:
    sampling = SamplingParams(temperature=0.0, max_new_tokens=24)
    return [ask(f"Tell me about topic number {i}.", sampling=sampling) for i in range(N_JOB)]


def run_job(model_dir: str, cache_path: str, out_path: str, stats_path: str) -> None:
    """The job under test: generate through the cache in chunks of 2, then write the artifact."""
    from charlab.models.hf import HFBackend
    from charlab.models.refs import ModelRef

    backend = HFBackend(ModelRef.parse(model_dir), batch_size=2)
    requests = job_requests()
    generations = generate_cached(backend, requests, RowCache(cache_path), progress=False, chunk_size=2)
    write_generation_records(out_path, backend.fingerprint, requests, generations)
    atomic_write_json(stats_path, asdict(generations.stats))


def start_job(model_dir: Path, folder: Path) -> subprocess.Popen:
    code = (f"import sys; sys.path[:0] = [{str(Path(__file__).parent)!r}, {str(Path(__file__).parents[1])!r}]; "
            "import test_generate_resume as t; t.run_job(*sys.argv[1:])")
    args = [str(model_dir), str(folder / "cache.sqlite"), str(folder / "gens.jsonl"), str(folder / "stats.json")]
    return subprocess.Popen([sys.executable, "-c", code, *args])


def finish_job(model_dir: Path, folder: Path) -> dict:
    assert start_job(model_dir, folder).wait(timeout=240) == 0
    return json.loads((folder / "stats.json").read_text())


def cached_rows(path: Path) -> int:
    if not path.exists():
        return 0
    try:
        with closing(sqlite3.connect(path, timeout=1)) as conn:
            return conn.execute("SELECT count(*) FROM rows").fetchone()[0]
    except sqlite3.OperationalError:  # schema not created yet, or a writer holds the lock
        return 0


@pytest.mark.timeout(600)  # three model loads and 48 generated rows on a shared CPU
def test_killed_generation_job_resumes_without_regenerating(tmp_path, isolated_home, tiny_model_dir):
    killed, fresh = tmp_path / "killed", tmp_path / "fresh"
    killed.mkdir()
    fresh.mkdir()

    proc = start_job(tiny_model_dir, killed)
    try:
        while proc.poll() is None and cached_rows(killed / "cache.sqlite") < 2:
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "the job finished before it could be killed"

    assert not (killed / "gens.jsonl").exists()
    with closing(sqlite3.connect(killed / "cache.sqlite")) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    survived = cached_rows(killed / "cache.sqlite")
    assert 2 <= survived < N_JOB and survived % 2 == 0  # whole chunks only

    resumed = finish_job(tiny_model_dir, killed)
    assert (resumed["hits"], resumed["generated"]) == (survived, N_JOB - survived)
    assert cached_rows(killed / "cache.sqlite") == N_JOB

    uninterrupted = finish_job(tiny_model_dir, fresh)
    assert (uninterrupted["hits"], uninterrupted["generated"]) == (0, N_JOB)

    records = read_jsonl(killed / "gens.jsonl")
    assert len(records) == N_JOB
    assert records == read_jsonl(fresh / "gens.jsonl")
