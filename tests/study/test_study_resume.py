"""Kill a study with SIGKILL at several points, rerun the same command, and get the uninterrupted results."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from charlab.analysis.results import read_results
from charlab.study.run import run_study, study_status
from fake_openai import FakeOpenAI
from study_fixture import reply, write_study

pytestmark = pytest.mark.timeout(900)

LAUNCH = ("import sys; from charlab.study.run import run_study; "
          "run_study(sys.argv[1], sys.argv[2], cache_path=sys.argv[3])")


def smaller(path: Path) -> None:
    """The fixture study without the interpretability nodes: trainings, challenge, evaluations, margin, report."""
    data = yaml.safe_load(path.read_text())
    for key in ("axis", "context", "steer_sweep"):
        data["evaluations"].pop(key)
    data["conditions"] = [c for c in data["conditions"] if c["name"] != "hhh"]
    path.write_text(yaml.safe_dump(data, sort_keys=False))


def finished_nodes(out: Path) -> int:
    return len(list((out / "study" / "steps").glob("*/*/manifest.json")))


def kill_when(study: Path, out: Path, cache: Path, reached, extra_s: float) -> None:
    """Start the study in a child process and SIGKILL it ``extra_s`` after ``reached(out)`` turns true."""
    child = subprocess.Popen([sys.executable, "-c", LAUNCH, str(study), str(out), str(cache)],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 300
    while not reached(out) and child.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(extra_s)
    assert child.poll() is None, "the study finished before the kill point; move the point earlier"
    os.killpg(child.pid, signal.SIGKILL)
    child.wait()


def test_killed_runs_resume_to_the_uninterrupted_results(tmp_path, tiny_model_dir):
    with FakeOpenAI(reply=reply) as server:
        study = write_study(tmp_path, tiny_model_dir, server.url, name="resume")
        smaller(study)
        reference = run_study(study, tmp_path / "reference", cache_path=tmp_path / "reference.sqlite")
        expected = read_results(reference.out / "results.csv")
        total = len(reference.plan.nodes)
        # Kill points: inside the character's DPO training, mid-study (just after two nodes finished), and late.
        points = (("in-training", lambda out: any(out.glob("conditions/tiny/seed-0/steps/dpo/*/*")), 0.5),
                  ("middle", lambda out: finished_nodes(out) >= 2, 1.0),
                  ("late", lambda out: finished_nodes(out) >= total - 4, 0.3))
        for label, reached, extra_s in points:
            out, cache = tmp_path / label, tmp_path / f"{label}.sqlite"
            kill_when(study, out, cache, reached, extra_s)
            killed_at = finished_nodes(out)
            assert killed_at < total
            statuses, _, _ = study_status(out)
            assert {s.status for s in statuses} <= {"done", "interrupted", "pending"}
            ran = []
            run_study(study, out, cache_path=cache, on_node=lambda node, did, ran=ran: ran.append(did))
            assert sum(ran) == total - killed_at  # finished nodes were not redone
            assert read_results(out / "results.csv") == expected, label
