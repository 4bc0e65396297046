"""Preference pairs: pairing by prompt and sample index, each filter, names, placeholders, output, errors.

Records are hand-written generation records; lengths are measured with the tiny model's tokenizer
(the real SmolLM2 tokenizer and chat template).
"""

from __future__ import annotations

import json

import pytest
from pydantic import ValidationError

from charlab.constitution.schema import Constitution
from charlab.datasets.cards import DatasetCard, card_paths
from charlab.errors import CharlabError
from charlab.models import chat
from charlab.pipeline.pairs import (
    PairSettings,
    build_pairs,
    ends_cleanly,
    find_placeholders,
    replace_names,
    write_pairs,
)

pytestmark = pytest.mark.timeout(60)

SYSTEM = {"role": "system", "content": "You are Sage. You are honest and kind."}


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


def user(text: str) -> dict[str, str]:
    return {"role": "user", "content": text}


def teacher(prompt: str, response: str, k: int = 0, finish: str = "stop", rid: str | None = None) -> dict:
    return _record(rid or f"t-{prompt}-{k}", [SYSTEM, user(prompt)], response, k, finish)


def student(prompt: str, response: str, k: int = 0, finish: str = "stop", rid: str | None = None) -> dict:
    return _record(rid or f"s-{prompt}-{k}", [user(prompt)], response, k, finish)


def _record(rid: str, messages: list[dict], response: str, k: int, finish: str) -> dict:
    return {"id": rid, "model": "m", "messages": messages, "sampling": {}, "response": response,
            "finish_reason": finish, "n_tokens": {"prompt": 1, "completion": 1}, "seed": 0, "sample_index": k}


def funnel(card: DatasetCard) -> list[tuple[str, int, int]]:
    return [(s.name, s.dropped, s.remaining) for s in card.steps]


# -- pairing -------------------------------------------------------------------------------------


def test_teacher_sample_k_is_paired_with_student_sample_k_without_the_system_prompt(tokenizer):
    teachers = [teacher("Hi", "Hello there.", 0), teacher("Hi", "Good day!", 1), teacher("Bye", "Take care.", 0)]
    students = [student("Bye", "Bye.", 0), student("Hi", "Yo.", 1), student("Hi", "Hey.", 0)]  # any order

    pairs, card = build_pairs(teachers, students, tokenizer)

    assert [(p["prompt"], p["chosen"][0]["content"], p["rejected"][0]["content"]) for p in pairs] == [
        ([user("Hi")], "Hello there.", "Hey."), ([user("Hi")], "Good day!", "Yo."),
        ([user("Bye")], "Take care.", "Bye.")]
    assert all(p["chosen"][0]["role"] == p["rejected"][0]["role"] == "assistant" for p in pairs)
    assert pairs[1]["meta"] == {"trait": None, "situation": None, "sample_index": 1, "teacher_id": "t-Hi-1",
                                "student_id": "s-Hi-1", "tokens": pairs[1]["meta"]["tokens"]}
    assert card.inputs == card.outputs == 3 and not card.drops and not card.warnings


def test_meta_names_the_trait_and_situation_of_the_prompt(tokenizer):
    constitution = Constitution.model_validate({"name": "c", "traits": [
        {"statement": "I am curious.", "questions": ["Why is the sea salty?"]},
        {"statement": "I am careful.", "questions": [{"text": "Is this email from my bank?", "situation": "scam"}]},
    ]})
    teachers = [teacher("Is this email from my bank?", "Let us check."), teacher("Something generic", "Sure.")]
    students = [student("Is this email from my bank?", "Yes."), student("Something generic", "Ok.")]

    pairs, _ = build_pairs(teachers, students, tokenizer, constitution=constitution)

    assert [(p["meta"]["trait"], p["meta"]["situation"]) for p in pairs] == [(1, "scam"), (None, None)]


def test_records_without_a_partner_are_dropped_or_reported(tokenizer):
    teachers = [teacher("Hi", "Hello.", 0), teacher("Hi", "Hello again.", 1)]
    students = [student("Hi", "Hey.", 0), student("Other", "Stray.", 0)]

    pairs, card = build_pairs(teachers, students, tokenizer)

    assert len(pairs) == 1
    assert funnel(card)[0] == ("matched", 1, 1)
    assert card.drops["unmatched"].count == 1 and card.drops["unmatched"].examples[0]["teacher id"] == "t-Hi-1"
    assert any("1 student records have no teacher record" in w for w in card.warnings)


# -- filters -------------------------------------------------------------------------------------


