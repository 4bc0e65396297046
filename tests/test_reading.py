"""The one reading path for user files (``io`` + ``configfile``): encodings, hostile YAML, hostile JSON.

The first half feeds the ground-level functions each case directly; the second half runs real
commands on such files and checks that each one stops with a one-line error naming the file,
exit status 2, no traceback and nothing written.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from charlab.cli import app
from charlab.configfile import MAX_ALIAS_NODES, read_structured
from charlab.errors import ConfigError
from charlab.io import MAX_DEPTH, NotJSON, iter_jsonl, parse_json, read_json, read_user_text

BOM = b"\xef\xbb\xbf"
DEEP = 100_000


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def refused(read, path: Path) -> str:
    """The message of the ConfigError that reading ``path`` raises."""
    with pytest.raises(ConfigError) as info:
        read(path)
    return str(info.value)


def alias_bomb(levels: int = 9, width: int = 9) -> bytes:
    """The YAML "billion laughs": each anchor is ``width`` aliases of the one before (9**9 leaves)."""
    lines = ["a0: &a0 [" + ", ".join(['"lol"'] * width) + "]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * width) + "]" for i in range(1, levels)]
    return ("\n".join(lines) + "\n").encode()


# -- encodings ------------------------------------------------------------------------------------------


def test_a_byte_order_mark_is_accepted_everywhere(tmp_path):
    assert read_user_text(write(tmp_path / "a.txt", BOM + "héllo".encode())) == "héllo"
    assert read_structured(write(tmp_path / "a.yaml", BOM + b"name: x\nn: 1\n")) == ({"name": "x", "n": 1},
                                                                                    {(): 1, ("name",): 1, ("n",): 2})
    assert read_structured(write(tmp_path / "a.json", BOM + b'{"n": 1}'))[0] == {"n": 1}
    assert list(iter_jsonl(write(tmp_path / "a.jsonl", BOM + b'{"n": 1}\n{"n": 2}\n'))) == [(1, {"n": 1}),
                                                                                          (2, {"n": 2})]


@pytest.mark.parametrize("name", ["a.txt", "a.yaml", "a.json"])
def test_a_bad_byte_names_its_line_and_column(tmp_path, name):
    path = write(tmp_path / name, 'a: "ok"\nb: "caf\xe9"\n'.encode("latin-1"))
    message = refused(read_user_text if name.endswith("txt") else read_structured, path)
    assert f"{path}:2:8:" in message and "0xe9" in message and "re-save the file as UTF-8" in message


def test_a_bad_byte_in_json_lines_names_that_line(tmp_path):
    path = write(tmp_path / "a.jsonl", b'{"n": 1}\n\n{"n": "\xc3\xa9\xff"}\n')
    message = refused(lambda p: list(iter_jsonl(p)), path)
    assert f"{path}:3:9:" in message and "UTF-8" in message


def test_column_counts_characters_not_bytes(tmp_path):
    path = write(tmp_path / "a.yaml", "x: ééé".encode() + b"\xff\n")
    assert f"{path}:1:7:" in refused(read_structured, path)


# -- YAML ---------------------------------------------------------------------------------------------


def test_a_duplicate_key_names_file_line_and_key(tmp_path):
    path = write(tmp_path / "a.yaml", b"name: x\ntraits:\n  - statement: a\n    statement: b\n")
    message = refused(read_structured, path)
    assert f"{path}:4:" in message and "'statement'" in message and "first on line 3" in message


def test_keys_of_different_types_and_merge_overrides_are_not_duplicates(tmp_path):
    text = b"base: &b {x: 1, y: 2}\nover:\n  <<: *b\n  x: 5\nkeys: {1: int, '1': str}\n"
    data, _ = read_structured(write(tmp_path / "a.yaml", text))
    assert data == yaml.safe_load(text) == {"base": {"x": 1, "y": 2}, "over": {"x": 5, "y": 2},
                                            "keys": {1: "int", "1": "str"}}


@pytest.mark.parametrize("text", [b"a: &a [1, *a]\n", b"a: &a\n  b: *a\n", b"- &a\n  - x: *a\n"])
def test_a_recursive_alias_is_refused(tmp_path, text):
    path = write(tmp_path / "a.yaml", text)
    assert f"{path}:1:" in refused(read_structured, path) and "endless loop" in refused(read_structured, path)


def test_an_alias_bomb_fails_fast(tmp_path):
    path = write(tmp_path / "a.yaml", alias_bomb())
    start = time.monotonic()
    message = refused(read_structured, path)
    assert time.monotonic() - start < 2
    assert f"{path}:" in message and f"more than {MAX_ALIAS_NODES}" in message


def test_ordinary_aliases_and_line_index_are_kept(tmp_path):
    text = b"defaults: &d\n  temperature: 0.5\nruns:\n  - *d\n  - {temperature: 1}\n"
    data, lines = read_structured(write(tmp_path / "a.yaml", text))
    assert data == yaml.safe_load(text)
    assert lines[("runs",)] == 3 and lines[("runs", 1, "temperature")] == 5 and lines[("defaults", "temperature")] == 2


@pytest.mark.parametrize("text", [b"[" * DEEP + b"]" * DEEP, "".join("  " * i + "-\n" for i in range(500)).encode()])
def test_deep_yaml_is_refused_not_a_recursion_error(tmp_path, text):
    path = write(tmp_path / "a.yaml", text)
    assert f"nested more than {MAX_DEPTH} deep" in refused(read_structured, path)


def test_yaml_syntax_errors_keep_line_and_column(tmp_path):
    path = write(tmp_path / "a.yaml", b"a: 1\nb: [1, 2\n")
    assert "not valid YAML" in refused(read_structured, path) and f"{path}:3:1:" in refused(read_structured, path)


# -- JSON ---------------------------------------------------------------------------------------------


def test_deep_json_is_refused_with_its_line(tmp_path):
    path = write(tmp_path / "a.json", b"{\n" + b'"x": ' + b"[" * DEEP + b"]" * DEEP + b"\n}")
    message = refused(read_json, path)
    assert f"{path}:2:" in message and f"nested more than {MAX_DEPTH} deep" in message
    lines = write(tmp_path / "a.jsonl", b'{"ok": [[1]]}\n' + b"[" * DEEP + b"]" * DEEP + b"\n")
    assert f"{lines}:2:" in refused(lambda p: list(iter_jsonl(p)), lines)


def test_brackets_inside_strings_do_not_count_as_depth():
    assert parse_json(json.dumps({"s": "[" * 500, "t": "\\\"[" * 500}), "x") == {"s": "[" * 500, "t": "\\\"[" * 500}
    assert parse_json("[" * MAX_DEPTH + "]" * MAX_DEPTH, "x") is not None


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_literals_are_refused_with_their_line(tmp_path, literal):
    path = write(tmp_path / "a.json", f'{{\n"label": "NaN",\n"score": {literal}\n}}'.encode())
    message = refused(read_json, path)
    assert f"{path}:3:" in message and literal in message
    lines = write(tmp_path / "a.jsonl", f'{{"score": 1}}\n{{"score": {literal}}}\n'.encode())
    assert f"{lines}:2:" in refused(lambda p: list(iter_jsonl(p)), lines)


def test_charlab_own_records_may_keep_nan(tmp_path):
    path = write(tmp_path / "values.jsonl", b'{"value": NaN}\n')
    value = next(iter_jsonl(path, finite=False))[1]["value"]
    assert value != value


def test_syntax_errors_are_not_json_with_line_and_column(tmp_path):
    with pytest.raises(NotJSON, match=r"a\.json:2:9: not valid JSON"):
        read_json(write(tmp_path / "a.json", b'{\n "a": 1,,\n}'))
    with pytest.raises(ConfigError, match=r"a\.jsonl:2:2: not valid JSON .*fix or remove this line"):
        list(iter_jsonl(write(tmp_path / "a.jsonl", b'{"a": 1}\n[\n')))


def test_an_endless_integer_is_a_config_error(tmp_path):
    assert "cannot read this JSON" in refused(read_json, write(tmp_path / "a.json", b"1" * 5000))


# -- the same files through real commands -------------------------------------------------------------

BAD_YAML = {  # name -> (content, line the error must name)
    "bad-byte": ('name: t\ndescription: "caf\xe9"\n'.encode("latin-1"), 2),
    "duplicate-key": (b"name: t\ndescription: d\nname: u\n", 3),
    "recursive-alias": (b"name: t\ntraits: &t [*t]\n", 2),
    "alias-bomb": (alias_bomb(), 8),
    "deep": (b"name: t\ntraits: " + b"[" * DEEP + b"]" * DEEP + b"\n", 2),
}
BAD_JSON = {
    "bad-byte": ('[\n{"trait": "caf\xe9"}\n]'.encode("latin-1"), 2),
    "deep": (b"[\n" + b"[" * DEEP + b"]" * DEEP + b"\n]", 2),
    "nan": (b'[\n{"trait": "t", "questions": [NaN]}\n]', 2),
}
BAD_LINES = {  # line 1 is blank (skipped), so each reader's own record checks never run first
    "bad-byte": (b'\n{"chosen": "caf\xe9"}\n', 2),
    "deep": (b"\n" + b"[" * DEEP + b"]" * DEEP + b"\n", 2),
    "nan": (b'\n{"chosen": NaN}\n', 2),
}
COMMANDS = [  # (id, file name, bad contents, argv with {src} and {out})
    ("constitution validate", "c.yaml", BAD_YAML, ["constitution", "validate", "{src}"]),
    ("constitution export", "c.yaml", BAD_YAML, ["constitution", "export", "{src}", "--out", "{out}.jsonl"]),
    ("judge show", "rubric.yaml", BAD_YAML, ["judge", "show", "{src}"]),
    ("constitution import handwritten", "c.txt", BAD_JSON,
     ["constitution", "import", "{src}", "--format", "oct-handwritten", "--out", "{out}.yaml"]),
    ("data instructions", "rows.json", BAD_JSON,
     ["data", "instructions", "{src}", "--prompt-column", "trait", "--response-column", "questions",
      "--out", "{out}.jsonl"]),
    ("axis import role", "pirate.json", {k: v for k, v in BAD_JSON.items() if k != "nan"},
     ["axis", "import", "{src}", "--out", "{out}"]),
    ("constitution import expanded", "c.jsonl", BAD_LINES, ["constitution", "import", "{src}", "--out", "{out}.yaml"]),
    ("data check", "chat.jsonl", BAD_LINES, ["data", "check", "{src}"]),
    ("data hh-rlhf", "hh.jsonl", BAD_LINES, ["data", "hh-rlhf", "{src}", "--out", "{out}.jsonl"]),
    ("axis import questions", "extraction_questions.jsonl", BAD_LINES, ["axis", "import", "{src}", "--out", "{out}"]),
]
CASES = [pytest.param(name, content, line, argv, id=f"{command}-{case}")
         for command, name, bad, argv in COMMANDS for case, (content, line) in bad.items()]


def run_main(monkeypatch, capsys, argv: list[str]) -> tuple[int, str]:
    """The real entry point, which prints a CharlabError in one line and exits 2."""
    from charlab.cli import main

    monkeypatch.setattr(sys, "argv", ["charlab", *argv])
    with pytest.raises(SystemExit) as info:
        main()
    captured = capsys.readouterr()
    return info.value.code, captured.out + captured.err


@pytest.mark.parametrize(("name", "content", "line", "argv"), CASES)
def test_commands_stop_cleanly_on_hostile_files(tmp_path, monkeypatch, capsys, name, content, line, argv):
    src, out = write(tmp_path / name, content), tmp_path / "out"
    args = [part.format(src=src, out=out) for part in argv]
    start = time.monotonic()
    code, output = run_main(monkeypatch, capsys, args)
    assert time.monotonic() - start < 10
    assert code == 2, output
    assert f"{src}:{line}" in output, output
    assert "Traceback" not in output and "RecursionError" not in output
    assert len(output.strip().splitlines()) == 1, output
    assert not any(p.name.startswith("out") for p in tmp_path.iterdir())


def test_a_constitution_with_a_bom_validates(tmp_path):
    text = "name: tiny\ndescription: d\ntraits:\n  - statement: I am tiny.\n    questions: [the cat sat]\n"
    src = write(tmp_path / "c.yaml", BOM + text.encode())
    result = CliRunner().invoke(app, ["constitution", "validate", str(src)])
    assert result.exit_code == 0, result.output
    assert "ok" in result.output and "tiny" in result.output


@pytest.mark.parametrize(("content", "expected"), [
    (b'{"peft_type": "LORA",', "adapter_config.json:1:22: not valid JSON"),
    (b'["LORA"]', "adapter_config.json:1: the top level is a JSON list, not an object"),
    (b'{"peft_type": "LORA", "r": NaN}', "adapter_config.json:1: NaN is not a JSON value"),
])
def test_a_malformed_adapter_config_is_a_config_error(tmp_path, content, expected):
    from charlab.models.refs import ModelRef

    adapter = tmp_path / "adapter"
    adapter.mkdir()
    write(adapter / "adapter_config.json", content)
    with pytest.raises(ConfigError, match=expected):
        ModelRef.parse("org/model", [str(adapter)]).resolve()
