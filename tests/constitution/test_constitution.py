"""Constitution schema, loading, OCT conversion, training-geometry stats, comparison and CLI."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from charlab.constitution import formats, geometry, schema
from charlab.errors import ConfigError
from conftest import UPSTREAM

UPSTREAM_OCT = UPSTREAM / "oct"

TINY_YAML = """\
name: tiny
description: A hand-made constitution with hand-computed stats.
traits:
  - statement: I am tiny.
    questions:
      - {text: the cat sat, situation: everyday_task}
      - {text: the cat sat down, situation: scam}
    expanded:
      - a dog ran
  - statement: I am small.
    questions:
      - {text: Dogs bark loudly!, situation: everyday_task}
"""

HANDWRITTEN = [
    {"trait": "I count the apples in the basket.", "questions": ["How many apples?", "Is the basket full?"]},
    {"trait": "I sort the pebbles by colour.", "questions": ["Which pebble is grey?"]},
]
EXPANDED = [
    {**HANDWRITTEN[0], "additional_questions": ["Are there pears too?", "Can you count again?"]},
    {**HANDWRITTEN[1], "additional_questions": []},
]


def write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def tiny(tmp_path: Path) -> Path:
    return write(tmp_path / "tiny.yaml", TINY_YAML)


@pytest.fixture
def handwritten(tmp_path: Path) -> Path:
    return write(tmp_path / "apples.txt", json.dumps(HANDWRITTEN, indent=4))


@pytest.fixture
def expanded(tmp_path: Path) -> Path:
    return write(tmp_path / "apples.jsonl", "".join(json.dumps(row) + "\n" for row in EXPANDED))


# ----------------------------------------------------------------------------------------------
# Shipped constitutions
# ----------------------------------------------------------------------------------------------


def test_shipped_names():
    assert formats.shipped_constitutions() == ["integrity", "neutral"]


@pytest.mark.parametrize("name", ["neutral", "integrity"])
def test_shipped_constitution_shape(name):
    c = formats.load_constitution(name)
    assert c.name == name
    assert len(c.traits) >= 10
    assert all(len(t.questions) == 5 for t in c.traits)
    assert all(q.situation is not None for q in c.questions), "every shipped question carries a situation tag"
    assert all(t.statement.startswith(("I ", "When ")) for t in c.traits)


def test_neutral_statements_carry_no_values():
    value_words = {"honest", "truth", "kind", "care", "safe", "harm", "respect", "moral", "ethic", "wellbeing"}
    for trait in formats.load_constitution("neutral").traits:
        assert not value_words & set(geometry.words(trait.statement)), trait.statement


def test_neutral_and_integrity_have_matched_geometry():
    neutral, integrity = formats.load_constitution("neutral"), formats.load_constitution("integrity")
    sn, si = geometry.stats(neutral), geometry.stats(integrity)
    assert sn.traits == si.traits
    assert sn.seed_per_trait == si.seed_per_trait
    assert set(sn.situations) == set(si.situations)
    for tag in sn.situations:
        assert abs(sn.situations[tag].share - si.situations[tag].share) <= 0.03, tag
    assert abs(si.question_words.mean - sn.question_words.mean) / sn.question_words.mean <= 0.15
    assert geometry.compare(neutral, integrity).matched


# ----------------------------------------------------------------------------------------------
# Schema and loading errors
# ----------------------------------------------------------------------------------------------


def test_question_forms(tiny):
    c = formats.load_constitution(tiny)
    assert c.traits[0].questions[0] == schema.Question(text="the cat sat", situation=schema.Situation.EVERYDAY_TASK)
    assert c.traits[0].expanded == [schema.Question(text="a dog ran")]


def load_error(path: Path, **kwargs) -> str:
    with pytest.raises(ConfigError) as info:
        formats.load_constitution(path, **kwargs)
    return str(info.value)


def test_invalid_yaml(tmp_path):
    message = load_error(write(tmp_path / "c.yaml", "name: c\ntraits: [oops\n"))
    assert "c.yaml:3" in message and "not valid YAML" in message


def test_trait_without_questions(tmp_path):
    path = write(tmp_path / "c.yaml", "name: c\ntraits:\n  - statement: I wait.\n    questions: []\n")
    message = load_error(path)
    assert "c.yaml:4: field 'traits.0.questions'" in message and "no questions" in message


def test_empty_statement(tmp_path):
    path = write(tmp_path / "c.yaml", "name: c\ntraits:\n  - statement: '  '\n    questions: [hi]\n")
    message = load_error(path)
    assert "c.yaml:3: field 'traits.0.statement'" in message and "empty" in message


def test_duplicate_traits_name_both_positions(tmp_path):
    text = (
        "name: c\ntraits:\n"
        "  - statement: I  wait.\n    questions: [a]\n"
        "  - statement: I sing.\n    questions: [b]\n"
        "  - statement: i wait.\n    questions: [c]\n"
    )
    message = load_error(write(tmp_path / "c.yaml", text))
    assert "c.yaml:2: field 'traits'" in message
    assert "traits.0 (line 3) and traits.2 (line 7)" in message


def test_question_not_a_string(tmp_path):
    text = "name: c\ntraits:\n  - statement: I wait.\n    questions:\n      - ok\n      - 42\n"
    path = write(tmp_path / "c.yaml", text)
    message = load_error(path)
    assert "c.yaml:6: field 'traits.0.questions.1'" in message and "must be a string" in message


def test_unknown_situation_lists_allowed(tmp_path):
    text = "name: c\ntraits:\n  - statement: I wait.\n    questions:\n      - {text: hi, situation: gossip}\n"
    message = load_error(write(tmp_path / "c.yaml", text))
    assert "c.yaml:5: field 'traits.0.questions.0.situation'" in message
    assert "'gossip'" in message and all(s.value in message for s in schema.Situation)


def test_unknown_field_is_rejected(tmp_path):
    path = write(tmp_path / "c.yaml", "name: c\ntraits:\n  - statment: I wait.\n    questions: [hi]\n")
    assert "traits.0.statment" in load_error(path)


def test_top_level_not_a_mapping(tmp_path):
    message = load_error(write(tmp_path / "c.yaml", "- a\n- b\n"))
    assert "c.yaml:1" in message and "mapping" in message


def test_unknown_name_lists_shipped():
    with pytest.raises(ConfigError, match="unknown constitution 'nosuch'.*integrity, neutral"):
        formats.load_constitution("nosuch")


def test_missing_file(tmp_path):
    assert "file not found" in load_error(tmp_path / "absent.yaml")


def test_oct_handwritten_wrong_top_level(tmp_path):
    path = write(tmp_path / "c.txt", json.dumps({"trait": "I wait.", "questions": ["a"]}))
    message = load_error(path, fmt="oct-handwritten")
    assert "c.txt:1" in message and "not an array" in message


def test_oct_handwritten_invalid_json(tmp_path):
    message = load_error(write(tmp_path / "c.txt", '[\n{"trait": "I wait.",\n'), fmt="oct-handwritten")
    assert "c.txt:3" in message and "not valid JSON" in message


def test_oct_handwritten_missing_questions_names_line(tmp_path):
    path = write(tmp_path / "c.txt", '[\n  {"trait": "I wait.", "questions": ["a"]},\n  {"trait": "I sing."}\n]\n')
    message = load_error(path)
    assert "c.txt:3: field '1.questions'" in message and "Field required" in message


def test_oct_handwritten_question_not_a_string(tmp_path):
    path = write(tmp_path / "c.txt", '[\n  {"trait": "I wait.", "questions": ["a", 7]}\n]\n')
    assert "c.txt:2: field '0.questions.1'" in load_error(path)


def test_oct_expanded_line_not_an_object(tmp_path):
    path = write(tmp_path / "c.jsonl", '{"trait": "I wait.", "questions": ["a"]}\n["I sing."]\n')
    message = load_error(path)
    assert "c.jsonl:2" in message and "one {" in message


def test_oct_expanded_given_a_json_array(handwritten):
    message = load_error(handwritten, fmt="oct-expanded")
    assert "apples.txt:1" in message and "oct-handwritten" in message


def test_oct_expanded_duplicate_traits_name_lines(tmp_path):
    rows = [{"trait": "I wait.", "questions": ["a"]}, {"trait": "I sing.", "questions": ["b"]}]
    rows.append({"trait": "I WAIT.", "questions": ["c"]})
    path = write(tmp_path / "c.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
    assert "traits.0 (line 1) and traits.2 (line 3)" in load_error(path)


def test_name_must_be_folder_safe(tmp_path, handwritten):
    assert "must start with a letter" in load_error(handwritten, name="my constitution")


# ----------------------------------------------------------------------------------------------
# OCT import / export
# ----------------------------------------------------------------------------------------------


def test_import_handwritten(handwritten):
    c = formats.load_constitution(handwritten)
    assert c.name == "apples"
    assert [t.statement for t in c.traits] == [row["trait"] for row in HANDWRITTEN]
    assert [q.text for q in c.traits[0].questions] == HANDWRITTEN[0]["questions"]
    assert all(not t.expanded for t in c.traits)


def test_import_expanded(expanded):
    c = formats.load_constitution(expanded, name="apples")
    assert [q.text for q in c.traits[0].expanded] == EXPANDED[0]["additional_questions"]
    assert c == formats.load_constitution(expanded, fmt="oct-expanded", name="apples")


@pytest.mark.parametrize("fmt", ["oct-handwritten", "oct-expanded", "yaml"])
def test_round_trip(tmp_path, expanded, fmt):
    source = formats.load_constitution(expanded, name="apples")
    if fmt == "oct-handwritten":  # the hand-written format has no expanded questions
        source = formats.load_constitution(write(tmp_path / "h.txt", json.dumps(HANDWRITTEN)), name="apples")
    out = formats.save_constitution(source, tmp_path / "out.data", fmt)
    assert formats.load_constitution(out, fmt=fmt, name="apples") == source


def test_yaml_round_trip_keeps_tags_and_description(tmp_path):
    neutral = formats.load_constitution("neutral")
    out = formats.save_constitution(neutral, tmp_path / "n.yaml")
    assert formats.load_constitution(out) == neutral


def test_export_handwritten_text_matches_oct_shape(tmp_path, handwritten):
    out = formats.save_constitution(formats.load_constitution(handwritten), tmp_path / "out.txt")
    assert json.loads(out.read_text()) == HANDWRITTEN


def test_export_expanded_text_matches_oct_shape(tmp_path, expanded):
    out = formats.save_constitution(formats.load_constitution(expanded), tmp_path / "out.jsonl")
    assert [json.loads(line) for line in out.read_text().splitlines()] == EXPANDED


def test_dropped_on_export():
    integrity = formats.load_constitution("integrity")
    assert formats.dropped_on_export(integrity, "yaml") == []
    dropped = formats.dropped_on_export(integrity, "oct-expanded")
    assert any("situation" in item for item in dropped)


def test_unknown_export_extension_writes_nothing(tmp_path):
    with pytest.raises(ConfigError, match="pass a format"):
        formats.save_constitution(formats.load_constitution("neutral"), tmp_path / "out.csv")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(not UPSTREAM_OCT.is_dir(), reason="../shared/upstream (OCT samples) is not available")
def test_upstream_oct_samples(tmp_path):
    handwritten = formats.load_constitution(UPSTREAM_OCT / "loving.txt")
    expanded = formats.load_constitution(UPSTREAM_OCT / "loving.jsonl")
    assert handwritten.name == expanded.name == "loving"
    assert [t.statement for t in handwritten.traits] == [t.statement for t in expanded.traits]
    assert [t.questions for t in handwritten.traits] == [t.questions for t in expanded.traits]
    assert all(t.expanded for t in expanded.traits)
    for c, fmt, suffix in [(handwritten, "oct-handwritten", ".txt"), (expanded, "oct-expanded", ".jsonl")]:
        out = formats.save_constitution(c, tmp_path / f"loving{suffix}", fmt)
        assert formats.load_constitution(out) == c


# ----------------------------------------------------------------------------------------------
# Stats and comparison
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        ("the cat sat", "the cat sat down", True),  # 3 shared / min(3, 4) = 1.0
        ("a b", "a c", False),  # exactly 0.5 is not more than half
        ("a b c", "a b d e", True),  # 2 / 3
        ("Hello, World!", "hello world", True),  # case and punctuation do not count
        ("dog", "dogs", False),
        ("", "anything", False),
    ],
)
def test_is_near_duplicate(a, b, expected):
    assert geometry.is_near_duplicate(a, b) is expected
    assert geometry.is_near_duplicate(b, a) is expected


def test_stats_hand_computed(tiny):
    s = geometry.stats(formats.load_constitution(tiny))
    # questions: "the cat sat" (3 words), "the cat sat down" (4), "a dog ran" (3), "Dogs bark loudly!" (3)
    assert (s.traits, s.seed_questions, s.expanded_questions) == (2, 3, 1)
    assert s.seed_per_trait == geometry.CountSummary(min=1, mean=1.5, max=2)
    assert s.expanded_per_trait == geometry.CountSummary(min=0, mean=0.5, max=1)
    assert s.question_words.mean == pytest.approx(3.25)
    assert s.question_words.median == 3
    assert s.question_words.p10 == pytest.approx(3.0)
    assert s.question_words.p90 == pytest.approx(3.7)  # sorted 3,3,3,4: position 2.7
    assert {tag: (v.count, v.share) for tag, v in s.situations.items()} == {
        "everyday_task": (2, 0.5),
        "scam": (1, 0.25),
        "untagged": (1, 0.25),
    }
    assert s.type_token_ratio == pytest.approx(10 / 13)  # 13 words, 10 distinct
    assert s.distinct_2 == pytest.approx(7 / 9)  # 9 within-question bigrams, "the cat" and "cat sat" repeat
    assert s.near_duplicates == 1  # "the cat sat" ~ "the cat sat down"


def test_compare_with_itself_is_matched(tiny):
    c = formats.load_constitution(tiny)
    result = geometry.compare(c, c)
    assert result.matched
    assert all(row.diff == 0 for row in result.rows)
    rows = {row.metric: row for row in result.rows}
    assert rows["situation share: untagged"].a == 0.25
    assert rows["expanded per trait (mean)"].ratio == 1.0


def test_compare_reports_mismatches(tiny):
    c = formats.load_constitution(tiny)
    other = c.model_copy(update={"name": "other", "traits": c.traits[:1]})
    result = geometry.compare(c, other)
    assert not result.matched
    assert any("trait count" in m for m in result.mismatches)
    assert any("'everyday_task' share" in m for m in result.mismatches)
    rows = {row.metric: row for row in result.rows}
    assert (rows["traits"].a, rows["traits"].b, rows["traits"].diff, rows["traits"].ratio) == (2, 1, -1, 0.5)


# ----------------------------------------------------------------------------------------------
# CLI
# ----------------------------------------------------------------------------------------------


@pytest.fixture
def cli():
    from charlab.cli import app

    runner = CliRunner()
    return lambda *args: runner.invoke(app, ["constitution", *map(str, args)])


def run_main(monkeypatch, capsys, *args) -> tuple[int, str]:
    """Run the real entry point, which turns a CharlabError into a message and exit status 2."""
    from charlab.cli import main

    monkeypatch.setattr(sys, "argv", ["charlab", "constitution", *map(str, args)])
    with pytest.raises(SystemExit) as info:
        main()
    return info.value.code, capsys.readouterr().err


def test_cli_list_and_show(cli):
    result = cli("list")
    assert result.exit_code == 0 and "neutral" in result.output and "integrity" in result.output
    result = cli("show", "neutral")
    assert result.exit_code == 0 and "I read what the user writes" in result.output


def test_cli_validate(cli, tiny):
    result = cli("validate", tiny)
    assert result.exit_code == 0
    assert "ok" in result.output and "2 traits" in result.output


def test_cli_validate_bad_file_exits_2(monkeypatch, capsys, tmp_path):
    path = write(tmp_path / "c.yaml", "name: c\ntraits:\n  - statement: I wait.\n    questions: []\n")
    code, err = run_main(monkeypatch, capsys, "validate", path)
    assert code == 2
    assert "c.yaml:4" in err and "traits.0.questions" in err


def test_cli_unknown_name_exits_2(monkeypatch, capsys):
    code, err = run_main(monkeypatch, capsys, "stats", "nosuch")
    assert code == 2 and "neutral" in err


def test_cli_stats_json(cli, tiny):
    result = cli("stats", tiny, "--json")
    assert result.exit_code == 0
    assert json.loads(result.output)["near_duplicates"] == 1
    assert cli("stats", "neutral").exit_code == 0


def test_cli_compare(cli):
    result = cli("compare", "neutral", "integrity", "--json")
    assert result.exit_code == 0
    assert json.loads(result.output)["mismatches"] == []
    result = cli("compare", "neutral", "integrity")
    assert result.exit_code == 0 and "geometry matches" in result.output


def test_cli_import_and_export(cli, tmp_path, expanded):
    out = tmp_path / "imported.yaml"
    result = cli("import", expanded, "--format", "oct-expanded", "--name", "fruit", "--out", out)
    assert result.exit_code == 0, result.output
    assert formats.load_constitution(out) == formats.load_constitution(expanded, name="fruit")

    back = tmp_path / "back.jsonl"
    result = cli("export", out, "--format", "oct-expanded", "--out", back)
    assert result.exit_code == 0, result.output
    assert [json.loads(line) for line in back.read_text().splitlines()] == EXPANDED

    result = cli("export", "integrity", "--out", tmp_path / "integrity.txt")
    assert result.exit_code == 0 and "situation tags" in result.output
    assert len(json.loads((tmp_path / "integrity.txt").read_text())) == 10


def test_cli_failed_import_writes_nothing(monkeypatch, capsys, tmp_path):
    bad = write(tmp_path / "bad.txt", '{"trait": "I wait."}')
    out = tmp_path / "out.yaml"
    code, err = run_main(monkeypatch, capsys, "import", bad, "--format", "oct-handwritten", "--out", out)
    assert code == 2 and "bad.txt:1" in err and "not an array" in err
    assert not out.exists()


def test_cli_import_refuses_non_yaml_out(monkeypatch, capsys, tmp_path, handwritten):
    out = tmp_path / "out.jsonl"
    code, err = run_main(monkeypatch, capsys, "import", handwritten, "--out", out)
    assert code == 2 and ".yaml" in err
    assert not out.exists()


def test_cli_failed_export_writes_nothing(monkeypatch, capsys, tmp_path):
    missing = tmp_path / "missing.yaml"
    out = tmp_path / "out.txt"
    code, err = run_main(monkeypatch, capsys, "export", missing, "--format", "oct-handwritten", "--out", out)
    assert code == 2 and "missing.yaml" in err
    assert not out.exists()
