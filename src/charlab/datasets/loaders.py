"""Loaders that turn training data researchers already have into charlab's data contracts.

Control conditions and the narrow fine-tuning challenge train on existing sets: chat JSONL (as the
emergent-misalignment datasets ship), Anthropic HH-RLHF preference transcripts, and standard
instruction sets (LIMA, Dolly, UltraChat style). Every loader validates each record up front and
names the file and line (or row) of the first bad one, so a malformed dataset fails before any
training time is spent rather than as a shape error deep inside TRL.

Outputs follow ``docs/ARCHITECTURE.md``: SFT examples ``{"messages", "meta"}`` and preference pairs
``{"prompt", "chosen", "rejected", "meta"}``; ``meta`` always records ``source`` and where in it.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from charlab.errors import ConfigError
from charlab.io import NotJSON, iter_jsonl, read_json
from charlab.models.base import check_messages


def check_conversation(messages: Any, *, max_chars: int | None = None) -> list[dict[str, str]]:
    """Return a clean SFT conversation or raise ValueError saying what is wrong with it.

    Enforced shape: an optional leading system turn, then user and assistant turns alternating,
    starting with the user and ending on the assistant, so the loss always has a reply to learn.
    """
    if not isinstance(messages, list) or not messages:
        raise ValueError("'messages' must be a non-empty list of turns")
    clean = check_messages(messages, where="turn")
    expected = "user"
    for i, msg in enumerate(clean):
        role, content = msg["role"], msg["content"]
        if not content.strip():
            raise ValueError(f"turn {i} ({role}) is empty")
        if max_chars is not None and len(content) > max_chars:
            raise ValueError(f"turn {i} ({role}) has {len(content)} characters, over max_chars={max_chars}")
        if role == "system" and i == 0:
            continue
        if role != expected:
            raise ValueError(f"turn {i} is {role} but {expected} was expected; roles must alternate "
                             "user/assistant after an optional leading system turn")
        expected = "assistant" if role == "user" else "user"
    if not any(msg["role"] == "assistant" for msg in clean):
        raise ValueError("there is no assistant turn")
    if clean[-1]["role"] != "assistant":
        raise ValueError(f"the conversation ends on a {clean[-1]['role']} turn; it must end on the assistant's reply")
    return clean


# ---------------------------------------------------------------------------------------------
# chat JSONL


def load_chat_jsonl(path: str | os.PathLike, *, max_chars: int | None = None) -> list[dict]:
    """Load ``{"messages": [...], "meta"?: {...}}`` lines as SFT examples, validating every line."""
    examples = []
    for lineno, record in iter_jsonl(path):
        where = f"{path}:{lineno}"
        if not isinstance(record, dict) or "messages" not in record:
            raise ConfigError(f"{where}: expected an object with a 'messages' list; fix or remove this line")
        meta = record.get("meta", {})
        if not isinstance(meta, dict):
            raise ConfigError(f"{where}: 'meta' must be an object; fix or remove this line")
        try:
            messages = check_conversation(record["messages"], max_chars=max_chars)
        except ValueError as exc:
            raise ConfigError(f"{where}: {exc}; fix or remove this line") from None
        examples.append({"messages": messages, "meta": {**meta, "source": str(path), "line": lineno}})
    return examples


# ---------------------------------------------------------------------------------------------
# Anthropic HH-RLHF

_HH_MARKER = re.compile(r"\n\n(Human|Assistant):")
_HH_ROLES = {"Human": "user", "Assistant": "assistant"}


def parse_hh_transcript(text: str) -> list[dict[str, str]]:
    """Split an HH-RLHF transcript ("\\n\\nHuman: …\\n\\nAssistant: …", repeated) into messages.

    Only a blank line followed by a speaker tag starts a new turn, so "Human:" inside a reply stays
    part of that reply. Raises ValueError naming the turn that breaks the format.
    """
    if not isinstance(text, str) or not text.strip():
        raise ValueError("the transcript is empty")
    parts = _HH_MARKER.split("\n\n" + text.strip())
    if len(parts) < 3 or parts[0].strip() or parts[1] != "Human":
        raise ValueError("the transcript does not start with 'Human:'")
    messages = []
    for n, (speaker, content) in enumerate(zip(parts[1::2], parts[2::2]), start=1):
        if messages and messages[-1]["role"] == _HH_ROLES[speaker]:
            raise ValueError(f"turn {n} is a second {speaker} turn in a row")
        if not content.strip():
            raise ValueError(f"turn {n} ({speaker}) is empty")
        messages.append({"role": _HH_ROLES[speaker], "content": content.strip()})
    if messages[-1]["role"] == "user":
        raise ValueError("the transcript ends on a Human turn; it must end with the Assistant's reply")
    return messages


def _hh_pair(record: Any) -> tuple[list[dict], dict, dict]:
    """Split one HH record into (shared history, chosen reply, rejected reply) or raise ValueError."""
    if not isinstance(record, dict) or not all(isinstance(record.get(k), str) for k in ("chosen", "rejected")):
        raise ValueError("expected an object with string fields 'chosen' and 'rejected'")
    sides = {}
    for side in ("chosen", "rejected"):
        try:
            sides[side] = parse_hh_transcript(record[side])
        except ValueError as exc:
            raise ValueError(f"{side}: {exc}") from None
    chosen, rejected = sides["chosen"], sides["rejected"]
    if chosen[:-1] != rejected[:-1]:
        raise ValueError("chosen and rejected have different conversation histories")
    return chosen[:-1], chosen[-1], rejected[-1]


def load_hh_rlhf(path: str | os.PathLike, *, limit: int | None = None) -> list[dict]:
    """Load HH-RLHF ``{"chosen", "rejected"}`` lines as preference pairs (TRL conversational format).

    The record number in errors is the 1-based line number, so it can be found with any editor.
    """
    pairs = []
    for lineno, record in iter_jsonl(path):
        if limit is not None and len(pairs) >= limit:
            break
        try:
            prompt, chosen, rejected = _hh_pair(record)
        except ValueError as exc:
            raise ConfigError(f"{path}: record {lineno}: {exc}; fix or remove this record") from None
        pairs.append({"prompt": prompt, "chosen": [chosen], "rejected": [rejected],
                      "meta": {"source": str(path), "line": lineno}})
    if not pairs:
        raise ConfigError(f"{path}: no preference pairs; the file is empty")
    return pairs


def hh_chosen_as_sft(pairs: Sequence[dict]) -> list[dict]:
    """SFT examples (prompt + chosen reply) for DPO runs that also train SFT on the chosen side."""
    return [{"messages": pair["prompt"] + pair["chosen"], "meta": {**pair["meta"], "side": "chosen"}}
            for pair in pairs]


# ---------------------------------------------------------------------------------------------
# charlab preference pairs, and either pair format


def check_pair(record: Any) -> dict:
    """A clean ``{"prompt", "chosen", "rejected"}`` pair (TRL conversational form) or ValueError.

    The prompt is a conversation ending on a user turn; each side is exactly one assistant message.
    """
    if not isinstance(record, dict):
        raise ValueError("each line must be an object with prompt, chosen and rejected")
    prompt = check_messages(record.get("prompt") or [], "prompt")
    if not prompt or prompt[-1]["role"] != "user":
        raise ValueError("prompt: must be a non-empty list of messages ending with a user turn")
    pair = {"prompt": prompt}
    for side in ("chosen", "rejected"):
        value = record.get(side)
        reply = check_messages(value if isinstance(value, list) else [], side)
        if len(reply) != 1 or reply[0]["role"] != "assistant":
            raise ValueError(f"{side}: must be a list holding exactly one assistant message")
        pair[side] = reply
    return pair


def load_pairs(path: str | os.PathLike, *, limit: int | None = None) -> list[dict]:
    """Load charlab preference pairs, validating every line; ``meta`` is kept and gains source and line."""
    pairs = []
    for lineno, record in iter_jsonl(path):
        if limit is not None and len(pairs) >= limit:
            break
        try:
            pair = check_pair(record)
        except ValueError as exc:
            raise ConfigError(f"{path}:{lineno}: {exc}; fix or remove this line") from None
        meta = record.get("meta") if isinstance(record.get("meta"), dict) else {}
        pairs.append({**pair, "meta": {**meta, "source": str(path), "line": lineno}})
    if not pairs:
        raise ConfigError(f"{path}: no preference pairs; the file is empty")
    return pairs


def load_preference_pairs(path: str | os.PathLike, *, limit: int | None = None) -> list[dict]:
    """Pairs from either format, told apart by the first record: HH-RLHF transcripts (``chosen`` is a
    string) or charlab pairs (``chosen`` is a list of messages)."""
    first = next(iter_jsonl(path), None)
    if first is not None and isinstance(first[1], dict) and isinstance(first[1].get("chosen"), str):
        return load_hh_rlhf(path, limit=limit)
    return load_pairs(path, limit=limit)


# ---------------------------------------------------------------------------------------------
# instruction sets (local file or Hugging Face dataset)


def _local_rows(path: Path) -> Iterator[tuple[str, int, Any]]:
    """Yield (meta key, number, row): a JSON array by 0-based row index, anything else as JSONL by line."""
    if not path.is_file():
        raise ConfigError(f"{path}: file not found; check the path")
    if path.suffix.lower() == ".json":
        try:
            rows = read_json(path)
        except NotJSON:
            rows = None  # not one JSON document: read it as JSON lines below
        if isinstance(rows, list):
            yield from (("row", i, row) for i, row in enumerate(rows))
            return
    yield from (("line", lineno, row) for lineno, row in iter_jsonl(path))


def _hub_rows(name: str, split: str) -> Iterator[tuple[str, int, Any]]:
    """Yield (meta key, row index, row) from a Hugging Face dataset; any load failure is a ConfigError."""
    try:
        from datasets import load_dataset

        dataset = load_dataset(name, split=split)
    except Exception as exc:  # offline, unknown name, bad split, missing library: all user-fixable
        raise ConfigError(f"could not load Hugging Face dataset '{name}' (split '{split}'): {exc}. "
                          "Download it while online and pass a local .jsonl or .json file instead") from None
    yield from (("row", i, row) for i, row in enumerate(dataset))


def _column(row: dict, column: str, where: str) -> Any:
    if column not in row:
        raise ConfigError(f"{where}: no column '{column}'; available columns: {', '.join(map(str, row))}. "
                          "Fix the column mapping")
    return row[column]


def _chat_from_column(value: Any) -> Any:
    """Chat-form columns hold role/content dicts (UltraChat) or alternating strings from the user (LIMA)."""
    if isinstance(value, list) and value and all(isinstance(turn, str) for turn in value):
        return [{"role": ("user", "assistant")[i % 2], "content": turn} for i, turn in enumerate(value)]
    return value


def _instruction_messages(row: dict, where: str, *, prompt_column: str | None, response_column: str | None,
                          system_column: str | None, messages_column: str | None) -> Any:
    if messages_column is not None:
        messages = _chat_from_column(_column(row, messages_column, where))
    else:
        messages = [{"role": "user", "content": _column(row, prompt_column, where)},
                    {"role": "assistant", "content": _column(row, response_column, where)}]
    system = _column(row, system_column, where) if system_column is not None else None
    if system and not (isinstance(messages, list) and messages and isinstance(messages[0], dict)
                       and messages[0].get("role") == "system"):
        messages = [{"role": "system", "content": system}, *messages]
    return messages


def load_instruction_set(path_or_name: str | os.PathLike, *, prompt_column: str | None = None,
                         response_column: str | None = None, system_column: str | None = None,
                         messages_column: str | None = None, split: str = "train",
                         limit: int | None = None) -> list[dict]:
    """Load an instruction set as SFT examples through a column mapping.

    Give ``prompt_column`` and ``response_column`` for single-turn sets (Dolly, Alpaca style), or
    ``messages_column`` for sets already in chat form (UltraChat ``messages``, LIMA
    ``conversations``). A ``.jsonl``/``.json`` path is read locally; anything else is a Hugging Face
    dataset name, loaded with ``split``. An empty system value adds no system turn. ``meta`` holds
    the JSONL ``line`` or, for JSON arrays and hub datasets, the 0-based ``row`` index.
    """
    single_turn = prompt_column is not None and response_column is not None
    chat_form = messages_column is not None and prompt_column is None and response_column is None
    if single_turn == chat_form:
        raise ConfigError("load_instruction_set: give either messages_column, or both prompt_column and "
                          "response_column")
    local = Path(path_or_name).suffix.lower() in (".jsonl", ".json")
    rows = _local_rows(Path(path_or_name)) if local else _hub_rows(str(path_or_name), split)
    examples = []
    for key, number, row in rows:
        if limit is not None and len(examples) >= limit:
            break
        where = f"{path_or_name}:{number}" if key == "line" else f"{path_or_name} row {number}"
        if not isinstance(row, dict):
            raise ConfigError(f"{where}: expected an object with named columns")
        messages = _instruction_messages(row, where, prompt_column=prompt_column, response_column=response_column,
                                         system_column=system_column, messages_column=messages_column)
        try:
            messages = check_conversation(messages)
        except ValueError as exc:
            raise ConfigError(f"{where}: {exc}; fix or drop this record") from None
        examples.append({"messages": messages, "meta": {"source": str(path_or_name), key: number}})
    return examples
