"""summary.json: contract.md's keys and the numbers of tests/data/report/cases.csv."""

from __future__ import annotations

import json

import pytest

from pipeline.errors import RelayImpactError
from pipeline.report import DEFAULT_FORMATS, REPORTERS, build_summary, report

from .conftest import build_workdir


def test_every_format_is_written_by_default(cases_workdir):
    assert set(DEFAULT_FORMATS) == set(REPORTERS) == {"html", "md", "csv", "json", "remediation"}
    names = {p.name for p in (cases_workdir / "report").iterdir()}
    assert {"report.html", "report.md", "summary.json", "remediation.ps1", "affected_senders.csv",
            "ndr_null_sender.csv", "third_party_services.csv", "no_connector_match.csv",
            "messages_by_day.csv", "scenarios.csv", "ingest_files.csv"} <= names
    assert not [n for n in names if n.endswith(".tmp")]


def test_summary_json_is_the_contract(cases_workdir):
    summary = json.loads((cases_workdir / "report" / "summary.json").read_text())
    assert summary["messages"] == 40
    assert summary["rejected_lines"] == 3
    assert summary["impact"] == {"not_relayed": 2, "unaffected": 10, "newly_rejected": 20,
                                 "already_rejected": 5, "possibly_rejected": 2, "unknown": 1}
    assert summary["scenario"] == {"app_nonaccepted_p1": 12, "ndr_null_sender": 6,
                                   "third_party_service": 5, "no_connector_match": 4}
    top = summary["top_affected_senders"][0]
    assert list(top) == ["p1_domain", "p2_domain", "third_party", "scenario", "remedy", "messages"]
    assert (top["p1_domain"], top["p2_domain"], top["messages"]) == ("erp.corp.local", "contoso.com", 6)
    sendgrid = next(s for s in summary["top_affected_senders"] if s["third_party"] == "SendGrid (Twilio)")
    assert sendgrid["messages"] == 3 and "custom return path" in sendgrid["remedy"]
    assert summary["lines"] == {"read": 44, "parsed": 40, "skipped": {"header": 1}, "rejected": {
        "ts is not an ISO 8601 date-time": 1, "is_ndr is not true/false": 1,
        "expected 11 columns as in the header": 1}}
    assert summary["period"] == {"since": None, "until": None, "messages_without_ts": 1}
    assert any("disabled OnPremises connector" in w for w in summary["warnings"])


def test_build_summary_matches_report(cases_workdir):
    on_disk = json.loads((cases_workdir / "report" / "summary.json").read_text())
    assert json.loads(json.dumps(build_summary(cases_workdir), default=str)) == on_disk


def test_unknown_format_names_the_choices(cases_workdir):
    with pytest.raises(RelayImpactError, match="expected: html, md, csv, json, remediation"):
        report(cases_workdir, ["pdf"])


def test_only_requested_formats_plus_summary(tmp_path):
    done = build_workdir(tmp_path / "out", formats=["md"])
    assert sorted(p.rsplit("/", 1)[-1] for p in done["files"]) == ["report.md", "summary.json"]
