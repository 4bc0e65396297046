"""Row-level SQLite cache: one row per generation (and, later, per judge call).

Paying for a model call twice is the expensive failure of a long study, so every finished row is
stored under a key that names exactly what was asked (model fingerprint, messages, sampling,
seed, sample index). A killed job loses only the rows in flight; a rerun gets the rest back.

Several processes may share one cache file (parallel study steps), so the database runs in WAL
mode, writes go through ``INSERT OR IGNORE`` inside ``BEGIN IMMEDIATE`` transactions, and a
``database is locked`` that outlives SQLite's own busy timeout is retried with backoff.

All kinds of rows live in one table with a ``kind`` column: judge calls only need a key
function and ``kind=JUDGE``.
"""

from __future__ import annotations

import json
import os
import random
import sqlite3
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

from charlab import paths
from charlab.errors import ConfigError
from charlab.io import stable_hash
from charlab.models.base import GenerationRequest

GENERATION = "generation"
JUDGE = "judge"

SCHEMA_VERSION = 1
BUSY_TIMEOUT_MS = 30_000
LOCKED_RETRY_S = 120.0
# Keep each statement well under SQLite's host-parameter limit.
_BATCH = 500

_SCHEMA = """
CREATE TABLE IF NOT EXISTS rows (
    kind TEXT NOT NULL,
    key TEXT NOT NULL,
    model TEXT NOT NULL,
    value TEXT NOT NULL,
    prompt_tokens INTEGER NOT NULL DEFAULT 0,
    completion_tokens INTEGER NOT NULL DEFAULT 0,
    created REAL NOT NULL,
    PRIMARY KEY (kind, key)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS rows_by_model ON rows (model, kind);
"""

T = TypeVar("T")


def generation_key(fingerprint: str, request: GenerationRequest) -> str:
    """The cache key of one generation: everything that can change its output."""
    return stable_hash({
        "kind": GENERATION,
        "model": fingerprint,
        "messages": request.message_dicts,
        "sampling": request.sampling.model_dump(mode="json"),
        "seed": request.seed,
        "sample_index": request.sample_index,
    }, length=32)


@dataclass(frozen=True)
class CacheRow:
    """One stored result. ``value`` is any JSON object (for generations: ``Generation.to_dict()``)."""

    key: str
    model: str
    value: dict[str, Any]
    prompt_tokens: int = 0
    completion_tokens: int = 0
    kind: str = GENERATION


@dataclass(frozen=True)
class GroupStats:
    kind: str
    model: str
    rows: int
    prompt_tokens: int
    completion_tokens: int


