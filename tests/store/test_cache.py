"""Row cache: keys, round trips, WAL, concurrent writers from several processes, stats, clear, CLI."""

from __future__ import annotations

import multiprocessing
import sqlite3
import subprocess
import sys

import pytest

from charlab.models.base import Generation, GenerationRequest, SamplingParams
from charlab.store.cache import GENERATION, JUDGE, CacheRow, RowCache, generation_key

pytestmark = pytest.mark.timeout(120)


def ask(text: str = "hello", **kw) -> GenerationRequest:
    return GenerationRequest.make([{"role": "user", "content": text}], **kw)


def row(key: str, model: str = "fp-a", tokens: tuple[int, int] = (3, 5), kind: str = GENERATION) -> CacheRow:
    gen = Generation(f"answer {key}", "stop", *tokens)
    return CacheRow(key, model, gen.to_dict(), *tokens, kind=kind)


def test_put_get_round_trip(tmp_path):
    cache = RowCache(tmp_path / "c.sqlite")
    gen = Generation("hi there", "length", 7, 2, top_logprobs=[{"hi": -0.1, "yo": -2.5}])
    key = generation_key("fp-a", ask())
    assert cache.put_many([CacheRow(key, "fp-a", gen.to_dict(), 7, 2)]) == 1
    found = cache.get_many([key, "absent"])
    assert list(found) == [key]
    assert Generation.from_dict(found[key]) == gen


def test_first_value_wins_and_kinds_are_separate(tmp_path):
    cache = RowCache(tmp_path / "c.sqlite")
    assert cache.put_many([row("k1"), row("k2")]) == 2
    assert cache.put_many([CacheRow("k1", "fp-a", {"text": "other"}), row("k3")]) == 1
    assert cache.get_many(["k1"])["k1"]["text"] == "answer k1"
    assert cache.get_many(["k1"], kind=JUDGE) == {}
    cache.put_many([CacheRow("k1", "judge-fp", {"score": 4.0}, kind=JUDGE)])
    assert cache.get_many(["k1"], kind=JUDGE) == {"k1": {"score": 4.0}}


def test_get_many_handles_more_keys_than_one_statement(tmp_path):
    cache = RowCache(tmp_path / "c.sqlite")
    cache.put_many([row(f"k{i}") for i in range(1200)])
    assert len(cache.get_many(f"k{i}" for i in range(0, 2400))) == 1200


def test_key_changes_with_every_field():
    base = generation_key("fp-a", ask("hi", seed=1, sample_index=0))
    assert base == generation_key("fp-a", ask("hi", seed=1, sample_index=0))
    variants = [
        generation_key("fp-b", ask("hi", seed=1)),
        generation_key("fp-a", ask("hi!", seed=1)),
        generation_key("fp-a", GenerationRequest.make([{"role": "system", "content": "hi"}], seed=1)),
        generation_key("fp-a", ask("hi", seed=1, sampling=SamplingParams(temperature=0.7))),
        generation_key("fp-a", ask("hi", seed=1, sampling=SamplingParams(max_new_tokens=12))),
        generation_key("fp-a", ask("hi", seed=1, sampling=SamplingParams(stop=["\n"]))),
        generation_key("fp-a", ask("hi", seed=2)),
        generation_key("fp-a", ask("hi", seed=1, sample_index=1)),
    ]
    assert len({base, *variants}) == len(variants) + 1


def test_wal_mode_is_on(tmp_path):
    path = tmp_path / "c.sqlite"
    RowCache(path).put_many([row("k")])
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def _write_overlapping(path: str, worker: int, go) -> None:
    """Worker i writes keys 100*i .. 100*i+199 in small batches: every key but the ends is shared."""
    cache = RowCache(path)
    keys = [f"k{n:04d}" for n in range(100 * worker, 100 * worker + 200)]
    go.wait(60)  # start together, so the writes (and the schema creation) really overlap
    for start in range(0, len(keys), 5):
        cache.put_many([row(k, model=f"fp-{worker % 2}") for k in keys[start:start + 5]])
        cache.get_many(keys[:start])
    cache.close()


