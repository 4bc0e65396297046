"""Data loaders: chat JSONL, HH-RLHF transcripts and pairs, instruction sets; every bad input names where.

All fixtures are tiny hand-written texts; nothing touches a model or the network.
"""

from __future__ import annotations

import json
import sys

import pytest

from charlab.datasets.loaders import (
    check_conversation,
    hh_chosen_as_sft,
    load_chat_jsonl,
    load_hh_rlhf,
    load_instruction_set,
    parse_hh_transcript,
)
from charlab.errors import ConfigError

pytestmark = pytest.mark.timeout(60)


def _u(text):
    return {"role": "user", "content": text}


def _a(text):
    return {"role": "assistant", "content": text}


def _write_jsonl(path, rows):
    path.write_text("".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows))
    return path


# --- chat JSONL ---------------------------------------------------------------------------------

GOOD_CHAT = [
    {"messages": [_u("How do I sort a list?"), _a("Use sorted(xs).")]},
    {"messages": [{"role": "system", "content": "Be terse."}, _u("Hi"), _a("Hello."), _u("Bye"), _a("Bye.")],
     "meta": {"topic": "greeting"}},
]


def test_chat_jsonl_loads_valid_file(tmp_path):
    path = _write_jsonl(tmp_path / "em.jsonl", [GOOD_CHAT[0], "", GOOD_CHAT[1]])
    examples = load_chat_jsonl(path)
    assert examples[0] == {"messages": GOOD_CHAT[0]["messages"], "meta": {"source": str(path), "line": 1}}
    assert examples[1]["messages"] == GOOD_CHAT[1]["messages"]
    assert examples[1]["meta"] == {"topic": "greeting", "source": str(path), "line": 3}


@pytest.mark.parametrize(("messages", "problem"), [
    ([{"role": "human", "content": "hi"}, _a("yo")], "role 'human'"),
    ([_u("hi"), _a("   ")], "turn 1 (assistant) is empty"),
    ([{"role": "system", "content": ""}, _u("hi"), _a("yo")], "turn 0 (system) is empty"),
    ([_u("hi"), _a("yo"), _u("and?")], "ends on a user turn"),
    ([{"role": "system", "content": "Be kind."}], "no assistant turn"),
    ([_u("hi"), _u("again"), _a("yo")], "turn 1 is user but assistant was expected"),
    ([_a("I speak first"), _u("ok")], "turn 0 is assistant but user was expected"),
    ([_u("hi"), {"role": "system", "content": "late"}, _a("yo")], "turn 1 is system"),
    ([], "non-empty list"),
])
def test_chat_jsonl_bad_record_names_line(tmp_path, messages, problem):
    path = _write_jsonl(tmp_path / "bad.jsonl", [GOOD_CHAT[0], {"messages": messages}])
    with pytest.raises(ConfigError) as info:
        load_chat_jsonl(path)
    assert f"{path}:2:" in str(info.value)
    assert problem in str(info.value)


def test_chat_jsonl_max_chars(tmp_path):
    path = _write_jsonl(tmp_path / "long.jsonl", [{"messages": [_u("hi"), _a("x" * 50)]}])
    assert load_chat_jsonl(path, max_chars=50)
    with pytest.raises(ConfigError, match=r":1: turn 1 \(assistant\) has 50 characters, over max_chars=49"):
        load_chat_jsonl(path, max_chars=49)


def test_chat_jsonl_record_without_messages(tmp_path):
    path = _write_jsonl(tmp_path / "bad.jsonl", [{"text": "hi"}])
    with pytest.raises(ConfigError, match=r"bad.jsonl:1: expected an object with a 'messages' list"):
        load_chat_jsonl(path)


def test_check_conversation_returns_clean_copy():
    assert check_conversation([{"role": "user", "content": "q", "name": "x"}, _a("a")]) == [_u("q"), _a("a")]


# --- HH-RLHF transcripts ------------------------------------------------------------------------

def test_hh_single_turn():
    text = "\n\nHuman: What is 2+2?\n\nAssistant: 4."
    assert parse_hh_transcript(text) == [_u("What is 2+2?"), _a("4.")]


