"""exo-trace: Get-MessageTrace(V2)/-Detail exports, EAC reports, trace JSON."""

from __future__ import annotations

import pyarrow as pa
import pytest

from pipeline.errors import InputFormatError
from pipeline.ingest import exo_trace
from pipeline.ingest.base import IngestContext, IngestOptions, Source

CONTOSO_RELAY = ((0xCB007100, 0xCB0071FF),)  # 203.0.113.0/24


def run(paths, **opts):
    rejects: list[pa.Table] = []
    ctx = IngestContext(IngestOptions(connector_ranges=CONTOSO_RELAY, **opts),
                        reject_sink=rejects.append)
    batches = list(exo_trace.read([Source(p) for p in paths], ctx))
    rows = pa.Table.from_batches(batches).to_pylist() if batches else []
    rej = pa.concat_tables(rejects).to_pylist() if rejects else []
    for f in ctx.accounting.files.values():  # every line accounted for
        assert f["lines"] == f["parsed"] + sum(f["skipped"].values()) + sum(f["rejected"].values())
    return rows, rej, ctx


def by_mid(rows):
    return {r["message_id"]: r for r in rows}


def test_detects_exports_but_not_other_csv(test_data, sample_logs):
    for p in list((test_data / "exo-trace").glob("*.csv")) + list(
            (sample_logs / "exo-trace").glob("*.csv")):
        assert exo_trace.detect(Source(p).head()), p
    assert not exo_trace.detect(b"ts,p1_sender,recipients\n2026-01-01,a@b,c@d\n")
    assert not exo_trace.detect(b"#Software: Microsoft Exchange Server\n#Fields: date-time\n")


def test_type_line_remoting_columns_and_dayfirst_dates(test_data):
    rows, rej, _ = run([test_data / "exo-trace" / "remoting_type_dayfirst.csv"])
    assert not rej
    m = by_mid(rows)
    app = m["app-1@erp.corp.local"]
    assert app["ts"].isoformat() == "2026-11-13T09:02:11+00:00"  # 13.11. settles day-first
    assert app["p1_sender"] == "noreply@erp.corp.local" and app["p2_sender"] is None
    assert app["relay_ip"] == "203.0.113.25" and app["logged_by_exo"] is True
    ndr = m["ndr-1@exch01.contoso.com"]
    assert ndr["ts"].isoformat() == "2026-11-03T17:45:00+00:00"
    assert ndr["p1_sender"] is None and ndr["is_ndr"] is True  # generator: P1 unknown
    inbound = m["in-1@fabrikam.com"]
    assert inbound["relay_ip"] is None and inbound["connector"] is None


def test_ambiguous_dates_are_an_error_unless_told(test_data):
    path = test_data / "exo-trace" / "ambiguous.csv"
    with pytest.raises(InputFormatError, match="ambiguous.*--dayfirst"):
        run([path])
    rows, _, _ = run([path], dayfirst=True)
    assert by_mid(rows)["m1@contoso.com"]["ts"].isoformat().startswith("2026-04-03T10:00")
    rows, _, _ = run([path], dayfirst=False)
    assert by_mid(rows)["m1@contoso.com"]["ts"].isoformat().startswith("2026-03-04T10:00")
    rows, _, _ = run([path], date_format="%d/%m/%Y %H:%M:%S")
    assert by_mid(rows)["m2@contoso.com"]["ts"].isoformat().startswith("2026-03-04T11:00")


def test_selected_columns_month_first_and_12_hour_clock(test_data):
    rows, rej, _ = run([test_data / "exo-trace" / "select_subset_monthfirst.csv"])
    assert not rej
    m = by_mid(rows)
    assert m["j1@contoso.com"]["ts"].isoformat() == "2026-11-02T00:05:09+00:00"  # 12 AM
    assert m["j2@contoso.com"]["ts"].isoformat() == "2026-11-13T12:30:00+00:00"  # 12 PM
    assert m["j2@contoso.com"]["subject"] == "noon job, with comma"
    assert m["j2@contoso.com"]["relay_ip"] is None  # 192.0.2.9 is outside the connector


