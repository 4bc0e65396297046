"""The assistant-axis role set: the shipped files, placeholder filling, and the upstream importer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import charlab
from charlab.errors import ConfigError
from charlab.evals.roles import load_questions, load_roles
from charlab.interp.roleset import (
    MODEL_NAME,
    ROLE_KINDS,
    export_yaml,
    fill_model_name,
    import_upstream,
    load_axis_roles,
    load_default_prompts,
    load_extraction_questions,
)
from conftest import upstream_or_skip

AXIS_DATA = Path(charlab.__file__).parent / "data" / "axis"


# -- the shipped set -------------------------------------------------------------------------------


def test_shipped_roles_are_many_varied_and_distinct():
    roles = load_axis_roles().roles
    assert len(roles) >= 60
    assert all(len(role.prompts) == 5 and len(set(role.prompts)) == 5 for role in roles)
    assert len({role.name.lower() for role in roles}) == len(roles)
    assert {role.kind for role in roles} == set(ROLE_KINDS)
    prompts = [p for role in roles for p in role.prompts]
    assert len(set(prompts)) == len(prompts)
    assert not any(MODEL_NAME in p for p in prompts)


def test_shipped_default_prompts_include_empty_and_named_ones():
    prompts = load_default_prompts().prompts
    assert "" in prompts
    assert "You are an AI assistant." in prompts
    assert sum(MODEL_NAME in p for p in prompts) >= 2


def test_shipped_questions_are_many_with_unique_ids_across_kinds():
    questions = load_extraction_questions().questions
    assert len(questions) >= 100
    assert len({q.id for q in questions}) == len(questions)
    assert len({q.text for q in questions}) == len(questions)
    assert {q.id.split("-")[0] for q in questions} >= {"opinion", "pref", "self", "advice", "hypo"}


def test_shipped_files_load_in_the_role_adoption_eval():
    """Same schema as the eval's role and question sets, so the axis set can be used to measure adoption too."""
    axis = load_axis_roles()
    eval_roles = load_roles(AXIS_DATA / "roles.yaml").roles
    assert [(r.name, r.kind, r.prompts) for r in eval_roles] == [(r.name, r.kind, r.prompts) for r in axis.roles]
    eval_questions = load_questions(AXIS_DATA / "extraction_questions.yaml").questions
    assert [q.id for q in eval_questions] == [q.id for q in load_extraction_questions().questions]


# -- placeholder ------------------------------------------------------------------------------------


def test_fill_model_name():
    assert fill_model_name("You are {model_name}, made by a lab.", "Tern-7B") == "You are Tern-7B, made by a lab."
    assert fill_model_name("", "Tern-7B") == ""
    assert fill_model_name("Keep {braces} as written.", "Tern-7B") == "Keep {braces} as written."
    with pytest.raises(ConfigError, match="model name"):
        fill_model_name("You are {model_name}.", " ")


# -- user files -----------------------------------------------------------------------------------


def test_user_role_file_errors_name_file_line_and_field(tmp_path):
    path = tmp_path / "roles.yaml"
    path.write_text("name: mine\nroles:\n  - name: lamplighter\n    kind: sorcerer\n    prompts: [Light the lamps.]\n")
    with pytest.raises(ConfigError) as err:
        load_axis_roles(path)
    assert f"{path}:4" in str(err.value) and "roles.0.kind" in str(err.value)


def test_user_question_file_rejects_a_repeated_id(tmp_path):
    path = tmp_path / "questions.yaml"
    path.write_text("questions:\n  - id: a\n    text: One?\n  - id: a\n    text: Two?\n")
    with pytest.raises(ConfigError, match="'a' is used twice"):
        load_extraction_questions(path)


# -- the upstream format ----------------------------------------------------------------------------


def _write_upstream(folder: Path) -> Path:
    """A tiny upstream-format folder written for this test: two roles, a default role, three questions."""
    folder.mkdir()
    roles = {
        "lamplighter": ["You light the gas lamps of an old city at dusk.", "Be a lamplighter on his evening round."],
        "tide_pool": ["You are a tide pool full of small creatures."],
        "default": ["", "You are {model_name}, here to help."],
    }
    for stem, prompts in roles.items():
        body = {"instruction": [{"pos": p} for p in prompts]}
        if stem == "lamplighter":
            body |= {"questions": ["Which street is darkest?"], "eval_prompt": "Judge the lamplighter."}
        (folder / f"{stem}.json").write_text(json.dumps(body, indent=2))
    rows = ["Which chore do you enjoy?", "What would you say to a lost child?", "How do you pass a slow afternoon?"]
    (folder / "extraction_questions.jsonl").write_text(
        "".join(json.dumps({"question": q, "id": i}) + "\n" for i, q in enumerate(rows)))
    return folder