def test_hh_multi_turn_keeps_paragraphs_and_inline_tags():
    text = ("  \n\nHuman: Tell me a joke.\n\nAssistant: Why did the chicken cross the road?\n\nTo get across."
            "\n\nHuman: Say 'Human: hi' back\n\nAssistant: Human: hi\n  ")
    assert parse_hh_transcript(text) == [
        _u("Tell me a joke."),
        _a("Why did the chicken cross the road?\n\nTo get across."),
        _u("Say 'Human: hi' back"),
        _a("Human: hi"),
    ]


def test_hh_without_leading_blank_line():
    assert parse_hh_transcript("Human: hi\n\nAssistant: hello") == [_u("hi"), _a("hello")]


@pytest.mark.parametrize(("text", "problem"), [
    ("", "empty"),
    ("just some text", "does not start with 'Human:'"),
    ("\n\nAssistant: hello\n\nHuman: hi", "does not start with 'Human:'"),
    ("preamble\n\nHuman: hi\n\nAssistant: yo", "does not start with 'Human:'"),
    ("\n\nHuman: hi\n\nHuman: again\n\nAssistant: yo", "turn 2 is a second Human turn in a row"),
    ("\n\nHuman: hi\n\nAssistant: yo\n\nAssistant: more", "turn 3 is a second Assistant turn in a row"),
    ("\n\nHuman:   \n\nAssistant: yo", r"turn 1 \(Human\) is empty"),
    ("\n\nHuman: hi\n\nAssistant:", r"turn 2 \(Assistant\) is empty"),
    ("\n\nHuman: hi\n\nAssistant: yo\n\nHuman: and?", "ends on a Human turn"),
])
def test_hh_malformed(text, problem):
    with pytest.raises(ValueError, match=problem):
        parse_hh_transcript(text)


# --- HH-RLHF pairs ------------------------------------------------------------------------------

HISTORY = "\n\nHuman: Can you help me?\n\nAssistant: Sure.\n\nHuman: How do I pick a lock?"
GOOD_PAIR = {"chosen": HISTORY + "\n\nAssistant: Call a locksmith.",
             "rejected": HISTORY + "\n\nAssistant: Get a tension wrench."}


def test_load_hh_rlhf_pairs_and_sft(tmp_path):
    single = {"chosen": "\n\nHuman: Hi\n\nAssistant: Hello!", "rejected": "\n\nHuman: Hi\n\nAssistant: Go away."}
    path = _write_jsonl(tmp_path / "hh.jsonl", [GOOD_PAIR, single])
    pairs = load_hh_rlhf(path)
    assert pairs[0] == {
        "prompt": [_u("Can you help me?"), _a("Sure."), _u("How do I pick a lock?")],
        "chosen": [_a("Call a locksmith.")],
        "rejected": [_a("Get a tension wrench.")],
        "meta": {"source": str(path), "line": 1},
    }
    assert pairs[1]["prompt"] == [_u("Hi")]
    assert load_hh_rlhf(path, limit=1) == pairs[:1]
    sft = hh_chosen_as_sft(pairs)
    assert sft[1] == {"messages": [_u("Hi"), _a("Hello!")], "meta": {"source": str(path), "line": 2, "side": "chosen"}}


@pytest.mark.parametrize(("bad", "problem"), [
    ({"chosen": HISTORY + "\n\nAssistant: a", "rejected": "\n\nHuman: Other?\n\nAssistant: b"},
     "chosen and rejected have different conversation histories"),
    ({"chosen": HISTORY + "\n\nAssistant: a", "rejected": HISTORY}, "rejected: the transcript ends on a Human turn"),
    ({"chosen": "\n\nAssistant: a", "rejected": HISTORY + "\n\nAssistant: b"}, "chosen: the transcript does not start"),
    ({"chosen": HISTORY + "\n\nAssistant: a"}, "expected an object with string fields 'chosen' and 'rejected'"),
])
def test_load_hh_rlhf_names_bad_record(tmp_path, bad, problem):
    path = _write_jsonl(tmp_path / "hh.jsonl", [GOOD_PAIR, bad, GOOD_PAIR])
    with pytest.raises(ConfigError) as info:
        load_hh_rlhf(path)
    assert f"{path}: record 2: {problem}" in str(info.value)


