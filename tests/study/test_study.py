"""The study: validation with located errors, the DAG, a whole run on the tiny model, and a rerun that does nothing."""

from __future__ import annotations

import json
import time

import pytest
import yaml
from typer.testing import CliRunner

from charlab.analysis.results import read_results
from charlab.errors import ConfigError
from charlab.study.plan import plan_lines, plan_study
from charlab.study.run import run_study, study_status
from charlab.study.spec import load_study, shipped_studies, study_path
from fake_openai import FakeOpenAI
from study_fixture import reply, write_study

pytestmark = pytest.mark.timeout(900)


def _edit(path, change) -> None:
    data = yaml.safe_load(path.read_text())
    change(data)
    path.write_text(yaml.safe_dump(data, sort_keys=False))


@pytest.fixture
def study_file(tmp_path, tiny_model_dir):
    return write_study(tmp_path, tiny_model_dir, "http://127.0.0.1:9/v1")


def test_plan_has_every_node_with_its_dependencies(study_file):
    plan = plan_study(load_study(study_file))
    ids = [n.id for n in plan.nodes]
    assert ids[0] == "axis" and ids[-2:] == ["audit", "report"]
    assert {"train/tiny/seed-0", "challenge/risky/tiny/seed-0", "evaluate/tiny/seed-0/before",
            "evaluate/tiny/seed-0/risky", "margin/tiny/seed-0"} <= set(ids)
    assert plan.node("challenge/risky/hhh/seed-0").deps == ("train/hhh/seed-0",)
    assert plan.node("evaluate/hhh/seed-0/risky").deps == ("challenge/risky/hhh/seed-0", "axis")
    assert plan.node("margin/base/seed-0").deps == ("challenge/risky/base/seed-0",)
    assert set(plan.node("report").deps) == set(ids[:-1])
    for position, node in enumerate(plan.nodes):  # plan order is a topological order
        assert all(ids.index(dep) < position for dep in node.deps)
    assert not plan.node("train/base/seed-0").uses_model and plan.node("train/hhh/seed-0").uses_model
    assert plan.node("train/hhh/seed-0").cost.trained_tokens == 600
    slower = plan_study(load_study(study_file).model_copy(update={"hardware": plan.study.hardware.model_copy(
        update={"step_overhead_s": 36.0})}))
    model_steps = sum(n.uses_model for n in plan.nodes)
    assert slower.device_hours() - plan.device_hours() == pytest.approx(model_steps * 36.0 / 3600)
    text = "\n".join(plan_lines(plan))
    assert "| evaluate | 6 |" in text and "device-hours" in text.lower() and "API teacher tokens" in text


@pytest.mark.parametrize(("change", "expected"), [
    (lambda d: d["evaluations"].pop("axis"), "steer_sweep needs an axis"),
    (lambda d: d["analysis"].update(groups={"nobody": "value"}), "unknown conditions: nobody"),
    (lambda d: d["challenges"][0].update(holdout=0), "holdout > 0"),
    (lambda d: d["evaluations"]["context"].update(folds="many"), "evaluations.context.folds"),
    (lambda d: d["conditions"].append({"name": "tiny", "kind": "base"}), "unique"),
])
def test_bad_studies_are_refused_with_their_location(study_file, change, expected):
    _edit(study_file, change)
    with pytest.raises(ConfigError, match=expected) as error:
        load_study(study_file)
    assert str(study_file) in str(error.value)


def test_a_bad_field_names_its_line(study_file):
    text = study_file.read_text().replace("folds: 2", "folds: 0")
    study_file.write_text(text)
    line = next(i for i, row in enumerate(text.splitlines(), 1) if "folds: 0" in row)
    with pytest.raises(ConfigError, match=rf"{study_file.name}:{line}: field .evaluations.context.folds."):
        load_study(study_file)


def test_shipped_studies_validate_and_plan():
    assert {"demo", "neutral-controls-llama8b"} <= set(shipped_studies())
    for name in ("demo", "neutral-controls-llama8b"):
        plan = plan_study(load_study(study_path(name), require_inputs=False))
        assert plan.total.generated_tokens > 0 and plan.device_hours() > 0
    load_study(study_path("demo"))  # the demo needs nothing outside the package
    big = plan_study(load_study(study_path("neutral-controls-llama8b"), require_inputs=False))
    assert len([n for n in big.nodes if n.kind == "train"]) == 1 + 6 * 3  # base once, six trained x three seeds
    assert len([n for n in big.nodes if n.kind == "challenge"]) == 19 * 3  # three challenge domains on each
    with pytest.raises(ConfigError, match="inputs missing: .*goodness.txt"):
        load_study(study_path("neutral-controls-llama8b"))
    assert "Missing inputs" in "\n".join(plan_lines(big))


