"""Prompt expansion: list parsing, duplicates, round accounting, caching, and generic prompt files.

Accounting is checked exactly with the OpenAI backend talking to a fake server (tests/fake_openai.py)
that returns hand-written lists; one run with the tiny random model (which writes gibberish) checks
the same arithmetic and caching with a real generator behind ``generate_cached``.
"""

from __future__ import annotations

import json
import re

import pytest
from pydantic import ValidationError

from charlab.constitution.schema import Constitution
from charlab.datasets.lists import find_duplicate, normalize, parse_numbered_list
from charlab.errors import ConfigError
from charlab.models.hf import HFBackend
from charlab.models.openai_compat import OpenAIBackend, OpenAIConfig, api_seed
from charlab.models.refs import ModelRef
from charlab.pipeline.prompts import (
    ExpansionSettings,
    expand_constitution,
    generator_messages,
    load_generic_prompts,
    write_generic_prompts,
)
from charlab.store.cache import RowCache
from fake_openai import FakeOpenAI

pytestmark = pytest.mark.timeout(120)

CONSTITUTION = Constitution.model_validate({"name": "tiny", "traits": [
    {"statement": "I say plainly when I do not know something.",
     "questions": ["What will the weather be in Oslo next March?", "Which stock will double this year?"]},
    {"statement": "I gently question claims that have no evidence.",
     "questions": ["The moon landing was filmed in a studio, right?", "Do vaccines contain microchips?"]},
]})


# -- parsing -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("text", "items"), [
    ("1. One\n2. Two\n3. Three", ["One", "Two", "Three"]),
    ("1) One\n2) Two", ["One", "Two"]),
    ("Sure! Here are some messages:\n\n1. One\n2. Two", ["One", "Two"]),
    ("1. One\n2. Two\n\nI hope these are useful! Let me know.", ["One", "Two"]),
    ('1. "Quoted one"\n2. “Curly two”\n3. \'Single\'', ["Quoted one", "Curly two", "Single"]),
    ('1. "Hi" she said, "bye"', ['"Hi" she said, "bye"']),
    ("1. (Short) Hi there\n2. **Long:** A long one\n3. [medium] - Middle", ["Hi there", "A long one", "Middle"]),
    ("1. Long story short, I lost my keys.", ["Long story short, I lost my keys."]),
    ("**1.** Bold number\n**2.** Another", ["Bold number", "Another"]),
    ("1.\n   Text on the next line\n2. Two", ["Text on the next line", "Two"]),
    ("1. My landlord wants cash.\n   He says the bank is slow.\n\n   Is that normal?\n2. Two",
     ["My landlord wants cash.\nHe says the bank is slow.\n\nIs that normal?", "Two"]),
    # A generator that writes unindented paragraphs inside items keeps them in the last item too.
    ("1. First paragraph.\n\nSecond paragraph, unindented.\n2. Two\n\nTwo, continued.",
     ["First paragraph.\n\nSecond paragraph, unindented.", "Two\n\nTwo, continued."]),
    ("1. I have two questions:\n   1. Where?\n   2. When?\n2. Next item",
     ["I have two questions:\n1. Where?\n2. When?", "Next item"]),
    ("1. One\n2. Two\n3. My list:\n1. Eggs\n2. Milk\n4. Four", ["One", "Two", "My list:\n1. Eggs\n2. Milk", "Four"]),
    ("6. Numbering may start late\n7. and go on", ["Numbering may start late", "and go on"]),
    ("1. Keep\n2.\n3. Also keep", ["Keep", "Also keep"]),
    ("No list at all, just chatter.", []),
    ("", []),
])
def test_parse_numbered_list(text, items):
    assert parse_numbered_list(text) == items


# -- duplicates ----------------------------------------------------------------------------------


def test_find_duplicate_prefers_exact_then_near_then_none():
    kept = ["How do I bake bread at home?", "Is my  landlord allowed to keep my deposit?"]
    assert find_duplicate("is my landlord ALLOWED to keep my deposit?", kept) == ("exact", kept[1])
    assert find_duplicate("How can I bake bread at home quickly?", kept) == ("near", kept[0])
    assert find_duplicate("My cat will not eat; should I worry?", kept) is None
    assert normalize("  A\n b  ") == "a b"


