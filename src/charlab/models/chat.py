"""Chat-template facts, prompt rendering and the token spans of assistant turns.

Every backend, trainer and activation hook formats conversations through this module so that a
prompt means the same tokens everywhere. Two things vary between chat templates and matter for
controlled experiments:

* some have no system role (Gemma raises on it): the system text is then folded into the next
  user turn as ``SYSTEM + blank line + USER`` (``fold_system``), with one warning per template;
* some inject a default system prompt when none is given (SmolLM2, Llama 3.1): ``TemplateFacts``
  records it so experiments can decide to pass an explicit one.

``assistant_spans`` finds exactly which tokens carry each assistant message's content (not its role
header, not its end-of-turn token). Loss masks and response-only activation means rely on it, so it
refuses templates that rewrite content instead of guessing.
"""

from __future__ import annotations

import logging
import re
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

from charlab.errors import ModelError
from charlab.io import stable_hash
from charlab.models.base import check_messages

log = logging.getLogger(__name__)

_PROBE_SYSTEM = "charlab probe: system text 7f3a"
_PROBE_USER = "charlab probe: user text 2c91"
_PROBE_USER_2 = "charlab probe: second user text 5d04"
_PROBE_REPLY = "charlab probe: assistant text 9be6"
_GENERATION_TAG = re.compile(r"{%-?\s*generation\s*-?%}")

_facts_cache: weakref.WeakKeyDictionary[Any, tuple[str, TemplateFacts]] = weakref.WeakKeyDictionary()
_fold_warned: set[str] = set()


class ChatTemplateError(ModelError):
    """A tokenizer's chat template is missing or formats a conversation in an unusable way."""


@dataclass(frozen=True)
class TemplateFacts:
    """What a tokenizer's chat template does, found by rendering probe conversations."""

    source: str  # the tokenizer's name_or_path, for messages
    template_hash: str
    supports_system_role: bool
    injects_default_system: bool  # adds text of its own when the conversation has no system turn
    has_generation_markers: bool  # {% generation %} blocks (for return_assistant_tokens_mask)
    bos_token: str | None
    eos_token: str | None
    end_of_turn: str | None  # the special token that closes an assistant turn, e.g. <|im_end|>


class AssistantSpans(NamedTuple):
    """The rendered conversation's token ids and, per assistant turn, its content as [start, end)."""

    input_ids: list[int]
    spans: list[tuple[int, int]]


def _template_text(tokenizer) -> str:
    if not getattr(tokenizer, "chat_template", None):
        raise ChatTemplateError(
            f"tokenizer {tokenizer.name_or_path!r} has no chat template; use an instruct/chat model, "
            "or set tokenizer.chat_template (a chat_template.jinja next to tokenizer_config.json)")
    return tokenizer.get_chat_template()


def render(tokenizer, messages: Sequence[dict], *, add_generation_prompt: bool) -> str:
    """The chat template applied to ``messages`` as text; template failures name the tokenizer."""
    _template_text(tokenizer)
    try:
        return tokenizer.apply_chat_template(list(messages), tokenize=False,
                                             add_generation_prompt=add_generation_prompt)
    except Exception as exc:  # jinja raises arbitrary errors via raise_exception()
        roles = "/".join(m["role"] for m in messages)
        raise ChatTemplateError(
            f"the chat template of {tokenizer.name_or_path!r} failed on a {roles} conversation: {exc}; "
            "check the conversation's roles and order, or use a different template") from None


def _try_render(tokenizer, messages: list[dict], **kwargs) -> str | None:
    try:
        return tokenizer.apply_chat_template(messages, tokenize=False, **kwargs)
    except Exception:
        return None


def _encode(tokenizer, text: str) -> tuple[list[int], list[tuple[int, int]]]:
    """Token ids and character offsets of rendered text (the template already holds special tokens)."""
    if not getattr(tokenizer, "is_fast", False):
        raise ChatTemplateError(f"tokenizer {tokenizer.name_or_path!r} is not a fast tokenizer; token spans "
                                "need its offset mapping: load it with use_fast=True (tokenizer.json)")
    enc = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    return list(enc["input_ids"]), [tuple(o) for o in enc["offset_mapping"]]


