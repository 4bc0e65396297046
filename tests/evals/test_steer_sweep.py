"""The steering sweep: flip points by hand, the steered backend's identity, and a sweep on the tiny model."""

from __future__ import annotations

import json
import math
import zlib

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from charlab.analysis.results import EvalTarget, read_results
from charlab.datasets.attacks import load_attack_set
from charlab.evals.roles import load_questions
from charlab.evals.steer_sweep import Curve, SteerSweepSettings, flip_estimate, flip_point, run_steer_sweep
from charlab.interp.axis import Axis
from charlab.interp.steering import SteeredBackend
from charlab.models.base import GenerationRequest, SamplingParams
from charlab.models.hf import HFBackend
from charlab.models.openai_compat import OpenAIBackend, OpenAIConfig
from charlab.models.refs import ModelRef
from charlab.store.cache import RowCache
from fake_openai import FakeOpenAI

pytestmark = pytest.mark.timeout(300)


def test_flip_point_interpolates_between_grid_points():
    # Crosses 0.5 between c=1 (0.2) and c=2 (0.6): 1 + (0.5 - 0.2) / (0.6 - 0.2) = 1.75.
    assert flip_point([0, 1, 2, 3], [0.0, 0.2, 0.6, 1.0], 0.5) == pytest.approx(1.75)
    assert flip_point([0, 1, 2], [0.7, 0.9, 1.0], 0.5) == 0.0  # already flipped unsteered
    assert flip_point([0, 1, 2], [0.0, 0.1, 0.4], 0.5) == math.inf  # censored: harder than the grid
    # Nothing judged at c=1: interpolate from c=0 (0.0) to c=2 (1.0), which reaches 0.5 at c=1.
    assert flip_point([0, 1, 2], [0.0, math.nan, 1.0], 0.5) == pytest.approx(1.0)
    assert flip_point([0, 1, 3], [0.0, math.nan, 1.0], 0.5) == pytest.approx(1.5)


def test_flip_interval_resamples_whole_curves():
    same = np.array([[0, 2], [1, 2], [2, 2]], dtype=float)  # 0, 0.5, 1 at c = 0, 1, 2
    curve = Curve("x", (0.0, 1.0, 2.0), {f"q{i}": same.copy() for i in range(5)})
    identical = flip_estimate(curve, 0.5, resamples=200, seed=0)
    assert (identical.value, identical.low, identical.high, identical.n) == (1.0, 1.0, 1.0, 5)

    stubborn = np.array([[0, 1], [0, 1], [0, 1]], dtype=float)  # never leaves the persona
    mixed = Curve("x", (0.0, 1.0, 2.0), {"a": same, "b": same, "c": stubborn, "d": stubborn})
    first, second = (flip_estimate(mixed, 0.5, resamples=300, seed=3) for _ in range(2))
    assert first == second  # seeded
    assert first.low <= first.value <= first.high and first.high == math.inf  # some resamples never flip


def test_settings_need_an_ascending_non_negative_grid():
    with pytest.raises(ValidationError, match="ascending"):
        SteerSweepSettings(coefficients=[0, 2, 1])
    with pytest.raises(ValidationError, match="ascending"):
        SteerSweepSettings(coefficients=[-1, 0])


@pytest.fixture(scope="module")
def tiny(tiny_model_dir):
    backend = HFBackend(ModelRef(base=str(tiny_model_dir)), batch_size=4, device="cpu", dtype="float32")
    yield backend
    backend.close()


def _axis(hidden: int = 64) -> Axis:
    torch.manual_seed(0)
    return Axis(torch.randn(2, hidden), [0, 1], {"source": "test"})


def test_steered_backend_names_its_steering_and_leaves_the_model_as_it_was(tiny):
    request = GenerationRequest.make([{"role": "user", "content": "Hello"}], SamplingParams(max_new_tokens=6), 0)
    before = tiny.generate([request])[0].text
    vector = _axis().at(1)
    steered = SteeredBackend(tiny, vector, 8.0, [1], {1: 1.0})
    assert steered.fingerprint != SteeredBackend(tiny, vector, 4.0, [1], {1: 1.0}).fingerprint
    assert steered.fingerprint != SteeredBackend(tiny, -vector, 8.0, [1], {1: 1.0}).fingerprint
    assert steered.fingerprint.startswith(tiny.fingerprint)
    assert steered.generate([request])[0].text != before
    assert tiny.generate([request])[0].text == before  # hooks gone after the call


def judge_reply(body: dict) -> str:
    """Deterministic per answer: identity 0-3, coherence 0-100 and a harm label from a checksum of the reply."""
    prompt = body["messages"][-1]["content"]
    reply = prompt.split("<<<REPLY", 1)[1]
    h = zlib.crc32(reply.encode())
    if "Who does the reply speak as?" in prompt:
        return str(h % 4)
    if "Give a whole number from 0 to 100" in prompt:
        return str(h % 101)
    return ["harmful", "harmless", "refusal"][h % 3]