# -- settings and the generator prompt ------------------------------------------------------------


def test_generator_prompt_shows_the_trait_the_seeds_and_the_ask():
    settings = ExpansionSettings(per_call=7, situations=("cooking", "tax forms"))
    [message] = generator_messages(CONSTITUTION.traits[0], settings)
    assert message["role"] == "user"
    text = message["content"]
    assert CONSTITUTION.traits[0].statement in text
    assert "1. What will the weather be in Oslo next March?\n2. Which stock will double this year?" in text
    assert "Write 7 new user messages" in text and "cooking, tax forms" in text
    assert "numbered list" in text


def test_template_fields_are_checked():
    with pytest.raises(ValidationError, match="unknown fields"):
        ExpansionSettings(template="{trait} {n} {nonsense}")
    with pytest.raises(ValidationError, match="must contain"):
        ExpansionSettings(template="{trait} only")
    with pytest.raises(ValidationError, match="temperature"):
        ExpansionSettings(temperature=0)
    assert ExpansionSettings(template="Trait: {trait}. Give {n}.").template


# -- expansion with a scripted generator server ---------------------------------------------------


def api_backend(server: FakeOpenAI) -> OpenAIBackend:
    """The real API backend pointed at the fake server, retrying fast."""
    return OpenAIBackend(OpenAIConfig(base_url=server.url, model="generator", max_retries=2,
                                      backoff_base_s=0.01, backoff_max_s=0.05))


# The backend sends api_seed(seed, sample_index); expansion uses sample_index = round and seed 0.
ROUND_OF_SEED = {api_seed(0, r): r for r in range(10)}


def at_token_limit(text: str, body: dict) -> str:
    """A reply the server cuts right after ``text``: chatter in front fills ``max_tokens`` up to its last word.

    The server counts whitespace-separated words as tokens, keeps the first ``max_tokens`` and
    reports finish_reason "length"; the words after ``text`` are what the cap cut off.
    """
    filler = body["max_tokens"] - len(text.split())
    assert filler >= 0, "text is longer than max_tokens"
    return "so " * filler + "\n" + text + " and the words past the cap"


def scripted_lists(cut_off: frozenset = frozenset()):
    """Answers each (trait, round) with a hand-written list; lists in ``cut_off`` hit max_tokens."""

    def reply(body: dict) -> str:
        prompt = body["messages"][-1]["content"]
        trait = next(i for i, t in enumerate(CONSTITUTION.traits) if t.statement in prompt)
        key = (trait, ROUND_OF_SEED[body["seed"]])
        text = SCRIPT.get(key, "")
        return at_token_limit(text, body) if key in cut_off else text

    return reply


SCRIPT = {
    # trait 0: round 0 accepts 2 (one exact and one near duplicate of seeds), round 1 fills the
    # last 2 places (one more near duplicate) and leaves 1 surplus.
    (0, 0): "Here you go:\n1. what will the weather be in oslo next march?\n"
            "2. Which stock will double in value this year, do you think?\n"
            "3. Can you tell me who wins the next World Cup?\n4. How many people are thinking of pizza right now?",
    (0, 1): "1. Can you tell me who will win the next World Cup?\n2. What did I have for breakfast?\n"
            "3. What number am I thinking of?\n4. Will it rain at my wedding?",
    # trait 1: every round repeats the same one new question, and round 1's list was cut off.
    (1, 0): "1. Is the earth flat?\n2. Do vaccines contain microchips?",
    (1, 1): "1. Is the earth flat?\n2. Do vaccines contain micro",
    (1, 2): "1. Is the earth flat?",
}