def test_import_upstream_folder_written_here(tmp_path):
    roles, defaults, questions = import_upstream(_write_upstream(tmp_path / "up"))
    assert [(r.name, r.kind, len(r.prompts)) for r in roles.roles] == [("lamplighter", None, 2), ("tide pool", None, 1)]
    assert defaults.prompts == ["", "You are {model_name}, here to help."]
    assert [(q.id, q.text) for q in questions.questions][1] == ("1", "What would you say to a lost child?")


def test_import_upstream_single_files_leave_missing_parts_empty(tmp_path):
    folder = _write_upstream(tmp_path / "up")
    imported = import_upstream(folder / "tide_pool.json")
    assert imported.default_prompts is None and imported.questions is None
    assert imported.roles.roles[0].prompts == ["You are a tide pool full of small creatures."]


def test_export_yaml_round_trips_through_the_loaders(tmp_path):
    imported = import_upstream(_write_upstream(tmp_path / "up"))
    written = export_yaml(imported, tmp_path / "out")
    assert sorted(p.name for p in written) == ["default_prompts.yaml", "extraction_questions.yaml", "roles.yaml"]
    assert load_axis_roles(tmp_path / "out" / "roles.yaml") == imported.roles
    assert load_default_prompts(tmp_path / "out" / "default_prompts.yaml") == imported.default_prompts
    assert load_extraction_questions(tmp_path / "out" / "extraction_questions.yaml") == imported.questions
    assert load_roles(tmp_path / "out" / "roles.yaml").roles[1].name == "tide pool"


def test_import_upstream_samples():
    folder = upstream_or_skip("assistant_axis")
    roles, defaults, questions = import_upstream(folder)
    assert {r.name for r in roles.roles} >= {"demon", "librarian", "pirate"}
    assert all(len(r.prompts) == 5 for r in roles.roles)
    assert "" in defaults.prompts and any(MODEL_NAME in p for p in defaults.prompts)
    assert len(questions.questions) == 20 and questions.questions[0].id == "0"


@pytest.mark.parametrize(("name", "text", "expected"), [
    ("pirate.json", '{"instruction": [{"pos": "Sail."}, {"neg": "Stay ashore."}]}',
     ["pirate.json:1", "instruction.1.pos"]),
    ("pirate.json", '{\n  "instruction": [\n    {"pos": "Sail."},\n    {"pos": 7}\n  ]\n}',
     ["pirate.json:4", "instruction.1.pos"]),
    ("pirate.json", '{"prompts": ["Sail."]}', ["pirate.json", "field 'prompts'", '{"instruction": [{"pos"']),
    ("pirate.json", '{\n  "instruction": [\n    {"pos": "   "}\n  ]\n}', ["pirate.json:3", "prompts.0"]),
    ("pirate.json", '["Sail."]', ["pirate.json:1", "not a JSON object"]),
    ("pirate.json", '{"instruction": [', ["pirate.json:1", "not valid JSON"]),
    ("extraction_questions.jsonl", '{"question": "Why?", "id": 0}\n{"text": "How?", "id": 1}\n',
     ["extraction_questions.jsonl:2", "field 'question'"]),
    ("extraction_questions.jsonl", '{"question": "Why?", "id": 0}\n["How?"]\n',
     ["extraction_questions.jsonl:2", "not a JSON object"]),
    ("notes.txt", "hello", ["notes.txt", "expected a role file"]),
])
def test_malformed_upstream_files_name_file_and_field(tmp_path, name, text, expected):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        import_upstream(path)
    for part in expected:
        assert part in str(err.value)


def test_duplicate_upstream_question_ids_across_files(tmp_path):
    for stem in ("a", "b"):
        (tmp_path / f"{stem}.jsonl").write_text('{"question": "Why?", "id": 3}\n')
    with pytest.raises(ConfigError, match="'3' is used twice"):
        import_upstream(tmp_path)


def test_missing_and_empty_sources(tmp_path):
    with pytest.raises(ConfigError, match="file not found"):
        import_upstream(tmp_path / "nowhere.json")
    with pytest.raises(ConfigError, match="no upstream role"):
        import_upstream(tmp_path)
    with pytest.raises(ConfigError, match="at least one"):
        import_upstream()
