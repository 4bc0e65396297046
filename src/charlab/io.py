"""Atomic file writes, and the one way charlab reads a user's text and JSON files.

Every artifact is written to a temporary file in the same folder and renamed into place, so a
killed process leaves either the old file or the new one, never a half-written one.

Reading goes through ``read_user_text`` and ``parse_json`` (YAML through ``configfile``) so that
every file a user hands over gets the same treatment: a UTF-8 byte-order mark is accepted, a byte
that is not UTF-8 is reported with its line and column, JSON nested deeper than any real config is
refused before the parser recurses, and ``NaN``/``Infinity`` (which Python accepts but JSON does
not) are refused instead of turning into floats that poison later arithmetic.
"""

from __future__ import annotations

import codecs
import hashlib
import json
import os
import re
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any, NoReturn

from charlab.errors import ConfigError

MAX_DEPTH = 100
"""Deepest nesting of lists/objects accepted in a user file; real configs stay under ten."""

_REENCODE = "re-save the file as UTF-8 (most editors offer it under 'Save with encoding')"
# A JSON string (so brackets and words inside it are skipped) or one of the tokens we look for.
_STRING = r'"[^"\\]*(?:\\.[^"\\]*)*"'
_BRACKETS = re.compile(_STRING + r"|[\[\]{}]", re.DOTALL)
_NON_FINITE = re.compile(_STRING + r"|-?Infinity|NaN", re.DOTALL)


class NotJSON(ConfigError):
    """The text is not JSON syntax. Readers that fall back to JSON lines catch this one only, so a
    file that is JSON but refused (too deep, NaN) is reported as such, not re-read as lines."""


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, indent=2, ensure_ascii=False, sort_keys=False) + "\n")


def atomic_write_jsonl(path: str | os.PathLike, rows: Iterable[Any]) -> Path:
    text = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows)
    return atomic_write_text(path, text)


def read_user_text(path: str | os.PathLike) -> str:
    """The text of a user's file: UTF-8, with or without a byte-order mark; anything else is a
    ConfigError naming the line and column of the first bad byte."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: file not found; check the path")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the file ({exc.strerror}); check its permissions") from None
    return decode_text(data, path)


def decode_text(data: bytes, source: str | os.PathLike, *, line: int = 1) -> str:
    """Decode UTF-8 (a leading BOM dropped); ``line`` is the line ``data`` starts on, for JSONL."""
    if line == 1 and data.startswith(codecs.BOM_UTF8):
        data = data[len(codecs.BOM_UTF8):]
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        bad = exc.start
        line_start = data.rfind(b"\n", 0, bad) + 1
        column = len(data[line_start:bad].decode("utf-8", errors="replace")) + 1
        lineno = line + data.count(b"\n", 0, bad)
        raise ConfigError(f"{source}:{lineno}:{column}: byte 0x{data[bad]:02x} is not UTF-8 text; "
                          f"{_REENCODE}") from None


def _line_of(text: str, offset: int, first_line: int) -> int:
    return first_line + text.count("\n", 0, offset)


def _check_depth(text: str, source: str | os.PathLike, first_line: int) -> None:
    """Refuse nesting beyond MAX_DEPTH before ``json`` recurses into it (and hits RecursionError).
    The bracket count is a cheap upper bound on depth, so ordinary text is never scanned."""
    if text.count("[") + text.count("{") <= MAX_DEPTH:
        return
    depth = 0
    for match in _BRACKETS.finditer(text):
        token = match.group()
        if token in "[{":
            depth += 1
            if depth > MAX_DEPTH:
                raise ConfigError(
                    f"{source}:{_line_of(text, match.start(), first_line)}: lists/objects are nested more than "
                    f"{MAX_DEPTH} deep; no charlab file needs that, so this is likely a broken or hostile file")
        elif token in "]}":
            depth -= 1


class _NonFinite(Exception):
    """Raised from inside ``json.loads`` when it meets NaN or Infinity."""


def _refuse_constant(name: str) -> NoReturn:
    raise _NonFinite(name)


def _non_finite_line(text: str, first_line: int) -> int:
    """The line of the first NaN/Infinity outside a string (where ``json`` stopped)."""
    for match in _NON_FINITE.finditer(text):
        if not match.group().startswith('"'):
            return _line_of(text, match.start(), first_line)
    return first_line


def parse_json(text: str, source: str | os.PathLike, *, line: int | None = None,
               hint: str = "fix the syntax there", finite: bool = True) -> Any:
    """Parse one JSON document (a whole file, or one JSONL line when ``line`` is given).

    Errors name ``source`` with the line (and column for syntax errors); ``hint`` says what to do
    about a syntax error and is how readers add the shape they expect. ``finite=False`` is for
    charlab's own records, whose writers keep an undefined statistic as NaN.
    """
    first = line or 1
    _check_depth(text, source, first)
    try:
        return json.loads(text, parse_constant=_refuse_constant if finite else None)
    except json.JSONDecodeError as exc:
        lineno = exc.lineno if line is None else line + exc.lineno - 1
        raise NotJSON(f"{source}:{lineno}:{exc.colno}: not valid JSON ({exc.msg}); {hint}") from None
    except _NonFinite as exc:
        raise ConfigError(f"{source}:{_non_finite_line(text, first)}: {exc} is not a JSON value; write a number "
                          "or null instead") from None
    except (ValueError, RecursionError) as exc:  # over-long integers; nesting the depth scan missed
        raise ConfigError(f"{source}:{first}: cannot read this JSON ({exc}); fix the value there") from None


def read_json(path: str | os.PathLike, *, hint: str = "fix the syntax there", finite: bool = True) -> Any:
    """A user's JSON file, read and parsed the one checked way."""
    return parse_json(read_user_text(path), path, hint=hint, finite=finite)


def read_json_object(path: str | os.PathLike, *, hint: str = "fix the syntax there",
                     finite: bool = True) -> dict[str, Any]:
    """A JSON file whose top level must be an object (adapter configs, role files)."""
    data = read_json(path, hint=hint, finite=finite)
    if not isinstance(data, dict):
        raise ConfigError(f"{path}:1: the top level is a JSON {type(data).__name__}, not an object; {hint}")
    return data


def iter_jsonl(path: str | os.PathLike, *, hint: str = "fix or remove this line",
               finite: bool = True) -> Iterator[tuple[int, Any]]:
    """Yield (line number, parsed object) for each non-blank line; every line is checked like
    ``parse_json``. Read as bytes so a bad byte is reported on its own line, not a buffer's."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: file not found; check the path")
    with path.open("rb") as handle:
        for lineno, raw in enumerate(handle, start=1):
            text = decode_text(raw, path, line=lineno).rstrip("\r\n")  # so errors point inside this line
            if text.strip():
                yield lineno, parse_json(text, path, line=lineno, hint=hint, finite=finite)


def read_jsonl(path: str | os.PathLike) -> list[Any]:
    return [obj for _, obj in iter_jsonl(path)]


def sha256_file(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def stable_hash(obj: Any, length: int = 16) -> str:
    """Hash of a JSON-serialisable object that does not depend on dict order."""
    blob = json.dumps(obj, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:length]