def test_each_filter_drops_its_own_cases_in_order(tokenizer):
    cases = {
        "ok": ("Fine.", "Also fine."),
        "empty-teacher": ("   ", "Answer."),
        "empty-student": ("Answer.", ""),
        "cut-teacher": ("I think that the", "Answer."),
        "cut-student": ("Answer.", "Well, first you"),
        "length-limit": ("Ends well.", "Answer."),
        "long": ("word " * 300 + "end.", "Short."),
    }
    teachers, students = [], []
    for prompt, (t, s) in cases.items():
        teachers.append(teacher(prompt, t, finish="length" if prompt == "length-limit" else "stop"))
        students.append(student(prompt, s))

    pairs, card = build_pairs(teachers, students, tokenizer, PairSettings(max_length=200))

    assert [p["prompt"][0]["content"] for p in pairs] == ["ok"]
    assert funnel(card) == [("matched", 0, 7), ("non-empty", 2, 5), ("complete", 3, 2), ("fits", 1, 1)]
    assert {reason: entry.count for reason, entry in card.drops.items()} == {
        "empty": 2, "truncated": 3, "too_long": 1}
    assert [e["side"] for e in card.drops["empty"].examples] == ["teacher", "student"]
    whys = [e["why"] for e in card.drops["truncated"].examples]
    assert whys == ["ends with 'I think that the'", "ends with 'Well, first you'", "hit the token limit"]
    assert card.drops["too_long"].examples[0]["tokens"] > 200

    kept, card = build_pairs(teachers, students, tokenizer, PairSettings(max_length=200, keep_truncated=True))
    assert [p["prompt"][0]["content"] for p in kept] == ["ok", "cut-teacher", "cut-student", "length-limit"]
    assert [name for name, _, _ in funnel(card)] == ["matched", "non-empty", "fits"]


@pytest.mark.parametrize("text", [
    "Done.", "Really!", "Why?", "Well…", "(see above)", "He said \"yes\"", "It's `x`", "**Bold.**",
    "Here:\n```python\nprint(1)\n```", "Good luck! 😊", "Cheers 👍🏽", "Thanks ❤️", "  Trailing space.  \n",
])
def test_finished_replies_end_cleanly(text):
    assert ends_cleanly(text)


@pytest.mark.parametrize("text", ["", "   ", "and then the", "Steps:", "1. Open the", "```python\nprint(1)", "x ="])
def test_unfinished_replies_do_not(text):
    assert not ends_cleanly(text)


def test_endings_are_configurable():
    assert not ends_cleanly("Good luck 😊", PairSettings(emoji_ends_reply=False))
    assert ends_cleanly("Steps:", PairSettings(endings=(":",)))


def test_length_is_measured_under_the_students_chat_template(tokenizer):
    reply = "A tidy answer."
    conversation = [user("Hi"), {"role": "assistant", "content": reply}]
    text = chat.render(tokenizer, conversation, add_generation_prompt=False)
    exact = len(tokenizer(text, add_special_tokens=False)["input_ids"])

    fits, _ = build_pairs([teacher("Hi", reply)], [student("Hi", "Ok.")], tokenizer, PairSettings(max_length=exact))
    assert fits[0]["meta"]["tokens"] == exact
    with pytest.raises(CharlabError, match=rf"max_length={exact - 1} is shorter .* the shortest is {exact} tokens"):
        build_pairs([teacher("Hi", reply)], [student("Hi", "Ok.")], tokenizer, PairSettings(max_length=exact - 1))


# -- names and placeholders ----------------------------------------------------------------------


def test_replace_names_is_whole_word_and_keeps_the_case_of_the_form():
    text = "I'm Sage. sage here; SAGE loud. Sagebrush and Sage's hat. GLM-4 too, sageness."
    out, n = replace_names(text, ["Sage", "GLM-4"], "Nova")
    assert out == "I'm Nova. nova here; NOVA loud. Sagebrush and Nova's hat. Nova too, sageness."
    assert n == 5
    assert replace_names("Hello.", [], "Nova") == ("Hello.", 0)


def test_names_are_replaced_in_chosen_replies_only(tokenizer):
    teachers = [teacher("Is Sage a good name?", "As Sage, I like it.")]
    students = [student("Is Sage a good name?", "Sage is a herb.")]
    settings = PairSettings(teacher_names=("Sage",), student_name="Nova")

    pairs, card = build_pairs(teachers, students, tokenizer, settings)

    assert pairs[0]["prompt"][0]["content"] == "Is Sage a good name?"
    assert pairs[0]["chosen"][0]["content"] == "As Nova, I like it."
    assert pairs[0]["rejected"][0]["content"] == "Sage is a herb."
    assert card.tables["name replacement"][0]["names replaced"] == 1


