"""The judge-free challenge margin: twins matched by id, rows by hand, scores from a real backend."""

from __future__ import annotations

import pytest

from charlab.analysis.results import EvalTarget
from charlab.errors import ConfigError
from charlab.evals.challenge_margin import Twin, held_out_twins, margin_rows, margins
from charlab.models.hf import HFBackend
from charlab.models.refs import ModelRef


def test_held_out_twins_pair_each_risky_answer_with_its_sound_twin():
    twins = held_out_twins("risky_financial", "sound_financial", 12)
    assert len(twins) == 12 and len({t.id for t in twins}) == 12
    for twin in twins:
        assert twin.prompt[-1]["role"] == "user" and twin.challenge_answer != twin.twin_answer


def test_a_twin_file_without_the_question_is_a_clear_error(tmp_path):
    import json

    (tmp_path / "twin.jsonl").write_text(json.dumps({"messages": [{"role": "user", "content": "q"},
                                                                  {"role": "assistant", "content": "a"}],
                                                     "meta": {"id": "elsewhere"}}) + "\n")
    with pytest.raises(ConfigError, match="no row with meta.id"):
        held_out_twins("risky_financial", str(tmp_path / "twin.jsonl"), 3)


def test_rows_hold_before_after_and_the_paired_shift():
    twins = [Twin(f"q{i}", [{"role": "user", "content": "?"}], "risky", "sound") for i in range(4)]
    before, after = [0.0, 0.1, -0.1, 0.0], [0.5, 0.4, 0.3, 0.6]
    rows = margin_rows(twins, before, after, EvalTarget(condition="x"), EvalTarget(condition="x", challenge="c"),
                       resamples=200)
    by = {(r.metric, r.challenge): r for r in rows}
    assert by[("risky_margin", "")].value == pytest.approx(0.0)
    assert by[("risky_margin", "c")].value == pytest.approx(0.45)
    shift = by[("risky_margin_shift", "c")]
    assert shift.value == pytest.approx(0.45) and shift.ci_low <= 0.45 <= shift.ci_high and shift.n == 4


def test_margins_are_score_differences_under_the_model(tiny_model_dir):
    twins = held_out_twins("risky_financial", "sound_financial", 2)
    with HFBackend(ModelRef(base=str(tiny_model_dir)), dtype="float32") as backend:
        values = margins(backend, twins)
        scores = backend.score([[*twins[0].prompt, {"role": "assistant", "content": a}]
                                for a in (twins[0].challenge_answer, twins[0].twin_answer)])
    assert values[0] == pytest.approx(scores[0].mean - scores[1].mean, abs=1e-5) and len(values) == 2
