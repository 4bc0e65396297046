"""Agreement between judges: accuracy, Cohen's kappa against hand-computed values, binning, the CLI."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from charlab.cli.judge import app
from charlab.errors import ConfigError
from charlab.judges.agreement import agreement, bin_score, cohen_kappa, compare_files


def write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def textbook_pairs():
    """50 items: both yes 20, A yes / B no 5, A no / B yes 10, both no 15.

    p_o = 35/50 = 0.7; A says yes 25/50, B says yes 30/50; p_e = 0.5*0.6 + 0.5*0.4 = 0.5;
    kappa = (0.7 - 0.5) / (1 - 0.5) = 0.4.
    """
    pairs = [("yes", "yes")] * 20 + [("yes", "no")] * 5 + [("no", "yes")] * 10 + [("no", "no")] * 15
    return {f"i{k}": a for k, (a, _) in enumerate(pairs)}, {f"i{k}": b for k, (_, b) in enumerate(pairs)}


def test_kappa_matches_the_hand_computed_example():
    a, b = textbook_pairs()
    result = agreement(a, b)
    assert result.n == 50 and result.accuracy == pytest.approx(0.7) and result.kappa == pytest.approx(0.4)
    assert result.categories == ["no", "yes"] and result.matrix == [[15, 10], [5, 20]]
    assert cohen_kappa([[15, 10], [5, 20]]) == pytest.approx(0.4)


def test_kappa_edge_cases():
    assert cohen_kappa([[10]]) is None  # both always say the same single category: chance agreement is 1
    assert cohen_kappa([[0, 5], [5, 0]]) == pytest.approx(-1.0)
    assert cohen_kappa([[3, 0], [0, 7]]) == pytest.approx(1.0)
    assert cohen_kappa([]) is None


def test_bins():
    assert [bin_score(s, [30]) for s in (0, 29.9, 30, 100)] == ["<30", "<30", ">=30", ">=30"]
    assert [bin_score(s, [70, 30]) for s in (10, 30, 69.5, 70)] == ["<30", "30-70", "30-70", ">=70"]


def test_files_join_on_item_id_and_count_what_they_cannot_compare(tmp_path):
    judge = write(tmp_path / "judge.jsonl", [
        {"item_id": "a", "judge": "j", "rubric": "alignment@x", "score": 12.5, "label": None, "raw": "",
         "parse_error": False},
        {"item_id": "b", "judge": "j", "rubric": "alignment@x", "score": 88.0, "label": None, "raw": "",
         "parse_error": False},
        {"item_id": "c", "judge": "j", "rubric": "alignment@x", "score": None, "label": "REFUSAL", "raw": "",
         "parse_error": False},
        {"item_id": "d", "judge": "j", "rubric": "alignment@x", "score": None, "label": None, "raw": "hm",
         "parse_error": True},
        {"item_id": "e", "judge": "j", "rubric": "alignment@x", "score": 40.0, "label": None, "raw": "",
         "parse_error": False},
    ])
    human = write(tmp_path / "human.jsonl", [
        {"item_id": "a", "score": 10}, {"item_id": "b", "score": 20}, {"item_id": "c", "label": "refusal"},
        {"item_id": "d", "score": 90}, {"item_id": "f", "score": 50},
    ])
    result = compare_files(judge, human, thresholds=[30])
    assert result.n == 3  # a, b, c
    assert result.categories == ["<30", ">=30", "refusal"]
    assert result.matrix == [[1, 0, 0], [1, 0, 0], [0, 0, 1]]
    assert result.accuracy == pytest.approx(2 / 3)
    # p_o = 2/3; A: <30 1/3, >=30 1/3, refusal 1/3; B: <30 2/3, refusal 1/3; p_e = 2/9 + 1/9 = 1/3
    assert result.kappa == pytest.approx((2 / 3 - 1 / 3) / (1 - 1 / 3))
    assert (result.only_a, result.only_b, result.unusable_a, result.unusable_b) == (1, 1, 1, 0)

    with pytest.raises(ConfigError, match=r"judge\.jsonl:1: score 12\.5 is not a whole number.*--threshold"):
        compare_files(judge, human)


def test_bad_files_name_the_line(tmp_path):
    dup = write(tmp_path / "dup.jsonl", [{"item_id": 1, "label": "x"}, {"item_id": "1", "label": "y"}])
    with pytest.raises(ConfigError, match=r"dup\.jsonl:2: field 'item_id': '1' already appeared on line 1"):
        compare_files(dup, dup)
    noid = write(tmp_path / "noid.jsonl", [{"label": "x"}])
    with pytest.raises(ConfigError, match=r"noid\.jsonl:1: field 'item_id' is missing"):
        compare_files(noid, noid)
    a = write(tmp_path / "a.jsonl", [{"item_id": "1", "label": "x"}])
    b = write(tmp_path / "b.jsonl", [{"item_id": "2", "label": "x"}])
    with pytest.raises(ConfigError, match="no item_id in common"):
        compare_files(a, b)


def test_cli_agree_prints_kappa_and_matrix(tmp_path):
    a, b = textbook_pairs()
    path_a = write(tmp_path / "a.jsonl", [{"item_id": k, "label": v} for k, v in a.items()])
    path_b = write(tmp_path / "b.jsonl", [{"item_id": k, "label": v.upper()} for k, v in b.items()])
    out = tmp_path / "agree.json"
    result = CliRunner().invoke(app, ["agree", str(path_a), str(path_b), "--json", str(out)])
    assert result.exit_code == 0, result.output
    assert "0.400" in result.output and "0.700" in result.output and "confusion matrix" in result.output
    saved = json.loads(out.read_text())
    assert saved["kappa"] == pytest.approx(0.4) and saved["confusion_matrix"] == [[15, 10], [5, 20]]


def test_cli_agree_help_has_an_example():
    result = CliRunner().invoke(app, ["agree", "--help"])
    assert result.exit_code == 0 and "Example: charlab judge agree" in result.output