def test_sweep_on_the_tiny_model_writes_curves_flips_and_reuses_the_cache(tiny, tmp_path):
    settings = SteerSweepSettings(coefficients=[0, 2, 8], questions=3, requests=2,
                                  sampling=SamplingParams(temperature=1.0, max_new_tokens=6), resamples=50)
    questions, attacks = load_questions(), load_attack_set("demo")
    target = EvalTarget(condition="base")
    with FakeOpenAI(reply=judge_reply) as server, RowCache(tmp_path / "cache.sqlite") as cache:
        judge_backend = OpenAIBackend(OpenAIConfig(base_url=server.url, model="judge"))
        result = run_steer_sweep(tiny, _axis(), judge_backend, questions, attacks, settings, target, cache,
                                 tmp_path / "sweep")
        asked = len(server.chat_requests)
        again = run_steer_sweep(tiny, _axis(), judge_backend, questions, attacks, settings, target, cache,
                                tmp_path / "sweep2")
        assert len(server.chat_requests) == asked  # every answer and judgement came from the cache
    assert asked == 3 * (3 * 2 + 2)  # per coefficient: identity + coherence per question, harm per request
    assert again.rows == result.rows

    answers = [json.loads(line) for line in (tmp_path / "sweep" / "answers.jsonl").read_text().splitlines()]
    by_c = {c: [a["text"] for a in answers if a["meta"]["coefficient"] == c] for c in (0, 2, 8)}
    assert by_c[0] != by_c[8]  # the push changes what the model says
    assert set(result.unit_norms) == {1} and result.unit_norms[1] > 0  # the axis's middle layer of [0, 1]

    records = [json.loads(line) for line in
               (tmp_path / "sweep" / "judgements_persona_identity.jsonl").read_text().splitlines()]
    rows = {(r.metric, r.group): r for r in read_results(tmp_path / "sweep" / "results.csv")}
    for c in (0, 2, 8):
        mine = [r for r in records if r["item_id"].startswith(f"c={c}/")]
        left = sum(int(r["label"]) >= settings.adopted_at for r in mine)
        assert rows[("persona_departure_rate", f"c={c}")].value == pytest.approx(left / len(mine))
        assert ("harmful_rate", f"c={c}") in rows and ("coherence", f"c={c}") in rows
    curve = json.loads((tmp_path / "sweep" / "sweep.json").read_text())["curves"]["persona_departure_rate"]
    expected = flip_point([0, 2, 8], curve, settings.flip_at)
    assert rows[("hardening_score", "")].value == pytest.approx(expected)
    assert result.hardening.value == pytest.approx(expected)


def test_cli_steer_sweep_and_a_bad_axis(tiny_model_dir, tmp_path):
    import subprocess
    import sys

    from safetensors.torch import save_file
    from typer.testing import CliRunner

    from charlab.cli.eval import app

    save_file({"axis": _axis().vectors}, tmp_path / "axis.safetensors")
    with FakeOpenAI(reply=judge_reply) as server:
        judge = tmp_path / "judge.yaml"
        judge.write_text(f'backend: {{kind: openai, openai: {{base_url: "{server.url}", model: judge}}}}\n'
                         "rubric: coherence\nsettings: {method: sample}\n")
        settings = tmp_path / "sweep.yaml"
        settings.write_text("questions: 2\nrequests: 1\nresamples: 20\n"
                            "sampling: {temperature: 1.0, max_new_tokens: 4}\n")
        result = CliRunner().invoke(app, ["steer-sweep", "-m", str(tiny_model_dir), "--axis",
                                          str(tmp_path / "axis.safetensors"), "--judge", str(judge),
                                          "--coefficients", "0,4", "--settings", str(settings),
                                          "--out", str(tmp_path / "out"), "--cache", str(tmp_path / "c.sqlite")])
    assert result.exit_code == 0, result.output
    assert "hardening score" in result.output
    assert {r.group for r in read_results(tmp_path / "out" / "results.csv") if r.metric == "coherence"} == {"c=0",
                                                                                                          "c=4"}
    launcher = "import sys; from charlab.cli import main; sys.argv[0] = 'charlab'; main()"
    proc = subprocess.run([sys.executable, "-c", launcher, "eval", "steer-sweep", "-m", str(tiny_model_dir),
                           "--axis", str(tmp_path / "nowhere.pt"), "--judge", str(judge), "--out",
                           str(tmp_path / "o2")], capture_output=True, text=True)
    assert proc.returncode == 2 and "nowhere.pt" in proc.stderr and "no such axis file" in proc.stderr
    assert not (tmp_path / "o2").exists()
