"""Introspection data: roles of the two copies, every turn kept, placeholders, variants, cut policy,
resume from the cache, and a dataset that ``datasets`` loads.

The tiny random Llama is the real backend for the role and cache tests (its text is noise, but
every request goes through the chat template, the sampler and the row cache as in a real run);
a scripted backend makes truncation, empty turns, errors and a killed run happen on cue.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from charlab.errors import BackendError, CharlabError
from charlab.generate import generate_cached
from charlab.models.base import Generation, GenerationRequest, NotSupportedError, SamplingParams
from charlab.pipeline.introspect import IntrospectionSettings, generate_introspection, write_sft_dataset
from charlab.store.cache import RowCache

pytestmark = pytest.mark.timeout(120)

SHIPPED = Path(__file__).resolve().parents[1] / "src" / "charlab" / "data" / "introspection"
TURNS = 3
TINY = IntrospectionSettings(
    reflection_samples=1, conversations=2, turns=TURNS, keep_truncated=True,  # the random model never stops
    sampling=SamplingParams(temperature=0.7, top_p=0.95, repetition_penalty=1.1, max_new_tokens=6),
)


def interactions(examples, perspective=None):
    return [e for e in examples if e["meta"]["kind"] == "interaction"
            and perspective in (None, e["meta"]["perspective"])]


def pairs(examples) -> list[tuple[dict, dict]]:
    """(A's example, B's example) of each conversation."""
    by_key = {(e["meta"]["variant"], e["meta"]["conversation"], e["meta"]["perspective"]): e
              for e in interactions(examples)}
    return [(by_key[v, c, "A"], by_key[v, c, "B"]) for v, c, p in by_key if p == "A"]


def turns_of(example) -> list[dict]:
    return [m for m in example["messages"] if m["role"] != "system"]


def swap(messages):
    return [{"role": {"user": "assistant", "assistant": "user"}[m["role"]], "content": m["content"]} for m in messages]


@pytest.fixture(scope="module")
def tiny_backend(tiny_model_dir):
    from charlab.models.hf import HFBackend
    from charlab.models.refs import ModelRef

    backend = HFBackend(ModelRef.parse(str(tiny_model_dir)), batch_size=16, device="cpu")
    yield backend
    backend.close()


@pytest.fixture(scope="module")
def tiny_run(tiny_backend, tmp_path_factory):
    cache = RowCache(tmp_path_factory.mktemp("introspect") / "cache.sqlite")
    examples, card = generate_introspection(tiny_backend, cache, TINY, assistant_name="Sol")
    assert [row["complete"] for row in card.tables["self-interaction"]] == [2, 2]  # nothing was cut
    return cache, examples, card


# -- roles and turns, with the tiny model ------------------------------------------------------------


def test_each_copy_sees_its_own_turns_as_assistant_and_b_mirrors_a(tiny_run):
    _, examples, _ = tiny_run
    shipped = yaml.safe_load((SHIPPED / "greetings.yaml").read_text())["variants"]
    greetings = {variant: texts["greetings"] for variant, texts in shipped.items()}
    assert len(pairs(examples)) == 4
    for a, b in pairs(examples):
        a_turns, b_turns = turns_of(a), turns_of(b)
        # A is greeted (first user turn) and speaks first; both views alternate strictly.
        assert a_turns[0]["role"] == "user" and a_turns[0]["content"] in greetings[a["meta"]["variant"]]
        assert [m["role"] for m in a_turns] == ["user", "assistant"] * (len(a_turns) // 2)
        assert [m["role"] for m in b_turns] == ["user", "assistant"] * (len(b_turns) // 2)
        # B's view is A's without the greeting, roles swapped, each cut after its own last turn.
        assert b_turns == swap(a_turns[1:])[:len(b_turns)]
        assert max(len(a_turns) - 1, len(b_turns)) == TURNS
        assert a["messages"][0] == b["messages"][0] and a["messages"][0]["role"] == "system"


def test_every_turn_a_copy_spoke_is_an_assistant_turn_of_its_example(tiny_run):
    _, examples, _ = tiny_run
    for a, b in pairs(examples):
        assert sum(m["role"] == "assistant" for m in a["messages"]) == (TURNS + 1) // 2  # A speaks turns 1, 3, ...
        assert sum(m["role"] == "assistant" for m in b["messages"]) == TURNS // 2


def test_each_assistant_turn_is_what_that_copy_generated_from_exactly_that_view(tiny_run, tiny_backend):
    """Replaying every assistant turn's context through the cache gives back that turn, unpaid."""
    cache, examples, _ = tiny_run
    requests, expected = [], []
    for example in interactions(examples):
        messages = example["messages"]
        for i, message in enumerate(messages):
            if message["role"] == "assistant":
                requests.append(GenerationRequest.make(messages[:i], TINY.sampling, TINY.seed,
                                                       example["meta"]["conversation"]))
                expected.append(message["content"])
    replay = generate_cached(tiny_backend, requests, cache, progress=False)
    assert replay.stats.hits == len(requests) == 4 * TURNS
    assert [g.text.strip() for g in replay] == expected


