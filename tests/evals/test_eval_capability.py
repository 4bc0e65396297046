"""The capability eval: lm-eval tasks on a charlab-loaded base + adapter stack, fully offline.

Runs the shipped 20-question ``charlab_tiny_mc`` task (a local JSONL) on the tiny random Llama,
once on the base and once with a random non-zero LoRA on top, and checks the rows, intervals and
files, and that lm-eval's log-likelihoods are exactly those of the model charlab loaded.
"""

from __future__ import annotations

import csv
import json
import math
import shutil
import sys
from pathlib import Path

import pytest
import torch

from charlab.analysis.results import EvalTarget, read_results
from charlab.analysis.stats import Z95, wilson
from charlab.errors import ConfigError
from charlab.evals.capability import (
    CapabilitySettings,
    plain,
    result_rows,
    run_capability,
    shipped_tasks_dir,
)
from charlab.models.refs import ModelRef

TASK = "charlab_tiny_mc"
QUESTIONS = 20


@pytest.fixture(scope="module")
def lm_eval():
    return pytest.importorskip("lm_eval")


def _settings(**changes) -> CapabilitySettings:
    return CapabilitySettings(**{"tasks": [TASK], "device": "cpu", "batch_size": 16, **changes})


def _task_copy(folder: Path, task: str, data_file: str) -> Path:
    """The shipped task under another name, reading ``data_file`` next to its YAML."""
    folder.mkdir(exist_ok=True)
    text = (shipped_tasks_dir() / f"{TASK}.yaml").read_text()
    (folder / f"{task}.yaml").write_text(text.replace(f"task: {TASK}", f"task: {task}").replace(f"{TASK}.jsonl",
                                                                                               data_file))
    return folder