@dataclass
class CacheStats:
    path: Path
    bytes: int  # database plus its write-ahead log
    groups: list[GroupStats] = field(default_factory=list)  # one per (kind, model)

    @property
    def rows(self) -> int:
        return sum(g.rows for g in self.groups)

    def rows_by_kind(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for g in self.groups:
            out[g.kind] = out.get(g.kind, 0) + g.rows
        return out


def _is_locked(exc: sqlite3.OperationalError) -> bool:
    text = str(exc).lower()
    return "locked" in text or "busy" in text


def _retry_locked(action: Callable[[], T]) -> T:
    """Run ``action``, retrying with jittered backoff while another process holds the lock."""
    deadline = time.monotonic() + LOCKED_RETRY_S
    wait = 0.01
    while True:
        try:
            return action()
        except sqlite3.OperationalError as exc:
            if not _is_locked(exc) or time.monotonic() > deadline:
                raise
        time.sleep(wait * random.uniform(0.5, 1.5))
        wait = min(wait * 2, 1.0)


class RowCache:
    """A cache file. Each thread of each process gets its own connection, opened on first use."""

    def __init__(self, path: str | os.PathLike | None = None):
        self.path = Path(path).expanduser() if path is not None else paths.default_cache_path()
        self._local = threading.local()

    def __repr__(self) -> str:
        return f"RowCache({str(self.path)!r})"

    def __reduce__(self):  # send only the path to worker processes; they open their own connection
        return RowCache, (self.path,)

    def __enter__(self) -> RowCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- connections ---------------------------------------------------------------------------

    def _conn(self) -> sqlite3.Connection:
        local = self._local
        if getattr(local, "pid", None) != os.getpid():  # never reuse a connection across fork
            local.conn = _retry_locked(self._connect)
            local.pid = os.getpid()
        return local.conn

    def _connect(self) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None)
        try:
            conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise ConfigError(f"cache {self.path} was written by a newer charlab (schema {version}); "
                                  "upgrade charlab or point --path / $CHARLAB_HOME at another cache")
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = NORMAL")
            if version < SCHEMA_VERSION:
                conn.executescript(f"BEGIN IMMEDIATE; {_SCHEMA} PRAGMA user_version = {SCHEMA_VERSION}; COMMIT;")
        except sqlite3.DatabaseError as exc:
            conn.close()
            if isinstance(exc, sqlite3.OperationalError) and _is_locked(exc):
                raise
            raise ConfigError(f"cache {self.path} is not a usable SQLite database ({exc}); "
                              "delete it (only cached rows are lost) or choose another path") from None
        except BaseException:
            conn.close()
            raise
        return conn

    def close(self) -> None:
        """Close this thread's connection (others close when their thread or process ends)."""
        conn = getattr(self._local, "conn", None)
        if conn is not None and self._local.pid == os.getpid():
            conn.close()
        self._local.__dict__.clear()

    def _write(self, action: Callable[[sqlite3.Connection], T]) -> T:
        """Run ``action`` in one write transaction, retried as a whole if the file stays locked."""
        conn = self._conn()

        def attempt() -> T:
            conn.execute("BEGIN IMMEDIATE")
            try:
                result = action(conn)
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            return result

        return _retry_locked(attempt)

    # -- rows ----------------------------------------------------------------------------------

    def get_many(self, keys: Iterable[str], kind: str = GENERATION) -> dict[str, dict[str, Any]]:
        """Stored values for the keys that are present (missing keys are simply absent)."""
        keys = list(dict.fromkeys(keys))
        conn = self._conn()
        found: dict[str, dict[str, Any]] = {}
        for start in range(0, len(keys), _BATCH):
            part = keys[start:start + _BATCH]
            sql = f"SELECT key, value FROM rows WHERE kind = ? AND key IN ({','.join('?' * len(part))})"
            for key, value in _retry_locked(lambda sql=sql, part=part: conn.execute(sql, [kind, *part]).fetchall()):
                found[key] = json.loads(value)
        return found

    def put_many(self, rows: Sequence[CacheRow]) -> int:
        """Store rows in one transaction; a key that is already present keeps its first value.

        Returns how many rows were new.
        """
        now = time.time()
        params = [(r.kind, r.key, r.model, json.dumps(r.value, ensure_ascii=False), r.prompt_tokens,
                   r.completion_tokens, now) for r in rows]
        if not params:
            return 0

        def insert(conn: sqlite3.Connection) -> int:
            before = conn.total_changes
            conn.executemany("INSERT OR IGNORE INTO rows VALUES (?, ?, ?, ?, ?, ?, ?)", params)
            return conn.total_changes - before

        return self._write(insert)

    def stats(self) -> CacheStats:
        conn = self._conn()
        query = ("SELECT kind, model, count(*), sum(prompt_tokens), sum(completion_tokens) "
                 "FROM rows GROUP BY kind, model ORDER BY kind, model")
        groups = [GroupStats(*row) for row in _retry_locked(lambda: conn.execute(query).fetchall())]
        size = sum(p.stat().st_size for p in (self.path, Path(f"{self.path}-wal")) if p.exists())
        return CacheStats(self.path, size, groups)

    def clear(self, model: str | None = None, kind: str | None = None) -> int:
        """Delete all rows, or those of one model fingerprint and/or kind; return how many went."""
        where, args = [], []
        if model is not None:
            where.append("model = ?")
            args.append(model)
        if kind is not None:
            where.append("kind = ?")
            args.append(kind)
        sql = "DELETE FROM rows" + (" WHERE " + " AND ".join(where) if where else "")
        removed = self._write(lambda conn: conn.execute(sql, args).rowcount)
        if removed:  # give the space back to the file system, not just to SQLite's free list
            conn = self._conn()
            _retry_locked(lambda: conn.execute("VACUUM"))
            _retry_locked(lambda: conn.execute("PRAGMA wal_checkpoint(TRUNCATE)"))
        return removed