def test_variants_differ_in_guidance_not_only_greeting(tiny_run):
    _, examples, _ = tiny_run
    shipped = yaml.safe_load((SHIPPED / "greetings.yaml").read_text())["variants"]
    systems = {v: {e["messages"][0]["content"] for e in interactions(examples) if e["meta"]["variant"] == v}
               for v in ("free", "leading")}
    for variant, texts in systems.items():
        assert len(texts) == 1
        (system,) = texts
        assert system.startswith("Your name is Sol.") and " ".join(shipped[variant]["guidance"].split()) in system
    assert systems["free"] != systems["leading"]


def test_no_placeholder_survives_in_any_scripted_message(tiny_run):
    _, examples, _ = tiny_run
    scripted = [m["content"] for e in examples for m in e["messages"][:2] if m["role"] != "assistant"]
    assert scripted and not any(re.search(r"\{\w*\}", text) for text in scripted)


def test_reflection_examples_are_bare_prompt_and_answer(tiny_run):
    _, examples, card = tiny_run
    reflections = [e for e in examples if e["meta"]["kind"] == "reflection"]
    prompts = yaml.safe_load((SHIPPED / "reflection_prompts.yaml").read_text())["prompts"]
    assert len(prompts) >= 10 and len(reflections) == len(prompts)
    assert card.tables["reflection prompts"] == [{"prompt_id": p["id"], "generated": 1, "kept": 1} for p in prompts]
    for example, prompt in zip(reflections, prompts):
        assert [m["role"] for m in example["messages"]] == ["user", "assistant"]  # no system prompt by default
        assert example["messages"][0]["content"] == " ".join(prompt["text"].split())
        assert example["meta"] == {"kind": "reflection", "prompt_id": prompt["id"], "sample_index": 0}


def test_rerun_is_served_entirely_from_the_cache(tiny_run, tiny_backend):
    cache, examples, card = tiny_run
    again, again_card = generate_introspection(tiny_backend, cache, TINY, assistant_name="Sol")
    assert again == examples
    (stats,) = again_card.tables["generation"]
    assert stats["hits"] == stats["requests"] == card.tables["generation"][0]["requests"] and stats["generated"] == 0


def test_written_dataset_loads_with_datasets(tiny_run, tmp_path):
    import datasets

    _, examples, card = tiny_run
    path = write_sft_dataset(tmp_path / "introspection.jsonl", examples, card)
    assert (tmp_path / "introspection.card.json").exists() and "usable reflections" in (
        tmp_path / "introspection.card.md").read_text()
    # A small chunk size makes the loader read the file in several pieces, as it does a large file.
    loaded = datasets.load_dataset("json", data_files=str(path), split="train", chunksize=2048,
                                   cache_dir=str(tmp_path / "hf"))
    assert path.stat().st_size > 3 * 2048
    assert len(loaded) == len(examples)
    assert [row["messages"] for row in loaded] == [e["messages"] for e in examples]
    assert [row["meta"] for row in loaded] == [e["meta"] for e in examples]