def test_concurrent_writers_from_four_processes(tmp_path):
    path = tmp_path / "shared.sqlite"  # not created yet: the workers also race to create the schema
    ctx = multiprocessing.get_context("spawn")
    go = ctx.Barrier(4)
    procs = [ctx.Process(target=_write_overlapping, args=(str(path), i, go)) for i in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(90)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]

    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        keys = [k for (k,) in conn.execute("SELECT key FROM rows")]
    assert len(keys) == len(set(keys)) == 500
    assert set(keys) == {f"k{n:04d}" for n in range(500)}


def test_stats_and_clear(tmp_path):
    cache = RowCache(tmp_path / "c.sqlite")
    cache.put_many([row(f"a{i}", "fp-a", (10, 1)) for i in range(3)] + [row(f"b{i}", "fp-b", (2, 4)) for i in range(2)])
    cache.put_many([row("j0", "judge", (1, 1), kind=JUDGE)])

    stats = cache.stats()
    assert stats.rows == 6 and stats.bytes > 0
    assert stats.rows_by_kind() == {GENERATION: 5, JUDGE: 1}
    by_model = {(g.kind, g.model): (g.rows, g.prompt_tokens, g.completion_tokens) for g in stats.groups}
    assert by_model == {(GENERATION, "fp-a"): (3, 30, 3), (GENERATION, "fp-b"): (2, 4, 8), (JUDGE, "judge"): (1, 1, 1)}

    assert cache.clear(model="fp-a") == 3
    assert cache.get_many(["a0", "b0"]).keys() == {"b0"}
    assert cache.clear() == 3
    assert cache.stats().rows == 0


def test_not_a_database_is_a_clear_error(tmp_path):
    from charlab.errors import ConfigError

    path = tmp_path / "c.sqlite"
    path.write_text("this is not sqlite, just text that is long enough to have a header " * 20)
    with pytest.raises(ConfigError, match="not a usable SQLite database"):
        RowCache(path).stats()


def charlab(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "charlab", *args], capture_output=True, text=True, timeout=60)


def test_cli_stats_and_clear(tmp_path):
    path = tmp_path / "c.sqlite"
    cache = RowCache(path)
    cache.put_many([row(f"a{i}", "fp-aaaa") for i in range(3)] + [row("b", "fp-bbbb")])

    out = charlab("cache", "stats", "--path", str(path))
    assert out.returncode == 0, out.stderr
    assert "4 rows" in out.stdout and "fp-aaaa" in out.stdout and "fp-bbbb" in out.stdout

    out = charlab("cache", "clear", "--path", str(path), "--model", "fp-aaaa", "--yes")
    assert out.returncode == 0, out.stderr
    assert "deleted 3 rows" in out.stdout
    assert cache.stats().rows == 1

    out = charlab("cache", "clear", "--path", str(path), "--yes")
    assert out.returncode == 0 and "deleted 1 rows" in out.stdout
    assert cache.stats().rows == 0


def test_cli_clear_asks_first(tmp_path):
    path = tmp_path / "c.sqlite"
    RowCache(path).put_many([row("k")])
    out = subprocess.run([sys.executable, "-m", "charlab", "cache", "clear", "--path", str(path)],
                         input="n\n", capture_output=True, text=True, timeout=60)
    assert out.returncode == 130 and "aborted" in out.stderr
    assert RowCache(path).stats().rows == 1


def test_cli_stats_without_a_cache(tmp_path):
    out = charlab("cache", "stats", "--path", str(tmp_path / "none.sqlite"))
    assert out.returncode == 0 and "no cache" in out.stdout
    assert not (tmp_path / "none.sqlite").exists()


def test_cli_help_has_examples():
    for command in ("stats", "clear"):
        out = charlab("cache", command, "--help")
        assert out.returncode == 0 and "Example:" in out.stdout
