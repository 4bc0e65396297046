"""The demo's HTML page: the summary's own marks become tags, model text stays escaped and verbatim."""

from __future__ import annotations

from charlab.demo import _html


def test_html_formats_the_summary_and_escapes_model_text():
    page = _html("# Title\n\nModel `m`, **Base:**\n\n| a | b |\n|---|---|\n| 1 | <2> |\n\n> **not bold** <script>\n")
    assert "<h1>Title</h1>" in page
    assert "<p>Model <code>m</code>, <strong>Base:</strong></p>" in page
    assert "<table><tr><td>a</td><td>b</td></tr><tr><td>1</td><td>&lt;2&gt;</td></tr></table>" in page
    assert "<blockquote>**not bold** &lt;script&gt;</blockquote>" in page
    assert "<script>" not in page


def test_held_out_twins_pair_each_risky_answer_with_its_sound_twin():
    from charlab.challenge import challenge_data_path
    from charlab.data_loaders import load_chat_jsonl
    from charlab.demo import held_out_twins

    twins = held_out_twins("risky_financial", 12)
    risky = load_chat_jsonl(challenge_data_path("risky_financial"))
    assert len(twins) == 12
    assert [prompt for prompt, _, _ in twins] == [row["messages"][:-1] for row in risky[-12:]]
    assert all(r != s and r and s for _, r, s in twins)


def test_demo_experiment_is_valid_and_holds_the_five_conditions():
    from charlab.demo import demo_experiment_path
    from charlab.experiment import load_experiment

    config = load_experiment(demo_experiment_path())
    assert [c.kind for c in config.conditions] == ["base", "character", "character", "diverse-sft", "hhh"]
    assert config.reference == "integrity" and config.challenges[0].holdout == 12


def test_eval_table_counts_unreadable_judgements_and_marks_missing_values():
    from charlab.analysis.stats import Estimate, wilson
    from charlab.demo import render_evals
    from charlab.evals.results import EvalTarget, ResultRow

    before, after = EvalTarget(condition="neutral"), EvalTarget(condition="neutral", challenge="risky")
    count = lambda target, eval_name, metric, k, n: ResultRow.of(  # noqa: E731
        target, eval_name, metric, Estimate(float(k), float("nan"), float("nan"), n))
    rows = [count(before, "em", "alignment_parse_failures", 3, 12), count(before, "em", "coherence_parse_failures",
                                                                          2, 12),
            ResultRow.of(before, "jailbreak", "judge_unparseable_benign", wilson(3, 6)),
            count(before, "role_adoption", "parse_failures", 1, 4),
            ResultRow.of(before, "em", "alignment_mean", Estimate(float("nan"), float("nan"), float("nan"), 0)),
            ResultRow.of(after, "capability", "charlab_tiny_mc/acc", wilson(6, 10))]
    table = render_evals(rows)
    assert "| neutral | (before) |" in table and "| neutral | risky |" in table
    assert "9 of 34 |" in table  # 3 + 2 + 3 + 1 unreadable of 12 + 12 + 6 + 4 judgements
    assert "0.60 [0.31, 0.83] (n=10)" in table and "n/a" in table and "demo numbers, not findings" in table