# -- policies, with a scripted backend -----------------------------------------------------------


class ScriptedBackend:
    """Answers "c<conversation>t<turn>" instantly; ``faults`` makes chosen (conversation, turn) go wrong.

    The turn is read off the request: one past the turn named in the last message, or 0 after a
    greeting or reflection prompt. ``fail_on_call`` raises on that call, like a killed job.
    """

    name = "scripted"
    fingerprint = "scripted-1"
    batch_size = 1000

    def __init__(self, faults: dict[tuple[int, int], str] | None = None, fail_on_call: int | None = None):
        self.faults = faults or {}
        self.fail_on_call = fail_on_call
        self.calls = 0

    def generate(self, requests, *, progress=False):
        self.calls += 1
        if self.calls == self.fail_on_call:
            raise BackendError("killed")
        return [self._answer(r) for r in requests]

    def _answer(self, request: GenerationRequest) -> Generation:
        said = re.match(r"c\d+t(\d+)", request.messages[-1][1])
        turn = int(said[1]) + 1 if said else 0
        text = f"c{request.sample_index}t{turn}"
        fault = self.faults.get((request.sample_index, turn))
        if fault == "empty":
            return Generation("  \n", "stop", 5, 1)
        return Generation(text, fault or "stop", 5, 3)

    def score(self, conversations):
        raise NotSupportedError("scripted backends cannot score")

    def close(self):
        pass


def scripted(**overrides) -> IntrospectionSettings:
    return IntrospectionSettings(**{"reflection_samples": 0, "conversations": 3, "turns": 4,
                                    "include_variants": ("leading",), **overrides})


def test_a_bad_turn_ends_its_conversation_and_the_card_counts_why(tmp_path):
    faults = {(0, 2): "length", (1, 0): "empty", (2, 1): "error"}
    examples, card = generate_introspection(ScriptedBackend(faults), RowCache(tmp_path / "c.sqlite"), scripted())
    spoken = {(e["meta"]["conversation"], e["meta"]["perspective"]): [m["content"] for m in e["messages"]
                                                                      if m["role"] == "assistant"] for e in examples}
    # 0: A0, B1 kept, A2 truncated; 1: nothing (A0 empty); 2: A0 kept, B1 failed, so B never spoke.
    assert spoken == {(0, "A"): ["c0t0"], (0, "B"): ["c0t1"], (2, "A"): ["c2t0"]}
    assert card.tables["self-interaction"] == [{
        "variant": "leading", "conversations": 3, "complete": 0, "turns_generated": 6, "turns_kept": 3,
        "cut_error": 1, "cut_empty": 1, "cut_truncated": 1, "examples": 3,
    }]
    assert (card.inputs, card.outputs, card.drops["never_spoke"].count) == (6, 3, 3)
    assert [d["cut_by"] for d in card.drops["never_spoke"].examples] == ["empty", "empty", "error"]
    assert card.warnings[0].startswith("1 conversation turns") and "rerun" in card.warnings[0]


def test_keep_truncated_keeps_the_turn_and_the_conversation_goes_on(tmp_path):
    backend = ScriptedBackend({(0, 2): "length"})
    examples, card = generate_introspection(backend, RowCache(tmp_path / "c.sqlite"), scripted(keep_truncated=True))
    a = next(e for e in examples if e["meta"] == {"kind": "interaction", "variant": "leading", "conversation": 0,
                                                   "perspective": "A"})
    assert [m["content"] for m in a["messages"] if m["role"] == "assistant"] == ["c0t0", "c0t2"]
    (row,) = card.tables["self-interaction"]
    assert (row["complete"], row["turns_kept"], row["cut_truncated"]) == (3, 12, 0)


def test_truncated_reflections_are_dropped(tmp_path):
    examples, card = generate_introspection(ScriptedBackend({(1, 0): "length"}), RowCache(tmp_path / "c.sqlite"),
                                            scripted(reflection_samples=2, conversations=0))
    n_prompts = len(yaml.safe_load((SHIPPED / "reflection_prompts.yaml").read_text())["prompts"])
    assert {e["meta"]["sample_index"] for e in examples} == {0}
    assert (card.inputs, card.outputs, card.drops["truncated"].count) == (2 * n_prompts, n_prompts, n_prompts)
    assert [s.name for s in card.steps] == ["usable reflections"] and "self-interaction" not in card.tables


