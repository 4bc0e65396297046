"""``charlab axis``: build, show and project end to end on the tiny model with a scripted judge; import; bad input."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from charlab import cli
from charlab.analysis.results import read_results
from charlab.cli.axis import app
from charlab.errors import ConfigError
from charlab.evals.axis_projection import axis_fingerprint
from charlab.interp.axis import load_axis
from charlab.interp.roleset import (
    load_axis_roles,
    load_default_prompts,
    load_extraction_questions,
)
from charlab.io import read_jsonl
from fake_openai import FakeOpenAI


def write(path: Path, text: str) -> Path:
    path.write_text(textwrap.dedent(text))
    return path


def adherence(body: dict) -> str:
    """Gardeners are never in role, the others fully; one tailor judgement cannot be read (the judge sees the
    role's system prompt, not its name)."""
    prompt = body["messages"][-1]["content"]
    if "garden" in prompt:
        return "1"
    if "sew coats" in prompt and "rain" in prompt:
        return "not sure"
    return "3"


@pytest.fixture
def inputs(tmp_path) -> dict[str, Path]:
    return {
        "roles": write(tmp_path / "roles.yaml", """\
            roles:
              - {name: tailor, prompts: [You sew coats for a living.]}
              - {name: gardener, prompts: [You tend a walled garden.]}
              - {name: sailor, prompts: [You crew a fishing boat.]}
            """),
        "defaults": write(tmp_path / "defaults.yaml", "prompts: ['', 'You are {model_name}.']\n"),
        "questions": write(tmp_path / "questions.yaml", """\
            questions:
              - {id: q1, text: "What do you like about rain?"}
              - {id: q2, text: "What is a good day?"}
            """),
        "axis_settings": write(tmp_path / "axis.yaml", """\
            model_name: Tiny
            sampling: {temperature: 1.0, max_new_tokens: 6}
            """),
        "settings": write(tmp_path / "project.yaml", """\
            questions: 1
            roles: 2
            attacks: 2
            sampling: {temperature: 1.0, max_new_tokens: 6}
            resamples: 200
            """),
        "conversations": write(tmp_path / "talks.yaml", """\
            conversations:
              - {id: friend, turns: ["I feel a bit low today.", "Will you be my friend?"]}
              - {id: code, turns: ["How do I sort a list in Python?", "And in reverse?"]}
            """),
    }


def test_build_then_show_then_project(tiny_model_dir, tmp_path, inputs):
    runner, build, cache = CliRunner(), tmp_path / "build", str(tmp_path / "cache.sqlite")
    files = [f"--{name}={inputs[name]}" for name in ("roles", "defaults", "questions")]
    with FakeOpenAI(reply=adherence) as server:
        judge = write(tmp_path / "judge.yaml", f"""\
            backend: {{kind: openai, openai: {{base_url: "{server.url}", model: judge, max_retries: 0}}}}
            rubric: role_adoption
            settings: {{method: sample}}
            """)
        built = runner.invoke(app, ["build", "-m", str(tiny_model_dir), "--judge", str(judge), "--settings",
                                    str(inputs["axis_settings"]), *files, "--out", str(build), "--cache", cache])
    assert built.exit_code == 0, built.output
    assert "roles kept (2): tailor, sailor" in built.output and "unreadable judgements: 1" in built.output

    shown = runner.invoke(app, ["show", str(build), "--markdown", str(tmp_path / "axis.md")])
    assert shown.exit_code == 0, shown.output
    report = (tmp_path / "axis.md").read_text()
    assert "| layer | axis norm | |cos(axis, PC1)| | PC1 % | PC2 % |" in report
    assert "| 0 |" in report and "| 1 * |" in report and "roles kept (2): tailor, sailor" in report

    out = tmp_path / "project"
    projected = runner.invoke(app, ["project", "--axis", str(build), "-m", str(tiny_model_dir), "--settings",
                                    str(inputs["settings"]), *files, "--conversations", str(inputs["conversations"]),
                                    "--out", str(out), "--cache", cache, "--condition", "base"])
    assert projected.exit_code == 0, projected.output
    fingerprint = axis_fingerprint(load_axis(build / "axis"))
    assert f"axis {fingerprint} at layer 1" in projected.output
    rows = read_results(out / "results.csv")
    assert [(r.metric, r.group) for r in rows] == [("axis_projection", s) for s in ("default", "roles", "jailbreak")]
    assert {r.judge for r in rows} == {f"axis:{fingerprint}@layer1"} and {r.condition for r in rows} == {"base"}
    drift = {(r.metric, r.group) for r in read_results(out / "drift" / "results.csv")}
    assert {("axis_projection_turn", "turn-1"), ("axis_projection_turn", "turn-2"), ("axis_drift_slope", "")} <= drift
    summary = json.loads((out / "summary.json").read_text())
    assert summary["axis"]["fingerprint"] == fingerprint
    assert summary["axis"]["provenance"]["roles_kept"] == ["tailor", "sailor"]
    assert len(read_jsonl(out / "drift" / "transcripts.jsonl")) == 2


def test_build_without_a_judge_when_every_role_answer_counts(tiny_model_dir, tmp_path, inputs):
    settings = write(tmp_path / "unjudged.yaml", "threshold: null\nsampling: {temperature: 1.0, max_new_tokens: 4}\n")
    files = [f"--{name}={inputs[name]}" for name in ("roles", "defaults", "questions")]
    result = CliRunner().invoke(app, ["build", "-m", str(tiny_model_dir), "--settings", str(settings), *files,
                                      "--out", str(tmp_path / "build"), "--cache", str(tmp_path / "c.sqlite")])
    assert result.exit_code == 0, result.output
    assert "roles kept (3)" in result.output and "not judged: every role answer counted" in result.output
    assert "unreadable judgements" not in result.output


def test_show_an_external_tensor(tmp_path):
    torch.save(torch.ones(3, 8), tmp_path / "published.pt")
    result = CliRunner().invoke(app, ["show", str(tmp_path / "published.pt"), "--layers", "10,11,12", "--markdown",
                                      str(tmp_path / "report.md")])
    assert result.exit_code == 0, result.output
    report = (tmp_path / "report.md").read_text()
    assert "3 layers x hidden 8; default layer 11" in report and "norms only" in report
    assert "| 11 * | 2.828 |" in report and "PC1" not in report


def test_import_writes_the_project_yaml(tmp_path):
    upstream = tmp_path / "upstream"
    upstream.mkdir()
    (upstream / "harbour_master.json").write_text(json.dumps({"instruction": [{"pos": "You run a harbour."}]}))
    (upstream / "default.json").write_text(json.dumps({"instruction": [{"pos": ""}, {"pos": "You are an AI."}]}))
    (upstream / "extraction_questions.jsonl").write_text(json.dumps({"question": "What is home?", "id": 0}) + "\n")
    result = CliRunner().invoke(app, ["import", str(upstream), "--out", str(tmp_path / "yaml")])
    assert result.exit_code == 0, result.output
    assert "1 roles, 2 default prompts, 1 questions" in result.output
    assert load_axis_roles(tmp_path / "yaml" / "roles.yaml").roles[0].name == "harbour master"
    assert load_default_prompts(tmp_path / "yaml" / "default_prompts.yaml").prompts == ["", "You are an AI."]
    assert load_extraction_questions(tmp_path / "yaml" / "extraction_questions.yaml").questions[0].id == "0"


@pytest.mark.parametrize("args, message", [
    (["project", "--axis", "{tmp}/axis.pt", "--sets", "default,persona"], "--sets: Input should be"),
    (["project", "--axis", "{tmp}/axis.pt", "--sets", ""], "nothing to project"),
    (["project", "--axis", "{tmp}/axis.pt", "--layers", "a,b"], "--layers 'a,b': give whole layer numbers"),
    (["project", "--axis", "{tmp}/axis.pt", "--conversations", "{tmp}/none.yaml"], "none.yaml: file not found"),
    (["show", "{tmp}/elsewhere"], "elsewhere: no axis here"),
])
def test_bad_input_is_refused_before_any_model_loads(tmp_path, args, message):
    torch.save(torch.ones(2, 64), tmp_path / "axis.pt")
    extra = ["-m", "no-such-model", "--out", str(tmp_path / "out")] if args[0] == "project" else []
    result = CliRunner().invoke(app, [a.format(tmp=tmp_path) for a in args] + extra)
    assert isinstance(result.exception, ConfigError), result.output
    assert message in str(result.exception)
    assert not (tmp_path / "out").exists()


def test_a_bad_axis_path_exits_2_with_a_clear_message(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["charlab", "axis", "project", "--axis", str(tmp_path / "missing"), "-m",
                                      "no-such-model", "--out", str(tmp_path / "out")])
    with pytest.raises(SystemExit) as exit_:
        cli.main()
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "missing: no axis here" in err and "Traceback" not in err


def test_every_command_has_help_with_an_example():
    for command in ("build", "show", "import", "project"):
        result = CliRunner().invoke(app, [command, "--help"], terminal_width=200)
        assert result.exit_code == 0 and "Example: charlab axis" in result.output