def _samples(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "lm_eval_samples.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def base_run(lm_eval, tiny_model_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("capability-base")
    rows = run_capability(ModelRef.parse(str(tiny_model_dir)), _settings(), EvalTarget(condition="base"), out)
    return rows, out


@pytest.fixture(scope="module")
def adapter_run(lm_eval, tiny_model_dir, condition_adapter, tmp_path_factory):
    out = tmp_path_factory.mktemp("capability-adapter")
    ref = ModelRef.parse(str(tiny_model_dir), [str(condition_adapter)])
    rows = run_capability(ref, _settings(), EvalTarget(condition="character", seed=3), out)
    return rows, out, ref


def test_rows_are_accuracies_over_every_question_with_wilson_intervals(base_run):
    rows, out = base_run
    by_metric = {row.metric: row for row in rows}
    assert set(by_metric) == {f"{TASK}/acc", f"{TASK}/acc_norm"}
    samples = _samples(out)
    assert len(samples) == QUESTIONS and {s["task"] for s in samples} == {TASK}
    for name, row in by_metric.items():
        assert (row.eval, row.condition, row.group, row.n) == ("capability", "base", "", QUESTIONS)
        assert 0.0 <= row.value <= 1.0
        successes = sum(s[name.split("/")[1]] for s in samples)
        expected = wilson(int(successes), QUESTIONS)
        assert (row.value, row.ci_low, row.ci_high) == (expected.value, expected.low, expected.high)
    assert read_results(out / "results.csv") == rows


def test_files_are_strict_json(base_run):
    _, out = base_run

    def refuse(constant):
        raise AssertionError(f"non-JSON constant {constant}")

    raw = json.loads((out / "lm_eval_results.json").read_text(), parse_constant=refuse)
    assert raw["n-samples"][TASK]["effective"] == QUESTIONS and "samples" not in raw
    assert raw["config"]["charlab_fingerprint"] == ModelRef.parse(raw["config"]["charlab_model"]).resolve().fingerprint
    for line in (out / "lm_eval_samples.jsonl").read_text().splitlines():
        json.loads(line, parse_constant=refuse)
    settings = json.loads((out / "settings.json").read_text())
    assert settings["settings"]["tasks"] == [TASK] and settings["target"]["condition"] == "base"


def test_adapter_stack_changes_the_scored_loglikelihoods(base_run, adapter_run):
    base, with_adapter = _samples(base_run[1]), _samples(adapter_run[1])
    assert [s["arguments"] for s in base] == [s["arguments"] for s in with_adapter]
    base_ll = [choice[0] for s in base for choice in s["filtered_resps"]]
    adapter_ll = [choice[0] for s in with_adapter for choice in s["filtered_resps"]]
    assert len(base_ll) == 4 * QUESTIONS
    assert max(abs(a - b) for a, b in zip(base_ll, adapter_ll)) > 1e-3
    fingerprints = [json.loads((out / "settings.json").read_text())["fingerprint"]
                    for out in (base_run[1], adapter_run[1])]
    assert fingerprints[0] != fingerprints[1] == adapter_run[2].resolve().fingerprint
    assert {(r.condition, r.seed) for r in adapter_run[0]} == {("character", 3)}


def test_loglikelihoods_are_those_of_charlabs_loaded_stack(adapter_run):
    """lm-eval scores the very model charlab loads: recompute a few answers by hand."""
    from charlab.models.loading import load_model_and_tokenizer

    model, tokenizer = load_model_and_tokenizer(adapter_run[2], device="cpu")
    for sample in _samples(adapter_run[1])[:3]:
        for (context, continuation), (scored, _) in zip(sample["arguments"], sample["filtered_resps"]):
            whole = tokenizer.encode(context + continuation)
            start = len(tokenizer.encode(context))
            with torch.no_grad():
                logits = model(torch.tensor([whole[:-1]])).logits[0].float().log_softmax(-1)
            expected = sum(logits[i - 1, whole[i]].item() for i in range(start, len(whole)))
            assert math.isclose(scored, expected, rel_tol=1e-4, abs_tol=1e-4)


def test_unknown_task_names_close_matches_and_writes_nothing(lm_eval, tiny_model_dir, tmp_path):
    out = tmp_path / "out"
    with pytest.raises(ConfigError, match=f"unknown lm-eval task 'charlab_tiny_m'; close matches: .*{TASK}"):
        run_capability(str(tiny_model_dir), _settings(tasks=["charlab_tiny_m"]), EvalTarget(), out)
    assert not out.exists()


def test_missing_include_path_is_a_config_error(lm_eval, tiny_model_dir, tmp_path):
    with pytest.raises(ConfigError, match="include_path .*nowhere is not a folder"):
        run_capability(str(tiny_model_dir), _settings(include_path=str(tmp_path / "nowhere")), EvalTarget(),
                       tmp_path / "out")


def test_task_with_a_missing_data_file_is_a_config_error(lm_eval, tiny_model_dir, tmp_path):
    tasks = _task_copy(tmp_path / "tasks", "lost_mc", "lost.jsonl")
    settings = _settings(tasks=["lost_mc"], include_path=str(tasks))
    with pytest.raises(ConfigError, match=r"task 'lost_mc' .*tasks/lost\.jsonl not found"):
        run_capability(str(tiny_model_dir), settings, EvalTarget(), tmp_path / "out")


def test_missing_lm_eval_names_the_extra(tiny_model_dir, monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # makes `import lm_eval` raise ImportError
    with pytest.raises(ConfigError, match=r"pip install 'charlab\[eval\]'"):
        run_capability(str(tiny_model_dir), _settings(), EvalTarget(), tmp_path / "out")


def test_intervals_wilson_for_binary_means_else_normal_from_stderr():
    raw = {"results": {"t": {"alias": "t", "acc,none": 0.75, "acc_stderr,none": 0.2, "brier,none": 0.3,
                             "brier_stderr,none": 0.05, "f1,none": 0.5, "f1_stderr,none": "N/A"},
                       "g": {"acc,none": 0.6, "acc_stderr,none": 0.1}},
           "n-samples": {"t": {"original": 4, "effective": 4}}, "group_subtasks": {"g": ["t"]}}
    samples = {"t": [{"filter": "none", "acc": a, "brier": b, "f1": 0.5} for a, b in
                     [(1, 0.1), (1, 0.2), (1, 0.4), (0, 0.5)]]}
    rows = {r.metric: r for r in result_rows(raw, samples, EvalTarget())}
    assert set(rows) == {"t/acc", "t/brier", "t/f1", "g/acc"}
    assert (rows["t/acc"].ci_low, rows["t/acc"].ci_high) == (wilson(3, 4).low, wilson(3, 4).high)
    assert rows["t/brier"].ci_low == pytest.approx(0.3 - Z95 * 0.05)
    assert rows["t/f1"].ci_low is None and rows["t/f1"].n == 4
    assert rows["g/acc"].ci_high == pytest.approx(0.6 + Z95 * 0.1) and rows["g/acc"].n == 4


def test_plain_makes_strict_json():
    import numpy as np

    value = {"a": np.float32(0.5), "b": (1.0, False), "c": {3, 1}, "d": float("nan"), "e": len, 4: np.arange(2)}
    assert json.loads(json.dumps(plain(value), allow_nan=False)) == {
        "a": 0.5, "b": [1.0, False], "c": [1, 3], "d": None, "e": str(len), "4": [0, 1]}


# -- the CLI -----------------------------------------------------------------------------------


def _cli():
    import typer
    from typer.testing import CliRunner

    from charlab.cli.eval_capability import register

    app = typer.Typer()
    app.callback()(lambda: None)  # a group, so the command is called by name as under `charlab eval`
    register(app)
    return CliRunner(), app


def test_cli_runs_a_custom_task_with_relative_data_from_any_folder(lm_eval, tiny_model_dir, tmp_path, monkeypatch):
    tasks = _task_copy(tmp_path / "tasks", "mine_mc", "mine.jsonl")
    shutil.copy(shipped_tasks_dir() / f"{TASK}.jsonl", tasks / "mine.jsonl")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)  # a relative data_files path must not depend on the working directory
    runner, app = _cli()
    out = tmp_path / "out"
    result = runner.invoke(app, ["capability", "--model", str(tiny_model_dir), "--task", "mine_mc",
                                 "--include-path", str(tasks), "--limit", "3", "--device", "cpu", "--out", str(out),
                                 "--condition", "base", "--seed", "2"])
    assert result.exit_code == 0, result.output
    assert "mine_mc/acc" in result.output and "results.csv" in result.output
    with open(out / "results.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert {(r["metric"], r["n"], r["condition"], r["seed"]) for r in rows} == {
        ("mine_mc/acc", "3", "base", "2"), ("mine_mc/acc_norm", "3", "base", "2")}


def test_cli_bad_input_is_one_config_error_and_writes_nothing(tiny_model_dir, tmp_path):
    runner, app = _cli()
    out = tmp_path / "out"
    no_tasks = runner.invoke(app, ["capability", "--model", str(tiny_model_dir), "--out", str(out)])
    assert isinstance(no_tasks.exception, ConfigError) and "--task" in str(no_tasks.exception)
    settings = tmp_path / "settings.yaml"
    settings.write_text(f"tasks: [{TASK}]\nlimit: 0\n")
    bad = runner.invoke(app, ["capability", "--model", str(tiny_model_dir), "--settings", str(settings),
                              "--out", str(out)])
    assert isinstance(bad.exception, ConfigError) and "settings.yaml:2: field 'limit'" in str(bad.exception)
    assert ConfigError.exit_code == 2 and "\n" not in str(bad.exception) + str(no_tasks.exception)
    assert not out.exists()
