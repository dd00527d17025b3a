"""The canonical CSV reader: types, null sender vs unknown, lists, and every line accounted for."""

from __future__ import annotations

import codecs

import pyarrow.parquet as pq

from pipeline.ingest import ingest


def _ingest(tmp_path, text: str, encoding: str = "utf-8"):
    p = tmp_path / "cases.csv"
    data = text.encode("utf-8") if encoding == "utf-8" else codecs.BOM_UTF16_LE + text.encode("utf-16-le")
    p.write_bytes(data)
    summary = ingest([p], tmp_path / "w")
    msgs = pq.read_table(tmp_path / "w" / "messages").to_pylist()
    rejects = pq.read_table(tmp_path / "w" / "rejects").to_pylist()
    return summary, msgs, rejects


CASES = (
    "ts,host,p1_sender,p2_sender,relay_ip,tls_cert,recipients,size,is_ndr\n"
    "2026-11-02T08:15:00Z,app01,<>,Postmaster <postmaster@contoso.com>,203.0.113.25,,a@fabrikam.com; b@Contoso.com.,12,true\n"
    "2026-11-02 09:15:00+01:00,app01,,,203.0.113.25,mail.contoso.com;x.contoso.com,,,\n"
    "2026-11-02T08:15:00.1234567,app01,noreply@ERP.local.,,,,c@fabrikam.com,,no\n"
    "yesterday,app01,a@b.com,,,,,,\n"
    "2026-11-02T08:15:00Z,app01,a@b.com\n"
)


def test_fields_and_quirks(tmp_path):
    summary, msgs, rejects = _ingest(tmp_path, CASES)
    first, second, third = msgs
    assert first["p1_sender"] == "" and first["p1_domain"] is None  # <> is the null sender
    assert first["p2_sender"] == "postmaster@contoso.com" and first["p2_domain"] == "contoso.com"
    assert first["recipients"] == ["a@fabrikam.com", "b@Contoso.com."]
    assert first["recipient_domains"] == "contoso.com;fabrikam.com" and first["recipient_count"] == 2
    assert first["is_ndr"] is True and first["size"] == 12 and first["source_line"] == 2
    assert second["p1_sender"] is None  # an empty cell is unknown, not the null sender
    assert second["ts"].isoformat() == "2026-11-02T08:15:00+00:00"
    assert second["tls_cert"] == "mail.contoso.com;x.contoso.com"
    assert second["recipients"] is None
    assert third["p1_domain"] == "erp.local" and third["ts"].microsecond == 123456
    assert {r["source_line"]: r["reason"] for r in rejects} == {
        5: "ts is not an ISO 8601 date-time",
        6: "expected 9 columns as in the header",
    }
    t = summary["totals"]
    assert t["lines"] == 6 == t["parsed"] + t["skipped_lines"] + t["rejected_lines"]


def test_utf16_file(tmp_path):
    _, msgs, _ = _ingest(tmp_path, "p1_sender,recipients\r\n<>,a@fabrikam.com\r\n", encoding="utf-16")
    assert msgs[0]["p1_sender"] == "" and msgs[0]["recipients"] == ["a@fabrikam.com"]


def test_sample_cases_parse_without_rejects(sample_logs, tmp_path):
    summary = ingest([sample_logs / "canonical" / "cases.csv"], tmp_path / "w")
    assert summary["totals"]["rejected_lines"] == 0 and summary["messages"] > 10


def test_an_undecodable_byte_is_replaced_not_fatal(tmp_path):
    """pyarrow's CSV reader rejects a whole file over one invalid UTF-8 byte; the row keeps
    its place with a replacement character instead."""
    p = tmp_path / "cases.csv"
    p.write_bytes(b"p1_sender,recipients\nbad\xff@contoso.com,a@fabrikam.com\n<>,b@fabrikam.com\n")
    summary = ingest([p], tmp_path / "w")
    msgs = pq.read_table(tmp_path / "w" / "messages").to_pylist()
    assert [m["p1_sender"] for m in msgs] == ["bad\ufffd@contoso.com", ""]
    assert [m["source_line"] for m in msgs] == [2, 3]
    assert summary["totals"]["parsed"] == 2
