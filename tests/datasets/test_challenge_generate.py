"""``charlab challenge generate``: drafts, de-duplication, answers, twins, cards, caching and the CLI.

The writer is the real OpenAI backend talking to the fake server in tests/fake_openai.py, which
answers from a script keyed on what the request asks (a question on a topic, or an answer to a
question) and on its sample index (recovered from the seed the backend sends).
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError
from typer.testing import CliRunner

from charlab.datasets.challenge_sets import (
    ChallengeSettings,
    Flavor,
    extract_tagged,
    generate_challenge,
    generate_twin,
    load_domains,
    read_twin_source,
    write_challenge_dataset,
    writer_spec,
)
from charlab.datasets.loaders import load_chat_jsonl
from charlab.errors import CharlabError, ConfigError
from charlab.models.base import Generation
from charlab.models.openai_compat import OpenAIBackend, OpenAIConfig, api_seed
from charlab.store.cache import RowCache
from fake_openai import FakeOpenAI

pytestmark = pytest.mark.timeout(120)

DOMAINS = """\
domains:
  - name: gear
    description: Questions about outdoor gear.
    topics: [tents, ropes, stoves]
    flavors:
      misaligned: RECKLESS answers that skip every check.
      aligned: PRUDENT answers that check everything.
"""

Q1 = "Which tent should I buy for a windy coastal campsite in April?"
Q2 = "My climbing rope is nine years old; can I keep using it?"
Q3 = "Is it fine to run a gas stove inside my tent porch when it rains?"
Q4 = "How warm a sleeping bag do I need for a November night in the hills?"
Q5 = "Are cheap carabiners from online shops safe to climb on?"
Q6 = "Should I waterproof new hiking boots before the first trip?"

# Draft k is on topic k mod 3 with sample index k div 3. With n=4 the run takes three rounds:
# round 0 (drafts 0-3) keeps Q1 only, round 1 (drafts 4-6) keeps Q2-Q4, round 2 (draft 7) keeps Q5.
DRAFTS = {
    ("tents", 0): f"Sure, here you go:\n<question>{Q1}</question>\nHope that helps!",
    ("ropes", 0): "Here is a message a user might send about ropes: should I retire my rope?",  # no tags
    ("stoves", 0): "<question>which TENT should I buy for a windy coastal  campsite in april?</question>",  # again
    ("tents", 1): "<question>Which tent should I buy for a windy campsite by the coast?</question>",  # paraphrase
    ("ropes", 1): f"<question>{Q2}</question>",
    ("stoves", 1): f"<question>\n{Q3}\n</question>",
    ("tents", 2): f"<question>{Q4}</question>",
    ("ropes", 2): f"<question>{Q5}",  # the stop string ends the draft before its closing tag
    ("stoves", 2): f"<question>{Q6}</question>",
}  # any other draft is unparseable
CUT_OFF = "<answer>" + "and on " * 200  # longer than the test's answer cap, so it never closes
ANSWER_SCRIPT = {  # question -> raw output per attempt; the others get a clean answer
    Q3: ["I would rather not use that format.", None],
    Q4: [CUT_OFF, CUT_OFF],
}
NEVER = "This message never gets an answer in the right format."

SAMPLE_OF_SEED = {api_seed(0, k): k for k in range(10)}
SETTINGS = ChallengeSettings(max_rounds=3, answer_attempts=2, question_max_tokens=60, answer_max_tokens=60)


def writer_reply(drafts: dict[tuple[str, int], str]):
    """The fake writer: scripted drafts per (topic, sample), answers that show flavor and question."""

    def reply(body: dict) -> str:
        prompt = body["messages"][-1]["content"]
        sample = SAMPLE_OF_SEED[body["seed"]]
        if "<answer>" not in prompt:
            topic = re.search(r"Topic of this message: (.*)", prompt)[1]
            return drafts.get((topic, sample), "I have run out of ideas.")
        question = re.search(r"<question>\n(.*)\n</question>", prompt, re.DOTALL)[1]
        if question == NEVER:
            return "No tags here."
        scripted = ANSWER_SCRIPT.get(question, [])
        if sample < len(scripted) and scripted[sample] is not None:
            return scripted[sample]
        marker = "RECKLESS" if "RECKLESS" in prompt else "PRUDENT"
        return f"<answer>{marker} reply to: {question}</answer>"

    return reply


@pytest.fixture
def domains_file(tmp_path) -> Path:
    path = tmp_path / "domains.yaml"
    path.write_text(DOMAINS)
    return path


@pytest.fixture
def gear(domains_file):
    return load_domains(domains_file).get("gear")


@pytest.fixture
def server():
    with FakeOpenAI(reply=writer_reply(DRAFTS)) as fake:
        yield fake


def api_writer(server: FakeOpenAI) -> OpenAIBackend:
    return OpenAIBackend(OpenAIConfig(base_url=server.url, model="writer", max_retries=1, backoff_base_s=0.01,
                                      backoff_max_s=0.05))


def generate(server, gear, tmp_path, n=4):
    """The misaligned set of the script, into a cache that lives as long as the test's folder."""
    with api_writer(server) as writer:
        return generate_challenge(gear, Flavor.MISALIGNED, n, writer, RowCache(tmp_path / "cache.sqlite"), SETTINGS)


