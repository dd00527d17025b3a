"""The CSV tables: full length, and formulas neutralised for spreadsheets."""

from __future__ import annotations

import csv

import pyarrow as pa
import pytest

from pipeline.report.csv_tables import neutralise

RISKY = ("=", "+", "-", "@", "\t", "\r")


@pytest.mark.parametrize(("value", "expected"), [
    ("=cmd|'/c calc'!A1", "'=cmd|'/c calc'!A1"),
    ("+SUM(1+1)", "'+SUM(1+1)"),
    ("-2+3", "'-2+3"),
    ("@SUM(1)", "'@SUM(1)"),
    ("\tTAB", "'\tTAB"),
    ("\rCR", "'\rCR"),
    ("contoso.com", "contoso.com"),
    ("a=b", "a=b"),
    ("", ""),
    (None, None),
])
def test_neutralise(value, expected):
    assert neutralise(pa.array([value], pa.string())).to_pylist() == [expected]


def _cells(path):
    with path.open(newline="", encoding="utf-8") as fh:
        return list(csv.reader(fh))


def test_no_cell_starts_a_formula(cases_workdir):
    files = sorted((cases_workdir / "report").glob("*.csv"))
    assert len(files) >= 9
    seen = set()
    for path in files:
        for row in _cells(path)[1:]:
            for value in row:
                assert not value.startswith(RISKY) or value.lstrip("-").isdigit(), (path.name, value)
                seen.add(value)
    assert "'=cmd|'/c;calc'!a1" in seen  # P1 domain
    assert "'=cmd|'/c calc'!A1" in seen  # message id
    assert "'+SUM(1+1)@evil.example" in seen
    assert "'+bad.example" in seen


def test_affected_senders_csv_is_the_full_table(cases_workdir):
    rows = _cells(cases_workdir / "report" / "affected_senders.csv")
    assert rows[0][:6] == ["p1_domain", "p2_domain", "host", "source_ip", "scenario", "third_party"]
    assert len(rows) - 1 == 16
    erp = next(r for r in rows if r[:3] == ["erp.corp.local", "contoso.com", "sm01"])
    header = rows[0]
    assert erp[header.index("first_seen")] == "2026-11-01T11:00:00Z"
    assert erp[header.index("example_message_ids")].split() == [
        "erp-1@erp.corp.local", "erp-2@erp.corp.local", "erp-3@erp.corp.local"]
    day_rows = _cells(cases_workdir / "report" / "messages_by_day.csv")
    assert day_rows[0] == ["day", "not_relayed", "unaffected", "newly_rejected", "already_rejected",
                           "possibly_rejected", "unknown"]
    assert ["2026-11-04", "0", "2", "6", "1", "1", "0"] in day_rows