def _special_ids(tokenizer) -> set[int]:
    ids = set(tokenizer.all_special_ids)
    ids.update(i for i, tok in tokenizer.added_tokens_decoder.items() if tok.special)
    return ids


def _injects_default_system(tokenizer) -> bool:
    """Whether a one-user-turn render holds more than that user turn (and the BOS token).

    The scaffolding of a plain user turn is learned from the difference between a two-round and a
    one-round-plus-reply conversation; anything else in the one-turn render is the template's own.
    """
    user, reply = {"role": "user", "content": _PROBE_USER}, {"role": "assistant", "content": _PROBE_REPLY}
    one = _try_render(tokenizer, [user])
    head = _try_render(tokenizer, [user, reply])
    two = _try_render(tokenizer, [user, reply, {"role": "user", "content": _PROBE_USER_2}])
    if one is None or head is None or two is None or not two.startswith(head):
        return False
    user_turn = two[len(head):].replace(_PROBE_USER_2, _PROBE_USER)
    extra = one.replace(user_turn, "", 1)
    if tokenizer.bos_token:
        extra = extra.replace(tokenizer.bos_token, "", 1)
    return bool(extra.strip())


def _end_of_turn(tokenizer) -> str | None:
    """The special token right after an assistant message's content, if there is one."""
    text = _try_render(tokenizer, [{"role": "user", "content": _PROBE_USER},
                                   {"role": "assistant", "content": _PROBE_REPLY}])
    if text is None or _PROBE_REPLY not in text:
        return None
    end = text.rindex(_PROBE_REPLY) + len(_PROBE_REPLY)
    ids, offsets = _encode(tokenizer, text)
    after = next((i for i, (a, b) in zip(ids, offsets) if a >= end and b > a), None)
    if after is None or after not in _special_ids(tokenizer):
        return None
    return tokenizer.convert_ids_to_tokens(after)


def template_facts(tokenizer) -> TemplateFacts:
    """Probe the tokenizer's chat template (cached per tokenizer until its template changes)."""
    template = _template_text(tokenizer)
    cached = _facts_cache.get(tokenizer)
    if cached and cached[0] == template:
        return cached[1]
    with_system = _try_render(tokenizer, [{"role": "system", "content": _PROBE_SYSTEM},
                                          {"role": "user", "content": _PROBE_USER}])
    facts = TemplateFacts(
        source=str(tokenizer.name_or_path),
        template_hash=stable_hash(template),
        supports_system_role=with_system is not None and _PROBE_SYSTEM in with_system,
        injects_default_system=_injects_default_system(tokenizer),
        has_generation_markers=bool(_GENERATION_TAG.search(template)),
        bos_token=tokenizer.bos_token,
        eos_token=tokenizer.eos_token,
        end_of_turn=_end_of_turn(tokenizer),
    )
    _facts_cache[tokenizer] = (template, facts)
    return facts


def fold_system(system: str, user: str) -> str:
    """How a system prompt travels inside a user turn when the template has no system role."""
    return f"{system}\n\n{user}" if user else system


def prepare_messages(messages: Sequence[dict], facts: TemplateFacts) -> list[dict[str, str]]:
    """The conversation as the template can take it: system turns folded into the next user turn.

    Templates with a system role get the messages unchanged. Otherwise each system turn is prepended
    to the user turn that follows it (``fold_system``); a system turn with no user turn after it
    becomes a user turn of its own. The first fold per template logs a warning.
    """
    msgs = check_messages(messages)
    if facts.supports_system_role or not any(m["role"] == "system" for m in msgs):
        return msgs
    key = f"{facts.source}:{facts.template_hash}"
    if key not in _fold_warned:
        _fold_warned.add(key)
        log.warning("the chat template of %s has no system role; system prompts are folded into the "
                    "next user turn as 'SYSTEM\\n\\nUSER'", facts.source)
    out: list[dict[str, str]] = []
    pending: list[str] = []
    for msg in msgs:
        if msg["role"] == "system":
            pending.append(msg["content"])
            continue
        if pending and msg["role"] == "user":
            msg = {"role": "user", "content": fold_system("\n\n".join(pending), msg["content"])}
        elif pending:
            out.append({"role": "user", "content": "\n\n".join(pending)})
        pending = []
        out.append(msg)
    if pending:
        out.append({"role": "user", "content": "\n\n".join(pending)})
    return out