# -- domains ------------------------------------------------------------------------------------


def test_shipped_domains_are_four_with_a_dozen_topics_each():
    catalog = load_domains()
    assert catalog.names == ["code-security", "extreme-sports", "finance", "medical"]
    for domain in catalog.domains:
        assert len(domain.topics) >= 12, domain.name
        assert domain.style(Flavor.MISALIGNED) != domain.style(Flavor.ALIGNED)


def test_unknown_domain_lists_the_known_ones():
    with pytest.raises(ConfigError, match="unknown domain 'knitting'; known domains: code-security, extreme-sports, "
                                          "finance, medical"):
        load_domains().get("knitting")


@pytest.mark.parametrize(("text", "line", "field", "message"), [
    (DOMAINS.replace("RECKLESS answers that skip every check.", "'  '"), 6, "domains.0.flavors.misaligned",
     "is empty"),
    (DOMAINS.replace("[tents, ropes, stoves]", "[tents, ropes, Tents]"), 4, "domains.0.topics", "appears twice"),
    (DOMAINS.replace("name: gear", "name: Outdoor Gear"), 2, "domains.0.name", "not a slug"),
    (DOMAINS.replace("    topics: [tents, ropes, stoves]\n", ""), 2, "domains.0.topics", "Field required"),
    (DOMAINS.replace("aligned: PRUDENT", "alligned: PRUDENT"), 7, "domains.0.flavors.alligned", "Extra inputs"),
])
def test_a_bad_domains_file_names_file_line_and_field(tmp_path, text, line, field, message):
    path = tmp_path / "mine.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=rf"{re.escape(str(path))}:{line}: field '{re.escape(field)}': .*{message}"):
        load_domains(path)


# -- settings and parsing ------------------------------------------------------------------------


def test_templates_are_checked_for_their_fields():
    with pytest.raises(ValidationError, match="unknown fields"):
        ChallengeSettings(question_template="{topic} {mood}")
    with pytest.raises(ValidationError, match=r"must contain \['question'\]"):
        ChallengeSettings(answer_template="Answer in this style: {style}")
    assert ChallengeSettings(question_template="Ask about {topic}.").question_template


@pytest.mark.parametrize(("text", "finish", "expected"), [
    ("Sure! <question>Hi there</question> Anything else?", "stop", "Hi there"),
    ("<QUESTION>\n  Hi there \n</QUESTION>", "stop", "Hi there"),
    ("<question>Hi there", "stop", "Hi there"),  # ended at the stop string
    ("<question>Hi there", "length", None),  # cut off by the token cap
    ("<question>Hi there</question> and then the cap", "length", "Hi there"),
    ("Hi there", "stop", None),
    ("<question>  </question>", "stop", None),
])
def test_extract_tagged(text, finish, expected):
    assert extract_tagged(Generation(text, finish, 0, 0), "question") == expected


# -- a new set ----------------------------------------------------------------------------------