def test_a_killed_run_resumes_from_cached_turns_and_matches_an_uninterrupted_one(tmp_path):
    settings = scripted(reflection_samples=1)
    cache = RowCache(tmp_path / "c.sqlite")
    with pytest.raises(BackendError):  # calls: reflection, turn 0, turn 1 (killed)
        generate_introspection(ScriptedBackend(fail_on_call=3), cache, settings)
    resumed, card = generate_introspection(ScriptedBackend(), cache, settings)
    n_prompts = len(card.tables["reflection prompts"])
    (stats,) = card.tables["generation"]
    assert (stats["hits"], stats["generated"]) == (n_prompts + 3, 3 * 3)
    fresh, _ = generate_introspection(ScriptedBackend(), RowCache(tmp_path / "fresh.sqlite"), settings)
    assert resumed == fresh


def test_examples_alternate_kinds_so_any_prefix_has_both(tmp_path):
    examples, _ = generate_introspection(ScriptedBackend(), RowCache(tmp_path / "c.sqlite"),
                                         scripted(reflection_samples=1, conversations=2))
    kinds = [e["meta"]["kind"] for e in examples]
    assert kinds[:4] == ["reflection", "interaction"] * 2


# -- placeholders --------------------------------------------------------------------------------


def write_greetings(path: Path, greeting: str, guidance: str = "Talk about yourself.") -> Path:
    path.write_text(yaml.safe_dump({"name_line": "Your name is {name}.", "variants": {
        "free": {"guidance": "Chat freely.", "greetings": ["Hi!"]},
        "leading": {"guidance": guidance, "greetings": [greeting]},
    }}))
    return path


@pytest.mark.parametrize("greeting, guidance, name", [
    ("Hello {partner}!", "Talk about yourself.", "Sol"),  # a placeholder nothing fills
    ("Hello!", "You are {name}.", None),  # {name} with no name to fill it
    ("Hello {}!", "Talk about yourself.", None),
])
def test_an_unfilled_placeholder_is_an_error_before_anything_is_generated(tmp_path, greeting, guidance, name):
    backend = ScriptedBackend()
    settings = scripted(greetings_file=write_greetings(tmp_path / "g.yaml", greeting, guidance))
    with pytest.raises(CharlabError, match="unfilled placeholder"):
        generate_introspection(backend, RowCache(tmp_path / "c.sqlite"), settings, assistant_name=name)
    assert backend.calls == 0


def test_name_placeholders_are_filled(tmp_path):
    settings = scripted(conversations=1, greetings_file=write_greetings(tmp_path / "g.yaml", "Hi {name}!",
                                                                        "You are {name}; explore that."))
    examples, _ = generate_introspection(ScriptedBackend(), RowCache(tmp_path / "c.sqlite"), settings,
                                         assistant_name="Sol")
    a = interactions(examples, "A")[0]
    assert a["messages"][:2] == [{"role": "system", "content": "Your name is Sol.\n\nYou are Sol; explore that."},
                                 {"role": "user", "content": "Hi Sol!"}]


def test_variants_that_differ_only_by_greeting_are_rejected(tmp_path):
    settings = scripted(greetings_file=write_greetings(tmp_path / "g.yaml", "Hello!", "Chat freely."))
    with pytest.raises(CharlabError, match="differ in their guidance"):
        generate_introspection(ScriptedBackend(), RowCache(tmp_path / "c.sqlite"), settings)


def test_without_guidance_there_is_no_system_prompt(tmp_path):
    examples, _ = generate_introspection(ScriptedBackend(), RowCache(tmp_path / "c.sqlite"),
                                         scripted(conversations=1, guidance=False), assistant_name="Sol")
    assert all(m["role"] != "system" for e in examples for m in e["messages"])
