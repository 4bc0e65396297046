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