def test_overlapping_exports_count_once(test_data):
    d = test_data / "exo-trace"
    rows, _, ctx = run([d / "overlap_a.csv", d / "overlap_b.csv"])
    m = by_mid(rows)
    assert len(rows) == 2
    assert sorted(m["n1@contoso.com"]["recipients"]) == ["jane@fabrikam.com", "tom@fabrikam.com"]
    assert m["n1@contoso.com"]["p1_domain"] == "em123.sendgrid.net"


def test_detail_export_reply_and_connector(test_data):
    rows, rej, _ = run([test_data / "exo-trace" / "detail.csv"])
    assert not rej and len(rows) == 1
    r = rows[0]
    assert r["response"].startswith("550 5.7.64 TenantAttribution; Relay Access Denied")
    assert r["connector"] == "On-premises relay" and r["status"] == "Fail"
    assert r["ts"].isoformat() == "2026-11-13T08:00:01.100000+00:00"


def test_enhanced_summary_utf16_recipient_status_and_multiline_subject(test_data):
    rows, rej, ctx = run([test_data / "exo-trace" / "enhanced_utf16_bom.csv"])
    assert not rej and len(rows) == 1
    r = rows[0]
    assert r["recipients"] == ["a@fabrikam.com", "b@example.com"]
    assert r["p2_sender"] == "alerts@contoso.com" and r["p1_sender"] is None
    assert r["subject"] == 'Line1 "quoted", and\r\nline2'
    assert r["connector"] == "On-premises relay" and r["relay_ip"] == "203.0.113.25"
    f = next(iter(ctx.accounting.files.values()))
    assert f["lines"] == 3 and f["parsed"] == 2


def test_broken_rows_are_rejected_with_line_numbers(test_data):
    rows, rej, _ = run([test_data / "exo-trace" / "broken_rows.csv"])
    assert len(rows) == 1
    assert sorted((r["source_line"], r["reason"][:10]) for r in rej) == [
        (3, "the row do"), (4, "time is no")]


def test_sample_trace_and_extended_report_merge(sample_logs):
    d = sample_logs / "exo-trace"
    rows, rej, _ = run(sorted(d.glob("*.csv")))
    assert not rej
    m = by_mid(rows)
    sg = m["SG.nl-2611.8f3e1a@contoso.com"]  # in both files: one message, P1/P2 from the report
    assert sg["p1_domain"] == "em123.sendgrid.net" and sg["p2_sender"] == "news@contoso.com"
    assert sg["connector"] == "On-premises relay" and sg["recipient_count"] == 2
    assert len(rows) == 6


def test_real_json_samples(real_samples):
    paths = sorted((real_samples / "exo-message-trace").glob("*.log"))
    rows, rej, _ = run(paths)
    assert not rej and len(rows) == 3
    r = by_mid(rows)["a210cf91-4f2e-484c-8ada-3b27064ee5e3@az.uksouth.production.microsoft.com"]
    assert r["ts"].isoformat() == "2022-09-05T18:10:13.490765+00:00"
    assert r["p1_sender"] == "azure-noreply@microsoft.com" and r["size"] == 87891


def test_blank_lines_are_counted_as_skipped(test_data, tmp_path):
    """pyarrow drops empty lines silently; every physical line must still be accounted for."""
    text = (test_data / "exo-trace" / "select_subset_monthfirst.csv").read_text()
    head, first, second = text.strip("\n").split("\n")
    path = tmp_path / "with_blanks.csv"
    path.write_text(f"{head}\n\n{first}\n\n\n{second}\n")
    rows, rej, ctx = run([path])
    assert len(rows) == 2 and not rej
    acc = ctx.accounting.files[str(path)]
    assert acc["lines"] == 6
    assert acc["skipped"]["blank line"] == 3
    assert sorted(r["source_line"] for r in rows) == [3, 6]  # physical lines, blanks included


