"""Introspection data: roles of the two copies, every turn kept, placeholders, variants, cut policy,
resume from the cache, and a dataset that ``datasets`` loads.

The tiny random Llama is the real backend for the role and cache tests (its text is noise, but
every request goes through the chat template, the sampler and the row cache as in a real run);
the OpenAI backend talking to a fake server (tests/fake_openai.py) makes truncation, empty turns and
a killed run happen on cue.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml

from charlab.errors import BackendError, CharlabError
from charlab.models.base import GenerationRequest, SamplingParams
from charlab.models.openai_compat import OpenAIBackend, OpenAIConfig, api_seed
from charlab.pipeline.introspect import IntrospectionSettings, generate_introspection, write_sft_dataset
from charlab.store.cache import RowCache
from charlab.store.generation import generate_cached
from fake_openai import FakeOpenAI, Fault

pytestmark = pytest.mark.timeout(120)

SHIPPED = Path(__file__).resolve().parents[2] / "src" / "charlab" / "data" / "introspection"
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


# -- policies, with a scripted server --------------------------------------------------------------


def api_backend(server: FakeOpenAI) -> OpenAIBackend:
    """The real API backend pointed at the fake server, retrying fast."""
    return OpenAIBackend(OpenAIConfig(base_url=server.url, model="copies", max_retries=2,
                                      backoff_base_s=0.01, backoff_max_s=0.05))


# The backend sends api_seed(seed, sample_index); sample_index is the conversation (or reflection sample).
SAMPLE_OF_SEED = {api_seed(0, k): k for k in range(8)}


def copies(faults: dict[tuple[int, int], str] | None = None):
    """Answers "c<conversation>t<turn>"; ``faults`` makes chosen (conversation, turn) empty or cut off.

    The turn is read off the request: one past the turn named in the last message, or 0 after a
    greeting or reflection prompt. Every answer is one word, the whole of ``max_new_tokens=1``
    (see ``scripted``), so a "length" answer is one with more words than that, which the server cuts.
    """
    faults = faults or {}

    def reply(body: dict) -> str:
        said = re.match(r"c\d+t(\d+)", body["messages"][-1]["content"])
        turn = int(said[1]) + 1 if said else 0
        sample = SAMPLE_OF_SEED[body["seed"]]
        text = f"c{sample}t{turn}"
        fault = faults.get((sample, turn))
        if fault == "empty":
            return ""
        if fault == "length":
            return f"{text} and more than max_tokens allows"
        return text

    return reply


def scripted(**overrides) -> IntrospectionSettings:
    sampling = SamplingParams(temperature=0.7, top_p=0.95, repetition_penalty=1.1, max_new_tokens=1)
    return IntrospectionSettings(**{"reflection_samples": 0, "conversations": 3, "turns": 4,
                                    "include_variants": ("leading",), "sampling": sampling, **overrides})


def run_scripted(tmp_path, settings: IntrospectionSettings, faults=None, **kwargs):
    with FakeOpenAI(reply=copies(faults)) as server, api_backend(server) as backend:
        return generate_introspection(backend, RowCache(tmp_path / "c.sqlite"), settings, **kwargs)


def test_a_bad_turn_ends_its_conversation_and_the_card_counts_why(tmp_path):
    faults = {(0, 2): "length", (1, 0): "empty", (2, 1): "length"}
    examples, card = run_scripted(tmp_path, scripted(), faults)
    spoken = {(e["meta"]["conversation"], e["meta"]["perspective"]): [m["content"] for m in e["messages"]
                                                                      if m["role"] == "assistant"] for e in examples}
    # 0: A0, B1 kept, A2 truncated; 1: nothing (A0 empty); 2: A0 kept, B1 truncated, so B never spoke.
    assert spoken == {(0, "A"): ["c0t0"], (0, "B"): ["c0t1"], (2, "A"): ["c2t0"]}
    assert card.tables["self-interaction"] == [{
        "variant": "leading", "conversations": 3, "complete": 0, "turns_generated": 6, "turns_kept": 3,
        "cut_empty": 1, "cut_truncated": 2, "examples": 3,
    }]
    assert (card.inputs, card.outputs, card.drops["never_spoke"].count) == (6, 3, 3)
    assert [d["cut_by"] for d in card.drops["never_spoke"].examples] == ["empty", "empty", "truncated"]
    assert card.warnings == []


def test_keep_truncated_keeps_the_turn_and_the_conversation_goes_on(tmp_path):
    examples, card = run_scripted(tmp_path, scripted(keep_truncated=True), {(0, 2): "length"})
    a = next(e for e in examples if e["meta"] == {"kind": "interaction", "variant": "leading", "conversation": 0,
                                                   "perspective": "A"})
    assert [m["content"] for m in a["messages"] if m["role"] == "assistant"] == ["c0t0", "c0t2"]
    (row,) = card.tables["self-interaction"]
    assert (row["complete"], row["turns_kept"], row["cut_truncated"]) == (3, 12, 0)


def test_truncated_reflections_are_dropped(tmp_path):
    examples, card = run_scripted(tmp_path, scripted(reflection_samples=2, conversations=0), {(1, 0): "length"})
    n_prompts = len(yaml.safe_load((SHIPPED / "reflection_prompts.yaml").read_text())["prompts"])
    assert {e["meta"]["sample_index"] for e in examples} == {0}
    assert (card.inputs, card.outputs, card.drops["truncated"].count) == (2 * n_prompts, n_prompts, n_prompts)
    assert [s.name for s in card.steps] == ["usable reflections"] and "self-interaction" not in card.tables


def test_a_killed_run_resumes_from_cached_turns_and_matches_an_uninterrupted_one(tmp_path):
    settings = scripted(reflection_samples=1)
    n_prompts = len(yaml.safe_load((SHIPPED / "reflection_prompts.yaml").read_text())["prompts"])
    cache = RowCache(tmp_path / "c.sqlite")
    with FakeOpenAI(reply=copies()) as server:  # one server: the same URL is the same model to the cache
        # Batches: reflection, turn 0, turn 1. The reflections and turn 0 are answered normally (a
        # zero-second slow fault is a normal reply); the first turn-1 request gets an error that is
        # not retried, which kills the run.
        server.script(*[Fault.slow(0)] * (n_prompts + 3), Fault.http(400, "killed"))
        with api_backend(server) as backend, pytest.raises(BackendError, match="killed"):
            generate_introspection(backend, cache, settings)
        with api_backend(server) as backend:
            resumed, card = generate_introspection(backend, cache, settings)
        assert len(card.tables["reflection prompts"]) == n_prompts
        (stats,) = card.tables["generation"]
        assert (stats["hits"], stats["generated"]) == (n_prompts + 3, 3 * 3)
        with api_backend(server) as backend:
            fresh, _ = generate_introspection(backend, RowCache(tmp_path / "fresh.sqlite"), settings)
    assert resumed == fresh


def test_examples_alternate_kinds_so_any_prefix_has_both(tmp_path):
    examples, _ = run_scripted(tmp_path, scripted(reflection_samples=1, conversations=2))
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
    settings = scripted(greetings_file=write_greetings(tmp_path / "g.yaml", greeting, guidance))
    with FakeOpenAI(reply=copies()) as server, api_backend(server) as backend:
        with pytest.raises(CharlabError, match="unfilled placeholder"):
            generate_introspection(backend, RowCache(tmp_path / "c.sqlite"), settings, assistant_name=name)
    assert server.chat_requests == []


def test_name_placeholders_are_filled(tmp_path):
    settings = scripted(conversations=1, greetings_file=write_greetings(tmp_path / "g.yaml", "Hi {name}!",
                                                                        "You are {name}; explore that."))
    examples, _ = run_scripted(tmp_path, settings, assistant_name="Sol")
    a = interactions(examples, "A")[0]
    assert a["messages"][:2] == [{"role": "system", "content": "Your name is Sol.\n\nYou are Sol; explore that."},
                                 {"role": "user", "content": "Hi Sol!"}]


def test_variants_that_differ_only_by_greeting_are_rejected(tmp_path):
    settings = scripted(greetings_file=write_greetings(tmp_path / "g.yaml", "Hello!", "Chat freely."))
    with pytest.raises(CharlabError, match="differ in their guidance"):
        run_scripted(tmp_path, settings)


def test_without_guidance_there_is_no_system_prompt(tmp_path):
    examples, _ = run_scripted(tmp_path, scripted(conversations=1, guidance=False), assistant_name="Sol")
    assert all(m["role"] != "system" for e in examples for m in e["messages"])
