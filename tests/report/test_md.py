"""report.md: the same content as report.html, inert in a Markdown renderer."""

from __future__ import annotations

from pipeline.report.md import md_text


def test_md_text_is_inert():
    assert md_text("<script>alert(1)</script>") == "&lt;script&gt;alert(1)&lt;/script&gt;"
    assert md_text("[click](javascript:alert(1))") == "\\[click\\](javascript:alert(1))"
    assert md_text("a|b\nc") == "a\\|b c"
    assert md_text("see http://evil.example") == "see http:\\/\\/evil.example"
    assert md_text("`x` *y* _z_") == "\\`x\\` \\*y\\* \\_z\\_"


def test_report_md_sections_and_escaping(cases_workdir):
    text = (cases_workdir / "report" / "report.md").read_text(encoding="utf-8")
    for heading in ("# Exchange Online relay impact", "## Messages per day by impact",
                    "## Rejected messages by scenario", "## Top affected senders", "## Top affected hosts",
                    "## Top affected third-party services", "## What to change", "## Affected senders",
                    "## NDR / null-sender cases", "## Third-party services", "## Hosts with no connector match",
                    "## Ingest accounting", "### Examples of lines not parsed", "## Warnings"):
        assert f"\n{heading}" in f"\n{text}", heading
    assert "<script" not in text and "<img" not in text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    assert "| **40** | **20** | **2** | **5** | **1** | **3** |" in text
    for line in text.splitlines():
        if line.startswith("| "):
            assert line.endswith(" |") or line.endswith("|")