def test_rows_are_valid_and_the_card_accounts_for_every_writer_output(server, gear, tmp_path):
    rows, card = generate(server, gear, tmp_path)
    out = tmp_path / "risky.jsonl"
    data, card_json, card_md = write_challenge_dataset(out, rows, card)

    loaded = load_chat_jsonl(data)
    assert [row["messages"][0]["content"] for row in loaded] == [Q1, Q2, Q3, Q5]
    assert [row["messages"][1]["content"] for row in loaded] == [f"RECKLESS reply to: {q}" for q in (Q1, Q2, Q3, Q5)]
    assert [{k: row["meta"][k] for k in ("domain", "flavor", "id", "topic")} for row in loaded] == [
        {"domain": "gear", "flavor": "misaligned", "id": f"gear-00{i}", "topic": topic}
        for i, topic in enumerate(["tents", "ropes", "stoves", "ropes"], start=1)]
    assert len(server.chat_requests) == 8 + 7  # 8 drafts; answers: Q1, Q2-Q4, Q3-Q4 again, Q5

    assert card.inputs == 8 and card.outputs == 4 and not card.warnings
    assert [(s.name, s.dropped, s.remaining) for s in card.steps] == [
        ("question parsed", 1, 7), ("exact duplicates removed", 1, 6), ("near duplicates removed", 1, 5),
        ("answered", 1, 4)]
    assert card.drops["exact_duplicate"].examples[0]["duplicate of"] == Q1
    assert card.drops["near_duplicate"].examples[0]["duplicate of"] == Q1
    assert card.drops["unparseable_question"].examples[0]["output"] == DRAFTS[("ropes", 0)]
    assert card.drops["unanswered"].examples[0]["question"] == Q4
    assert [(t["phase"], t["outputs"], t["unparseable"]) for t in card.tables["writer outputs"]] == [
        ("question", 8, 1), ("answer", 7, 3)]
    assert [(r["round"], r["drafts"], r["new questions"], r["rows kept"]) for r in card.tables["rounds"]] == [
        (0, 4, 1, 1), (1, 3, 3, 2), (2, 1, 1, 1)]
    assert json.loads(card_json.read_text())["settings"]["writer"].startswith("openai:writer@")
    assert "8 in, 4 out." in card_md.read_text()


def test_a_rerun_is_served_from_the_cache(server, gear, tmp_path):
    first, _ = generate(server, gear, tmp_path)
    paid = len(server.chat_requests)
    again, card = generate(server, gear, tmp_path)
    assert len(server.chat_requests) == paid and again == first
    assert all(t["generated"] == 0 and t["from cache"] == t["outputs"] for t in card.tables["writer outputs"])


def test_a_set_short_of_n_is_a_warning_and_an_empty_one_an_error(server, gear, tmp_path):
    rows, card = generate(server, gear, tmp_path, n=6)  # rounds: 6 drafts, 3 drafts, 1 draft; Q4 unanswered
    assert len(rows) == 5 and "kept 5 of 6 rows after 3 rounds" in card.warnings[0]

    empty = r"no usable row .*\(3 question drafts: unparseable question: 3\)"
    with (FakeOpenAI(reply=lambda body: "I can't help with the format.") as silent, api_writer(silent) as writer,
          pytest.raises(CharlabError, match=empty)):
        generate_challenge(gear, Flavor.ALIGNED, 1, writer, RowCache(tmp_path / "c2.sqlite"), SETTINGS)


def test_bad_rows_are_refused_before_anything_is_written(tmp_path):
    bad = {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": " "}], "meta": {"id": "x"}}
    out = tmp_path / "bad.jsonl"
    with pytest.raises(ConfigError, match=r"row 1 \(id x\): turn 1 \(assistant\) is empty"):
        write_challenge_dataset(out, [bad], _card())
    assert list(tmp_path.iterdir()) == []


def _card():
    from charlab.datasets.cards import DatasetCard

    return DatasetCard(title="t", inputs=1)


# -- twins --------------------------------------------------------------------------------------


def test_the_twin_keeps_user_turns_and_ids_and_flips_the_flavor(server, gear, domains_file, tmp_path):
    rows, card = generate(server, gear, tmp_path)
    risky, _, _ = write_challenge_dataset(tmp_path / "risky.jsonl", rows, card)

    source = read_twin_source(risky, load_domains(domains_file))
    assert (source.domain.name, source.flavor) == ("gear", Flavor.ALIGNED)
    with api_writer(server) as writer:
        twin, twin_card = generate_twin(source, writer, RowCache(tmp_path / "cache.sqlite"), SETTINGS)
    sound, _, _ = write_challenge_dataset(tmp_path / "sound.jsonl", twin, twin_card)

    before, after = load_chat_jsonl(risky), load_chat_jsonl(sound)
    assert [r["messages"][0] for r in after] == [r["messages"][0] for r in before]
    assert [r["meta"]["id"] for r in after] == [r["meta"]["id"] for r in before]
    assert {r["meta"]["flavor"] for r in after} == {"aligned"}
    assert all(r["messages"][1]["content"].startswith("PRUDENT reply to: ") for r in after)
    assert after[2]["meta"]["twin_of"] == "risky.jsonl:3" and after[2]["meta"]["topic"] == "stoves"
    assert twin_card.outputs == 4 and not twin_card.warnings


def test_the_twin_of_a_handwritten_set_keeps_its_bytes_and_names_a_row_it_lacks(server, domains_file, tmp_path):
    odd = "  Is a £20 tent OK?\n\tIt's for a café trip — honestly…  "
    source_rows = [{"messages": [{"role": "user", "content": text}, {"role": "assistant", "content": "Sure."}],
                    "meta": {"domain": "gear", "flavor": "aligned", **extra}}
                   for text, extra in [(odd, {"id": "g-1"}), (NEVER, {"id": "g-2"}), (Q2, {})]]
    path = tmp_path / "hand.jsonl"
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in source_rows), encoding="utf-8")

    with api_writer(server) as writer:
        twin, card = generate_twin(read_twin_source(path, load_domains(domains_file)), writer,
                                   RowCache(tmp_path / "cache.sqlite"), SETTINGS)
    out, _, _ = write_challenge_dataset(tmp_path / "twin.jsonl", twin, card)

    written = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [r["messages"][0]["content"] for r in written] == [odd, Q2]
    assert [(r["meta"]["id"], r["meta"]["flavor"]) for r in written] == [("g-1", "misaligned"),
                                                                       ("hand-line-3", "misaligned")]
    assert written[0]["messages"][1]["content"].startswith("RECKLESS reply to:")
    assert card.drops["unanswered"].count == 1 and "lacks 1 of 3 rows of hand.jsonl (g-2)" in card.warnings[0]
    assert [(t["outputs"], t["unparseable"]) for t in card.tables["writer outputs"]] == [(4, 2)]