def test_expansion_accounts_for_every_item_and_reports_a_short_trait(tmp_path, caplog):
    settings = ExpansionSettings(target_per_trait=6, per_call=4, max_rounds=3)
    with FakeOpenAI(reply=scripted_lists(cut_off=frozenset({(1, 1)}))) as server, api_backend(server) as backend:
        expanded, card = expand_constitution(CONSTITUTION, backend, RowCache(tmp_path / "cache.sqlite"), settings)

    assert [q.text for q in expanded.traits[0].expanded] == [
        "Can you tell me who wins the next World Cup?", "How many people are thinking of pizza right now?",
        "What did I have for breakfast?", "What number am I thinking of?"]
    assert [q.text for q in expanded.traits[1].expanded] == ["Is the earth flat?"]
    assert expanded.traits[0].questions == CONSTITUTION.traits[0].questions
    assert len(server.chat_requests) == 5  # trait 0 is done after 2 rounds, trait 1 uses all 3

    rows = {row["trait"]: row for row in card.tables["traits"]}
    assert {k: rows[0][k] for k in ("calls", "parsed", "cut_off", "exact_duplicate", "near_duplicate", "surplus",
                                     "accepted", "total", "target")} == {
        "calls": 2, "parsed": 8, "cut_off": 0, "exact_duplicate": 1, "near_duplicate": 2, "surplus": 1,
        "accepted": 4, "total": 6, "target": 6}
    assert {k: rows[1][k] for k in ("calls", "parsed", "cut_off", "exact_duplicate", "near_duplicate", "accepted",
                                     "total")} == {
        "calls": 3, "parsed": 5, "cut_off": 1, "exact_duplicate": 3, "near_duplicate": 0, "accepted": 1, "total": 3}
    assert card.inputs == 13
    assert [(s.name, s.dropped, s.remaining) for s in card.steps] == [
        ("cut-off item removed", 1, 12), ("exact duplicates removed", 4, 8), ("near duplicates removed", 2, 6),
        ("capped at target", 1, 5)]
    assert card.outputs == sum(len(t.expanded) for t in expanded.traits)
    assert card.drops["near_duplicate"].examples[0]["duplicate of"] == "Which stock will double this year?"
    assert card.drops["cut_off"].examples[0]["text"] == "Do vaccines contain micro"
    assert len(card.warnings) == 1 and "trait 1" in card.warnings[0] and "3 of 6 questions" in card.warnings[0]
    assert "3 of 6 questions" in caplog.text
    assert [r["traits asked"] for r in card.tables["rounds"]] == [2, 2, 1]


def test_a_rerun_is_served_from_the_cache_and_a_higher_target_only_pays_for_new_rounds(tmp_path):
    cache = RowCache(tmp_path / "cache.sqlite")
    settings = ExpansionSettings(target_per_trait=6, per_call=4, max_rounds=3)
    with FakeOpenAI(reply=scripted_lists()) as server:  # one server: the same URL is the same model to the cache
        with api_backend(server) as backend:
            first, _ = expand_constitution(CONSTITUTION, backend, cache, settings)
        paid = len(server.chat_requests)

        with api_backend(server) as again:
            second, card = expand_constitution(CONSTITUTION, again, cache, settings)
        assert len(server.chat_requests) == paid and second == first
        assert all(r["generated"] == 0 and r["from cache"] == r["traits asked"] for r in card.tables["rounds"])

        with api_backend(server) as more:
            expand_constitution(CONSTITUTION, more, cache, settings.model_copy(update={"max_rounds": 4}))
        assert len(server.chat_requests) == paid + 1  # only trait 1's fourth round is new


def test_existing_expanded_questions_are_replaced_with_a_warning(tmp_path):
    data = CONSTITUTION.model_dump(mode="json")
    data["traits"][0]["expanded"] = ["An old generated question?"]
    settings = ExpansionSettings(target_per_trait=3, per_call=4, max_rounds=1)
    with FakeOpenAI(reply=scripted_lists()) as server, api_backend(server) as backend:
        expanded, card = expand_constitution(Constitution.model_validate(data), backend,
                                             RowCache(tmp_path / "c.sqlite"), settings)
    assert "An old generated question?" not in [q.text for q in expanded.traits[0].expanded]
    assert "already has expanded questions" in card.warnings[0]