def prompt_ids(tokenizer, messages: Sequence[dict]) -> list[int]:
    """Token ids of the prompt that asks the model for the next assistant turn.

    A conversation that ends with an assistant turn is a prefill: the model continues that text
    (the generation prompt is rendered before it, and its end-of-turn is left off).
    """
    msgs = prepare_messages(messages, template_facts(tokenizer))
    if msgs and msgs[-1]["role"] == "assistant":
        text = render(tokenizer, msgs[:-1], add_generation_prompt=True) + msgs[-1]["content"]
    else:
        text = render(tokenizer, msgs, add_generation_prompt=True)
    return _encode(tokenizer, text)[0]


def _content_range(tokenizer, msgs: list[dict], i: int, text: str) -> tuple[int, int]:
    """Character range of assistant turn ``i``'s content inside the full render ``text``."""
    prefix = render(tokenizer, msgs[:i], add_generation_prompt=True)
    content = msgs[i]["content"]
    where = f"{tokenizer.name_or_path!r}, message {i}"
    if not text.startswith(prefix):
        raise ChatTemplateError(
            f"chat template of {where}: the conversation up to this assistant turn renders differently "
            "inside the full conversation (the template rewrites earlier turns), so its tokens cannot "
            "be located exactly; use a template that renders turns independently")
    rest = text[len(prefix):]
    # Templates such as Llama 3's and Gemma's trim surrounding whitespace; accept exactly that.
    for candidate in (content, content.strip()):
        if rest.startswith(candidate):
            return len(prefix), len(prefix) + len(candidate)
    raise ChatTemplateError(
        f"chat template of {where}: the assistant content does not follow its header verbatim (the "
        "template rewrites it), so its tokens cannot be located exactly; use a template that copies "
        "assistant content unchanged")


def _token_span(offsets: list[tuple[int, int]], start: int, end: int, where: str) -> tuple[int, int]:
    """Map a character range to the tokens that cover exactly it."""
    inside = [k for k, (a, b) in enumerate(offsets) if start <= a and b <= end and b > a]
    if any(a < start < b or a < end < b for a, b in offsets):
        raise ChatTemplateError(f"{where}: a token straddles the edge of the assistant content (the "
                                "tokenizer merges it with the template's text), so no exact token span exists")
    if not inside:  # empty content
        k = next((k for k, (a, _) in enumerate(offsets) if a >= start), len(offsets))
        return k, k
    return inside[0], inside[-1] + 1


def assistant_spans(tokenizer, messages: Sequence[dict]) -> AssistantSpans:
    """Render ``messages`` (system folded if needed) and locate every assistant turn's content tokens.

    Each span is ``[start, end)`` into ``input_ids`` and decodes to exactly that turn's content (to
    the content without surrounding whitespace, for templates that trim it).
    """
    msgs = prepare_messages(messages, template_facts(tokenizer))
    text = render(tokenizer, msgs, add_generation_prompt=False)
    ids, offsets = _encode(tokenizer, text)
    spans = []
    for i, msg in enumerate(msgs):
        if msg["role"] == "assistant":
            start, end = _content_range(tokenizer, msgs, i, text)
            spans.append(_token_span(offsets, start, end, f"{tokenizer.name_or_path!r}, message {i}"))
    return AssistantSpans(ids, spans)
