"""Run folders and steps: manifests written last, verification, failure and kill safety, aliases."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

import charlab.io
from charlab.io import atomic_write_jsonl, atomic_write_text, read_jsonl
from charlab.store.artifacts import MANIFEST, Run

pytestmark = pytest.mark.timeout(60)


def distill(run: Run, n: int = 3, calls: list | None = None, **step_kw):
    """A toy step the way pipeline code uses it; ``calls`` records each time its body runs."""
    step = run.step("distill", {"model": "fp-a", "n": n}, version="1", **step_kw)
    if not step.done:
        with step.running():
            if calls is not None:
                calls.append(n)
            atomic_write_jsonl(step.path("pairs.jsonl"), [{"i": i} for i in range(n)])
            atomic_write_text(step.path("logs/summary.txt"), f"{n} pairs\n")
            step.finish(counts={"pairs": n}, tokens={"prompt": 10 * n, "completion": 20 * n})
    return step


def test_finished_step_has_a_verifying_manifest(tmp_path):
    step = distill(Run(tmp_path / "run"))
    assert step.done and step.state == "done" and step.problems() == []
    assert step.dir == tmp_path / "run" / "steps" / "distill" / step.key

    manifest = json.loads((step.dir / MANIFEST).read_text())
    assert manifest["kind"] == "distill" and manifest["key"] == step.key
    assert manifest["key_fields"] == {"model": "fp-a", "n": 3} and manifest["version"] == "1"
    assert set(manifest["files"]) == {"pairs.jsonl", "logs/summary.txt"}
    assert manifest["files"]["pairs.jsonl"] == {"sha256": charlab.io.sha256_file(step.path("pairs.jsonl")),
                                                "bytes": step.path("pairs.jsonl").stat().st_size}
    assert manifest["counts"] == {"pairs": 3} and manifest["tokens"] == {"prompt": 30, "completion": 60}
    assert manifest["timings"]["seconds"] >= 0 and manifest["timings"]["started"] <= manifest["timings"]["finished"]
    assert manifest["charlab_version"]


def test_manifest_is_the_last_file_written(tmp_path, monkeypatch):
    written = []
    real = charlab.io.atomic_write_bytes

    def spy(path, data):
        written.append(os.fspath(path))
        return real(path, data)

    monkeypatch.setattr(charlab.io, "atomic_write_bytes", spy)
    step = distill(Run(tmp_path / "run"))
    in_step = [p for p in written if p.startswith(str(step.dir))]
    assert [os.path.basename(p) for p in in_step] == ["pairs.jsonl", "summary.txt", MANIFEST]


def test_same_inputs_same_folder_and_rerun_skips(tmp_path):
    run = Run(tmp_path / "run")
    calls = []
    first = distill(run, calls=calls)
    again = distill(run, calls=calls)
    assert calls == [3] and again.key == first.key
    assert distill(run, n=4, calls=calls).key != first.key
    assert run.step("distill", {"model": "fp-a", "n": 3}, version="2").key != first.key
    assert run.step("distill", {"n": 3, "model": "fp-a"}, version="1").key == first.key  # dict order is irrelevant


@pytest.mark.parametrize("damage", ["edit", "delete", "truncate_manifest", "bogus_manifest"])
def test_damaged_step_does_not_verify_and_is_redone(tmp_path, damage):
    run = Run(tmp_path / "run")
    calls = []
    step = distill(run, calls=calls)
    if damage == "edit":
        step.path("pairs.jsonl").write_text('{"i": 99}\n{"i": 1}\n{"i": 2}\n')
    elif damage == "delete":
        step.path("logs/summary.txt").unlink()
    elif damage == "truncate_manifest":
        (step.dir / MANIFEST).write_text('{"kind": "dis')
    else:
        (step.dir / MANIFEST).write_text(json.dumps({"key": step.key, "files": ["pairs.jsonl"]}))
    assert not step.done and step.state == "incomplete" and step.problems()

    redone = distill(run, calls=calls)
    assert calls == [3, 3] and redone.done
    assert read_jsonl(redone.path("pairs.jsonl")) == [{"i": 0}, {"i": 1}, {"i": 2}]


def test_exception_inside_the_step_leaves_no_manifest(tmp_path):
    run = Run(tmp_path / "run")
    step = run.step("train", {"lr": 1e-4})
    with pytest.raises(RuntimeError, match="out of memory"):
        with step.running():
            atomic_write_text(step.path("half.txt"), "partial")
            raise RuntimeError("out of memory")
    assert not (step.dir / MANIFEST).exists() and not step.done

    with pytest.raises(KeyboardInterrupt):  # even a failure after finish() un-finishes the step
        with step.running():
            step.finish()
            raise KeyboardInterrupt
    assert not (step.dir / MANIFEST).exists() and not step.done


def test_redo_removes_the_stale_manifest_before_running(tmp_path):
    run = Run(tmp_path / "run")
    step = distill(run)
    step.path("pairs.jsonl").write_text("tampered\n")
    with pytest.raises(ValueError):
        with step.running():
            assert not (step.dir / MANIFEST).exists()
            raise ValueError("crash during the redo")
    assert not step.done


def test_finish_is_required_and_only_inside_running(tmp_path):
    step = Run(tmp_path / "run").step("eval", {"x": 1})
    with pytest.raises(RuntimeError, match="inside"):
        step.finish()
    with pytest.raises(RuntimeError, match="without step.finish"):
        with step.running():
            atomic_write_text(step.path("out.txt"), "x")
    assert not step.done


def test_interrupted_atomic_write_leaves_no_file(tmp_path, monkeypatch):
    """A write that dies before its rename leaves neither the target nor a temp file behind."""
    step = Run(tmp_path / "run").step("eval", {"x": 1})

    def fail(*args):
        raise OSError("disk full")

    with step.running():
        atomic_write_text(step.path("ok.txt"), "ok")
        monkeypatch.setattr(os, "replace", fail)
        with pytest.raises(OSError):
            atomic_write_text(step.path("big.txt"), "x" * 10_000)
        assert sorted(p.name for p in step.dir.iterdir()) == ["ok.txt"]
        with pytest.raises(OSError):  # the manifest itself is written the same way
            step.finish()
        monkeypatch.undo()
        assert not (step.dir / MANIFEST).exists()
        step.finish()
    assert step.done


def test_killed_step_leaves_no_manifest_and_stray_temp_files_are_ignored(tmp_path):
    script = textwrap.dedent(f"""
        import os, signal
        from charlab.io import atomic_write_text
        from charlab.store.artifacts import Run
        step = Run({str(tmp_path / "run")!r}).step("distill", {{"n": 1}})
        with step.running():
            atomic_write_text(step.path("done-part.txt"), "1")
            (step.dir / ".big.txt.abc.tmp").write_text("half of a write")  # as if killed mid-write
            os.kill(os.getpid(), signal.SIGKILL)
            step.finish()
    """)
    proc = subprocess.run([sys.executable, "-c", script], timeout=60)
    assert proc.returncode == -9

    step = Run(tmp_path / "run").step("distill", {"n": 1})
    assert step.dir.is_dir() and not (step.dir / MANIFEST).exists() and not step.done
    with step.running():
        step.finish()
    assert step.done and set(step.manifest["files"]) == {"done-part.txt"}


def test_steps_lists_states_and_aliases_find_outputs(tmp_path):
    run = Run(tmp_path / "run")
    teacher = distill(run, n=3, label="teacher")
    student = distill(run, n=5, label="student")
    broken = run.step("train", {"lr": 1})
    with pytest.raises(ValueError):
        with broken.running():
            raise ValueError

    assert {(s.kind, s.key, s.state) for s in run.steps()} == {
        ("distill", teacher.key, "done"), ("distill", student.key, "done"), ("train", broken.key, "incomplete")}
    listed = {s.key: s for s in run.steps()}
    assert listed[teacher.key].key_fields == {"model": "fp-a", "n": 3} and listed[teacher.key].label == "teacher"

    reopened = Run(tmp_path / "run")
    assert reopened.find("distill", "teacher").key == teacher.key
    assert reopened.find("distill").key == student.key  # latest
    assert read_jsonl(reopened.find("distill", "student").path("pairs.jsonl"))[-1] == {"i": 4}
    assert reopened.find("distill", "nobody") is None and reopened.find("train") is None
    assert json.loads((tmp_path / "run" / "index.json").read_text())["distill"]["teacher"] == teacher.key


def test_digest_chains_steps(tmp_path):
    run = Run(tmp_path / "run")
    upstream = distill(run)
    before = upstream.digest
    assert run.step("dpo", {"pairs": before}).key == run.step("dpo", {"pairs": before}).key
    upstream.path("pairs.jsonl").write_text("changed\n")
    with pytest.raises(RuntimeError, match="not done"):
        _ = upstream.digest
    assert distill(run).digest == before  # redone with the same content


def test_names_must_stay_inside_the_run(tmp_path):
    run = Run(tmp_path / "run")
    with pytest.raises(ValueError):
        run.step("../escape", {})
    with pytest.raises(ValueError):
        run.step("ok", {}, label="a/b")
    step = run.step("ok", {})
    for bad in ("../outside.txt", "/etc/passwd", MANIFEST):
        with pytest.raises(ValueError):
            step.path(bad)