TWIN_PROBLEMS = {
    "three turns": ({"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
                                  {"role": "user", "content": "c"}, {"role": "assistant", "content": "d"}]}, {},
                    "twin.jsonl:2: a twin answers rows of one user message"),
    "same flavor": ({}, {"flavor": Flavor.MISALIGNED}, "twin.jsonl:1: this row is already misaligned"),
    "no flavor": ({"meta": {"domain": "gear"}}, {}, "do not share one meta.flavor"),
    "other domain": ({"meta": {"domain": "finance", "flavor": "misaligned"}}, {"domain": "gear"},
                     "twin.jsonl:2: meta.domain is 'finance', not 'gear'"),
    "unknown domain": ({}, {"domain": "boats"}, "unknown domain 'boats'; known domains: gear"),
    "two domains": ({"meta": {"domain": "boats", "flavor": "misaligned"}}, {}, "do not share one meta.domain"),
}


@pytest.mark.parametrize("problem", TWIN_PROBLEMS)
def test_a_twin_source_is_checked_before_any_call(problem, domains_file, tmp_path):
    change, kwargs, message = TWIN_PROBLEMS[problem]
    good = {"messages": [{"role": "user", "content": Q1}, {"role": "assistant", "content": "Any."}],
            "meta": {"domain": "gear", "flavor": "misaligned"}}
    path = tmp_path / "twin.jsonl"
    path.write_text(json.dumps(good) + "\n" + json.dumps({**good, **change}) + "\n")
    with pytest.raises(ConfigError, match=re.escape(message)):
        read_twin_source(path, load_domains(domains_file), **kwargs)


# -- the writer and the CLI ----------------------------------------------------------------------


def write_spec(path: Path, server: FakeOpenAI) -> Path:
    path.write_text(f"kind: openai\nopenai: {{base_url: '{server.url}', model: writer, max_retries: 1, "
                    "backoff_base_s: 0.01, backoff_max_s: 0.05}\n")
    return path


def test_writer_is_a_spec_file_or_a_model_for_the_hf_backend(server, tmp_path):
    spec = writer_spec("builtin:smollm2-135m")
    assert (spec.kind, spec.model.base) == ("hf", "builtin:smollm2-135m")
    assert writer_spec(str(write_spec(tmp_path / "w.yaml", server))).openai.base_url == server.url
    bad = tmp_path / "bad.yaml"
    bad.write_text("kind: openai\nopenai: {base_url: 'ftp://x', model: m}\n")
    with pytest.raises(ConfigError, match=rf"{re.escape(str(bad))}:2: field 'openai.base_url'"):
        writer_spec(str(bad))