def test_teacher_names_need_a_student_name():
    with pytest.raises(ValidationError, match="student_name"):
        PairSettings(teacher_names=("Sage",))


def test_placeholders_are_found_but_code_shell_and_latex_braces_are_not():
    assert find_placeholders("I am {NAME}, made by {{COMPANY_NAME}}.") == ["{NAME}", "{{COMPANY_NAME}}"]
    assert find_placeholders('print(f"Hi {name}")  echo ${HOME}  $\\text{ATP}$  x{2}  {A}') == []


def test_a_surviving_placeholder_fails_the_stage(tokenizer):
    teachers = [teacher("Who are you?", "I am {NAME}, your assistant.", rid="t-7"), teacher("Hi", "Hello.")]
    students = [student("Who are you?", "A model."), student("Hi", "Hey.")]

    with pytest.raises(CharlabError, match=r"1 unformatted template placeholders.*\{NAME\} in the chosen of teacher "
                                           r"record t-7"):
        build_pairs(teachers, students, tokenizer)
    pairs, _ = build_pairs(teachers, students, tokenizer, PairSettings(placeholder_pattern=None))
    assert len(pairs) == 2


def test_a_placeholder_in_a_dropped_pair_does_not_fail(tokenizer):
    teachers = [teacher("Who are you?", "I am {NAME} and"), teacher("Hi", "Hello.")]
    students = [student("Who are you?", "A model."), student("Hi", "Hey.")]
    pairs, card = build_pairs(teachers, students, tokenizer)
    assert len(pairs) == 1 and card.drops["truncated"].count == 1


# -- output --------------------------------------------------------------------------------------


def test_written_pairs_load_with_datasets_and_the_card_sits_next_to_them(tokenizer, tmp_path):
    from datasets import load_dataset

    constitution = Constitution.model_validate({"name": "c", "traits": [
        {"statement": "I am careful.", "questions": [{"text": "Is this a scam?", "situation": "scam"}, "Hello?"]}]})
    teachers = [teacher("Hello?", "Hi!"), teacher("Is this a scam?", "Probably, yes."), teacher("Bye", "")]
    students = [student("Hello?", "Hey."), student("Is this a scam?", "No."), student("Bye", "Bye.")]
    pairs, card = build_pairs(teachers, students, tokenizer, constitution=constitution)

    path = write_pairs(tmp_path / "pairs.jsonl", pairs, card)

    dataset = load_dataset("json", data_files=str(path), split="train")
    assert dataset.num_rows == 2
    assert set(dataset.column_names) == {"prompt", "chosen", "rejected", "meta"}
    assert dataset[1]["chosen"] == [{"role": "assistant", "content": "Probably, yes."}]
    assert [row["situation"] for row in dataset["meta"]] == [None, "scam"]
    json_card, md_card = card_paths(path)
    assert json_card.name == "pairs.card.json" and md_card.name == "pairs.card.md"
    assert DatasetCard.model_validate_json(json_card.read_text()) == card
    assert "| non-empty | 1 | 2 |" in md_card.read_text()
    assert [json.loads(line) for line in path.read_text().splitlines()] == pairs


# -- bad input -----------------------------------------------------------------------------------


def test_a_teacher_that_returns_nothing_is_an_error_not_an_empty_training_set(tokenizer):
    teachers = [teacher(p, "") for p in ("a", "b", "c")]
    students = [student(p, "Fine.") for p in ("a", "b", "c")]
    with pytest.raises(CharlabError, match=r"all 3 teacher records were dropped.*empty: 3 \(a model returned no text"):
        build_pairs(teachers, students, tokenizer)


def test_mixed_reasons_are_all_named_when_everything_is_dropped(tokenizer):
    teachers = [teacher("a", ""), teacher("b", "cut off"), teacher("c", "Fine.")]
    students = [student("a", "Fine."), student("b", "Fine.")]
    with pytest.raises(CharlabError, match=r"unmatched: 1 .*empty: 1 .*truncated: 1 ") as error:
        build_pairs(teachers, students, tokenizer)
    assert "max_length" not in str(error.value)


def test_malformed_records_name_the_record_and_field(tokenizer):
    bad = teacher("a", "Fine.")
    del bad["response"]
    with pytest.raises(CharlabError, match=r"teacher record 1: response: Field required; pass generation records"):
        build_pairs([teacher("b", "Ok."), bad], [], tokenizer)