# -- expansion with the tiny model ------------------------------------------------------------------


def test_tiny_model_end_to_end_card_arithmetic_and_full_cache_on_rerun(tiny_model_dir, tmp_path):
    settings = ExpansionSettings(target_per_trait=4, per_call=3, max_rounds=2, max_new_tokens=24)
    cache = RowCache(tmp_path / "cache.sqlite")
    with HFBackend(ModelRef(base=str(tiny_model_dir)), batch_size=4, device="cpu") as backend:
        expanded, card = expand_constitution(CONSTITUTION, backend, cache, settings)
        again, card_again = expand_constitution(CONSTITUTION, backend, cache, settings)

    rows = card.tables["traits"]
    for row, trait in zip(rows, expanded.traits):
        dropped = row["cut_off"] + row["exact_duplicate"] + row["near_duplicate"] + row["surplus"]
        assert row["parsed"] == dropped + row["accepted"]
        assert row["accepted"] == len(trait.expanded) and row["total"] == row["seeds"] + row["accepted"]
    assert card.inputs == sum(row["parsed"] for row in rows)
    assert card.outputs == sum(row["accepted"] for row in rows)
    short = [row for row in rows if row["total"] < settings.target_per_trait]
    assert len(card.warnings) == len(short)
    assert sum(r["generated"] for r in card.tables["rounds"]) == sum(r["calls"] for r in rows)

    assert again == expanded and card_again.tables["traits"] == rows
    assert all(r["generated"] == 0 and r["from cache"] == r["traits asked"] for r in card_again.tables["rounds"])


# -- generic prompts -----------------------------------------------------------------------------


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def test_generic_prompts_from_text_messages_and_lima_columns(tmp_path):
    plain = write_jsonl(tmp_path / "plain.jsonl", [{"prompt": " Plan a picnic. "}, {"prompt": "plan a  PICNIC."},
                                                   {"prompt": ""}, {"prompt": "Fix my bike."}])
    prompts, card = load_generic_prompts(plain)
    assert prompts == ["Plan a picnic.", "Fix my bike."]
    assert [(s.name, s.dropped, s.remaining) for s in card.steps] == [("non-empty", 1, 3), ("distinct", 1, 2)]
    assert card.drops["exact_duplicate"].examples == [{"line": 2, "text": "plan a  PICNIC."}]

    chats = write_jsonl(tmp_path / "chats.jsonl", [
        {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello?"},
                      {"role": "assistant", "content": "Hi."}, {"role": "user", "content": "Second turn"}]}])
    assert load_generic_prompts(chats, "messages")[0] == ["Hello?"]

    lima = write_jsonl(tmp_path / "lima.jsonl", [{"conversations": [f"Question {i}?", "Answer."], "source": "x"}
                                                 for i in range(5)])
    prompts, card = load_generic_prompts(lima, "conversations", limit=3)
    assert prompts == ["Question 0?", "Question 1?", "Question 2?"]
    assert card.steps[-1].name == "first 3" and card.drops["over_limit"].count == 2

    assert load_generic_prompts(write_generic_prompts(tmp_path / "out.jsonl", prompts))[0] == prompts


def test_generic_prompt_errors_name_the_file_line_and_column(tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "ok"}, {"text": "no prompt column"}])
    with pytest.raises(ConfigError, match=re.escape(f"{path}:2: no column 'prompt' (found 'text')")):
        load_generic_prompts(path)
    with pytest.raises(ConfigError, match="must be a string, a list of messages or a list of strings"):
        load_generic_prompts(write_jsonl(tmp_path / "n.jsonl", [{"prompt": 3}]))
    with pytest.raises(ConfigError, match="no usable prompts"):
        load_generic_prompts(write_jsonl(tmp_path / "e.jsonl", [{"prompt": " "}]))
    with pytest.raises(ConfigError, match="not found"):
        load_generic_prompts(tmp_path / "missing.jsonl")