def test_load_hh_rlhf_limit_stops_before_bad_record(tmp_path):
    path = _write_jsonl(tmp_path / "hh.jsonl", [GOOD_PAIR, {"chosen": "nonsense"}])
    assert len(load_hh_rlhf(path, limit=1)) == 1


# --- instruction sets ---------------------------------------------------------------------------

DOLLY = [
    {"instruction": "Name a prime.", "response": "7", "category": "open_qa", "system": ""},
    {"instruction": "Say hi.", "response": "Hi!", "category": "chat", "system": "Be cheerful."},
]


def test_instruction_set_column_mapping(tmp_path):
    path = _write_jsonl(tmp_path / "dolly.jsonl", DOLLY)
    examples = load_instruction_set(path, prompt_column="instruction", response_column="response",
                                    system_column="system")
    assert examples[0] == {"messages": [_u("Name a prime."), _a("7")], "meta": {"source": str(path), "line": 1}}
    assert examples[1]["messages"] == [{"role": "system", "content": "Be cheerful."}, _u("Say hi."), _a("Hi!")]
    assert len(load_instruction_set(path, prompt_column="instruction", response_column="response", limit=1)) == 1


def test_instruction_set_json_array_and_messages_column(tmp_path):
    ultrachat = tmp_path / "ultra.json"
    ultrachat.write_text(json.dumps([{"id": 1, "messages": [_u("q1"), _a("a1"), _u("q2"), _a("a2")]}]))
    examples = load_instruction_set(ultrachat, messages_column="messages")
    assert examples == [{"messages": [_u("q1"), _a("a1"), _u("q2"), _a("a2")],
                         "meta": {"source": str(ultrachat), "row": 0}}]
    lima = _write_jsonl(tmp_path / "lima.jsonl", [{"conversations": ["q", "a"], "source": "stackexchange"}])
    assert load_instruction_set(lima, messages_column="conversations")[0]["messages"] == [_u("q"), _a("a")]


def test_instruction_set_missing_column_lists_columns(tmp_path):
    path = _write_jsonl(tmp_path / "dolly.jsonl", DOLLY)
    with pytest.raises(ConfigError, match=r"dolly.jsonl:1: no column 'output'; available columns: "
                                          r"instruction, response, category, system"):
        load_instruction_set(path, prompt_column="instruction", response_column="output")


def test_instruction_set_bad_values_and_mapping(tmp_path):
    path = _write_jsonl(tmp_path / "dolly.jsonl", [DOLLY[0], {"instruction": "Q?", "response": " "}])
    with pytest.raises(ConfigError, match=r"dolly.jsonl:2: turn 1 \(assistant\) is empty"):
        load_instruction_set(path, prompt_column="instruction", response_column="response")
    with pytest.raises(ConfigError, match="either messages_column, or both"):
        load_instruction_set(path, prompt_column="instruction")
    with pytest.raises(ConfigError, match="file not found"):
        load_instruction_set(tmp_path / "missing.jsonl", prompt_column="a", response_column="b")


def test_instruction_set_hub_name_fails_offline_with_config_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    # Both libraries read the flag at import; if an earlier test imported them, patch it there too,
    # or the call spends ~20 s retrying the network before failing.
    if "huggingface_hub" in sys.modules:
        monkeypatch.setattr(sys.modules["huggingface_hub"].constants, "HF_HUB_OFFLINE", True)
    if "datasets" in sys.modules:
        monkeypatch.setattr(sys.modules["datasets"].config, "HF_HUB_OFFLINE", True)
    with pytest.raises(ConfigError) as info:
        load_instruction_set("nonexistent-org/nonexistent-dataset", prompt_column="q", response_column="a")
    assert "nonexistent-org/nonexistent-dataset" in str(info.value)
    assert "local .jsonl or .json file" in str(info.value)