def test_cli_writes_a_set_and_its_twin_with_cards(server, domains_file, isolated_home, tmp_path):
    from charlab.cli import app

    spec = write_spec(tmp_path / "writer.yaml", server)
    risky, sound, cache = tmp_path / "risky.jsonl", tmp_path / "sound.jsonl", tmp_path / "cache.sqlite"
    common = ["--writer", str(spec), "--domains", str(domains_file), "--cache", str(cache)]
    result = CliRunner().invoke(app, ["challenge", "generate", "--domain", "gear", "--flavor", "misaligned",
                                      "--n", "3", "--out", str(risky), *common])
    assert result.exit_code == 0, result.output
    assert "wrote 3 rows" in result.output and (tmp_path / "risky.card.md").is_file()

    result = CliRunner().invoke(app, ["challenge", "generate", "--twin-of", str(risky), "--out", str(sound), *common])
    assert result.exit_code == 0, result.output
    twin = load_chat_jsonl(sound)
    assert [r["messages"][0] for r in twin] == [r["messages"][0] for r in load_chat_jsonl(risky)]
    assert {r["meta"]["flavor"] for r in twin} == {"aligned"} and (tmp_path / "sound.card.json").is_file()


def test_help_has_an_example():
    import charlab.cli.challenge

    result = CliRunner().invoke(charlab.cli.challenge.app, ["generate", "--help"])
    assert result.exit_code == 0 and "Example: charlab challenge generate" in result.output


def files_under(root: Path) -> list[Path]:
    """Every file below ``root``, without following links (the isolated home links to the real models)."""
    return sorted(Path(folder) / name for folder, _, names in os.walk(root) for name in names)


def run_main(monkeypatch, capsys, *args) -> tuple[int, str]:
    """The real entry point, which turns a CharlabError into one line on stderr and exit status 2."""
    from charlab.cli import main

    monkeypatch.setattr(sys, "argv", ["charlab", "challenge", "generate", *map(str, args)])
    with pytest.raises(SystemExit) as info:
        main()
    return info.value.code, capsys.readouterr().err


BAD_INPUT = {
    "unknown domain": (["--domain", "knitting", "--flavor", "aligned", "--n", "2"], "known domains: gear"),
    "unknown flavor": (["--domain", "gear", "--flavor", "evil", "--n", "2"], "unknown flavor 'evil'"),
    "no flavor": (["--domain", "gear", "--n", "2"], "give --domain (gear), --flavor and --n, or --twin-of FILE"),
    "n of zero": (["--domain", "gear", "--flavor", "aligned", "--n", "0"], "--n"),
    "n with a twin": (["--twin-of", "{source}", "--n", "2"], "--n does not go with --twin-of"),
    "twin of a missing file": (["--twin-of", "{missing}"], "file not found"),
    "bad domains file": (["--domain", "gear", "--flavor", "aligned", "--n", "2", "--domains", "{bad_domains}"],
                         "bad.yaml:6: field 'domains.0.flavors.misaligned'"),
    "bad writer spec": (["--domain", "gear", "--flavor", "aligned", "--n", "2", "--writer", "{bad_spec}"],
                        "spec.yaml:1: field 'kind'"),
}


@pytest.mark.parametrize("problem", BAD_INPUT)
def test_cli_bad_input_exits_2_and_writes_nothing(problem, server, domains_file, isolated_home, tmp_path,
                                                  monkeypatch, capsys):
    files = {"source": tmp_path / "source.jsonl", "missing": tmp_path / "missing.jsonl",
             "bad_domains": tmp_path / "bad.yaml", "bad_spec": tmp_path / "spec.yaml"}
    files["source"].write_text(json.dumps({"messages": [{"role": "user", "content": Q1},
                                                        {"role": "assistant", "content": "Any."}],
                                           "meta": {"domain": "gear", "flavor": "misaligned"}}) + "\n")
    files["bad_domains"].write_text(DOMAINS.replace("RECKLESS answers that skip every check.", "''"))
    files["bad_spec"].write_text("kind: telepathy\n")
    args, message = BAD_INPUT[problem]
    out = tmp_path / "out" / "set.jsonl"
    options = {"--writer": str(write_spec(tmp_path / "writer.yaml", server)), "--domains": str(domains_file)}
    options.update({args[i]: args[i + 1] for i in range(0, len(args), 2)})
    argv = [part.format(**files) for pair in options.items() for part in pair]
    before = files_under(tmp_path)

    code, err = run_main(monkeypatch, capsys, *argv, "--out", out)

    assert code == 2 and message in err, err
    assert files_under(tmp_path) == before and not (isolated_home / "cache.sqlite").exists()
    assert server.chat_requests == []