def test_source_lines_stay_physical_across_blank_lines_and_crlf(test_data, tmp_path):
    text = (test_data / "exo-trace" / "select_subset_monthfirst.csv").read_text()
    head, first, second = text.strip("\n").split("\n")
    path = tmp_path / "crlf_blanks.csv"
    path.write_bytes(f"{head}\r\n\r\n{first}\r\n\r\n\r\n\r\n{second}".encode())  # no final line end
    rows, rej, ctx = run([path])
    assert not rej
    assert sorted(r["source_line"] for r in rows) == [3, 7]
    acc = ctx.accounting.files[str(path)]
    assert acc["lines"] == 7 and acc["skipped"]["blank line"] == 4


def test_line_scan_across_piece_boundaries(tmp_path, monkeypatch):
    """Empty lines found however the stream is cut into pieces (here 1 to 5 characters)."""
    from pipeline.ingest import exo_trace
    from pipeline.ingest.base import Source

    path = tmp_path / "lines.csv"
    path.write_bytes(b"a,b\r\n\r\nx\n\n\ny\r\n\r\nzz")
    for piece in range(1, 6):
        monkeypatch.setattr(exo_trace, "_SCAN_PIECE", piece)
        total, blanks = exo_trace._scan_lines(Source(path))
        assert (total, blanks.tolist()) == (8, [2, 4, 5, 7]), piece


def test_undecodable_bytes_and_a_truncated_utf16_file_are_not_fatal(tmp_path, sample_logs):
    """One bad byte (a re-saved export) or a UTF-16 file cut at an odd byte must not stop the
    file: the reader gets clean UTF-8, undecodable bytes become U+FFFD."""
    src = sample_logs / "exo-trace" / "MessageTraceV2_2026-11-10_2026-11-20.csv"
    whole, _, _ = run([src])
    lines = src.read_bytes().split(b"\n")
    lines[3] = lines[3].replace(b"@", b"\xff@", 1)
    bad = tmp_path / "bad_utf8.csv"
    bad.write_bytes(b"\n".join(lines))
    rows, rej, _ = run([bad])
    assert len(rows) == len(whole) and not rej
    assert sum("\ufffd" in (r["p1_sender"] or "") + (r["p2_sender"] or "")
               + "".join(r["recipients"] or []) for r in rows) == 1
    utf16 = tmp_path / "cut_utf16.csv"
    utf16.write_bytes(b"\xff\xfe" + src.read_bytes().decode("utf-8-sig").encode("utf-16-le")[:-1])
    rows, _, _ = run([utf16])
    assert len(rows) == len(whole)


def test_large_exports_are_collapsed_partition_by_partition(test_data, sample_logs, monkeypatch,
                                                            tmp_path):
    """Past PARTITION_BYTES the rows are spilled by message key and collapsed a partition at a
    time: the same messages (overlapping exports de-duplicated across files, each file's own
    date rule), the same accounting, and no temporary files left behind."""
    paths = sorted((sample_logs / "exo-trace").iterdir()) + [
        test_data / "exo-trace" / name for name in (
            "remoting_type_dayfirst.csv", "enhanced_utf16_bom.csv", "overlap_a.csv",
            "overlap_b.csv", "detail.csv", "select_subset_monthfirst.csv", "broken_rows.csv")]
    in_memory, rej_memory, ctx_memory = run(paths)
    monkeypatch.setattr(exo_trace, "PARTITION_BYTES", 512)
    monkeypatch.setattr(exo_trace.tempfile, "tempdir", str(tmp_path))
    spilled, rej_spilled, ctx_spilled = run(paths)
    key = lambda r: (r["source_file"], r["source_line"])  # noqa: E731
    assert sorted(spilled, key=key) == sorted(in_memory, key=key)
    assert len(in_memory) > 15 and rej_memory
    assert sorted(rej_spilled, key=str) == sorted(rej_memory, key=str)
    assert ctx_spilled.accounting.files == ctx_memory.accounting.files
    assert not list(tmp_path.iterdir())
