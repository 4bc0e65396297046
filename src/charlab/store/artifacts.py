"""Run folders made of steps; a step is done when its manifest verifies.

A step's folder is ``<run>/steps/<kind>/<key>/``, where the key hashes the step kind, the
config fields the step reads (including its inputs' digests) and a code version tag. The step
writes its files, then ``manifest.json`` last and atomically, listing every file with its
SHA-256. So a killed or failed step has no manifest, a tampered output no longer verifies, and
a rerun skips exactly the steps whose manifest verifies::

    step = run.step("distill", {"model": fp, "n": 8}, version="1", label="teacher")
    if not step.done:
        with step.running():            # times the step; on error, leaves no manifest
            atomic_write_jsonl(step.path("pairs.jsonl"), rows)
            step.finish(counts={"pairs": len(rows)}, tokens={"completion": n})
    pairs = read_jsonl(step.path("pairs.jsonl"))

Later stages find outputs by kind and label (``run.find("distill", "teacher")``) through a
run-level ``index.json``; every finished step is also the ``latest`` of its kind.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from charlab import __version__
from charlab.io import atomic_write_json, sha256_file, stable_hash

MANIFEST = "manifest.json"
INDEX = "index.json"
LATEST = "latest"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


def _check_name(what: str, value: str) -> str:
    if not _NAME.match(value):
        raise ValueError(f"step {what} '{value}' must be letters, digits, '_', '.' or '-' (it names a folder)")
    return value


def _is_temp(path: Path) -> bool:
    """Leftovers of an interrupted ``charlab.io`` atomic write, which never count as outputs."""
    return path.name.startswith(".") and path.name.endswith(".tmp")


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, UTC).isoformat(timespec="seconds")


class Run:
    """A folder holding the steps of one run (for instance one condition and seed of a study)."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)

    def __repr__(self) -> str:
        return f"Run({str(self.path)!r})"

    def step(self, kind: str, key_fields: dict[str, Any], *, version: str = "", label: str | None = None) -> Step:
        """The step for these inputs. ``version`` is the step's code version: bump it to redo."""
        _check_name("kind", kind)
        if label is not None:
            _check_name("label", label)
        key = stable_hash({"kind": kind, "fields": key_fields, "version": version})
        return Step(self, kind, key, key_fields, version, label)

    def steps(self) -> list[Step]:
        """Every step folder in the run, finished or not (see ``Step.state``)."""
        root = self.path / "steps"
        if not root.is_dir():
            return []
        return [self.load(kind.name, folder.name)
                for kind in sorted(root.iterdir()) if kind.is_dir()
                for folder in sorted(kind.iterdir()) if folder.is_dir()]

    def find(self, kind: str, label: str = LATEST) -> Step | None:
        """The step last finished under this kind and label, or None; check ``.done`` before use."""
        key = self._read_index().get(kind, {}).get(label)
        return self.load(kind, key) if key else None

    def load(self, kind: str, key: str) -> Step:
        """The step folder `steps/<kind>/<key>` as found on disk (check `.done` before trusting it)."""
        step = Step(self, kind, key, {}, "", None)
        manifest = step.manifest or {}
        step.key_fields = manifest.get("key_fields", {})
        step.version = manifest.get("version", "")
        step.label = manifest.get("label")
        return step

    def _read_index(self) -> dict[str, dict[str, str]]:
        try:
            return json.loads((self.path / INDEX).read_text())
        except FileNotFoundError:
            return {}

    def _record(self, step: Step) -> None:
        """Point ``latest`` (and the step's label) at a finished step; a lock keeps parallel updates."""
        with open(self.path / ".index.lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            index = self._read_index()
            names = index.setdefault(step.kind, {})
            names[LATEST] = step.key
            if step.label:
                names[step.label] = step.key
            atomic_write_json(self.path / INDEX, index)


class Step:
    """One step of a run: its folder, its outputs and whether they are complete."""

    def __init__(self, run: Run, kind: str, key: str, key_fields: dict[str, Any], version: str,
                 label: str | None):
        self.run, self.kind, self.key = run, kind, key
        self.key_fields, self.version, self.label = key_fields, version, label
        self.dir = run.path / "steps" / kind / key
        self._started: float | None = None
        self._finished = False

    def __repr__(self) -> str:
        return f"Step({self.kind}/{self.key}, {self.state})"

    def path(self, name: str) -> Path:
        """Where to write (or read) the output ``name``, a path relative to the step folder."""
        target = (self.dir / name).resolve()
        if name == MANIFEST or not target.is_relative_to(self.dir.resolve()):
            raise ValueError(f"'{name}' is not a valid output name for step {self.kind}")
        target.parent.mkdir(parents=True, exist_ok=True)
        return self.dir / name

    @property
    def manifest(self) -> dict[str, Any] | None:
        try:
            manifest = json.loads((self.dir / MANIFEST).read_text())
        except (OSError, ValueError):
            return None
        return manifest if isinstance(manifest, dict) else None

    def problems(self) -> list[str]:
        """Why the step is not done (empty when it is): no manifest, or missing or changed files."""
        manifest = self.manifest
        if manifest is None:
            return ["no readable manifest: the step never finished"]
        if manifest.get("key") != self.key:
            return [f"manifest belongs to step {manifest.get('key')}, not {self.key}"]
        out = []
        try:
            for rel, meta in manifest["files"].items():
                file = self.dir / rel
                if not file.is_file():
                    out.append(f"{rel} is missing")
                elif file.stat().st_size != meta["bytes"] or sha256_file(file) != meta["sha256"]:
                    out.append(f"{rel} changed after the step finished")
        except (KeyError, TypeError, AttributeError):
            return ["manifest.json is malformed"]
        return out

    @property
    def done(self) -> bool:
        return not self.problems()

    @property
    def state(self) -> str:
        return "done" if self.done else "incomplete"

    @property
    def digest(self) -> str:
        """Hash of the step's outputs: put it in a later step's key fields to chain the two."""
        if not self.done:
            raise RuntimeError(f"step {self.kind}/{self.key} is not done, so its outputs have no digest yet")
        return stable_hash(self.manifest["files"])

    @contextmanager
    def running(self) -> Iterator[Step]:
        """Run the step's body: removes any stale manifest first, and again if the body fails."""
        self.dir.mkdir(parents=True, exist_ok=True)
        (self.dir / MANIFEST).unlink(missing_ok=True)
        self._started, self._finished = time.time(), False
        try:
            yield self
        except BaseException:
            (self.dir / MANIFEST).unlink(missing_ok=True)
            raise
        finally:
            self._started = None
        if not self._finished:
            raise RuntimeError(f"step {self.kind}/{self.key} ended without step.finish(); it stays incomplete")

    def finish(self, counts: dict[str, int] | None = None, tokens: dict[str, int] | None = None,
               extra: dict[str, Any] | None = None) -> dict[str, Any]:
        """Hash every output, write the manifest (last, atomically) and update the run index."""
        if self._started is None:
            raise RuntimeError("call step.finish() inside 'with step.running():'")
        files = {}
        for file in sorted(self.dir.rglob("*")):
            rel = file.relative_to(self.dir).as_posix()
            if file.is_file() and rel != MANIFEST and not _is_temp(file):
                files[rel] = {"sha256": sha256_file(file), "bytes": file.stat().st_size}
        finished = time.time()
        manifest = {
            "kind": self.kind,
            "key": self.key,
            "label": self.label,
            "version": self.version,
            "key_fields": self.key_fields,
            "files": files,
            "counts": counts or {},
            "tokens": tokens or {},
            "extra": extra or {},
            "timings": {"started": _iso(self._started), "finished": _iso(finished),
                        "seconds": round(finished - self._started, 3)},
            "charlab_version": __version__,
        }
        atomic_write_json(self.dir / MANIFEST, manifest)
        self._finished = True
        self.run._record(self)
        return manifest