def test_cli_plan_and_a_missing_study(study_file, tmp_path):
    from charlab.cli import app

    result = CliRunner().invoke(app, ["study", "plan", str(study_file), "--markdown", str(tmp_path / "plan.md")])
    assert result.exit_code == 0, result.output
    assert "evaluate/tiny/seed-0/risky" in (tmp_path / "plan.md").read_text()
    missing = CliRunner().invoke(app, ["study", "plan", str(tmp_path / "nope.yaml")])
    assert isinstance(missing.exception, ConfigError) and "nope.yaml" in str(missing.exception)


def test_a_whole_study_then_a_rerun_that_does_no_model_work(tmp_path, tiny_model_dir):
    with FakeOpenAI(reply=reply) as server:
        path = write_study(tmp_path, tiny_model_dir, server.url)
        ran = []
        run = run_study(path, tmp_path / "run", cache_path=tmp_path / "cache.sqlite",
                        on_node=lambda node, did: ran.append((node.id, did)))
        assert all(did for _, did in ran) and len(ran) == len(run.plan.nodes)
        asked = len(server.chat_requests)

        again, started = [], time.monotonic()
        run_study(path, tmp_path / "run", cache_path=tmp_path / "cache.sqlite",
                  on_node=lambda node, did: again.append(did))
        assert time.monotonic() - started < 15 and not any(again)
        assert len(server.chat_requests) == asked

    out = tmp_path / "run"
    rows = read_results(out / "results.csv")
    assert {r.study for r in rows} == {"tiny-study"}
    assert {(r.condition, r.challenge) for r in rows if r.eval == "em"} == {
        (c, s) for c in ("base", "tiny", "hhh") for s in ("", "risky")}
    assert {r.condition for r in rows if r.eval == "context"} == {"base", "tiny", "hhh"}
    assert {r.condition for r in rows if r.metric == "hardening_score"} == {"base", "tiny", "hhh"}
    shifts = [r for r in rows if r.metric == "risky_margin_shift"]
    assert len(shifts) == 3 and all(r.challenge == "risky" for r in shifts)
    assert (out / "axis" / "axis" / "axis.safetensors").is_file() and (out / "budget_audit.json").is_file()
    assert (out / "report" / "report.html").is_file() and (out / "report" / "report.md").is_file()
    statuses, spent, planned = study_status(out)
    assert {s.status for s in statuses} == {"done"} and spent == planned


def test_a_failing_step_is_reported_and_the_rerun_continues(tmp_path, tiny_model_dir):
    from charlab.cli import app
    from charlab.study.run import StudyFailed

    def only_base(data: dict) -> None:
        data.update(conditions=[data["conditions"][0]], challenges=[], analysis={},
                    evaluations={"evals": ["em"], "suite": data["evaluations"]["suite"]})

    path = write_study(tmp_path, tiny_model_dir, "http://127.0.0.1:9/v1", name="fails")  # nothing listens there
    _edit(path, only_base)
    with pytest.raises(StudyFailed, match="evaluate/base/seed-0/before"):
        run_study(path, tmp_path / "run", cache_path=tmp_path / "cache.sqlite")
    statuses, _, _ = study_status(tmp_path / "run")
    by_id = {s.node.id: s for s in statuses}
    assert by_id["train/base/seed-0"].status == "done"
    assert by_id["evaluate/base/seed-0/before"].status == "failed"
    assert "127.0.0.1:9" in by_id["evaluate/base/seed-0/before"].detail
    assert by_id["report"].status == "pending"
    shown = CliRunner().invoke(app, ["study", "status", str(tmp_path / "run")])
    assert shown.exit_code == 0 and "failed" in shown.output and "1 done" in shown.output

    with FakeOpenAI(reply=reply) as server:
        path = write_study(tmp_path, tiny_model_dir, server.url, name="fails")
        _edit(path, only_base)
        run_study(path, tmp_path / "run", cache_path=tmp_path / "cache.sqlite")
    statuses, _, _ = study_status(tmp_path / "run")
    assert {s.status for s in statuses} == {"done"}
    assert json.loads((tmp_path / "run" / "study.json").read_text())["study"]["name"] == "fails"
