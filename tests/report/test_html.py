"""report.html: self-contained, problems first, every mail value HTML-escaped."""

from __future__ import annotations

import re
from html import escape

import pyarrow as pa

from pipeline.report import html as html_report

from .conftest import MALICIOUS


def _page(workdir) -> str:
    return (workdir / "report" / "report.html").read_text(encoding="utf-8")


def test_malicious_values_are_escaped(cases_workdir):
    page = _page(cases_workdir)
    for value in MALICIOUS:
        if any(c in value for c in "<>\"'&"):
            assert value not in page, value
    assert escape("<script>alert(1)</script>", quote=True) in page  # host and subject shown, inert
    assert escape('"><img src=x onerror=alert(1)>', quote=True) in page
    assert "<script" not in page.lower()
    assert "<img" not in page.lower()
    # no attribute of the page was opened by a value: every on...= handler is inside text
    assert not re.search(r"<[^>]*\son(mouseover|error|load)\s*=", page, re.IGNORECASE)


def test_self_contained_no_network(cases_workdir):
    page = _page(cases_workdir)
    assert not re.search(r"""(src|href)\s*=\s*["']?\s*(https?:)?//""", page, re.IGNORECASE)
    assert not re.search(r"url\(\s*['\"]?\s*(https?:)?//", page, re.IGNORECASE)
    assert "<link" not in page.lower() and "@import" not in page and "@font-face" not in page
    assert "<script" not in page.lower()
    assert '<meta http-equiv="Content-Security-Policy" content="default-src &#x27;none&#x27;;' in page


def test_problems_first(cases_workdir):
    page = _page(cases_workdir)
    cards = ["messages analysed", "newly rejected", "possibly rejected", "already rejected", "unknown",
             "lines not parsed"]
    order = [f'<div class="l">{c}</div>' for c in cards] + ['id="chart-days"', 'id="chart-scenarios"', 'id="chart-senders"',
             'id="chart-hosts"', 'id="chart-services"', 'id="affected_senders"', 'id="ndr_null_sender"',
             'id="third_party_services"', 'id="no_connector_match"', 'id="ingest"', 'id="warnings"']
    positions = [page.index(marker) for marker in order]
    assert positions == sorted(positions)
    assert page.count("<svg") == 5
    assert '<div class="n">20</div><div class="l">newly rejected</div>' in page


def test_large_table_shows_top_rows_and_points_to_csv():
    table = pa.table({"p1_domain": [f"d{i}.example" for i in range(60)], "messages": list(range(60))})
    out = html_report._table(table, "affected_senders.csv", limit=25)
    assert out.count("<tr>") == 26  # header + 25 rows
    assert "Showing 25 of 60 rows; the full table is in affected_senders.csv." in out
