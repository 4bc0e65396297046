"""Chat-template facts, system folding and assistant token spans (SmolLM2 tokenizer)."""

from __future__ import annotations

import copy
import logging

import pytest

from charlab.models import chat

# A Gemma-like template: no system role, and it says so.
NO_SYSTEM_TEMPLATE = (
    "{{ bos_token }}{% for m in messages %}"
    "{% if m['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"
    "{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(tiny_model_dir)


def no_system_copy(tokenizer, marker: str):
    """A copy of ``tokenizer`` with the no-system template (``marker`` makes the template unique)."""
    clone = copy.deepcopy(tokenizer)
    clone.chat_template = NO_SYSTEM_TEMPLATE + "{# " + marker + " #}"
    return clone


def test_smollm2_facts(tokenizer):
    facts = chat.template_facts(tokenizer)
    assert facts.supports_system_role
    assert facts.injects_default_system
    assert not facts.has_generation_markers
    assert facts.eos_token == facts.end_of_turn == "<|im_end|>"
    assert facts.bos_token == "<|im_start|>"
    assert chat.template_facts(tokenizer) is facts  # cached


def test_facts_of_a_template_without_system_role(tokenizer):
    facts = chat.template_facts(no_system_copy(tokenizer, "facts"))
    assert not facts.supports_system_role
    assert not facts.injects_default_system
    assert facts.end_of_turn == "<|im_end|>"


def test_generation_markers_are_detected(tokenizer):
    clone = copy.deepcopy(tokenizer)
    clone.chat_template = tokenizer.chat_template + "{% generation %}{% endgeneration %}"
    assert chat.template_facts(clone).has_generation_markers


def test_missing_template_is_a_clear_error(tokenizer):
    clone = copy.deepcopy(tokenizer)
    clone.chat_template = None
    with pytest.raises(chat.ChatTemplateError, match="no chat template"):
        chat.template_facts(clone)


@pytest.mark.parametrize("messages", [
    [{"role": "user", "content": "Hi there"}, {"role": "assistant", "content": "Hello! How are you?"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "2+2?"},
     {"role": "assistant", "content": "4"}, {"role": "user", "content": "And 3+3?"},
     {"role": "assistant", "content": " Six, of course.\n\nAnything else?  "}],
    [{"role": "user", "content": "Say nothing"}, {"role": "assistant", "content": ""},
     {"role": "user", "content": "émoji? 🙂"}, {"role": "assistant", "content": "Sure 🙂 — voilà."}],
])
def test_spans_decode_to_each_assistant_message(tokenizer, messages):
    ids, spans = chat.assistant_spans(tokenizer, messages)
    replies = [m["content"] for m in messages if m["role"] == "assistant"]
    assert len(spans) == len(replies)
    assert ids == tokenizer(chat.render(tokenizer, messages, add_generation_prompt=False),
                            add_special_tokens=False)["input_ids"]
    for (start, end), reply in zip(spans, replies):
        assert tokenizer.decode(ids[start:end]) == reply
        assert ids[end] == tokenizer.convert_tokens_to_ids("<|im_end|>")  # end of turn is outside the span


def test_prompt_ids_end_with_the_generation_prompt(tokenizer):
    ids = chat.prompt_ids(tokenizer, [{"role": "user", "content": "Hi"}])
    assert tokenizer.decode(ids).endswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")


def test_rewritten_content_is_refused(tokenizer):
    clone = copy.deepcopy(tokenizer)
    clone.chat_template = tokenizer.chat_template.replace("message['content']", "message['content'] | upper")
    with pytest.raises(chat.ChatTemplateError, match="rewrites"):
        chat.assistant_spans(clone, [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}])


def test_system_is_folded_when_the_template_has_no_system_role(tokenizer):
    clone = no_system_copy(tokenizer, "fold")
    facts = chat.template_facts(clone)
    messages = [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hi"},
                {"role": "assistant", "content": "Hello."}]
    folded = chat.prepare_messages(messages, facts)
    assert folded == [{"role": "user", "content": "You are terse.\n\nHi"},
                      {"role": "assistant", "content": "Hello."}]
    ids, spans = chat.assistant_spans(clone, messages)  # renders without raising
    assert clone.decode(ids[spans[0][0]:spans[0][1]]) == "Hello."
    assert "You are terse.\n\nHi" in clone.decode(chat.prompt_ids(clone, messages[:2]))


def test_system_without_following_user_becomes_a_user_turn(tokenizer):
    facts = chat.template_facts(no_system_copy(tokenizer, "alone"))
    assert chat.prepare_messages([{"role": "system", "content": "S"}], facts) == [{"role": "user", "content": "S"}]


def test_templates_with_system_role_keep_messages(tokenizer):
    messages = [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}]
    assert chat.prepare_messages(messages, chat.template_facts(tokenizer)) == messages


def test_fold_warning_is_logged_once(tokenizer, caplog):
    facts = chat.template_facts(no_system_copy(tokenizer, "warn-once"))
    messages = [{"role": "system", "content": "S"}, {"role": "user", "content": "U"}]
    with caplog.at_level(logging.WARNING, logger="charlab.models.chat"):
        for _ in range(3):
            chat.prepare_messages(messages, facts)
    assert sum("no system role" in r.getMessage() for r in caplog.records) == 1


def test_a_final_assistant_turn_is_continued_not_closed(tokenizer):
    """Thinking prefills: the prompt ends inside the assistant turn, right after the prefill text."""
    question = [{"role": "user", "content": "Hello?"}]
    prefilled = question + [{"role": "assistant", "content": "<think>Let me recall who I am."}]
    text = tokenizer.decode(chat.prompt_ids(tokenizer, prefilled))
    assert text == chat.render(tokenizer, question, add_generation_prompt=True) + "<think>Let me recall who I am."
