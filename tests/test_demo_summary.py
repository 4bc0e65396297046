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
